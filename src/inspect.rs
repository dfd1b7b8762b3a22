//! What is in a folder: a model, an adapter (or one checkpoint), or a whole training run.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::adapter::looks_like_adapter;
use crate::checkpoint::detect::{CheckpointReport, list_checkpoints};
use crate::checkpoint::{Adapter, TrainerState, detect};
use crate::error::{CheckpointError, Error, ModelError};
use crate::model::folder::looks_like_model;
use crate::model::layout::layout_problems;
use crate::model::{ModelFolder, TensorDtype};
use crate::profile::Profile;

#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Inspection {
    Model(ModelSummary),
    Adapter(AdapterSummary),
    TrainingRun(RunSummary),
}

#[derive(Debug, Serialize)]
pub struct ModelSummary {
    pub path: PathBuf,
    pub profile: &'static str,
    pub model_type: String,
    pub architectures: Vec<String>,
    pub parameters: u64,
    pub dtypes: Vec<TensorDtype>,
    pub bytes: u64,
    pub tensors: usize,
    pub files: usize,
    pub layers: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    /// Mixture-of-experts layers, from the decoder's description (absent: a dense model).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experts: Option<ExpertSummary>,
    pub attention_heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub tie_word_embeddings: bool,
    pub tokenizer_files: Vec<String>,
    pub generation_config: bool,
    /// Tensors that disagree with the profile: (tensor, problem).
    pub problems: Vec<(String, String)>,
}

#[derive(Debug, Serialize)]
pub struct ExpertSummary {
    /// Layers that route to experts (the others keep the dense MLP).
    pub layers: usize,
    pub experts: usize,
    pub top_k: usize,
    /// Each expert's MLP width (`moe_intermediate_size`).
    pub width: usize,
    pub norm_topk_prob: bool,
}

impl ExpertSummary {
    fn of(decoder: &crate::model::DecoderDesc) -> Option<Self> {
        let first = decoder.moe_layers().next()?;
        Some(ExpertSummary {
            layers: decoder.moe_layers().count(),
            experts: first.experts.len(),
            top_k: first.top_k,
            width: first.experts.first().map_or(0, |e| e.intermediate),
            norm_topk_prob: first.norm_topk_prob,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AdapterSummary {
    pub path: PathBuf,
    pub r: usize,
    pub lora_alpha: f64,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub target_modules: String,
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
    pub modules_to_save: Vec<String>,
    pub adapted_modules: usize,
    pub parameters: u64,
    pub dtypes: Vec<TensorDtype>,
    pub bytes: u64,
    pub tensors: usize,
    pub base_model_name_or_path: Option<String>,
    pub trainer_state: Option<TrainerState>,
}

#[derive(Debug, Serialize)]
pub struct RunSummary {
    pub path: PathBuf,
    pub chosen: PathBuf,
    pub checkpoints: Vec<CheckpointReport>,
    pub adapter: AdapterSummary,
}

pub fn summarize_model(folder: &ModelFolder) -> ModelSummary {
    let c = &folder.config;
    ModelSummary {
        path: folder.dir.clone(),
        profile: folder.profile.name,
        model_type: c.model_type.clone(),
        architectures: c.architectures.clone(),
        parameters: folder.parameter_count(),
        dtypes: folder.dtypes().into_iter().collect(),
        bytes: folder.tensor_bytes(),
        tensors: folder.tensor_count(),
        files: folder.shard_files().count(),
        layers: c.num_hidden_layers,
        hidden_size: c.hidden_size,
        intermediate_size: c.intermediate_size,
        experts: ExpertSummary::of(&c.decoder),
        attention_heads: c.num_attention_heads,
        kv_heads: c.num_key_value_heads,
        head_dim: c.head_dim,
        vocab_size: c.vocab_size,
        tie_word_embeddings: c.tie_word_embeddings,
        tokenizer_files: folder.tokenizer_files.clone(),
        generation_config: folder.has_generation_config,
        problems: layout_problems(folder),
    }
}

pub fn summarize_adapter(adapter: &Adapter, trainer_state: Option<TrainerState>) -> AdapterSummary {
    let c = &adapter.config;
    let tensors = adapter.file.tensors();
    let mut dtypes: Vec<TensorDtype> = tensors.iter().map(|t| t.dtype).collect();
    dtypes.sort();
    dtypes.dedup();
    AdapterSummary {
        path: adapter.dir.clone(),
        r: c.r,
        lora_alpha: c.lora_alpha,
        use_rslora: c.use_rslora,
        use_dora: c.use_dora,
        target_modules: c.target_modules.describe(),
        rank_pattern: c.rank_pattern.clone(),
        alpha_pattern: c.alpha_pattern.clone(),
        modules_to_save: c.modules_to_save.clone(),
        adapted_modules: adapter.modules.len(),
        parameters: adapter.parameter_count(),
        dtypes,
        bytes: tensors.iter().map(|t| t.byte_len() as u64).sum(),
        tensors: tensors.len(),
        base_model_name_or_path: c.base_model_name_or_path.clone(),
        trainer_state,
    }
}

/// Inspects `path`, deciding from its contents what it is.
pub fn inspect(path: &Path, profile: Option<&'static Profile>) -> Result<Inspection, Error> {
    if !path.exists() {
        return Err(
            ModelError::Io { path: path.to_path_buf(), source: std::io::ErrorKind::NotFound.into() }.into()
        );
    }
    if looks_like_model(path) {
        let folder = ModelFolder::open(path, profile)?;
        return Ok(Inspection::Model(summarize_model(&folder)));
    }
    if looks_like_adapter(path) || (path.is_dir() && !list_checkpoints(path)?.is_empty()) {
        let detection = detect(path, None)?;
        let adapter = summarize_adapter(&detection.adapter, detection.trainer_state.clone());
        return Ok(if detection.checkpoints.is_empty() {
            Inspection::Adapter(adapter)
        } else {
            Inspection::TrainingRun(RunSummary {
                path: path.to_path_buf(),
                chosen: detection.chosen,
                checkpoints: detection.checkpoints,
                adapter,
            })
        });
    }
    if path.is_dir() {
        Err(CheckpointError::NoAdapter { path: path.to_path_buf() }.into())
    } else {
        Err(ModelError::NotAModel {
            path: path.to_path_buf(),
            reason: "it is a file; inspect takes a model folder, an adapter folder, a checkpoint or a training run".into(),
        }
        .into())
    }
}
