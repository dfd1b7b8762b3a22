//! Folders the tool may replace: only ones it wrote (their `manifest.json` names this tool) or
//! empty ones. A user's folder is refused unless `--force`; the base, the adapter or training
//! run, and any folder that holds one of them are never a destination, with or without it.

use std::path::{Path, PathBuf};

use crate::error::{Error, PipelineError};
use crate::export::manifest::MANIFEST;

/// An input the tool must never overwrite: (what it is, where).
pub type Protected<'a> = (&'a str, &'a Path);

/// The inputs of a run: the base, and the adapter source (run or adapter folder) and the
/// checkpoint it chose.
pub fn protected_inputs<'a>(
    base: &'a Path,
    detection: Option<&'a crate::checkpoint::Detection>,
) -> Vec<Protected<'a>> {
    let mut inputs = vec![("the base model", base)];
    if let Some(d) = detection {
        inputs.push(("the adapter", d.source.as_path()));
        inputs.push(("the adapter checkpoint", d.chosen.as_path()));
    }
    inputs
}

/// `path` made absolute and free of `..` and symlinks as far as it exists.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(p) = path.canonicalize() {
        return p;
    }
    // Not there yet: resolve the deepest existing ancestor and keep the rest.
    let mut rest = Vec::new();
    let mut current = path.to_path_buf();
    loop {
        if let Ok(p) = current.canonicalize() {
            return rest.iter().rev().fold(p, |acc: PathBuf, part| acc.join(part));
        }
        match (current.file_name().map(ToOwned::to_owned), current.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                current = parent.to_path_buf();
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// Whether `dir` holds a manifest this tool wrote.
pub fn written_by_us(dir: &Path) -> bool {
    crate::export::manifest::read_manifest(dir).is_ok_and(|m| m.tool == env!("CARGO_PKG_NAME"))
}

fn refuse(dir: &Path, message: String, help: String) -> Error {
    PipelineError::Destination { dir: dir.to_path_buf(), message, help }.into()
}

/// Checks that `out` may be replaced. `force` allows a folder the tool did not write, never an
/// input or a folder that contains one.
pub fn check_destination(out: &Path, protected: &[Protected<'_>], force: bool) -> Result<(), Error> {
    let target = resolved(out);
    for (what, input) in protected {
        let input = resolved(input);
        if input.starts_with(&target) {
            let relation = if input == target { "is" } else { "contains" };
            return Err(refuse(
                out,
                format!("{relation} {what} ({})", input.display()),
                "choose another destination: the tool never replaces its inputs or a folder that holds them, with or without --force".into(),
            ));
        }
    }
    let Ok(meta) = std::fs::symlink_metadata(out) else { return Ok(()) };
    if !meta.is_dir() {
        return Err(refuse(
            out,
            "is a file, not a folder".into(),
            "remove or rename it, or choose another destination".into(),
        ));
    }
    if written_by_us(out) {
        return Ok(());
    }
    if force {
        tracing::warn!("replacing {} (not written by this tool) because of --force", out.display());
        return Ok(());
    }
    let mut entries: Vec<String> = std::fs::read_dir(out)
        .map_err(|e| Error::write(out, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    entries.sort();
    let shown = entries.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    let more = if entries.len() > 5 { format!(" and {} more", entries.len() - 5) } else { String::new() };
    Err(refuse(
        out,
        format!(
            "exists and was not written by this tool (no {MANIFEST} of {}): it holds {shown}{more}",
            env!("CARGO_PKG_NAME")
        ),
        "choose another destination, empty the folder, or pass --force to replace it (its contents are deleted)".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_and_their_parents_are_never_destinations_and_user_folders_need_force() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("models/base");
        std::fs::create_dir_all(&base).unwrap();
        let protected = [("the base model", base.as_path())];
        for out in [base.clone(), dir.path().join("models"), base.join("..")] {
            for force in [false, true] {
                let err = check_destination(&out, &protected, force).unwrap_err().to_string();
                assert!(err.contains("the base model"), "{err}");
            }
        }
        let user = dir.path().join("user");
        std::fs::create_dir_all(&user).unwrap();
        assert!(check_destination(&user, &protected, false).is_ok(), "an empty folder may be used");
        std::fs::write(user.join("notes.txt"), "mine").unwrap();
        let err = check_destination(&user, &protected, false).unwrap_err().to_string();
        assert!(err.contains("it holds notes.txt"), "{err}");
        assert!(check_destination(&user, &protected, true).is_ok());
        assert!(check_destination(&dir.path().join("new/folder"), &protected, false).is_ok());
        // Inside the base is not the base: the out-dir key has its own rule for that.
        assert!(check_destination(&base.join("merged"), &protected, false).is_ok());
    }
}
