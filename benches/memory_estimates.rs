//! Memory estimates against measurement (issue: safety): the Qwen3-0.6B-shaped random model
//! (bf16) and a rank-16 run, exported to bf16 safetensors and f32 ONNX. Each stage is run alone
//! (its record removed, the others skipped) by the release binary with default options, and its
//! peak RSS (wait4) is printed beside the plan's estimate (`run --dry-run`), and so is the whole
//! run's beside the largest estimate. The plan must stay within ±25% of what the stage takes.
//!
//! cargo bench --bench memory_estimates      (data is cached under target/bench-data)

use std::path::Path;
use std::process::Command;

mod support;
use support::measure;

fn binary(project: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cargo-model-export"));
    cmd.arg("--manifest-path").arg(project.join("Cargo.toml"));
    cmd
}

/// The plan's estimate of every stage, from `run --dry-run --message-format json`.
fn estimates(project: &Path) -> Vec<(String, u64)> {
    let out =
        binary(project).args(["--message-format", "json", "run", "--dry-run", "--force"]).output().unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the plan as JSON");
    plan["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| (s["id"].as_str().unwrap().to_string(), s["estimated_peak_memory"].as_u64().unwrap()))
        .collect()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("memory estimates benchmark: run it with `cargo bench --bench memory_estimates`");
        return;
    }
    let data = support::data_dir();
    let (base_dir, run) = support::bench_model(&data, "qwen3-0.6b", None);
    let work = tempfile::tempdir_in(&data).unwrap();
    let project = support::write_project(
        &work.path().join("project"),
        &base_dir,
        &run,
        "[package.metadata.model-export.validate]\nmax-new-tokens = 8\n\n\
         [[package.metadata.model-export.export]]\nname = \"hf-bf16\"\nformat = \"safetensors\"\n\n\
         [[package.metadata.model-export.export]]\nname = \"onnx-f32\"\nformat = \"onnx\"\n",
    );
    let planned = estimates(&project);
    let first = measure(binary(&project).args(["run", "-q"]).stdout(std::process::Stdio::null()));
    println!(
        "Qwen3-0.6B shape (bf16 base + rank-16 LoRA) -> bf16 safetensors + f32 ONNX; whole run: {:.1} s, peak RSS {:.2} GiB",
        first.wall.as_secs_f64(),
        first.peak_rss_bytes as f64 / (1u64 << 30) as f64
    );
    println!("| stage | estimate | measured peak RSS | estimate / measured |");
    println!("|---|---|---|---|");
    let records = project.join("out/.state/stages");
    let mut outside = Vec::new();
    for (stage, estimate) in planned.iter().filter(|(s, _)| s != "report") {
        // Everything done, then this stage's record removed: it alone runs.
        measure(binary(&project).args(["run", "-q"]).stdout(std::process::Stdio::null()));
        std::fs::remove_file(records.join(format!("{stage}.json"))).unwrap();
        // Export stages alone: without validation (which would follow a redone export).
        let mut cmd = binary(&project);
        cmd.arg("run").arg("-q");
        if !stage.starts_with("validate:") {
            cmd.arg("--no-validate");
        }
        let m = measure(cmd.stdout(std::process::Stdio::null()));
        let ratio = *estimate as f64 / m.peak_rss_bytes as f64;
        println!(
            "| {stage} | {:.1} MiB | {:.1} MiB | {ratio:.2} |",
            *estimate as f64 / (1u64 << 20) as f64,
            m.peak_rss_bytes as f64 / (1u64 << 20) as f64
        );
        if !(0.75..=1.25).contains(&ratio) {
            outside.push(stage.clone());
        }
    }
    let largest = planned.iter().map(|(_, e)| *e).max().unwrap_or(0);
    let ratio = largest as f64 / first.peak_rss_bytes as f64;
    println!(
        "| whole run (largest stage) | {:.1} MiB | {:.1} MiB | {ratio:.2} |",
        largest as f64 / (1u64 << 20) as f64,
        first.peak_rss_bytes as f64 / (1u64 << 20) as f64
    );
    if !(0.75..=1.25).contains(&ratio) {
        outside.push("whole run".into());
    }
    if !outside.is_empty() {
        println!("OUTSIDE ±25%: {}", outside.join(", "));
    }
}
