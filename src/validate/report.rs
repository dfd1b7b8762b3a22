//! The validation report: per export and engine, how close it is to the reference. A `serde`
//! type for `validation.json`, a Markdown view, and `snapshot()`, whose numbers are bucketed so
//! that it is stable across machines for `insta::assert_yaml_snapshot!`.

use serde::{Deserialize, Serialize};

use super::metrics::LogitMetrics;
use super::text::{TextMetrics, TextSummary};
use super::tolerance::Tolerance;
use crate::quant::QuantReport;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineResult {
    pub engine: String,
    /// Why the engine did not run (not installed, or it cannot load this export), if it did
    /// not; a skipped engine has `passed: false`: it proved nothing.
    pub skipped: Option<String>,
    pub logits: Option<LogitMetrics>,
    /// Perplexity and KL divergence on the evaluation text, when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextMetrics>,
    pub greedy_match: Option<bool>,
    /// (row, generated token index) of the first token that differs from the reference's.
    pub first_divergence: Option<(usize, usize)>,
    pub passed: bool,
    pub failures: Vec<String>,
}

impl EngineResult {
    /// The engine ran and the export missed a tolerance in it.
    pub fn failed(&self) -> bool {
        self.skipped.is_none() && !self.passed
    }
}

/// An export's outcome: every engine that ran passed (and at least one ran), one failed, or
/// none measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Passed,
    Failed,
    #[default]
    Unverified,
}

impl Verdict {
    pub fn of(results: &[EngineResult]) -> Self {
        if results.iter().any(EngineResult::failed) {
            Verdict::Failed
        } else if results.iter().all(|r| r.skipped.is_some()) {
            Verdict::Unverified
        } else {
            Verdict::Passed
        }
    }
}

/// The merged f32 model measured against the unmerged reference: what peft users ask when a
/// merged model "behaves differently".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergeCheck {
    pub max_abs_error: f64,
    /// `max_abs_error / max(1, RMS of the reference logits)`.
    pub relative_error: f64,
    pub cosine: f64,
    pub top1_agreement: f64,
    /// The bound on `relative_error` (the f32 tolerance).
    pub max_relative_error: f64,
    pub passed: bool,
}

impl MergeCheck {
    pub fn of(m: &LogitMetrics, max_relative_error: f64) -> Self {
        Self {
            max_abs_error: m.max_abs_error,
            relative_error: m.relative_error,
            cosine: m.cosine,
            top1_agreement: m.top1_agreement,
            max_relative_error,
            passed: m.relative_error <= max_relative_error,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportValidation {
    pub export: String,
    pub format: String,
    pub dtype: String,
    pub target: Option<String>,
    pub tolerance: Tolerance,
    pub prompts: usize,
    pub max_new_tokens: usize,
    pub engines: Vec<EngineResult>,
    /// What reduced precision saved and cost (from the export's quantization.json).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantReport>,
    /// `verdict == passed`.
    pub passed: bool,
    #[serde(default)]
    pub verdict: Verdict,
    /// Why no engine measured it, when unverified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unverified: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub reference: String,
    /// Merged vs unmerged (absent without an adapter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge: Option<MergeCheck>,
    /// The evaluation text and the reference's perplexity on it (`[validate] text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<TextSummary>,
    pub exports: Vec<ExportValidation>,
    /// Every export passed and the merge matches the reference.
    pub passed: bool,
}

impl ValidationReport {
    pub fn new(
        reference: String,
        merge: Option<MergeCheck>,
        text: Option<TextSummary>,
        exports: Vec<ExportValidation>,
    ) -> Self {
        let passed = merge.as_ref().is_none_or(|m| m.passed) && exports.iter().all(|e| e.passed);
        Self { reference, merge, text, exports, passed }
    }
}

/// The rounded, machine-independent view of one engine's result.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineSnapshot {
    pub engine: String,
    pub skipped: bool,
    /// The decade the largest logit error falls under, e.g. "<=1e-5".
    pub max_abs_error: Option<String>,
    /// Cosine similarity: ">=0.9999", else rounded down to 4 decimals.
    pub cosine: Option<String>,
    /// Top-1 agreement in whole percent, rounded down.
    pub top1_percent: Option<u32>,
    pub greedy_match: Option<bool>,
    pub first_divergence: Option<(usize, usize)>,
    pub passed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportSnapshot {
    pub export: String,
    pub format: String,
    pub dtype: String,
    pub verdict: Verdict,
    pub engines: Vec<EngineSnapshot>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantSnapshot>,
    pub passed: bool,
}

/// The rounded view of a quantization report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QuantSnapshot {
    pub scheme: String,
    /// f32 bytes over written bytes, to one decimal (rounded down).
    pub compression_ratio: String,
    /// The decade of the mean and of the largest per-tensor relative error.
    pub mean_relative_error: String,
    pub max_relative_error: String,
    /// (group, stored as, ratio to one decimal)
    pub groups: Vec<(String, String, String)>,
}

impl QuantSnapshot {
    fn of(q: &QuantReport) -> Self {
        Self {
            scheme: q.scheme.clone(),
            compression_ratio: floor_to(q.compression_ratio, 1),
            mean_relative_error: decade(q.error.mean_relative_error),
            max_relative_error: decade(q.error.max_relative_error),
            groups: q
                .groups
                .iter()
                .map(|g| (g.group.as_str().to_string(), g.stored.join("+"), floor_to(g.compression_ratio, 1)))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportSnapshot {
    /// The decade of merged vs unmerged's relative error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merged_vs_unmerged: Option<String>,
    pub exports: Vec<ExportSnapshot>,
    pub passed: bool,
}

/// `3.2e-6` -> `<=1e-5`; exact zero stays `0`.
pub fn decade(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    format!("<=1e{}", x.log10().ceil() as i32)
}

/// Cosines of equivalent runs sit just below or at 1.0 depending on the machine: one bucket.
fn cosine_bucket(x: f64) -> String {
    if x >= 0.9999 { ">=0.9999".into() } else { floor_to(x, 4) }
}

fn floor_to(x: f64, decimals: i32) -> String {
    let scale = 10f64.powi(decimals);
    format!("{:.*}", decimals as usize, (x * scale).floor() / scale)
}

impl ValidationReport {
    pub fn snapshot(&self) -> ReportSnapshot {
        ReportSnapshot {
            merged_vs_unmerged: self.merge.as_ref().map(|m| decade(m.relative_error)),
            passed: self.passed,
            exports: self
                .exports
                .iter()
                .map(|e| ExportSnapshot {
                    export: e.export.clone(),
                    format: e.format.clone(),
                    dtype: e.dtype.clone(),
                    verdict: e.verdict,
                    quantization: e.quantization.as_ref().map(QuantSnapshot::of),
                    passed: e.passed,
                    engines: e
                        .engines
                        .iter()
                        .map(|r| EngineSnapshot {
                            engine: r.engine.clone(),
                            skipped: r.skipped.is_some(),
                            max_abs_error: r.logits.as_ref().map(|m| decade(m.max_abs_error)),
                            cosine: r.logits.as_ref().map(|m| cosine_bucket(m.cosine)),
                            top1_percent: r
                                .logits
                                .as_ref()
                                .map(|m| (m.top1_agreement * 100.0).floor() as u32),
                            greedy_match: r.greedy_match,
                            first_divergence: r.first_divergence,
                            passed: r.passed,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn decades_and_floors() {
        assert_eq!(super::decade(3.2e-6), "<=1e-5");
        assert_eq!(super::decade(1e-4), "<=1e-4");
        assert_eq!(super::decade(0.0), "0");
        assert_eq!(super::floor_to(0.999_87, 4), "0.9998");
        assert_eq!(super::cosine_bucket(0.999_999_9), ">=0.9999");
        assert_eq!(super::cosine_bucket(1.0), ">=0.9999");
    }
}
