//! Validation of written exports against the candle reference, and the reports.

use std::path::{Path, PathBuf};

use super::Context;
use super::output::{print_json, table};
use crate::config::ExportSpec;
use crate::config::{Config, Overrides};
use crate::error::{ConfigError, Error};
use crate::export::ExportInputs;
use crate::fsutil::{atomic_write, write_json};
use crate::validate::report::{ExportValidation, ValidationReport, Verdict};
use crate::validate::text::{EvalText, TextReference};
use crate::validate::{Reference, build_reference, validate_export};

/// The folder of a finished export (one with its manifest), or an error saying to run first.
pub fn finished_export_dir(config: &Config, name: &str) -> Result<PathBuf, ConfigError> {
    let dir = config.out_dir.value.join(name);
    if dir.join("manifest.json").is_file() {
        return Ok(dir);
    }
    Err(ConfigError::Invalid {
        origin: config.origin(),
        key: format!("export `{name}`"),
        message: format!("{} holds no finished export", dir.display()),
        help: "run `cargo model-export run` first (it writes and validates every export)".into(),
    })
}

/// Validates every declared export found in out-dir against the reference made from `inputs`,
/// writes validation.json/.md into each and report.json/.md into out-dir.
pub fn validate_exports(config: &Config, inputs: &ExportInputs<'_>) -> Result<ValidationReport, Error> {
    let (base, detection) = (inputs.base, inputs.detection);
    for export in &config.exports {
        finished_export_dir(config, &export.value.name)?;
    }
    let key = crate::pipeline::reference_key(config, base, detection)?;
    let reference = cached_reference(config, inputs, &config.out_dir.value.join(".state"), &key, false)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut exports = Vec::new();
    for export in &config.exports {
        let dir = config.out_dir.value.join(&export.value.name);
        exports.push(validate_into(config, inputs, &reference, &export.value, &dir, threads)?);
    }
    let report = ValidationReport::new(
        reference_name(&base.dir, detection),
        reference.merge.clone(),
        reference.text.as_ref().map(TextReference::summary),
        exports,
    );
    write_report(config, &report)?;
    Ok(report)
}

/// The reference cached in `state` for inputs with `key` (unless `force`), else computed and
/// cached there (when the state folder exists).
pub fn cached_reference(
    config: &Config,
    inputs: &ExportInputs<'_>,
    state: &Path,
    key: &str,
    force: bool,
) -> Result<Reference, Error> {
    if let Some(cached) = crate::validate::cache::load(state, key).filter(|_| !force) {
        tracing::info!("reference: the run cached in {} (same weights and prompts)", state.display());
        return Ok(cached);
    }
    crate::pipeline::fault::point("reference");
    let v = &config.validate;
    let text = EvalText::configured(config, inputs.base, inputs.detection)?;
    let built = build_reference(
        inputs,
        &v.prompts.value,
        v.chat_template.value,
        v.max_new_tokens.value as usize,
        text,
    )?;
    if state.is_dir() {
        crate::validate::cache::save(state, key, &built)?;
    }
    Ok(built)
}

/// Validates one export and writes its validation.json/.md.
pub fn validate_into(
    config: &Config,
    inputs: &ExportInputs<'_>,
    reference: &Reference,
    spec: &ExportSpec,
    dir: &Path,
    threads: usize,
) -> Result<ExportValidation, Error> {
    let v = &config.validate;
    let memory_limit = config.max_memory.value.map(|b| b.0).or_else(crate::monitor::available_memory);
    let result = validate_export(reference, inputs.base, spec, dir, &v.engines.value, threads, memory_limit)?;
    let single = ValidationReport::new(
        reference_name(&inputs.base.dir, inputs.detection),
        reference.merge.clone(),
        reference.text.as_ref().map(TextReference::summary),
        vec![result.clone()],
    );
    write_json(&dir.join("validation.json"), &single)?;
    let markdown = crate::validate::markdown::render(&single, config.report_template.value.as_deref())?;
    atomic_write(&dir.join("validation.md"), markdown.as_bytes())?;
    Ok(result)
}

/// The result a previous run wrote into an export's validation.json.
pub fn read_validation(dir: &Path) -> Result<ExportValidation, Error> {
    let path = dir.join("validation.json");
    let bytes = std::fs::read(&path).map_err(|e| Error::write(&path, e))?;
    let report: ValidationReport =
        serde_json::from_slice(&bytes).map_err(|e| Error::write(&path, std::io::Error::other(e)))?;
    report
        .exports
        .into_iter()
        .next()
        .ok_or_else(|| Error::write(&path, std::io::Error::other("holds no export")))
}

/// The report.json a previous run wrote into out-dir, if it reads.
pub fn read_report(out_dir: &Path) -> Option<ValidationReport> {
    serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).ok()?).ok()
}

/// report.json and report.md in out-dir.
pub fn write_report(config: &Config, report: &ValidationReport) -> Result<(), Error> {
    let out_dir = &config.out_dir.value;
    std::fs::create_dir_all(out_dir).map_err(|e| Error::write(out_dir, e))?;
    write_json(&out_dir.join("report.json"), report)?;
    crate::pipeline::fault::point("report");
    let markdown = crate::validate::markdown::render(report, config.report_template.value.as_deref())?;
    atomic_write(&out_dir.join("report.md"), markdown.as_bytes())
}

pub fn reference_name(base: &std::path::Path, detection: Option<&crate::checkpoint::Detection>) -> String {
    match detection {
        Some(d) => {
            format!("candle, f32, {} with {} unmerged (peft's forward)", base.display(), d.chosen.display())
        }
        None => format!("candle, f32, {}", base.display()),
    }
}

/// One line for merged vs unmerged.
pub fn merge_line(m: &crate::validate::report::MergeCheck) -> String {
    format!(
        "merged vs unmerged (the merged f32 model against the base with the adapter unmerged): max abs {:.2e}, relative {:.2e} (bound {:.0e}), top-1 {:.1}%{}",
        m.max_abs_error,
        m.relative_error,
        m.max_relative_error,
        m.top1_agreement * 100.0,
        if m.passed { "" } else { " — FAIL: the merge does not reproduce the adapter" }
    )
}

pub fn print_report(report: &ValidationReport) {
    let mut t = table(["export", "engine", "max abs error", "cosine", "top-1", "greedy", "verdict"]);
    for e in &report.exports {
        for r in &e.engines {
            let (max, cos, top1) = match &r.logits {
                Some(m) => (
                    format!("{:.2e}", m.max_abs_error),
                    format!("{:.6}", m.cosine),
                    format!("{:.1}%", m.top1_agreement * 100.0),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let greedy = match (r.greedy_match, r.first_divergence) {
                (Some(true), _) => "identical".to_string(),
                (Some(false), Some((row, at))) => format!("differs at prompt {row} token {at}"),
                _ => "-".into(),
            };
            let verdict = match (&r.skipped, r.passed) {
                (Some(why), _) => format!("skipped ({why})"),
                (None, true) => "pass".into(),
                (None, false) => format!("FAIL: {}", r.failures.join("; ")),
            };
            t.add_row([e.export.clone(), r.engine.clone(), max, cos, top1, greedy, verdict]);
        }
        if e.verdict == Verdict::Unverified {
            let why = e.unverified.clone().unwrap_or_default();
            t.add_row([
                e.export.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("unverified: {why}"),
            ]);
        }
    }
    println!("{t}");
    if let Some(m) = &report.merge {
        println!("{}", merge_line(m));
    }
    print_text(report);
}

/// The evaluation text's table (as llama-perplexity --kl-divergence reports it), if one was scored.
pub fn print_text(report: &ValidationReport) {
    let Some(text) = &report.text else { return };
    let mut t = table(["export", "engine", "perplexity", "change", "mean KL", "KL p99", "same top-1"]);
    for e in &report.exports {
        for r in &e.engines {
            if let Some(m) = &r.text {
                t.add_row([
                    e.export.clone(),
                    r.engine.clone(),
                    format!("{:.4}", m.perplexity),
                    format!("{:+.3}%", m.perplexity_change * 100.0),
                    format!("{:.2e}", m.mean_kl),
                    format!("{:.2e}", m.kl_p99),
                    format!("{:.1}%", m.top1_agreement * 100.0),
                ]);
            }
        }
    }
    println!(
        "\ntext {} ({} tokens; {} chunks of {}, {} positions scored): reference perplexity {:.4}\n{t}",
        text.path, text.tokens, text.chunks, text.context, text.scored, text.perplexity
    );
}

/// Fails the command when the report does: a failed export or merge check, or an export no
/// engine measured (unless `allow_unverified`).
pub fn verdict(config: &Config, report: &ValidationReport, allow_unverified: bool) -> Result<(), Error> {
    let report_path = config.out_dir.value.join("report.md");
    let mut failed: Vec<String> = report
        .exports
        .iter()
        .filter(|e| e.verdict == Verdict::Failed)
        .flat_map(|e| {
            e.engines.iter().filter(|r| r.failed()).map(move |r| format!("{} in {}", e.export, r.engine))
        })
        .collect();
    if let Some(m) = report.merge.as_ref().filter(|m| !m.passed) {
        failed.push(format!(
            "the merge (merged vs unmerged: relative error {:.2e} > {:.0e})",
            m.relative_error, m.max_relative_error
        ));
    }
    if !failed.is_empty() {
        return Err(Error::ValidationFailed { failed, report: report_path });
    }
    let unverified: Vec<String> = report
        .exports
        .iter()
        .filter(|e| e.verdict == Verdict::Unverified)
        .map(|e| format!("{} ({})", e.export, e.unverified.as_deref().unwrap_or("no engine measured it")))
        .collect();
    if unverified.is_empty() || allow_unverified {
        for e in &unverified {
            tracing::warn!("unverified: {e}");
        }
        return Ok(());
    }
    Err(Error::Unverified { exports: unverified, report: report_path })
}

pub fn run(ctx: &Context, overrides: &Overrides, allow_unverified: bool) -> Result<(), Error> {
    let config = ctx.load_config(overrides)?;
    let (base, detection) = super::detect::open_inputs(&config)?;
    let report = validate_exports(&config, &ExportInputs::from_base(&base, detection.as_ref()))?;
    if ctx.json {
        print_json(&report)?;
    } else {
        print_report(&report);
        println!("\nreport: {}", PathBuf::from(&config.out_dir.value).join("report.md").display());
    }
    verdict(&config, &report, allow_unverified)
}
