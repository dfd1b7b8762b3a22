//! The bad-input corpus (tests/bad-inputs/README.md): every case is built here from the fixtures
//! (so large files need not be committed), run through `cargo model-export run`, and must exit 1
//! or 2 without panicking, with a message (snapshot) that names the file, tensor or key and says
//! what to do, and must leave no finished-looking export behind.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::common::{Project, copy_dir, fixture};

/// A copy of the qwen3-tiny base and its training run, to break.
struct Inputs {
    root: tempfile::TempDir,
}

impl Inputs {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        copy_dir(&fixture("qwen3-tiny"), &root.path().join("base"));
        copy_dir(&fixture("qwen3-tiny-run"), &root.path().join("run"));
        Inputs { root }
    }

    fn base(&self) -> PathBuf {
        self.root.path().join("base")
    }

    fn run(&self) -> PathBuf {
        self.root.path().join("run")
    }

    fn checkpoint(&self) -> PathBuf {
        self.run().join("checkpoint-4")
    }
}

/// A safetensors file as its header (in file order) and data section.
fn read_safetensors(path: &Path) -> (Map<String, Value>, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn write_raw_safetensors(path: &Path, header: &str, data: &[u8]) {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

fn write_safetensors(path: &Path, header: &Map<String, Value>, data: &[u8]) {
    write_raw_safetensors(path, &serde_json::to_string(header).unwrap(), data);
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut Map<String, Value>)) {
    let mut value: Map<String, Value> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

/// Writes `value` (f32) over element `index` of `tensor` in a safetensors file.
fn poke_f32(path: &Path, tensor: &str, index: usize, value: f32) {
    let (header, mut data) = read_safetensors(path);
    let start = header[tensor]["data_offsets"][0].as_u64().unwrap() as usize + index * 4;
    data[start..start + 4].copy_from_slice(&value.to_le_bytes());
    write_safetensors(path, &header, &data);
}

/// Splits the base into two shards with an index, for the sharded cases.
fn shard_base(base: &Path) -> Map<String, Value> {
    let (header, data) = read_safetensors(&base.join("model.safetensors"));
    let mut shards = [Map::new(), Map::new()];
    let mut datas = [Vec::new(), Vec::new()];
    let mut weight_map = Map::new();
    for (i, (name, info)) in header.iter().filter(|(k, _)| *k != "__metadata__").enumerate() {
        let s = i % 2;
        let (a, b) = (
            info["data_offsets"][0].as_u64().unwrap() as usize,
            info["data_offsets"][1].as_u64().unwrap() as usize,
        );
        let start = datas[s].len();
        datas[s].extend_from_slice(&data[a..b]);
        let mut info = info.clone();
        info["data_offsets"] = json!([start, datas[s].len()]);
        shards[s].insert(name.clone(), info);
        weight_map.insert(name.clone(), json!(format!("model-0000{}-of-00002.safetensors", s + 1)));
    }
    std::fs::remove_file(base.join("model.safetensors")).unwrap();
    for s in 0..2 {
        write_safetensors(
            &base.join(format!("model-0000{}-of-00002.safetensors", s + 1)),
            &shards[s],
            &datas[s],
        );
    }
    let index = json!({ "metadata": { "total_size": 0 }, "weight_map": weight_map });
    std::fs::write(base.join("model.safetensors.index.json"), serde_json::to_vec_pretty(&index).unwrap())
        .unwrap();
    weight_map
}

/// Builds case `name`, runs `run` on it, and returns "exit N" and the redacted stderr.
fn run_case(name: &str) -> String {
    let inputs = Inputs::new();
    let (base, run, checkpoint) = (inputs.base(), inputs.run(), inputs.checkpoint());
    let model = base.join("model.safetensors");
    let adapter_file = checkpoint.join("adapter_model.safetensors");
    let mut adapter = checkpoint.clone();
    let mut out_dir = "exports".to_string();
    let mut extra = String::new();
    match name {
        "safetensors_truncated_in_header" => {
            let bytes = std::fs::read(&model).unwrap();
            std::fs::write(&model, &bytes[..40]).unwrap();
        }
        "safetensors_truncated_in_data" => {
            let bytes = std::fs::read(&model).unwrap();
            std::fs::write(&model, &bytes[..bytes.len() - 1000]).unwrap();
        }
        "safetensors_header_not_json" => {
            write_raw_safetensors(&model, "{\"model.norm.weight\": {oops", &[0; 64])
        }
        "safetensors_header_length_past_the_file" => {
            let mut bytes = std::fs::read(&model).unwrap();
            bytes[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
            std::fs::write(&model, bytes).unwrap();
        }
        "safetensors_overlapping_offsets" => {
            let (mut header, data) = read_safetensors(&model);
            header["model.norm.weight"]["data_offsets"] = json!([0, 256]);
            write_safetensors(&model, &header, &data);
        }
        "safetensors_offsets_out_of_range" => {
            let (mut header, data) = read_safetensors(&model);
            let end = data.len() as u64;
            header["model.norm.weight"]["data_offsets"] = json!([end - 128, end + 128]);
            write_safetensors(&model, &header, &data);
        }
        "safetensors_shape_disagrees_with_byte_length" => {
            let (mut header, data) = read_safetensors(&model);
            header["model.norm.weight"]["shape"] = json!([65]);
            write_safetensors(&model, &header, &data);
        }
        "safetensors_unsupported_dtype" => {
            let (mut header, data) = read_safetensors(&model);
            header["model.norm.weight"]["dtype"] = json!("C64");
            header["model.norm.weight"]["shape"] = json!([32]);
            write_safetensors(&model, &header, &data);
        }
        "safetensors_duplicate_tensor_names" => {
            let (header, data) = read_safetensors(&model);
            let text = serde_json::to_string(&header).unwrap();
            let norm = format!("\"model.norm.weight\":{}", header["model.norm.weight"]);
            let doubled = text.replacen(&norm, &format!("{norm},{norm}"), 1);
            write_raw_safetensors(&model, &doubled, &data);
        }
        "sharded_index_names_a_missing_shard" => {
            shard_base(&base);
            std::fs::remove_file(base.join("model-00002-of-00002.safetensors")).unwrap();
        }
        "sharded_index_names_a_tensor_absent_from_its_shard" => {
            shard_base(&base);
            edit_json(&base.join("model.safetensors.index.json"), |index| {
                index["weight_map"]["model.layers.0.mlp.extra_proj.weight"] =
                    json!("model-00001-of-00002.safetensors");
            });
        }
        "config_missing_required_field" => edit_json(&base.join("config.json"), |c| {
            c.remove("hidden_size");
        }),
        "config_wrong_type" => edit_json(&base.join("config.json"), |c| {
            c["num_hidden_layers"] = json!("two");
        }),
        "config_unknown_model_type" => edit_json(&base.join("config.json"), |c| {
            c["model_type"] = json!("llama4");
            c["architectures"] = json!(["Llama4ForCausalLM"]);
        }),
        "config_missing" => std::fs::remove_file(base.join("config.json")).unwrap(),
        "tokenizer_json_invalid" => {
            for dir in [&base, &checkpoint] {
                std::fs::write(dir.join("tokenizer.json"), "{\"version\": \"1.0\", \"model\": ").unwrap();
            }
        }
        "adapter_config_invalid_json" => {
            std::fs::write(checkpoint.join("adapter_config.json"), "{\"r\": 8,").unwrap()
        }
        "adapter_rank_zero" => edit_json(&checkpoint.join("adapter_config.json"), |c| {
            c["r"] = json!(0);
        }),
        "adapter_target_module_absent_from_base" => {
            let (header, data) = read_safetensors(&adapter_file);
            let renamed: Map<String, Value> =
                header.into_iter().map(|(k, v)| (k.replace("mlp.up_proj", "mlp.w3_proj"), v)).collect();
            write_safetensors(&adapter_file, &renamed, &data);
            edit_json(&checkpoint.join("adapter_config.json"), |c| {
                c["target_modules"] =
                    json!(["w3_proj", "gate_proj", "v_proj", "o_proj", "k_proj", "down_proj", "q_proj"]);
            });
        }
        "adapter_for_another_base" => {
            // LoRA factors of a model with hidden size 32: A is [r, 32] where the base wants [r, 64].
            let (mut header, data) = read_safetensors(&adapter_file);
            let key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight";
            header[key]["shape"] = json!([16, 32]);
            write_safetensors(&adapter_file, &header, &data);
        }
        "nan_in_base_weights" => poke_f32(&model, "model.layers.1.mlp.up_proj.weight", 77, f32::NAN),
        "inf_in_adapter_weights" => poke_f32(
            &adapter_file,
            "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight",
            5,
            f32::INFINITY,
        ),
        "empty_run_folder" => {
            adapter = inputs.root.path().join("empty-run");
            std::fs::create_dir(&adapter).unwrap();
        }
        "every_checkpoint_broken" => {
            adapter = run.clone();
            for c in ["checkpoint-2", "checkpoint-4"] {
                let file = run.join(c).join("adapter_model.safetensors");
                let bytes = std::fs::read(&file).unwrap();
                std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
            }
        }
        "checkpoint_path_is_a_file" => adapter = adapter_file.clone(),
        "symlink_loop" => {
            adapter = inputs.root.path().join("loop-a");
            std::os::unix::fs::symlink(inputs.root.path().join("loop-b"), &adapter).unwrap();
            std::os::unix::fs::symlink(&adapter, inputs.root.path().join("loop-b")).unwrap();
        }
        "unreadable_weights" => {
            // Root reads any file whatever its mode; a folder in the file's place fails for everyone.
            std::fs::remove_file(&model).unwrap();
            std::fs::create_dir(&model).unwrap();
        }
        "out_dir_inside_the_base" => out_dir = base.join("exports").display().to_string(),
        "out_dir_not_writable" => out_dir = "Cargo.toml/exports".into(),
        "export_name_with_a_path" => {
            extra =
                "\n[[package.metadata.model-export.export]]\nname = \"../escape\"\nformat = \"safetensors\"\n"
                    .into()
        }
        other => panic!("unknown case {other}"),
    }
    let project = Project::new(&format!(
        "[package.metadata.model-export]\nbase = {:?}\nadapter = {:?}\nout-dir = {:?}\n\n\
         [[package.metadata.model-export.export]]\nname = \"hf-f16\"\nformat = \"safetensors\"\ndtype = \"f16\"\n{extra}",
        base.display().to_string(),
        adapter.display().to_string(),
        out_dir
    ));
    let out = project.run(&["run"]);
    assert!(out.code == 1 || out.code == 2, "{name}: exit {}\n{}", out.code, out.stderr);
    assert!(!out.stderr.contains("panicked"), "{name}: {}", out.stderr);
    assert!(out.stderr.contains("help:"), "{name}: no help line\n{}", out.stderr);
    let exports = project.path().join("exports");
    assert!(!exports.join("hf-f16/manifest.json").exists(), "{name}: a finished-looking export was left");
    let root = inputs.root.path().display().to_string();
    format!("exit {}\n{}", out.code, project.redact(&out.stderr).replace(&root, "[INPUTS]"))
}

macro_rules! bad_inputs {
    ($($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                insta::assert_snapshot!(stringify!($case), run_case(stringify!($case)));
            }
        )+
        /// Every case above, for the README's count.
        pub const CASES: &[&str] = &[$(stringify!($case)),+];
    };
}

bad_inputs!(
    safetensors_truncated_in_header,
    safetensors_truncated_in_data,
    safetensors_header_not_json,
    safetensors_header_length_past_the_file,
    safetensors_overlapping_offsets,
    safetensors_offsets_out_of_range,
    safetensors_shape_disagrees_with_byte_length,
    safetensors_unsupported_dtype,
    safetensors_duplicate_tensor_names,
    sharded_index_names_a_missing_shard,
    sharded_index_names_a_tensor_absent_from_its_shard,
    config_missing_required_field,
    config_wrong_type,
    config_unknown_model_type,
    config_missing,
    tokenizer_json_invalid,
    adapter_config_invalid_json,
    adapter_rank_zero,
    adapter_target_module_absent_from_base,
    adapter_for_another_base,
    nan_in_base_weights,
    inf_in_adapter_weights,
    empty_run_folder,
    every_checkpoint_broken,
    checkpoint_path_is_a_file,
    symlink_loop,
    unreadable_weights,
    out_dir_inside_the_base,
    out_dir_not_writable,
    export_name_with_a_path,
);

#[test]
fn the_corpus_has_at_least_30_cases() {
    assert!(CASES.len() >= 30, "{}", CASES.len());
}

/// Unmounts the small tmpfs when the test ends, whatever happened.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn disk_full_mid_write_fails_cleanly() {
    let project = Project::new(
        "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\nadapter = \"{fixtures}/qwen3-tiny-run\"\n\
         out-dir = \"small-disk\"\n\n[[package.metadata.model-export.export]]\nname = \"onnx-f32\"\nformat = \"onnx\"\n",
    );
    let disk = project.path().join("small-disk");
    std::fs::create_dir(&disk).unwrap();
    // Everywhere: the streaming writer fails with ENOSPC at its first write (a fault point), and
    // nothing half-written may stay.
    let injected = project
        .run_env(&["run"], &[("MODEL_EXPORT_FAULT", "disk-full"), ("MODEL_EXPORT_FAULT_SIGNAL", "ERROR")]);
    assert_eq!(injected.code, 1, "{}", injected.stderr);
    assert!(injected.stderr.contains("No space left on device"), "{}", injected.stderr);
    assert!(!injected.stderr.contains("panicked"), "{}", injected.stderr);
    let mut left: Vec<String> = Vec::new();
    for dir in [disk.clone(), disk.join(".state")] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            left.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    left.retain(|name| name != ".state");
    assert!(left.is_empty(), "{left:?}");
    // And on a real full filesystem: 300 KiB, where the f32 ONNX export (about 400 KiB) cannot fit.
    let mount = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=300k", "tmpfs"])
        .arg(&disk)
        .output();
    let mounted = mount.as_ref().is_ok_and(|o| o.status.success());
    if !mounted {
        let why = mount.map_or_else(|e| e.to_string(), |o| String::from_utf8_lossy(&o.stderr).into_owned());
        // Said, not silent: the injected ENOSPC above covered the same path.
        eprintln!(
            "the real tmpfs part did not run: cannot mount a tmpfs here ({}); the injected disk-full did",
            why.trim()
        );
        return;
    }
    let _guard = Mounted(disk.clone());
    // Preflight would refuse this plan first; pretend the disk is large to reach the write.
    let out = project.run_env(&["run"], &[("MODEL_EXPORT_TEST_FREE_BYTES", "100000000000")]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    // Temporary names are random: keep their shape only.
    let temp = regex::Regex::new(r"\.partial-[A-Za-z0-9]+").unwrap();
    let message = temp.replace_all(&project.redact(&out.stderr), ".partial-[RANDOM]").into_owned();
    insta::assert_snapshot!("disk_full_mid_write", format!("exit {}\n{message}", out.code));
    // Nothing half-written is left: no temporaries, no export, no stage record.
    let mut left = Vec::new();
    for dir in [disk.clone(), disk.join(".state")] {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            left.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    left.retain(|name| name != ".state");
    assert!(left.is_empty(), "{left:?}");

    // Without the stand-in, preflight refuses the same plan before writing.
    let refused = project.run(&["run"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        project.redact(&refused.stderr).contains("not enough disk space in [PROJECT]/small-disk"),
        "{}",
        refused.stderr
    );
}

#[test]
fn allow_non_finite_lets_nan_weights_through() {
    let inputs = Inputs::new();
    poke_f32(&inputs.base().join("model.safetensors"), "model.layers.1.mlp.up_proj.weight", 77, f32::NAN);
    let project = Project::new(&format!(
        "[package.metadata.model-export]\nbase = {:?}\nadapter = {:?}\nout-dir = \"exports\"\nallow-non-finite = true\n\n\
         [[package.metadata.model-export.export]]\nname = \"hf\"\nformat = \"safetensors\"\n",
        inputs.base().display().to_string(),
        inputs.checkpoint().display().to_string(),
    ));
    let out = project.run(&["run", "--no-validate"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let written = project.path().join("exports/hf/model.safetensors");
    let (header, data) = read_safetensors(&written);
    let start =
        header["model.layers.1.mlp.up_proj.weight"]["data_offsets"][0].as_u64().unwrap() as usize + 77 * 4;
    assert!(f32::from_le_bytes(data[start..start + 4].try_into().unwrap()).is_nan());
}
