//! A GGUF export for llama.cpp, Ollama and LM Studio: one self-contained `model.gguf` (weights
//! in llama.cpp's names and types, hyperparameters, tokenizer and chat template), streamed from
//! the merge tensor by tensor so memory stays flat in the model's size, beside the tokenizer
//! files and generation_config.json (for this tool's own `generate` and validation) and the
//! manifest. Built under a temporary name and renamed into place when verified.

pub mod file;
pub mod metadata;
pub mod tokenizer;
pub mod types;

use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use half::{bf16, f16};

use crate::config::ExportDtype;
use crate::error::{Error, ModelError, RuntimeError};
use crate::export::ExportInputs;
use crate::export::manifest::Manifest;
use crate::export::onnx::folder::Fallback;
use crate::export::staging::{Staging, file_entry, provenance};
use crate::export::stream_file::StreamingFile;
use crate::gguf_constants::{count_types, type_name};
use crate::merge::{MergeInputs, execute_rows, plan_merge};
use crate::model::HfConfig;
use crate::model::TensorDtype;
use crate::model::decoder::{MoeDesc, Projection, Role};
use crate::model::dtype::row_width;
use crate::monitor;
use crate::profile::Profile;
use crate::quant::ggml::quantize_ggml_rows;
use file::{TensorEntry, encode_header, padding};
use types::{ModelShape, TensorKind, tensor_type};

/// The file inside a GGUF export folder.
pub const GGUF_FILE: &str = "model.gguf";

#[derive(Debug, Clone)]
pub struct GgufOptions {
    /// The file's type; default: the base's storage dtype (f32, f16 or bf16).
    pub dtype: Option<ExportDtype>,
    pub allow_non_finite: bool,
}

#[derive(Debug)]
pub struct GgufReport {
    pub dir: PathBuf,
    pub dtype: ExportDtype,
    pub manifest: Manifest,
    /// Tensors per ggml type, e.g. `q4_k: 112`.
    pub types: std::collections::BTreeMap<String, usize>,
    /// Tensors stored in another type than the file's rules chose (`tensor-type` fallbacks).
    pub fallbacks: Vec<Fallback>,
}

fn storage_dtype(dtype: TensorDtype) -> ExportDtype {
    match dtype {
        TensorDtype::F16 => ExportDtype::F16,
        TensorDtype::BF16 => ExportDtype::Bf16,
        _ => ExportDtype::F32,
    }
}

/// Appends whole rows in `dtype`'s encoding.
fn encode_rows(dtype: GgmlDType, rows: &[f32], width: usize, out: &mut Vec<u8>) -> Result<(), RuntimeError> {
    match dtype {
        GgmlDType::F32 => rows.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlDType::F16 => rows.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlDType::BF16 => rows.iter().for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        blocks => quantize_ggml_rows(blocks, rows, width, out)?,
    }
    Ok(())
}

/// What llama.cpp's graph for the architecture cannot compute, refused by name (exit 2, before
/// anything is written), as metadata.rs refuses the YaRN settings it cannot carry.
fn refuse_what_llama_cpp_cannot_run(config: &HfConfig, profile: &Profile) -> Result<(), Error> {
    let decoder = &config.decoder;
    let moe: Vec<&MoeDesc> = decoder.moe_layers().collect();
    if moe.is_empty() {
        return Ok(());
    }
    let refuse = |key: &str, value: String, why: &str| -> Result<(), Error> {
        Err(ModelError::UnsupportedConfig {
            path: config.path.clone(),
            key: key.into(),
            value,
            supported: format!(
                "for GGUF: {why} (llama.cpp's `{}` graph); export safetensors or ONNX for this model",
                profile.gguf.architecture
            ),
        }
        .into())
    };
    if moe.len() != decoder.layers.len() {
        let dense = decoder.layers.len() - moe.len();
        return refuse(
            "mlp_only_layers",
            format!("{dense} dense layers (with decoder_sparse_step)"),
            "experts in every layer",
        );
    }
    if moe.iter().any(|m| !m.norm_topk_prob) {
        return refuse(
            "norm_topk_prob",
            "false".into(),
            "true (llama.cpp always renormalises the top-k weights)",
        );
    }
    Ok(())
}

/// Writes the GGUF export of `inputs` at `out`.
pub fn write_gguf_folder(
    inputs: &ExportInputs<'_>,
    options: &GgufOptions,
    out: &Path,
) -> Result<GgufReport, Error> {
    let (base, weights) = (inputs.base, inputs.weights);
    let profile = weights.profile;
    let config = &weights.config;
    let mut plan = plan_merge(weights, inputs.adapter)?;
    let dtype = options.dtype.unwrap_or_else(|| storage_dtype(base.storage_dtype()));
    let decoder = &config.decoder;
    refuse_what_llama_cpp_cannot_run(config, profile)?;
    let has_head = plan.tensors.iter().any(|t| t.name == decoder.head.name);
    // One entry per GGUF tensor: a tensor of the plan, or every expert's projection stacked
    // into one [experts, rows, cols] tensor; the plan is reordered so that each entry's members
    // follow each other (experts in order) and the data streams in the header's order.
    let mut members: Vec<(String, Vec<usize>)> = Vec::new();
    let mut stack_of: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for (i, t) in plan.tensors.iter().enumerate() {
        let described = decoder.tensor(&t.name).ok_or_else(|| RuntimeError::Unsupported {
            message: format!("tensor `{}` has no GGUF name in the {} profile", t.name, profile.name),
        })?;
        let stacked = matches!(described.role, Role::Expert { .. });
        match stack_of.get(&described.gguf) {
            Some(&group) if stacked => members[group].1.push(i),
            _ => {
                if stacked {
                    stack_of.insert(described.gguf.clone(), members.len());
                }
                members.push((described.gguf.clone(), vec![i]));
            }
        }
    }
    let expert_of = |i: usize| match decoder.tensor(&plan.tensors[i].name).map(|d| d.role) {
        Some(Role::Expert { expert, .. }) => expert,
        _ => 0,
    };
    members.iter_mut().for_each(|(_, group)| group.sort_by_key(|&i| expert_of(i)));
    let experts = decoder.moe_layers().next().map_or(0, |m| m.experts.len());
    let shape = ModelShape { layers: config.num_hidden_layers, experts };
    let mut entries = Vec::with_capacity(members.len());
    let mut fallbacks = Vec::new();
    for (gguf_name, group) in &members {
        let first = &plan.tensors[group[0]];
        let role = decoder.tensor(&first.name).map(|d| d.role);
        if let Some(other) = group.iter().map(|&i| &plan.tensors[i]).find(|t| t.shape != first.shape) {
            return Err(RuntimeError::Unsupported {
                message: format!(
                    "`{}` and `{}` differ in shape; {gguf_name} stacks them",
                    first.name, other.name
                ),
            }
            .into());
        }
        let kind = match role {
            _ if first.shape.len() < 2 => TensorKind::Vector,
            // llama.cpp keeps the router (`ffn_gate_inp`) in f32 in every file type.
            Some(Role::Router { .. }) => TensorKind::Vector,
            Some(Role::Embedding) => TensorKind::Embedding { tied: !has_head },
            Some(Role::Head) => TensorKind::Head,
            Some(Role::Projection { layer, kind: Projection::V }) => TensorKind::AttentionV { layer },
            Some(Role::Projection { kind: Projection::K, .. }) => TensorKind::AttentionK,
            Some(Role::Projection { kind: Projection::O, .. }) => TensorKind::AttentionOutput,
            Some(
                Role::Projection { layer, kind: Projection::Down }
                | Role::Expert { layer, kind: Projection::Down, .. },
            ) => TensorKind::FfnDown { layer },
            _ => TensorKind::Matrix,
        };
        let (stored, fallback) = tensor_type(dtype, kind, row_width(&first.shape), shape);
        if let Some((wanted, reason)) = fallback {
            fallbacks.push(Fallback {
                kind: "tensor-type".into(),
                reason: format!(
                    "{gguf_name} stored as {} instead of {}: {reason}",
                    type_name(stored),
                    type_name(wanted)
                ),
            });
        }
        let shape = match role {
            Some(Role::Expert { .. }) => [vec![group.len()], first.shape.clone()].concat(),
            _ => first.shape.clone(),
        };
        entries.push(TensorEntry { name: gguf_name.clone(), shape, dtype: stored });
    }
    let order: Vec<usize> = members.iter().flat_map(|(_, group)| group.iter().copied()).collect();
    let mut taken: Vec<Option<crate::merge::plan::PlannedTensor>> =
        plan.tensors.drain(..).map(Some).collect();
    plan.tensors = order.iter().filter_map(|&i| taken[i].take()).collect();
    // The entry each planned tensor (in the new order) is part of.
    let entry_of: Vec<usize> =
        members.iter().enumerate().flat_map(|(e, (_, group))| std::iter::repeat_n(e, group.len())).collect();

    if let Some(empty) = plan.tensors.iter().find(|t| t.shape.contains(&0)) {
        return Err(RuntimeError::Unsupported {
            message: format!(
                "tensor `{}` has no elements (shape {:?}); GGUF cannot hold it",
                empty.name, empty.shape
            ),
        }
        .into());
    }
    // The embedding's rows, not config.json, say how many tokens llama.cpp can look up.
    let rows = plan
        .tensors
        .iter()
        .find(|t| t.name == decoder.embedding.name)
        .map_or(config.vocab_size, |t| t.shape[0]);

    let staging = Staging::new(out, inputs.temp_root)?;
    let dir = staging.dir().to_path_buf();
    let tokenizer_from = staging.write_companions(base, inputs.detection, None)?;
    let model_name =
        base.dir.file_name().map_or_else(|| "model".to_string(), |n| n.to_string_lossy().into_owned());
    let mut metadata = metadata::metadata(profile, config, rows, &model_name, types::file_type(dtype))?;
    metadata.extend(tokenizer::metadata(&tokenizer_from, config, rows)?);

    let path = dir.join(GGUF_FILE);
    let mut writer = StreamingFile::create(&path).map_err(|e| Error::write(&path, e))?;
    let header = encode_header(&metadata, &entries);
    writer.write_all(&header).map_err(|e| Error::write(&path, e))?;
    let aligned = |e: &TensorEntry| e.bytes() + padding(e.bytes()) as u64;
    let expected_size = header.len() as u64 + entries.iter().map(aligned).sum::<u64>();
    let progress = monitor::bytes_bar(
        expected_size - header.len() as u64,
        format!("writing {} ({dtype})", staging.name()),
    );
    let started = std::time::Instant::now();
    let merge_inputs =
        MergeInputs { base: weights, adapter: inputs.adapter, allow_non_finite: options.allow_non_finite };
    // The merge hands tensors over in plan order, which is now the entries' order.
    let index_of: std::collections::HashMap<&str, usize> =
        plan.tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), entry_of[i])).collect();
    let (mut received, mut current) = (0, usize::MAX);
    let mut bytes = Vec::new();
    execute_rows(&plan, &merge_inputs, &mut |t, _, values| {
        let index = index_of[t.name.as_str()];
        if index != current {
            (received, current) = (0, index);
        }
        let entry = &entries[index];
        bytes.clear();
        encode_rows(entry.dtype, values, row_width(&t.shape), &mut bytes).map_err(|e| {
            RuntimeError::Unsupported {
                message: format!("cannot write `{}` as {}: {e}", entry.name, type_name(entry.dtype)),
            }
        })?;
        received += values.len();
        if received == entry.shape.iter().product::<usize>() {
            // Tensors start aligned: pad after the last block of rows.
            let end = writer.position() + bytes.len() as u64;
            bytes.resize(bytes.len() + padding(end), 0);
        }
        writer.write_all(&bytes).map_err(|e| Error::write(&path, e))?;
        progress.inc(bytes.len() as u64);
        Ok(())
    })?;
    if writer.position() != expected_size {
        return Err(RuntimeError::Unsupported {
            message: format!(
                "{}: wrote {} bytes where the header describes {expected_size}",
                path.display(),
                writer.position()
            ),
        }
        .into());
    }
    let written = writer.finish().map_err(|e| Error::write(&path, e))?;
    progress.finish_and_clear();
    tracing::info!(
        "wrote {} ({} bytes) in {:.2} s",
        path.display(),
        written.size,
        started.elapsed().as_secs_f64()
    );

    verify(&path, &entries, expected_size)?;
    let type_counts = count_types(entries.iter().map(|e| e.dtype));
    let options_json = serde_json::json!({
        "dtype": dtype.to_string(),
        "architecture": profile.gguf.architecture,
        "tied_embeddings": !has_head,
        "tensor_types": type_counts,
        "fallbacks": fallbacks,
    });
    let manifest = staging.finish(
        "gguf",
        provenance(base, inputs.detection, options_json),
        &[file_entry(&written)],
        out,
    )?;
    Ok(GgufReport { dir: out.to_path_buf(), dtype, manifest, types: type_counts, fallbacks })
}

/// Reads the written file back as candle does and checks every tensor's type, shape and extent.
fn verify(path: &Path, entries: &[TensorEntry], expected_size: u64) -> Result<(), Error> {
    let content = crate::runtime::gguf::read_content(path)?;
    let size = std::fs::metadata(path).map_err(|e| Error::write(path, e))?.len();
    let broken = |message: String| -> Error {
        RuntimeError::Unsupported { message: format!("{}: {message}", path.display()) }.into()
    };
    if size != expected_size {
        return Err(broken(format!("{size} bytes on disk, {expected_size} expected")));
    }
    if content.tensor_infos.len() != entries.len() {
        return Err(broken(format!(
            "{} tensors read back, {} written",
            content.tensor_infos.len(),
            entries.len()
        )));
    }
    for e in entries {
        let info = content
            .tensor_infos
            .get(&e.name)
            .ok_or_else(|| broken(format!("tensor `{}` missing", e.name)))?;
        if info.shape.dims() != e.shape.as_slice() || info.ggml_dtype != e.dtype {
            return Err(broken(format!(
                "tensor `{}` reads back as {:?} {:?}",
                e.name, info.ggml_dtype, info.shape
            )));
        }
        if content.tensor_data_offset + info.offset + e.bytes() > size {
            return Err(broken(format!("tensor `{}` extends past the end of the file", e.name)));
        }
    }
    Ok(())
}
