//! What the process benchmarks share: running the release binary and measuring it.

use std::process::Command;
use std::time::{Duration, Instant};

// Not every bench measures a process.
#[allow(dead_code)]
pub struct Measured {
    pub wall: Duration,
    pub peak_rss_bytes: u64,
}

/// Runs a command to completion and returns its wall time and its own peak RSS (wait4).
// The child is reaped by wait4 itself, which also returns its resource usage.
#[allow(clippy::zombie_processes, dead_code)]
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

/// The benchmarks' cached data folder (`target/bench-data`).
pub fn data_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench-data")
}

/// A random model of `shape_name` (sharded at `shard` bytes) and a rank-16 all-linear training
/// run beside it, generated once under `data` (seed 42): (base, run).
// Not every bench uses a random model.
#[allow(dead_code)]
pub fn bench_model(
    data: &std::path::Path,
    shape_name: &str,
    shard: Option<u64>,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use model_export::synth::{AdapterSpec, ModelShape, write_model, write_training_run};
    let base = data.join(shape_name);
    let run = data.join(format!("{shape_name}-run"));
    if !base.join("config.json").is_file() || !run.join("checkpoint-200").is_dir() {
        println!(
            "generating the {shape_name}-shaped random model and a rank-16 run under {}",
            data.display()
        );
        let shape = ModelShape::by_name(shape_name).expect("a known shape");
        let config = write_model(shape, &base, 42, shard).expect("the model is written");
        let spec = AdapterSpec { r: 16, alpha: 32.0, dtype: shape.dtype, ..Default::default() };
        write_training_run(&config, &spec, &run, &[100, 200], false, 42).expect("the run is written");
    }
    (base, run)
}

/// A cargo project at `dir` whose metadata table takes `base`, `run` and out-dir `out`, followed
/// by `tables` (the exports, validation settings); returns the project folder.
// Not every bench writes a project.
#[allow(dead_code)]
pub fn write_project(
    dir: &std::path::Path,
    base: &std::path::Path,
    run: &std::path::Path,
    tables: &str,
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"bench\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n\
             [package.metadata.model-export]\nbase = {:?}\nadapter = {:?}\nout-dir = \"out\"\n\n{tables}",
            base.display().to_string(),
            run.display().to_string()
        ),
    )
    .unwrap();
    dir.to_path_buf()
}
