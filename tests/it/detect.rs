use crate::common::Project;

const RUN_TABLE: &str = r#"
[package.metadata.model-export]
base = "{fixtures}/qwen3-tiny"
adapter = "{fixtures}/qwen3-tiny-run"
"#;

#[test]
fn chooses_newest_valid_checkpoint_and_reports_the_broken_one() {
    let project = Project::new(RUN_TABLE);
    let out = project.run(&["detect", "--message-format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["kind"], "training-run");
    assert!(v["chosen"].as_str().unwrap().ends_with("checkpoint-4"));
    assert_eq!(v["trainer_state"]["global_step"], 4);
    assert_eq!(v["trainer_state"]["last_loss"], 5.2904);
    assert!((v["trainer_state"]["epoch"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert_eq!(v["checked_against_base"], true);
    let cps = v["checkpoints"].as_array().unwrap();
    assert_eq!(cps[0]["name"], "checkpoint-6");
    assert_eq!(cps[0]["status"], "skipped");
    assert!(cps[0]["reason"].as_str().unwrap().contains("truncated tensor data"), "{}", cps[0]["reason"]);
    assert_eq!(cps[1]["status"], "chosen");
    assert_eq!(cps[2]["status"], "older");
}

#[test]
fn human_output_shows_step_loss_and_skip_reason() {
    let project = Project::new(RUN_TABLE);
    let out = project.run(&["detect"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("global step      4 of 6"), "{}", out.stdout);
    assert!(out.stdout.contains("5.2904"));
    assert!(out.stdout.contains("| checkpoint-6 | 6    | skipped |"), "{}", out.stdout);
    assert!(out.stdout.contains("truncated tensor data"));
}

#[test]
fn adapter_folder_is_used_directly() {
    let project = Project::new(
        r#"
[package.metadata.model-export]
base = "{fixtures}/qwen2-tiny"
adapter = "{fixtures}/qwen2-tiny-adapter"
"#,
    );
    let v = project.run(&["detect", "--message-format", "json"]).json();
    assert_eq!(v["kind"], "adapter-folder");
    assert_eq!(v["checkpoints"], serde_json::json!([]));
}

#[test]
fn adapter_for_another_base_is_refused_naming_the_tensor() {
    // A base like qwen3-tiny but with a narrower MLP: the run's gate/up/down LoRA pairs cannot fit.
    let project = Project::new("");
    let base = project.path().join("other-base");
    let tiny = model_export::synth::ModelShape::by_name("qwen3-tiny").unwrap();
    let shape = model_export::synth::ModelShape { intermediate_size: 96, ..tiny.clone() };
    model_export::synth::write_model(&shape, &base, 7, None).unwrap();
    let adapter = crate::common::fixture("qwen3-tiny-run/checkpoint-4");
    let out =
        project.run(&["detect", "--base", base.to_str().unwrap(), "--adapter", adapter.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "tensor `base_model.model.model.layers.0.mlp.down_proj.lora_A.weight`: does not fit the base"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("base `model.layers.0.mlp.down_proj.weight` is [64, 96]"), "{}", out.stderr);
}

#[test]
fn every_checkpoint_broken_is_an_error_listing_each() {
    let project = Project::new("");
    let run = project.path().join("run");
    let broken = run.join("checkpoint-6");
    std::fs::create_dir_all(&broken).unwrap();
    let src = crate::common::fixture("qwen3-tiny-run/checkpoint-6");
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(src.join(f), broken.join(f)).unwrap();
    }
    std::fs::create_dir_all(run.join("checkpoint-8")).unwrap();
    let base = crate::common::fixture("qwen3-tiny");
    let out = project.run(&["detect", "--base", base.to_str().unwrap(), "--adapter", run.to_str().unwrap()]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no valid checkpoint"), "{}", out.stderr);
    assert!(out.stderr.contains("checkpoint-8 ("), "{}", out.stderr);
    assert!(
        out.stderr.contains("checkpoint-6 (") && out.stderr.contains("truncated tensor data"),
        "{}",
        out.stderr
    );
}
