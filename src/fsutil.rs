//! Atomic file writes: a temporary file in the destination folder, renamed over the final name
//! once complete, so a killed run never leaves a file that looks finished.

use std::io::Write;
use std::path::Path;

use crate::error::Error;

/// Writes `bytes` to `path` atomically (temp name + fsync + rename).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let err = |e| Error::write(path, e);
    let mut temp = tempfile::Builder::new().prefix(".partial-").tempfile_in(dir).map_err(err)?;
    temp.write_all(bytes).map_err(err)?;
    temp.as_file().sync_all().map_err(err)?;
    temp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

/// Pretty JSON with a trailing newline, written atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), Error> {
    let mut text =
        serde_json::to_vec_pretty(value).map_err(|e| Error::write(path, std::io::Error::other(e)))?;
    text.push(b'\n');
    atomic_write(path, &text)
}
