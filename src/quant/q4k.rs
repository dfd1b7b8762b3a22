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

use super::kquant::{encode_blocks, nearest};

pub const BLOCK: usize = 256;
pub const BLOCK_BYTES: usize = 144;
const SUB: usize = 32;

/// Sub-blocks per block, searched side by side: lane `j` holds sub-block `j`, so each lane
/// keeps ggml's sequential order of operations (identical results) while the compiler
/// vectorizes across lanes.
const LANES: usize = BLOCK / SUB;
type Lanes = [f32; LANES];

/// The scales and (negated) mins of the 8 sub-blocks and their codes (`codes[i][j]`: value `i`
/// of sub-block `j`): ggml's `make_qkx2_quants(32, 15, x, weights, L, &min, Laux, -1, 0.1, 20,
/// false)` for each sub-block.
fn scales_and_mins(x: &[Lanes; SUB], w: &[Lanes; SUB], codes: &mut [[u8; LANES]; SUB]) -> (Lanes, Lanes) {
    const NMAX: f32 = 15.0;
    let (rmin, rdelta, steps) = (-1.0f32, 0.1f32, 20);
    let (mut min, mut max, mut sum_w, mut sum_x) = (x[0], x[0], w[0], [0f32; LANES]);
    for j in 0..LANES {
        sum_x[j] = w[0][j] * x[0][j];
    }
    for i in 1..SUB {
        for j in 0..LANES {
            if x[i][j] < min[j] {
                min[j] = x[i][j];
            }
            if x[i][j] > max[j] {
                max[j] = x[i][j];
            }
            sum_w[j] += w[i][j];
            sum_x[j] += w[i][j] * x[i][j];
        }
    }
    let mut range = [0f32; LANES];
    for j in 0..LANES {
        if min[j] > 0.0 {
            min[j] = 0.0;
        }
        range[j] = max[j] - min[j];
    }
    let mut scale = [0f32; LANES];
    let mut best = [0f32; LANES];
    let mut iscale = [0f32; LANES];
    for j in 0..LANES {
        iscale[j] = NMAX / range[j];
        scale[j] = 1.0 / iscale[j];
    }
    for i in 0..SUB {
        for j in 0..LANES {
            let l = nearest(iscale[j] * (x[i][j] - min[j])).clamp(0, 15);
            codes[i][j] = l as u8;
            let diff = scale[j] * l as f32 + min[j] - x[i][j];
            best[j] += w[i][j] * (diff * diff);
        }
    }
    let mut trial = [[0u8; LANES]; SUB];
    for step in 0..=steps {
        let (mut sum_l, mut sum_l2, mut sum_xl) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
        // ggml divides by the current range: `min` moves when a step improves the fit.
        for j in 0..LANES {
            iscale[j] = (rmin + rdelta * step as f32 + NMAX) / (max[j] - min[j]);
        }
        for i in 0..SUB {
            for j in 0..LANES {
                let l = nearest(iscale[j] * (x[i][j] - min[j])).clamp(0, 15);
                trial[i][j] = l as u8;
                let (wl, l) = (w[i][j] * l as f32, l as f32);
                sum_l[j] += wl;
                sum_l2[j] += wl * l;
                sum_xl[j] += wl * x[i][j];
            }
        }
        let (mut this_scale, mut this_min, mut valid) = ([0f32; LANES], [0f32; LANES], [false; LANES]);
        for j in 0..LANES {
            let d = sum_w[j] * sum_l2[j] - sum_l[j] * sum_l[j];
            valid[j] = d > 0.0;
            this_scale[j] = (sum_w[j] * sum_xl[j] - sum_x[j] * sum_l[j]) / d;
            this_min[j] = (sum_l2[j] * sum_x[j] - sum_l[j] * sum_xl[j]) / d;
            if this_min[j] > 0.0 {
                this_min[j] = 0.0;
                this_scale[j] = sum_xl[j] / sum_l2[j];
            }
        }
        let mut error = [0f32; LANES];
        for i in 0..SUB {
            for j in 0..LANES {
                let diff = this_scale[j] * trial[i][j] as f32 + this_min[j] - x[i][j];
                error[j] += w[i][j] * (diff * diff);
            }
        }
        // NaN from a lane with d <= 0 never compares below `best`.
        let better: [bool; LANES] = std::array::from_fn(|j| valid[j] && error[j] < best[j]);
        for i in 0..SUB {
            for j in 0..LANES {
                if better[j] {
                    codes[i][j] = trial[i][j];
                }
            }
        }
        for j in 0..LANES {
            if better[j] {
                best[j] = error[j];
                scale[j] = this_scale[j];
                min[j] = this_min[j];
            }
        }
    }
    // A flat sub-block (max == min before the search): all codes 0, scale 0, as ggml returns.
    for j in 0..LANES {
        if range[j] == 0.0 {
            for row in codes.iter_mut() {
                row[j] = 0;
            }
            scale[j] = 0.0;
        }
    }
    (scale, min.map(|m| -m))
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
    // Transposed: value i of sub-block j at [i][j].
    let mut xt = [[0f32; LANES]; SUB];
    let mut weights = [[0f32; LANES]; SUB];
    for j in 0..LANES {
        let sub = &x[SUB * j..SUB * (j + 1)];
        let mut sum_x2 = 0f32;
        for v in sub {
            sum_x2 += v * v;
        }
        let rms = (sum_x2 / SUB as f32).sqrt();
        for (i, v) in sub.iter().enumerate() {
            xt[i][j] = *v;
            weights[i][j] = rms + v.abs();
        }
    }
    let mut lane_codes = [[0u8; LANES]; SUB];
    let (scales, mins) = scales_and_mins(&xt, &weights, &mut lane_codes);
    let mut codes = [0u8; BLOCK];
    for (i, row) in lane_codes.iter().enumerate() {
        for (j, &c) in row.iter().enumerate() {
            codes[SUB * j + i] = c;
        }
    }
    let max_scale = scales.iter().copied().fold(0.0f32, f32::max);
    let max_min = mins.iter().copied().fold(0.0f32, f32::max);
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..BLOCK / SUB {
        // ggml stores the rounded value in a uint8_t before clamping to 63.
        let ls = (nearest(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest(inv_min * mins[j]) as u8).min(63);
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
    encode_blocks(values, out, BLOCK, BLOCK_BYTES, quantize_block);
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

    /// ggml's `make_qkx2_quants(32, 15, ..., -1, 0.1, 20, false)`, one sub-block at a time, as
    /// written in C (same association of every operation).
    fn scalar_search(x: &[f32], w: &[f32]) -> (f32, f32, Vec<u8>) {
        let n = x.len();
        let (mut min, mut max, mut sum_w) = (x[0], x[0], w[0]);
        let mut sum_x = sum_w * x[0];
        for i in 1..n {
            if x[i] < min {
                min = x[i];
            }
            if x[i] > max {
                max = x[i];
            }
            sum_w += w[i];
            sum_x += w[i] * x[i];
        }
        if min > 0.0 {
            min = 0.0;
        }
        if max == min {
            return (0.0, -min, vec![0; n]);
        }
        let mut iscale = 15.0 / (max - min);
        let mut scale = 1.0 / iscale;
        let mut best = 0.0f32;
        let mut codes = vec![0u8; n];
        for i in 0..n {
            let l = nearest(iscale * (x[i] - min)).clamp(0, 15);
            codes[i] = l as u8;
            let diff = scale * codes[i] as f32 + min - x[i];
            best += w[i] * (diff * diff);
        }
        let mut aux = vec![0u8; n];
        for is in 0..=20 {
            iscale = (-1.0 + 0.1 * is as f32 + 15.0) / (max - min);
            let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
            for i in 0..n {
                let l = nearest(iscale * (x[i] - min)).clamp(0, 15);
                aux[i] = l as u8;
                let l = l as f32;
                sum_l += w[i] * l;
                sum_l2 += w[i] * l * l;
                sum_xl += w[i] * l * x[i];
            }
            let d = sum_w * sum_l2 - sum_l * sum_l;
            if d > 0.0 {
                let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
                let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
                if this_min > 0.0 {
                    this_min = 0.0;
                    this_scale = sum_xl / sum_l2;
                }
                let mut mad = 0f32;
                for i in 0..n {
                    let diff = this_scale * aux[i] as f32 + this_min - x[i];
                    mad += w[i] * (diff * diff);
                }
                if mad < best {
                    codes.copy_from_slice(&aux);
                    best = mad;
                    scale = this_scale;
                    min = this_min;
                }
            }
        }
        (scale, -min, codes)
    }

    #[test]
    fn the_side_by_side_search_equals_ggmls_one_sub_block_at_a_time() {
        let mut x = values(64 * BLOCK, 11);
        // Flat, all-positive and all-negative sub-blocks too.
        x[..SUB].fill(0.0);
        x[SUB..2 * SUB].fill(-0.25);
        x[2 * SUB..3 * SUB].iter_mut().for_each(|v| *v = v.abs() + 0.01);
        x[3 * SUB..4 * SUB].iter_mut().for_each(|v| *v = -v.abs() - 0.01);
        for block in x.chunks_exact(BLOCK) {
            let mut xt = [[0f32; LANES]; SUB];
            let mut wt = [[0f32; LANES]; SUB];
            let mut weights = vec![0f32; BLOCK];
            for j in 0..LANES {
                let sub = &block[SUB * j..SUB * (j + 1)];
                let rms = (sub.iter().map(|v| v * v).fold(0.0f32, |a, b| a + b) / SUB as f32).sqrt();
                for (i, v) in sub.iter().enumerate() {
                    weights[SUB * j + i] = rms + v.abs();
                    xt[i][j] = *v;
                    wt[i][j] = rms + v.abs();
                }
            }
            let mut codes = [[0u8; LANES]; SUB];
            let (scales, mins) = scales_and_mins(&xt, &wt, &mut codes);
            for j in 0..LANES {
                let range = SUB * j..SUB * (j + 1);
                let (scale, min, expected) = scalar_search(&block[range.clone()], &weights[range]);
                assert_eq!(
                    (scales[j].to_bits(), mins[j].to_bits()),
                    (scale.to_bits(), min.to_bits()),
                    "sub-block {j}"
                );
                let ours: Vec<u8> = (0..SUB).map(|i| codes[i][j]).collect();
                assert_eq!(ours, expected, "sub-block {j}");
            }
        }
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
