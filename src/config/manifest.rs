//! Finding the Cargo project and its metadata tables through `cargo metadata`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::ConfigError;

pub const TABLE: &str = "model-export";

/// The tables that hold configuration, with the manifests they were read from.
#[derive(Debug, Default)]
pub struct ProjectTables {
    pub package_name: Option<String>,
    pub package_manifest: Option<PathBuf>,
    pub package_table: Option<Value>,
    pub workspace_manifest: Option<PathBuf>,
    pub workspace_table: Option<Value>,
    pub target_dir: Option<PathBuf>,
}

/// The nearest Cargo.toml from `start` upwards.
pub fn find_manifest(start: &Path) -> Option<PathBuf> {
    start.ancestors().map(|dir| dir.join("Cargo.toml")).find(|p| p.is_file())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Reads the project's tables; `manifest` is explicit or found from the working directory.
pub fn read_project(
    manifest: Option<&Path>,
    package: Option<&str>,
    cwd: &Path,
) -> Result<ProjectTables, ConfigError> {
    let manifest = match manifest {
        Some(m) => {
            let m = if m.is_absolute() { m.to_path_buf() } else { cwd.join(m) };
            if !m.is_file() {
                return Err(ConfigError::Invalid {
                    origin: "the command line".into(),
                    key: "--manifest-path".into(),
                    message: format!("{} does not exist", m.display()),
                    help: "point --manifest-path at a Cargo.toml".into(),
                });
            }
            m
        }
        None => match find_manifest(cwd) {
            Some(m) => m,
            // Outside any project: flags and environment variables still configure the tool.
            None => return Ok(ProjectTables::default()),
        },
    };
    let metadata = cargo_metadata::MetadataCommand::new()
        .manifest_path(&manifest)
        .no_deps()
        .other_options(vec!["--offline".to_string()])
        .exec()
        .map_err(|e| ConfigError::Metadata { manifest: manifest.clone(), message: metadata_message(e) })?;

    let workspace_manifest = metadata.workspace_root.as_std_path().join("Cargo.toml");
    let workspace_table = metadata.workspace_metadata.get(TABLE).cloned();
    let members: Vec<&cargo_metadata::Package> = metadata.workspace_packages();
    let chosen = match package {
        Some(name) => Some(members.iter().find(|p| p.name.as_str() == name).ok_or_else(|| {
            ConfigError::UnknownPackage {
                name: name.to_string(),
                manifest: manifest.clone(),
                available: members.iter().map(|p| p.name.to_string()).collect(),
            }
        })?),
        None => match members.iter().find(|p| same_file(p.manifest_path.as_std_path(), &manifest)) {
            Some(p) => Some(p),
            None => {
                // A virtual workspace root: take the one member that declares a table.
                let with_table: Vec<_> = members.iter().filter(|p| p.metadata.get(TABLE).is_some()).collect();
                match with_table.as_slice() {
                    [] => None,
                    [one] => Some(*one),
                    many => {
                        return Err(ConfigError::AmbiguousPackage {
                            manifest: manifest.clone(),
                            candidates: many.iter().map(|p| p.name.to_string()).collect(),
                        });
                    }
                }
            }
        },
    };
    Ok(ProjectTables {
        package_name: chosen.map(|p| p.name.to_string()),
        package_manifest: chosen.map(|p| p.manifest_path.as_std_path().to_path_buf()),
        package_table: chosen.and_then(|p| p.metadata.get(TABLE).cloned()),
        workspace_manifest: Some(workspace_manifest),
        workspace_table,
        target_dir: Some(metadata.target_directory.as_std_path().to_path_buf()),
    })
}

fn metadata_message(e: cargo_metadata::Error) -> String {
    match e {
        cargo_metadata::Error::CargoMetadata { stderr } => {
            stderr.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("\n  ")
        }
        other => other.to_string(),
    }
}
