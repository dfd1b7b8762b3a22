//! GGUF export benchmark: the Qwen3-0.6B-shaped random model (bf16) with a rank-16 LoRA run is
//! merged and written as GGUF f16, q8_0 and q4_k (llama.cpp's Q4_K_M mix) by the release binary
//! (export only: `--no-validate`), each timed with its peak RSS (median of 3), beside what
//! llama.cpp's own tools take for the same model on this machine.
//!
//! cargo bench --bench gguf_export      (data is cached under target/bench-data)

use std::path::Path;
use std::process::Command;

mod support;
use support::measure;

/// llama.cpp on this machine, Qwen3-0.6B (from the issue): `convert_hf_to_gguf.py` to f16 and
/// to q8_0, and `llama-quantize` f16 -> Q4_K_M: (seconds, peak RSS MiB).
const CONVERT_F16: (f64, f64) = (15.4, 1751.0);
const CONVERT_Q8_0: (f64, f64) = (18.1, 1753.0);
const QUANTIZE_Q4_K_M: (f64, f64) = (30.2, 1058.0);

/// Writes a GGUF export of `base` (merging `adapter` first, as `run` does, when given) `reps`
/// times: (median wall seconds, peak RSS MiB, file MiB).
fn export(project: &Path, base: &Path, adapter: Option<&Path>, dtype: &str, reps: usize) -> (f64, f64, f64) {
    let adapter = adapter.map_or(String::new(), |a| format!("adapter = {:?}\n", a.display().to_string()));
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"bench\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n\
             [package.metadata.model-export]\nbase = {:?}\n{adapter}out-dir = \"out\"\n\n\
             [[package.metadata.model-export.export]]\nname = \"gguf\"\nformat = \"gguf\"\ndtype = \"{dtype}\"\n",
            base.display().to_string(),
        ),
    )
    .unwrap();
    let mut runs = Vec::new();
    for _ in 0..reps {
        let _ = std::fs::remove_dir_all(project.join("out"));
        runs.push(measure(
            Command::new(env!("CARGO_BIN_EXE_cargo-model-export"))
                .args(["run", "-q", "--no-validate", "--manifest-path"])
                .arg(project.join("Cargo.toml"))
                .stdout(std::process::Stdio::null()),
        ));
    }
    runs.sort_by_key(|r| r.wall);
    let wall = runs[runs.len() / 2].wall.as_secs_f64();
    let rss = runs.iter().map(|r| r.peak_rss_bytes).max().unwrap_or(0) as f64 / 1048576.0;
    let file = std::fs::metadata(project.join("out/gguf/model.gguf")).unwrap().len() as f64 / 1048576.0;
    (wall, rss, file)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("GGUF export benchmark: run it with `cargo bench --bench gguf_export`");
        return;
    }
    let data = support::data_dir();
    let (base, run) = support::bench_model(&data, "qwen3-0.6b", None);
    let work = tempfile::tempdir_in(&data).unwrap();
    let project = work.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("src/lib.rs"), "").unwrap();
    println!(
        "Qwen3-0.6B shape (bf16) -> GGUF. HF folder -> file (what convert_hf_to_gguf.py does), median of 3;"
    );
    println!("with the rank-16 LoRA run: `run` merges to f32 first, then writes the file (1 run).");
    println!(
        "| type | ours: wall | peak RSS | file | + LoRA merge: wall | peak RSS | llama.cpp: wall | peak RSS | speed-up |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (dtype, theirs, how) in [
        ("f16", CONVERT_F16, "convert"),
        ("q8_0", CONVERT_Q8_0, "convert"),
        (
            "q4_k",
            (CONVERT_F16.0 + QUANTIZE_Q4_K_M.0, CONVERT_F16.1.max(QUANTIZE_Q4_K_M.1)),
            "convert + quantize",
        ),
    ] {
        let (wall, rss, file) = export(&project, &base, None, dtype, 3);
        let (merged_wall, merged_rss, _) = export(&project, &base, Some(&run), dtype, 1);
        println!(
            "| {dtype} | {wall:.1} s | {rss:.0} MiB | {file:.0} MiB | {merged_wall:.1} s | {merged_rss:.0} MiB | {:.1} s ({how}) | {:.0} MiB | {:.1}x |",
            theirs.0,
            theirs.1,
            theirs.0 / wall
        );
    }
}
