use serde::Serialize;

use super::Context;
use super::output::{print_json, table};
use crate::config::size::human_bytes;
use crate::config::{ExportDtype, Format, Overrides};
use crate::error::ConfigError;
use crate::error::Error;
use crate::export::safetensors::{MergeOptions, write_merged_folder};
use crate::model::TensorDtype;

#[derive(Serialize)]
struct ExportResult<'a> {
    name: &'a str,
    format: Format,
    #[serde(flatten)]
    merge: super::merge::MergeSummary<'a>,
}

fn float_dtype(dtype: ExportDtype) -> Option<TensorDtype> {
    match dtype {
        ExportDtype::F32 => Some(TensorDtype::F32),
        ExportDtype::F16 => Some(TensorDtype::F16),
        ExportDtype::Bf16 => Some(TensorDtype::BF16),
        ExportDtype::Int8 | ExportDtype::Int4 => None,
    }
}

pub fn run(ctx: &Context, overrides: &Overrides) -> Result<(), Error> {
    let config = ctx.load_config(overrides)?;
    // Refuse what this version cannot write before writing anything.
    if let Some(export) = config.exports.iter().find(|e| e.value.format != Format::Safetensors) {
        return Err(ConfigError::Invalid {
            origin: config.manifest.as_ref().map_or("the command line".into(), |m| m.display().to_string()),
            key: format!("export `{}`.format", export.value.name),
            message: format!(
                "this version of cargo-model-export writes safetensors exports only, not {}",
                export.value.format
            ),
            help: "remove the entry or change its format to \"safetensors\"".into(),
        }
        .into());
    }
    if config.exports.is_empty() {
        tracing::warn!("no [[package.metadata.model-export.export]] entries: nothing to do");
    }
    let (base, detection) = super::detect::open_inputs(&config)?;
    let mut reports = Vec::new();
    for export in &config.exports {
        let spec = &export.value;
        let options = MergeOptions {
            dtype: spec.dtype.and_then(float_dtype),
            max_shard_size: spec.options.max_shard_size.map(|s| s.0),
        };
        let out = config.out_dir.value.join(&spec.name);
        tracing::info!("export {}: writing {}", spec.name, out.display());
        reports.push((spec, write_merged_folder(&base, detection.as_ref(), &options, &out)?));
    }
    let results: Vec<ExportResult<'_>> = reports
        .iter()
        .map(|(spec, report)| ExportResult {
            name: &spec.name,
            format: spec.format,
            merge: super::merge::summary(report),
        })
        .collect();
    if ctx.json {
        return print_json(&results);
    }
    let mut t = table(["export", "format", "dtype", "size", "files", "folder"]);
    for r in &results {
        t.add_row([
            r.name.to_string(),
            r.format.to_string(),
            r.merge.dtype.clone(),
            human_bytes(r.merge.bytes),
            r.merge.files.len().to_string(),
            r.merge.dir.display().to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}
