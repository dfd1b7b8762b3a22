//! ggml's block layouts as bytes: the weight formats the kernels multiply, the 8-bit formats
//! the activations are quantized to for them (q8_0 for the 32-value formats, q8_K for the
//! k-quants, as ggml pairs them), and rows dequantized to f32 (an embedding lookup).

use candle_core::quantized::GgmlDType;
use half::f16;

use crate::quant::kquant::nearest;

/// A weight format the kernels multiply in its blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q8_0,
    Q4_0,
    Q5_0,
    Q4K,
    Q6K,
}

/// The 8-bit format a row of activations is quantized to before it meets a weight row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// 32 values: f16 scale, 32 × i8 (34 bytes).
    Q8_0,
    /// 256 values: f32 scale, 256 × i8, 16 × i16 sums of 16 (292 bytes).
    Q8K,
}

pub const Q8_0_BYTES: usize = 34;
pub const Q4_0_BYTES: usize = 18;
pub const Q5_0_BYTES: usize = 22;
pub const Q4K_BYTES: usize = 144;
pub const Q6K_BYTES: usize = 210;
pub const Q8K_BYTES: usize = 292;

impl Format {
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q8_0 => Format::Q8_0,
            GgmlDType::Q4_0 => Format::Q4_0,
            GgmlDType::Q5_0 => Format::Q5_0,
            GgmlDType::Q4K => Format::Q4K,
            GgmlDType::Q6K => Format::Q6K,
            _ => return None,
        })
    }

    pub fn ggml(self) -> GgmlDType {
        match self {
            Format::Q8_0 => GgmlDType::Q8_0,
            Format::Q4_0 => GgmlDType::Q4_0,
            Format::Q5_0 => GgmlDType::Q5_0,
            Format::Q4K => GgmlDType::Q4K,
            Format::Q6K => GgmlDType::Q6K,
        }
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Format::Q8_0 | Format::Q4_0 | Format::Q5_0 => 32,
            Format::Q4K | Format::Q6K => 256,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            Format::Q8_0 => Q8_0_BYTES,
            Format::Q4_0 => Q4_0_BYTES,
            Format::Q5_0 => Q5_0_BYTES,
            Format::Q4K => Q4K_BYTES,
            Format::Q6K => Q6K_BYTES,
        }
    }

    pub fn activation(self) -> Activation {
        match self {
            Format::Q8_0 | Format::Q4_0 | Format::Q5_0 => Activation::Q8_0,
            Format::Q4K | Format::Q6K => Activation::Q8K,
        }
    }
}

impl Activation {
    pub fn block_values(self) -> usize {
        match self {
            Activation::Q8_0 => 32,
            Activation::Q8K => 256,
        }
    }

    pub fn block_bytes(self) -> usize {
        match self {
            Activation::Q8_0 => Q8_0_BYTES,
            Activation::Q8K => Q8K_BYTES,
        }
    }

    /// Appends `x` (a whole number of blocks) quantized: ggml's reference quantizers
    /// (`quantize_row_q8_0_ref`: scale max|x| / 127, round half away from zero;
    /// `quantize_row_q8_K_ref`: scale from the signed extreme, round half to even).
    pub fn quantize(self, x: &[f32], out: &mut Vec<u8>) {
        match self {
            Activation::Q8_0 => x.chunks_exact(32).for_each(|b| quantize_q8_0(b, out)),
            Activation::Q8K => x.chunks_exact(256).for_each(|b| quantize_q8k(b, out)),
        }
    }
}

fn quantize_q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|&v| (v * id).round() as i8 as u8));
}

fn quantize_q8k(x: &[f32], out: &mut Vec<u8>) {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax == 0.0 {
        out.extend_from_slice(&[0u8; Q8K_BYTES]);
        return;
    }
    let iscale = -127.0 / max;
    out.extend_from_slice(&(1.0 / iscale).to_le_bytes());
    let codes: Vec<i8> = x.iter().map(|&v| nearest(iscale * v).min(127) as i8).collect();
    out.extend(codes.iter().map(|&q| q as u8));
    for group in codes.chunks_exact(16) {
        let sum: i16 = group.iter().map(|&q| i16::from(q)).sum();
        out.extend_from_slice(&sum.to_le_bytes());
    }
}

pub(super) fn half(bytes: &[u8]) -> f32 {
    f16::from_le_bytes([bytes[0], bytes[1]]).to_f32()
}

/// q4_K's 6-bit scale and min of sub-block `j` (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// One row of `format` blocks as f32, computed as ggml's `dequantize_row_*` (and candle's).
pub fn dequantize_row(format: Format, row: &[u8], out: &mut [f32]) {
    let n = format.block_values();
    for (block, y) in row.chunks_exact(format.block_bytes()).zip(out.chunks_exact_mut(n)) {
        match format {
            Format::Q8_0 => {
                let d = half(block);
                for (y, &q) in y.iter_mut().zip(&block[2..34]) {
                    *y = f32::from(q as i8) * d;
                }
            }
            Format::Q4_0 => {
                let d = half(block);
                for (j, &q) in block[2..18].iter().enumerate() {
                    y[j] = (i32::from(q & 0xF) - 8) as f32 * d;
                    y[j + 16] = (i32::from(q >> 4) - 8) as f32 * d;
                }
            }
            Format::Q5_0 => {
                let d = half(block);
                let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
                for (j, &q) in block[6..22].iter().enumerate() {
                    let high0 = ((qh >> j) << 4) & 0x10;
                    let high1 = (qh >> (j + 12)) & 0x10;
                    y[j] = ((u32::from(q & 0xF) | high0) as i32 - 16) as f32 * d;
                    y[j + 16] = ((u32::from(q >> 4) | high1) as i32 - 16) as f32 * d;
                }
            }
            Format::Q4K => {
                let (d, dmin) = (half(block), half(&block[2..]));
                let (scales, qs) = (&block[4..16], &block[16..144]);
                for c in 0..4 {
                    let (sc1, m1) = scale_min_k4(2 * c, scales);
                    let (sc2, m2) = scale_min_k4(2 * c + 1, scales);
                    let (d1, min1) = (d * f32::from(sc1), dmin * f32::from(m1));
                    let (d2, min2) = (d * f32::from(sc2), dmin * f32::from(m2));
                    for l in 0..32 {
                        let q = qs[32 * c + l];
                        y[64 * c + l] = d1 * f32::from(q & 0xF) - min1;
                        y[64 * c + 32 + l] = d2 * f32::from(q >> 4) - min2;
                    }
                }
            }
            Format::Q6K => {
                let d = half(&block[208..]);
                for half_block in 0..2 {
                    let ql = &block[64 * half_block..];
                    let qh = &block[128 + 32 * half_block..];
                    let sc = &block[192 + 8 * half_block..];
                    let y = &mut y[128 * half_block..];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = (i32::from(ql[l] & 0xF) | (i32::from(qh[l] & 3) << 4)) - 32;
                        let q2 = (i32::from(ql[l + 32] & 0xF) | (i32::from((qh[l] >> 2) & 3) << 4)) - 32;
                        let q3 = (i32::from(ql[l] >> 4) | (i32::from((qh[l] >> 4) & 3) << 4)) - 32;
                        let q4 = (i32::from(ql[l + 32] >> 4) | (i32::from((qh[l] >> 6) & 3) << 4)) - 32;
                        let scale = |k: usize| d * f32::from(sc[is + 2 * k] as i8);
                        y[l] = scale(0) * q1 as f32;
                        y[l + 32] = scale(1) * q2 as f32;
                        y[l + 64] = scale(2) * q3 as f32;
                        y[l + 96] = scale(3) * q4 as f32;
                    }
                }
            }
        }
    }
}
