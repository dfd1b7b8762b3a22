//! What `init` finds around the project: model folders (config.json + safetensors) and
//! adapters or training runs, each described as `inspect` and `detect` would.

use std::path::{Path, PathBuf};

use crate::checkpoint::adapter::looks_like_adapter;
use crate::checkpoint::detect::list_checkpoints;
use crate::model::ModelFolder;
use crate::model::folder::looks_like_model;

/// Folders deeper than this below a search root are not looked at.
const MAX_DEPTH: usize = 4;

#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub path: PathBuf,
    /// One line: architecture, parameters, dtype; or checkpoints and the newest valid one.
    pub summary: String,
}

#[derive(Debug, Default)]
pub struct Found {
    pub models: Vec<Candidate>,
    pub adapters: Vec<Candidate>,
}

fn is_hidden_or_build(name: &str) -> bool {
    name.starts_with('.') || name == "target" || name == "node_modules"
}

fn walk(dir: &Path, depth: usize, found: &mut Found) {
    if looks_like_model(dir) {
        found.models.push(Candidate { path: dir.to_path_buf(), summary: describe_model(dir) });
        return;
    }
    if looks_like_adapter(dir) {
        found.adapters.push(Candidate { path: dir.to_path_buf(), summary: describe_adapter(dir) });
        return;
    }
    if let Ok(checkpoints) = list_checkpoints(dir)
        && !checkpoints.is_empty()
    {
        found
            .adapters
            .push(Candidate { path: dir.to_path_buf(), summary: describe_run(dir, checkpoints.len()) });
        return;
    }
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut children: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| !is_hidden_or_build(&e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    children.sort();
    for child in children {
        walk(&child, depth - 1, found);
    }
}

/// Models and adapters under each of `roots` (sorted by path, each found once).
pub fn scan(roots: &[PathBuf]) -> Found {
    let mut found = Found::default();
    for root in roots {
        walk(root, MAX_DEPTH, &mut found);
    }
    for list in [&mut found.models, &mut found.adapters] {
        list.sort_by(|a, b| a.path.cmp(&b.path));
        list.dedup_by(|a, b| a.path == b.path);
    }
    found
}

pub fn describe_model(dir: &Path) -> String {
    match ModelFolder::open(dir, None) {
        Ok(m) => {
            format!("{}, {} parameters, {}", m.config.model_type, m.parameter_count(), m.storage_dtype())
        }
        Err(e) => format!("unusable: {e}"),
    }
}

fn describe_adapter(dir: &Path) -> String {
    match crate::checkpoint::Adapter::open(dir) {
        Ok(a) => format!("PEFT adapter, r = {}", a.config.r),
        Err(e) => format!("unusable adapter: {e}"),
    }
}

fn describe_run(dir: &Path, checkpoints: usize) -> String {
    match crate::checkpoint::detect(dir, None) {
        Ok(d) => format!(
            "training run, {checkpoints} checkpoints, newest valid: {}",
            d.chosen.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        ),
        Err(e) => format!("training run, {checkpoints} checkpoints, none usable: {e}"),
    }
}
