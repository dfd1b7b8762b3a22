//! An ONNX export folder: `model.onnx` (+ `model.onnx_data` for large models or on request),
//! config.json, generation_config.json, tokenizer files, `genai_config.json`, manifest.json.
//! Weights stream from the merge into the data file; the graph comes from the profile. Before
//! the folder is installed, the model is loaded back and run in tract (and ONNX Runtime when
//! present): a model an engine rejects is never marked complete.

use std::path::{Path, PathBuf};

use prost::Message;

use super::builder::{Elem, GraphBuilder};
use super::data::{InitializerSink, PlannedInitializer};
use super::decoder::{DecoderSpec, ROPE_COS, ROPE_SIN, build_decoder};
use super::genai::genai_config;
use super::rope::rope_tables;
use crate::error::{Error, RuntimeError};
use crate::export::ExportInputs;
use crate::export::manifest::{FileEntry, Manifest};
use crate::export::staging::{Staging, exported_config, file_entry, provenance};
use crate::export::stream_file::StreamingFile;
use crate::merge::{MergeInputs, execute, output_entries, plan_merge};
use crate::model::{ModelFolder, TensorDtype};
use crate::monitor;
use crate::runtime::batch::positions_from_mask;
use crate::runtime::ort_engine::{self, OrtEngine};
use crate::runtime::tract_engine::TractEngine;
use crate::runtime::{Batch, DecoderEngine};

pub const MODEL_FILE: &str = "model.onnx";
pub const DATA_FILE: &str = "model.onnx_data";
/// Protobuf messages cannot exceed 2 GiB; keep a margin for the graph itself.
const EMBEDDED_LIMIT: u64 = (2 << 30) - (64 << 20);
pub const DEFAULT_OPSET: i64 = 17;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnnxPrecision {
    F32,
    /// f16 weights (matrices), f32 norms and biases, f32 arithmetic.
    F16,
}

#[derive(Debug, Clone)]
pub struct OnnxOptions {
    pub precision: OnnxPrecision,
    pub opset: i64,
    /// `None`: external data only when the weights would not fit a protobuf.
    pub external_data: Option<bool>,
    /// Threads the export-time check may use in ONNX Runtime.
    pub threads: usize,
    /// Load the model back and run it in tract (and ORT) before installing it.
    pub check: bool,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        Self {
            precision: OnnxPrecision::F32,
            opset: DEFAULT_OPSET,
            external_data: None,
            threads: 2,
            check: true,
        }
    }
}

#[derive(Debug)]
pub struct OnnxReport {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub external_data: bool,
    pub parameters: u64,
    /// Engines that loaded and ran the model before it was installed.
    pub checked_in: Vec<&'static str>,
}

/// Runs a two-row padded prefill and one cached decode step; the logits must be finite.
fn check_engine(engine: &mut dyn DecoderEngine, vocab: usize, pad: i64) -> Result<(), RuntimeError> {
    let tokens: Vec<i64> = (0..3).map(|i| (i * 7 + 1) as i64 % vocab as i64).collect();
    let prompt = Batch::left_padded(&[tokens.clone(), tokens[..2].to_vec()], pad);
    let logits = engine.step(&prompt)?;
    let mut mask = prompt.attention_mask.clone();
    mask.iter_mut().for_each(|row| row.push(1));
    let next = Batch {
        input_ids: vec![vec![tokens[0]]; 2],
        position_ids: positions_from_mask(&mask, 1),
        attention_mask: mask,
    };
    let step = engine.step(&next)?;
    for (what, l, seq) in [("prefill", &logits, 3), ("decode", &step, 1)] {
        if l.vocab != vocab || l.seq != seq || l.batch != 2 {
            return Err(RuntimeError::Engine {
                engine: engine.name(),
                message: format!(
                    "{what} logits have shape [{}, {}, {}], expected [2, {seq}, {vocab}]",
                    l.batch, l.seq, l.vocab
                ),
            });
        }
        if let Some(bad) = l.values.iter().position(|v| !v.is_finite()) {
            return Err(RuntimeError::Engine {
                engine: engine.name(),
                message: format!("{what} logits are not finite (value {} at index {bad})", l.values[bad]),
            });
        }
    }
    engine.reset();
    Ok(())
}

/// Loads the written model in every available engine and runs a tiny batch.
pub fn check_exported(model: &Path, base: &ModelFolder, threads: usize) -> Result<Vec<&'static str>, Error> {
    let c = &base.config;
    let pad = c.pad_token_id.map_or(0, i64::from);
    let (layers, kv, d) = (c.num_hidden_layers, c.num_key_value_heads, c.head_dim);
    let mut checked = Vec::new();
    let mut tract = TractEngine::load(model, layers, kv, d)?;
    check_engine(&mut tract, c.vocab_size, pad)?;
    checked.push("tract");
    if ort_engine::available() {
        let mut ort = OrtEngine::load(model, layers, kv, d, threads)?;
        check_engine(&mut ort, c.vocab_size, pad)?;
        checked.push("ort");
    } else {
        tracing::warn!("ONNX Runtime is not installed: the export was checked in tract only");
    }
    Ok(checked)
}

/// Writes an ONNX export folder at `out` from `inputs` (merging on the fly if they say so).
pub fn write_onnx_folder(
    inputs: &ExportInputs<'_>,
    options: &OnnxOptions,
    out: &Path,
) -> Result<OnnxReport, Error> {
    let (base, detection, weights, adapter) = (inputs.base, inputs.detection, inputs.weights, inputs.adapter);
    let plan = plan_merge(weights, adapter)?;
    let config = &weights.config;
    let f16 = options.precision == OnnxPrecision::F16;
    let dtype_for = |t: &crate::merge::plan::PlannedTensor| {
        if f16 && t.shape.len() == 2 { TensorDtype::F16 } else { TensorDtype::F32 }
    };
    let elem = |d: TensorDtype| if d == TensorDtype::F16 { Elem::F16 } else { Elem::F32 };
    let (cos, sin) = rope_tables(config);
    let table_dims = vec![config.max_position_embeddings as i64, config.head_dim as i64];
    let mut planned: Vec<PlannedInitializer> = output_entries(&plan, &dtype_for)
        .into_iter()
        .map(|e| PlannedInitializer {
            bytes: e.byte_len(),
            name: e.name,
            elem: elem(e.dtype),
            dims: e.shape.iter().map(|&d| d as i64).collect(),
        })
        .collect();
    for name in [ROPE_COS, ROPE_SIN] {
        planned.push(PlannedInitializer {
            name: name.into(),
            elem: Elem::F32,
            dims: table_dims.clone(),
            bytes: (cos.len() * 4) as u64,
        });
    }
    let total: u64 = planned.iter().map(|p| p.bytes).sum();
    let external = options.external_data.unwrap_or(total > EMBEDDED_LIMIT);
    if !external && total > EMBEDDED_LIMIT {
        return Err(RuntimeError::Unsupported {
            message: format!(
                "the weights ({total} bytes) do not fit in a protobuf (2 GiB): set `external-data = true` for this export"
            ),
        }
        .into());
    }
    let elem_of: std::collections::HashMap<String, Elem> =
        planned.iter().map(|p| (p.name.clone(), p.elem)).collect();

    let staging = Staging::new(out)?;
    let dir = staging.dir().to_path_buf();
    let data_path = dir.join(DATA_FILE);
    let mut sink = InitializerSink::new(planned, external.then_some(data_path.as_path()))
        .map_err(|e| Error::write(&data_path, e))?;
    let progress = monitor::bytes_bar(total, format!("writing {}", staging.name()));
    let started = std::time::Instant::now();
    let merge_inputs = MergeInputs { base: weights, adapter };
    execute(
        &plan,
        &merge_inputs,
        &dtype_for,
        &mut |b| sink.write(b).map_err(|e| Error::write(&data_path, e)),
        &progress,
    )?;
    for table in [&cos, &sin] {
        let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_le_bytes()).collect();
        sink.write(&bytes).map_err(|e| Error::write(&data_path, e))?;
    }
    drop((cos, sin));
    let (placed, data_file) = sink.finish().map_err(|e| Error::write(&data_path, e))?;
    progress.finish_and_clear();

    let mut graph = GraphBuilder::new(options.opset, DATA_FILE);
    for (p, data) in placed {
        graph.initializer(&p.name, p.elem, &p.dims, data);
    }
    let names = &weights.profile.tensors;
    let head = if plan.tensors.iter().any(|t| t.name == names.lm_head) { names.lm_head } else { names.embed };
    let weight_elem = |name: &str| elem_of.get(name).copied().unwrap_or(Elem::F32);
    let spec =
        DecoderSpec { config, profile: weights.profile, head: head.to_string(), weight_elem: &weight_elem };
    build_decoder(&mut graph, &spec).map_err(|e| RuntimeError::Unsupported { message: e.to_string() })?;
    let metadata = vec![
        ("model_type".to_string(), config.model_type.clone()),
        ("export_dtype".to_string(), if f16 { "f16" } else { "f32" }.to_string()),
    ];
    let model = graph.finish("main_graph", &metadata).encode_to_vec();
    let model_path = dir.join(MODEL_FILE);
    let mut model_file = StreamingFile::create(&model_path).map_err(|e| Error::write(&model_path, e))?;
    model_file.write_all(&model).map_err(|e| Error::write(&model_path, e))?;
    drop(model);
    let mut known: Vec<FileEntry> =
        vec![file_entry(&model_file.finish().map_err(|e| Error::write(&model_path, e))?)];
    known.extend(data_file.as_ref().map(file_entry));
    tracing::info!("wrote the ONNX model in {:.2} s", started.elapsed().as_secs_f64());

    let export_dtype = if f16 { TensorDtype::F16 } else { TensorDtype::F32 };
    staging.write_companions(base, detection, &exported_config(weights, export_dtype, plan.untied))?;
    crate::fsutil::write_json(&dir.join("genai_config.json"), &genai_config(base, MODEL_FILE))?;

    let checked_in = if options.check {
        let engines = check_exported(&model_path, weights, options.threads)?;
        tracing::info!("checked in {} at {:.2} s", engines.join(" and "), started.elapsed().as_secs_f64());
        engines
    } else {
        tracing::warn!("{}: not loaded back in any engine (--skip-check)", staging.name());
        Vec::new()
    };
    let options_json = serde_json::json!({
        "format": "onnx",
        "target": "portable",
        "dtype": export_dtype.to_string(),
        "opset": options.opset,
        "external_data": external,
        "untied_embeddings": plan.untied,
    });
    let manifest = staging.finish("onnx", provenance(base, detection, options_json), &known, out)?;
    Ok(OnnxReport {
        dir: out.to_path_buf(),
        manifest,
        external_data: external,
        parameters: plan.parameter_count(),
        checked_in,
    })
}
