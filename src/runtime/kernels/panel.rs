//! Products of many activation rows (a prompt) with a block matrix: a task's weight rows are
//! expanded once into 16-bit integers with their sub-block scales folded in (q4_K: scale ·
//! code, q6_K: scale · (code − 32), the 32-value formats: the signed code), the activations'
//! 8-bit codes into 16-bit ones, and every (weight row, activation row) pair is summed by
//! `vpdpwssd` (AVX-512 VNNI, 32 products per instruction) in registers holding 4 weight rows
//! and 2 activation rows at once. A row is expanded once per task and meets all the prompt's
//! rows, so the decoding of the blocks no longer costs per pair.
//!
//! The definition the SIMD kernel reproduces bit for bit: per block, 16 exact integer lanes
//! (lane l: values 2l and 2l+1 of every 32), each accumulated in f32 by a fused multiply-add
//! with `d_weight · d_activation`; q4_K's mins as 4 exact lanes of `min · (sum of 32
//! activations)` pairs, accumulated with `dmin · d_activation`; lanes summed in a fixed tree.

use super::formats::{Activation, Format, Q8_0_BYTES, Q8K_BYTES, half, scale_min_k4};

/// Weight rows expanded for the panel kernel.
pub struct ExpandedRows {
    pub rows: usize,
    pub cols: usize,
    /// Values per block: 32, or 256 for the k-quants.
    pub block: usize,
    /// [rows, cols].
    pub values: Vec<i16>,
    /// [rows, blocks]: each block's scale.
    pub scales: Vec<f32>,
    /// q4_K: [rows, blocks, 8] sub-block mins, and [rows, blocks] their scale.
    pub mins: Vec<i16>,
    pub min_scales: Vec<f32>,
}

/// Activation rows expanded for the panel kernel.
pub struct ExpandedActivations {
    pub rows: usize,
    /// [rows, cols].
    pub values: Vec<i16>,
    /// [rows, blocks].
    pub scales: Vec<f32>,
    /// q8_K: [rows, blocks, 8] sums of each 32 values.
    pub sums: Vec<i16>,
}

impl ExpandedRows {
    /// Rows `first..first + rows` of a matrix of `cols` values per row in `format`.
    pub fn of(format: Format, bytes: &[u8], cols: usize, first: usize, rows: usize) -> Self {
        let block = format.block_values();
        let blocks = cols / block;
        let rb = blocks * format.block_bytes();
        let mut e = ExpandedRows {
            rows,
            cols,
            block,
            values: Vec::with_capacity(rows * cols),
            scales: Vec::with_capacity(rows * blocks),
            mins: Vec::new(),
            min_scales: Vec::new(),
        };
        for r in first..first + rows {
            for b in bytes[r * rb..(r + 1) * rb].chunks_exact(format.block_bytes()) {
                e.push_block(format, b);
            }
        }
        e
    }

    fn push_block(&mut self, format: Format, b: &[u8]) {
        match format {
            Format::Q8_0 => {
                self.scales.push(half(b));
                self.values.extend(b[2..34].iter().map(|&q| i16::from(q as i8)));
            }
            Format::Q4_0 => {
                self.scales.push(half(b));
                let qs = &b[2..18];
                self.values.extend(qs.iter().map(|&q| i16::from(q & 0xF) - 8));
                self.values.extend(qs.iter().map(|&q| i16::from(q >> 4) - 8));
            }
            Format::Q5_0 => {
                self.scales.push(half(b));
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                let qs = &b[6..22];
                for (j, &q) in qs.iter().enumerate() {
                    self.values.push((i16::from(q & 0xF) | ((((qh >> j) & 1) as i16) << 4)) - 16);
                }
                for (j, &q) in qs.iter().enumerate() {
                    self.values.push((i16::from(q >> 4) | ((((qh >> (j + 16)) & 1) as i16) << 4)) - 16);
                }
            }
            Format::Q4K => {
                self.scales.push(half(b));
                self.min_scales.push(half(&b[2..]));
                let (packed, qs) = (&b[4..16], &b[16..144]);
                let start = self.values.len();
                self.values.resize(start + 256, 0);
                let block = &mut self.values[start..];
                for sub in 0..8 {
                    let (sc, m) = scale_min_k4(sub, packed);
                    self.mins.push(i16::from(m));
                    let (chunk, shift) = (&qs[32 * (sub / 2)..32 * (sub / 2) + 32], 4 * (sub % 2));
                    let sc = i16::from(sc);
                    for (v, &q) in block[32 * sub..32 * sub + 32].iter_mut().zip(chunk) {
                        *v = sc * i16::from((q >> shift) & 0xF);
                    }
                }
            }
            Format::Q6K => {
                self.scales.push(half(&b[208..]));
                let start = self.values.len();
                self.values.resize(start + 256, 0);
                let block = &mut self.values[start..];
                for half_block in 0..2 {
                    let (ql, qh, sc) =
                        (&b[64 * half_block..], &b[128 + 32 * half_block..], &b[192 + 8 * half_block..]);
                    for k in 0..4 {
                        let (low, shift) = (&ql[32 * (k % 2)..32 * (k % 2) + 32], 4 * (k / 2));
                        let out = &mut block[128 * half_block + 32 * k..][..32];
                        for half16 in 0..2 {
                            let scale = i16::from(sc[2 * k + half16] as i8);
                            for l in 16 * half16..16 * half16 + 16 {
                                let code = i16::from((low[l] >> shift) & 0xF)
                                    | (i16::from((qh[l] >> (2 * k)) & 3) << 4);
                                out[l] = scale * (code - 32);
                            }
                        }
                    }
                }
            }
        }
    }
}

impl ExpandedActivations {
    /// `quantized` holds `rows` rows of `activation` blocks.
    pub fn of(activation: Activation, quantized: &[u8], rows: usize) -> Self {
        let mut e = ExpandedActivations { rows, values: Vec::new(), scales: Vec::new(), sums: Vec::new() };
        match activation {
            Activation::Q8_0 => {
                for b in quantized.chunks_exact(Q8_0_BYTES) {
                    e.scales.push(half(b));
                    e.values.extend(b[2..34].iter().map(|&q| i16::from(q as i8)));
                }
            }
            Activation::Q8K => {
                for b in quantized.chunks_exact(Q8K_BYTES) {
                    e.scales.push(f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                    e.values.extend(b[4..260].iter().map(|&q| i16::from(q as i8)));
                    for g in 0..8 {
                        let sum = |i: usize| i16::from_le_bytes([b[260 + 2 * i], b[261 + 2 * i]]);
                        e.sums.push(sum(2 * g) + sum(2 * g + 1));
                    }
                }
            }
        }
        e
    }
}

pub(super) fn hsum16(a: &[f32; 16]) -> f32 {
    let mut folded = [0f32; 8];
    for i in 0..8 {
        folded[i] = a[i] + a[i + 8];
    }
    super::scalar::hsum8(&folded)
}

pub(super) fn hsum4(a: &[f32; 4]) -> f32 {
    (a[0] + a[2]) + (a[1] + a[3])
}

/// The definition: weight row `r` of `w` · activation row `j` of `x`.
pub fn dot(w: &ExpandedRows, r: usize, x: &ExpandedActivations, j: usize) -> f32 {
    let (cols, block) = (w.cols, w.block);
    let blocks = cols / block;
    let per_x = x.scales.len() / x.rows.max(1);
    let (mut acc, mut acc_min) = ([0f32; 16], [0f32; 4]);
    for b in 0..blocks {
        let wv = &w.values[r * cols + b * block..][..block];
        let xv = &x.values[j * cols + b * block..][..block];
        let mut lanes = [0i32; 16];
        for (wc, xc) in wv.chunks_exact(32).zip(xv.chunks_exact(32)) {
            for (l, lane) in lanes.iter_mut().enumerate() {
                *lane += i32::from(wc[2 * l]) * i32::from(xc[2 * l])
                    + i32::from(wc[2 * l + 1]) * i32::from(xc[2 * l + 1]);
            }
        }
        let d = w.scales[r * blocks + b] * x.scales[j * per_x + b];
        for (a, &l) in acc.iter_mut().zip(&lanes) {
            *a = d.mul_add(l as f32, *a);
        }
        if !w.mins.is_empty() {
            let (m, s) = (&w.mins[(r * blocks + b) * 8..][..8], &x.sums[(j * blocks + b) * 8..][..8]);
            let dmin = w.min_scales[r * blocks + b] * x.scales[j * per_x + b];
            for (k, a) in acc_min.iter_mut().enumerate() {
                let lane = i32::from(m[2 * k]) * i32::from(s[2 * k])
                    + i32::from(m[2 * k + 1]) * i32::from(s[2 * k + 1]);
                *a = dmin.mul_add(lane as f32, *a);
            }
        }
    }
    hsum16(&acc) - hsum4(&acc_min)
}
