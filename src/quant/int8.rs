//! Symmetric int8 per output channel: scale = max|w| / 127, q = round(w / scale) in
//! [-127, 127] (the code -128 is unused so the range is symmetric). An all-zero row gets
//! scale 1 and codes 0.

use rayon::prelude::*;

use super::{ErrorSums, Quantized};

/// Rows per parallel task.
const ROWS_PER_TASK: usize = 16;

fn row(values: &[f32], codes: &mut [u8]) -> (f32, ErrorSums) {
    let max = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = if max == 0.0 { 1.0 } else { max / 127.0 };
    let mut sums = ErrorSums::default();
    for (w, code) in values.iter().zip(codes) {
        let q = (w / scale).round().clamp(-127.0, 127.0) as i8;
        sums.push(*w, f32::from(q) * scale);
        *code = q as u8;
    }
    (scale, sums)
}

/// Quantizes whole rows of `cols`, appending codes (int8 as bytes) and one scale per row.
pub fn quantize(values: &[f32], cols: usize, out: &mut Quantized) -> ErrorSums {
    let rows = values.len() / cols;
    let start = out.codes.len();
    out.codes.resize(start + values.len(), 0);
    let mut scales = vec![0.0f32; rows];
    let sums = ErrorSums::in_order(
        out.codes[start..]
            .par_chunks_mut(cols * ROWS_PER_TASK)
            .zip(values.par_chunks(cols * ROWS_PER_TASK))
            .zip(scales.par_chunks_mut(ROWS_PER_TASK))
            .map(|((codes, values), scales)| {
                codes
                    .chunks_mut(cols)
                    .zip(values.chunks(cols))
                    .zip(scales.iter_mut())
                    .map(|((c, v), s)| {
                        let (scale, sums) = row(v, c);
                        *s = scale;
                        sums
                    })
                    .sum::<ErrorSums>()
            }),
    );
    out.scales.extend(scales);
    sums
}

/// The value a code stands for.
pub fn dequantize(code: u8, scale: f32) -> f32 {
    f32::from(code as i8) * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_rows() {
        let mut out = Quantized::default();
        // Row 0: max 2.54 -> scale 0.02; 1.0 -> 50, -0.01 -> round(-0.5) = -1 (half away from zero).
        // Row 1: all zero -> scale 1, codes 0.
        let values = [2.54, 1.0, -0.01, 0.0, 0.0, 0.0];
        quantize(&values, 3, &mut out);
        assert_eq!(out.scales.len(), 2);
        assert!((out.scales[0] - 0.02).abs() < 1e-8);
        assert_eq!(out.scales[1], 1.0);
        let codes: Vec<i8> = out.codes.iter().map(|&c| c as i8).collect();
        assert_eq!(codes, [127, 50, -1, 0, 0, 0]);
        assert!((dequantize(out.codes[1], out.scales[0]) - 1.0).abs() < 1e-6);
    }

    #[test]
    fn negative_extreme_maps_to_minus_127() {
        let mut out = Quantized::default();
        let sums = quantize(&[-4.0, 2.0, 1.0, 0.0], 4, &mut out);
        let codes: Vec<i8> = out.codes.iter().map(|&c| c as i8).collect();
        // scale 4/127: 2.0 -> 63.5 -> 64, 1.0 -> 31.75 -> 32.
        assert_eq!(codes, [-127, 64, 32, 0]);
        assert!(sums.relative_error() < 0.01);
    }
}
