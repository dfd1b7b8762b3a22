//! What a merge writes: for every output tensor, where its data comes from and which updates
//! apply. Building the plan validates the adapter against the base, so a bad adapter is refused
//! before a single byte is written.

use serde::Serialize;

use super::targets::check_targets;
use crate::checkpoint::Adapter;
use crate::error::CheckpointError;
use crate::model::ModelFolder;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "from", content = "tensor")]
pub enum Origin {
    Base(String),
    /// A full tensor saved through `modules_to_save`.
    Adapter(String),
}

/// A LoRA update on one weight (tensor names inside the adapter file).
#[derive(Debug, Clone, Serialize)]
pub struct LoraUpdate {
    pub module: String,
    pub lora_a: String,
    pub lora_b: String,
    /// Embedding LoRA takes the transposed delta.
    pub transposed: bool,
    pub scale: f32,
    pub magnitude: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlannedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub origin: Origin,
    pub lora: Option<LoraUpdate>,
    /// `lora_B.bias` and its scale, added to this bias.
    pub bias: Option<(String, f32)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MergePlan {
    pub tensors: Vec<PlannedTensor>,
    /// The base ties embedding and head, but training changed one of them: both are written.
    pub untied: bool,
}

impl MergePlan {
    /// Parameters the merged model stores.
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().map(|t| t.shape.iter().product::<usize>() as u64).sum()
    }
}

fn scale_for(adapter: &Adapter, module: &str) -> f32 {
    let config = &adapter.config;
    let rank = config.rank_for(module) as f64;
    let alpha = config.alpha_for(module);
    // PEFT keeps the scale as a Python float; torch multiplies the f32 delta by it in f32.
    let scale = (if config.use_rslora { alpha / rank.sqrt() } else { alpha / rank }) as f32;
    // Test-only merge bug (`MODEL_EXPORT_FAULT=merge-scale-x2`): layer 0 merged at twice its scale,
    // which the unmerged reference must catch.
    if crate::hooks::is_armed(MERGE_SCALE_FAULT)
        && crate::checkpoint::adapter_config::layer_index(module) == Some(0)
    {
        return 2.0 * scale;
    }
    scale
}

/// The fault point that doubles layer 0's merge scale.
pub const MERGE_SCALE_FAULT: &str = "merge-scale-x2";

fn lora_update(adapter: &Adapter, module: &str) -> Result<Option<LoraUpdate>, CheckpointError> {
    let Some(m) = adapter.modules.get(module) else { return Ok(None) };
    let (lora_a, lora_b, transposed) = match (&m.lora_a, &m.lora_b, &m.embedding_a, &m.embedding_b) {
        // Qwen's projections are nn.Linear, for which PEFT resets `fan_in_fan_out` to false
        // (with a warning): their delta is never transposed.
        (Some(a), Some(b), _, _) => (a.clone(), b.clone(), false),
        (_, _, Some(a), Some(b)) => (a.clone(), b.clone(), true),
        _ => return Ok(None),
    };
    if m.magnitude.is_some() && transposed {
        return Err(CheckpointError::AdapterTensor {
            path: adapter.file.path().to_path_buf(),
            tensor: m.magnitude.clone().unwrap_or_default(),
            message: "DoRA on an embedding layer cannot be merged by this tool".into(),
        });
    }
    Ok(Some(LoraUpdate {
        module: module.to_string(),
        lora_a,
        lora_b,
        transposed,
        scale: scale_for(adapter, module),
        magnitude: m.magnitude.clone(),
    }))
}

/// Plans the merge of `adapter` into `base` (or a plain re-write of `base` without one).
pub fn plan_merge(base: &ModelFolder, adapter: Option<&Adapter>) -> Result<MergePlan, CheckpointError> {
    if let Some(adapter) = adapter {
        adapter.check_fits(base)?;
        check_targets(base, adapter)?;
        if adapter.config.fan_in_fan_out {
            tracing::warn!(
                "{}: fan_in_fan_out is true, but the {} modules are nn.Linear: like PEFT, merging as if it were false",
                adapter.config.path.display(),
                base.profile.name
            );
        }
    }
    let names = &base.profile.tensors;
    let embed_module = names.embed.trim_end_matches(".weight");
    let head_module = names.lm_head.trim_end_matches(".weight");
    let tied = base.config.tie_word_embeddings && base.tensor(names.lm_head).is_none();
    let replacement = |tensor: &str| {
        adapter
            .and_then(|a| a.replacements.iter().find(|r| r.base_tensor == tensor))
            .map(|r| r.adapter_tensor.clone())
    };
    let touches = |module: &str| {
        adapter.is_some_and(|a| {
            a.modules.contains_key(module)
                || a.replacements.iter().any(|r| r.base_tensor.starts_with(&format!("{module}.")))
        })
    };
    // Training saw the head as the *original* embedding whenever it changed only one of the
    // pair (unless PEFT was told to keep them tied): writing them tied would lose that.
    let untied = tied
        && (touches(embed_module) || touches(head_module))
        && !adapter.is_some_and(|a| a.config.ensure_weight_tying);

    let mut tensors = Vec::new();
    for (_, info) in base.tensors() {
        let module = info.name.strip_suffix(".weight");
        let origin = match replacement(&info.name) {
            Some(saved) => Origin::Adapter(saved),
            None => Origin::Base(info.name.clone()),
        };
        let lora = match (adapter, module) {
            (Some(a), Some(module)) => lora_update(a, module)?,
            _ => None,
        };
        let bias = match (adapter, info.name.strip_suffix(".bias")) {
            (Some(a), Some(module)) => {
                a.modules.get(module).and_then(|m| m.lora_b_bias.clone()).map(|b| (b, scale_for(a, module)))
            }
            _ => None,
        };
        tensors.push(PlannedTensor {
            name: info.name.clone(),
            shape: info.shape.clone(),
            origin,
            lora,
            bias,
        });
    }
    if untied {
        let origin =
            replacement(names.lm_head).map_or_else(|| Origin::Base(names.embed.to_string()), Origin::Adapter);
        let lora = match adapter {
            Some(a) => lora_update(a, head_module)?,
            None => None,
        };
        let shape = vec![base.config.vocab_size, base.config.hidden_size];
        tensors.push(PlannedTensor { name: names.lm_head.to_string(), shape, origin, lora, bias: None });
    }
    Ok(MergePlan { tensors, untied })
}
