//! PEFT's adapter_config.json, with the per-module rank and alpha rules PEFT applies.

use std::path::{Path, PathBuf};

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::CheckpointError;
use crate::model::DecoderDesc;

/// Which modules a LoRA adapts, in the three forms PEFT accepts.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetModules {
    /// A module counts if its name equals an entry or ends with `.entry`.
    List(Vec<String>),
    /// A module counts if its full name matches the regular expression (Python `re.fullmatch`).
    Regex(String),
    /// PEFT's `all-linear`: every linear layer except the output head.
    AllLinear,
}

impl TargetModules {
    pub fn describe(&self) -> String {
        match self {
            TargetModules::List(items) => {
                let mut sorted = items.clone();
                sorted.sort();
                sorted.join(", ")
            }
            TargetModules::Regex(pattern) => format!("regex {pattern}"),
            TargetModules::AllLinear => "all-linear".into(),
        }
    }

    /// Whether PEFT would adapt `module` (a module path such as `model.layers.0.self_attn.q_proj`).
    pub fn matches(&self, module: &str, decoder: &DecoderDesc) -> bool {
        match self {
            TargetModules::List(items) => {
                items.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
            }
            TargetModules::Regex(pattern) => {
                Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(module))
            }
            TargetModules::AllLinear => decoder.is_linear(module),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AdapterConfig {
    #[serde(skip)]
    pub path: PathBuf,
    pub r: usize,
    pub lora_alpha: f64,
    pub target_modules: TargetModules,
    pub use_rslora: bool,
    pub use_dora: bool,
    pub fan_in_fan_out: bool,
    /// In file order: PEFT takes the first matching key.
    pub rank_pattern: Vec<(String, usize)>,
    pub alpha_pattern: Vec<(String, f64)>,
    pub modules_to_save: Vec<String>,
    pub base_model_name_or_path: Option<String>,
    /// Modules PEFT skipped even though `target_modules` selects them.
    pub exclude_modules: Option<TargetModules>,
    /// Only these decoder layers were adapted.
    pub layers_to_transform: Option<Vec<usize>>,
    /// PEFT's `ensure_weight_tying`: a tied embedding/head pair stayed tied during training.
    pub ensure_weight_tying: bool,
    #[serde(skip)]
    rank_regexes: Vec<Regex>,
    #[serde(skip)]
    alpha_regexes: Vec<Regex>,
}

#[derive(Deserialize)]
struct RawConfig {
    peft_type: Option<String>,
    r: Option<i64>,
    lora_alpha: Option<f64>,
    target_modules: Option<Value>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    rank_pattern: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    #[serde(default)]
    exclude_modules: Option<Value>,
    #[serde(default)]
    layers_to_transform: Option<Value>,
    #[serde(default)]
    ensure_weight_tying: Option<bool>,
}

impl AdapterConfig {
    pub fn read(path: &Path) -> Result<Self, CheckpointError> {
        let text = crate::retry::read_to_string(path)
            .map_err(|source| CheckpointError::Io { path: path.to_path_buf(), source })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, CheckpointError> {
        let bad = |message: String| CheckpointError::AdapterConfig { path: path.to_path_buf(), message };
        let de = &mut serde_json::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            if key == "." || key == "?" {
                bad(format!("not a valid adapter config: {}", e.inner()))
            } else {
                bad(format!("`{key}`: {}", e.inner()))
            }
        })?;
        match raw.peft_type.as_deref() {
            Some("LORA") | None => {}
            Some(other) => {
                return Err(bad(format!(
                    "`peft_type` is `{other}`; only LORA adapters (LoRA, rsLoRA, DoRA) can be merged"
                )));
            }
        }
        let r = match raw.r {
            Some(r) if r > 0 => r as usize,
            Some(r) => return Err(bad(format!("`r` must be a positive integer, found {r}"))),
            None => return Err(bad("missing `r` (the LoRA rank)".into())),
        };
        let lora_alpha = match raw.lora_alpha {
            Some(a) if a.is_finite() => a,
            Some(a) => {
                return Err(bad(format!("`lora_alpha` must be a finite number, found {a}")));
            }
            None => return Err(bad("missing `lora_alpha`".into())),
        };
        let target_modules = match raw.target_modules {
            Some(value) => module_selector(value, "target_modules").map_err(bad)?,
            None => return Err(bad("missing `target_modules`".into())),
        };
        let exclude_modules = match raw.exclude_modules {
            None | Some(Value::Null) => None,
            Some(value) => Some(module_selector(value, "exclude_modules").map_err(bad)?),
        };
        let layers_to_transform = match raw.layers_to_transform {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => {
                let index = n
                    .as_u64()
                    .ok_or_else(|| bad(format!("`layers_to_transform` {n} is not a layer index")))?;
                Some(vec![index as usize])
            }
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| v.as_u64().map(|n| n as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad("`layers_to_transform` must be a list of layer indices".into()))?,
            ),
            Some(other) => {
                return Err(bad(format!("`layers_to_transform` must be an index or a list, found {other}")));
            }
        };
        let (rank_pattern, rank_regexes) =
            patterns(raw.rank_pattern, "rank_pattern", |v| v.as_u64().filter(|&n| n > 0).map(|n| n as usize))
                .map_err(bad)?;
        let (alpha_pattern, alpha_regexes) =
            patterns(raw.alpha_pattern, "alpha_pattern", |v| v.as_f64().filter(|a| a.is_finite()))
                .map_err(bad)?;
        Ok(AdapterConfig {
            path: path.to_path_buf(),
            r,
            lora_alpha,
            target_modules,
            use_rslora: raw.use_rslora,
            use_dora: raw.use_dora,
            fan_in_fan_out: raw.fan_in_fan_out,
            rank_pattern,
            alpha_pattern,
            modules_to_save: raw.modules_to_save.unwrap_or_default(),
            base_model_name_or_path: raw.base_model_name_or_path,
            exclude_modules,
            layers_to_transform,
            ensure_weight_tying: raw.ensure_weight_tying.unwrap_or(false),
            rank_regexes,
            alpha_regexes,
        })
    }

    /// The rank PEFT gives `module`: the first `rank_pattern` key that matches, else `r`.
    pub fn rank_for(&self, module: &str) -> usize {
        first_match(&self.rank_regexes, &self.rank_pattern, module).unwrap_or(self.r)
    }

    /// The alpha PEFT gives `module`: the first `alpha_pattern` key that matches, else `lora_alpha`.
    pub fn alpha_for(&self, module: &str) -> f64 {
        first_match(&self.alpha_regexes, &self.alpha_pattern, module).unwrap_or(self.lora_alpha)
    }
}

/// `target_modules` / `exclude_modules`: a list of names, `all-linear`, or a regular expression.
fn module_selector(value: Value, field: &str) -> Result<TargetModules, String> {
    match value {
        Value::String(s) if s == "all-linear" => Ok(TargetModules::AllLinear),
        Value::String(s) => {
            Regex::new(&format!("^(?:{s})$"))
                .map_err(|e| format!("`{field}` is not a regular expression Rust can use: {e}"))?;
            Ok(TargetModules::Regex(s))
        }
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(TargetModules::List)
            .ok_or_else(|| format!("`{field}` must be a list of strings")),
        other => Err(format!("`{field}` must be a list or a string, found {other}")),
    }
}

/// The decoder layer a module belongs to (`model.layers.3.mlp.up_proj` -> 3).
pub fn layer_index(module: &str) -> Option<usize> {
    let mut parts = module.split('.');
    while let Some(part) = parts.next() {
        if matches!(part, "layers" | "h" | "blocks" | "layer")
            && let Some(index) = parts.clone().next().and_then(|p| p.parse().ok())
        {
            return Some(index);
        }
    }
    None
}

impl AdapterConfig {
    /// Whether PEFT adapted `module`: selected by `target_modules`, not excluded, in a chosen layer.
    pub fn selects(&self, module: &str, decoder: &DecoderDesc) -> bool {
        self.target_modules.matches(module, decoder)
            && !self.exclude_modules.as_ref().is_some_and(|e| e.matches(module, decoder))
            && self
                .layers_to_transform
                .as_ref()
                .is_none_or(|layers| layer_index(module).is_some_and(|i| layers.contains(&i)))
    }
}

fn first_match<T: Copy>(regexes: &[Regex], pattern: &[(String, T)], module: &str) -> Option<T> {
    regexes.iter().zip(pattern).find(|(re, _)| re.is_match(module)).map(|(_, (_, v))| *v)
}

type Patterns<T> = (Vec<(String, T)>, Vec<Regex>);

/// PEFT matches a pattern key `k` against module `m` with `re.match(rf"(.*\.)?({k})$", m)`.
fn patterns<T>(
    map: Option<serde_json::Map<String, Value>>,
    field: &str,
    value: impl Fn(&Value) -> Option<T>,
) -> Result<Patterns<T>, String> {
    let mut entries = Vec::new();
    let mut regexes = Vec::new();
    for (key, v) in map.unwrap_or_default() {
        let parsed = value(&v).ok_or_else(|| format!("`{field}.{key}` has an invalid value {v}"))?;
        let re = Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
            .map_err(|e| format!("`{field}` key `{key}` is not a regular expression Rust can use: {e}"))?;
        entries.push((key, parsed));
        regexes.push(re);
    }
    Ok((entries, regexes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AdapterConfig, String> {
        AdapterConfig::parse(Path::new("adapter_config.json"), text).map_err(|e| e.to_string())
    }

    #[test]
    fn rank_and_alpha_patterns_follow_peft_matching() {
        let c = parse(
            r#"{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":["q_proj","v_proj"],
                "rank_pattern":{"layers.1.self_attn.q_proj":4,"q_proj":2},"alpha_pattern":{"v_proj":3}}"#,
        )
        .unwrap();
        assert_eq!(c.rank_for("model.layers.1.self_attn.q_proj"), 4);
        assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 2);
        assert_eq!(c.rank_for("model.layers.0.self_attn.v_proj"), 8);
        // `.*\.` must end at a dot: `xv_proj` is not `v_proj`.
        assert_eq!(c.alpha_for("model.layers.0.self_attn.xv_proj"), 16.0);
        assert_eq!(c.alpha_for("model.layers.0.self_attn.v_proj"), 3.0);
    }

    #[test]
    fn target_forms() {
        let json = r#"{"model_type":"qwen3","vocab_size":10,"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":6,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-6}"#;
        let (config, _) =
            crate::model::HfConfig::parse(std::path::Path::new("config.json"), json, None).unwrap();
        let profile = &*config.decoder;
        let list = TargetModules::List(vec!["q_proj".into()]);
        assert!(list.matches("model.layers.0.self_attn.q_proj", profile));
        assert!(!list.matches("model.layers.0.self_attn.xq_proj", profile));
        let regex = TargetModules::Regex(r".*\.(q|v)_proj".into());
        assert!(regex.matches("model.layers.0.self_attn.v_proj", profile));
        assert!(!regex.matches("model.layers.0.self_attn.k_proj", profile));
        assert!(TargetModules::AllLinear.matches("model.layers.5.mlp.up_proj", profile));
        assert!(!TargetModules::AllLinear.matches("lm_head", profile));
    }

    #[test]
    fn refuses_zero_rank_and_other_peft_types() {
        assert!(
            parse(r#"{"r":0,"lora_alpha":1,"target_modules":["q"]}"#)
                .unwrap_err()
                .contains("`r` must be a positive integer, found 0")
        );
        assert!(
            parse(r#"{"peft_type":"IA3","r":2,"lora_alpha":1,"target_modules":["q"]}"#)
                .unwrap_err()
                .contains("IA3")
        );
        assert!(parse(r#"{"r":"8","lora_alpha":1}"#).unwrap_err().contains("`r`"));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::parse;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            #[test]
            fn arbitrary_text_never_panics(text in ".{0,200}") {
                let _ = parse(&text);
            }

            #[test]
            fn any_value_for_any_key_never_panics(
                key in prop::sample::select(vec!["r", "lora_alpha", "target_modules", "use_rslora", "use_dora",
                    "rank_pattern", "alpha_pattern", "modules_to_save", "peft_type", "fan_in_fan_out", "bias",
                    "layers_to_transform"]),
                value in prop::sample::select(vec!["0", "-1", "1e308", "18446744073709551616", "\"x\"", "null",
                    "[]", "{}", "true", "[\"q_proj\"]", "{\"q_proj\": 0}", "\"all-linear\""]),
            ) {
                let text = format!(r#"{{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "{key}": {value}}}"#);
                let _ = parse(&text);
            }
        }
    }
}
