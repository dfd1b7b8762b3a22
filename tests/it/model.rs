use std::path::Path;

use model_export::synth::{ModelShape, write_model};

use crate::common::run_in;

fn sharded_model(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("sharded");
    let shape = ModelShape::by_name("qwen3-tiny").unwrap();
    write_model(shape, &path, 5, Some(100_000)).unwrap();
    path
}

fn inspect(dir: &Path, model: &Path) -> crate::common::Output {
    run_in(dir, &["inspect", model.to_str().unwrap(), "--message-format", "json"], &[])
}

#[test]
fn sharded_model_reads_through_its_index() {
    let dir = tempfile::tempdir().unwrap();
    let model = sharded_model(dir.path());
    let out = inspect(dir.path(), &model);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["parameters"], 98_688);
    assert_eq!(v["files"], 5);
    assert_eq!(v["problems"], serde_json::json!([]));
}

#[test]
fn missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = sharded_model(dir.path());
    std::fs::remove_file(model.join("model-00002-of-00005.safetensors")).unwrap();
    let out = inspect(dir.path(), &model);
    assert_eq!(out.code, 1);
    let message = out.json()["message"].as_str().unwrap().to_string();
    assert!(message.ends_with("model.safetensors.index.json: shard `model-00002-of-00005.safetensors` named by the index is missing"), "{message}");
}

#[test]
fn tensor_absent_from_its_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = sharded_model(dir.path());
    let index_path = model.join("model.safetensors.index.json");
    let index = std::fs::read_to_string(&index_path).unwrap();
    let moved = index.replace(
        "\"model.norm.weight\": \"model-00001-of-00005.safetensors\"",
        "\"model.norm.weight\": \"model-00002-of-00005.safetensors\"",
    );
    assert_ne!(index, moved, "the test edits the index");
    std::fs::write(&index_path, moved).unwrap();
    let message = inspect(dir.path(), &model).json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("model-00002-of-00005.safetensors: tensor `model.norm.weight`: listed in model.safetensors.index.json but absent from this shard"), "{message}");
}

#[test]
fn config_json_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let model = sharded_model(dir.path());
    let config_path = model.join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, config.replace("\"hidden_size\": 64,", "")).unwrap();
    let message = inspect(dir.path(), &model).json()["message"].as_str().unwrap().to_string();
    assert!(
        message.ends_with("config.json: missing required field `hidden_size` (the qwen3 profile needs it)"),
        "{message}"
    );

    std::fs::write(&config_path, config.replace("\"model_type\": \"qwen3\"", "\"model_type\": \"mistral\""))
        .unwrap();
    let out = inspect(dir.path(), &model);
    assert_eq!(out.code, 1);
    let v = out.json();
    let message = v["message"].as_str().unwrap();
    assert!(message.ends_with("config.json has model_type `mistral`, which no profile handles"), "{message}");
    assert!(message.starts_with(&dir.path().display().to_string()), "names the file: {message}");
    assert!(v["help"].as_str().unwrap().contains("qwen2, qwen3"));

    // The profile can be forced, and a config that disagrees with the weights is reported per tensor.
    let out = run_in(
        dir.path(),
        &["inspect", model.to_str().unwrap(), "--profile", "qwen2", "--message-format", "json"],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let problems = out.json()["problems"].to_string();
    assert!(
        problems.contains("model.layers.0.self_attn.q_proj.bias") && problems.contains("missing"),
        "{problems}"
    );
    assert!(
        problems.contains("model.layers.0.self_attn.q_norm.weight")
            && problems.contains("not part of the architecture"),
        "{problems}"
    );
}

#[test]
fn truncated_weights_are_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    write_model(ModelShape::by_name("qwen2-tiny").unwrap(), &model, 5, None).unwrap();
    let weights = model.join("model.safetensors");
    let len = std::fs::metadata(&weights).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&weights).unwrap().set_len(len - 10).unwrap();
    let out = inspect(dir.path(), &model);
    assert_eq!(out.code, 1);
    let message = out.json()["message"].as_str().unwrap().to_string();
    assert!(message.contains("truncated tensor data"), "{message}");
    assert!(message.contains("tensor `"), "{message}");
}
