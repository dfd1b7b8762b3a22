//! Finding the adapter to merge: an adapter folder used as is, or the newest *valid*
//! `checkpoint-N` of a training run. Broken checkpoints are reported with the reason and skipped.
//! Optimizer, scheduler and RNG states are never opened.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::adapter::{Adapter, looks_like_adapter};
use super::trainer_state::{TRAINER_STATE, TrainerState};
use crate::error::CheckpointError;
use crate::model::ModelFolder;

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A folder with adapter_config.json, used directly.
    AdapterFolder,
    /// A Trainer output folder with checkpoint-N folders.
    TrainingRun,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status", content = "reason")]
pub enum CheckpointStatus {
    Chosen,
    /// Valid, but a newer valid checkpoint exists.
    Older,
    Skipped(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointReport {
    pub name: String,
    pub path: PathBuf,
    pub step: u64,
    #[serde(flatten)]
    pub status: CheckpointStatus,
    pub trainer_state: Option<TrainerState>,
}

#[derive(Debug, Serialize)]
pub struct Detection {
    pub source: PathBuf,
    pub kind: SourceKind,
    /// The adapter folder that will be merged.
    pub chosen: PathBuf,
    pub trainer_state: Option<TrainerState>,
    /// Every checkpoint of a run, newest first (empty for an adapter folder).
    pub checkpoints: Vec<CheckpointReport>,
    /// Whether the adapter was checked against a base model's shapes.
    pub checked_against_base: bool,
    #[serde(skip)]
    pub adapter: Adapter,
}

/// `checkpoint-N` folders of a run, newest first. Entries that cannot be read are kept so they
/// are reported rather than silently ignored.
pub fn list_checkpoints(run: &Path) -> Result<Vec<(u64, String, PathBuf)>, CheckpointError> {
    let io = |source| CheckpointError::Io { path: run.to_path_buf(), source };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(run).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(step) = name.strip_prefix("checkpoint-").and_then(|n| n.parse::<u64>().ok()) {
            found.push((step, name, entry.path()));
        }
    }
    found.sort_by_key(|c| std::cmp::Reverse(c.0));
    Ok(found)
}

fn read_state(dir: &Path) -> Option<TrainerState> {
    let path = dir.join(TRAINER_STATE);
    if !path.is_file() {
        return None;
    }
    match TrainerState::read(&path) {
        Ok(state) => Some(state),
        Err(e) => {
            tracing::warn!("ignoring unreadable training metadata: {e}");
            None
        }
    }
}

fn open_checked(dir: &Path, base: Option<&ModelFolder>) -> Result<Adapter, CheckpointError> {
    let meta =
        std::fs::metadata(dir).map_err(|source| CheckpointError::Io { path: dir.to_path_buf(), source })?;
    if !meta.is_dir() {
        return Err(CheckpointError::AdapterConfig {
            path: dir.to_path_buf(),
            message: "is a file, not a checkpoint folder".into(),
        });
    }
    if !looks_like_adapter(dir) {
        return Err(CheckpointError::NoAdapter { path: dir.to_path_buf() });
    }
    let adapter = Adapter::open(dir)?;
    if let Some(base) = base {
        adapter.check_fits(base)?;
    }
    Ok(adapter)
}

/// Chooses the adapter under `source`; with `base`, every LoRA pair must fit its shapes.
pub fn detect(source: &Path, base: Option<&ModelFolder>) -> Result<Detection, CheckpointError> {
    let meta = std::fs::metadata(source)
        .map_err(|source_err| CheckpointError::Io { path: source.to_path_buf(), source: source_err })?;
    if !meta.is_dir() {
        return Err(CheckpointError::AdapterIsAFile { path: source.to_path_buf() });
    }
    if looks_like_adapter(source) {
        let adapter = open_checked(source, base)?;
        return Ok(Detection {
            source: source.to_path_buf(),
            kind: SourceKind::AdapterFolder,
            chosen: source.to_path_buf(),
            trainer_state: read_state(source),
            checkpoints: Vec::new(),
            checked_against_base: base.is_some(),
            adapter,
        });
    }
    let candidates = list_checkpoints(source)?;
    if candidates.is_empty() {
        return Err(CheckpointError::NoAdapter { path: source.to_path_buf() });
    }
    let mut reports = Vec::new();
    let mut chosen: Option<(PathBuf, Adapter, Option<TrainerState>)> = None;
    for (step, name, path) in candidates {
        let trainer_state = read_state(&path);
        let status = match open_checked(&path, base) {
            Ok(adapter) if chosen.is_none() => {
                chosen = Some((path.clone(), adapter, trainer_state.clone()));
                CheckpointStatus::Chosen
            }
            Ok(_) => CheckpointStatus::Older,
            Err(e) => {
                tracing::info!("skipping {}: {e}", path.display());
                CheckpointStatus::Skipped(e.to_string())
            }
        };
        reports.push(CheckpointReport { name, path, step, status, trainer_state });
    }
    match chosen {
        Some((path, adapter, trainer_state)) => Ok(Detection {
            source: source.to_path_buf(),
            kind: SourceKind::TrainingRun,
            chosen: path,
            trainer_state,
            checkpoints: reports,
            checked_against_base: base.is_some(),
            adapter,
        }),
        None => Err(CheckpointError::NoValidCheckpoint {
            run: source.to_path_buf(),
            skipped: reports
                .into_iter()
                .map(|r| match r.status {
                    CheckpointStatus::Skipped(reason) => (r.name, reason),
                    _ => (r.name, String::new()),
                })
                .collect(),
        }),
    }
}

/// Where the tokenizer (and chat template) of a merge comes from: the chosen checkpoint when it
/// has a tokenizer.json (training may have changed the template), else the base model.
pub fn tokenizer_dir(detection: Option<&Detection>, base: &Path) -> PathBuf {
    detection
        .map(|d| d.chosen.clone())
        .filter(|d| d.join("tokenizer.json").is_file())
        .unwrap_or_else(|| base.to_path_buf())
}
