//! Our quantizers beside llama.cpp's and ONNX Runtime's own, on the trained fixture (qwen3-code
//! merged with its Rust run): the release binary writes the exports with default options (and
//! validates them, the held-out Rust text scored in our engines), then scripts/quant_peers.py
//! quantizes the same merged model with llama.cpp's and ORT's quantizers and measures every file
//! in the engine it is served by (llama.cpp for GGUF, ONNX Runtime for ONNX), printing the table
//! docs/quantization.md and the README show.
//!
//! cargo bench --bench quant_peers      (needs target/compat-venv: `bash scripts/compat.sh` makes it)

use std::path::Path;
use std::process::Command;

mod support;

const EXPORTS: &[(&str, &str, &str, &str)] = &[
    ("gguf-f32", "gguf", "f32", ""),
    ("gguf-f16", "gguf", "f16", ""),
    ("gguf-q8_0", "gguf", "q8_0", ""),
    ("gguf-q4_0", "gguf", "q4_0", ""),
    ("gguf-q4_k", "gguf", "q4_k", ""),
    ("gguf-q6_k", "gguf", "q6_k", ""),
    ("onnx-f32", "onnx", "f32", ""),
    ("onnx-int4", "onnx", "int4", ""),
    ("onnx-int4-ort", "onnx", "int4", "ort"),
    ("onnx-int8", "onnx", "int8", ""),
];

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("quantizers beside the peers': run it with `cargo bench --bench quant_peers`");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join("target/compat-venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: `bash scripts/compat.sh` makes it (llama-cpp-python, onnxruntime)",
        python.display()
    );
    let fixtures = root.join("tests/fixtures");
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("reference/qwen3-code.json")).unwrap()).unwrap();
    let docs: Vec<&str> =
        reference["eval_rust"].as_array().unwrap().iter().filter_map(|d| d.as_str()).collect();
    let dir = support::data_dir().join("quant-peers");
    let _ = std::fs::remove_dir_all(&dir);
    let exports: String = EXPORTS
        .iter()
        .map(|(name, format, dtype, target)| {
            let target = if target.is_empty() { String::new() } else { format!("target = \"{target}\"\n") };
            format!("\n[[package.metadata.model-export.export]]\nname = \"{name}\"\nformat = \"{format}\"\ndtype = \"{dtype}\"\n{target}")
        })
        .collect();
    let project = support::write_project(
        &dir,
        &fixtures.join("qwen3-code-base"),
        &fixtures.join("qwen3-code-rust-run"),
        &format!(
            "[package.metadata.model-export.validate]\ntext = \"rust.txt\"\ntext-context = 128\ntext-chunks = 48\n{exports}"
        ),
    );
    std::fs::write(project.join("rust.txt"), docs.join("<|endoftext|>")).unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_cargo-model-export"))
        .arg("--manifest-path")
        .arg(project.join("Cargo.toml"))
        .arg("run")
        .status()
        .unwrap();
    assert!(run.success(), "cargo model-export run failed");
    let peers = Command::new(&python)
        .arg(root.join("scripts/quant_peers.py"))
        .arg(project.join("out"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(peers.success(), "scripts/quant_peers.py failed");
}
