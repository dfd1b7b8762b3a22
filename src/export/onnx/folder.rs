//! An ONNX export folder: `model.onnx` (+ `model.onnx_data` for large models or on request),
//! config.json, generation_config.json, tokenizer files, `genai_config.json`, manifest.json.
//! Weights stream from the merge into the data file; the graph comes from the profile. Before
//! the folder is installed, the model is loaded back and run in tract (and ONNX Runtime when
//! present): a model an engine rejects is never marked complete.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;

use super::builder::{Elem, GraphBuilder};
use super::data::{InitializerSink, PlannedInitializer};
use super::decoder::{DecoderSpec, ROPE_COS, ROPE_SIN};
use super::emitter::build_decoder;
use super::genai::genai_config;
use super::weights::{Storage, WeightForm, WeightWriter, plan_initializers, scheme_label};
use crate::config::schema::TableStorage;
use crate::config::{Engine, ExportDtype, Target};
use crate::error::{Error, RuntimeError};
use crate::export::ExportInputs;
use crate::export::manifest::{FileEntry, Manifest};
use crate::export::staging::{Staging, exported_config, file_entry, provenance};
use crate::export::stream_file::StreamingFile;
use crate::merge::plan::PlannedTensor;
use crate::merge::{MergeInputs, execute_rows, plan_merge};
use crate::model::DecoderDesc;
use crate::model::decoder::Role;
use crate::model::{ModelFolder, TensorDtype};
use crate::monitor;
use crate::quant::{QuantReport, Scheme};
use crate::runtime::batch::positions_from_mask;
use crate::runtime::ort_engine::{self, OrtEngine};
use crate::runtime::tract_engine::{self, TractEngine};
use crate::runtime::{Batch, DecoderEngine};

pub use crate::onnx_io::{DATA_FILE, MODEL_FILE};
/// Protobuf messages cannot exceed 2 GiB; keep a margin for the graph itself.
const EMBEDDED_LIMIT: u64 = (2 << 30) - (64 << 20);
/// The protobuf limit, lowered by `MODEL_EXPORT_TEST_EMBEDDED_LIMIT` in tests so the
/// external-data fallback can be shown on tiny models.
fn embedded_limit() -> u64 {
    std::env::var("MODEL_EXPORT_TEST_EMBEDDED_LIMIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(EMBEDDED_LIMIT)
}

/// Above this, weights go to external data by default: an embedded protobuf is built in memory
/// (twice: the initializers, then the encoded message), external data streams to disk.
const EMBEDDED_DEFAULT: u64 = 256 << 20;
pub const DEFAULT_OPSET: i64 = 17;
/// What reduced precision saved and cost, beside every non-f32 export.
pub const QUANT_REPORT_FILE: &str = "quantization.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnnxPrecision {
    F32,
    /// f16 weights (matrices), f32 norms and biases, f32 arithmetic.
    F16,
    /// int8 matrices: per-channel DequantizeLinear (portable) or 8-bit MatMulNBits (ort).
    Int8,
    /// int4 matrices in MatMulNBits blocks.
    Int4,
}

impl OnnxPrecision {
    pub fn as_str(self) -> &'static str {
        match self {
            OnnxPrecision::F32 => "f32",
            OnnxPrecision::F16 => "f16",
            OnnxPrecision::Int8 => "int8",
            OnnxPrecision::Int4 => "int4",
        }
    }

    pub fn dtype(self) -> ExportDtype {
        match self {
            OnnxPrecision::F32 => ExportDtype::F32,
            OnnxPrecision::F16 => ExportDtype::F16,
            OnnxPrecision::Int8 => ExportDtype::Int8,
            OnnxPrecision::Int4 => ExportDtype::Int4,
        }
    }
}

/// Settings of the int8/int4 quantizers.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantOptions {
    /// Block size of MatMulNBits blocks.
    pub block: usize,
    pub symmetric: bool,
    /// Where the embedding table and the output head are kept.
    pub table: TableStorage,
    /// MatMulNBits' accuracy_level.
    pub accuracy_level: i64,
}

impl Default for QuantOptions {
    fn default() -> Self {
        Self { block: 32, symmetric: false, table: TableStorage::F16, accuracy_level: 0 }
    }
}

#[derive(Debug, Clone)]
pub struct OnnxOptions {
    pub precision: OnnxPrecision,
    pub target: Target,
    pub quant: QuantOptions,
    pub opset: i64,
    /// `None`: external data above 256 MiB of weights (always above 2 GiB, the protobuf limit).
    pub external_data: Option<bool>,
    /// Threads the export-time check may use in ONNX Runtime.
    pub threads: usize,
    /// Load the model back and run it in tract (and ORT) before installing it.
    pub check: bool,
    /// Engines the check leaves out, with the reason (the model would not fit max-memory).
    pub check_skip: Vec<(Engine, String)>,
    /// Let NaN and Inf weights through (`allow-non-finite`).
    pub allow_non_finite: bool,
    /// Take the documented fallbacks (external data past 2 GiB, opset 17 when an engine cannot
    /// load a newer opset, `portable` when ORT rejects an `ort`-target graph) instead of failing
    /// (`run --no-fallback` turns this off).
    pub fallback: bool,
}

impl Default for OnnxOptions {
    fn default() -> Self {
        Self {
            precision: OnnxPrecision::F32,
            target: Target::Portable,
            quant: QuantOptions::default(),
            opset: DEFAULT_OPSET,
            external_data: None,
            threads: 2,
            check: true,
            check_skip: Vec::new(),
            allow_non_finite: false,
            fallback: true,
        }
    }
}

impl OnnxOptions {
    /// The quantization scheme of the matrices, if quantized.
    pub fn scheme(&self) -> Option<Scheme> {
        let block = self.quant.block;
        let symmetric = self.quant.symmetric;
        match (self.precision, self.target) {
            (OnnxPrecision::Int8, Target::Portable) => Some(Scheme::Int8PerChannel),
            (OnnxPrecision::Int8, Target::Ort) => Some(Scheme::Blocks { bits: 8, block, symmetric }),
            (OnnxPrecision::Int4, _) => Some(Scheme::Blocks { bits: 4, block, symmetric }),
            _ => None,
        }
    }

    /// How tensor `t` is stored: norms, biases and tables stay f32; the embedding table and
    /// the head as `quant.table` says.
    /// The router of a mixture-of-experts layer stays f32 in every precision, as llama.cpp
    /// keeps `ffn_gate_inp`: its probabilities choose the experts, and a rounded one can
    /// change the choice.
    fn storage(&self, t: &PlannedTensor, decoder: &DecoderDesc) -> Storage {
        let matrix = t.shape.len() == 2;
        let role = decoder.tensor(&t.name).map(|d| d.role);
        if matches!(role, Some(Role::Router { .. })) {
            return Storage::F32;
        }
        match (self.precision, self.scheme()) {
            (OnnxPrecision::F32, _) => Storage::F32,
            (_, None) => {
                if matrix {
                    Storage::F16
                } else {
                    Storage::F32
                }
            }
            (_, Some(scheme)) => match (matrix, role, self.quant.table) {
                (false, ..) => Storage::F32,
                (true, Some(Role::Embedding | Role::Head), TableStorage::Blocks { bits }) => {
                    Storage::Quantized(Scheme::Blocks {
                        bits,
                        block: self.quant.block,
                        symmetric: self.quant.symmetric,
                    })
                }
                (true, Some(Role::Embedding), _) | (true, Some(Role::Head), TableStorage::F16) => {
                    Storage::F16
                }
                _ => Storage::Quantized(scheme),
            },
        }
    }

    /// Whether tensor `t` is stored transposed, for a `MatMul`: float matrices other than the
    /// embedding table (which `Gather` reads by row; a head tied to it stays `Gemm(transB=1)`).
    /// In the `ort` target float experts stay [out, in]: ONNX Runtime's `MoE` op stacks them so.
    fn transposed(&self, t: &PlannedTensor, decoder: &DecoderDesc) -> bool {
        let role = decoder.tensor(&t.name).map(|d| d.role);
        let stacked_expert = self.target == Target::Ort && matches!(role, Some(Role::Expert { .. }));
        t.shape.len() == 2
            && role != Some(Role::Embedding)
            && !stacked_expert
            && !matches!(self.storage(t, decoder), Storage::Quantized(_))
    }
}

#[derive(Debug)]
pub struct OnnxReport {
    pub dir: PathBuf,
    /// What reduced precision saved and cost (absent for f32).
    pub quantization: Option<QuantReport>,
    pub manifest: Manifest,
    pub external_data: bool,
    pub parameters: u64,
    /// Engines that loaded and ran the model before it was installed.
    pub checked_in: Vec<&'static str>,
    /// Fallbacks taken, each with its reason.
    pub fallbacks: Vec<Fallback>,
}

/// A documented fallback the export took instead of failing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fallback {
    /// `external-data`, `opset` or `portable-target` (ONNX); `tensor-type` (GGUF).
    pub kind: String,
    pub reason: String,
}

/// How the manifest names where the embedding table is kept.
fn table_label(options: &OnnxOptions) -> String {
    match (options.scheme(), options.quant.table) {
        (None, _) => options.precision.as_str().to_string(),
        (Some(_), TableStorage::F16 | TableStorage::QuantizedHead) => "f16".into(),
        (Some(_), TableStorage::Blocks { bits }) => format!("int{bits}-block{}", options.quant.block),
    }
}

/// The first `cols` columns of each `width`-wide row.
fn table_columns(table: &[f32], width: usize, cols: usize) -> Vec<f32> {
    table.chunks(width).flat_map(|row| row[..cols].iter().copied()).collect()
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

fn checked_at(engine: &str, started: std::time::Instant) {
    let (elapsed, rss) = (started.elapsed().as_secs_f64(), crate::size::human_bytes(monitor::current_rss()));
    tracing::debug!("checked in {engine} in {elapsed:.2} s, resident {rss}");
}

/// Loads the written model in every available engine and runs a tiny batch.
pub fn check_exported(
    model: &Path,
    base: &ModelFolder,
    options: &OnnxOptions,
) -> Result<Vec<&'static str>, Error> {
    let (dtype, target, skip) = (options.precision.dtype(), options.target, &options.check_skip);
    let symmetric = options.quant.symmetric;
    let eight_bit_table = options.quant.table == TableStorage::Blocks { bits: 8 };
    let c = &base.config;
    let pad = c.pad_token_id.map_or(0, i64::from);
    let (layers, kv, d) = (c.num_hidden_layers, c.num_key_value_heads, c.head_dim);
    let mut checked = Vec::new();
    let skipped = |engine: Engine| skip.iter().find(|(e, _)| *e == engine).map(|(_, why)| why.as_str());
    let experts = c.decoder.has_experts();
    // The `ort` target is checked in the engine it is written for, when it is there: loading
    // it in tract too cost 14 s and 800 MiB of a 23 s, 1.6 GiB int4 export (0.6B shape), and
    // validation runs it in tract anyway when `validate.engines` lists tract.
    let ort_checks = ort_engine::available() && skipped(Engine::Ort).is_none();
    let for_ort_only = (target == Target::Ort && ort_checks)
        .then_some("the `ort` target is checked in ONNX Runtime, the engine it is written for");
    let tract_skip = tract_engine::unsupported(dtype, target, symmetric, experts, eight_bit_table)
        .or(skipped(Engine::Tract))
        .or(for_ort_only);
    match tract_skip {
        Some(why) => tracing::info!("not checked in tract: {why}"),
        None => {
            let started = std::time::Instant::now();
            let mut tract = TractEngine::load_for(target, model, layers, kv, d)?;
            check_engine(&mut tract, c.vocab_size, pad)?;
            checked_at("tract", started);
            checked.push("tract");
            // tract's copy of the weights goes back before ONNX Runtime maps them.
            drop(tract);
            monitor::return_freed_memory();
        }
    }
    if let Some(why) = skipped(Engine::Ort) {
        tracing::warn!("not checked in ort: {why}");
    } else if ort_engine::available() {
        if crate::hooks::fails("ort-check") {
            return Err(
                RuntimeError::Engine { engine: "ort", message: "injected fault (ort-check)".into() }.into()
            );
        }
        let started = std::time::Instant::now();
        let mut ort =
            OrtEngine::load_for_check(model, layers, kv, d, options.threads, options.scheme().is_some())?;
        check_engine(&mut ort, c.vocab_size, pad)?;
        checked_at("ort", started);
        checked.push("ort");
    } else {
        tracing::warn!("ONNX Runtime is not installed: the export was checked in tract only");
    }
    Ok(checked)
}

/// Writes an ONNX export folder at `out` from `inputs` (merging on the fly if they say so).
/// When the export-time check fails, the documented fallbacks that apply to the failure's cause
/// are tried in turn (unless `options.fallback` is off), each at most once; see
/// [`fallback_for`].
pub fn write_onnx_folder(
    inputs: &ExportInputs<'_>,
    options: &OnnxOptions,
    out: &Path,
) -> Result<OnnxReport, Error> {
    let mut options = options.clone();
    let mut fallbacks = Vec::new();
    loop {
        match write_onnx_folder_as(inputs, &options, out, fallbacks.clone()) {
            Err(error) => match fallback_for(&error, &options, &fallbacks) {
                Some((next, fallback)) => {
                    tracing::warn!("{}: {}; fallback `{}`", out.display(), fallback.reason, fallback.kind);
                    fallbacks.push(fallback);
                    options = next;
                }
                None => return Err(error),
            },
            ok => return ok,
        }
    }
}

/// The fallback for a failed export check, recognised by the failure's cause (which engine, at
/// which phase, for which target and opset), never by the text of its message:
/// - an engine that cannot *load* a graph written above [`DEFAULT_OPSET`] gets the graph at
///   [`DEFAULT_OPSET`], the opset both engines are tested with;
/// - an `ort`-target graph that ONNX Runtime rejects (loading or running it) is written for
///   the `portable` target.
pub fn fallback_for(
    error: &Error,
    options: &OnnxOptions,
    taken: &[Fallback],
) -> Option<(OnnxOptions, Fallback)> {
    if !options.fallback || !options.check {
        return None;
    }
    let Error::Runtime(runtime) = error else { return None };
    let not_taken = |kind: &str| taken.iter().all(|f| f.kind != kind);
    match runtime {
        RuntimeError::EngineLoad { engine, message }
            if options.opset > DEFAULT_OPSET && not_taken("opset") =>
        {
            let reason = format!(
                "{engine} could not load the graph at opset {} ({message}); written at opset {DEFAULT_OPSET}",
                options.opset
            );
            Some((
                OnnxOptions { opset: DEFAULT_OPSET, ..options.clone() },
                Fallback { kind: "opset".into(), reason },
            ))
        }
        RuntimeError::Engine { engine: "ort", message }
        | RuntimeError::EngineLoad { engine: "ort", message }
            if options.target == Target::Ort && not_taken("portable-target") =>
        {
            let reason = format!("ONNX Runtime rejected the `ort`-target graph: {message}");
            Some((
                OnnxOptions { target: Target::Portable, ..options.clone() },
                Fallback { kind: "portable-target".into(), reason },
            ))
        }
        _ => None,
    }
}

fn write_onnx_folder_as(
    inputs: &ExportInputs<'_>,
    options: &OnnxOptions,
    out: &Path,
    mut fallbacks: Vec<Fallback>,
) -> Result<OnnxReport, Error> {
    let (base, detection, weights, adapter) = (inputs.base, inputs.detection, inputs.weights, inputs.adapter);
    let mut plan = plan_merge(weights, adapter)?;
    let config = &weights.config;
    let decoder = &config.decoder;
    let (embed_name, head_name) = (decoder.embedding.name.as_str(), decoder.head.name.as_str());
    let has_head = plan.tensors.iter().any(|t| t.name == head_name);
    if options.scheme().is_some() && options.quant.table == TableStorage::QuantizedHead && !has_head {
        // A tied head is quantized as a copy; the embedding table stays f16 for the lookup.
        if let Some(embed) = plan.tensors.iter().find(|t| t.name == embed_name) {
            let mut copy = embed.clone();
            copy.name = head_name.to_string();
            plan.tensors.push(copy);
        }
    }
    let (cos, sin) = config.rope().tables(config.max_position_embeddings);
    // The fused RotaryEmbedding takes half-width tables (the two halves are equal).
    let table_cols = if options.target == Target::Ort { config.head_dim / 2 } else { config.head_dim };
    let (cos, sin) =
        (table_columns(&cos, config.head_dim, table_cols), table_columns(&sin, config.head_dim, table_cols));
    let table_dims = vec![config.max_position_embeddings as i64, table_cols as i64];
    let mut planned: Vec<PlannedInitializer> = Vec::new();
    let mut forms: HashMap<String, WeightForm> = HashMap::new();
    for t in &plan.tensors {
        let (inits, form) = plan_initializers(t, options.storage(t, decoder), options.transposed(t, decoder));
        planned.extend(inits);
        forms.insert(t.name.clone(), form);
    }
    for name in [ROPE_COS, ROPE_SIN] {
        planned.push(PlannedInitializer {
            name: name.into(),
            elem: Elem::F32,
            dims: table_dims.clone(),
            bytes: (cos.len() * 4) as u64,
        });
    }
    let total: u64 = planned.iter().map(|p| p.bytes).sum();
    let mut external = options.external_data.unwrap_or(total > EMBEDDED_DEFAULT);
    if !external && total > embedded_limit() {
        let reason = format!("the weights ({total} bytes) do not fit in a protobuf (2 GiB)");
        if !options.fallback {
            return Err(RuntimeError::Unsupported {
                message: format!("{reason}: set `external-data = true` for this export (--no-fallback)"),
            }
            .into());
        }
        tracing::warn!("{}: {reason}; writing external data instead", out.display());
        fallbacks.push(Fallback { kind: "external-data".into(), reason });
        external = true;
    }

    let staging = Staging::new(out, inputs.temp_root)?;
    let dir = staging.dir().to_path_buf();
    let data_path = dir.join(DATA_FILE);
    let mut sink = InitializerSink::new(planned, external.then_some(data_path.as_path()))
        .map_err(|e| Error::write(&data_path, e))?;
    let progress = monitor::bytes_bar(total, format!("writing {}", staging.name()));
    let started = std::time::Instant::now();
    let merge_inputs = MergeInputs { base: weights, adapter, allow_non_finite: options.allow_non_finite };
    let mut writer = WeightWriter::new(&mut sink, &data_path, &config.decoder);
    execute_rows(&plan, &merge_inputs, &mut |t, first, values| {
        writer.rows(t, options.storage(t, decoder), options.transposed(t, decoder), first, values, &progress)
    })?;
    let (rows, cols) = (config.max_position_embeddings, table_cols);
    for (name, table) in [(ROPE_COS, &cos), (ROPE_SIN, &sin)] {
        let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_le_bytes()).collect();
        writer.raw(name, &[rows, cols], &bytes)?;
    }
    let report = writer.into_report();
    drop((cos, sin));
    let (placed, data_file) = sink.finish().map_err(|e| Error::write(&data_path, e))?;
    progress.finish_and_clear();
    let scheme_text = options.scheme().map_or_else(|| options.precision.as_str().to_string(), scheme_label);
    let quantization = (options.precision != OnnxPrecision::F32)
        .then(|| report.finish(options.precision.as_str(), &scheme_text));

    let mut graph = GraphBuilder::new(options.opset, DATA_FILE);
    for (p, data) in placed {
        graph.initializer(&p.name, p.elem, &p.dims, data);
    }
    let head = if plan.tensors.iter().any(|t| t.name == head_name) { head_name } else { embed_name };
    let weight = |name: &str| forms.get(name).cloned().unwrap_or(WeightForm::Float(Elem::F32));
    let spec = DecoderSpec {
        config,
        head: head.to_string(),
        weight: &weight,
        accuracy_level: options.quant.accuracy_level,
    };
    build_decoder(&mut graph, &spec, options.target)
        .map_err(|e| RuntimeError::Unsupported { message: e.to_string() })?;
    let metadata = vec![
        ("model_type".to_string(), config.model_type.clone()),
        ("export_dtype".to_string(), options.precision.as_str().to_string()),
        ("export_target".to_string(), options.target.to_string()),
        ("quantization".to_string(), scheme_text.clone()),
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

    let export_dtype =
        if options.precision == OnnxPrecision::F32 { TensorDtype::F32 } else { TensorDtype::F16 };
    staging.write_companions(base, detection, Some(&exported_config(weights, export_dtype, plan.untied)))?;
    crate::fsutil::write_json(&dir.join("genai_config.json"), &genai_config(base, MODEL_FILE))?;
    if let Some(q) = &quantization {
        crate::fsutil::write_json(&dir.join(QUANT_REPORT_FILE), q)?;
    }

    let checked_in = if options.check {
        let engines = check_exported(&model_path, weights, options)?;
        tracing::info!("checked in {} at {:.2} s", engines.join(" and "), started.elapsed().as_secs_f64());
        engines
    } else {
        tracing::warn!("{}: not loaded back in any engine (--skip-check)", staging.name());
        Vec::new()
    };
    let options_json = serde_json::json!({
        "format": "onnx",
        "target": options.target.to_string(),
        "dtype": options.precision.as_str(),
        "quantization": scheme_text,
        "quantized_head": options.scheme().is_some() && options.quant.table != TableStorage::F16,
        "embedding_table": table_label(options),
        "opset": options.opset,
        "external_data": external,
        "untied_embeddings": plan.untied,
        "fallbacks": fallbacks,
    });
    let manifest = staging.finish("onnx", provenance(base, detection, options_json), &known, out)?;
    Ok(OnnxReport {
        dir: out.to_path_buf(),
        manifest,
        external_data: external,
        quantization,
        parameters: plan.parameter_count(),
        checked_in,
        fallbacks,
    })
}
