//! Running a GGUF file: its hyperparameters and tensor names are read back through the profile
//! whose llama.cpp architecture it declares, and the same decoder as the reference runs its
//! weights, quantized ones as candle `QMatMul`s (ggml's block formats and kernels, as llama.cpp
//! computes them). Everything comes from the file itself, so a metadata key or tensor the
//! writer got wrong shows up as a failed load or a failed validation.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device};
use serde_json::json;

use super::kernels::{BlockMatrix, Format, Storage};
use super::reference::{ReferenceModel, StreamedModel, Weight};
use crate::error::{Error, ModelError, RuntimeError};
use crate::gguf_constants::{
    GENERAL_ARCHITECTURE, TOKENIZER_BOS_ID, TOKENIZER_EOS_ID, TOKENIZER_PAD_ID, TOKENIZER_TOKENS, arch,
    arch_key, block_bytes,
};
use crate::model::HfConfig;
use crate::model::decoder::Role;
use crate::profile::Profile;
use crate::quant::ggml::candle_multiplies;

fn not_gguf(path: &Path, reason: String) -> Error {
    ModelError::NotAModel { path: path.to_path_buf(), reason }.into()
}

fn open(path: &Path) -> Result<BufReader<File>, Error> {
    let file = File::open(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    Ok(BufReader::with_capacity(1 << 20, file))
}

/// The header, metadata and tensor directory of a GGUF file.
pub fn read_content(path: &Path) -> Result<Content, Error> {
    Content::read(&mut open(path)?).map_err(|e| not_gguf(path, format!("not a readable GGUF file: {e}")))
}

/// A GGUF file opened for loading.
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    pub profile: &'static Profile,
    pub config: HfConfig,
}

fn meta<'a>(content: &'a Content, path: &Path, key: &str) -> Result<&'a Value, Error> {
    content.metadata.get(key).ok_or_else(|| not_gguf(path, format!("metadata key `{key}` is missing")))
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, Error> {
        let content = read_content(path)?;
        let bad = |key: &str, e: candle_core::Error| not_gguf(path, format!("metadata key `{key}`: {e}"));
        let arch = meta(&content, path, GENERAL_ARCHITECTURE)?
            .to_string()
            .map_err(|e| bad(GENERAL_ARCHITECTURE, e))?;
        let profile = Profile::all().iter().find(|p| p.gguf.architecture == arch).ok_or_else(|| {
            let known: Vec<_> = Profile::all().iter().map(|p| p.gguf.architecture).collect();
            not_gguf(path, format!("architecture `{arch}` is not one this tool runs ({})", known.join(", ")))
        })?;
        let number = |key: &str| -> Result<u64, Error> {
            let full = arch_key(arch, key);
            meta(&content, path, &full)?.to_u32().map(u64::from).map_err(|e| bad(&full, e))
        };
        let float = |key: &str| -> Result<f64, Error> {
            let full = arch_key(arch, key);
            meta(&content, path, &full)?.to_f32().map(f64::from).map_err(|e| bad(&full, e))
        };
        let token_id = |key: &str| content.metadata.get(key).and_then(|v| v.to_u32().ok());
        let tokens = content.metadata.get(TOKENIZER_TOKENS).and_then(|v| v.to_vec().ok()).map(Vec::len);
        let vocab_size = match content.metadata.get(&arch_key(arch, arch::VOCAB_SIZE)) {
            Some(v) => u64::from(v.to_u32().map_err(|e| bad(&arch_key(arch, arch::VOCAB_SIZE), e))?),
            None => tokens.ok_or_else(|| {
                not_gguf(
                    path,
                    format!(
                        "neither `{}` nor `{TOKENIZER_TOKENS}` is present",
                        arch_key(arch, arch::VOCAB_SIZE)
                    ),
                )
            })? as u64,
        };
        let head = profile.gguf.tensors.lm_head;
        // Optional, as in llama.cpp: the converter writes it only when config.json has head_dim.
        let head_dim = match content.metadata.get(&arch_key(arch, arch::KEY_LENGTH)) {
            Some(_) => number(arch::KEY_LENGTH)?,
            None => number(arch::EMBEDDING_LENGTH)? / number(arch::HEAD_COUNT)?.max(1),
        };
        // What transformers' config would say, so the model is checked like any other.
        let mut config = json!({
            "model_type": profile.model_types[0],
            "architectures": profile.architectures,
            "vocab_size": vocab_size,
            "hidden_size": number(arch::EMBEDDING_LENGTH)?,
            "intermediate_size": number(arch::FEED_FORWARD_LENGTH)?,
            "num_hidden_layers": number(arch::BLOCK_COUNT)?,
            "num_attention_heads": number(arch::HEAD_COUNT)?,
            "num_key_value_heads": number(arch::HEAD_COUNT_KV)?,
            "head_dim": head_dim,
            "max_position_embeddings": number(arch::CONTEXT_LENGTH)?,
            "rope_theta": float(arch::ROPE_FREQ_BASE)?,
            "rms_norm_eps": float(arch::RMS_NORM_EPS)?,
            "tie_word_embeddings": !content.tensor_infos.contains_key(head),
            "bos_token_id": token_id(TOKENIZER_BOS_ID),
            "eos_token_id": token_id(TOKENIZER_EOS_ID),
            "pad_token_id": token_id(TOKENIZER_PAD_ID),
        });
        // rope.scaling.* back into transformers' rope_scaling (as the writer maps it).
        let text = |key: &str| content.metadata.get(&arch_key(arch, key)).and_then(|v| v.to_string().ok());
        if let Some(kind) = text(arch::ROPE_SCALING_TYPE).filter(|k| k.as_str() != "none") {
            let mut scaling = json!({ "rope_type": kind, "factor": float(arch::ROPE_SCALING_FACTOR)? });
            if content.metadata.contains_key(&arch_key(arch, arch::ROPE_SCALING_ORIGINAL_CONTEXT)) {
                scaling["original_max_position_embeddings"] =
                    json!(number(arch::ROPE_SCALING_ORIGINAL_CONTEXT)?);
            }
            config["rope_scaling"] = scaling;
        }
        if profile.moe.is_some() {
            // llama.cpp's graph: experts in every layer, top-k weights always renormalised.
            config["num_experts"] = json!(number(arch::EXPERT_COUNT)?);
            config["num_experts_per_tok"] = json!(number(arch::EXPERT_USED_COUNT)?);
            config["moe_intermediate_size"] = json!(number(arch::EXPERT_FEED_FORWARD_LENGTH)?);
            config["norm_topk_prob"] = json!(true);
            config["decoder_sparse_step"] = json!(1);
        }
        let (config, profile) = HfConfig::parse(path, &config.to_string(), Some(profile))?;
        // The vocabulary's arrays (tokens, merges, types: ~15 MiB for Qwen's 151,936 tokens) are
        // read once for the counts above; running the model needs none of them (generation
        // tokenizes with tokenizer.json), so they are not kept resident beside the weights.
        let mut content = content;
        content
            .metadata
            .retain(|key, value| !(key.starts_with("tokenizer.ggml.") && matches!(value, Value::Array(_))));
        Ok(Self { path: path.to_path_buf(), content, profile, config })
    }

    /// Bytes of tensor data the file holds.
    pub fn tensor_bytes(&self) -> u64 {
        self.content.tensor_infos.values().map(|t| block_bytes(t.ggml_dtype, t.shape.elem_count())).sum()
    }

    /// Bytes the loaded model holds: the file's tensors (mapped, not copied), plus an f16 copy
    /// of a quantized embedding table in a format our kernels do not read, made for the lookup.
    pub fn resident_bytes(&self) -> u64 {
        let expanded = self
            .content
            .tensor_infos
            .get(&self.config.decoder.embedding.gguf)
            .filter(|t| is_blocks(t.ggml_dtype) && Format::of(t.ggml_dtype).is_none())
            .map_or(0, |t| 2 * t.shape.elem_count() as u64);
        self.tensor_bytes() + expanded
    }

    /// Tensors per ggml type.
    pub fn type_counts(&self) -> std::collections::BTreeMap<String, usize> {
        crate::gguf_constants::count_types(self.content.tensor_infos.values().map(|t| t.ggml_dtype))
    }

    /// The model on `device`: f32/f16/bf16 tensors stay in their type; on the CPU, block
    /// matrices in q8_0, q4_0, q5_0, q4_k and q6_k are multiplied in the file's memory map by
    /// our kernels (the embedding's rows dequantized on lookup, a tied head multiplying the same
    /// bytes); other formats and devices multiply as candle `QMatMul`s, with a quantized
    /// embedding table expanded to f16 for the lookup.
    pub fn load(&self, device: &Device) -> Result<ReferenceModel, Error> {
        let source = self.weight_source(device, true)?;
        let model = ReferenceModel::assemble_from(&self.config, &self.path, device, &mut |hf| source(hf))?;
        Ok(model.with_half_kv(self.half_kv()))
    }

    /// The same model read one layer at a time on every forward pass (CPU): each layer's blocks
    /// are read, multiplied and released, so validation holds one layer, the embedding or the
    /// head instead of the whole file.
    pub fn streamed(&self) -> Result<StreamedModel<'_>, Error> {
        let source = self.weight_source(&Device::Cpu, false)?;
        Ok(StreamedModel::from_parts(&self.config, &self.path, Box::new(source)).with_half_kv(self.half_kv()))
    }

    /// Whether the model caches keys and values in f16, as llama.cpp does (its default cache
    /// type) for a file whose attention projections are multiplied in blocks; f32 otherwise.
    fn half_kv(&self) -> bool {
        let q = self
            .config
            .decoder
            .layers
            .first()
            .and_then(|l| self.content.tensor_infos.get(&l.attention.q.weight.gguf));
        q.is_some_and(|t| {
            let cols = t.shape.dims().last().copied().unwrap_or(0);
            is_blocks(t.ggml_dtype)
                && (Format::of(t.ggml_dtype).is_some() || candle_multiplies(t.ggml_dtype, cols))
        })
    }

    /// Where tensor `name` (or expert `e`'s slice of a stacked [experts, rows, cols] one: each
    /// expert's blocks are contiguous) lies in the file: absolute offset, bytes, shape.
    fn locate(&self, name: &str, expert: Option<usize>) -> Result<(u64, usize, Vec<usize>), RuntimeError> {
        let info = self.content.tensor_infos.get(name).ok_or_else(|| RuntimeError::MissingTensor {
            path: self.path.clone(),
            tensor: name.to_string(),
        })?;
        let start = self.content.tensor_data_offset + info.offset;
        let Some(e) = expert else {
            let bytes = block_bytes(info.ggml_dtype, info.shape.elem_count()) as usize;
            return Ok((start, bytes, info.shape.dims().to_vec()));
        };
        let Some((&experts, inner)) = info.shape.dims().split_first().filter(|(_, inner)| inner.len() == 2)
        else {
            return Err(RuntimeError::Unsupported {
                message: format!(
                    "{}: `{name}` has shape {:?}, not the [experts, rows, cols] of a stack",
                    self.path.display(),
                    info.shape.dims()
                ),
            });
        };
        if e >= experts {
            return Err(RuntimeError::Unsupported {
                message: format!("`{name}` stacks {experts} experts; expert {e} is not in it"),
            });
        }
        let bytes = block_bytes(info.ggml_dtype, inner.iter().product()) as usize;
        Ok((start + (e * bytes) as u64, bytes, inner.to_vec()))
    }

    /// A weight by its Hugging Face name, read from the file each time it is asked for.
    /// `mapped`: blocks our kernels read stay in a memory map of the file (a resident model);
    /// otherwise they are read into memory (a streamed model, which releases them).
    fn weight_source(
        &self,
        device: &Device,
        mapped: bool,
    ) -> Result<impl Fn(&str) -> Result<Option<Weight>, RuntimeError> + '_, Error> {
        let reader = std::cell::RefCell::new(open(&self.path)?);
        let map = if mapped && device.is_cpu() {
            let file = File::open(&self.path)
                .map_err(|source| ModelError::Io { path: self.path.clone(), source })?;
            // Safety: the file is only read; a file changed under a running model is the
            // caller's to avoid, as for every mmapped weight file (safetensors alike).
            let map = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|source| ModelError::Io { path: self.path.clone(), source })?;
            Some(Arc::new(map))
        } else {
            None
        };
        let decoder = &self.config.decoder;
        let (hf_embed, hf_head) = (decoder.embedding.name.as_str(), decoder.head.name.as_str());
        let embed = decoder.embedding.gguf.as_str();
        let embed_type = self.content.tensor_infos.get(embed).map(|t| t.ggml_dtype);
        let cpu = device.is_cpu();
        let kernels_read = move |dtype: GgmlDType| cpu && Format::of(dtype).is_some();
        // A tied head multiplies the embedding's blocks: in our kernels it is the same matrix
        // (the assembly shares it); for candle it is a second, quantized reading of the table.
        let candle_tied_head =
            self.config.tie_word_embeddings && embed_type.is_some_and(|t| is_blocks(t) && !kernels_read(t));
        let device = device.clone();
        let read_bytes = move |start: u64, len: usize, name: &str| -> Result<Vec<u8>, RuntimeError> {
            let mut data = vec![0u8; len];
            let mut file = reader.borrow_mut();
            file.seek(SeekFrom::Start(start)).and_then(|_| file.read_exact(&mut data)).map_err(|source| {
                RuntimeError::Unsupported {
                    message: format!("{}: reading `{name}`: {source}", self.path.display()),
                }
            })?;
            Ok(data)
        };
        let read = move |name: &str,
                         expert: Option<usize>|
              -> Result<(GgmlDType, Vec<usize>, Storage), RuntimeError> {
            let (start, len, dims) = self.locate(name, expert)?;
            let dtype = self.content.tensor_infos[name].ggml_dtype;
            let storage = match &map {
                Some(map) if kernels_read(dtype) => {
                    let start =
                        usize::try_from(start).ok().filter(|s| s + len <= map.len()).ok_or_else(|| {
                            RuntimeError::Unsupported {
                                message: format!(
                                    "{}: `{name}` lies beyond the end of the file",
                                    self.path.display()
                                ),
                            }
                        })?;
                    Storage::Mapped { map: map.clone(), start, len }
                }
                _ => Storage::Owned(read_bytes(start, len, name)?),
            };
            Ok((dtype, dims, storage))
        };
        let candle = move |dtype: GgmlDType,
                           dims: &[usize],
                           storage: Storage|
              -> Result<QTensor, RuntimeError> {
            let Storage::Owned(data) = storage else {
                return Err(RuntimeError::Unsupported { message: "a mapped tensor handed to candle".into() });
            };
            let storage = QStorage::from_data(std::borrow::Cow::Owned(data), &device, dtype)?;
            Ok(QTensor::new(storage, dims)?)
        };
        Ok(move |hf: &str| -> Result<Option<Weight>, RuntimeError> {
            if hf == hf_head && candle_tied_head {
                let (dtype, dims, storage) = read(embed, None)?;
                return Ok(Some(Weight::Quantized(QMatMul::from_qtensor(candle(dtype, &dims, storage)?)?)));
            }
            let Some(described) =
                decoder.tensor(hf).filter(|t| self.content.tensor_infos.contains_key(&t.gguf))
            else {
                return Ok(None);
            };
            let expert = match described.role {
                Role::Expert { expert, .. } => Some(expert),
                _ => None,
            };
            let (dtype, dims, storage) = read(&described.gguf, expert)?;
            if let (Some(format), [rows, cols]) =
                (Format::of(dtype).filter(|_| kernels_read(dtype)), dims.as_slice())
            {
                let matrix = BlockMatrix::new(format, *rows, *cols, storage).map_err(|e| {
                    RuntimeError::Unsupported {
                        message: format!("{}: `{}`: {e}", self.path.display(), described.gguf),
                    }
                })?;
                return Ok(Some(Weight::Blocks(Arc::new(matrix))));
            }
            let q = candle(dtype, &dims, storage)?;
            let device = q.device();
            Ok(Some(match q.dtype() {
                GgmlDType::F32 => Weight::Dense(q.dequantize(&device)?),
                GgmlDType::F16 => Weight::Dense(q.dequantize_f16(&device)?),
                GgmlDType::BF16 => Weight::Dense(q.dequantize(&device)?.to_dtype(DType::BF16)?),
                _ if hf == hf_embed && !mapped => Weight::Quantized(QMatMul::from_qtensor(q)?),
                _ if hf == hf_embed || q.rank() < 2 => Weight::Dense(q.dequantize_f16(&device)?),
                dtype if !candle_multiplies(dtype, q.shape().dims().last().copied().unwrap_or(0)) => {
                    Weight::Dense(q.dequantize_f16(&device)?)
                }
                _ => Weight::Quantized(QMatMul::from_qtensor(q)?),
            }))
        })
    }
}

fn is_blocks(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}
