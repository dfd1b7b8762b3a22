//! llama.cpp's q4_k blocks as `llama-quantize` makes them without an importance matrix (ggml's
//! reference `quantize_row_q4_K`): 256 values per block in 8 sub-blocks of 32, each with a
//! 4-bit scale and min found by a weighted least-squares search over 21 candidate scales
//! (weights `rms(sub-block) + |x|`), the sub-block scales and mins then stored as 6-bit codes
//! of two f16 super-scales. candle 0.11 quantizes q4_k with ggml's older search
//! (`make_qkx1_quants`), which is less exact and not what llama.cpp's tools write.
//!
//! Block layout (144 bytes): `d` and `dmin` (f16), 12 bytes of packed 6-bit scales and mins,
//! 128 bytes of 4-bit codes (the low nibbles hold values 0..32 of each 64, the high 32..64).

use half::f16;
use rayon::prelude::*;

pub const BLOCK: usize = 256;
pub const BLOCK_BYTES: usize = 144;
const SUB: usize = 32;

/// ggml's `nearest_int`: round half to even.
fn nearest(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// The scale and (negated) min of one sub-block and its codes in `codes`: ggml's
/// `make_qkx2_quants(32, 15, x, weights, L, &min, Laux, -1, 0.1, 20, false)`.
fn scale_and_min(x: &[f32], weights: &[f32], codes: &mut [u8]) -> (f32, f32) {
    const NMAX: f32 = 15.0;
    let (rmin, rdelta, steps) = (-1.0f32, 0.1f32, 20);
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..x.len() {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        codes.fill(0);
        return (0.0, -min);
    }
    let mut iscale = NMAX / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..x.len() {
        let l = nearest(iscale * (x[i] - min)).clamp(0, 15);
        codes[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best += weights[i] * diff * diff;
    }
    let mut trial = [0u8; SUB];
    for step in 0..=steps {
        iscale = (rmin + rdelta * step as f32 + NMAX) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..x.len() {
            let l = nearest(iscale * (x[i] - min)).clamp(0, 15);
            trial[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0.0f32;
            for i in 0..x.len() {
                let diff = this_scale * trial[i] as f32 + this_min - x[i];
                error += weights[i] * diff * diff;
            }
            if error < best {
                codes[..x.len()].copy_from_slice(&trial[..x.len()]);
                best = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// The 6-bit scale and min of sub-block `j` from the packed 12 bytes (ggml's `get_scale_min_k4`).
fn unpack(j: usize, packed: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        ((packed[j + 4] & 0xF) | ((packed[j - 4] >> 6) << 4), (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4))
    }
}

/// One block of 256 values.
fn quantize_block(x: &[f32], out: &mut [u8]) {
    let mut codes = [0u8; BLOCK];
    let mut scales = [0f32; BLOCK / SUB];
    let mut mins = [0f32; BLOCK / SUB];
    let mut weights = [0f32; SUB];
    for j in 0..BLOCK / SUB {
        let sub = &x[SUB * j..SUB * (j + 1)];
        let rms = (sub.iter().map(|v| v * v).sum::<f32>() / SUB as f32).sqrt();
        for (w, v) in weights.iter_mut().zip(sub) {
            *w = rms + v.abs();
        }
        (scales[j], mins[j]) = scale_and_min(sub, &weights, &mut codes[SUB * j..SUB * (j + 1)]);
    }
    let max_scale = scales.iter().copied().fold(0.0f32, f32::max);
    let max_min = mins.iter().copied().fold(0.0f32, f32::max);
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..BLOCK / SUB {
        let ls = nearest(inv_scale * scales[j]).clamp(0, 63) as u8;
        let lm = nearest(inv_min * mins[j]).clamp(0, 63) as u8;
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    // The codes again, against the scales as stored.
    for j in 0..BLOCK / SUB {
        let (sc, m) = unpack(j, &packed);
        let scale = d.to_f32() * f32::from(sc);
        if scale == 0.0 {
            continue;
        }
        let offset = dmin.to_f32() * f32::from(m);
        for i in SUB * j..SUB * (j + 1) {
            codes[i] = nearest((x[i] + offset) / scale).clamp(0, 15) as u8;
        }
    }
    out[0..2].copy_from_slice(&d.to_le_bytes());
    out[2..4].copy_from_slice(&dmin.to_le_bytes());
    out[4..16].copy_from_slice(&packed);
    for (half, q) in out[16..].chunks_exact_mut(32).enumerate() {
        let base = 64 * half;
        for (l, byte) in q.iter_mut().enumerate() {
            *byte = codes[base + l] | (codes[base + l + 32] << 4);
        }
    }
}

/// Appends the q4_k blocks of `values` (a whole number of 256-value blocks, rows laid end to
/// end), computed in parallel.
pub fn quantize(values: &[f32], out: &mut Vec<u8>) {
    debug_assert!(values.len().is_multiple_of(BLOCK));
    let start = out.len();
    out.resize(start + values.len() / BLOCK * BLOCK_BYTES, 0);
    out[start..].par_chunks_mut(BLOCK_BYTES * 64).zip(values.par_chunks(BLOCK * 64)).for_each(
        |(bytes, x)| {
            for (block, x) in bytes.chunks_exact_mut(BLOCK_BYTES).zip(x.chunks_exact(BLOCK)) {
                quantize_block(x, block);
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QStorage, QTensor};
    use candle_core::{Device, Tensor};
    use std::borrow::Cow;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        // Heavy-ish tails like trained weights: a few large values among small ones.
        let mut state = seed;
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                u * u * u * 8.0
            })
            .collect()
    }

    fn dequantize(bytes: Vec<u8>, n: usize) -> Vec<f32> {
        let storage = QStorage::from_data(Cow::Owned(bytes), &Device::Cpu, GgmlDType::Q4K).unwrap();
        let q = QTensor::new(storage, (n,)).unwrap();
        q.dequantize(&Device::Cpu).unwrap().to_vec1().unwrap()
    }

    fn squared_error(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum()
    }

    #[test]
    fn blocks_read_back_through_ggml_and_beat_candles_older_search() {
        let n = 64 * BLOCK;
        let x = values(n, 7);
        let mut ours = Vec::new();
        quantize(&x, &mut ours);
        assert_eq!(ours.len(), n / BLOCK * BLOCK_BYTES);
        let back = dequantize(ours, n);
        // Every value within one step of its sub-block's 4-bit grid (plus f16/6-bit rounding).
        let max = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = x.iter().zip(&back).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(worst <= max / 7.0, "worst error {worst} for values up to {max}");
        let candle = QTensor::quantize(&Tensor::from_slice(&x, (n,), &Device::Cpu).unwrap(), GgmlDType::Q4K)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let (e_ours, e_candle) = (squared_error(&x, &back), squared_error(&x, &candle));
        assert!(e_ours < e_candle, "ours {e_ours} vs candle's {e_candle}");
    }

    #[test]
    fn constant_and_zero_blocks_are_exact() {
        let mut bytes = Vec::new();
        quantize(&vec![0.0; BLOCK], &mut bytes);
        assert!(dequantize(bytes, BLOCK).iter().all(|&v| v == 0.0));
        let mut bytes = Vec::new();
        quantize(&vec![-0.5; BLOCK], &mut bytes);
        let back = dequantize(bytes, BLOCK);
        assert!(back.iter().all(|&v| (v + 0.5).abs() < 1e-3), "{:?}", &back[..4]);
    }
}
