//! llama.cpp measured on the same GGUF file in the same run, for the ratio `bench` prints:
//! `LLAMA_BENCH=path/to/llama-bench` runs llama.cpp's own benchmark; otherwise a Python with
//! llama-cpp-python (`LLAMA_CPP_PYTHON`, else the compatibility checks' venv
//! `target/compat-venv`, else `python3`) runs `scripts/llama_peer.py`, which feeds the tokens
//! bench feeds our engines. Without either, GGUF rows have no peer column.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

const PEER_SCRIPT: &str = include_str!("../../scripts/llama_peer.py");

/// What bench runs: the same for our engines and for llama.cpp.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub warmup: usize,
    pub repetitions: usize,
    pub threads: usize,
}

/// llama.cpp's times on one file, one per repetition.
#[derive(Debug, Clone)]
pub struct PeerTimes {
    /// What measured them (llama-bench, or llama-cpp-python and its version).
    pub engine: String,
    pub prefill_ms: Vec<f64>,
    pub decode_ms_per_token: Vec<f64>,
}

#[derive(Deserialize)]
struct PythonOutput {
    engine: Option<String>,
    prefill_ms: Option<Vec<f64>>,
    decode_ms: Option<Vec<f64>>,
    unavailable: Option<String>,
}

#[derive(Deserialize)]
struct LlamaBenchRow {
    n_prompt: usize,
    n_gen: usize,
    samples_ns: Vec<f64>,
}

/// llama.cpp's figures on `gguf`, or why there are none (logged, not an error: the peer is
/// optional).
pub fn measure(gguf: &Path, options: &Workload) -> Result<PeerTimes, String> {
    if let Some(binary) = std::env::var_os("LLAMA_BENCH") {
        return llama_bench(Path::new(&binary), gguf, options);
    }
    let mut reasons = Vec::new();
    for python in pythons() {
        match python_peer(&python, gguf, options) {
            Ok(figures) => return Ok(figures),
            Err(reason) => reasons.push(format!("{}: {reason}", python.display())),
        }
    }
    Err(format!(
        "no llama.cpp to compare with (set LLAMA_BENCH=path/to/llama-bench or LLAMA_CPP_PYTHON=a python with llama-cpp-python): {}",
        reasons.join("; ")
    ))
}

fn pythons() -> Vec<PathBuf> {
    if let Some(python) = std::env::var_os("LLAMA_CPP_PYTHON") {
        return vec![PathBuf::from(python)];
    }
    let venv = PathBuf::from("target/compat-venv/bin/python");
    let mut found: Vec<PathBuf> = venv.is_file().then_some(venv).into_iter().collect();
    found.push(PathBuf::from("python3"));
    found
}

fn python_peer(python: &Path, gguf: &Path, options: &Workload) -> Result<PeerTimes, String> {
    let script = tempfile::Builder::new()
        .prefix("llama_peer")
        .suffix(".py")
        .tempfile()
        .and_then(|mut f| std::io::Write::write_all(&mut f, PEER_SCRIPT.as_bytes()).map(|_| f))
        .map_err(|e| format!("cannot write the peer script: {e}"))?;
    let output = Command::new(python)
        .arg(script.path())
        .arg(gguf)
        .args(
            [
                options.prompt_tokens,
                options.decode_tokens,
                options.warmup,
                options.repetitions,
                options.threads,
            ]
            .map(|n| n.to_string()),
        )
        .output()
        .map_err(|e| format!("does not run: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    let parsed: PythonOutput = serde_json::from_str(line).map_err(|_| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        format!("no figures ({})", stderr.lines().last().unwrap_or("no output"))
    })?;
    if let Some(why) = parsed.unavailable {
        return Err(why);
    }
    match (parsed.prefill_ms, parsed.decode_ms) {
        (Some(prefill_ms), Some(decode_ms_per_token)) if !decode_ms_per_token.is_empty() => Ok(PeerTimes {
            engine: parsed.engine.unwrap_or_else(|| "llama.cpp".into()),
            prefill_ms,
            decode_ms_per_token,
        }),
        _ => Err("the peer script printed no times".into()),
    }
}

fn llama_bench(binary: &Path, gguf: &Path, options: &Workload) -> Result<PeerTimes, String> {
    let output = Command::new(binary)
        .arg("-m")
        .arg(gguf)
        .args(["-p", &options.prompt_tokens.to_string(), "-n", &options.decode_tokens.to_string()])
        .args(["-t", &options.threads.to_string(), "-r", &options.repetitions.to_string(), "-o", "json"])
        .output()
        .map_err(|e| format!("{}: does not run: {e}", binary.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("{} failed: {}", binary.display(), stderr.lines().last().unwrap_or("")));
    }
    let rows: Vec<LlamaBenchRow> = serde_json::from_slice(&output.stdout)
        .map_err(|e| format!("{}: unreadable JSON: {e}", binary.display()))?;
    let prefill = rows.iter().find(|r| r.n_prompt > 0 && r.n_gen == 0);
    let decode = rows.iter().find(|r| r.n_gen > 0 && r.n_prompt == 0);
    match (prefill, decode) {
        (Some(p), Some(d)) => Ok(PeerTimes {
            engine: "llama.cpp (llama-bench)".into(),
            prefill_ms: p.samples_ns.iter().map(|ns| ns / 1e6).collect(),
            decode_ms_per_token: d.samples_ns.iter().map(|ns| ns / 1e6 / d.n_gen as f64).collect(),
        }),
        _ => Err(format!("{}: no prompt and generation rows in its output", binary.display())),
    }
}
