//! Proving exports right: the reference is candle running the *base* weights in f32 with the
//! adapter applied as unmerged side branches (peft's forward, [`unmerged`]), so it shares no code
//! with the merge the exports come from. Each export runs in every engine that supports it
//! (safetensors and GGUF: candle; ONNX: ONNX Runtime and tract) on the same padded batch of the
//! configured prompts, and is compared on logits and on greedy tokens with the KV cache. The
//! merged f32 model is measured against the reference too ("merged vs unmerged").

pub mod cache;
pub mod markdown;
pub mod metrics;
pub mod report;
pub mod text;
pub mod tolerance;
pub mod unmerged;

use std::collections::HashMap;
use std::path::Path;

use crate::config::{Engine, ExportDtype, ExportSpec, Format, Target};
use crate::error::{Error, ModelError, RuntimeError};
use crate::export::ExportInputs;
use crate::export::onnx::folder::QUANT_REPORT_FILE;
use crate::merge::plan::{MergePlan, PlannedTensor};
use crate::merge::{MergeInputs, execute_rows, plan_merge};
use crate::model::{ModelFolder, TensorDtype};
use crate::quant::QuantReport;
use crate::runtime::chat::{ChatTemplate, Message};
use crate::runtime::gguf::GgufFile;
use crate::runtime::ort_engine::{self, OrtEngine};
use crate::runtime::reference::{Forward, Weight};
use crate::runtime::tract_engine::{self, TractEngine};
use crate::runtime::{Batch, DecoderEngine, GreedyOptions, KvCache, ReferenceEngine, StreamedModel, greedy};
use crate::size::human_bytes;
use candle_core::Tensor;
use metrics::{compare_logits, first_divergence};
use report::{EngineResult, ExportValidation, MergeCheck, Verdict};
use tolerance::Tolerance;

/// What a recorded validation result was judged by; changing the reference or the tolerances
/// changes it, so a re-run validates again instead of reporting an old verdict.
pub const METHOD: &str = "unmerged reference; scale-relative tolerances; verdicts (2); KL bars";

/// The reference run every export is compared with.
pub struct Reference {
    pub batch: Batch,
    pub logits: Vec<f32>,
    pub vocab: usize,
    pub greedy: Vec<Vec<i64>>,
    pub options: GreedyOptions,
    /// The merged f32 model against this reference (with an adapter).
    pub merge: Option<MergeCheck>,
    /// The evaluation text's scores (`[validate] text`).
    pub text: Option<text::TextReference>,
}

/// Tokenizes `prompts` with the tokenizer.json in `dir` (special tokens as written).
/// Refuses a tokenizer.json in `dir` that does not load, before anything is written (exports
/// copy it, and validation needs it).
pub fn check_tokenizer(dir: &Path) -> Result<(), Error> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Ok(());
    }
    tokenizers::Tokenizer::from_file(&path)
        .map(|_| ())
        .map_err(|e| ModelError::Json { path, message: format!("not a usable tokenizer: {e}") }.into())
}

pub fn tokenize(dir: &Path, prompts: &[String]) -> Result<Vec<Vec<i64>>, Error> {
    let path = dir.join("tokenizer.json");
    let tokenizer = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Json {
        path: path.clone(),
        message: format!("not a usable tokenizer: {e}"),
    })?;
    prompts
        .iter()
        .map(|p| {
            tokenizer
                .encode(p.as_str(), true)
                .map(|enc| enc.get_ids().iter().map(|&t| i64::from(t)).collect())
                .map_err(|e| {
                    ModelError::Json { path: path.clone(), message: format!("cannot tokenize {p:?}: {e}") }
                        .into()
                })
        })
        .collect()
}

/// eos ids (generation_config.json's list first) and the pad id.
fn stop_ids(base: &ModelFolder) -> (Vec<i64>, i64) {
    let generation: serde_json::Value = std::fs::read(base.dir.join("generation_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut eos: Vec<i64> = match &generation["eos_token_id"] {
        serde_json::Value::Array(ids) => ids.iter().filter_map(|v| v.as_i64()).collect(),
        v => v.as_i64().into_iter().collect(),
    };
    if eos.is_empty() {
        eos = base.config.eos_token_ids.iter().map(|&e| i64::from(e)).collect();
    }
    let pad = generation["pad_token_id"]
        .as_i64()
        .or(base.config.pad_token_id.map(i64::from))
        .or(eos.first().copied())
        .unwrap_or(0);
    (eos, pad)
}

/// The merged model in f32, read layer by layer: the folder's own weights (a merge already
/// written), or each tensor merged from the base and `inputs.adapter` when its layer runs
/// (nothing is written, and no more than one layer is merged at a time).
fn load_merged<'a>(inputs: &ExportInputs<'a>) -> Result<StreamedModel<'a>, Error> {
    let Some(adapter) = inputs.adapter else { return Ok(StreamedModel::of_folder(inputs.weights)) };
    let weights = inputs.weights;
    let plan = plan_merge(weights, Some(adapter))?;
    let untied = plan.untied;
    let tensors: HashMap<String, PlannedTensor> =
        plan.tensors.into_iter().map(|t| (t.name.clone(), t)).collect();
    let device = candle_core::Device::Cpu;
    let source = move |name: &str| -> Result<Option<Weight>, RuntimeError> {
        let Some(t) = tensors.get(name) else { return Ok(None) };
        let one = MergePlan { tensors: vec![t.clone()], untied };
        let mut values = Vec::with_capacity(t.shape.iter().product());
        execute_rows(
            &one,
            &MergeInputs { base: weights, adapter: Some(adapter), allow_non_finite: true },
            &mut |_, _, rows| {
                values.extend_from_slice(rows);
                Ok(())
            },
        )
        .map_err(|e| RuntimeError::Source(Box::new(e)))?;
        Ok(Some(Weight::Dense(Tensor::from_vec(values, t.shape.as_slice(), &device)?)))
    };
    Ok(StreamedModel::new(weights, Box::new(source)))
}

fn logits_of(model: &impl Forward, batch: &Batch) -> Result<(Vec<f32>, usize), Error> {
    let logits = model.forward(batch, &mut KvCache::default())?;
    let vocab = logits.dims3().map_err(RuntimeError::from)?.2;
    let logits = logits.flatten_all().and_then(|t| t.to_vec1::<f32>()).map_err(RuntimeError::from)?;
    Ok((logits, vocab))
}

/// Runs the prompts (and the evaluation text, if any) through the unmerged reference (base +
/// adapter side branches, f32), then measures the merged f32 model against it. The models are
/// released before returning.
pub fn build_reference(
    inputs: &ExportInputs<'_>,
    prompts: &[String],
    chat_template: bool,
    max_new_tokens: usize,
    eval_text: Option<text::EvalText>,
) -> Result<Reference, Error> {
    let (base, detection) = (inputs.base, inputs.detection);
    let tokenizer_dir = crate::checkpoint::detect::tokenizer_dir(detection, &base.dir);
    let (eos, pad) = stop_ids(base);
    let texts: Vec<String> = if chat_template {
        let template = ChatTemplate::from_dir(&tokenizer_dir)?;
        prompts
            .iter()
            .map(|p| template.render(&[Message { role: "user".into(), content: p.clone() }], true))
            .collect::<Result<_, _>>()?
    } else {
        prompts.to_vec()
    };
    let batch = Batch::left_padded(&tokenize(&tokenizer_dir, &texts)?, pad);
    let options = GreedyOptions { max_new_tokens, eos_token_ids: eos, pad_token_id: pad };
    let adapter_dir = detection.map(|d| d.adapter.dir.as_path());
    let model = unmerged::load_unmerged(base, adapter_dir)?;
    let (logits, vocab) = logits_of(&model, &batch)?;
    let greedy_ids = greedy(&mut ReferenceEngine::new(&model), &batch, &options)?;
    let text = match eval_text {
        Some(t) => Some(text::score_reference(t, vocab, &mut |b| Ok(logits_of(&model, b)?.0))?),
        None => None,
    };
    drop(model);
    let merge = match adapter_dir {
        None => None,
        Some(_) => {
            let merged = load_merged(inputs)?;
            let (merged_logits, _) = logits_of(&merged, &batch)?;
            let m = compare_logits(&merged_logits, &logits, &batch, vocab, 1e-3);
            Some(MergeCheck::of(&m, tolerance::F32_RELATIVE))
        }
    };
    Ok(Reference { batch, logits, vocab, greedy: greedy_ids, options, merge, text })
}

fn run_engine(
    engine: &mut dyn DecoderEngine,
    reference: &Reference,
    tolerance: &Tolerance,
) -> Result<EngineResult, Error> {
    let logits = engine.step(&reference.batch)?;
    engine.reset();
    let m = compare_logits(
        &logits.values,
        &reference.logits,
        &reference.batch,
        reference.vocab,
        tolerance.top1_margin,
    );
    let ids = greedy(engine, &reference.batch, &reference.options)?;
    let text = match &reference.text {
        Some(t) => Some(text::score_export(t, &mut |b| {
            let logits = engine.step(b)?;
            engine.reset();
            Ok(logits.values)
        })?),
        None => None,
    };
    let prompt_len = reference.batch.input_ids.first().map_or(0, Vec::len);
    let divergence = first_divergence(&ids, &reference.greedy, prompt_len);
    let mut failures = Vec::new();
    if let Some(limit) = tolerance.max_abs_error
        && m.max_abs_error > limit
    {
        failures.push(format!("max abs logit error {:.2e} > {limit:.0e}", m.max_abs_error));
    }
    if let Some(k) = tolerance.max_relative_error
        && m.relative_error > k
    {
        failures.push(format!(
            "max abs logit error {:.2e} > {k:.0e} x max(1, RMS {:.3}) = {:.2e}",
            m.max_abs_error,
            m.reference_rms,
            k * m.reference_rms.max(1.0)
        ));
    }
    if m.cosine < tolerance.min_cosine {
        failures.push(format!("cosine {:.6} < {}", m.cosine, tolerance.min_cosine));
    }
    if m.top1_agreement < tolerance.min_top1 {
        failures.push(format!(
            "top-1 agreement {:.2}% < {}%",
            m.top1_agreement * 100.0,
            tolerance.min_top1 * 100.0
        ));
    }
    if tolerance.greedy_must_match
        && let Some((row, at)) = divergence
    {
        failures.push(format!("greedy tokens diverge at prompt {row}, token {at}"));
    }
    // KL is judged on the text when there is one, else on the prompts.
    let (kl, kl_on) = match &text {
        Some(t) => (t.mean_kl, "the text"),
        None => (m.mean_kl, "the prompts"),
    };
    if let Some(limit) = tolerance.max_mean_kl
        && kl > limit
    {
        failures.push(format!("mean KL divergence on {kl_on} {kl:.2e} > {limit:.0e}"));
    }
    if let (Some(limit), Some(t)) = (tolerance.min_text_top1, &text)
        && t.top1_agreement < limit
    {
        failures.push(format!(
            "top-1 agreement on the text {:.2}% < {}%",
            t.top1_agreement * 100.0,
            limit * 100.0
        ));
    }
    Ok(EngineResult {
        engine: engine.name().to_string(),
        skipped: None,
        text,
        logits: Some(m),
        greedy_match: Some(divergence.is_none()),
        first_divergence: divergence,
        passed: failures.is_empty(),
        failures,
    })
}

/// Validates the export `spec` written at `dir` in each requested engine that runs it, one
/// engine at a time; an engine whose estimate for this export exceeds `memory_limit` is not
/// started, and says so with its figure.
pub fn validate_export(
    reference: &Reference,
    base: &ModelFolder,
    spec: &ExportSpec,
    dir: &Path,
    requested: &[Engine],
    threads: usize,
    memory_limit: Option<u64>,
) -> Result<ExportValidation, Error> {
    let dtype = spec.dtype.unwrap_or(match base.storage_dtype() {
        TensorDtype::F16 => ExportDtype::F16,
        TensorDtype::BF16 => ExportDtype::Bf16,
        _ => ExportDtype::F32,
    });
    let tolerance = Tolerance::for_export(dtype, &spec.options);
    let c = &base.config;
    // The target the folder was written for: a fallback may have changed the configured one.
    let written = crate::export::manifest::read_manifest(dir)
        .ok()
        .and_then(|m| m.provenance.options["target"].as_str().and_then(|t| t.parse::<Target>().ok()));
    let target = written.or(spec.target).unwrap_or(Target::Portable);
    // The engines run after the reference: the adapter is no longer mapped.
    let parts = crate::memory::ModelParts::of(base, 0);
    let export_bytes = folder_bytes(dir);
    let experts = base.config.decoder.has_experts();
    let tract_unsupported = tract_engine::unsupported_for(spec, dtype, target, experts);
    // The reference's text scores stay held while each engine runs.
    let text_memory =
        reference.text.as_ref().map_or(0, |t| crate::memory::text(t.text.scored() as u64, t.vocab as u64));
    let mut results = Vec::new();
    for &engine in spec.format.engines().iter().filter(|e| requested.contains(e)) {
        let skipped = |why: String| EngineResult {
            engine: engine.to_string(),
            skipped: Some(why),
            text: None,
            logits: None,
            greedy_match: None,
            first_divergence: None,
            passed: false,
            failures: Vec::new(),
        };
        let needed =
            crate::memory::engine(spec, engine, export_bytes, &parts, reference.batch.input_ids.len())
                + text_memory;
        let result = match engine {
            _ if memory_limit.is_some_and(|limit| needed > limit) => {
                let limit = memory_limit.unwrap_or_default();
                tracing::warn!(
                    "export `{}` is not run in {engine}: it needs about {} of memory",
                    spec.name,
                    human_bytes(needed)
                );
                skipped(format!(
                    "needs about {} of memory in {engine}, more than max-memory ({}): validate it on a larger machine or raise max-memory",
                    human_bytes(needed),
                    human_bytes(limit)
                ))
            }
            Engine::Candle if spec.format == Format::Gguf => {
                let path = dir.join(crate::export::gguf::GGUF_FILE);
                let file = GgufFile::open(&path)?;
                let model = file.streamed()?;
                run_engine(&mut ReferenceEngine::new(&model), reference, &tolerance)?
            }
            Engine::Candle => {
                let folder = ModelFolder::open(dir, Some(base.profile))?;
                let model = StreamedModel::of_folder(&folder);
                run_engine(&mut ReferenceEngine::new(&model), reference, &tolerance)?
            }
            Engine::Tract => match tract_unsupported {
                Some(why) => skipped(why.to_string()),
                None => {
                    let model = dir.join("model.onnx");
                    let (layers, kv, d) = (c.num_hidden_layers, c.num_key_value_heads, c.head_dim);
                    let mut e = TractEngine::load_for(target, &model, layers, kv, d)?;
                    run_engine(&mut e, reference, &tolerance)?
                }
            },
            Engine::Ort if !ort_engine::available() => {
                if crate::config::env::ci() {
                    return Err(RuntimeError::OrtUnavailable {
                        message: "CI=true requires every engine".into(),
                    }
                    .into());
                }
                tracing::warn!(
                    "ONNX Runtime is not installed: export `{}` is not measured in ort (python3 -m pip install --no-deps {})",
                    spec.name,
                    crate::onnx_io::ORT_WHEEL
                );
                skipped(format!(
                    "ONNX Runtime not installed (python3 -m pip install --no-deps {})",
                    crate::onnx_io::ORT_WHEEL
                ))
            }
            Engine::Ort => {
                let model = dir.join("model.onnx");
                let mut e =
                    OrtEngine::load(&model, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, threads)?;
                run_engine(&mut e, reference, &tolerance)?
            }
        };
        results.push(result);
    }
    let verdict = Verdict::of(&results);
    let runs_in = spec.format.engines();
    let unverified = (verdict == Verdict::Unverified).then(|| {
        let names =
            |engines: &[Engine]| engines.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let skipped: Vec<String> = results
            .iter()
            .filter_map(|r| r.skipped.as_ref().map(|why| format!("{}: {why}", r.engine)))
            .collect();
        let mut why = format!(
            "no engine measured it: a {} export runs in {}; validate.engines = [{}]",
            spec.format,
            names(runs_in),
            names(requested)
        );
        if !skipped.is_empty() {
            why.push_str(&format!(" (skipped: {})", skipped.join("; ")));
        }
        why
    });
    let quantization = read_quant_report(dir)?;
    Ok(ExportValidation {
        export: spec.name.clone(),
        format: spec.format.to_string(),
        dtype: dtype.to_string(),
        target: (spec.format == Format::Onnx).then(|| target.to_string()),
        tolerance,
        prompts: reference.batch.input_ids.len(),
        max_new_tokens: reference.options.max_new_tokens,
        engines: results,
        quantization,
        passed: verdict == Verdict::Passed,
        verdict,
        unverified,
    })
}

/// Bytes of the files in `dir` (an export folder is flat).
fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The export's quantization report without its per-tensor list (that stays in the file).
fn read_quant_report(dir: &Path) -> Result<Option<QuantReport>, Error> {
    let path = dir.join(QUANT_REPORT_FILE);
    let Ok(bytes) = std::fs::read(&path) else { return Ok(None) };
    let mut report: QuantReport = serde_json::from_slice(&bytes)
        .map_err(|e| ModelError::Json { path: path.clone(), message: e.to_string() })?;
    report.tensors.clear();
    Ok(Some(report))
}
