//! The arithmetic of a merge, on a block of rows of one weight, in f32:
//! `W' = W + scale * (C @ M)` where, for a weight of shape [out, in], `C = lora_B` [out, r] and
//! `M = lora_A` [r, in]; for an embedding the delta is transposed, so `C = lora_A^T` and
//! `M = lora_B^T`. DoRA then rescales each row to `m[row] / ‖row‖`.

use rayon::prelude::*;

/// A low-rank update in row-major f32, laid out for row-wise application.
pub struct RowDelta {
    pub rank: usize,
    pub cols: usize,
    /// [rows, rank]
    pub coef: Vec<f32>,
    /// [rank, cols]
    pub basis: Vec<f32>,
    pub scale: f32,
    /// DoRA magnitude per row.
    pub magnitude: Option<Vec<f32>>,
}

/// Transposes a row-major [rows, cols] matrix.
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

impl RowDelta {
    /// Applies the update to `rows` (consecutive rows starting at `first_row`).
    pub fn apply(&self, rows: &mut [f32], first_row: usize) {
        let cols = self.cols;
        let n = rows.len() / cols;
        let coef = &self.coef[first_row * self.rank..(first_row + n) * self.rank];
        // rows := 1 * rows + scale * (coef @ basis): the delta is accumulated first, then scaled
        // and added, PEFT's order of operations.
        // SAFETY: every pointer addresses a row-major matrix of exactly the stated dimensions
        // (rows: n x cols, coef: n x rank, basis: rank x cols) that lives for the whole call.
        unsafe {
            gemm::gemm(
                n,
                cols,
                self.rank,
                rows.as_mut_ptr(),
                1,
                cols as isize,
                true,
                coef.as_ptr(),
                1,
                self.rank as isize,
                self.basis.as_ptr(),
                1,
                cols as isize,
                1.0f32,
                self.scale,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(rayon::current_num_threads()),
            );
        }
        if let Some(magnitude) = &self.magnitude {
            rows.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
                let norm = row.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt() as f32;
                let factor = magnitude[first_row + i] / norm;
                row.iter_mut().for_each(|w| *w *= factor);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_update_matches_hand_computation() {
        // W [2, 3], B [2, 1], A [1, 3], scale 2.
        let mut w = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let delta = RowDelta {
            rank: 1,
            cols: 3,
            coef: vec![1.0, -1.0],
            basis: vec![0.5, 0.25, 0.0],
            scale: 2.0,
            magnitude: None,
        };
        delta.apply(&mut w, 0);
        assert_eq!(w, vec![2.0, 2.5, 3.0, 3.0, 4.5, 6.0]);
    }

    #[test]
    fn dora_rescales_rows_to_the_magnitude() {
        let mut w = vec![3.0, 4.0, 0.0, 2.0];
        let delta = RowDelta {
            rank: 1,
            cols: 2,
            coef: vec![0.0, 0.0],
            basis: vec![0.0, 0.0],
            scale: 1.0,
            magnitude: Some(vec![10.0, 1.0]),
        };
        delta.apply(&mut w, 0);
        assert_eq!(w, vec![6.0, 8.0, 0.0, 1.0]);
    }

    #[test]
    fn row_offset_selects_coefficients() {
        let mut w = vec![0.0, 0.0];
        let delta = RowDelta {
            rank: 1,
            cols: 2,
            coef: vec![1.0, 3.0],
            basis: vec![1.0, 2.0],
            scale: 1.0,
            magnitude: None,
        };
        delta.apply(&mut w, 1);
        assert_eq!(w, vec![3.0, 6.0]);
        assert_eq!(transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
