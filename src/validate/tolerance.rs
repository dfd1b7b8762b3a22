//! What "close enough to the reference" means for each dtype. Defaults (docs/validation.md):
//! f32 must match tightly and greedily; f16/bf16 are judged on cosine and top-1 agreement. Logit
//! errors are bounded relative to the reference's scale, `max |Δ| ≤ k · max(1, RMS)`: a correct
//! export of a model with logits of magnitude 30 differs from the reference by more, in absolute
//! terms, than one whose logits are of magnitude 1.

use serde::{Deserialize, Serialize};

use crate::config::{ExportDtype, ExportOptions};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// Largest allowed absolute logit error, if judged on it (set by `options.max-abs-error`).
    pub max_abs_error: Option<f64>,
    /// Largest allowed `max |Δ| / max(1, RMS of the reference logits)`, if judged on it.
    #[serde(default)]
    pub max_relative_error: Option<f64>,
    pub min_cosine: f64,
    pub min_top1: f64,
    /// Top-1 is only counted where the reference's top-1/top-2 margin exceeds this.
    pub top1_margin: f32,
    /// Whether greedy tokens must equal the reference's.
    pub greedy_must_match: bool,
    /// Largest allowed mean KL divergence (nats) from the reference's token distributions: on
    /// the evaluation text when one is configured, else on the prompts.
    #[serde(default)]
    pub max_mean_kl: Option<f64>,
    /// Smallest allowed top-1 agreement on the evaluation text (every position, no margin).
    #[serde(default)]
    pub min_text_top1: Option<f64>,
}

pub use crate::config::registry::{F16_RELATIVE, F32_RELATIVE, MAX_MEAN_KL_4BIT, MIN_TEXT_TOP1_4BIT};

impl Tolerance {
    /// The dtype's bars from `config::registry`.
    pub fn default_for(dtype: ExportDtype) -> Self {
        let b = dtype.scheme().bars;
        Self {
            max_abs_error: None,
            max_relative_error: b.max_relative_error,
            min_cosine: b.min_cosine,
            min_top1: b.min_top1,
            top1_margin: b.top1_margin,
            greedy_must_match: b.greedy_must_match,
            max_mean_kl: Some(b.max_mean_kl),
            min_text_top1: Some(b.min_text_top1),
        }
    }

    /// The dtype's defaults with an export's overrides applied.
    pub fn for_export(dtype: ExportDtype, options: &ExportOptions) -> Self {
        let mut t = Self::default_for(dtype);
        // An absolute bound chosen by the user replaces the relative default.
        if let Some(v) = options.max_abs_error {
            t.max_abs_error = Some(v);
            t.max_relative_error = None;
        }
        if let Some(v) = options.max_relative_error {
            t.max_relative_error = Some(v);
        }
        if let Some(v) = options.min_cosine {
            t.min_cosine = v;
        }
        if let Some(v) = options.min_top1 {
            t.min_top1 = v;
        }
        if let Some(v) = options.max_mean_kl {
            t.max_mean_kl = Some(v);
        }
        if let Some(v) = options.min_text_top1 {
            t.min_text_top1 = Some(v);
        }
        t
    }
}
