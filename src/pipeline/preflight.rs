//! Before anything is written: the plan's bytes against the free space of out-dir's filesystem,
//! and its peak memory against `max-memory` (default: the RAM available now). Both fail with
//! exit 2 and say what to change.

use std::path::{Path, PathBuf};

use crate::error::{Error, PipelineError};

use super::plan::{Plan, StageKind};

/// Free-space margin: estimates are estimates, and a full disk is the worst way to fail.
const DISK_MARGIN: f64 = 1.05;

pub fn check(plan: &Plan, max_memory: Option<u64>) -> Result<(), Error> {
    let needed = (plan.bytes_to_write() as f64 * DISK_MARGIN) as u64;
    let dir = existing_ancestor(&plan.out_dir);
    if needed > 0 {
        let free = free_bytes(&dir).map_err(|e| Error::write(&dir, e))?;
        if needed > free {
            let mut largest: Vec<(String, u64)> = plan
                .stages
                .iter()
                .filter(|s| s.runs() && s.estimated_bytes_written > 0)
                .map(|s| (s.id.clone(), s.estimated_bytes_written))
                .collect();
            largest.sort_by_key(|s| std::cmp::Reverse(s.1));
            largest.truncate(3);
            return Err(PipelineError::DiskSpace { dir, needed, free, largest }.into());
        }
    }
    let limit = max_memory.or_else(crate::monitor::available_memory);
    let over = plan.peak().zip(limit).filter(|(stage, limit)| stage.estimated_peak_memory > *limit);
    if let Some((stage, limit)) = over {
        let suggestion = match stage.kind {
            StageKind::Validate => "the reference runs one layer (or the embedding, or the head) at a time in \
                f32: run with --no-validate here and `cargo model-export validate` on a larger machine, or raise \
                max-memory"
                .to_string(),
            _ => {
                "raise max-memory (e.g. MODEL_EXPORT_MAX_MEMORY=16GiB) if the machine has the RAM, or close \
                other programs"
                    .to_string()
            }
        };
        return Err(PipelineError::Memory {
            stage: stage.id.clone(),
            needed: stage.estimated_peak_memory,
            limit,
            suggestion,
        }
        .into());
    }
    Ok(())
}

/// `MODEL_EXPORT_TEST_FREE_BYTES` stands in for the filesystem's answer in tests that need a
/// small disk without mounting one.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    if let Some(bytes) = std::env::var("MODEL_EXPORT_TEST_FREE_BYTES").ok().and_then(|v| v.parse().ok()) {
        return Ok(bytes);
    }
    statvfs_free(dir)
}

#[cfg(unix)]
fn statvfs_free(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: an all-zero statvfs is valid for statvfs to fill; the path is NUL-terminated.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

#[cfg(not(unix))]
fn statvfs_free(_dir: &Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

/// The folder itself, or its nearest parent that exists (out-dir may not be created yet).
pub fn existing_ancestor(dir: &Path) -> PathBuf {
    dir.ancestors().find(|p| p.is_dir()).map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
