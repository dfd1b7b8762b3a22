//! One `run` per out-dir: an advisory OS lock (`flock` through std's `File::try_lock`) on
//! `.state/lock`, held for the run's life. The kernel releases it when the process ends, however
//! it ends (a SIGKILLed run's lock is free at once; no pid liveness guess, so pid reuse and pid
//! namespaces cannot fool it). The file's content (pid, start time, command) is only for the
//! message a second run prints.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, PipelineError};

pub struct RunLock {
    path: PathBuf,
    file: File,
}

/// Whether `file` is still the one at `path` (a run that finished may have removed it between
/// our open and our lock; then the lock guards nothing and we try again).
#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

impl RunLock {
    pub fn acquire(state_dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(state_dir).map_err(|e| Error::write(state_dir, e))?;
        let path = state_dir.join("lock");
        for _ in 0..100 {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::write(&path, e))?;
            match file.try_lock() {
                Ok(()) if same_file(&file, &path) => {
                    let mut lock = RunLock { path, file };
                    lock.describe_holder()?;
                    return Ok(lock);
                }
                Ok(()) => continue,
                Err(TryLockError::WouldBlock) => {
                    // The holder writes who it is right after locking: give it a moment.
                    let mut holder = String::new();
                    for _ in 0..200 {
                        holder = std::fs::read_to_string(&path).unwrap_or_default();
                        if !holder.trim().is_empty() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    return Err(
                        PipelineError::Locked { lock: path, holder: holder.trim().to_string() }.into()
                    );
                }
                Err(TryLockError::Error(e)) => return Err(Error::write(&path, e)),
            }
        }
        Err(Error::write(&path, std::io::Error::other("the lock file kept changing under other runs")))
    }

    /// What a second run prints about the holder: pid, start time, command.
    fn describe_holder(&mut self) -> Result<(), Error> {
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let command: Vec<String> = std::env::args().collect();
        let text =
            format!("pid {}, started at unix time {started}: {}\n", std::process::id(), command.join(" "));
        self.file.set_len(0).map_err(|e| Error::write(&self.path, e))?;
        self.file.write_all(text.as_bytes()).map_err(|e| Error::write(&self.path, e))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked; a run that opened it meanwhile sees it gone and retries.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_refuses_a_second_holder_and_is_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).err().unwrap().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        assert!(!dir.path().join("lock").exists());
        RunLock::acquire(dir.path()).unwrap();
    }
}
