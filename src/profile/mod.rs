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

    /// Full tensor name of a layer tensor, or `None` when the architecture has no such tensor.
    pub fn layer_tensor(&self, layer: usize, role: LayerTensor) -> Option<String> {
        self.tensors.layer.iter().find(|(r, _)| *r == role).map(|(_, suffix)| {
            format!("{}{suffix}", self.tensors.layer_prefix.replace("{layer}", &layer.to_string()))
        })
    }

    /// Every tensor name of a model with `layers` layers paired with its GGUF name, in the
    /// order llama.cpp's converter writes them (embedding, layers, final norm, head).
    pub fn gguf_names(&self, layers: usize) -> Vec<(String, String)> {
        let (hf, gguf) = (&self.tensors, &self.gguf.tensors);
        let mut names = vec![(hf.embed.to_string(), gguf.embed.to_string())];
        for layer in 0..layers {
            let prefix = |t: &TensorNames| t.layer_prefix.replace("{layer}", &layer.to_string());
            let (hf_prefix, gguf_prefix) = (prefix(hf), prefix(gguf));
            for (role, suffix) in hf.layer {
                if let Some((_, gguf_suffix)) = gguf.layer.iter().find(|(r, _)| r == role) {
                    names.push((format!("{hf_prefix}{suffix}"), format!("{gguf_prefix}{gguf_suffix}")));
                }
            }
        }
        names.push((hf.final_norm.to_string(), gguf.final_norm.to_string()));
        names.push((hf.lm_head.to_string(), gguf.lm_head.to_string()));
        names
    }

    /// Module names (tensor name without `.weight`) of the linear layers PEFT's `all-linear`
    /// targets: every layer projection, never the output head.
    pub fn linear_module_suffixes(&self) -> impl Iterator<Item = &'static str> {
        self.tensors
            .layer
            .iter()
            .filter(|(role, _)| {
                matches!(
                    role,
                    LayerTensor::QProj
                        | LayerTensor::KProj
                        | LayerTensor::VProj
                        | LayerTensor::OProj
                        | LayerTensor::GateProj
                        | LayerTensor::UpProj
                        | LayerTensor::DownProj
                )
            })
            .map(|(_, name)| name.strip_suffix(".weight").unwrap_or(name))
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
        assert!(qwen3.qk_norm && !qwen3.qkv_bias);
        assert_eq!(qwen3.defaults.head_dim, Some(128));
        let qwen2 = Profile::for_model_type("qwen2").unwrap();
        assert_eq!(qwen2.name, "qwen2");
        assert!(qwen2.qkv_bias);
        assert_eq!(
            qwen2.layer_tensor(3, LayerTensor::QBias).as_deref(),
            Some("model.layers.3.self_attn.q_proj.bias")
        );
        assert_eq!(qwen2.layer_tensor(0, LayerTensor::QNorm), None);
    }

    #[test]
    fn gguf_names_follow_llama_cpp() {
        let qwen2 = Profile::by_name("qwen2").unwrap();
        let names = qwen2.gguf_names(2);
        // embedding, 2 layers of 12 tensors (9 + 3 biases), final norm, head
        assert_eq!(names.len(), 1 + 2 * 12 + 2);
        let find = |hf: &str| names.iter().find(|(h, _)| h == hf).map(|(_, g)| g.as_str());
        assert_eq!(find("model.layers.1.self_attn.k_proj.bias"), Some("blk.1.attn_k.bias"));
        assert_eq!(find("model.layers.0.post_attention_layernorm.weight"), Some("blk.0.ffn_norm.weight"));
        assert_eq!(find("lm_head.weight"), Some("output.weight"));
        let qwen3 = Profile::by_name("qwen3").unwrap();
        assert_eq!(qwen3.gguf.architecture, "qwen3");
        let names = qwen3.gguf_names(1);
        assert!(
            names.iter().any(
                |(h, g)| h == "model.layers.0.self_attn.q_norm.weight" && g == "blk.0.attn_q_norm.weight"
            )
        );
    }

    #[test]
    fn unknown_model_type_lists_known_profiles() {
        let err = Profile::for_model_type("llama").unwrap_err();
        assert_eq!(err.to_string(), "config.json has model_type `llama`, which no profile handles");
        assert!(err.help().contains("qwen2, qwen3"));
    }

    #[test]
    fn all_linear_covers_the_seven_projections() {
        let names: Vec<_> = Profile::by_name("qwen3").unwrap().linear_module_suffixes().collect();
        assert_eq!(names.len(), 7);
        assert!(names.contains(&"mlp.down_proj"));
    }
}
