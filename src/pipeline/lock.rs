//! One `run` per out-dir: `.state/lock` holds the pid of the run that owns it. A second run is
//! refused while that process lives; a lock left by a dead process (SIGKILL, power loss) is
//! taken over.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, PipelineError};

pub struct RunLock {
    path: PathBuf,
}

impl RunLock {
    pub fn acquire(state_dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(state_dir).map_err(|e| Error::write(state_dir, e))?;
        let path = state_dir.join("lock");
        // Two attempts: the second after removing a stale lock.
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    writeln!(file, "{}", std::process::id()).map_err(|e| Error::write(&path, e))?;
                    return Ok(RunLock { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder =
                        std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u32>().ok());
                    if let Some(pid) = holder.filter(|&pid| alive(pid)) {
                        return Err(PipelineError::Locked { lock: path, pid }.into());
                    }
                    tracing::warn!("taking over {} (left by a process that no longer runs)", path.display());
                    std::fs::remove_file(&path).map_err(|e| Error::write(&path, e))?;
                }
                Err(e) => return Err(Error::write(&path, e)),
            }
        }
        Err(Error::write(&path, std::io::Error::other("the lock was taken by another run meanwhile")))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let found = unsafe { libc::kill(pid, 0) } == 0;
        found || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    true
}
