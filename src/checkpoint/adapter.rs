//! A PEFT adapter folder: its config and its tensors, grouped by the base module they adapt,
//! with the structural checks (pairs complete, ranks as configured) and the fit-to-base check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::adapter_config::AdapterConfig;
use crate::error::CheckpointError;
use crate::model::{ModelFolder, SafetensorsFile, TensorInfo};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";

/// The LoRA tensors of one adapted module (tensor names inside the adapter file).
#[derive(Debug, Clone, Default, Serialize)]
pub struct AdapterModule {
    pub lora_a: Option<String>,
    pub lora_b: Option<String>,
    pub lora_b_bias: Option<String>,
    pub embedding_a: Option<String>,
    pub embedding_b: Option<String>,
    pub magnitude: Option<String>,
}

/// A full tensor saved through `modules_to_save`, replacing the base tensor of the same name.
#[derive(Debug, Clone, Serialize)]
pub struct Replacement {
    pub base_tensor: String,
    pub adapter_tensor: String,
}

#[derive(Debug)]
pub struct Adapter {
    pub dir: PathBuf,
    pub config: AdapterConfig,
    pub file: SafetensorsFile,
    /// Module path (e.g. `model.layers.0.self_attn.q_proj`) -> its LoRA tensors.
    pub modules: BTreeMap<String, AdapterModule>,
    pub replacements: Vec<Replacement>,
}

/// Whether a folder holds an adapter (cheap; validates nothing).
pub fn looks_like_adapter(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG).is_file()
}

impl Adapter {
    /// Reads and checks an adapter folder without a base model.
    pub fn open(dir: &Path) -> Result<Self, CheckpointError> {
        let config = AdapterConfig::read(&dir.join(ADAPTER_CONFIG))?;
        let weights = dir.join(ADAPTER_WEIGHTS);
        if !weights.is_file() {
            let hint = if dir.join("adapter_model.bin").is_file() {
                " (only adapter_model.bin: re-save with safe_serialization=True)"
            } else {
                ""
            };
            return Err(CheckpointError::AdapterConfig {
                path: weights,
                message: format!("missing adapter weights{hint}"),
            });
        }
        let file = SafetensorsFile::open(&weights)?;
        let mut adapter = Adapter {
            dir: dir.to_path_buf(),
            config,
            file,
            modules: BTreeMap::new(),
            replacements: Vec::new(),
        };
        adapter.classify()?;
        adapter.check_structure()?;
        Ok(adapter)
    }

    fn tensor_error(&self, tensor: &str, message: String) -> CheckpointError {
        CheckpointError::AdapterTensor {
            path: self.file.path().to_path_buf(),
            tensor: tensor.to_string(),
            message,
        }
    }

    fn classify(&mut self) -> Result<(), CheckpointError> {
        let names: Vec<String> = self.file.tensors().iter().map(|t| t.name.clone()).collect();
        for name in names {
            let Some(key) = name.strip_prefix(KEY_PREFIX) else {
                return Err(self.tensor_error(
                    &name,
                    format!("key does not start with `{KEY_PREFIX}`: not a PEFT adapter tensor"),
                ));
            };
            let (module, role) = split_key(key);
            match role {
                Some(Role::BaseLayer) => continue,
                Some(Role::SavedModule(param)) => {
                    let base_tensor = format!("{module}.{param}");
                    self.replacements.push(Replacement { base_tensor, adapter_tensor: name });
                    continue;
                }
                Some(_) => {}
                None => {
                    // `modules_to_save` tensors are stored under the module's own name.
                    let saved = self
                        .config
                        .modules_to_save
                        .iter()
                        .any(|m| key.starts_with(&format!("{m}.")) || key.contains(&format!(".{m}.")));
                    if saved {
                        self.replacements
                            .push(Replacement { base_tensor: key.to_string(), adapter_tensor: name });
                        continue;
                    }
                    return Err(self.tensor_error(
                        &name,
                        "neither a LoRA tensor nor a module listed in `modules_to_save`".into(),
                    ));
                }
            }
            let entry = self.modules.entry(module.clone()).or_default();
            let Some(target) = role.as_ref().and_then(|r| slot_mut(entry, r)) else {
                continue;
            };
            if target.is_some() {
                return Err(self.tensor_error(&name, "appears twice for the same module".into()));
            }
            *target = Some(name);
        }
        Ok(())
    }

    fn info(&self, name: &str) -> &TensorInfo {
        self.file.get(name).expect("names come from this file's header")
    }

    fn check_structure(&self) -> Result<(), CheckpointError> {
        for (module, m) in &self.modules {
            let rank = self.config.rank_for(module);
            for (a, b, a_label, b_label) in [
                (&m.lora_a, &m.lora_b, "lora_A", "lora_B"),
                (&m.embedding_a, &m.embedding_b, "lora_embedding_A", "lora_embedding_B"),
            ] {
                match (a, b) {
                    (Some(a), Some(b)) => {
                        let (ia, ib) = (self.info(a), self.info(b));
                        for info in [ia, ib] {
                            if info.shape.len() != 2 || !info.dtype.is_weight_float() {
                                return Err(self.tensor_error(
                                    &info.name,
                                    format!(
                                        "expected a 2-d float tensor, found {} {:?}",
                                        info.dtype, info.shape
                                    ),
                                ));
                            }
                        }
                        if ia.shape[0] != rank || ib.shape[1] != rank {
                            return Err(self.tensor_error(
                                a,
                                format!(
                                    "rank disagrees with adapter_config.json: {a_label} {:?} and {b_label} {:?}, configured rank {rank}",
                                    ia.shape, ib.shape
                                ),
                            ));
                        }
                    }
                    (Some(present), None) => {
                        return Err(self.tensor_error(
                            present,
                            format!("has {a_label} but no matching {b_label}: the file is incomplete"),
                        ));
                    }
                    (None, Some(present)) => {
                        return Err(self.tensor_error(
                            present,
                            format!("has {b_label} but no matching {a_label}: the file is incomplete"),
                        ));
                    }
                    (None, None) => {}
                }
            }
            if let Some(mag) = &m.magnitude {
                if !self.config.use_dora {
                    return Err(self
                        .tensor_error(mag, "DoRA magnitude vector present but `use_dora` is false".into()));
                }
                if self.info(mag).shape.len() != 1 {
                    return Err(self.tensor_error(
                        mag,
                        format!("magnitude must be 1-d, found {:?}", self.info(mag).shape),
                    ));
                }
            } else if self.config.use_dora && m.lora_a.is_some() {
                let a = m.lora_a.as_deref().unwrap_or_default();
                return Err(self.tensor_error(
                    a,
                    "`use_dora` is set but this module has no lora_magnitude_vector".into(),
                ));
            }
            if m.lora_a.is_none() && m.embedding_a.is_none() {
                let any = m.magnitude.as_deref().or(m.lora_b_bias.as_deref()).unwrap_or(module);
                return Err(self.tensor_error(any, "no lora_A/lora_B pair for this module".into()));
            }
        }
        if self.modules.is_empty() && self.replacements.is_empty() {
            return Err(CheckpointError::AdapterTensor {
                path: self.file.path().to_path_buf(),
                tensor: "(none)".into(),
                message: "the adapter holds no LoRA tensors".into(),
            });
        }
        Ok(())
    }

    /// Checks every tensor against the base model it will be merged into.
    pub fn check_fits(&self, base: &ModelFolder) -> Result<(), CheckpointError> {
        let cfg = &base.config;
        let lm_head_module = base.config.decoder.head.name.trim_end_matches(".weight");
        let base_shape = |tensor: &str| -> Option<Vec<usize>> {
            match base.tensor(tensor) {
                Some((_, info)) => Some(info.shape.clone()),
                // A tied head is the embedding matrix; PEFT can still adapt or save `lm_head`.
                None if cfg.tie_word_embeddings
                    && tensor.starts_with(lm_head_module)
                    && tensor.ends_with(".weight") =>
                {
                    Some(vec![cfg.vocab_size, cfg.hidden_size])
                }
                None => None,
            }
        };
        for (module, m) in &self.modules {
            let weight = format!("{module}.weight");
            let first = m.lora_a.as_deref().or(m.embedding_a.as_deref()).unwrap_or(module);
            let Some(w) = base_shape(&weight) else {
                return Err(self.tensor_error(
                    first,
                    format!(
                        "targets `{module}`, which the base model has no weight for (base: {})",
                        base.dir.display()
                    ),
                ));
            };
            if w.len() != 2 {
                return Err(
                    self.tensor_error(first, format!("base weight `{weight}` is {:?}, not a matrix", w))
                );
            }
            if let (Some(a), Some(b)) = (&m.lora_a, &m.lora_b) {
                let (a_shape, b_shape) = (&self.info(a).shape, &self.info(b).shape);
                // nn.Linear weights are [out, in]; PEFT ignores fan_in_fan_out for them.
                let (out, inp) = (w[0], w[1]);
                if a_shape[1] != inp || b_shape[0] != out {
                    return Err(self.tensor_error(
                        a,
                        format!(
                            "does not fit the base: lora_A {:?} and lora_B {:?} make a [{}, {}] update, base `{weight}` is {:?} (an adapter trained for another base model?)",
                            a_shape, b_shape, b_shape[0], a_shape[1], w
                        ),
                    ));
                }
                if let Some(bias) = &m.lora_b_bias
                    && self.info(bias).shape != [out]
                {
                    return Err(self.tensor_error(
                        bias,
                        format!("bias is {:?}, base output size is {out}", self.info(bias).shape),
                    ));
                }
                if let Some(mag) = &m.magnitude
                    && self.info(mag).shape != [out]
                {
                    return Err(self.tensor_error(
                        mag,
                        format!("magnitude is {:?}, base output size is {out}", self.info(mag).shape),
                    ));
                }
            }
            if let (Some(a), Some(b)) = (&m.embedding_a, &m.embedding_b) {
                let (a_shape, b_shape) = (&self.info(a).shape, &self.info(b).shape);
                if a_shape[1] != w[0] || b_shape[0] != w[1] {
                    return Err(self.tensor_error(
                        a,
                        format!(
                            "does not fit the base embedding `{weight}` {:?}: lora_embedding_A {:?}, lora_embedding_B {:?}",
                            w, a_shape, b_shape
                        ),
                    ));
                }
            }
        }
        for r in &self.replacements {
            let saved = &self.info(&r.adapter_tensor).shape;
            match base_shape(&r.base_tensor) {
                Some(shape) if &shape == saved => {}
                Some(shape) => {
                    return Err(self.tensor_error(
                        &r.adapter_tensor,
                        format!("saved module is {saved:?} but base `{}` is {shape:?}", r.base_tensor),
                    ));
                }
                None => {
                    return Err(self.tensor_error(
                        &r.adapter_tensor,
                        format!("replaces `{}`, which the base model does not have", r.base_tensor),
                    ));
                }
            }
        }
        Ok(())
    }

    pub fn parameter_count(&self) -> u64 {
        self.file.tensors().iter().map(|t| t.numel() as u64).sum()
    }
}

enum Role<'a> {
    A,
    B,
    BBias,
    EmbeddingA,
    EmbeddingB,
    Magnitude,
    BaseLayer,
    SavedModule(&'a str),
}

fn slot_mut<'m>(m: &'m mut AdapterModule, role: &Role<'_>) -> Option<&'m mut Option<String>> {
    Some(match role {
        Role::A => &mut m.lora_a,
        Role::B => &mut m.lora_b,
        Role::BBias => &mut m.lora_b_bias,
        Role::EmbeddingA => &mut m.embedding_a,
        Role::EmbeddingB => &mut m.embedding_b,
        Role::Magnitude => &mut m.magnitude,
        Role::BaseLayer | Role::SavedModule(_) => return None,
    })
}

/// Splits `<module>.<lora part>` into the module path and the tensor's role. PEFT strips the
/// adapter name (`default`) when saving; a name left in (`lora_A.default.weight`) is accepted too.
fn split_key(key: &str) -> (String, Option<Role<'_>>) {
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate().skip(1) {
        let rest = &parts[i + 1..];
        let last = rest.last().copied();
        let role = match *part {
            "lora_A" if last == Some("weight") => Role::A,
            "lora_B" if last == Some("weight") => Role::B,
            "lora_B" if last == Some("bias") => Role::BBias,
            "lora_embedding_A" if rest.len() <= 1 => Role::EmbeddingA,
            "lora_embedding_B" if rest.len() <= 1 => Role::EmbeddingB,
            "lora_magnitude_vector" if rest.len() <= 1 => Role::Magnitude,
            "base_layer" => Role::BaseLayer,
            "modules_to_save" if rest.len() == 2 => Role::SavedModule(rest[1]),
            _ => continue,
        };
        return (parts[..i].join("."), Some(role));
    }
    (key.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role_name(key: &str) -> (String, &'static str) {
        let (module, role) = split_key(key);
        let name = match role {
            Some(Role::A) => "A",
            Some(Role::B) => "B",
            Some(Role::BBias) => "B-bias",
            Some(Role::EmbeddingA) => "EA",
            Some(Role::EmbeddingB) => "EB",
            Some(Role::Magnitude) => "M",
            Some(Role::BaseLayer) => "base",
            Some(Role::SavedModule(_)) => "saved",
            None => "none",
        };
        (module, name)
    }

    #[test]
    fn keys_split_into_module_and_role() {
        assert_eq!(
            role_name("model.layers.0.self_attn.q_proj.lora_A.weight"),
            ("model.layers.0.self_attn.q_proj".into(), "A")
        );
        assert_eq!(
            role_name("model.layers.0.self_attn.q_proj.lora_B.default.weight"),
            ("model.layers.0.self_attn.q_proj".into(), "B")
        );
        assert_eq!(role_name("model.embed_tokens.lora_embedding_A"), ("model.embed_tokens".into(), "EA"));
        assert_eq!(
            role_name("model.layers.1.mlp.up_proj.lora_magnitude_vector"),
            ("model.layers.1.mlp.up_proj".into(), "M")
        );
        assert_eq!(role_name("model.embed_tokens.base_layer.weight"), ("model.embed_tokens".into(), "base"));
        assert_eq!(role_name("lm_head.modules_to_save.default.weight"), ("lm_head".into(), "saved"));
        assert_eq!(role_name("lm_head.weight"), ("lm_head.weight".into(), "none"));
    }
}
