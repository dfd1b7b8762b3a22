use serde::Serialize;

use super::Context;
use super::output::{print_json, table};
use crate::checkpoint::Detection;
use crate::config::size::human_bytes;
use crate::config::{Config, ExportDtype, ExportSpec, Format, Overrides, Target};
use crate::error::{ConfigError, Error};
use crate::export::ExportInputs;
use crate::export::onnx::{OnnxOptions, OnnxPrecision, write_onnx_folder};
use crate::export::safetensors::{MergeOptions, write_merged_folder, write_safetensors_folder};
use crate::model::ModelFolder;
use crate::model::TensorDtype;

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
}

fn float_dtype(dtype: ExportDtype) -> Option<TensorDtype> {
    match dtype {
        ExportDtype::F32 => Some(TensorDtype::F32),
        ExportDtype::F16 => Some(TensorDtype::F16),
        ExportDtype::Bf16 => Some(TensorDtype::BF16),
        ExportDtype::Int8 | ExportDtype::Int4 => None,
    }
}

/// Refuses, before anything is written, an export this version cannot produce.
fn check_supported(config: &Config, spec: &ExportSpec) -> Result<(), ConfigError> {
    let unsupported = match (spec.format, spec.dtype, spec.target) {
        (Format::Onnx, Some(ExportDtype::Int8 | ExportDtype::Int4), _) => Some((
            "dtype",
            "quantized ONNX exports (int8/int4) are not available in this version; use f32 or f16",
        )),
        (Format::Onnx, Some(ExportDtype::Bf16), _) => {
            Some(("dtype", "bf16 ONNX is not run by tract or ONNX Runtime's CPU provider: use f32 or f16"))
        }
        (Format::Onnx, _, Some(Target::Ort)) => Some((
            "target",
            "the `ort` target (fused ONNX Runtime operators) is not available in this version; use `portable`",
        )),
        _ => None,
    };
    match unsupported {
        Some((key, message)) => Err(ConfigError::Invalid {
            origin: config.origin(),
            key: format!("export `{}`.{key}", spec.name),
            message: message.into(),
            help: "change the entry, or remove it to run the others".into(),
        }),
        None => Ok(()),
    }
}

pub fn run(ctx: &Context, overrides: &Overrides, skip_check: bool) -> Result<(), Error> {
    let config = ctx.load_config(overrides)?;
    for export in &config.exports {
        check_supported(&config, &export.value)?;
    }
    let (base, detection) = super::detect::open_inputs(&config)?;
    let merged = merge_once(&config, &base, detection.as_ref())?;
    let inputs = export_inputs(&base, detection.as_ref(), merged.as_ref());
    let results = run_exports(&config, &inputs, skip_check)?;
    let report = if config.exports.is_empty() {
        None
    } else {
        Some(super::validate::validate_exports(&config, &inputs)?)
    };
    if ctx.json {
        print_json(&serde_json::json!({ "exports": results, "validation": report }))?;
    } else {
        print_summary(&results, report.as_ref());
        if report.is_some() {
            println!("\nreport: {}", config.out_dir.value.join("report.md").display());
        }
    }
    match &report {
        Some(report) => super::validate::verdict(&config, report),
        None => Ok(()),
    }
}

/// Merges the adapter once, in f32, into `<out-dir>/.state/merged`: every export and the
/// validation reference then read that one merge (exports convert it; nothing is merged twice).
pub fn merge_once(
    config: &Config,
    base: &ModelFolder,
    detection: Option<&Detection>,
) -> Result<Option<ModelFolder>, Error> {
    let Some(detection) = detection else { return Ok(None) };
    if config.exports.is_empty() {
        return Ok(None);
    }
    let dir = config.out_dir.value.join(".state").join("merged");
    let options = MergeOptions { dtype: Some(TensorDtype::F32), max_shard_size: None };
    write_merged_folder(base, Some(detection), &options, &dir)?;
    tracing::info!("merged {} once into {}", detection.chosen.display(), dir.display());
    Ok(Some(ModelFolder::open(&dir, Some(base.profile))?))
}

/// The exports' inputs: the one merge when there is one, else the base itself.
pub fn export_inputs<'a>(
    base: &'a ModelFolder,
    detection: Option<&'a Detection>,
    merged: Option<&'a ModelFolder>,
) -> ExportInputs<'a> {
    match merged {
        Some(weights) => ExportInputs { weights, adapter: None, base, detection },
        None => ExportInputs::from_base(base, detection),
    }
}

/// Writes every declared export from `inputs`, refusing unsupported entries before anything is written.
pub fn run_exports(
    config: &Config,
    inputs: &ExportInputs<'_>,
    skip_check: bool,
) -> Result<Vec<ExportResult>, Error> {
    for export in &config.exports {
        check_supported(config, &export.value)?;
    }
    if config.exports.is_empty() {
        tracing::warn!("no [[package.metadata.model-export.export]] entries: nothing to do");
    }
    let mut results = Vec::new();
    for export in &config.exports {
        let spec = &export.value;
        let out = config.out_dir.value.join(&spec.name);
        tracing::info!("export {}: writing {}", spec.name, out.display());
        let (manifest, dtype, checked_in) = match spec.format {
            Format::Safetensors => {
                let options = MergeOptions {
                    dtype: spec.dtype.and_then(float_dtype),
                    max_shard_size: spec.options.max_shard_size.map(|s| s.0),
                };
                let report = write_safetensors_folder(inputs, &options, &out)?;
                (report.manifest, report.dtype.to_string(), Vec::new())
            }
            Format::Onnx => {
                let precision = if spec.dtype == Some(ExportDtype::F16) {
                    OnnxPrecision::F16
                } else {
                    OnnxPrecision::F32
                };
                let options = OnnxOptions {
                    precision,
                    opset: spec.options.opset.map_or(crate::export::onnx::folder::DEFAULT_OPSET, i64::from),
                    external_data: spec.options.external_data,
                    threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                    check: !skip_check,
                };
                let report = write_onnx_folder(inputs, &options, &out)?;
                let dtype = if precision == OnnxPrecision::F16 { "f16" } else { "f32" };
                (report.manifest, dtype.to_string(), report.checked_in)
            }
        };
        results.push(ExportResult {
            name: spec.name.clone(),
            format: spec.format,
            dtype,
            target: spec.target,
            dir: out,
            bytes: manifest.files.iter().map(|f| f.size).sum(),
            files: manifest.files.len(),
            checked_in,
        });
    }
    Ok(results)
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
            Some(v) if v.passed => "pass".to_string(),
            Some(v) => {
                let failed: Vec<_> = v
                    .engines
                    .iter()
                    .filter(|e| !e.passed)
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
}
