//! `manifest.json`: the size and SHA-256 of every file of an export, and where it came from.
//! It is written last, so its presence marks a complete export; `verify` checks a folder
//! against it.

use std::io::Read;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, ModelError};

pub const MANIFEST: &str = "manifest.json";
/// Reports about an export, written after it is installed: not part of the artifact.
pub const REPORT_FILES: &[&str] = &["validation.json", "validation.md"];

pub fn is_artifact(name: &str) -> bool {
    name != MANIFEST && !REPORT_FILES.contains(&name)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

/// Identity of an input file, cheap to compute even for huge weights: size and header hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputFile {
    pub path: PathBuf,
    pub size: u64,
    pub header_sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub base: PathBuf,
    pub base_files: Vec<InputFile>,
    pub adapter: Option<PathBuf>,
    pub adapter_files: Vec<InputFile>,
    pub checkpoint: Option<String>,
    pub global_step: Option<u64>,
    /// The export options that shaped the bytes (dtype, shard size...).
    pub options: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub tool: String,
    pub version: String,
    pub format: String,
    pub provenance: Provenance,
    pub files: Vec<FileEntry>,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, format!("{:x}", hasher.finalize())))
}

/// Hashes every regular file of `dir` (not the manifest itself), sorted by name; files in
/// `known` (hashed while they were written) are taken as they are.
pub fn hash_folder(dir: &Path, known: &[FileEntry]) -> Result<Vec<FileEntry>, Error> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::write(dir, e))? {
        let entry = entry.map_err(|e| Error::write(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && is_artifact(&name) {
            names.push(name);
        }
    }
    names.sort();
    names
        .par_iter()
        .map(|name| {
            if let Some(entry) = known.iter().find(|k| &k.path == name) {
                return Ok(entry.clone());
            }
            let path = dir.join(name);
            let (size, sha256) = hash_file(&path).map_err(|e| Error::write(&path, e))?;
            Ok(FileEntry { path: name.clone(), size, sha256 })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Names and sizes: right after writing, when the hashes were just computed from these bytes.
    Sizes,
    /// Names, sizes and SHA-256 of every byte.
    Full,
}

/// Lists the files of `dir` as they are now; hashes only with `Check::Full`.
fn current_files(dir: &Path, check: Check, listed: &[FileEntry]) -> Result<Vec<FileEntry>, Error> {
    if check == Check::Full {
        return hash_folder(dir, &[]);
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::write(dir, e))? {
        let entry = entry.map_err(|e| Error::write(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_file() && is_artifact(&name) {
            let size = entry.metadata().map_err(|e| Error::write(&entry.path(), e))?.len();
            // Sizes-only: carry the listed hash so that the comparison is on names and sizes.
            let sha256 = listed.iter().find(|f| f.path == name).map(|f| f.sha256.clone()).unwrap_or_default();
            names.push(FileEntry { path: name, size, sha256 });
        }
    }
    names.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(names)
}

/// Checks that `dir` holds exactly the files of its manifest, with their sizes (and hashes).
pub fn verify(dir: &Path, check: Check) -> Result<Manifest, Error> {
    let path = dir.join(MANIFEST);
    let text =
        std::fs::read_to_string(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| ModelError::Json { path: path.clone(), message: format!("not a manifest: {e}") })?;
    let actual = current_files(dir, check, &manifest.files)?;
    if actual != manifest.files {
        let listed: Vec<_> = manifest.files.iter().map(|f| &f.path).collect();
        let problem = actual
            .iter()
            .find(|f| !manifest.files.contains(f))
            .map(|f| {
                if listed.contains(&&f.path) {
                    format!("`{}` changed after it was written", f.path)
                } else {
                    format!("`{}` is not in the manifest", f.path)
                }
            })
            .or_else(|| {
                manifest
                    .files
                    .iter()
                    .find(|f| !actual.iter().any(|a| a.path == f.path))
                    .map(|f| format!("`{}` is missing", f.path))
            })
            .unwrap_or_else(|| "files differ from the manifest".into());
        return Err(ModelError::Json { path, message: format!("verification failed: {problem}") }.into());
    }
    Ok(manifest)
}

/// The manifest of a finished export folder.
pub fn read_manifest(dir: &Path) -> Result<Manifest, Error> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| Error::write(&path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::write(&path, std::io::Error::other(e)))
}
