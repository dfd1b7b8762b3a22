//! Block-wise quantization in com.microsoft `MatMulNBits`' layout: each row is cut into blocks
//! of `block` weights along the input axis; each block has an f32 scale and a zero point, and
//! codes are unsigned (`bits` = 4: 0..=15, two per byte, low nibble first; 8: one per byte).
//!
//! - symmetric: zero point 2^(bits-1) (8 or 128); scale from max|w| (max|w| / 7 for 4 bits);
//! - asymmetric: the block's range widened to include 0, scale = (max - min) / (2^bits - 1),
//!   zero point = round(-min / scale).
//!
//! Starting from those round-to-nearest parameters, a few narrower grids (clipping the extremes)
//! are tried, the one with the least squared error in the block is kept, and its scale is
//! refitted by least squares to the codes it chose. Zero points are
//! always stored, packed like the codes: tract's MatMulNBits mis-reads symmetric weights without
//! them, and they cost 1/64 byte per 4-bit weight.
//!
//! A block with no range gets scale 1 (its codes then stand for exact zeros). The padding of a
//! partial last block holds the zero point's code, so it stands for 0 as well.

use rayon::prelude::*;

use super::{ErrorSums, Quantized};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 8;

/// The largest block size (`INT4_BLOCK_SIZES`).
const MAX_BLOCK: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub bits: u8,
    pub block: usize,
    pub symmetric: bool,
}

impl Format {
    fn max_code(self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }

    fn mid(self) -> u8 {
        1 << (self.bits - 1)
    }

    fn per_byte(self) -> usize {
        8 / usize::from(self.bits)
    }

    /// Round-to-nearest parameters of one block: the block's whole range, nothing clipped.
    #[inline(always)]
    fn range_params(self, values: &[f32]) -> (f32, u8) {
        if self.symmetric {
            let (lo, hi) = range(values);
            let max = hi.max(-lo);
            let scale = if max == 0.0 { 1.0 } else { max / f32::from(self.mid() - 1) };
            (scale, self.mid())
        } else {
            let (lo, hi) = range(values);
            if hi == lo {
                return (1.0, 0);
            }
            let scale = (hi - lo) / self.max_code();
            let zero = (-lo / scale).round().clamp(0.0, self.max_code()) as u8;
            (scale, zero)
        }
    }

    /// Squared error of round-to-nearest over the block's range (what the search improves on).
    pub fn range_error(self, values: &[f32]) -> f64 {
        let (scale, zero) = self.range_params(values);
        values
            .iter()
            .map(|&w| {
                let d = f64::from(w) - f64::from(self.dequantize(self.code(w, scale, zero), scale, zero));
                d * d
            })
            .sum()
    }

    /// Squared error of the block under (scale, zero).
    #[inline(always)]
    fn squared_error(self, values: &[f32], scale: f32, zero: u8) -> f32 {
        let (inverse, zero, max) = (1.0 / scale, f32::from(zero), self.max_code());
        lane_sums(values, |w| {
            let d = w - (code_with(w, inverse, zero, max) - zero) * scale;
            [d * d, 0.0]
        })[0]
    }

    /// Scale and zero point of one block: round-to-nearest over the block's range, then other
    /// anchorings of a grid as wide (asymmetric) and a refitted scale, each kept only when it
    /// lowers the block's squared error. No grid is narrowed to clip the extremes, and the scale
    /// is refitted so the block keeps its energy (`Σw² / Σw·q`), not by least squares
    /// (`Σw·q / Σq²`): both lower the weight error but shrink every matrix a little in the same
    /// direction, which on trained weights costs more than the error they save (qwen3-code,
    /// mean KL on held-out text: 1.52e-3 with both, 1.16e-3 for plain round-to-nearest, 1.12e-3
    /// this way; docs/quantization.md).
    #[inline(always)]
    pub fn block_params(self, values: &[f32]) -> (f32, u8) {
        let (scale, zero) = self.range_params(values);
        let mut best = (self.squared_error(values, scale, zero), scale, zero);
        if best.0 == 0.0 {
            return (scale, zero);
        }
        let (lo, hi) = range(values);
        let candidates: &[(f32, u8)] = if self.symmetric {
            // The extra negative code (-8 of -8..=7) lets the grid reach max|w| in 8 steps.
            &[(hi.max(-lo) / f32::from(self.mid()), zero)]
        } else {
            let zero_at = |z: f32| z.round().clamp(0.0, self.max_code()) as u8;
            // Anchor the high end, or centre the grid on the range (the low end is round-to-nearest's).
            &[
                (scale, zero_at(self.max_code() - hi / scale)),
                (scale, zero_at((self.max_code() - (hi + lo) / scale) / 2.0)),
            ]
        };
        for &(s, z) in candidates {
            let error = self.squared_error(values, s, z);
            if error < best.0 {
                best = (error, s, z);
            }
        }
        // The scale that keeps the block's energy given the codes and zero point, then re-round; twice.
        for _ in 0..2 {
            let (_, s, z) = best;
            let (inverse, zero, max) = (1.0 / s, f32::from(z), self.max_code());
            let [num, den] = lane_sums(values, |w| {
                let q = code_with(w, inverse, zero, max) - zero;
                [w * w, w * q]
            });
            if den == 0.0 || num <= 0.0 {
                break;
            }
            let refit = num / den;
            let error = self.squared_error(values, refit, z);
            if error >= best.0 {
                break;
            }
            best = (error, refit, z);
        }
        (best.1, best.2)
    }

    /// `clamp(w / scale + zero)` rounded half to even: branch-free and without `roundf`
    /// (which baseline x86-64 calls out of line), so the search loops vectorize.
    pub fn code(self, w: f32, scale: f32, zero: u8) -> u8 {
        code_with(w, 1.0 / scale, f32::from(zero), self.max_code()) as u8
    }

    /// The codes are symmetric around the zero point except for one extra negative step; the
    /// symmetric scale leaves that step unused so +max and -max are both exact.
    pub fn dequantize(self, code: u8, scale: f32, zero: u8) -> f32 {
        (f32::from(code) - f32::from(zero)) * scale
    }
}

/// Two sums of `f` over `values` in eight independent lanes, so the loop vectorizes (one
/// running sum cannot be reordered, and these loops are most of a quantized export).
#[inline(always)]
fn lane_sums(values: &[f32], f: impl Fn(f32) -> [f32; 2]) -> [f32; 2] {
    lane_sums_coded(values, values, |w, _| f(w))
}

/// [`lane_sums`] of `f(w, code)` over `values` and their codes.
#[inline(always)]
fn lane_sums_coded(values: &[f32], codes: &[f32], f: impl Fn(f32, f32) -> [f32; 2]) -> [f32; 2] {
    let (mut first, mut second) = ([0.0f32; 8], [0.0f32; 8]);
    let whole = values.len() / 8 * 8;
    let mut tail = [0.0f32; 2];
    for (&w, &c) in values[whole..].iter().zip(&codes[whole..]) {
        let [a, b] = f(w, c);
        tail[0] += a;
        tail[1] += b;
    }
    for (chunk, coded) in values[..whole].chunks_exact(8).zip(codes.chunks_exact(8)) {
        for (((a, b), &w), &c) in first.iter_mut().zip(second.iter_mut()).zip(chunk).zip(coded) {
            let [x, y] = f(w, c);
            *a += x;
            *b += y;
        }
    }
    [first.iter().sum::<f32>() + tail[0], second.iter().sum::<f32>() + tail[1]]
}

/// The block's range widened to include 0, in eight lanes (min and max are exact in any order).
#[inline(always)]
fn range(values: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([0.0f32; 8], [0.0f32; 8]);
    let chunks = values.chunks_exact(8);
    let (mut tail_lo, mut tail_hi) = (0.0f32, 0.0f32);
    for &w in chunks.remainder() {
        tail_lo = tail_lo.min(w);
        tail_hi = tail_hi.max(w);
    }
    for chunk in chunks {
        for ((l, h), &w) in lo.iter_mut().zip(hi.iter_mut()).zip(chunk) {
            *l = l.min(w);
            *h = h.max(w);
        }
    }
    (lo.iter().fold(tail_lo, |a, &b| a.min(b)), hi.iter().fold(tail_hi, |a, &b| a.max(b)))
}

/// Adding and subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to an integer
/// (half to even) in two plain additions, which vectorize; `as i32` saturates and `round`
/// calls libm, neither of which does.
const ROUNDER: f32 = 12_582_912.0;

/// The code of `w` as a float: `clamp(w * inverse + zero, 0, max)` rounded half to even.
#[inline(always)]
fn code_with(w: f32, inverse: f32, zero: f32, max: f32) -> f32 {
    ((w * inverse + zero).clamp(0.0, max) + ROUNDER) - ROUNDER
}

#[inline(always)]
fn pack(codes: &mut [u8], index: usize, bits: u8, code: u8) {
    let per_byte = 8 / usize::from(bits);
    let shift = usize::from(bits) * (index % per_byte);
    let byte = &mut codes[index / per_byte];
    *byte = (*byte & !(((1u16 << bits) - 1) << shift) as u8) | (code << shift);
}

/// Reads code `index` of a packed run.
pub fn unpack(codes: &[u8], index: usize, bits: u8) -> u8 {
    let per_byte = 8 / usize::from(bits);
    let shift = usize::from(bits) * (index % per_byte);
    (codes[index / per_byte] >> shift) & ((1u16 << bits) - 1) as u8
}

/// One row with the widest vectors this CPU has: the scale search is most of a quantized
/// export's time, and AVX2 doubles its lanes over the x86-64 baseline. Same operations in the
/// same order either way (no FMA contraction), so the results are bit-identical.
fn row(format: Format, values: &[f32], codes: &mut [u8], scales: &mut [f32], zeros: &mut [u8]) -> ErrorSums {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { row_avx2(format, values, codes, scales, zeros) };
    }
    row_portable(format, values, codes, scales, zeros)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn row_avx2(
    format: Format,
    values: &[f32],
    codes: &mut [u8],
    scales: &mut [f32],
    zeros: &mut [u8],
) -> ErrorSums {
    row_portable(format, values, codes, scales, zeros)
}

/// One row: its packed codes, scales and packed zero points.
#[inline(always)]
fn row_portable(
    format: Format,
    values: &[f32],
    codes: &mut [u8],
    scales: &mut [f32],
    zeros: &mut [u8],
) -> ErrorSums {
    let mut sums = ErrorSums::default();
    let blob = format.block * usize::from(format.bits) / 8;
    for (b, ((block, codes), scale)) in
        values.chunks(format.block).zip(codes.chunks_mut(blob)).zip(scales.iter_mut()).enumerate()
    {
        let (s, zero) = format.block_params(block);
        *scale = s;
        let (inverse, z, max) = (1.0 / s, f32::from(zero), format.max_code());
        // Each code once, in a block-sized buffer whose padding holds the zero point (it
        // stands for 0 past a partial block's end); the error and the packing read them.
        let mut coded = [z; MAX_BLOCK];
        for (c, &w) in coded.iter_mut().zip(block) {
            *c = code_with(w, inverse, z, max);
        }
        let [error, norm] = lane_sums_coded(block, &coded, |w, c| {
            let d = w - (c - z) * s;
            [d * d, w * w]
        });
        match format.bits {
            4 => {
                for (byte, pair) in codes.iter_mut().zip(coded.chunks_exact(2)) {
                    *byte = pair[0] as u8 | (pair[1] as u8) << 4;
                }
            }
            _ => {
                for (byte, &c) in codes.iter_mut().zip(&coded) {
                    *byte = c as u8;
                }
            }
        }
        sums.add(ErrorSums { squared_error: f64::from(error), squared_norm: f64::from(norm) });
        pack(zeros, b, format.bits, zero);
    }
    sums
}

/// Quantizes whole rows of `cols`, appending codes, scales and (asymmetric) zero points.
pub fn quantize(format: Format, values: &[f32], cols: usize, out: &mut Quantized) -> ErrorSums {
    assert!(format.block <= MAX_BLOCK, "block sizes are checked against INT4_BLOCK_SIZES when read");
    let rows = values.len() / cols;
    let blocks = cols.div_ceil(format.block);
    let code_row = blocks * format.block * usize::from(format.bits) / 8;
    let zero_row = blocks.div_ceil(format.per_byte());
    let (code_start, scale_start, zero_start) = (out.codes.len(), out.scales.len(), out.zero_points.len());
    out.codes.resize(code_start + rows * code_row, 0);
    out.scales.resize(scale_start + rows * blocks, 0.0);
    out.zero_points.resize(zero_start + rows * zero_row, 0);
    let mut zero_chunks: Vec<&mut [u8]> =
        out.zero_points[zero_start..].chunks_mut(zero_row * ROWS_PER_TASK).collect();
    ErrorSums::in_order(
        out.codes[code_start..]
            .par_chunks_mut(code_row * ROWS_PER_TASK)
            .zip(out.scales[scale_start..].par_chunks_mut(blocks * ROWS_PER_TASK))
            .zip(zero_chunks.par_iter_mut())
            .zip(values.par_chunks(cols * ROWS_PER_TASK))
            .map(|(((codes, scales), zeros), values)| {
                let mut sums = ErrorSums::default();
                for (r, v) in values.chunks(cols).enumerate() {
                    let zeros = &mut zeros[r * zero_row..(r + 1) * zero_row];
                    sums.add(row(
                        format,
                        v,
                        &mut codes[r * code_row..(r + 1) * code_row],
                        &mut scales[r * blocks..(r + 1) * blocks],
                        zeros,
                    ));
                }
                sums
            }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYM4: Format = Format { bits: 4, block: 4, symmetric: true };
    const ASYM4: Format = Format { bits: 4, block: 4, symmetric: false };

    #[test]
    fn symmetric_int4_by_hand() {
        let mut out = Quantized::default();
        // Block 0: max 7 -> scale 1, exact: codes w + 8. Block 1 (partial, 2 of 4): the range
        // grid (0.7 / 7 = 0.1) rounds 0.35 to 0.4; the 8-step grid 0.7 / 8 = 0.0875 is exact
        // (0.35 -> 4 + 8 = 12, -0.7 -> -8 + 8 = 0) and wins. Padding holds 8.
        let values = [7.0, -7.0, 2.0, 0.0, 0.35, -0.7];
        quantize(SYM4, &values, 6, &mut out);
        assert_eq!(out.scales.len(), 2);
        assert_eq!(out.scales[0], 1.0);
        assert!((out.scales[1] - 0.0875).abs() < 1e-7);
        let codes: Vec<u8> = (0..8).map(|i| unpack(&out.codes, i, 4)).collect();
        assert_eq!(codes, [15, 1, 10, 8, 12, 0, 8, 8]);
        // Low nibble first: byte 0 = 15 | 1 << 4.
        assert_eq!(out.codes[0], 0x1F);
        // Zero points 8 and 8, packed into one byte.
        assert_eq!(out.zero_points, [0x88]);
    }

    #[test]
    fn asymmetric_int4_by_hand() {
        let mut out = Quantized::default();
        // Range [0, 1.5] (0 included): scale 0.1, zero 0. Second row range [-1.5, 0]:
        // scale 0.1, zero 15.
        let values = [0.0, 0.5, 1.0, 1.5, -1.5, -1.0, -0.5, 0.0];
        quantize(ASYM4, &values, 4, &mut out);
        assert!((out.scales[0] - 0.1).abs() < 1e-7 && (out.scales[1] - 0.1).abs() < 1e-7);
        let codes: Vec<u8> = (0..8).map(|i| unpack(&out.codes, i, 4)).collect();
        assert_eq!(codes, [0, 5, 10, 15, 0, 5, 10, 15]);
        // One zero point per row, packed into one byte per row (a single block).
        assert_eq!(out.zero_points, [0, 15]);
    }

    #[test]
    fn all_zero_rows_and_eight_bits() {
        let mut out = Quantized::default();
        // Clipping 1.5 would cost more than the exact grid saves: the range grid stays.
        quantize(ASYM4, &[0.0; 4], 4, &mut out);
        assert_eq!((out.scales[0], out.zero_points[0]), (1.0, 0));
        let mut out = Quantized::default();
        let sym8 = Format { bits: 8, block: 2, symmetric: true };
        // Scale 1.27 / 127 = 0.01 is exact: 1.27 -> 127 + 128 = 255, -0.5 -> -50 + 128 = 78.
        quantize(sym8, &[1.27, -0.5], 2, &mut out);
        assert_eq!(out.codes, [255, 78]);
        assert!((out.scales[0] - 0.01).abs() < 1e-8);
    }

    #[test]
    fn parallel_tasks_match_one_row_at_a_time() {
        let values: Vec<f32> = (0..37 * 70).map(|i| ((i * 7919) % 113) as f32 / 13.0 - 4.0).collect();
        for format in [SYM4, ASYM4, Format { bits: 4, block: 32, symmetric: false }] {
            let mut all = Quantized::default();
            let total = quantize(format, &values, 70, &mut all);
            let mut one = Quantized::default();
            let mut sum = ErrorSums::default();
            for r in values.chunks(70) {
                sum.add(quantize(format, r, 70, &mut one));
            }
            assert_eq!(all, one);
            assert!((total.squared_error - sum.squared_error).abs() < 1e-9);
        }
    }
}
