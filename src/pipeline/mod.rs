//! `run` as a pipeline that survives: a plan of stages with input digests (`plan`), checks
//! before any write (`preflight`), one run per out-dir (`lock`), records of finished stages
//! so a re-run skips what is done (`state`), safe stops on Ctrl-C (`interrupt`), per-stage
//! measurements (`metrics`), and named fault points for the kill tests (`fault`).

pub mod digest;
pub mod fault;
pub mod interrupt;
pub mod lock;
pub mod metrics;
pub mod plan;
pub mod preflight;
pub mod state;

use std::path::Path;

use serde::Serialize;

use crate::checkpoint::Detection;
use crate::config::Config;
use crate::config::schema::Engine;
use crate::error::Error;
use crate::memory;
use crate::model::ModelFolder;
use crate::size::human_bytes;

use digest::{FileIdentity, digest, folder_identity};
use plan::{
    Action, Plan, Stage, StageKind, export_bytes, export_stage_id, report_stage_id, validate_stage_id,
};
use state::StateDir;

/// The pipeline's answers to the lower layers' safe points: its signal flags and fault table.
struct PipelineSafePoints;

impl crate::hooks::SafePoints for PipelineSafePoints {
    fn check_stop(&self, at: Option<&str>) -> Result<(), crate::error::PipelineError> {
        interrupt::check_before(at)
    }
    fn reached(&self, name: &str) {
        fault::point(name);
    }
    fn fails(&self, name: &str) -> bool {
        fault::fails(name)
    }
    fn is_armed(&self, name: &str) -> bool {
        fault::is_armed(name)
    }
}

/// Makes merge, export and the engines answer to this process's signals and fault points.
pub fn install_safe_points() {
    crate::hooks::install(&PipelineSafePoints);
}

#[derive(Serialize)]
struct MergeInputs<'a> {
    base: Vec<FileIdentity>,
    adapter: Option<(&'a Path, Vec<FileIdentity>)>,
    dtype: &'static str,
}

#[derive(Serialize)]
struct ExportInputs<'a> {
    /// The merge's inputs digest, or the base's identity when there is no adapter.
    weights: &'a str,
    spec: &'a crate::config::schema::ExportSpec,
}

#[derive(Serialize)]
struct ReferenceInputs<'a> {
    weights: &'a str,
    prompts: &'a [String],
    max_new_tokens: u32,
    chat_template: bool,
    /// How validation judges: a result recorded by an older method is redone.
    method: &'static str,
    /// The evaluation text's content digest and chunk length, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<(String, u32, Option<u32>)>,
}

#[derive(Serialize)]
struct ValidateInputs<'a> {
    export: &'a str,
    reference: &'a str,
    engines: &'a [crate::config::schema::Engine],
    /// Where ONNX Runtime was found: installing it changes what validation can run.
    onnxruntime: Option<String>,
}

/// The exports' weights: the base and the chosen checkpoint (exports stream from the base with
/// the adapter merged block by block; there is no merged copy on disk).
fn weights_digest(base: &ModelFolder, detection: Option<&Detection>) -> Result<String, Error> {
    Ok(digest(&MergeInputs {
        base: folder_identity(&base.dir)?,
        adapter: match detection {
            Some(d) => Some((d.chosen.as_path(), folder_identity(&d.chosen)?)),
            None => None,
        },
        dtype: if detection.is_some() { "f32" } else { "base" },
    }))
}

fn reference_digest(config: &Config, weights_digest: &str) -> String {
    let v = &config.validate;
    digest(&ReferenceInputs {
        weights: weights_digest,
        prompts: &v.prompts.value,
        max_new_tokens: v.max_new_tokens.value,
        chat_template: v.chat_template.value,
        method: crate::validate::METHOD,
        // An unreadable text is refused when it is read; here it only needs a distinct digest.
        text: v.text.value.as_ref().map(|path| {
            let content = crate::export::manifest::hash_file(path).map_or_else(|e| e.to_string(), |(_, h)| h);
            (content, v.text_context.value, v.text_chunks.value)
        }),
    })
}

/// What the validation reference of `config` on these inputs is computed from: the key of its
/// cache in `<out-dir>/.state`.
pub fn reference_key(
    config: &Config,
    base: &ModelFolder,
    detection: Option<&Detection>,
) -> Result<String, Error> {
    Ok(reference_digest(config, &weights_digest(base, detection)?))
}

/// What the plan is asked to do besides the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanOptions {
    /// Redo every stage.
    pub force: bool,
    /// Validate the exports (validate and report stages).
    pub validate: bool,
    /// Re-hash every output of a stage that would be skipped (`run --verify`).
    pub rehash: bool,
    /// Exports are loaded back into their engines before they are installed.
    pub check: bool,
}

/// Builds the plan: every stage with its inputs' digest, estimates, and whether it must run.
pub fn build_plan(
    config: &Config,
    base: &ModelFolder,
    detection: Option<&Detection>,
    options: PlanOptions,
) -> Result<Plan, Error> {
    let PlanOptions { force, validate, rehash, check } = options;
    let out_dir = config.out_dir.value.clone();
    let state = StateDir::new(&out_dir);
    let parameters = base.parameter_count();
    let largest_f32 = base.tensors().map(|(_, t)| t.numel() as u64 * 4).max().unwrap_or(0);
    let action = |id: &str, inputs: &str| match (force, state.must_run(id, inputs, rehash)) {
        (true, _) => Action::Run { reason: "--force".into() },
        (false, Some(reason)) => Action::Run { reason: reason.into() },
        (false, None) => Action::Skip,
    };
    let mut stages = Vec::new();
    let weights_digest = weights_digest(base, detection)?;
    let mut weights_from = vec![base.dir.clone()];
    weights_from.extend(detection.map(|d| d.chosen.clone()));
    let v = &config.validate;
    let reference_digest = reference_digest(config, &weights_digest);
    let adapter_bytes =
        detection.map_or(0, |d| d.adapter.file.tensors().iter().map(|t| t.byte_len() as u64).sum());
    let parts = memory::ModelParts::of(base, adapter_bytes);
    let prompts = v.prompts.value.len();
    // The evaluation text is read now, so a text that cannot be scored is refused before
    // anything is written.
    let text_memory = match (&v.text.value, validate) {
        (Some(_), true) => {
            let text = crate::validate::text::EvalText::configured(config, base, detection)?;
            text.map_or(0, |t| memory::text(t.scored() as u64, base.config.vocab_size as u64))
        }
        _ => 0,
    };
    let reference_memory = memory::reference(&parts, prompts) + text_memory;
    let mut reference_pending = force || !crate::validate::cache::holds(state.path(), &reference_digest);
    let memory_limit = config.max_memory.value.map(|b| b.0).or_else(crate::monitor::available_memory);
    let base_bytes_per_weight = base.tensor_bytes() as f64 / parameters.max(1) as f64;
    let decoder = &base.config.decoder;
    let embedding_params = base.tensor(&decoder.embedding.name).map_or(0, |(_, t)| t.numel() as u64);
    let separate_head = base.tensor(&decoder.head.name).is_some();
    let onnxruntime = crate::runtime::ort_engine::find_onnxruntime().map(|p| p.display().to_string());
    let mut validations = Vec::new();
    let mut any_validation_runs = false;
    for export in &config.exports {
        let spec = &export.value;
        let dir = out_dir.join(&spec.name);
        let inputs = digest(&ExportInputs { weights: &weights_digest, spec });
        let id = export_stage_id(&spec.name);
        let bytes = export_bytes(spec, base_bytes_per_weight, parameters, embedding_params, separate_head);
        // An engine that would not fit max-memory with the ONNX export loaded is left out of the
        // export-time check, and said; validation refuses it by name as well.
        let mut notes = Vec::new();
        let mut check_skip = Vec::new();
        let mut checked_in = Vec::new();
        if check && spec.format == crate::config::schema::Format::Onnx {
            for engine in [Engine::Tract, Engine::Ort] {
                let needed = memory::export(spec, bytes, largest_f32, adapter_bytes, &[engine]);
                match memory_limit.filter(|limit| needed > *limit) {
                    Some(limit) => {
                        let why = format!(
                            "the load needs about {}, more than max-memory ({})",
                            human_bytes(needed),
                            human_bytes(limit)
                        );
                        notes.push(format!("not loaded back in {engine} before it is installed: {why}"));
                        check_skip.push((engine, why));
                    }
                    None => checked_in.push(engine),
                }
            }
        }
        stages.push(Stage {
            action: action(&id, &inputs),
            id,
            kind: StageKind::Export,
            export: Some(spec.name.clone()),
            reads: weights_from.clone(),
            writes: vec![dir.clone()],
            estimated_bytes_written: bytes,
            estimated_peak_memory: memory::export(spec, bytes, largest_f32, adapter_bytes, &checked_in),
            inputs_digest: inputs.clone(),
            check_skip,
            notes,
        });
        if !validate {
            continue;
        }
        let validation = digest(&ValidateInputs {
            export: &inputs,
            reference: &reference_digest,
            engines: &v.engines.value,
            onnxruntime: onnxruntime.clone(),
        });
        let id = validate_stage_id(&spec.name);
        let engines: Vec<(Engine, u64)> = memory::engines(spec, &v.engines.value, bytes, &parts, prompts)
            .into_iter()
            .map(|(engine, needed)| (engine, needed + text_memory))
            .collect();
        // A redone export replaces its folder, validation reports included: validate it again.
        let export_runs = stages.last().is_some_and(Stage::runs);
        let validate_action = match action(&id, &validation) {
            Action::Skip if export_runs => Action::Run { reason: "its export is redone".into() },
            other => other,
        };
        let runs = matches!(validate_action, Action::Run { .. });
        any_validation_runs |= runs;
        stages.push(Stage {
            action: validate_action,
            id,
            kind: StageKind::Validate,
            export: Some(spec.name.clone()),
            reads: std::iter::once(dir.clone()).chain(weights_from.iter().cloned()).collect(),
            writes: vec![dir.join("validation.json"), dir.join("validation.md")],
            estimated_bytes_written: 1 << 20,
            // The reference is computed by the first validation that runs, unless cached.
            estimated_peak_memory: memory::validation(
                if reference_pending && runs { reference_memory } else { 0 },
                &engines,
                memory_limit,
            ),
            inputs_digest: validation.clone(),
            check_skip: Vec::new(),
            notes: engines
                .iter()
                .filter(|(_, needed)| memory_limit.is_some_and(|limit| *needed > limit))
                .map(|(engine, needed)| {
                    format!(
                        "not run in {engine}: that needs about {}, more than max-memory ({})",
                        human_bytes(*needed),
                        human_bytes(memory_limit.unwrap_or_default())
                    )
                })
                .collect(),
        });
        validations.push(validation);
        reference_pending &= !runs;
    }
    if validate && !config.exports.is_empty() {
        let inputs = digest(&validations);
        let id = report_stage_id();
        let report_action = match action(&id, &inputs) {
            Action::Skip if any_validation_runs => {
                Action::Run { reason: "an export is validated again".into() }
            }
            other => other,
        };
        stages.push(Stage {
            action: report_action,
            id,
            kind: StageKind::Report,
            export: None,
            reads: config
                .exports
                .iter()
                .map(|e| out_dir.join(&e.value.name).join("validation.json"))
                .collect(),
            writes: vec![out_dir.join("report.json"), out_dir.join("report.md")],
            estimated_bytes_written: 1 << 20,
            estimated_peak_memory: memory::LATER_STAGE_BASE,
            inputs_digest: inputs,
            check_skip: Vec::new(),
            notes: Vec::new(),
        });
    }
    Ok(Plan { out_dir, parameters, stages, reference_digest })
}
