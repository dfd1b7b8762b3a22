//! Ctrl-C and SIGTERM stop a run at the next safe point (between tensors or stages): the stage
//! in progress returns `Interrupted`, its staging folder is dropped (removing its partial
//! outputs) and finished stages stay recorded for the next run. A second signal exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::PipelineError;

static STAGE: Mutex<String> = Mutex::new(String::new());

/// One flag per handled signal, raised by its handler; unset until `install` (a library user
/// keeps its own signal handling).
static FLAGS: OnceLock<Vec<(&'static str, Arc<AtomicBool>)>> = OnceLock::new();

/// Installs the handlers (once per process).
pub fn install() {
    FLAGS.get_or_init(|| {
        let mut flags = Vec::new();
        #[cfg(unix)]
        for (name, signal) in
            [("SIGINT", signal_hook::consts::SIGINT), ("SIGTERM", signal_hook::consts::SIGTERM)]
        {
            let flag = Arc::new(AtomicBool::new(false));
            // Registered first, so it sees the flag as it was: set by an earlier signal.
            let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, flag.clone());
            if signal_hook::flag::register(signal, flag.clone()).is_ok() {
                flags.push((name, flag));
            }
        }
        flags
    });
}

/// Names the stage that a stop would interrupt.
pub fn enter(stage: &str) {
    if let Ok(mut current) = STAGE.lock() {
        *current = stage.to_string();
    }
}

/// `Err(Interrupted)` once SIGINT or SIGTERM arrived.
pub fn check() -> Result<(), PipelineError> {
    check_before(None)
}

/// [`check`] at a safe point before `tensor`, which the message names.
pub fn check_before(tensor: Option<&str>) -> Result<(), PipelineError> {
    let Some((signal, _)) = FLAGS.get().into_iter().flatten().find(|(_, flag)| flag.load(Ordering::Relaxed))
    else {
        return Ok(());
    };
    let stage = STAGE.lock().map(|s| s.clone()).unwrap_or_default();
    Err(PipelineError::Interrupted { signal, stage, at: tensor.map(str::to_string) })
}
