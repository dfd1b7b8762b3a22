//! Parallel exports benchmark (issue: pipeline): the Qwen3-0.6B-shaped random model and a rank-16
//! run, exported to f32 ONNX + f16 ONNX + bf16 safetensors by the release binary with `-j 1`
//! and `-j 3`, interleaved, median of 3 each (`--force --no-validate --skip-check`, so the merge
//! and the three writes are what is timed). Prints wall time and peak RSS, and checks that both
//! write the same bytes.
//!
//! cargo bench --bench parallel_exports      (data is cached under target/bench-data)

use std::path::Path;
use std::process::Command;

mod support;
use support::measure;

fn manifests(out: &Path) -> Vec<String> {
    ["onnx-f32", "onnx-f16", "st-bf16"]
        .iter()
        .map(|e| std::fs::read_to_string(out.join(e).join("manifest.json")).unwrap())
        .collect()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("parallel exports benchmark: run it with `cargo bench --bench parallel_exports`");
        return;
    }
    let data = support::data_dir();
    let (base_dir, run) = support::bench_model(&data, "qwen3-0.6b", None);
    let work = tempfile::tempdir_in(&data).unwrap();
    let project = support::write_project(
        &work.path().join("project"),
        &base_dir,
        &run,
        "[[package.metadata.model-export.export]]\nname = \"onnx-f32\"\nformat = \"onnx\"\n\n\
         [[package.metadata.model-export.export]]\nname = \"onnx-f16\"\nformat = \"onnx\"\ndtype = \"f16\"\n\n\
         [[package.metadata.model-export.export]]\nname = \"st-bf16\"\nformat = \"safetensors\"\ndtype = \"bf16\"\n",
    );
    let out = project.join("out");
    let mut timings: [Vec<support::Measured>; 2] = [Vec::new(), Vec::new()];
    let mut written: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..3 {
        for (slot, jobs) in ["1", "3"].iter().enumerate() {
            let _ = std::fs::remove_dir_all(&out);
            timings[slot].push(measure(
                Command::new(env!("CARGO_BIN_EXE_cargo-model-export"))
                    .args([
                        "run",
                        "-q",
                        "--force",
                        "--no-validate",
                        "--skip-check",
                        "-j",
                        jobs,
                        "--manifest-path",
                    ])
                    .arg(project.join("Cargo.toml"))
                    .stdout(std::process::Stdio::null()),
            ));
            written[slot] = manifests(&out);
        }
    }
    assert_eq!(written[0], written[1], "-j 3 wrote other bytes than -j 1");
    println!("Qwen3-0.6B shape (bf16 base + rank-16 LoRA) -> f32 ONNX + f16 ONNX + bf16 safetensors");
    for (slot, label) in ["-j 1 (sequential)", "-j 3 (parallel)  "].iter().enumerate() {
        let runs = &mut timings[slot];
        runs.sort_by_key(|r| r.wall);
        let rss = runs.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0);
        println!(
            "  {label}: {:.2} s (median of 3; min {:.2}, max {:.2}), peak RSS {:.0} MiB",
            runs[1].wall.as_secs_f64(),
            runs[0].wall.as_secs_f64(),
            runs[2].wall.as_secs_f64(),
            rss as f64 / 1048576.0
        );
    }
    println!("  both wrote identical manifests (every file's SHA-256)");
}
