//! Loader benchmark (issue: generate): the Qwen3-0.6B-shaped random model (bf16) plus its
//! rank-16 run merged in memory, loaded by the release binary's `generate` in each mode, one new
//! token generated. Prints load time, peak RSS, the resident bytes the loader reports and the
//! f32 size, so "peak memory near the quantized size" is a measured figure.
//!
//! cargo bench --bench load      (data is cached under target/bench-data)

use std::process::{Command, Stdio};

mod support;
use support::measure;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("loader benchmark: run it with `cargo bench --bench load`");
        return;
    }
    let data = support::data_dir();
    let (base, run) = support::bench_model(&data, "qwen3-0.6b", None);
    println!(
        "Qwen3-0.6B shape (bf16 base + rank-16 LoRA merged in memory), `generate --max-new-tokens 0 | 1`"
    );
    println!("| mode | resident weights (info) | load: wall, peak RSS | load + 1 token: wall, peak RSS |");
    println!("|---|---|---|---|");
    for mode in ["none", "q8_0", "q4_k", "q4_0"] {
        let json_out = data.join(format!("load-{mode}.json"));
        let mut cells = Vec::new();
        for tokens in ["0", "1"] {
            let measured = measure(
                Command::new(env!("CARGO_BIN_EXE_cargo-model-export"))
                    .args(["generate", "--prompt", "Hello", "--greedy", "--max-new-tokens", tokens])
                    .args(["--quantization", mode, "--message-format", "json", "--adapter"])
                    .arg(&run)
                    .arg(&base)
                    .stdout(std::fs::File::create(&json_out).unwrap())
                    .stderr(Stdio::null()),
            );
            cells.push(format!(
                "{:.1} s, {:.0} MiB",
                measured.wall.as_secs_f64(),
                measured.peak_rss_bytes as f64 / 1048576.0
            ));
        }
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_out).unwrap()).unwrap();
        let resident = report["info"]["resident_bytes"].as_u64().unwrap_or(0);
        println!("| {mode} | {:.0} MiB | {} | {} |", resident as f64 / 1048576.0, cells[0], cells[1]);
    }
}
