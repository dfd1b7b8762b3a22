use crate::common::Project;

const GOOD: &str = r#"
[package.metadata.model-export]
base = "{fixtures}/qwen3-tiny"
adapter = "{fixtures}/qwen3-tiny-run"

[[package.metadata.model-export.export]]
name = "hf"
format = "safetensors"
"#;

/// Runs `config` on a project with `tables` and returns the redacted error, asserting exit 2.
fn config_error(tables: &str, env: &[(&str, &str)], args: &[&str]) -> String {
    let project = Project::new(tables);
    let mut all = vec!["config"];
    all.extend_from_slice(args);
    let out = project.run_env(&all, env);
    assert_eq!(out.code, 2, "expected exit 2, stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    project.redact(out.stderr.trim_end())
}

macro_rules! bad_config {
    ($name:ident, $tables:expr) => {
        bad_config!($name, $tables, &[], &[]);
    };
    ($name:ident, $tables:expr, $env:expr, $args:expr) => {
        #[test]
        fn $name() {
            insta::assert_snapshot!(config_error($tables, $env, $args));
        }
    };
}

bad_config!(
    unknown_top_level_key,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\nbsae = \"x\"\n"
);
bad_config!(base_of_wrong_type, "[package.metadata.model-export]\nbase = 5\n");
bad_config!(missing_base, "[package.metadata.model-export]\nadapter = \"{fixtures}/qwen3-tiny-run\"\n");
bad_config!(base_does_not_exist, "[package.metadata.model-export]\nbase = \"models/nope\"\n");
bad_config!(base_without_config_json, "[package.metadata.model-export]\nbase = \"{fixtures}/tokenizer\"\n");
bad_config!(
    adapter_does_not_exist,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\nadapter = \"runs/missing\"\n"
);
bad_config!(
    unknown_profile,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\nprofile = \"llama\"\n"
);
bad_config!(
    bad_dtype_value,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"a\"\nformat = \"onnx\"\ndtype = \"int3\"\n"
);
bad_config!(
    bad_format_value,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"a\"\nformat = \"tflite\"\n"
);
bad_config!(
    duplicate_export_names,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"a\"\nformat = \"onnx\"\n\n[[package.metadata.model-export.export]]\nname = \"a\"\nformat = \"safetensors\"\n"
);
bad_config!(
    export_without_name,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nformat = \"onnx\"\n"
);
bad_config!(
    misspelled_export_key,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"a\"\nformat = \"onnx\"\ndtpye = \"f16\"\n"
);
bad_config!(
    export_name_not_a_folder_name,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"../evil\"\nformat = \"onnx\"\n"
);
bad_config!(
    quantized_safetensors,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"a\"\nformat = \"safetensors\"\ndtype = \"int4\"\n"
);
bad_config!(
    target_on_safetensors,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"a\"\nformat = \"safetensors\"\ntarget = \"ort\"\n"
);
bad_config!(
    block_size_without_int4,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"a\"\nformat = \"onnx\"\ndtype = \"int8\"\noptions = { block-size = 32 }\n"
);
bad_config!(
    unsupported_opset,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"a\"\nformat = \"onnx\"\noptions = { opset = 12 }\n"
);
bad_config!(
    bad_shard_size,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"a\"\nformat = \"safetensors\"\noptions = { max-shard-size = \"5 parsecs\" }\n"
);
bad_config!(
    unknown_engine,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[package.metadata.model-export.validate]\nengines = [\"onnxruntime\"]\n"
);
bad_config!(
    zero_new_tokens,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[package.metadata.model-export.validate]\nmax-new-tokens = 0\n"
);
bad_config!(table_is_not_a_table, "[package.metadata]\nmodel-export = \"qwen\"\n");
bad_config!(
    unknown_key_in_workspace_table,
    "[workspace.metadata.model-export]\nout_dir = \"x\"\n\n[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n"
);
bad_config!(
    out_dir_inside_base,
    "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\nout-dir = \"{fixtures}/qwen3-tiny/out\"\n"
);
bad_config!(bad_env_value, GOOD, &[("MODEL_EXPORT_VALIDATE_MAX_NEW_TOKENS", "lots")], &[]);
bad_config!(bad_env_engines, GOOD, &[("MODEL_EXPORT_VALIDATE_ENGINES", "ort,torch")], &[]);
bad_config!(unknown_profile_flag, GOOD, &[], &["--profile", "gpt2"]);

#[test]
fn unknown_package_lists_the_available_ones() {
    let msg = config_error(GOOD, &[], &["-p", "other"]);
    assert!(msg.contains("package `other` is not in the workspace"), "{msg}");
    assert!(msg.contains("help: pass -p with one of: proj"), "{msg}");
}

#[test]
fn config_shows_provenance_of_each_value() {
    let project = Project::new(GOOD);
    let out = project.run(&["config", "--message-format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["base"]["source"]["kind"], "package");
    assert!(v["base"]["value"].as_str().unwrap().ends_with("fixtures/qwen3-tiny"));
    assert_eq!(v["out_dir"]["source"]["kind"], "default");
    assert!(v["out_dir"]["value"].as_str().unwrap().ends_with("target/model-export"));
    assert_eq!(v["validate"]["max_new_tokens"]["value"], 16);
    assert_eq!(v["exports"][0]["value"]["name"], "hf");
    assert_eq!(v["exports"][0]["value"]["dtype"], serde_json::Value::Null);
    let human = project.run(&["config"]);
    assert!(human.stdout.contains("[default]"), "{}", human.stdout);
    assert!(human.stdout.contains("[package table ("), "{}", human.stdout);
}

#[test]
fn env_beats_table_and_flag_beats_env() {
    let project =
        Project::new(&format!("{GOOD}\n[package.metadata.model-export.validate]\nmax-new-tokens = 8\n"));
    let env = [("MODEL_EXPORT_OUT_DIR", "/tmp/from-env"), ("MODEL_EXPORT_VALIDATE_MAX_NEW_TOKENS", "4")];
    let v = project.run_env(&["config", "--message-format", "json"], &env).json();
    assert_eq!(v["out_dir"]["value"], "/tmp/from-env");
    assert_eq!(v["out_dir"]["source"], serde_json::json!({"kind": "env", "var": "MODEL_EXPORT_OUT_DIR"}));
    assert_eq!(v["validate"]["max_new_tokens"]["value"], 4);
    assert_eq!(v["validate"]["max_new_tokens"]["source"]["var"], "MODEL_EXPORT_VALIDATE_MAX_NEW_TOKENS");

    let v =
        project.run_env(&["config", "--out-dir", "/tmp/from-flag", "--message-format", "json"], &env).json();
    assert_eq!(v["out_dir"]["value"], "/tmp/from-flag");
    assert_eq!(v["out_dir"]["source"], serde_json::json!({"kind": "flag", "flag": "--out-dir"}));
}

#[test]
fn workspace_table_gives_defaults_that_the_package_overrides() {
    let project = Project::new(
        "[workspace.metadata.model-export]\nout-dir = \"ws-out\"\nprofile = \"qwen3\"\n\n[workspace.metadata.model-export.validate]\nmax-new-tokens = 3\n\n[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\nprofile = \"auto\"\n",
    );
    let v = project.run(&["config", "--message-format", "json"]).json();
    assert_eq!(v["profile"]["value"], "auto");
    assert_eq!(v["profile"]["source"]["kind"], "package");
    assert_eq!(v["out_dir"]["source"]["kind"], "workspace");
    assert!(v["out_dir"]["value"].as_str().unwrap().ends_with("ws-out"));
    assert_eq!(v["validate"]["max_new_tokens"]["value"], 3);
}

#[test]
fn relative_paths_resolve_against_the_manifest_folder() {
    let project =
        Project::new("[package.metadata.model-export]\nbase = \"models/base\"\nout-dir = \"out\"\n");
    std::fs::create_dir_all(project.path().join("models/base")).unwrap();
    std::fs::write(project.path().join("models/base/config.json"), "{}").unwrap();
    // Run from a sub-folder: paths still start at the manifest.
    let sub = project.path().join("src");
    let out = crate::common::run_in(&sub, &["config", "--message-format", "json"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["base"]["value"], project.path().join("models/base").to_str().unwrap());
    assert_eq!(v["out_dir"]["value"], project.path().join("out").to_str().unwrap());
}

#[test]
fn export_defaults_are_filled_in() {
    let project = Project::new(
        "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\n\n[[package.metadata.model-export.export]]\nname = \"o\"\nformat = \"onnx\"\n\n[[package.metadata.model-export.export]]\nname = \"q\"\nformat = \"onnx\"\ndtype = \"int4\"\ntarget = \"ort\"\noptions = { block-size = 64 }\n",
    );
    let v = project.run(&["config", "--message-format", "json"]).json();
    assert_eq!(v["exports"][0]["value"]["dtype"], "f32");
    assert_eq!(v["exports"][0]["value"]["target"], "portable");
    assert_eq!(v["exports"][1]["value"]["options"]["block-size"], 64);
}
