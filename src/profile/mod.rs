//! Architecture profiles. The data comes from `model-profiles/*.toml`, turned into Rust by
//! `build.rs`; this file holds the types it fills and the lookups the rest of the crate uses.

use serde::Serialize;

use crate::error::ProfileError;

/// The role of a tensor inside one decoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LayerTensor {
    InputNorm,
    QProj,
    KProj,
    VProj,
    OProj,
    QNorm,
    KNorm,
    QBias,
    KBias,
    VBias,
    PostAttentionNorm,
    GateProj,
    UpProj,
    DownProj,
}

/// What transformers assumes when config.json leaves a field out.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ConfigDefaults {
    /// `None`: head_dim is hidden_size / num_attention_heads.
    pub head_dim: Option<u64>,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: u64,
    pub tie_word_embeddings: bool,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct TensorNames {
    pub embed: &'static str,
    pub final_norm: &'static str,
    pub lm_head: &'static str,
    /// Contains `{layer}`, e.g. `model.layers.{layer}.`.
    pub layer_prefix: &'static str,
    pub layer: &'static [(LayerTensor, &'static str)],
}

/// llama.cpp's names for an architecture and its tensors (a GGUF file's vocabulary).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GgufNames {
    /// `general.architecture`, also the prefix of the model's metadata keys.
    pub architecture: &'static str,
    pub tensors: TensorNames,
}

/// What transformers assumes when config.json leaves a mixture-of-experts field out.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MoeDefaults {
    pub num_experts: u64,
    pub num_experts_per_tok: u64,
    pub moe_intermediate_size: u64,
    pub norm_topk_prob: bool,
    pub decoder_sparse_step: u64,
}

/// llama.cpp's names of a MoE layer: the router, and each projection of all experts stacked.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MoeGgufNames {
    pub router: &'static str,
    pub gate_exps: &'static str,
    pub up_exps: &'static str,
    pub down_exps: &'static str,
}

/// A mixture-of-experts MLP: names inside a layer (after the layer prefix); `expert_prefix`
/// contains `{expert}`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MoeProfile {
    pub defaults: MoeDefaults,
    pub router: &'static str,
    pub expert_prefix: &'static str,
    pub gate_proj: &'static str,
    pub up_proj: &'static str,
    pub down_proj: &'static str,
    pub gguf: MoeGgufNames,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Profile {
    pub name: &'static str,
    pub summary: &'static str,
    pub model_types: &'static [&'static str],
    pub architectures: &'static [&'static str],
    pub qk_norm: bool,
    pub qkv_bias: bool,
    pub required_config: &'static [&'static str],
    pub defaults: ConfigDefaults,
    pub tensors: TensorNames,
    pub gguf: GgufNames,
    /// Layers with experts instead of the dense MLP (which `tensors.layer` still names, for the
    /// layers config.json keeps dense).
    pub moe: Option<MoeProfile>,
    /// onnxruntime-genai's `model.type` for this architecture's ONNX exports.
    pub genai_type: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/profiles.rs"));

impl Profile {
    /// Every profile compiled into this binary.
    pub fn all() -> &'static [Profile] {
        PROFILES
    }

    pub fn by_name(name: &str) -> Result<&'static Profile, ProfileError> {
        PROFILES
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ProfileError::Unknown { name: name.to_string(), known: known_names() })
    }

    /// The profile for a config.json `model_type` (what `profile = "auto"` does).
    pub fn for_model_type(model_type: &str) -> Result<&'static Profile, ProfileError> {
        PROFILES.iter().find(|p| p.model_types.contains(&model_type)).ok_or_else(|| {
            ProfileError::UnknownModelType {
                model_type: model_type.to_string(),
                known: known_names(),
                config: None,
            }
        })
    }
}

fn known_names() -> String {
    PROFILES.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_profiles_are_found_by_name_and_model_type() {
        let qwen3 = Profile::by_name("qwen3").unwrap();
        assert!(qwen3.qk_norm && !qwen3.qkv_bias && qwen3.moe.is_none());
        assert_eq!(qwen3.defaults.head_dim, Some(128));
        let qwen2 = Profile::for_model_type("qwen2").unwrap();
        assert_eq!(qwen2.name, "qwen2");
        assert!(qwen2.qkv_bias);
        let moe = Profile::for_model_type("qwen3_moe").unwrap();
        assert_eq!((moe.gguf.architecture, moe.genai_type), ("qwen3moe", "qwen3"));
        assert_eq!(moe.moe.map(|m| m.expert_prefix), Some("mlp.experts.{expert}."));
    }

    #[test]
    fn unknown_model_type_lists_known_profiles() {
        let err = Profile::for_model_type("llama").unwrap_err();
        assert_eq!(err.to_string(), "config.json has model_type `llama`, which no profile handles");
        assert!(err.help().contains("qwen2, qwen3"));
    }
}
