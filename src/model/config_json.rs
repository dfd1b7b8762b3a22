//! A model's config.json, typed for the fields the profiles need, with transformers' defaults
//! for what is absent. The raw object is kept so exports can re-write it faithfully.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::ModelError;
use crate::profile::Profile;

use super::decoder::{DecoderDesc, Dims, MoeConfig};
use super::features;
use super::rope::{RopeScaling, RopeSpec};

/// More experts than any real model has (Qwen3's largest has 128); a larger value is a broken file.
const MAX_EXPERTS: usize = 4096;
/// Experts over all layers: Qwen3-235B-A22B has 94 x 128 = 12032; the bound keeps a broken file
/// from describing millions of tensors.
const MAX_LAYER_EXPERTS: usize = 1 << 17;

/// Deeper than any real decoder (Qwen's deepest has 94 layers); a larger value is a broken file.
const MAX_LAYERS: usize = 4096;

#[derive(Debug, Clone, Serialize)]
pub struct HfConfig {
    #[serde(skip)]
    pub path: PathBuf,
    pub model_type: String,
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// The experts, for a profile with a mixture-of-experts MLP.
    pub moe: Option<MoeConfig>,
    /// `rope_scaling` (or transformers 5's `rope_parameters`), checked by [`super::features`].
    pub rope_scaling: RopeScaling,
    /// `torch_dtype` (or `dtype`, as transformers ≥ 4.56 writes it).
    pub torch_dtype: Option<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    #[serde(skip)]
    pub raw: Map<String, Value>,
    /// The decoder this config describes under its profile, built once here.
    #[serde(skip)]
    pub decoder: Arc<DecoderDesc>,
}

impl HfConfig {
    /// Reads config.json and returns it with the profile it selects (`profile` forces one).
    pub fn read(
        path: &Path,
        profile: Option<&'static Profile>,
    ) -> Result<(Self, &'static Profile), ModelError> {
        let text = crate::retry::read_to_string(path)
            .map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
        Self::parse(path, &text, profile)
    }

    pub fn parse(
        path: &Path,
        text: &str,
        profile: Option<&'static Profile>,
    ) -> Result<(Self, &'static Profile), ModelError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ModelError::Json {
            path: path.to_path_buf(),
            message: format!("not valid JSON: {e}"),
        })?;
        let Value::Object(raw) = value else {
            return Err(ModelError::Json {
                path: path.to_path_buf(),
                message: "expected a JSON object".into(),
            });
        };
        let fields = Fields { path, raw: &raw };
        let model_type = fields.string("model_type")?.ok_or_else(|| fields.missing("model_type", None))?;
        let profile = match profile {
            Some(p) => p,
            None => Profile::for_model_type(&model_type).map_err(|e| match e {
                crate::error::ProfileError::UnknownModelType { model_type, known, .. } => {
                    crate::error::ProfileError::UnknownModelType {
                        model_type,
                        known,
                        config: Some(path.to_path_buf()),
                    }
                }
                other => other,
            })?,
        };
        for field in profile.required_config {
            if raw.get(*field).is_none_or(Value::is_null) {
                return Err(fields.missing(field, Some(profile)));
            }
        }
        let defaults = profile.defaults;
        let hidden_size = fields.required_usize("hidden_size", profile)?;
        let num_attention_heads = fields.required_usize("num_attention_heads", profile)?;
        let num_key_value_heads = fields.usize("num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(fields.invalid(format!(
                "num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            )));
        }
        let head_dim = match (fields.usize("head_dim")?, defaults.head_dim) {
            (Some(d), _) => d,
            (None, Some(d)) => d as usize,
            (None, None) if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            (None, None) => {
                return Err(fields.invalid(format!(
                    "hidden_size ({hidden_size}) is not divisible by num_attention_heads ({num_attention_heads}) and head_dim is not given"
                )));
            }
        };
        let eos_token_ids = match raw.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Number(n)) => vec![fields.token_id("eos_token_id", n)?],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::Number(n) => fields.token_id("eos_token_id", n),
                    other => Err(fields.wrong_type("eos_token_id", "integer or list of integers", other)),
                })
                .collect::<Result<_, _>>()?,
            Some(other) => {
                return Err(fields.wrong_type("eos_token_id", "integer or list of integers", other));
            }
        };
        let num_hidden_layers = fields.required_usize("num_hidden_layers", profile)?;
        if num_hidden_layers > MAX_LAYERS {
            return Err(fields.invalid(format!(
                "num_hidden_layers = {num_hidden_layers} is more layers than any decoder this tool describes (at most {MAX_LAYERS})"
            )));
        }
        let features =
            features::check(&raw, &model_type, num_hidden_layers).map_err(|(key, value, supported)| {
                ModelError::UnsupportedConfig { path: path.to_path_buf(), key, value, supported }
            })?;
        let moe = match &profile.moe {
            Some(m) => Some(fields.moe(m, num_hidden_layers)?),
            None => None,
        };
        // Read in the order the fields are listed (the first bad one is the one named).
        let architectures = fields.string_list("architectures")?.unwrap_or_default();
        let vocab_size = fields.required_usize("vocab_size", profile)?;
        let intermediate_size = fields.required_usize("intermediate_size", profile)?;
        let max_position_embeddings =
            fields.usize("max_position_embeddings")?.unwrap_or(defaults.max_position_embeddings as usize);
        let rope_theta = match features.rope_theta {
            Some(theta) => theta,
            None => fields.float("rope_theta")?.unwrap_or(defaults.rope_theta),
        };
        let rms_norm_eps = fields.float("rms_norm_eps")?.unwrap_or(defaults.rms_norm_eps);
        let tie_word_embeddings = fields.bool("tie_word_embeddings")?.unwrap_or(defaults.tie_word_embeddings);
        let dims = Dims {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rope_theta,
            rope_scaling: &features.rope_scaling,
            rms_norm_eps,
            tie_word_embeddings,
            moe: moe.as_ref(),
        };
        let decoder = Arc::new(DecoderDesc::new(profile, dims)?);
        let config = HfConfig {
            path: path.to_path_buf(),
            moe,
            architectures,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings,
            rope_theta,
            rope_scaling: features.rope_scaling,
            rms_norm_eps,
            tie_word_embeddings,
            torch_dtype: match fields.string("torch_dtype")? {
                Some(d) => Some(d),
                None => fields.string("dtype")?,
            },
            bos_token_id: fields.optional_token_id("bos_token_id")?,
            eos_token_ids,
            pad_token_id: fields.optional_token_id("pad_token_id")?,
            model_type,
            raw: raw.clone(),
            decoder,
        };
        Ok((config, profile))
    }

    /// What the RoPE tables are computed from.
    pub fn rope(&self) -> RopeSpec<'_> {
        RopeSpec {
            theta: self.rope_theta,
            dim: self.head_dim,
            max_position_embeddings: self.max_position_embeddings,
            scaling: &self.rope_scaling,
        }
    }
}

struct Fields<'a> {
    path: &'a Path,
    raw: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn missing(&self, field: &str, profile: Option<&Profile>) -> ModelError {
        let why = profile.map(|p| format!(" (the {} profile needs it)", p.name)).unwrap_or_default();
        ModelError::ConfigField {
            path: self.path.to_path_buf(),
            message: format!("missing required field `{field}`{why}"),
        }
    }

    fn invalid(&self, message: String) -> ModelError {
        ModelError::ConfigField { path: self.path.to_path_buf(), message }
    }

    fn wrong_type(&self, field: &str, expected: &str, found: &Value) -> ModelError {
        self.invalid(format!("field `{field}` must be {expected}, found {found}"))
    }

    fn get(&self, field: &str) -> Option<&Value> {
        self.raw.get(field).filter(|v| !v.is_null())
    }

    fn usize(&self, field: &str) -> Result<Option<usize>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n > 0 => Ok(Some(n as usize)),
                _ => Err(self.wrong_type(field, "a positive integer", v)),
            },
        }
    }

    fn required_usize(&self, field: &str, profile: &Profile) -> Result<usize, ModelError> {
        self.usize(field)?.ok_or_else(|| self.missing(field, Some(profile)))
    }

    fn float(&self, field: &str) -> Result<Option<f64>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x > 0.0 && x.is_finite() => Ok(Some(x)),
                _ => Err(self.wrong_type(field, "a positive number", v)),
            },
        }
    }

    fn moe(&self, m: &crate::profile::MoeProfile, layers: usize) -> Result<MoeConfig, ModelError> {
        let d = m.defaults;
        let num_experts = self.usize("num_experts")?.unwrap_or(d.num_experts as usize);
        let top_k = self.usize("num_experts_per_tok")?.unwrap_or(d.num_experts_per_tok as usize);
        if num_experts > MAX_EXPERTS || num_experts.saturating_mul(layers) > MAX_LAYER_EXPERTS {
            return Err(self.invalid(format!(
                "num_experts = {num_experts} in {layers} layers is more experts than this tool describes (at most {MAX_EXPERTS} per layer, {MAX_LAYER_EXPERTS} in all)"
            )));
        }
        if num_experts > 0 && !(1..=num_experts).contains(&top_k) {
            return Err(self.invalid(format!(
                "num_experts_per_tok ({top_k}) must be between 1 and num_experts ({num_experts})"
            )));
        }
        let decoder_sparse_step =
            self.usize("decoder_sparse_step")?.unwrap_or(d.decoder_sparse_step as usize);
        if decoder_sparse_step == 0 {
            return Err(self.invalid("decoder_sparse_step must be at least 1".into()));
        }
        let mlp_only_layers = match self.get("mlp_only_layers") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v.as_u64() {
                    Some(l) if (l as usize) < layers => Ok(l as usize),
                    _ => Err(self.wrong_type(
                        "mlp_only_layers",
                        &format!("a list of layer indices below {layers}"),
                        v,
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(v) => Err(self.wrong_type("mlp_only_layers", "a list of layer indices", v))?,
        };
        Ok(MoeConfig {
            num_experts,
            top_k,
            intermediate: self.usize("moe_intermediate_size")?.unwrap_or(d.moe_intermediate_size as usize),
            norm_topk_prob: self.bool("norm_topk_prob")?.unwrap_or(d.norm_topk_prob),
            decoder_sparse_step,
            mlp_only_layers,
        })
    }

    fn bool(&self, field: &str) -> Result<Option<bool>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong_type(field, "true or false", v)),
        }
    }

    fn string(&self, field: &str) -> Result<Option<String>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong_type(field, "a string", v)),
        }
    }

    fn string_list(&self, field: &str) -> Result<Option<Vec<String>>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.wrong_type(field, "a list of strings", v))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(v) => Err(self.wrong_type(field, "a list of strings", v)),
        }
    }

    fn token_id(&self, field: &str, n: &serde_json::Number) -> Result<u32, ModelError> {
        n.as_u64().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
            self.wrong_type(field, "a token id (non-negative integer)", &Value::Number(n.clone()))
        })
    }

    fn optional_token_id(&self, field: &str) -> Result<Option<u32>, ModelError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => self.token_id(field, n).map(Some),
            Some(v) => Err(self.wrong_type(field, "a token id", v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<HfConfig, String> {
        HfConfig::parse(Path::new("config.json"), text, None).map(|(c, _)| c).map_err(|e| e.to_string())
    }

    const QWEN2: &str = r#"{"model_type":"qwen2","vocab_size":10,"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-6,"eos_token_id":[3,4]}"#;

    #[test]
    fn qwen2_head_dim_derives_from_hidden_size() {
        let c = parse(QWEN2).unwrap();
        assert_eq!(c.head_dim, 16);
        assert_eq!(c.eos_token_ids, vec![3, 4]);
        assert!(!c.tie_word_embeddings);
        assert_eq!(c.rope_theta, 10000.0);
    }

    #[test]
    fn qwen3_without_head_dim_uses_transformers_default() {
        let c = parse(&QWEN2.replace("qwen2", "qwen3")).unwrap();
        assert_eq!(c.head_dim, 128);
    }

    #[test]
    fn errors_name_the_field() {
        let err = parse(&QWEN2.replace(r#""hidden_size":64,"#, "")).unwrap_err();
        assert_eq!(err, "config.json: missing required field `hidden_size` (the qwen2 profile needs it)");
        let err = parse(&QWEN2.replace(r#""hidden_size":64"#, r#""hidden_size":"64""#)).unwrap_err();
        assert_eq!(err, "config.json: field `hidden_size` must be a positive integer, found \"64\"");
        let err = parse(&QWEN2.replace("qwen2", "gpt2")).unwrap_err();
        assert!(err.contains("model_type `gpt2`"), "{err}");
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::{QWEN2, parse};

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn arbitrary_text_never_panics(text in ".{0,200}") {
                let _ = parse(&text);
            }

            #[test]
            fn a_config_with_any_value_swapped_never_panics(
                key in prop::sample::select(vec!["hidden_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "vocab_size", "head_dim", "rms_norm_eps", "eos_token_id", "model_type",
                    "intermediate_size", "rope_theta", "tie_word_embeddings"]),
                value in prop::sample::select(vec!["0", "-1", "1e308", "18446744073709551616", "\"x\"", "null",
                    "[]", "{}", "true", "4294967297", "0.5"]),
            ) {
                let mut config: serde_json::Map<String, serde_json::Value> = serde_json::from_str(QWEN2).unwrap();
                config.insert(key.to_string(), serde_json::from_str(value).unwrap());
                let _ = parse(&serde_json::to_string(&config).unwrap());
            }
        }
    }
}
