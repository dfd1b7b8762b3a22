//! The validator's reference: the *base* weights with the adapter applied as side branches, the
//! way peft's forward runs before `merge_and_unload`. It reads adapter_config.json and
//! adapter_model.safetensors itself (its own key grouping, its own scale and pattern rules,
//! written from peft's documented semantics) and shares no code with `merge/`, so a merge bug
//! shows up as a difference between an export and this model instead of agreeing with itself.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use crate::error::{CheckpointError, Error, RuntimeError};
use crate::model::{ModelFolder, SafetensorsFile};
use crate::runtime::StreamedModel;
use crate::runtime::reference::{LoraBranch, Weight, read_f32_released};

const PREFIX: &str = "base_model.model.";

/// The LoRA tensors peft saved for one module (adapter-file names).
#[derive(Default)]
struct Module {
    a: Option<String>,
    b: Option<String>,
    b_bias: Option<String>,
    embedding_a: Option<String>,
    embedding_b: Option<String>,
    magnitude: Option<String>,
}

/// adapter_config.json keys of LoRA variants with another forward (peft 0.17–0.21).
const FORWARD_CHANGING: &[&str] = &[
    "alora_invocation_tokens",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "arrow_config",
    "use_qalora",
    "use_bdlora",
];

#[derive(Clone, Copy)]
enum Kind {
    A,
    B,
    BBias,
    EmbeddingA,
    EmbeddingB,
    Magnitude,
}

/// Key suffixes of peft's LoRA tensors (after the adapter name is dropped).
const LORA_SUFFIXES: &[(&str, Kind)] = &[
    (".lora_A.weight", Kind::A),
    (".lora_B.weight", Kind::B),
    (".lora_B.bias", Kind::BBias),
    (".lora_embedding_A", Kind::EmbeddingA),
    (".lora_embedding_B", Kind::EmbeddingB),
    (".lora_magnitude_vector", Kind::Magnitude),
    (".lora_magnitude_vector.weight", Kind::Magnitude),
];

/// The adapter as this module reads it.
struct PeftAdapter {
    config: Value,
    file: SafetensorsFile,
    /// Module path (`model.layers.0.self_attn.q_proj`) -> its LoRA tensors.
    modules: HashMap<String, Module>,
    /// Base tensor name -> adapter tensor that replaces it (`modules_to_save`).
    saved: HashMap<String, String>,
}

fn adapter_error(path: &Path, message: String) -> Error {
    CheckpointError::AdapterConfig {
        path: path.to_path_buf(),
        message: format!("unmerged reference: {message}"),
    }
    .into()
}

impl PeftAdapter {
    fn read(dir: &Path) -> Result<Self, Error> {
        let config_path = dir.join("adapter_config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|e| Error::write(&config_path, e))?;
        let config: Value = serde_json::from_str(&text)
            .map_err(|e| adapter_error(&config_path, format!("not valid JSON: {e}")))?;
        if let Some(kind) = config.get("peft_type").and_then(Value::as_str).filter(|k| *k != "LORA") {
            return Err(adapter_error(
                &config_path,
                format!("peft_type {kind}: the reference runs LoRA adapters"),
            ));
        }
        // peft variants whose forward is not `W x + s·B A x`: the reference would be wrong.
        for key in FORWARD_CHANGING {
            if let Some(v) = config.get(*key).filter(|v| !v.is_null() && **v != Value::Bool(false)) {
                return Err(adapter_error(
                    &config_path,
                    format!("`{key}` = {v}: this LoRA variant changes peft's forward and is not implemented"),
                ));
            }
        }
        let file =
            SafetensorsFile::open(&dir.join("adapter_model.safetensors")).map_err(RuntimeError::from)?;
        let mut modules: HashMap<String, Module> = HashMap::new();
        let mut saved = HashMap::new();
        for info in file.tensors() {
            let name = &info.name;
            let Some(key) = name.strip_prefix(PREFIX) else {
                return Err(adapter_error(file.path(), format!("tensor `{name}` is not a peft key")));
            };
            // peft saves "<module>.lora_A.weight"; older files keep the adapter name
            // ("lora_A.default.weight").
            let key = key.replace(".default.", ".");
            let kind = LORA_SUFFIXES
                .iter()
                .find_map(|(suffix, kind)| key.strip_suffix(suffix).map(|m| (m.to_string(), *kind)));
            if let Some((module, kind)) = kind {
                let entry = modules.entry(module).or_default();
                *match kind {
                    Kind::A => &mut entry.a,
                    Kind::B => &mut entry.b,
                    Kind::BBias => &mut entry.b_bias,
                    Kind::EmbeddingA => &mut entry.embedding_a,
                    Kind::EmbeddingB => &mut entry.embedding_b,
                    Kind::Magnitude => &mut entry.magnitude,
                } = Some(name.clone());
            } else if key.ends_with(".base_layer.weight") {
                // peft's copy of a targeted embedding's base weight: the base folder has it.
            } else if key.contains(".lora_") {
                return Err(adapter_error(
                    file.path(),
                    format!("tensor `{name}`: a LoRA tensor kind the reference does not know"),
                ));
            } else {
                // A module saved whole (`modules_to_save`), stored under the base's own name.
                let base = key.replace(".modules_to_save.", ".");
                saved.insert(base, name.clone());
            }
        }
        Ok(Self { config, file, modules, saved })
    }

    fn f32s(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), Error> {
        let info = self
            .file
            .get(name)
            .ok_or_else(|| adapter_error(self.file.path(), format!("tensor `{name}` is missing")))?;
        let mut values = Vec::new();
        self.file.read_f32(info, &mut values).map_err(RuntimeError::from)?;
        Ok((values, info.shape.clone()))
    }

    fn tensor(&self, name: &str) -> Result<Tensor, Error> {
        let (values, shape) = self.f32s(name)?;
        Ok(Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).map_err(RuntimeError::from)?)
    }

    fn flag(&self, key: &str) -> bool {
        self.config.get(key).and_then(Value::as_bool).unwrap_or(false)
    }

    /// A per-module value: the first `pattern` key (in file order) with
    /// `re.match(rf"(.*\.)?({key})$", module)`, else `default`.
    fn per_module(&self, pattern: &str, module: &str, default: &str) -> Result<f64, Error> {
        if let Some(Value::Object(patterns)) = self.config.get(pattern) {
            for (key, value) in patterns {
                let re = regex::Regex::new(&format!(r"^(?:.*\.)?(?:{key})$"))
                    .map_err(|e| adapter_error(self.file.path(), format!("{pattern} key `{key}`: {e}")))?;
                if re.is_match(module) {
                    return value.as_f64().ok_or_else(|| {
                        adapter_error(self.file.path(), format!("{pattern}.{key} is not a number"))
                    });
                }
            }
        }
        self.config.get(default).and_then(Value::as_f64).ok_or_else(|| {
            adapter_error(self.file.path(), format!("adapter_config.json has no number `{default}`"))
        })
    }

    /// peft's `scaling`: alpha / r, or alpha / √r with `use_rslora`.
    fn scale(&self, module: &str) -> Result<f64, Error> {
        let r = self.per_module("rank_pattern", module, "r")?;
        let alpha = self.per_module("alpha_pattern", module, "lora_alpha")?;
        Ok(if self.flag("use_rslora") { alpha / r.sqrt() } else { alpha / r })
    }

    /// The branch for `module` whose base weight is `base` ([out, in], f32).
    fn branch(&self, module: &str, lora: &Module, base: &Tensor) -> Result<LoraBranch, Error> {
        let scale = self.scale(module)?;
        let (a, b, embedding) = match (&lora.a, &lora.b, &lora.embedding_a, &lora.embedding_b) {
            (Some(a), Some(b), _, _) => (self.tensor(a)?, self.tensor(b)?, false),
            (_, _, Some(a), Some(b)) => (self.tensor(a)?, self.tensor(b)?, true),
            _ => {
                return Err(adapter_error(
                    self.file.path(),
                    format!("module `{module}` lacks its A or B tensor"),
                ));
            }
        };
        let b_bias = lora.b_bias.as_deref().map(|n| self.tensor(n)).transpose()?;
        let dora_scale = match &lora.magnitude {
            None => None,
            Some(_) if embedding || b_bias.is_some() => {
                return Err(adapter_error(
                    self.file.path(),
                    format!("module `{module}`: DoRA on an embedding or with lora_bias is not supported"),
                ));
            }
            Some(m) => {
                // ‖W + s·B A‖ per output row, over the input dimension (peft's get_weight_norm).
                let candle = |e: candle_core::Error| Error::from(RuntimeError::from(e));
                let adapted =
                    (base + (b.matmul(&a).map_err(candle)? * scale).map_err(candle)?).map_err(candle)?;
                let norm = adapted.sqr().and_then(|t| t.sum(1)).and_then(|t| t.sqrt()).map_err(candle)?;
                Some(self.tensor(m)?.div(&norm).map_err(candle)?)
            }
        };
        Ok(LoraBranch { a, b, b_bias, scale, dora_scale })
    }
}

/// The base model of `base` with the adapter in `adapter_dir` applied unmerged (f32, CPU), read
/// layer by layer on every forward pass (each weight upcast when its layer runs, then released).
pub fn load_unmerged<'a>(
    base: &'a ModelFolder,
    adapter_dir: Option<&Path>,
) -> Result<StreamedModel<'a>, Error> {
    let adapter = adapter_dir.map(PeftAdapter::read).transpose()?;
    if let Some(adapter) = &adapter {
        check_coverage(base, adapter)?;
    }
    let embed_name = base.config.decoder.embedding.name.as_str();
    let head_name = base.config.decoder.head.name.as_str();
    let read_base = move |name: &str| -> Result<Option<Tensor>, RuntimeError> {
        let Some((values, shape)) = read_f32_released(base, name)? else { return Ok(None) };
        Ok(Some(Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?))
    };
    let source = move |name: &str| -> Result<Option<Weight>, RuntimeError> {
        crate::hooks::check_stop(Some(name)).map_err(|e| source_error(e.into()))?;
        let Some(adapter) = &adapter else { return Ok(read_base(name)?.map(Weight::Dense)) };
        if let Some(saved) = adapter.saved.get(name) {
            return Ok(Some(Weight::Dense(adapter.tensor(saved).map_err(source_error)?)));
        }
        // A tied head is the embedding's base weight in peft's forward (lm_head shares the
        // original parameter, whatever LoRA or modules_to_save did to the embedding), with
        // the head's own LoRA if it has one.
        let base_tensor = match read_base(name)? {
            Some(t) => t,
            None if name == head_name && base.config.tie_word_embeddings => {
                let embed_module = embed_name.strip_suffix(".weight").unwrap_or(embed_name);
                let head_module = head_name.strip_suffix(".weight").unwrap_or(head_name);
                let embed_changed =
                    adapter.saved.contains_key(embed_name) || adapter.modules.contains_key(embed_module);
                if !embed_changed && !adapter.modules.contains_key(head_module) {
                    return Ok(None); // the model shares the embedding table itself
                }
                match read_base(embed_name)? {
                    Some(t) => t,
                    None => return Ok(None),
                }
            }
            None => return Ok(None),
        };
        let module = name.strip_suffix(".weight").unwrap_or(name);
        match adapter.modules.get(module) {
            Some(lora) => {
                let lora = adapter.branch(module, lora, &base_tensor).map_err(source_error)?;
                Ok(Some(Weight::Adapted { base: base_tensor, lora }))
            }
            None => Ok(Some(Weight::Dense(base_tensor))),
        }
    };
    Ok(StreamedModel::new(base, Box::new(source)))
}

fn source_error(e: Error) -> RuntimeError {
    RuntimeError::Source(Box::new(e))
}

/// Every adapted or saved module must reach the model: one that does not (a bias, a module of
/// another architecture) would otherwise be dropped without a word.
fn check_coverage(base: &ModelFolder, adapter: &PeftAdapter) -> Result<(), Error> {
    let names = StreamedModel::weight_names(&base.config.decoder);
    let reached =
        |module: &str| names.iter().any(|n| n == module || n.strip_suffix(".weight") == Some(module));
    let unused: Vec<&String> =
        adapter.modules.keys().chain(adapter.saved.keys()).filter(|m| !reached(m)).collect();
    match unused.first() {
        None => Ok(()),
        Some(first) => Err(adapter_error(
            adapter.file.path(),
            format!(
                "`{first}` ({} module(s) in all) is not a weight the {} reference runs",
                unused.len(),
                base.profile.name
            ),
        )),
    }
}
