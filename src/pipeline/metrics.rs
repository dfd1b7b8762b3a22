//! What each stage cost: wall time, its peak RSS (sampled every 10 ms while it runs), bytes read and
//! written (from /proc/self/io, so page-cache hits do not count as reads), and the free disk
//! of out-dir's filesystem before and after.

use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use super::preflight::{existing_ancestor, free_bytes};

#[derive(Debug, Clone, Serialize)]
pub struct StageMetrics {
    pub stage: String,
    /// "ran" or "skipped".
    pub outcome: &'static str,
    pub wall_seconds: f64,
    pub peak_rss_bytes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub free_disk_before: u64,
    pub free_disk_after: u64,
}

pub struct StageTimer {
    stage: String,
    started: Instant,
    io: (u64, u64),
    free_before: u64,
}

impl StageTimer {
    pub fn start(stage: &str, out_dir: &Path) -> Self {
        crate::monitor::start_window();
        StageTimer {
            stage: stage.to_string(),
            started: Instant::now(),
            io: io_bytes(),
            free_before: free_bytes(&existing_ancestor(out_dir)).unwrap_or(0),
        }
    }

    pub fn finish(self, ran: bool, out_dir: &Path) -> StageMetrics {
        crate::monitor::return_freed_memory();
        let (read, written) = io_bytes();
        StageMetrics {
            stage: self.stage,
            outcome: if ran { "ran" } else { "skipped" },
            wall_seconds: self.started.elapsed().as_secs_f64(),
            peak_rss_bytes: crate::monitor::window_peak(),
            bytes_read: read.saturating_sub(self.io.0),
            bytes_written: written.saturating_sub(self.io.1),
            free_disk_before: self.free_before,
            free_disk_after: free_bytes(&existing_ancestor(out_dir)).unwrap_or(0),
        }
    }
}

/// (read_bytes, write_bytes) of this process so far; zeros where /proc is missing.
fn io_bytes() -> (u64, u64) {
    let Ok(text) = std::fs::read_to_string("/proc/self/io") else { return (0, 0) };
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    (field("read_bytes:"), field("write_bytes:"))
}
