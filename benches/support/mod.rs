//! What the process benchmarks share: running the release binary and measuring it.

use std::process::Command;
use std::time::{Duration, Instant};

pub struct Measured {
    pub wall: Duration,
    pub peak_rss_bytes: u64,
}

/// Runs a command to completion and returns its wall time and its own peak RSS (wait4).
// The child is reaped by wait4 itself, which also returns its resource usage.
#[allow(clippy::zombie_processes)]
pub fn measure(cmd: &mut Command) -> Measured {
    let started = Instant::now();
    let child = cmd.spawn().expect("command starts");
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting on our own child with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    assert!(pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed");
    Measured { wall, peak_rss_bytes: usage.ru_maxrss as u64 * 1024 }
}
