//! What a stage's inputs were, reduced to one SHA-256: the config subset the stage used and the
//! identity of its input files (name, size, modification time, and a hash of the content for
//! small files or of the first MiB, which holds a safetensors header, for large ones). Reading
//! at most a MiB per file keeps the check fast on multi-gigabyte models.

use std::io::Read;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::Error;

const HASHED_PREFIX: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileIdentity {
    pub name: String,
    pub size: u64,
    pub modified_ns: u128,
    pub prefix_sha256: String,
}

/// The identity of every regular file directly in `dir`, sorted by name.
pub fn folder_identity(dir: &Path) -> Result<Vec<FileIdentity>, Error> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::write(dir, e))? {
        let entry = entry.map_err(|e| Error::write(dir, e))?;
        let path = entry.path();
        if path.is_file() {
            files.push(file_identity(&path)?);
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

pub fn file_identity(path: &Path) -> Result<FileIdentity, Error> {
    let err = |e| Error::write(path, e);
    let meta = std::fs::metadata(path).map_err(err)?;
    let modified_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let mut hasher = Sha256::new();
    let mut prefix = Vec::new();
    std::fs::File::open(path).map_err(err)?.take(HASHED_PREFIX).read_to_end(&mut prefix).map_err(err)?;
    hasher.update(&prefix);
    Ok(FileIdentity {
        name: path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        size: meta.len(),
        modified_ns,
        prefix_sha256: format!("{:x}", hasher.finalize()),
    })
}

/// SHA-256 of the JSON of `value` with the tool's version: a new version redoes every stage.
pub fn digest(value: &impl Serialize) -> String {
    let json = serde_json::to_vec(&(env!("CARGO_PKG_VERSION"), value)).unwrap_or_default();
    format!("{:x}", Sha256::digest(&json))
}

/// SHA-256 of a file's bytes (a manifest), or `None` when it cannot be read.
pub fn file_sha256(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|bytes| format!("{:x}", Sha256::digest(&bytes)))
}
