//! Every config.json key transformers' Qwen2/Qwen3 configs read (4.57 / 5.x), and what this tool
//! does with it: implemented exactly, without effect on inference, or refused unless it has its
//! default. A refused key stops the run before anything is written, naming the key and value;
//! nothing is silently ignored. docs/config-features.md is this table in prose.

use serde_json::{Map, Value};

use super::rope::RopeScaling;

/// What the tool does with a config.json key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    /// Read and honoured by every engine and writer.
    Implemented,
    /// Changes nothing at inference (training-only or bookkeeping).
    NoEffect,
    /// Refused unless absent or its default; the text says what is supported.
    RefusedUnlessDefault(&'static str),
}

/// (key, support); the expert keys are Qwen3-MoE's. Keys not listed are not read by
/// transformers' Qwen2/Qwen3/Qwen3-MoE models either
/// (transformers keeps them as plain attributes), except `partial_rotary_factor` and
/// `quantization_config`, which it does read and which are listed.
pub const CONFIG_KEYS: &[(&str, Support)] = &[
    ("model_type", Support::Implemented),
    ("architectures", Support::Implemented),
    ("vocab_size", Support::Implemented),
    ("hidden_size", Support::Implemented),
    ("intermediate_size", Support::Implemented),
    ("num_hidden_layers", Support::Implemented),
    ("num_attention_heads", Support::Implemented),
    ("num_key_value_heads", Support::Implemented),
    ("head_dim", Support::Implemented),
    ("max_position_embeddings", Support::Implemented),
    ("rms_norm_eps", Support::Implemented),
    ("rope_theta", Support::Implemented),
    ("rope_scaling", Support::Implemented),
    ("rope_parameters", Support::Implemented),
    ("tie_word_embeddings", Support::Implemented),
    ("hidden_act", Support::Implemented),
    ("bos_token_id", Support::Implemented),
    ("eos_token_id", Support::Implemented),
    ("pad_token_id", Support::Implemented),
    ("torch_dtype", Support::Implemented),
    ("dtype", Support::Implemented),
    ("use_sliding_window", Support::RefusedUnlessDefault("full attention in every layer")),
    ("sliding_window", Support::RefusedUnlessDefault("full attention in every layer")),
    ("max_window_layers", Support::RefusedUnlessDefault("full attention in every layer")),
    ("layer_types", Support::RefusedUnlessDefault("\"full_attention\" in every layer")),
    ("attention_bias", Support::RefusedUnlessDefault("Qwen3 without attention bias (false)")),
    ("partial_rotary_factor", Support::RefusedUnlessDefault("rotary embedding over the whole head (1.0)")),
    (
        "quantization_config",
        Support::RefusedUnlessDefault("an unquantized base model (no quantization_config)"),
    ),
    ("num_experts", Support::Implemented),
    ("num_experts_per_tok", Support::Implemented),
    ("moe_intermediate_size", Support::Implemented),
    ("norm_topk_prob", Support::Implemented),
    ("decoder_sparse_step", Support::Implemented),
    ("mlp_only_layers", Support::Implemented),
    ("router_aux_loss_coef", Support::NoEffect),
    ("output_router_logits", Support::NoEffect),
    ("attention_dropout", Support::NoEffect),
    ("initializer_range", Support::NoEffect),
    ("use_cache", Support::NoEffect),
    ("transformers_version", Support::NoEffect),
];

/// rope_scaling types transformers knows; only these two (and the default) are implemented.
const ROPE_IMPLEMENTED: &str = "default, linear, yarn";

/// A refused value: (key, value as written, what is supported).
pub type Refusal = (String, String, String);

fn refuse(key: &str, value: &Value, supported: &str) -> Refusal {
    (key.to_string(), value.to_string(), supported.to_string())
}

/// The parts of the feature check the typed config keeps.
pub struct Features {
    pub rope_scaling: RopeScaling,
    /// `rope_parameters.rope_theta` (transformers 5), which wins over `rope_theta`.
    pub rope_theta: Option<f64>,
}

/// Checks every key of `raw` this table marks as refused, and parses the rope scaling.
/// `model_type` selects the Qwen2/Qwen3 reading of `attention_bias`; `layers` is
/// `num_hidden_layers` (a sliding window is active only from `max_window_layers` on).
pub fn check(raw: &Map<String, Value>, model_type: &str, layers: usize) -> Result<Features, Refusal> {
    let get = |k: &str| raw.get(k).filter(|v| !v.is_null());
    if let Some(act) = get("hidden_act")
        && !matches!(act.as_str(), Some("silu" | "swish"))
    {
        return Err(refuse("hidden_act", act, "silu (SwiGLU MLP)"));
    }
    // transformers: sliding_window = sliding_window if use_sliding_window else None, and a layer
    // slides when i >= max_window_layers (unless layer_types says otherwise).
    let use_sliding = get("use_sliding_window").and_then(Value::as_bool).unwrap_or(false);
    let window = get("sliding_window").filter(|_| use_sliding);
    if let Some(types) = get("layer_types") {
        let Some(items) = types.as_array() else {
            return Err(refuse("layer_types", types, "a list of \"full_attention\""));
        };
        if let Some(other) = items.iter().find(|t| t.as_str() != Some("full_attention")) {
            return Err(refuse("layer_types", other, "\"full_attention\" in every layer"));
        }
    } else if let Some(window) = window {
        let first_sliding = get("max_window_layers").and_then(Value::as_u64).unwrap_or(28);
        if (first_sliding as usize) < layers {
            return Err((
                "use_sliding_window".into(),
                "true".into(),
                format!(
                    "full attention in every layer (here a sliding_window of {window} applies from layer {first_sliding} of {layers}, max_window_layers)"
                ),
            ));
        }
    }
    if matches!(model_type, "qwen3" | "qwen3_moe")
        && let Some(bias) = get("attention_bias")
        && bias.as_bool() != Some(false)
    {
        return Err(refuse("attention_bias", bias, "false (Qwen3 projections without bias)"));
    }
    if let Some(partial) = get("partial_rotary_factor")
        && partial.as_f64() != Some(1.0)
    {
        return Err(refuse("partial_rotary_factor", partial, "1.0"));
    }
    if let Some(q) = get("quantization_config") {
        let method = q.get("quant_method").map_or_else(|| q.to_string(), Value::to_string);
        return Err(refuse(
            "quantization_config",
            &Value::String(method),
            "an unquantized base model (dequantize it to bf16/f16/f32 first)",
        ));
    }
    // transformers 5 writes `rope_parameters` (with rope_theta inside); 4.x `rope_scaling`.
    let (key, scaling) = match (get("rope_parameters"), get("rope_scaling")) {
        (Some(p), _) => ("rope_parameters", Some(p)),
        (None, s) => ("rope_scaling", s),
    };
    let rope_theta = match scaling.and_then(|s| s.get("rope_theta")) {
        Some(t) => Some(
            t.as_f64()
                .filter(|t| *t > 0.0)
                .ok_or_else(|| refuse(&format!("{key}.rope_theta"), t, "a positive number"))?,
        ),
        None => None,
    };
    let rope_scaling = match scaling {
        None => RopeScaling::Default,
        Some(s) => rope_scaling(key, s)?,
    };
    Ok(Features { rope_scaling, rope_theta })
}

fn rope_scaling(key: &str, value: &Value) -> Result<RopeScaling, Refusal> {
    let Some(map) = value.as_object() else {
        return Err(refuse(key, value, "an object with rope_type (default, linear or yarn)"));
    };
    // Older configs spell it `type`; transformers standardizes it to `rope_type`.
    let kind = map.get("rope_type").or_else(|| map.get("type"));
    let kind_str = kind.and_then(Value::as_str).unwrap_or("default");
    let allowed: &[&str] = match kind_str {
        "default" => &["rope_type", "type", "rope_theta"],
        "linear" => &["rope_type", "type", "rope_theta", "factor"],
        "yarn" => &[
            "rope_type",
            "type",
            "rope_theta",
            "factor",
            "original_max_position_embeddings",
            "attention_factor",
            "beta_fast",
            "beta_slow",
            "mscale",
            "mscale_all_dim",
            "truncate",
        ],
        _ => {
            return Err(refuse(
                &format!("{key}.rope_type"),
                kind.unwrap_or(&Value::Null),
                &format!("{ROPE_IMPLEMENTED} (dynamic, longrope and llama3 are not implemented)"),
            ));
        }
    };
    if let Some((extra, v)) = map.iter().find(|(k, v)| !allowed.contains(&k.as_str()) && !v.is_null()) {
        return Err(refuse(
            &format!("{key}.{extra}"),
            v,
            &format!("for rope_type {kind_str}: {}", allowed.join(", ")),
        ));
    }
    let number = |name: &str| -> Result<Option<f64>, Refusal> {
        match map.get(name).filter(|v| !v.is_null()) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite())
                .map(Some)
                .ok_or_else(|| refuse(&format!("{key}.{name}"), v, "a number")),
        }
    };
    let factor = || -> Result<f64, Refusal> {
        match number("factor")? {
            Some(f) if f >= 1.0 => Ok(f),
            Some(f) => Err(refuse(&format!("{key}.factor"), &Value::from(f), "a number >= 1")),
            None => Err(refuse(&format!("{key}.factor"), &Value::Null, "a number >= 1 (required)")),
        }
    };
    Ok(match kind_str {
        "default" => RopeScaling::Default,
        "linear" => RopeScaling::Linear { factor: factor()? },
        _ => {
            let original = match map.get("original_max_position_embeddings").filter(|v| !v.is_null()) {
                None => None,
                Some(v) => Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    refuse(&format!("{key}.original_max_position_embeddings"), v, "a positive integer")
                })? as usize),
            };
            let truncate = match map.get("truncate").filter(|v| !v.is_null()) {
                None => None,
                Some(v) => {
                    Some(v.as_bool().ok_or_else(|| refuse(&format!("{key}.truncate"), v, "true or false"))?)
                }
            };
            RopeScaling::Yarn {
                factor: factor()?,
                original_max_position_embeddings: original,
                attention_factor: number("attention_factor")?,
                beta_fast: number("beta_fast")?,
                beta_slow: number("beta_slow")?,
                mscale: number("mscale")?,
                mscale_all_dim: number("mscale_all_dim")?,
                truncate,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(extra: Value) -> Result<Features, Refusal> {
        let Value::Object(raw) = extra else { unreachable!("tests pass objects") };
        check(&raw, "qwen3", 2)
    }

    #[test]
    fn refusals_name_the_key_and_value() {
        let r = checked(serde_json::json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})).err();
        assert_eq!(r.map(|r| (r.0, r.1)), Some(("rope_scaling.rope_type".into(), "\"dynamic\"".into())));
        let r = checked(serde_json::json!({"hidden_act": "gelu"})).err();
        assert_eq!(r.map(|r| r.0), Some("hidden_act".into()));
        let r = checked(
            serde_json::json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 1}),
        );
        assert_eq!(r.err().map(|r| r.0), Some("use_sliding_window".into()));
        let r = checked(serde_json::json!({"layer_types": ["full_attention", "sliding_attention"]}));
        assert_eq!(r.err().map(|r| r.1), Some("\"sliding_attention\"".into()));
        let r = checked(
            serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "low_freq_factor": 1}}),
        );
        assert_eq!(r.err().map(|r| r.0), Some("rope_scaling.low_freq_factor".into()));
    }

    #[test]
    fn the_docs_list_every_key() {
        let docs = include_str!("../../docs/config-features.md");
        for (key, _) in CONFIG_KEYS {
            assert!(docs.contains(&format!("`{key}`")), "docs/config-features.md does not list `{key}`");
        }
    }

    #[test]
    fn defaults_and_inactive_windows_pass() {
        let f = checked(serde_json::json!({"hidden_act": "silu", "use_sliding_window": false,
            "sliding_window": 4096, "max_window_layers": 1, "layer_types": ["full_attention", "full_attention"],
            "rope_scaling": null, "attention_bias": false}))
        .ok();
        assert_eq!(f.map(|f| f.rope_scaling), Some(RopeScaling::Default));
        // Qwen2.5's shipped configs: a window that starts past the last layer.
        let f = checked(
            serde_json::json!({"use_sliding_window": true, "sliding_window": 8, "max_window_layers": 2}),
        );
        assert!(f.is_ok());
        let f = checked(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 2.0}})).ok();
        assert_eq!(f.map(|f| f.rope_scaling), Some(RopeScaling::Linear { factor: 2.0 }));
    }
}
