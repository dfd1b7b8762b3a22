use crate::common::{fixture, run_in};

#[test]
fn cargo_subcommand_argument_is_accepted() {
    // `cargo model-export inspect X` runs `cargo-model-export model-export inspect X`.
    let dir = tempfile::tempdir().unwrap();
    let path = fixture("qwen3-tiny");
    let out = run_in(
        dir.path(),
        &["model-export", "inspect", path.to_str().unwrap(), "--message-format", "json"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["parameters"], 98_688);
}

#[test]
fn help_lists_only_working_subcommands() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["--help"], &[]);
    assert_eq!(out.code, 0);
    for present in [
        "config",
        "detect",
        "inspect",
        "profiles",
        "merge",
        "run",
        "validate",
        "bench",
        "demo",
        "generate",
        "init",
        "explain",
        "presets",
        "completions",
        "--manifest-path",
        "--message-format",
        "--package",
    ] {
        assert!(out.stdout.contains(present), "`{present}` missing from --help:\n{}", out.stdout);
    }
    for absent in ["  export", "  gguf"] {
        assert!(
            !out.stdout.contains(absent),
            "`{absent}` must not be offered before it works:\n{}",
            out.stdout
        );
    }
}

#[test]
fn unknown_subcommand_is_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["frobnicate"], &[]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("frobnicate"));
}

#[test]
fn profiles_lists_qwen2_qwen3_and_qwen3_moe() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["profiles", "--message-format", "json"], &[]);
    assert_eq!(out.code, 0);
    let names: Vec<String> =
        out.json().as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["qwen2", "qwen3", "qwen3_moe"]);
    assert_eq!(out.json()[2]["moe"]["gguf"]["gate_exps"], "ffn_gate_exps.weight");
    assert_eq!(out.json()[1]["tensors"]["layer_prefix"], "model.layers.{layer}.");
}

#[test]
fn errors_in_json_mode_are_json_objects() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["inspect", "does-not-exist", "--message-format", "json"], &[]);
    assert_eq!(out.code, 1);
    let v = out.json();
    assert_eq!(v["reason"], "error");
    assert!(v["message"].as_str().unwrap().contains("does-not-exist"));
    assert!(!v["help"].as_str().unwrap().is_empty());
}
