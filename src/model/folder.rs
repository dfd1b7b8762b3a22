//! A Hugging Face model folder: config.json, weights in one safetensors file or in shards
//! listed by `model.safetensors.index.json`, and the tokenizer files that travel with it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config_json::HfConfig;
use super::dtype::TensorDtype;
use super::safetensors::{SafetensorsFile, TensorInfo};
use crate::error::ModelError;
use crate::profile::Profile;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// Files that describe tokenization and chat formatting; exports copy every one present.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
];

#[derive(Debug)]
pub struct ModelFolder {
    pub dir: PathBuf,
    pub config: HfConfig,
    pub profile: &'static Profile,
    shards: Vec<SafetensorsFile>,
    /// Tensor name -> (shard, position in that shard's tensor list).
    index: BTreeMap<String, (usize, usize)>,
    pub sharded: bool,
    pub tokenizer_files: Vec<String>,
    pub has_generation_config: bool,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Whether a folder looks like a model folder (cheap; does not validate anything).
pub fn looks_like_model(dir: &Path) -> bool {
    dir.join("config.json").is_file() && (dir.join(SINGLE_FILE).is_file() || dir.join(SHARD_INDEX).is_file())
}

impl ModelFolder {
    /// Opens and checks a model folder; `profile` forces an architecture instead of `model_type`.
    pub fn open(dir: &Path, profile: Option<&'static Profile>) -> Result<Self, ModelError> {
        let not_model = |reason: String| ModelError::NotAModel { path: dir.to_path_buf(), reason };
        if !dir.is_dir() {
            return Err(if dir.exists() {
                not_model("it is a file, not a folder".into())
            } else {
                ModelError::Io { path: dir.to_path_buf(), source: std::io::ErrorKind::NotFound.into() }
            });
        }
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(not_model("it has no config.json".into()));
        }
        let (config, profile) = HfConfig::read(&config_path, profile)?;

        let mut shards = Vec::new();
        let mut index = BTreeMap::new();
        let sharded = dir.join(SHARD_INDEX).is_file();
        if sharded {
            let index_path = dir.join(SHARD_INDEX);
            let text = crate::retry::read_to_string(&index_path)
                .map_err(|source| ModelError::Io { path: index_path.clone(), source })?;
            let parsed: ShardIndex = serde_json::from_str(&text).map_err(|e| ModelError::Json {
                path: index_path.clone(),
                message: format!("not a shard index: {e}"),
            })?;
            let mut shard_of: BTreeMap<String, usize> = BTreeMap::new();
            for (tensor, file) in &parsed.weight_map {
                if file.contains('/') || file.contains('\\') || file == ".." {
                    return Err(ModelError::Json {
                        path: index_path.clone(),
                        message: format!(
                            "tensor `{tensor}` names shard `{file}`, which is not a plain file name"
                        ),
                    });
                }
                let shard = match shard_of.get(file) {
                    Some(&i) => i,
                    None => {
                        let shard_path = dir.join(file);
                        if !shard_path.is_file() {
                            return Err(ModelError::MissingShard {
                                index: index_path.clone(),
                                shard: file.clone(),
                            });
                        }
                        shards.push(SafetensorsFile::open(&shard_path)?);
                        shard_of.insert(file.clone(), shards.len() - 1);
                        shards.len() - 1
                    }
                };
                let position =
                    shards[shard].tensors().iter().position(|t| &t.name == tensor).ok_or_else(|| {
                        ModelError::Tensor {
                            path: shards[shard].path().to_path_buf(),
                            tensor: tensor.clone(),
                            message: format!("listed in {SHARD_INDEX} but absent from this shard"),
                        }
                    })?;
                index.insert(tensor.clone(), (shard, position));
            }
        } else if dir.join(SINGLE_FILE).exists() {
            let file = SafetensorsFile::open(&dir.join(SINGLE_FILE))?;
            for (i, t) in file.tensors().iter().enumerate() {
                index.insert(t.name.clone(), (0, i));
            }
            shards.push(file);
        } else if dir.join("pytorch_model.bin").is_file()
            || dir.join("pytorch_model.bin.index.json").is_file()
        {
            return Err(not_model(
                "it holds PyTorch .bin weights only; re-save it with `save_pretrained(..., safe_serialization=True)`".into(),
            ));
        } else {
            return Err(not_model(format!("it has neither {SINGLE_FILE} nor {SHARD_INDEX}")));
        }

        let tokenizer_files =
            TOKENIZER_FILES.iter().filter(|name| dir.join(name).is_file()).map(|s| s.to_string()).collect();
        let has_generation_config = dir.join("generation_config.json").is_file();
        let folder = ModelFolder {
            dir: dir.to_path_buf(),
            config,
            profile,
            shards,
            index,
            sharded,
            tokenizer_files,
            has_generation_config,
        };
        for info in folder.tensors().map(|(_, t)| t) {
            if !info.dtype.is_weight_float() {
                return Err(ModelError::Tensor {
                    path: folder.file_of(&info.name).map(Path::to_path_buf).unwrap_or_default(),
                    tensor: info.name.clone(),
                    message: format!(
                        "unsupported dtype {} for a model weight (expected f32, f16 or bf16)",
                        info.dtype
                    ),
                });
            }
        }
        Ok(folder)
    }

    /// Every tensor in name order, with the file that holds it.
    pub fn tensors(&self) -> impl Iterator<Item = (&SafetensorsFile, &TensorInfo)> {
        self.index.values().map(|&(shard, i)| (&self.shards[shard], &self.shards[shard].tensors()[i]))
    }

    pub fn tensor(&self, name: &str) -> Option<(&SafetensorsFile, &TensorInfo)> {
        self.index.get(name).map(|&(shard, i)| (&self.shards[shard], &self.shards[shard].tensors()[i]))
    }

    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensor(name).map(|(file, _)| file.path())
    }

    pub fn shard_files(&self) -> impl Iterator<Item = &SafetensorsFile> {
        self.shards.iter()
    }

    pub fn tensor_count(&self) -> usize {
        self.index.len()
    }

    /// Stored parameters (a tied head is stored once, so it is counted once, as transformers does).
    pub fn parameter_count(&self) -> u64 {
        self.tensors().map(|(_, t)| t.numel() as u64).sum()
    }

    pub fn tensor_bytes(&self) -> u64 {
        self.tensors().map(|(_, t)| t.byte_len() as u64).sum()
    }

    pub fn dtypes(&self) -> BTreeSet<TensorDtype> {
        self.tensors().map(|(_, t)| t.dtype).collect()
    }

    /// The storage dtype exports default to: the dtype most bytes are stored in.
    pub fn storage_dtype(&self) -> TensorDtype {
        let mut bytes: BTreeMap<TensorDtype, u64> = BTreeMap::new();
        for (_, t) in self.tensors() {
            *bytes.entry(t.dtype).or_default() += t.byte_len() as u64;
        }
        bytes.into_iter().max_by_key(|(_, b)| *b).map(|(d, _)| d).unwrap_or(TensorDtype::F32)
    }
}
