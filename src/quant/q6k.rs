//! llama.cpp's q6_k blocks as `llama-quantize` makes them without an importance matrix (ggml's
//! reference `quantize_row_q6_K`): 256 values per block in 16 sub-blocks of 16, each sub-block's
//! scale found by an x²-weighted least-squares fit over 19 candidate grids (`make_qx_quants`
//! with 32 levels each side), then stored as 8-bit codes of one f16 super-scale, and the values
//! rounded again on the stored scales. candle 0.11 quantizes q6_k with ggml's older refinement
//! (re-rounding and single-value moves), whose weight error on the synthetic qwen3-small was 7.5%
//! above llama.cpp's own Q6_K of the same model.
//!
//! Block layout (210 bytes): 128 bytes of low nibbles, 64 bytes of high 2-bit pairs, 16 signed
//! 8-bit sub-block scales, `d` (f16). In each half of 128 values, byte `l` of the low nibbles
//! holds values `l` (low) and `l + 64` (high), byte `l + 32` values `l + 32` and `l + 96`, and
//! high byte `l` the top two bits of values `l`, `l + 32`, `l + 64`, `l + 96`.

use half::f16;

use super::kquant::{encode_blocks, nearest};

pub const BLOCK: usize = 256;
pub const BLOCK_BYTES: usize = 210;
const SUB: usize = 16;
/// Codes run from -32 to 31.
const NMAX: i32 = 32;
/// ggml's `GROUP_MAX_EPS`: a sub-block or block smaller than this is stored as zeros.
const EPS: f32 = 1e-15;

/// The scale of one sub-block and its codes (offset by 32): round-to-nearest on the grid that
/// puts the largest magnitude at -32, its x²-weighted least-squares scale, then the grids
/// `-(32 + 0.1 k) / max` for k in -9..=9, keeping the one with the least weighted error.
fn sub_block_scale(x: &[f32], codes: &mut [i8]) -> f32 {
    let (mut max, mut amax) = (0.0f32, 0.0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < EPS {
        codes.fill(0);
        return 0.0;
    }
    // Σ w·x·l and Σ w·l² for the grid `iscale`, with w = x².
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
        for &v in x {
            let l = nearest(iscale * v).clamp(-NMAX, NMAX - 1) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let set_codes = |iscale: f32, codes: &mut [i8]| {
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = (nearest(iscale * v).clamp(-NMAX, NMAX - 1) + NMAX) as i8;
        }
    };
    let iscale = -(NMAX as f32) / max;
    set_codes(iscale, codes);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in (-9..=9).filter(|&s| s != 0) {
        let iscale = -(NMAX as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            set_codes(iscale, codes);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

fn quantize_block(x: &[f32], out: &mut [u8]) {
    let mut codes = [0i8; BLOCK];
    let mut scales = [0f32; BLOCK / SUB];
    let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
    for ((s, xs), cs) in scales.iter_mut().zip(x.chunks_exact(SUB)).zip(codes.chunks_exact_mut(SUB)) {
        *s = sub_block_scale(xs, cs);
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = *s;
        }
    }
    out.fill(0);
    if max_abs_scale < EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let (low, rest) = out.split_at_mut(BLOCK / 2);
    let (high, rest) = rest.split_at_mut(BLOCK / 4);
    let (stored_scales, d_bytes) = rest.split_at_mut(BLOCK / SUB);
    d_bytes.copy_from_slice(&d.to_le_bytes());
    let d = d.to_f32();
    for (j, (&s, stored)) in scales.iter().zip(stored_scales.iter_mut()).enumerate() {
        let q = nearest(iscale * s).min(127) as i8;
        *stored = q as u8;
        // Round again on the scale as stored; a zero scale keeps the search's codes (they
        // dequantize to zero whatever they are).
        let step = d * f32::from(q);
        if step == 0.0 {
            continue;
        }
        for (c, &v) in codes[j * SUB..(j + 1) * SUB].iter_mut().zip(&x[j * SUB..(j + 1) * SUB]) {
            *c = (nearest(v / step).clamp(-NMAX, NMAX - 1) + NMAX) as i8;
        }
    }
    for half in 0..2 {
        let (c, low, high) = (&codes[half * 128..], &mut low[half * 64..], &mut high[half * 32..]);
        for l in 0..32 {
            let q = [c[l] as u8, c[l + 32] as u8, c[l + 64] as u8, c[l + 96] as u8];
            low[l] = (q[0] & 0xF) | ((q[2] & 0xF) << 4);
            low[l + 32] = (q[1] & 0xF) | ((q[3] & 0xF) << 4);
            high[l] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
}

/// Appends the q6_k blocks of `values` (a whole number of 256-value blocks, rows laid end to
/// end), computed in parallel.
pub fn quantize(values: &[f32], out: &mut Vec<u8>) {
    encode_blocks(values, out, BLOCK, BLOCK_BYTES, quantize_block);
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use candle_core::{Device, Tensor};
    use std::borrow::Cow;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        // A heavy-tailed mix, as trained weights are: mostly small, a few large.
        let mut state = seed;
        (0..n)
            .map(|i| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = ((state >> 33) as f32 / (1u64 << 31) as f32) - 0.5;
                if i % 37 == 0 { u * 8.0 } else { u }
            })
            .collect()
    }

    /// candle's own reading of our bytes.
    fn dequantize(bytes: Vec<u8>, n: usize) -> Vec<f32> {
        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, GgmlDType::Q6K).unwrap();
        let t = QTensor::new(storage, (n,)).unwrap();
        t.dequantize(&Device::Cpu).unwrap().to_vec1().unwrap()
    }

    fn squared_error(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
    }

    #[test]
    fn blocks_read_back_through_ggml_and_beat_candles_older_search() {
        let n = BLOCK * 64;
        let x = values(n, 7);
        let mut ours = Vec::new();
        quantize(&x, &mut ours);
        assert_eq!(ours.len(), n / BLOCK * BLOCK_BYTES);
        let back = dequantize(ours, n);
        let t = Tensor::from_slice(&x, (n,), &Device::Cpu).unwrap();
        let theirs = QTensor::quantize(&t, GgmlDType::Q6K).unwrap().dequantize(&Device::Cpu).unwrap();
        let theirs: Vec<f32> = theirs.to_vec1().unwrap();
        let (e_ours, e_candle) = (squared_error(&back, &x), squared_error(&theirs, &x));
        let energy: f64 = x.iter().map(|v| f64::from(*v).powi(2)).sum();
        // Within q6_k's resolution, and no worse than candle's search (llama.cpp's is better).
        assert!(e_ours / energy < 1e-3, "relative error {}", e_ours / energy);
        assert!(e_ours <= e_candle, "ours {e_ours} vs candle's {e_candle}");
    }

    #[test]
    fn constant_and_zero_blocks_are_exact() {
        for value in [0.0f32, 0.25, -3.0] {
            let x = vec![value; BLOCK];
            let mut out = Vec::new();
            quantize(&x, &mut out);
            let back = dequantize(out, BLOCK);
            assert!(back.iter().all(|v| (v - value).abs() <= value.abs() * 1e-3), "{value}: {back:?}");
        }
    }
}
