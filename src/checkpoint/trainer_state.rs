//! The facts a Trainer checkpoint's trainer_state.json gives about its step of training.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::CheckpointError;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrainerState {
    pub global_step: u64,
    pub epoch: Option<f64>,
    pub max_steps: Option<u64>,
    /// The loss of the last training log entry.
    pub last_loss: Option<f64>,
    pub best_model_checkpoint: Option<String>,
    pub best_metric: Option<f64>,
}

#[derive(Deserialize)]
struct Raw {
    global_step: u64,
    epoch: Option<f64>,
    max_steps: Option<u64>,
    #[serde(default)]
    log_history: Vec<serde_json::Map<String, serde_json::Value>>,
    best_model_checkpoint: Option<String>,
    best_metric: Option<f64>,
}

pub const TRAINER_STATE: &str = "trainer_state.json";

impl TrainerState {
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let text = crate::retry::read_to_string(path)
            .map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
        let raw: Raw = serde_json::from_str(&text).map_err(|e| CheckpointError::TrainerState {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let last_loss =
            raw.log_history.iter().rev().find_map(|entry| entry.get("loss").and_then(|v| v.as_f64()));
        Ok(TrainerState {
            global_step: raw.global_step,
            epoch: raw.epoch,
            max_steps: raw.max_steps,
            last_loss,
            best_model_checkpoint: raw.best_model_checkpoint,
            best_metric: raw.best_metric,
        })
    }
}
