//! Quantization error of a tensor, accumulated block by block: ‖W−Ŵ‖² and ‖W‖².

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ErrorSums {
    pub squared_error: f64,
    pub squared_norm: f64,
}

impl ErrorSums {
    /// The sum of parallel per-chunk sums, added in chunk order. Rayon's own `sum` adds partial
    /// results in an order that depends on work stealing, so the f64 totals (and the
    /// quantization.json that records them) could differ between runs in the last digits.
    pub fn in_order(parts: impl IndexedParallelIterator<Item = ErrorSums>) -> ErrorSums {
        parts.collect::<Vec<_>>().into_iter().sum()
    }

    pub fn add(&mut self, other: ErrorSums) {
        self.squared_error += other.squared_error;
        self.squared_norm += other.squared_norm;
    }

    /// One weight and its dequantized value.
    pub fn push(&mut self, w: f32, dequantized: f32) {
        let d = f64::from(w) - f64::from(dequantized);
        self.squared_error += d * d;
        self.squared_norm += f64::from(w) * f64::from(w);
    }

    /// ‖W−Ŵ‖/‖W‖; 0 for an all-zero tensor (stored exactly).
    pub fn relative_error(&self) -> f64 {
        if self.squared_norm == 0.0 { 0.0 } else { (self.squared_error / self.squared_norm).sqrt() }
    }
}

impl std::iter::Sum for ErrorSums {
    fn sum<I: Iterator<Item = ErrorSums>>(iter: I) -> Self {
        iter.fold(ErrorSums::default(), |mut a, b| {
            a.add(b);
            a
        })
    }
}
