use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::Serialize;

use super::Context;
use super::output::{print_json, table};
use crate::config::schema::DEFAULT_ACCURACY_LEVEL;
use crate::config::{Config, EmbeddingsMode, Engine, ExportDtype, ExportSpec, Format, Overrides, Target};
use crate::error::Error;
use crate::export::ExportInputs;
use crate::export::gguf::{GgufOptions, write_gguf_folder};
use crate::export::manifest::read_manifest;
use crate::export::onnx::folder::QUANT_REPORT_FILE;
use crate::export::onnx::folder::{Fallback, QuantOptions};
use crate::export::onnx::{OnnxOptions, OnnxPrecision, write_onnx_folder};
use crate::export::safetensors::{MergeOptions, write_safetensors_folder};
use crate::fsutil::write_json;
use crate::model::TensorDtype;
use crate::pipeline::lock::RunLock;
use crate::pipeline::metrics::{StageMetrics, StageTimer};
use crate::pipeline::plan::{Action, Plan, Stage, export_stage_id, report_stage_id, validate_stage_id};
use crate::pipeline::state::{Output, StateDir};
use crate::pipeline::{build_plan, fault, interrupt, preflight};
use crate::size::human_bytes;
use crate::validate::report::{ValidationReport, Verdict};

#[derive(Serialize)]
pub struct ExportResult {
    name: String,
    format: Format,
    dtype: String,
    target: Option<Target>,
    dir: std::path::PathBuf,
    bytes: u64,
    files: usize,
    /// Engines that loaded and ran the export before it was installed.
    checked_in: Vec<&'static str>,
    /// What reduced precision saved and cost.
    quantization: Option<QuantSummary>,
    /// Documented fallbacks the export took, with their reasons.
    fallbacks: Vec<Fallback>,
}

/// The headline figures of a quantization report (the whole report is quantization.json).
#[derive(Serialize)]
pub struct QuantSummary {
    scheme: String,
    bytes_before: u64,
    bytes_after: u64,
    compression_ratio: f64,
    mean_relative_error: f64,
    max_relative_error: f64,
    worst_tensor: Option<String>,
}

impl QuantSummary {
    fn of(q: &crate::quant::QuantReport) -> Self {
        Self {
            scheme: q.scheme.clone(),
            bytes_before: q.bytes_before,
            bytes_after: q.bytes_after,
            compression_ratio: q.compression_ratio,
            mean_relative_error: q.error.mean_relative_error,
            max_relative_error: q.error.max_relative_error,
            worst_tensor: q.error.worst_tensor.clone(),
        }
    }
}

fn float_dtype(dtype: ExportDtype) -> Option<TensorDtype> {
    match dtype {
        ExportDtype::F32 => Some(TensorDtype::F32),
        ExportDtype::F16 => Some(TensorDtype::F16),
        ExportDtype::Bf16 => Some(TensorDtype::BF16),
        _ => None,
    }
}

/// The ONNX writer's options for an export entry.
pub fn onnx_options(spec: &ExportSpec, parameters: u64, skip_check: bool) -> OnnxOptions {
    let precision = match spec.dtype {
        Some(ExportDtype::F16) => OnnxPrecision::F16,
        Some(ExportDtype::Int8) => OnnxPrecision::Int8,
        Some(ExportDtype::Int4) => OnnxPrecision::Int4,
        _ => OnnxPrecision::F32,
    };
    let o = &spec.options;
    let target = spec.target.unwrap_or(Target::Portable);
    let bits = if precision == OnnxPrecision::Int8 { 8 } else { 4 };
    let table = o.embeddings.unwrap_or(EmbeddingsMode::Auto).storage(target, bits, parameters);
    OnnxOptions {
        precision,
        target,
        quant: QuantOptions {
            block: o.block_size.map_or(32, |b| b as usize),
            symmetric: o.symmetric.unwrap_or(false),
            table,
            // The default applies where accuracy-level may be set: the `ort` target.
            accuracy_level: i64::from(o.accuracy_level.unwrap_or(match target {
                Target::Ort => DEFAULT_ACCURACY_LEVEL,
                Target::Portable => 0,
            })),
        },
        opset: o.opset.map_or(crate::export::onnx::folder::DEFAULT_OPSET, i64::from),
        external_data: o.external_data,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        check: !skip_check,
        check_skip: Vec::new(),
        allow_non_finite: false,
        fallback: true,
    }
}

/// What `run` was asked to do besides the configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunFlags {
    pub skip_check: bool,
    pub no_validate: bool,
    pub dry_run: bool,
    pub force: bool,
    pub no_fallback: bool,
    pub allow_unverified: bool,
    pub verify: bool,
}

pub fn run(ctx: &Context, overrides: &Overrides, flags: RunFlags) -> Result<(), Error> {
    let config = ctx.load_config(overrides)?;
    let (base, detection) = super::detect::open_inputs(&config)?;
    // The tokenizer the exports will carry: the checkpoint's when it has one, else the base's.
    let tokenizer_dir = crate::checkpoint::detect::tokenizer_dir(detection.as_ref(), &base.dir);
    crate::validate::check_tokenizer(&tokenizer_dir)?;
    crate::validate::markdown::check(config.report_template.value.as_deref())?;
    let options = crate::pipeline::PlanOptions {
        force: flags.force,
        validate: !flags.no_validate,
        rehash: flags.verify,
        check: !flags.skip_check,
    };
    let plan = build_plan(&config, &base, detection.as_ref(), options)?;
    if flags.dry_run {
        return print_plan(ctx, &plan);
    }
    if config.exports.is_empty() {
        tracing::warn!("no [[package.metadata.model-export.export]] entries: nothing to do");
    }
    // Before the lock: a refused plan writes nothing at all.
    preflight::check(&plan, config.max_memory.value.map(|b| b.0))?;
    let protected = crate::export::destination::protected_inputs(&base.dir, detection.as_ref());
    for export in &config.exports {
        let dir = config.out_dir.value.join(&export.value.name);
        crate::export::destination::check_destination(&dir, &protected, flags.force)?;
    }
    interrupt::install();
    let out_dir = config.out_dir.value.clone();
    let state = StateDir::new(&out_dir);
    let _lock = RunLock::acquire(state.path())?;
    for leftover in state.remove_leftovers(&out_dir)? {
        tracing::info!("removed {} (left by an interrupted run)", leftover.display());
    }
    let temp_dir = state.temp_dir_guard();

    let mut metrics = Vec::new();
    // Each export streams from the base with the adapter merged block by block.
    let inputs = ExportInputs {
        temp_root: Some(temp_dir.path()),
        ..ExportInputs::from_base(&base, detection.as_ref())
    };

    let results = export_stages(&config, &inputs, &plan, &state, flags, &mut metrics)?;

    let report = if flags.no_validate || config.exports.is_empty() {
        if flags.no_validate {
            tracing::warn!(
                "exports written without validation (--no-validate): run `cargo model-export validate`"
            );
        }
        None
    } else {
        Some(validate_stages(&config, &inputs, &plan, &state, flags.force, &mut metrics)?)
    };
    write_json(&out_dir.join(RUN_FILE), &serde_json::json!({ "stages": metrics }))?;
    if ctx.json {
        print_json(&serde_json::json!({ "exports": results, "validation": report, "stages": metrics }))?;
    } else {
        print_summary(&results, report.as_ref());
        print_stages(&metrics);
        if report.is_some() {
            println!("\nreport: {}", out_dir.join("report.md").display());
        }
    }
    match &report {
        Some(report) => super::validate::verdict(&config, report, flags.allow_unverified),
        None => Ok(()),
    }
}

/// Runs the export stages, up to `jobs` at once (fewer when their memory estimates would pass
/// max-memory together). Each writes its own folder from the shared merge, so the bytes do not
/// depend on the order; results come back in declaration order. After a failure no new export
/// starts; those running finish (and are recorded), and the first error in order is returned.
fn export_stages(
    config: &Config,
    inputs: &ExportInputs<'_>,
    plan: &Plan,
    state: &StateDir,
    flags: RunFlags,
    metrics: &mut Vec<StageMetrics>,
) -> Result<Vec<ExportResult>, Error> {
    let stages: Vec<(&ExportSpec, &Stage)> = config
        .exports
        .iter()
        .filter_map(|e| plan.stage(&export_stage_id(&e.value.name)).map(|s| (&e.value, s)))
        .collect();
    let jobs = concurrent_exports(config, &stages);
    if jobs > 1 {
        tracing::info!("writing up to {jobs} exports at once");
    }
    let slots: Vec<Mutex<Option<ExportOutcome>>> = stages.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                while !failed.load(Ordering::SeqCst) {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&(spec, stage)) = stages.get(i) else { break };
                    let outcome = export_stage(config, inputs, state, spec, stage, flags);
                    if outcome.is_err() {
                        failed.store(true, Ordering::SeqCst);
                    }
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(outcome);
                    }
                }
            });
        }
    });
    let mut results = Vec::new();
    for slot in slots {
        match slot.into_inner().ok().flatten() {
            Some(Ok((result, measured))) => {
                results.push(result);
                metrics.push(measured);
            }
            Some(Err(e)) => return Err(e),
            // Not started after another export failed: that failure was returned above.
            None => {}
        }
    }
    Ok(results)
}

type ExportOutcome = Result<(ExportResult, StageMetrics), Error>;

/// `jobs`, lowered so the running exports' memory estimates fit max-memory together.
fn concurrent_exports(config: &Config, stages: &[(&ExportSpec, &Stage)]) -> usize {
    let running: Vec<u64> =
        stages.iter().filter(|(_, s)| s.runs()).map(|(_, s)| s.estimated_peak_memory).collect();
    let jobs = (config.jobs.value.max(1) as usize).min(running.len().max(1));
    let limit = config.max_memory.value.map(|b| b.0).or_else(crate::monitor::available_memory);
    match (limit, running.iter().max()) {
        (Some(limit), Some(&largest)) if largest > 0 => {
            let fit = (limit / largest).max(1) as usize;
            if fit < jobs {
                tracing::warn!("writing {fit} exports at once instead of {jobs}: max-memory allows no more");
            }
            jobs.min(fit)
        }
        _ => jobs,
    }
}

fn export_stage(
    config: &Config,
    inputs: &ExportInputs<'_>,
    state: &StateDir,
    spec: &ExportSpec,
    stage: &Stage,
    flags: RunFlags,
) -> ExportOutcome {
    let out_dir = &config.out_dir.value;
    let timer = StageTimer::start(&stage.id, out_dir);
    let result = if stage.runs() {
        begin(state, stage)?;
        state.forget(&validate_stage_id(&spec.name))?;
        for note in &stage.notes {
            tracing::warn!("export `{}`: {note}", spec.name);
        }
        let result =
            write_export(config, inputs, spec, flags.skip_check, &stage.check_skip, !flags.no_fallback)?;
        state.record(&stage.id, &stage.inputs_digest, outputs(std::slice::from_ref(&result.dir)))?;
        result
    } else {
        say_skipped(stage);
        existing_export(config, spec)?
    };
    let measured = timer.finish(stage.runs(), out_dir);
    fault::point("between-exports");
    Ok((result, measured))
}

/// Per-stage measurements of the last run (report.json holds what does not change between runs).
pub const RUN_FILE: &str = "run.json";

/// A stage about to run: stop here if the user asked to, and forget its old record first, so a
/// kill midway cannot leave a record that claims the old outputs.
fn begin(state: &StateDir, stage: &Stage) -> Result<(), Error> {
    interrupt::check()?;
    interrupt::enter(&stage.id);
    if let Action::Run { reason } = &stage.action {
        tracing::info!("{}: running ({reason})", stage.id);
    }
    state.forget(&stage.id)
}

fn say_skipped(stage: &Stage) {
    crate::monitor::status(&format!("skipped {} (unchanged since the last run)", stage.id));
}

fn outputs(paths: &[std::path::PathBuf]) -> Vec<Output> {
    paths.iter().filter_map(|p| if p.is_dir() { Output::folder(p) } else { Output::file(p) }).collect()
}

/// Validates each export whose validate stage runs (building the reference only if one does),
/// reads the others' results back, and writes report.json/.md when the report stage runs.
fn validate_stages(
    config: &Config,
    inputs: &ExportInputs<'_>,
    plan: &Plan,
    state: &StateDir,
    force: bool,
    metrics: &mut Vec<StageMetrics>,
) -> Result<ValidationReport, Error> {
    let out_dir = &config.out_dir.value;
    let mut reference = None;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut exports = Vec::new();
    for export in &config.exports {
        let spec = &export.value;
        let dir = out_dir.join(&spec.name);
        let Some(stage) = plan.stage(&validate_stage_id(&spec.name)) else { continue };
        let timer = StageTimer::start(&stage.id, out_dir);
        if stage.runs() {
            begin(state, stage)?;
            let reference = match &mut reference {
                Some(built) => &*built,
                // --force redoes the reference too.
                slot @ None => slot.insert(super::validate::cached_reference(
                    config,
                    inputs,
                    state.path(),
                    &plan.reference_digest,
                    force,
                )?),
            };
            let result = super::validate::validate_into(config, inputs, reference, spec, &dir, threads)?;
            state.record(&stage.id, &stage.inputs_digest, outputs(&stage.writes))?;
            exports.push(result);
            fault::point("validated");
        } else {
            say_skipped(stage);
            exports.push(super::validate::read_validation(&dir)?);
        }
        metrics.push(timer.finish(stage.runs(), out_dir));
    }
    // A re-run whose validate stages were all skipped has no new reference: the merge check
    // comes from the last report.
    let (merge, text) = match &reference {
        Some(r) => (r.merge.clone(), r.text.as_ref().map(crate::validate::text::TextReference::summary)),
        None => super::validate::read_report(out_dir).map_or((None, None), |r| (r.merge, r.text)),
    };
    let report = ValidationReport::new(
        super::validate::reference_name(&inputs.base.dir, inputs.detection),
        merge,
        text,
        exports,
    );
    if let Some(stage) = plan.stage(&report_stage_id()) {
        let timer = StageTimer::start(&stage.id, out_dir);
        if stage.runs() {
            begin(state, stage)?;
            super::validate::write_report(config, &report)?;
            state.record(&stage.id, &stage.inputs_digest, outputs(&stage.writes))?;
        } else {
            say_skipped(stage);
        }
        metrics.push(timer.finish(stage.runs(), out_dir));
    }
    Ok(report)
}

/// `run --dry-run`: the plan, as a table or JSON; nothing is written.
fn print_plan(ctx: &Context, plan: &Plan) -> Result<(), Error> {
    if ctx.json {
        return print_json(plan);
    }
    let mut t = table(["stage", "action", "reads", "writes", "bytes written (est.)", "peak memory (est.)"]);
    let names = |paths: &[std::path::PathBuf]| {
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n")
    };
    for s in &plan.stages {
        let action = match &s.action {
            Action::Run { reason } => format!("run ({reason})"),
            Action::Skip => "skip (unchanged)".into(),
        };
        t.add_row([
            s.id.clone(),
            action,
            names(&s.reads),
            names(&s.writes),
            human_bytes(s.estimated_bytes_written),
            human_bytes(s.estimated_peak_memory),
        ]);
    }
    println!("{t}");
    for s in plan.stages.iter().filter(|s| s.runs()) {
        for note in &s.notes {
            println!("{}: {note}", s.id);
        }
    }
    println!(
        "\nplan: {} of {} stages run, about {} to write in {}; nothing was written (--dry-run)",
        plan.stages.iter().filter(|s| s.runs()).count(),
        plan.stages.len(),
        human_bytes(plan.bytes_to_write()),
        plan.out_dir.display()
    );
    Ok(())
}

/// Wall time, peak RSS, I/O and free disk per stage.
fn print_stages(metrics: &[StageMetrics]) {
    if metrics.is_empty() {
        return;
    }
    let mut t = table(["stage", "outcome", "wall", "peak RSS", "read", "written", "free disk after"]);
    for m in metrics {
        t.add_row([
            m.stage.clone(),
            m.outcome.to_string(),
            format!("{:.2} s", m.wall_seconds),
            human_bytes(m.peak_rss_bytes),
            human_bytes(m.bytes_read),
            human_bytes(m.bytes_written),
            human_bytes(m.free_disk_after),
        ]);
    }
    println!("\nstages\n{t}");
}

/// Writes every declared export from `inputs` (entries no engine runs were refused when the
/// config was resolved, by `config::registry`).
pub fn run_exports(
    config: &Config,
    inputs: &ExportInputs<'_>,
    skip_check: bool,
) -> Result<Vec<ExportResult>, Error> {
    config
        .exports
        .iter()
        .map(|export| write_export(config, inputs, &export.value, skip_check, &[], true))
        .collect()
}

/// Writes one export into `<out-dir>/<name>`.
pub fn write_export(
    config: &Config,
    inputs: &ExportInputs<'_>,
    spec: &ExportSpec,
    skip_check: bool,
    check_skip: &[(Engine, String)],
    fallback: bool,
) -> Result<ExportResult, Error> {
    let out = config.out_dir.value.join(&spec.name);
    tracing::info!("export {}: writing {}", spec.name, out.display());
    let (manifest, dtype, checked_in, quantization, fallbacks) = match spec.format {
        Format::Safetensors => {
            let options = MergeOptions {
                dtype: spec.dtype.and_then(float_dtype),
                max_shard_size: spec.options.max_shard_size.map(|s| s.0),
                allow_non_finite: config.allow_non_finite.value,
            };
            let report = write_safetensors_folder(inputs, &options, &out)?;
            (report.manifest, report.dtype.to_string(), Vec::new(), None, Vec::new())
        }
        Format::Onnx => {
            let options = OnnxOptions {
                allow_non_finite: config.allow_non_finite.value,
                fallback,
                check_skip: check_skip.to_vec(),
                ..onnx_options(spec, inputs.weights.parameter_count(), skip_check)
            };
            let report = write_onnx_folder(inputs, &options, &out)?;
            for f in &report.fallbacks {
                crate::monitor::status(&format!("{}: fallback `{}`: {}", spec.name, f.kind, f.reason));
            }
            (
                report.manifest,
                options.precision.as_str().to_string(),
                report.checked_in,
                report.quantization,
                report.fallbacks,
            )
        }
        Format::Gguf => {
            let options = GgufOptions { dtype: spec.dtype, allow_non_finite: config.allow_non_finite.value };
            let report = write_gguf_folder(inputs, &options, &out)?;
            let types: Vec<String> = report.types.iter().map(|(t, n)| format!("{n} {t}")).collect();
            crate::monitor::status(&format!("{}: tensors {}", spec.name, types.join(", ")));
            (report.manifest, report.dtype.to_string(), Vec::new(), None, report.fallbacks)
        }
    };
    Ok(ExportResult {
        name: spec.name.clone(),
        format: spec.format,
        dtype,
        target: written_target(&manifest, spec),
        dir: out,
        bytes: manifest.files.iter().map(|f| f.size).sum(),
        files: manifest.files.len(),
        checked_in,
        quantization: quantization.map(|q| QuantSummary::of(&q)),
        fallbacks,
    })
}

/// The target the folder was written for (a fallback may have changed the configured one).
fn written_target(manifest: &crate::export::manifest::Manifest, spec: &ExportSpec) -> Option<Target> {
    manifest.provenance.options["target"].as_str().and_then(|t| t.parse().ok()).or(spec.target)
}

/// An export a previous run wrote (its stage was skipped), as its manifest describes it.
fn existing_export(config: &Config, spec: &ExportSpec) -> Result<ExportResult, Error> {
    let dir = config.out_dir.value.join(&spec.name);
    let manifest = read_manifest(&dir)?;
    let quantization = std::fs::read(dir.join(QUANT_REPORT_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<crate::quant::QuantReport>(&bytes).ok());
    // What the writer recorded: the dtype it resolved (the base's, when the entry names none).
    let dtype = manifest.provenance.options["dtype"]
        .as_str()
        .map_or_else(|| spec.dtype.map_or_else(|| "-".to_string(), |d| d.to_string()), str::to_string);
    Ok(ExportResult {
        name: spec.name.clone(),
        format: spec.format,
        dtype,
        target: written_target(&manifest, spec),
        bytes: manifest.files.iter().map(|f| f.size).sum(),
        files: manifest.files.len(),
        dir,
        checked_in: Vec::new(),
        quantization: quantization.map(|q| QuantSummary::of(&q)),
        fallbacks: serde_json::from_value(manifest.provenance.options["fallbacks"].clone())
            .unwrap_or_default(),
    })
}

/// One line per export: what was written and how it fared in each engine.
pub fn print_summary(results: &[ExportResult], report: Option<&crate::validate::report::ValidationReport>) {
    let mut t = table(["export", "format", "dtype", "size", "engines", "max error", "top-1", "verdict"]);
    for r in results {
        let validation = report.and_then(|rep| rep.exports.iter().find(|e| e.export == r.name));
        let ran: Vec<_> = validation
            .map(|v| v.engines.iter().filter(|e| e.skipped.is_none()).collect())
            .unwrap_or_default();
        let engines = ran.iter().map(|e| e.engine.as_str()).collect::<Vec<_>>().join(", ");
        let max_error = ran
            .iter()
            .filter_map(|e| e.logits.as_ref())
            .map(|m| m.max_abs_error)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let top1 = ran
            .iter()
            .filter_map(|e| e.logits.as_ref())
            .map(|m| m.top1_agreement)
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.min(x))));
        let verdict = match validation {
            None => "not validated".to_string(),
            Some(v) if v.verdict == Verdict::Passed => "pass".to_string(),
            Some(v) if v.verdict == Verdict::Unverified => {
                format!("unverified ({})", v.unverified.as_deref().unwrap_or("no engine measured it"))
            }
            Some(v) => {
                let failed: Vec<_> = v
                    .engines
                    .iter()
                    .filter(|e| e.failed())
                    .map(|e| format!("{}: {}", e.engine, e.failures.join("; ")))
                    .collect();
                format!("FAIL ({})", failed.join(" | "))
            }
        };
        t.add_row([
            r.name.clone(),
            r.format.to_string(),
            r.dtype.clone(),
            human_bytes(r.bytes),
            if engines.is_empty() { "-".into() } else { engines },
            max_error.map_or("-".into(), |e| format!("{e:.2e}")),
            top1.map_or("-".into(), |t| format!("{:.1}%", t * 100.0)),
            verdict,
        ]);
    }
    println!("{t}");
    if let Some(m) = report.and_then(|r| r.merge.as_ref()) {
        println!("{}", super::validate::merge_line(m));
    }
    if let Some(report) = report {
        super::validate::print_text(report);
    }
    let quantized: Vec<_> = results.iter().filter_map(|r| r.quantization.as_ref().map(|q| (r, q))).collect();
    if quantized.is_empty() {
        return;
    }
    let mut q = table([
        "export",
        "scheme",
        "f32 size",
        "size",
        "ratio",
        "mean rel. error",
        "max rel. error (tensor)",
    ]);
    for (r, s) in quantized {
        q.add_row([
            r.name.clone(),
            s.scheme.clone(),
            human_bytes(s.bytes_before),
            human_bytes(s.bytes_after),
            format!("{:.2}x", s.compression_ratio),
            format!("{:.2e}", s.mean_relative_error),
            format!("{:.2e} ({})", s.max_relative_error, s.worst_tensor.as_deref().unwrap_or("-")),
        ]);
    }
    println!("\nweights (before: f32; relative error ||W-Q(W)||/||W|| per tensor)\n{q}");
}
