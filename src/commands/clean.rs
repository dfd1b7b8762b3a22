//! `clean`: removes the run state and partial outputs of out-dir; finished exports only when asked.

use std::path::{Path, PathBuf};

use super::Context;
use super::output::print_json;
use crate::cli::CleanArgs;
use crate::error::Error;
use crate::pipeline::lock::RunLock;
use crate::pipeline::state::StateDir;
use crate::size::human_bytes;

pub fn run(ctx: &Context, args: &CleanArgs) -> Result<(), Error> {
    let config = ctx.load_config(&(&args.overrides).into())?;
    let out_dir = config.out_dir.value.clone();
    let mut removed: Vec<(PathBuf, u64)> = Vec::new();
    if out_dir.is_dir() {
        let state = StateDir::new(&out_dir);
        let had_state = state.path().exists();
        // Holding the lock refuses to clean under a running `run`; released before .state goes.
        let lock = RunLock::acquire(state.path())?;
        for leftover in state.remove_leftovers(&out_dir)? {
            removed.push((leftover, 0));
        }
        let mut targets = vec![out_dir.join(super::run::RUN_FILE)];
        if args.exports {
            let mut protected = crate::export::destination::protected_inputs(&config.base.value, None);
            if let Some(adapter) = &config.adapter.value {
                protected.push(("the adapter", adapter.as_path()));
            }
            for export in &config.exports {
                let dir = out_dir.join(&export.value.name);
                crate::export::destination::check_destination(&dir, &protected, args.force)?;
            }
            targets.extend(config.exports.iter().map(|e| out_dir.join(&e.value.name)));
            targets.extend(["report.json", "report.md"].map(|f| out_dir.join(f)));
        }
        for target in targets.into_iter().filter(|t| t.exists()) {
            let bytes = size_of(&target);
            remove(&target)?;
            removed.push((target, bytes));
        }
        drop(lock);
        let bytes = size_of(state.path());
        remove(state.path())?;
        if had_state {
            removed.push((state.path().to_path_buf(), bytes));
        }
    }
    let freed: u64 = removed.iter().map(|(_, b)| b).sum();
    if ctx.json {
        let paths: Vec<_> = removed.iter().map(|(p, _)| p.display().to_string()).collect();
        return print_json(&serde_json::json!({ "removed": paths, "bytes_freed": freed }));
    }
    if removed.is_empty() {
        println!("nothing to clean in {}", out_dir.display());
    }
    for (path, bytes) in &removed {
        println!("removed {} ({})", path.display(), human_bytes(*bytes));
    }
    if !removed.is_empty() {
        println!("freed {}", human_bytes(freed));
    }
    Ok(())
}

fn remove(path: &Path) -> Result<(), Error> {
    let result = if path.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
    result.map_err(|e| Error::write(path, e))
}

/// Bytes under `path` (files only; what removing it frees).
fn size_of(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).into_iter().flatten().flatten().map(|e| size_of(&e.path())).sum()
}
