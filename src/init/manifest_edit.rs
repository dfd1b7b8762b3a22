//! Adding the table to Cargo.toml: parsed with `toml_edit` (which writes an unchanged document
//! back byte for byte), an existing table removed only with `--force`, the new one appended,
//! the result parsed again before it is written atomically.

use std::path::{Path, PathBuf};

use toml_edit::DocumentMut;

use crate::error::{ConfigError, Error};

#[derive(Debug, Clone)]
pub struct Edit {
    pub manifest: PathBuf,
    pub before: String,
    pub after: String,
}

fn refuse(manifest: &Path, message: String, help: &str) -> Error {
    ConfigError::Invalid {
        origin: manifest.display().to_string(),
        key: "package.metadata.model-export".into(),
        message,
        help: help.into(),
    }
    .into()
}

/// Cargo.toml with `table` in place of any existing `[package.metadata.model-export]`.
pub fn plan(manifest: &Path, table: &str, force: bool) -> Result<Edit, Error> {
    let before = std::fs::read_to_string(manifest).map_err(|e| {
        refuse(
            manifest,
            format!("cannot read it: {e}"),
            "run init in a Cargo package, or pass --manifest-path",
        )
    })?;
    let mut doc: DocumentMut = before.parse().map_err(|e| {
        refuse(
            manifest,
            format!("not valid TOML: {e}"),
            "fix Cargo.toml first (cargo metadata must accept it)",
        )
    })?;
    let Some(package) = doc.get_mut("package").and_then(|p| p.as_table_like_mut()) else {
        return Err(refuse(
            manifest,
            "it has no [package] table".into(),
            "init writes [package.metadata.model-export]: run it in a package (or pass --manifest-path to one)",
        ));
    };
    let existing = package
        .get("metadata")
        .and_then(|m| m.as_table_like())
        .is_some_and(|m| m.contains_key("model-export"));
    let after = if existing {
        if !force {
            return Err(refuse(
                manifest,
                "it already has a [package.metadata.model-export] table".into(),
                "pass --force to replace it (everything else in Cargo.toml is kept), or edit it by hand",
            ));
        }
        if let Some(metadata) = package.get_mut("metadata").and_then(|m| m.as_table_like_mut()) {
            metadata.remove("model-export");
        }
        doc.to_string()
    } else {
        // Untouched: the original bytes.
        before.clone()
    };
    // One blank line between what was there and the table.
    let mut after = after.trim_end_matches('\n').to_string();
    if !after.is_empty() {
        after.push_str("\n\n");
    }
    after.push_str(table.trim_start_matches('\n'));
    let check: DocumentMut = after.parse().map_err(|e| {
        refuse(
            manifest,
            format!("the edited manifest does not parse: {e}"),
            "this is a bug: please report it with your Cargo.toml",
        )
    })?;
    if check.get("package").and_then(|p| p.get("metadata")).and_then(|m| m.get("model-export")).is_none() {
        return Err(refuse(
            manifest,
            "the new table did not land under [package]".into(),
            "this is a bug: please report it with your Cargo.toml",
        ));
    }
    Ok(Edit { manifest: manifest.to_path_buf(), before, after })
}

/// Refuses a manifest init cannot write to (unreadable, no [package], a table already there
/// without `force`), before any question is asked.
pub fn check_writable(manifest: &Path, force: bool) -> Result<(), Error> {
    plan(manifest, "\n[package.metadata.model-export]\n", force).map(|_| ())
}

/// The change as a line diff: unchanged lines around it, `-` removed, `+` added.
pub fn diff(edit: &Edit) -> String {
    let old: Vec<&str> = edit.before.lines().collect();
    let new: Vec<&str> = edit.after.lines().collect();
    let prefix = old.iter().zip(&new).take_while(|(a, b)| a == b).count();
    let suffix =
        old[prefix..].iter().rev().zip(new[prefix..].iter().rev()).take_while(|(a, b)| a == b).count();
    let mut out = format!("--- {}\n+++ {}\n", edit.manifest.display(), edit.manifest.display());
    for line in &old[prefix.saturating_sub(3)..prefix] {
        out.push_str(&format!(" {line}\n"));
    }
    for line in &old[prefix..old.len() - suffix] {
        out.push_str(&format!("-{line}\n"));
    }
    for line in &new[prefix..new.len() - suffix] {
        out.push_str(&format!("+{line}\n"));
    }
    for line in old[old.len() - suffix..].iter().take(3) {
        out.push_str(&format!(" {line}\n"));
    }
    out
}

pub fn apply(edit: &Edit) -> Result<(), Error> {
    crate::fsutil::atomic_write(&edit.manifest, edit.after.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "[package]\nname = \"svc\" # our service\nversion = \"0.1.0\"\n\n[dependencies]\nserde = \"1\"   # keep this\n\n[package.metadata.docs.rs]\nall-features = true\n";

    #[test]
    fn the_table_is_appended_and_everything_else_kept_byte_for_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Cargo.toml");
        std::fs::write(&path, MANIFEST).unwrap();
        let table = "\n[package.metadata.model-export]\nbase = \"m\"\n";
        let edit = plan(&path, table, false).unwrap();
        assert_eq!(edit.after, format!("{MANIFEST}{table}"), "one blank line before the table");
        assert!(diff(&edit).contains("+[package.metadata.model-export]\n+base = \"m\"\n"), "{}", diff(&edit));
        apply(&edit).unwrap();

        let refused = plan(&path, table, false).unwrap_err();
        assert!(refused.help().contains("--force"), "{}", refused.help());
        let replaced = plan(&path, "\n[package.metadata.model-export]\nbase = \"other\"\n", true).unwrap();
        assert!(
            replaced.after.starts_with("[package]\nname = \"svc\" # our service\n"),
            "{}",
            replaced.after
        );
        assert!(
            replaced
                .after
                .contains("serde = \"1\"   # keep this\n\n[package.metadata.docs.rs]\nall-features = true\n"),
            "{}",
            replaced.after
        );
        assert!(
            replaced.after.contains("base = \"other\"") && !replaced.after.contains("base = \"m\""),
            "{}",
            replaced.after
        );
    }

    #[test]
    fn a_workspace_manifest_without_a_package_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Cargo.toml");
        std::fs::write(&path, "[workspace]\nmembers = []\n").unwrap();
        assert!(plan(&path, "", false).unwrap_err().to_string().contains("no [package] table"));
    }
}
