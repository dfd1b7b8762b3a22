//! `<out-dir>/.state/stages/<stage>.json`: written when a stage finishes, after its outputs are
//! in place. A re-run skips the stage when the digest of its inputs is unchanged and its
//! outputs still verify; a record that is missing (the run was killed before it) redoes it.
//! Outputs verify cheaply by the size and modification time of every file; a file whose size or
//! mtime changed is re-hashed (the stage reruns only if its bytes differ), and `run --verify`
//! re-hashes every file whatever its stamp says.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::export::manifest::{Check, MANIFEST, is_artifact, verify};
use crate::fsutil::write_json;

use super::digest::file_sha256;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub stage: String,
    /// Digest of the stage's inputs (config subset and input files).
    pub inputs: String,
    /// The outputs and the SHA-256 of each: an export folder's `manifest.json`, or a file.
    pub outputs: Vec<Output>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub path: PathBuf,
    pub sha256: String,
    /// Size and mtime of every file of the output, as the stage left them.
    #[serde(default)]
    pub stamps: Vec<Stamp>,
}

/// A file's size and modification time (nanoseconds since the epoch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    /// Relative to the output folder (empty for an output that is a file).
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: u64,
}

fn stamp(path: &Path, relative: PathBuf) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime_ns = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some(Stamp { path: relative, size: meta.len(), mtime_ns: u64::try_from(mtime_ns).ok()? })
}

/// Stamps of the files of folder `dir` that its manifest covers (not the validation reports
/// written beside them later), sorted by name.
fn folder_stamps(dir: &Path) -> Option<Vec<Stamp>> {
    let mut stamps = Vec::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if path.is_file() && (is_artifact(&name) || name == MANIFEST) {
            stamps.push(stamp(&path, PathBuf::from(name))?);
        }
    }
    stamps.sort_by(|a, b| a.path.cmp(&b.path));
    Some(stamps)
}

impl Output {
    /// An export folder, identified by its manifest (which lists every file's hash).
    pub fn folder(dir: &Path) -> Option<Output> {
        Some(Output {
            path: dir.to_path_buf(),
            sha256: file_sha256(&dir.join(MANIFEST))?,
            stamps: folder_stamps(dir)?,
        })
    }

    pub fn file(path: &Path) -> Option<Output> {
        Some(Output {
            path: path.to_path_buf(),
            sha256: file_sha256(path)?,
            stamps: vec![stamp(path, PathBuf::new())?],
        })
    }

    /// Still what the stage wrote: same manifest and files of the same sizes and mtimes (else,
    /// or with `rehash`, every byte against the manifest's SHA-256), or a file of the same bytes.
    fn verifies(&self, rehash: bool) -> bool {
        if !self.path.is_dir() {
            return file_sha256(&self.path).as_ref() == Some(&self.sha256);
        }
        if file_sha256(&self.path.join(MANIFEST)).as_ref() != Some(&self.sha256) {
            return false;
        }
        let unchanged = !self.stamps.is_empty() && folder_stamps(&self.path).as_ref() == Some(&self.stamps);
        if unchanged && !rehash {
            return verify(&self.path, Check::Sizes).is_ok();
        }
        verify(&self.path, Check::Full).is_ok()
    }
}

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(out_dir: &Path) -> Self {
        StateDir { dir: out_dir.join(".state") }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Where export folders are assembled before they are renamed into out-dir.
    pub fn temp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// The temporaries folder, removed when the guard drops: at the end of a run, whether it
    /// finished, failed or was interrupted (a SIGKILLed run's is removed by the next one).
    pub fn temp_dir_guard(&self) -> TempDirGuard {
        TempDirGuard(self.temp_dir())
    }

    fn remove_temp_dir(&self) -> Result<(), Error> {
        let tmp = self.temp_dir();
        match std::fs::remove_dir_all(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::write(&tmp, e)),
            _ => Ok(()),
        }
    }

    fn record_path(&self, stage: &str) -> PathBuf {
        self.dir.join("stages").join(format!("{stage}.json"))
    }

    /// Why `stage` must run, or `None` when its record matches `inputs` and its outputs verify
    /// (re-hashing every byte with `rehash`, as `run --verify` asks).
    pub fn must_run(&self, stage: &str, inputs: &str, rehash: bool) -> Option<&'static str> {
        let Some(record) = std::fs::read(self.record_path(stage))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<StageRecord>(&bytes).ok())
        else {
            return Some("not done yet");
        };
        if record.inputs != inputs {
            Some("its inputs changed")
        } else if !record.outputs.iter().all(|o| o.verifies(rehash)) {
            Some("its outputs changed or are missing")
        } else {
            None
        }
    }

    pub fn record(&self, stage: &str, inputs: &str, outputs: Vec<Output>) -> Result<(), Error> {
        let path = self.record_path(stage);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::write(parent, e))?;
        }
        write_json(&path, &StageRecord { stage: stage.into(), inputs: inputs.into(), outputs })
    }

    /// Forgets a stage (before redoing it, so a kill midway cannot leave a stale record).
    pub fn forget(&self, stage: &str) -> Result<(), Error> {
        let path = self.record_path(stage);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::write(&path, e)),
            _ => Ok(()),
        }
    }

    /// Removes what killed runs left: everything in `tmp/`, and `.partial-*` and `.old-*`
    /// temporaries in out-dir (atomic writes of single files) and here (the merge's folder).
    pub fn remove_leftovers(&self, out_dir: &Path) -> Result<Vec<PathBuf>, Error> {
        let mut removed = Vec::new();
        let tmp = self.temp_dir();
        for entry in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            removed.push(entry.path());
        }
        self.remove_temp_dir()?;
        // Earlier runs merged once into `.state/merged` (an f32 copy, 2x the model): exports now
        // stream from the base, so it only takes disk.
        let merged = self.dir.join("merged");
        if merged.is_dir() {
            std::fs::remove_dir_all(&merged).map_err(|e| Error::write(&merged, e))?;
            removed.push(merged);
        }
        for dir in [out_dir, self.dir.as_path()] {
            let Ok(entries) = std::fs::read_dir(dir) else { continue };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !(name.starts_with('.') && (name.contains(".partial-") || name.starts_with(".old-"))) {
                    continue;
                }
                let path = entry.path();
                let result =
                    if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                result.map_err(|e| Error::write(&path, e))?;
                removed.push(path);
            }
        }
        Ok(removed)
    }
}

/// Removes `.state/tmp` when dropped.
pub struct TempDirGuard(PathBuf);

impl TempDirGuard {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDirGuard {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("could not remove {}: {e}", self.0.display());
        }
    }
}
