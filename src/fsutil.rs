//! Atomic file writes: a temporary file in the destination folder, renamed over the final name
//! once complete, so a killed run never leaves a file that looks finished.

use std::io::Write;
use std::path::Path;

use crate::error::Error;

/// Writes `bytes` to `path` atomically (temp name + fsync + rename).
/// A transient failure retries the whole write from a fresh temporary.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    crate::retry::io(path, || {
        let mut temp = tempfile::Builder::new().prefix(".partial-").tempfile_in(dir)?;
        temp.write_all(bytes)?;
        temp.as_file().sync_all()?;
        make_shareable(temp.as_file())?;
        temp.persist(path).map_err(|e| e.error)?;
        Ok(())
    })
    .map_err(|e| Error::write(path, e))
}

/// Pretty JSON with a trailing newline, written atomically.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<(), Error> {
    let mut text =
        serde_json::to_vec_pretty(value).map_err(|e| Error::write(path, std::io::Error::other(e)))?;
    text.push(b'\n');
    atomic_write(path, &text)
}

/// Temporary files are created private (0600); finished ones get the usual 0644.
pub fn make_shareable(file: &std::fs::File) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))?;
    }
    #[cfg(not(unix))]
    let _ = file;
    Ok(())
}

/// Temporary folders are created private (0700); finished ones get the usual 0755.
pub fn make_folder_shareable(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
