//! Weight quantization, streaming and row-local: every scheme quantizes whole rows (output
//! channels) on their own, so the merge can hand over blocks of rows as they come and memory
//! stays flat. Two layouts:
//!
//! - `Int8PerChannel`: symmetric int8 with one f32 scale per row, for ONNX's per-axis
//!   `DequantizeLinear` (axis 0).
//! - `Blocks`: 4- or 8-bit codes in blocks along the row, one f32 scale (and, when asymmetric,
//!   one packed zero point) per block, laid out exactly as com.microsoft `MatMulNBits` reads
//!   them: `[rows, blocks, block * bits / 8]`, low nibble first.
//!
//! Block scales are searched (see `blocks`): the error is never above round-to-nearest's.
//!
//! Rounding: int8 per channel rounds half away from zero; blocks round `w / scale + zero` half
//! to even (the same away from ties). NaN and infinite weights are refused: a
//! scale computed from them would poison a whole row or block.

pub mod blocks;
pub mod ggml;
pub mod int8;
pub(crate) mod kquant;
pub mod q4k;
pub mod q6k;
pub mod report;
pub mod stats;

pub use report::{QuantReport, TensorGroup};
pub use stats::ErrorSums;

use serde::Serialize;

/// How a weight matrix is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "scheme", rename_all = "kebab-case")]
pub enum Scheme {
    /// int8, symmetric, one scale per output channel (row).
    Int8PerChannel,
    /// `bits` (4 or 8) per weight in blocks of `block` along each row.
    Blocks { bits: u8, block: usize, symmetric: bool },
}

impl Scheme {
    /// Scale (and zero point) groups per row of `cols` weights.
    pub fn groups_per_row(self, cols: usize) -> usize {
        match self {
            Scheme::Int8PerChannel => 1,
            Scheme::Blocks { block, .. } => cols.div_ceil(block),
        }
    }

    /// Bytes of codes per row of `cols` weights (a partial last block is padded).
    pub fn code_bytes_per_row(self, cols: usize) -> usize {
        match self {
            Scheme::Int8PerChannel => cols,
            Scheme::Blocks { bits, block, .. } => self.groups_per_row(cols) * block * usize::from(bits) / 8,
        }
    }

    /// Bytes of packed zero points per row (int8 per channel has none).
    pub fn zero_point_bytes_per_row(self, cols: usize) -> usize {
        match self {
            Scheme::Blocks { bits, .. } => self.groups_per_row(cols).div_ceil(8 / usize::from(bits)),
            Scheme::Int8PerChannel => 0,
        }
    }

    /// Total bytes written for a `rows` x `cols` matrix: codes, f32 scales, zero points.
    pub fn bytes(self, rows: usize, cols: usize) -> u64 {
        let per_row = self.code_bytes_per_row(cols)
            + 4 * self.groups_per_row(cols)
            + self.zero_point_bytes_per_row(cols);
        (rows * per_row) as u64
    }
}

/// A weight that cannot be quantized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("weight {tensor} holds {value} at row {row}, column {col}: it cannot be quantized")]
pub struct NonFinite {
    pub tensor: String,
    pub row: usize,
    pub col: usize,
    pub value: f32,
}

/// Quantized rows, appended block after block of rows.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Quantized {
    pub codes: Vec<u8>,
    pub scales: Vec<f32>,
    pub zero_points: Vec<u8>,
}

impl Quantized {
    pub fn clear(&mut self) {
        self.codes.clear();
        self.scales.clear();
        self.zero_points.clear();
    }
}

/// Quantizes `values` (whole rows of `cols`) in parallel, appending to `out`. `first_row`
/// only names the row in errors. Returns the squared error and squared norm of these rows.
pub fn quantize_rows(
    scheme: Scheme,
    tensor: &str,
    values: &[f32],
    cols: usize,
    first_row: usize,
    out: &mut Quantized,
) -> Result<ErrorSums, NonFinite> {
    if let Some(at) = values.iter().position(|v| !v.is_finite()) {
        return Err(NonFinite {
            tensor: tensor.to_string(),
            row: first_row + at / cols,
            col: at % cols,
            value: values[at],
        });
    }
    match scheme {
        Scheme::Int8PerChannel => Ok(int8::quantize(values, cols, out)),
        Scheme::Blocks { bits, block, symmetric } => {
            Ok(blocks::quantize(blocks::Format { bits, block, symmetric }, values, cols, out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_layouts() {
        let int4 = Scheme::Blocks { bits: 4, block: 32, symmetric: false };
        // 70 columns: 3 blocks (the last partial), 16 bytes each, 2 bytes of zero points.
        assert_eq!(int4.groups_per_row(70), 3);
        assert_eq!(int4.code_bytes_per_row(70), 48);
        assert_eq!(int4.zero_point_bytes_per_row(70), 2);
        assert_eq!(int4.bytes(2, 70), 2 * (48 + 12 + 2));
        assert_eq!(Scheme::Int8PerChannel.bytes(3, 10), 3 * (10 + 4));
        let int8_blocks = Scheme::Blocks { bits: 8, block: 16, symmetric: true };
        assert_eq!(int8_blocks.bytes(1, 20), 32 + 8 + 2);
    }

    #[test]
    fn non_finite_weights_are_refused_with_their_place() {
        let mut out = Quantized::default();
        let values = [0.5, 1.0, 2.0, f32::NAN, 0.0, 1.0];
        let err = quantize_rows(
            Scheme::Int8PerChannel,
            "model.layers.0.mlp.up_proj.weight",
            &values,
            3,
            10,
            &mut out,
        )
        .unwrap_err();
        assert_eq!((err.row, err.col), (11, 0));
        assert!(err.to_string().contains("model.layers.0.mlp.up_proj.weight holds NaN at row 11, column 0"));
        let inf = [f32::INFINITY];
        let err =
            quantize_rows(Scheme::Blocks { bits: 4, block: 32, symmetric: true }, "w", &inf, 1, 0, &mut out)
                .unwrap_err();
        assert_eq!(err.value, f32::INFINITY);
    }

    use proptest::prelude::*;

    /// Rows of random width with values spread over a few orders of magnitude.
    fn matrix() -> impl Strategy<Value = (Vec<f32>, usize)> {
        (1usize..80, 1usize..6).prop_flat_map(|(cols, rows)| {
            (proptest::collection::vec(-100.0f32..100.0, cols * rows), Just(cols))
        })
    }

    fn dequantized(scheme: Scheme, q: &Quantized, cols: usize, rows: usize) -> Vec<(f32, f32)> {
        // (value, scale) for every weight, read back from the layout.
        let mut out = Vec::new();
        for r in 0..rows {
            for c in 0..cols {
                match scheme {
                    Scheme::Int8PerChannel => {
                        let s = q.scales[r];
                        out.push((int8::dequantize(q.codes[r * cols + c], s), s));
                    }
                    Scheme::Blocks { bits, block, symmetric } => {
                        let f = blocks::Format { bits, block, symmetric };
                        let groups = scheme.groups_per_row(cols);
                        let (g, i) = (c / block, c % block);
                        let row_codes = &q.codes[r * scheme.code_bytes_per_row(cols)..];
                        let code = blocks::unpack(row_codes, g * block + i, bits);
                        let zero = blocks::unpack(
                            &q.zero_points[r * scheme.zero_point_bytes_per_row(cols)..],
                            g,
                            bits,
                        );
                        let s = q.scales[r * groups + g];
                        out.push((f.dequantize(code, s, zero), s));
                    }
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn round_trip_error_is_bounded((values, cols) in matrix(), block_ix in 0usize..4, bits4 in any::<bool>(), symmetric in any::<bool>()) {
            let block = [16, 32, 64, 128][block_ix];
            let schemes = [
                Scheme::Int8PerChannel,
                Scheme::Blocks { bits: if bits4 { 4 } else { 8 }, block, symmetric },
            ];
            for scheme in schemes {
                let mut q = Quantized::default();
                let sums = quantize_rows(scheme, "w", &values, cols, 0, &mut q).unwrap();
                let rows = values.len() / cols;
                prop_assert_eq!(q.codes.len(), rows * scheme.code_bytes_per_row(cols));
                prop_assert_eq!(q.scales.len(), rows * scheme.groups_per_row(cols));
                let back = dequantized(scheme, &q, cols, rows);
                let mut checked = ErrorSums::default();
                for (&w, &(d, s)) in values.iter().zip(&back) {
                    match scheme {
                        // Per channel never clips: half a step at most.
                        Scheme::Int8PerChannel => prop_assert!((w - d).abs() <= 0.5 * s * 1.0001 + 1e-6, "w {} dequantized {} scale {}", w, d, s),
                        // Blocks may clip the extremes, by at most a quarter of the value.
                        Scheme::Blocks { .. } => prop_assert!((w - d).abs() <= 0.5 * s * 1.0001 + 0.25 * w.abs() + 1e-6, "w {} dequantized {} scale {}", w, d, s),
                    }
                    checked.push(w, d);
                }
                prop_assert!((checked.squared_error - sums.squared_error).abs() <= 1e-6 * checked.squared_norm.max(1.0));
                // The search never does worse than round-to-nearest over the block's range.
                if let Scheme::Blocks { bits, block, symmetric } = scheme {
                    let f = blocks::Format { bits, block, symmetric };
                    let rtn: f64 = values.chunks(cols).flat_map(|row| row.chunks(block)).map(|b| f.range_error(b)).sum();
                    prop_assert!(sums.squared_error <= rtn * 1.0001 + 1e-9, "{} > {}", sums.squared_error, rtn);
                }
            }
        }
    }
}
