//! The seeds' own scale: the Qwen2.5-7B shape (random weights, bf16, 4 shards, 15.2 GB) and a
//! rank-16 all-linear run through `run` with default options: a bf16 safetensors export, a q4_k
//! GGUF and an int4 ONNX for ONNX Runtime, each validated by its engines against the streamed
//! reference. Prints, per stage, wall time, peak RSS (each stage's own) and bytes written beside
//! the plan's estimates, the whole run's peak RSS (wait4), the disk it took against the exports'
//! size, and `cp` of the shards measured in the same run.
//!
//! cargo bench --bench pipeline_7b      (about 45 GB under target/bench-data; skips below 40 GB free)

use std::path::Path;
use std::process::{Command, Stdio};

mod support;
use support::measure;

const GIB: f64 = (1u64 << 30) as f64;
const NEEDED_FREE: u64 = 40_000_000_000;

fn binary(project: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-model-export"));
    cmd.arg("--manifest-path").arg(project.join("Cargo.toml"));
    cmd
}

fn free_bytes(dir: &Path) -> u64 {
    model_export::pipeline::preflight::free_bytes(dir).unwrap_or(0)
}

fn folder_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        total += if path.is_dir() { folder_bytes(&path) } else { entry.metadata().map_or(0, |m| m.len()) };
    }
    total
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("7B pipeline benchmark: run it with `cargo bench --bench pipeline_7b`");
        return;
    }
    let data = support::data_dir();
    std::fs::create_dir_all(&data).unwrap();
    let base_ready = data.join("qwen2.5-7b/config.json").is_file();
    let free = free_bytes(&data);
    // The base (15.2 GB) unless generated already, the exports (about 25 GB), the cp copy (freed
    // before the run).
    let needed = NEEDED_FREE - if base_ready { 15_200_000_000 } else { 0 };
    if free < needed {
        println!(
            "pipeline_7b skipped: {:.1} GB free under {}, it needs {:.1} GB (the Qwen2.5-7B shape and its exports)",
            free as f64 / 1e9,
            data.display(),
            needed as f64 / 1e9
        );
        return;
    }
    let (base_dir, run) = support::bench_model(&data, "qwen2.5-7b", Some(4_000_000_000));
    let base_bytes = folder_bytes(&base_dir);

    // The floor for writing as many bytes: cp of the shards, then the copy is removed.
    let copy = data.join("qwen2.5-7b-cp");
    let _ = std::fs::remove_dir_all(&copy);
    let cp = measure(Command::new("cp").arg("-r").arg(&base_dir).arg(&copy));
    std::fs::remove_dir_all(&copy).unwrap();

    let project = support::write_project(
        &data.join("pipeline-7b"),
        &base_dir,
        &run,
        "[[package.metadata.model-export.export]]\nname = \"hf-bf16\"\nformat = \"safetensors\"\ndtype = \"bf16\"\n\n\
         [[package.metadata.model-export.export]]\nname = \"gguf-q4_k\"\nformat = \"gguf\"\ndtype = \"q4_k\"\n\n\
         [[package.metadata.model-export.export]]\nname = \"onnx-int4\"\nformat = \"onnx\"\ndtype = \"int4\"\ntarget = \"ort\"\n",
    );
    let _ = std::fs::remove_dir_all(project.join("out"));
    let plan = binary(&project).args(["--message-format", "json", "run", "--dry-run"]).output().unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("the plan as JSON");
    let estimate = |stage: &str| {
        plan["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == stage)
            .map_or(0, |s| s["estimated_peak_memory"].as_u64().unwrap())
    };
    let free_before = free_bytes(&data);
    let started = std::time::Instant::now();
    let child =
        binary(&project).arg("run").stdout(Stdio::inherit()).stderr(Stdio::inherit()).spawn().unwrap();
    let whole = measure_child(child, started);
    let exports: u64 = ["hf-bf16", "gguf-q4_k", "onnx-int4"]
        .iter()
        .map(|e| folder_bytes(&project.join("out").join(e)))
        .sum();
    let stages: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.join("out/run.json")).unwrap()).unwrap();
    println!(
        "\nQwen2.5-7B shape ({:.1} GB bf16, 4 shards) + rank-16 all-linear run -> hf-bf16, gguf-q4_k, onnx-int4 (ort), validated",
        base_bytes as f64 / 1e9
    );
    println!("| stage | wall | peak RSS | plan's estimate | estimate / measured | written |");
    println!("|---|---|---|---|---|---|");
    let mut lowest_free = free_before;
    for s in stages["stages"].as_array().unwrap() {
        let id = s["stage"].as_str().unwrap();
        let peak = s["peak_rss_bytes"].as_u64().unwrap();
        let est = estimate(id);
        lowest_free = lowest_free.min(s["free_disk_after"].as_u64().unwrap());
        println!(
            "| {id} | {:.1} s | {:.2} GiB | {:.2} GiB | {:.2} | {:.2} GB |",
            s["wall_seconds"].as_f64().unwrap(),
            peak as f64 / GIB,
            est as f64 / GIB,
            est as f64 / peak.max(1) as f64,
            s["bytes_written"].as_u64().unwrap() as f64 / 1e9
        );
    }
    println!(
        "| whole run | {:.1} s | {:.2} GiB | | | {:.2} GB of exports |",
        whole.wall.as_secs_f64(),
        whole.peak_rss_bytes as f64 / GIB,
        exports as f64 / 1e9
    );
    let used = free_before.saturating_sub(lowest_free);
    println!(
        "disk taken by the run (lowest free space seen at a stage's end): {:.2} GB = {:.3}x the exports",
        used as f64 / 1e9,
        used as f64 / exports.max(1) as f64
    );
    println!(
        "cp -r of the shards ({:.1} GB) in the same run: {:.1} s ({:.0} MB/s)",
        base_bytes as f64 / 1e9,
        cp.wall.as_secs_f64(),
        base_bytes as f64 / 1e6 / cp.wall.as_secs_f64()
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.join("out/report.json")).unwrap()).unwrap();
    for e in report["exports"].as_array().unwrap() {
        let engines: Vec<String> = e["engines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| match (&r["skipped"], &r["logits"]) {
                (serde_json::Value::String(why), _) => format!("{}: skipped ({why})", r["engine"]),
                (_, m) => format!(
                    "{}: relative {:.2e}, cosine {:.5}, top-1 {:.1}%, greedy {}",
                    r["engine"],
                    m["relative_error"].as_f64().unwrap_or(f64::NAN),
                    m["cosine"].as_f64().unwrap_or(f64::NAN),
                    m["top1_agreement"].as_f64().unwrap_or(f64::NAN) * 100.0,
                    if r["greedy_match"].as_bool() == Some(true) { "equal" } else { "differs" }
                ),
            })
            .collect();
        println!("{} ({}): {} — {}", e["export"], e["verdict"], engines.join("; "), e["failures"]);
    }
    println!("merge check: {}", report["merge"]);

    // The same exports validated again within 8 GiB (the reference comes from .state): engines
    // that cannot hold an export in that budget are refused by name, the others measure it.
    let started = std::time::Instant::now();
    let child = binary(&project)
        .args(["validate", "-q"])
        .env("MODEL_EXPORT_MAX_MEMORY", "8GiB")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let budgeted = measure_child(child, started);
    println!(
        "\n`validate` with max-memory = 8GiB (cached reference): {:.1} s, peak RSS {:.2} GiB",
        budgeted.wall.as_secs_f64(),
        budgeted.peak_rss_bytes as f64 / GIB
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(project.join("out/report.json")).unwrap()).unwrap();
    for e in report["exports"].as_array().unwrap() {
        for r in e["engines"].as_array().unwrap() {
            println!(
                "  {} in {}: {}",
                e["export"],
                r["engine"],
                match &r["skipped"] {
                    serde_json::Value::String(why) => format!("skipped: {why}"),
                    _ =>
                        format!("measured, cosine {:.5}", r["logits"]["cosine"].as_f64().unwrap_or(f64::NAN)),
                }
            );
        }
    }
}

/// `measure` for a spawned child whose output is already routed.
#[allow(clippy::zombie_processes)]
fn measure_child(child: std::process::Child, started: std::time::Instant) -> support::Measured {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting on our own child with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    // Exit 1 (an export failed its tolerance) still has a report to print.
    assert!(pid > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) <= 1, "run failed: {status}");
    support::Measured { wall: started.elapsed(), peak_rss_bytes: usage.ru_maxrss as u64 * 1024 }
}
