//! `init`: from "I have a training run" to a `[package.metadata.model-export]` table. The
//! answers are checked as they are given (the same checks for the wizard and for flags), the
//! table is rendered from `templates/metadata-table.toml.j2`, and Cargo.toml is edited with
//! `toml_edit`, so comments, formatting and every other table stay byte for byte.

pub mod manifest_edit;
pub mod scan;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::registry::DefaultDtype;
use crate::config::schema::{ExportDtype, Format, Target};
use crate::error::{ConfigError, Error};
use crate::model::ModelFolder;
use crate::size::human_bytes;

pub const TABLE_TEMPLATE: &str = include_str!("../../templates/metadata-table.toml.j2");

/// One export chosen one by one (a preset's come from the preset).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChosenExport {
    pub name: String,
    pub format: Format,
    pub dtype: Option<ExportDtype>,
    pub target: Option<Target>,
}

/// Everything the table says.
#[derive(Debug, Clone)]
pub struct Answers {
    pub base: PathBuf,
    pub adapter: Option<PathBuf>,
    pub preset: Option<String>,
    pub exports: Vec<ChosenExport>,
    pub prompts: Vec<String>,
}

fn refuse(key: &str, message: String, help: &str) -> Error {
    ConfigError::Invalid { origin: "init".into(), key: key.into(), message, help: help.into() }.into()
}

/// The base model: a folder whose architecture has a profile.
pub fn check_base(path: &Path) -> Result<ModelFolder, Error> {
    if !path.is_dir() {
        return Err(refuse(
            "base",
            format!("`{}` does not exist or is not a folder", path.display()),
            "give a Hugging Face model folder (config.json + *.safetensors)",
        ));
    }
    Ok(ModelFolder::open(path, None)?)
}

/// The adapter or run: its newest valid checkpoint must fit `base`.
pub fn check_adapter(path: &Path, base: &ModelFolder) -> Result<crate::checkpoint::Detection, Error> {
    if !path.exists() {
        return Err(refuse(
            "adapter",
            format!("`{}` does not exist", path.display()),
            "give a PEFT adapter folder or a training output folder with checkpoint-N folders",
        ));
    }
    Ok(crate::checkpoint::detect(path, Some(base))?)
}

/// The exports of `answers` as the run will see them (a preset's, or the chosen ones).
pub fn planned_exports(answers: &Answers) -> Result<Vec<ChosenExport>, Error> {
    let mut exports = match &answers.preset {
        Some(name) => crate::presets::load(name, "init --preset")?
            .export
            .into_iter()
            .map(|e| ChosenExport { name: e.name, format: e.format, dtype: e.dtype, target: e.target })
            .collect(),
        None => Vec::new(),
    };
    exports.extend(answers.exports.iter().cloned());
    Ok(exports)
}

/// Bytes the exports (and the f32 merge they share) will write, roughly.
pub fn estimated_bytes(base: &ModelFolder, exports: &[ChosenExport], merged: bool) -> u64 {
    let parameters = base.parameter_count();
    let per = |dtype: Option<ExportDtype>, format: Format| -> f64 {
        match (dtype, format.info().default_dtype) {
            (Some(d), _) | (None, DefaultDtype::Fixed(d)) => d.scheme().bytes_per_weight,
            (None, DefaultDtype::Base) => base.storage_dtype().size_in_bytes() as f64,
        }
    };
    let exports: f64 = exports.iter().map(|e| per(e.dtype, e.format) * parameters as f64).sum();
    let merge = if merged { 4.0 * parameters as f64 } else { 0.0 };
    (exports + merge) as u64
}

/// Refuses exports that do not fit on the filesystem of `out_dir`.
pub fn check_disk(
    base: &ModelFolder,
    exports: &[ChosenExport],
    merged: bool,
    out_dir: &Path,
) -> Result<(), Error> {
    let needed = estimated_bytes(base, exports, merged);
    let existing = out_dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("."));
    let Ok(free) = crate::pipeline::preflight::free_bytes(existing) else { return Ok(()) };
    if needed > free {
        return Err(refuse(
            "export",
            format!(
                "these exports need about {} in {}, {} is free",
                human_bytes(needed),
                existing.display(),
                human_bytes(free)
            ),
            "choose fewer or smaller exports (int4, f16), or free space",
        ));
    }
    Ok(())
}

/// A path as the table should hold it: relative to the manifest's folder when inside it.
pub fn table_path(path: &Path, manifest_dir: &Path) -> String {
    let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let root = std::fs::canonicalize(manifest_dir).unwrap_or_else(|_| manifest_dir.to_path_buf());
    match absolute.strip_prefix(&root) {
        Ok(relative) if !relative.as_os_str().is_empty() => relative.display().to_string(),
        _ => absolute.display().to_string(),
    }
}

/// A string or a list of strings as a TOML value (quoted and escaped as TOML wants).
fn toml_value(value: minijinja::Value) -> Result<String, minijinja::Error> {
    if let Some(text) = value.as_str() {
        return Ok(toml_edit::Value::from(text).to_string());
    }
    let items: Vec<String> =
        value.try_iter()?.map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect();
    Ok(toml_edit::Value::Array(items.iter().map(String::as_str).collect()).to_string())
}

/// The table text for `answers`, rendered from the template.
pub fn render_table(answers: &Answers, manifest_dir: &Path) -> Result<String, Error> {
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.add_filter("toml", toml_value);
    let failed = |e: minijinja::Error| {
        refuse("init", format!("the table template does not render: {e}"), "this is a bug: please report it")
    };
    env.add_template("table", TABLE_TEMPLATE).map_err(failed)?;
    let exports: Vec<_> = answers
        .exports
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": e.name,
                "format": e.format.as_str(),
                "dtype": e.dtype.map(|d| d.as_str()),
                "target": e.target.map(|t| t.as_str()),
            })
        })
        .collect();
    env.get_template("table")
        .and_then(|t| {
            t.render(minijinja::context! {
                base => table_path(&answers.base, manifest_dir),
                adapter => answers.adapter.as_ref().map(|a| table_path(a, manifest_dir)),
                preset => answers.preset,
                exports => exports,
                prompts => answers.prompts,
            })
        })
        .map_err(failed)
}
