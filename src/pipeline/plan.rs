//! The plan of a run: its stages in order (per export: write → validate; then the report), what
//! each reads and writes, an estimate of the bytes it writes and of its peak memory, and whether
//! it runs or is skipped (its inputs' digest matches a finished record whose outputs verify).

use std::path::PathBuf;

use serde::Serialize;

use crate::config::schema::{ExportDtype, ExportSpec, Format};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    Export,
    Validate,
    Report,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    Run { reason: String },
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub id: String,
    pub kind: StageKind,
    /// The export this stage belongs to (export and validate stages).
    pub export: Option<String>,
    pub reads: Vec<PathBuf>,
    pub writes: Vec<PathBuf>,
    pub estimated_bytes_written: u64,
    pub estimated_peak_memory: u64,
    /// SHA-256 of the stage's inputs (config subset and input file identities).
    pub inputs_digest: String,
    #[serde(flatten)]
    pub action: Action,
}

impl Stage {
    pub fn runs(&self) -> bool {
        matches!(self.action, Action::Run { .. })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub out_dir: PathBuf,
    pub parameters: u64,
    pub stages: Vec<Stage>,
    /// What the validation reference is computed from (its cache in `.state` is keyed by it).
    pub reference_digest: String,
}

impl Plan {
    pub fn stage(&self, id: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.id == id)
    }

    /// Bytes the stages that run will write.
    pub fn bytes_to_write(&self) -> u64 {
        self.stages.iter().filter(|s| s.runs()).map(|s| s.estimated_bytes_written).sum()
    }

    /// The stage that needs the most memory among those that run.
    pub fn peak(&self) -> Option<&Stage> {
        self.stages.iter().filter(|s| s.runs()).max_by_key(|s| s.estimated_peak_memory)
    }
}

pub fn export_stage_id(name: &str) -> String {
    format!("export:{name}")
}

pub fn validate_stage_id(name: &str) -> String {
    format!("validate:{name}")
}

pub fn report_stage_id() -> String {
    "report".into()
}

/// Bytes per weight of an export, as written (quantized: codes, scales and zero points, with
/// small models keeping f16 embeddings, hence the margin).
pub fn bytes_per_weight(spec: &ExportSpec, base_bytes_per_weight: f64) -> f64 {
    match (spec.format, spec.dtype) {
        (_, Some(ExportDtype::F32)) => 4.0,
        (_, Some(ExportDtype::F16 | ExportDtype::Bf16)) => 2.0,
        (_, Some(ExportDtype::Int8)) => 1.3,
        (_, Some(ExportDtype::Int4)) => 1.0,
        // Block bytes per weight: q8_0 34/32, q6_k 210/256, q4_k 144/256 (some tensors q6_k), q4_0 18/32.
        (_, Some(ExportDtype::Q8_0)) => 1.07,
        (_, Some(ExportDtype::Q6K)) => 0.83,
        (_, Some(ExportDtype::Q4K | ExportDtype::Q4_0)) => 0.65,
        (Format::Onnx, None) => 4.0,
        (Format::Safetensors | Format::Gguf, None) => base_bytes_per_weight,
    }
}
