use crate::common::run_in;

#[test]
fn demo_builds_a_project_whose_broken_checkpoint_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("demo");
    let out =
        run_in(dir.path(), &["demo", "--dir", target.to_str().unwrap(), "--message-format", "json"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["base"]["parameters"], 98_688);
    assert!(v["detection"]["chosen"].as_str().unwrap().ends_with("checkpoint-4"));
    assert_eq!(v["detection"]["checkpoints"][0]["status"], "skipped");
    assert_eq!(v["config"]["exports"].as_array().unwrap().len(), 2);
    assert_eq!(v["exports"][0]["name"], "hf-f32");
    assert_eq!(v["exports"][1]["format"], "onnx");
    assert!(v["exports"][1]["checked_in"].as_array().unwrap().iter().any(|e| e == "tract"));
    assert!(target.join("target/model-export/onnx-f32/model.onnx").is_file());
    assert!(target.join("target/model-export/hf-f32/manifest.json").is_file());
    // The project it wrote is a real one: the CLI reads it from inside.
    let config = run_in(&target, &["config", "--message-format", "json"], &[]);
    assert_eq!(config.code, 0, "{}", config.stderr);
    assert_eq!(config.json()["package"], "model-export-demo");
}

#[test]
fn demo_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        let out = run_in(dir.path(), &["demo", "-q", "--dir", name], &[]);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    for file in [
        "models/qwen3-tiny/model.safetensors",
        "runs/sft/checkpoint-4/adapter_model.safetensors",
        "runs/sft/checkpoint-6/adapter_model.safetensors",
        // Exports too (their manifests differ only in the provenance paths of a and b).
        "target/model-export/hf-f32/model.safetensors",
        "target/model-export/onnx-f32/model.onnx",
    ] {
        let a = std::fs::read(dir.path().join("a").join(file)).unwrap();
        let b = std::fs::read(dir.path().join("b").join(file)).unwrap();
        assert!(a == b, "{file} differs between two demo runs");
    }
}

#[test]
fn demo_refuses_a_non_empty_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("keep.txt"), "mine").unwrap();
    let out = run_in(dir.path(), &["demo", "--dir", "."], &[]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("--dir") && out.stderr.contains("not empty"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(dir.path().join("keep.txt")).unwrap(), "mine");
}
