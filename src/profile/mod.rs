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
