//! Configuration: the `[package.metadata.model-export]` table (with the workspace table as
//! defaults), `MODEL_EXPORT_*` variables and command-line flags, merged with provenance.

pub mod env;
pub mod keys;
pub mod manifest;
pub mod registry;
pub mod resolve;
pub mod schema;
pub mod source;
pub mod table;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use crate::size::ByteSize;
pub use resolve::{Config, ProfileChoice, ValidateConfig};
pub use schema::{EmbeddingsMode, Engine, ExportDtype, ExportOptions, ExportSpec, Format, Target};
pub use source::{Source, Sourced};

use crate::error::ConfigError;
use resolve::{Layer, LayerKind};
use table::TableLayer;

/// Values given on the command line; they beat every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub base: Option<PathBuf>,
    pub adapter: Option<PathBuf>,
    pub out_dir: Option<PathBuf>,
    pub profile: Option<String>,
    /// `run --max-memory`.
    pub max_memory: Option<String>,
    /// `run -j`.
    pub jobs: Option<u32>,
    /// `validate --text` / `run --text`.
    pub text: Option<PathBuf>,
    /// `validate --text-context` / `run --text-context`.
    pub text_context: Option<u32>,
    /// `validate --text-chunks` / `run --text-chunks`.
    pub text_chunks: Option<u32>,
}

/// Everything `load` reads besides the files: passed in so tests control it.
pub struct LoadRequest<'a> {
    pub manifest_path: Option<&'a Path>,
    pub package: Option<&'a str>,
    pub overrides: &'a Overrides,
    pub env: &'a BTreeMap<String, String>,
    pub cwd: &'a Path,
}

pub fn load(request: &LoadRequest<'_>) -> Result<Config, ConfigError> {
    let project = manifest::read_project(request.manifest_path, request.package, request.cwd)?;
    let path_text = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
    let flags = TableLayer {
        base: path_text(&request.overrides.base),
        adapter: path_text(&request.overrides.adapter),
        out_dir: path_text(&request.overrides.out_dir),
        profile: request.overrides.profile.clone(),
        max_memory: request.overrides.max_memory.clone(),
        jobs: request.overrides.jobs,
        allow_non_finite: None,
        preset: None,
        report_template: None,
        validate: {
            let o = request.overrides;
            (o.text.is_some() || o.text_context.is_some() || o.text_chunks.is_some()).then(|| {
                table::ValidateLayer {
                    text: path_text(&o.text),
                    text_context: o.text_context,
                    text_chunks: o.text_chunks,
                    ..table::ValidateLayer::default()
                }
            })
        },
        export: None,
    };
    let mut layers = vec![
        Layer { table: flags, root: request.cwd.to_path_buf(), kind: LayerKind::Flags },
        Layer { table: env::parse_env(request.env)?, root: request.cwd.to_path_buf(), kind: LayerKind::Env },
    ];
    if let (Some(manifest), Some(value)) = (&project.package_manifest, &project.package_table) {
        let prefix = format!("package.metadata.{}", manifest::TABLE);
        let table = table::parse_table(value, &prefix, &manifest.display().to_string())?;
        let root = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
        layers.push(Layer { table, root, kind: LayerKind::Package(manifest.clone()) });
    }
    if let (Some(manifest), Some(value)) = (&project.workspace_manifest, &project.workspace_table) {
        let prefix = format!("workspace.metadata.{}", manifest::TABLE);
        let table = table::parse_table(value, &prefix, &manifest.display().to_string())?;
        let root = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
        layers.push(Layer { table, root, kind: LayerKind::Workspace(manifest.clone()) });
    }
    // A preset named by any table (or MODEL_EXPORT_PRESET) sits below every table.
    if let Some((name, origin)) = layers.iter().find_map(|l| l.table.preset.clone().map(|p| (p, l.origin())))
    {
        let preset = crate::presets::load(&name, &origin)?;
        let table =
            TableLayer { validate: preset.validate, export: Some(preset.export), ..TableLayer::default() };
        layers.push(Layer { table, root: request.cwd.to_path_buf(), kind: LayerKind::Preset(name) });
    }
    let default_out_dir =
        project.target_dir.clone().unwrap_or_else(|| request.cwd.join("target")).join("model-export");
    resolve::resolve(&layers, default_out_dir, project.package_name, project.package_manifest)
}
