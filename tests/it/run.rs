use crate::common::Project;

#[test]
fn run_writes_every_safetensors_export() {
    let project = Project::new(
        r#"
[package.metadata.model-export]
base = "{fixtures}/qwen2-tiny"
adapter = "{fixtures}/qwen2-tiny-adapter"
out-dir = "exports"

[[package.metadata.model-export.export]]
name = "hf"
format = "safetensors"

[[package.metadata.model-export.export]]
name = "hf-bf16"
format = "safetensors"
dtype = "bf16"
options = { max-shard-size = "100KB" }
"#,
    );
    let out = project.run(&["run", "--message-format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = &out.json()["exports"];
    assert_eq!(v[0]["name"], "hf");
    assert_eq!(v[0]["dtype"], "f32");
    assert_eq!(v[1]["dtype"], "bf16");
    let exports = project.path().join("exports");
    assert!(exports.join("hf/model.safetensors").is_file());
    assert!(exports.join("hf/manifest.json").is_file());
    assert!(exports.join("hf-bf16/model.safetensors.index.json").is_file());
    let human = project.run(&["run"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("| hf-bf16 | safetensors | bf16"), "{}", human.stdout);
}

#[test]
fn run_writes_onnx_exports_checked_in_the_engines() {
    let project = Project::new(
        r#"
[package.metadata.model-export]
base = "{fixtures}/qwen3-tiny"
adapter = "{fixtures}/qwen3-tiny-run"
out-dir = "exports"

[[package.metadata.model-export.export]]
name = "onnx-f32"
format = "onnx"

[[package.metadata.model-export.export]]
name = "onnx-f16"
format = "onnx"
dtype = "f16"
options = { external-data = true, opset = 18 }
"#,
    );
    let out = project.run(&["run", "--message-format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = &out.json()["exports"];
    assert_eq!(v[0]["dtype"], "f32");
    assert_eq!(v[1]["dtype"], "f16");
    assert!(v[0]["checked_in"].as_array().unwrap().iter().any(|e| e == "tract"));
    let exports = project.path().join("exports");
    assert!(exports.join("onnx-f32/model.onnx").is_file());
    assert!(!exports.join("onnx-f32/model.onnx_data").exists());
    assert!(exports.join("onnx-f16/model.onnx_data").is_file());
    assert!(exports.join("onnx-f16/genai_config.json").is_file());
}

#[test]
fn run_refuses_formats_it_cannot_write_before_writing() {
    let project = Project::new(
        r#"
[package.metadata.model-export]
base = "{fixtures}/qwen2-tiny"
out-dir = "exports"

[[package.metadata.model-export.export]]
name = "hf"
format = "safetensors"

[[package.metadata.model-export.export]]
name = "onnx"
format = "onnx"
dtype = "bf16"
"#,
    );
    let out = project.run(&["run"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("export `onnx`"), "{}", out.stderr);
    assert!(!project.path().join("exports").exists());
}
