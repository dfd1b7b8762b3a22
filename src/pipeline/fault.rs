//! Named fault points for the resume tests: `MODEL_EXPORT_FAULT=<name>` (or `<name>:<n>` for
//! the n-th time the point is reached) makes the process SIGKILL itself there, which is the only
//! reliable way to stop a real run at an exact moment. Without the variable a point costs one
//! relaxed atomic load.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

pub const FAULT_ENV: &str = "MODEL_EXPORT_FAULT";

struct Fault {
    name: String,
    nth: usize,
    seen: AtomicUsize,
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
            Some(Fault { name, nth, seen: AtomicUsize::new(0) })
        })
        .as_ref()
}

/// Kills the process with SIGKILL if this is the armed point's n-th visit.
pub fn point(name: &str) {
    let Some(fault) = armed() else { return };
    if fault.name == name && fault.seen.fetch_add(1, Ordering::SeqCst) + 1 == fault.nth {
        tracing::warn!("fault point {name}: killing the process ({FAULT_ENV})");
        #[cfg(unix)]
        // SAFETY: signalling our own process; nothing runs after SIGKILL.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}
