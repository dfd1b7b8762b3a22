//! Logging and progress: `tracing` to stderr (human or JSON lines), and the one progress-bar
//! facility every long job uses. Bars are hidden when stderr is not a terminal or when output
//! is JSON, so scripts and CI logs stay clean.

use std::io::IsTerminal;
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy)]
pub struct MonitorSettings {
    /// -v count minus -q count.
    pub verbosity: i8,
    pub json: bool,
    pub color: ColorChoice,
}

static SETTINGS: OnceLock<MonitorSettings> = OnceLock::new();

/// Installs the tracing subscriber; `MODEL_EXPORT_LOG` (a tracing filter) overrides -v/-q.
pub fn init(settings: MonitorSettings) {
    let _ = SETTINGS.set(settings);
    let level = match settings.verbosity {
        i8::MIN..=-2 => "off",
        -1 => "error",
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_env("MODEL_EXPORT_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("model_export={level},cargo_model_export={level}")));
    let ansi = match settings.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => std::io::stderr().is_terminal(),
    };
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    let _ = if settings.json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder.with_ansi(ansi).without_time().try_init()
    };
}

fn bars_visible() -> bool {
    let settings = SETTINGS.get().copied();
    let quiet_or_json = settings.is_some_and(|s| s.json || s.verbosity < 0);
    !quiet_or_json && std::io::stderr().is_terminal()
}

/// A progress bar over bytes (with rate and ETA), hidden where bars do not belong.
pub fn bytes_bar(total: u64, message: impl Into<String>) -> ProgressBar {
    bar(total, message, "{msg:24} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
}

/// A progress bar over a count of items (tensors, checkpoints...).
pub fn count_bar(total: u64, message: impl Into<String>) -> ProgressBar {
    bar(total, message, "{msg:24} {bar:30} {pos}/{len} eta {eta}")
}

fn bar(total: u64, message: impl Into<String>, template: &str) -> ProgressBar {
    if !bars_visible() {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar());
    // One MultiProgress, so bars of exports written at once (`run -j`) stack instead of fighting.
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(MultiProgress::new)
        .add(ProgressBar::new(total).with_style(style).with_message(message.into()))
}

/// A one-line status for people (stderr), dropped under -q or `--message-format json`.
pub fn status(message: &str) {
    let settings = SETTINGS.get().copied();
    if settings.is_some_and(|s| s.json || s.verbosity < 0) {
        tracing::info!("{message}");
    } else {
        eprintln!("{message}");
    }
}

/// Resets the process's peak-RSS mark, so the next `peak_rss` is the peak since now (Linux only).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// `MemAvailable` of /proc/meminfo, where there is one.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The resident set now (Linux: /proc/self/statm), 0 where it cannot be read.
pub fn current_rss() -> u64 {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else { return 0 };
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// The largest resident set seen since the last `start_window`, sampled every 10 ms by one
/// thread. The kernel's own mark (VmHWM) is left alone: resetting it would also reset what
/// wait4 and `/usr/bin/time` report for the whole process.
static WINDOW_PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Starts a new measuring window (and the sampling thread, once).
pub fn start_window() {
    use std::sync::atomic::Ordering;
    static SAMPLER: OnceLock<()> = OnceLock::new();
    SAMPLER.get_or_init(|| {
        let spawned = std::thread::Builder::new().name("rss-sampler".into()).spawn(|| {
            loop {
                WINDOW_PEAK.fetch_max(current_rss(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        });
        if let Err(e) = spawned {
            tracing::debug!("no RSS sampler: {e}");
        }
    });
    WINDOW_PEAK.store(current_rss(), Ordering::Relaxed);
}

/// The largest resident set seen in the window (at least the current one).
pub fn window_peak() -> u64 {
    WINDOW_PEAK.load(std::sync::atomic::Ordering::Relaxed).max(current_rss())
}

/// The process's peak resident set (VmHWM; Linux only).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Hands memory the stage freed back to the operating system. glibc keeps freed blocks in
/// per-thread arenas (ONNX Runtime's and rayon's threads allocate in their own), where the next
/// stage's main-thread allocations cannot reuse them: without this, a run's RSS is the sum of
/// its stages' peaks instead of the largest (measured on the Qwen3-0.6B shape: 6.45 GiB against
/// a largest stage of 3.9 GiB).
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}
