//! Named fault points for the resume tests: `MODEL_EXPORT_FAULT=<name>` (or `<name>:<n>` for
//! the n-th time the point is reached) makes the process SIGKILL itself there, which is the only
//! reliable way to stop a real run at an exact moment. With `MODEL_EXPORT_FAULT_SIGNAL=INT` the
//! point sends SIGINT instead and the run goes on to its next safe point, as after Ctrl-C; with
//! `MODEL_EXPORT_FAULT_SIGNAL=STOP` the process stops itself (SIGSTOP) there, holding whatever it
//! holds (the out-dir lock), until the test kills or continues it.
//! Without the variables a point costs one initialized-once check.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const FAULT_ENV: &str = "MODEL_EXPORT_FAULT";
pub const FAULT_SIGNAL_ENV: &str = "MODEL_EXPORT_FAULT_SIGNAL";

struct Fault {
    name: String,
    nth: usize,
    seen: AtomicUsize,
    interrupt: bool,
    error: bool,
    stop: bool,
}

fn armed() -> Option<&'static Fault> {
    static FAULT: OnceLock<Option<Fault>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            let spec = std::env::var(FAULT_ENV).ok()?;
            let (name, nth) = match spec.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().ok()?),
                None => (spec, 1),
            };
            let signal = std::env::var(FAULT_SIGNAL_ENV).unwrap_or_default();
            let (interrupt, error, stop) = (signal == "INT", signal == "ERROR", signal == "STOP");
            Some(Fault { name, nth, seen: AtomicUsize::new(0), interrupt, error, stop })
        })
        .as_ref()
}

/// With `MODEL_EXPORT_FAULT_SIGNAL=ERROR`: whether the armed point `name` should fail here
/// (its caller returns the error that point stands for) instead of killing the process.
pub fn fails(name: &str) -> bool {
    let Some(fault) = armed() else { return false };
    fault.error && fault.name == name && fault.seen.fetch_add(1, Ordering::SeqCst) + 1 == fault.nth
}

/// Whether `MODEL_EXPORT_FAULT` names `name` (a behaviour fault rather than a stop: the caller
/// does something deliberately wrong, for the tests that prove validation catches it).
pub fn is_armed(name: &str) -> bool {
    armed().is_some_and(|f| f.name == name)
}

/// Kills the process with SIGKILL if this is the armed point's n-th visit.
pub fn point(name: &str) {
    let Some(fault) = armed().filter(|f| !f.error) else { return };
    if fault.name == name && fault.seen.fetch_add(1, Ordering::SeqCst) + 1 == fault.nth {
        #[cfg(unix)]
        if fault.stop {
            tracing::warn!("fault point {name}: stopping the process ({FAULT_ENV})");
            // SAFETY: stopping our own process; it resumes (or is killed) from outside.
            unsafe {
                libc::raise(libc::SIGSTOP);
            }
            return;
        }
        #[cfg(unix)]
        if fault.interrupt {
            tracing::warn!("fault point {name}: sending SIGINT ({FAULT_ENV})");
            // raise() delivers to this thread and returns after the handler ran, so the flag is
            // up before the caller's next safe point (kill() could land on another thread and
            // be seen only after the work finished).
            // SAFETY: signalling our own thread; the handler only raises a flag.
            unsafe {
                libc::raise(libc::SIGINT);
            }
            return;
        }
        tracing::warn!("fault point {name}: killing the process ({FAULT_ENV})");
        #[cfg(unix)]
        // SAFETY: signalling our own process; nothing runs after SIGKILL.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}
