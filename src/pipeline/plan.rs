//! The plan of a run: its stages in order (per export: write → validate; then the report), what
//! each reads and writes, an estimate of the bytes it writes and of its peak memory, and whether
//! it runs or is skipped (its inputs' digest matches a finished record whose outputs verify).

use std::path::PathBuf;

use serde::Serialize;

use crate::config::registry::DefaultDtype;
use crate::config::schema::{EmbeddingsMode, ExportDtype, ExportSpec, Format, TableStorage, Target};

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
    /// Engines an ONNX export is not loaded back in before it is installed because it would not
    /// fit max-memory, with the reason (the others still check it, unless --skip-check).
    #[serde(skip)]
    pub check_skip: Vec<(crate::config::schema::Engine, String)>,
    /// What the stage will not do for lack of memory, with the figures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
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
    match (spec.dtype, spec.format.info().default_dtype) {
        (Some(d), _) | (None, DefaultDtype::Fixed(d)) => d.scheme().bytes_per_weight,
        (None, DefaultDtype::Base) => base_bytes_per_weight,
    }
}

/// The export's size: `parameters` at the dtype's bytes per weight, except for the embedding
/// table and the head of a quantized ONNX export, which are stored as
/// [`EmbeddingsMode::storage`] says.
pub fn export_bytes(
    spec: &ExportSpec,
    base_bytes_per_weight: f64,
    parameters: u64,
    embedding: u64,
    separate_head: bool,
) -> u64 {
    let per_weight = bytes_per_weight(spec, base_bytes_per_weight);
    let bits = match (spec.format, spec.dtype) {
        (Format::Onnx, Some(ExportDtype::Int8)) => 8,
        (Format::Onnx, Some(ExportDtype::Int4)) => 4,
        _ => return (parameters as f64 * per_weight) as u64,
    };
    let target = spec.target.unwrap_or(Target::Portable);
    let storage = spec.options.embeddings.unwrap_or(EmbeddingsMode::Auto).storage(target, bits, parameters);
    let matrices = parameters - embedding - if separate_head { embedding } else { 0 };
    let table_per_weight = |bits: u8| {
        let dtype = if bits == 8 { ExportDtype::Int8 } else { ExportDtype::Int4 };
        dtype.scheme().bytes_per_weight
    };
    let (table, head) = match (storage, separate_head) {
        (TableStorage::F16, true) => (2.0, 2.0),
        // A tied f16 head multiplies by the embedding table itself.
        (TableStorage::F16, false) => (2.0, 0.0),
        (TableStorage::QuantizedHead, _) => (2.0, per_weight),
        (TableStorage::Blocks { bits }, true) => (table_per_weight(bits), table_per_weight(bits)),
        (TableStorage::Blocks { bits }, false) => (table_per_weight(bits), 0.0),
    };
    (embedding as f64 * (table + head) + matrices as f64 * per_weight) as u64
}
