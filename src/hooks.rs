//! The safe points lower layers reach without knowing who listens: "stop here if a stop was
//! asked for" (Ctrl-C, SIGTERM) and the named fault points of the kill tests. The program's top
//! installs the listener ([`install`], done by `commands::run` with `pipeline`'s signal flags
//! and fault table); a library user who installs none gets points that do nothing, so merge,
//! export and the engines never import the pipeline that drives them.

use std::sync::OnceLock;

use crate::error::PipelineError;

/// What a safe point asks of whoever drives the run.
pub trait SafePoints: Send + Sync {
    /// `Err(Interrupted)` once a stop was asked for; `at` names the tensor about to be done.
    fn check_stop(&self, at: Option<&str>) -> Result<(), PipelineError>;
    /// The point `name` was reached (an armed test fault may kill or stop the process here).
    fn reached(&self, name: &str);
    /// Whether the armed point `name` should fail here with the error it stands for.
    fn fails(&self, name: &str) -> bool;
    /// Whether the behaviour fault `name` is armed (the caller does something wrong on purpose).
    fn is_armed(&self, name: &str) -> bool;
}

static LISTENER: OnceLock<&'static dyn SafePoints> = OnceLock::new();

/// Installs the listener for this process; the first one stays.
pub fn install(listener: &'static dyn SafePoints) {
    let _ = LISTENER.set(listener);
}

/// [`SafePoints::check_stop`] before `tensor`, `Ok` when nobody listens.
pub fn check_stop(tensor: Option<&str>) -> Result<(), PipelineError> {
    LISTENER.get().map_or(Ok(()), |l| l.check_stop(tensor))
}

/// [`SafePoints::reached`].
pub fn point(name: &str) {
    if let Some(l) = LISTENER.get() {
        l.reached(name);
    }
}

/// [`SafePoints::fails`], `false` when nobody listens.
pub fn fails(name: &str) -> bool {
    LISTENER.get().is_some_and(|l| l.fails(name))
}

/// [`SafePoints::is_armed`], `false` when nobody listens.
pub fn is_armed(name: &str) -> bool {
    LISTENER.get().is_some_and(|l| l.is_armed(name))
}
