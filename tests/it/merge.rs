use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use model_export::export::safetensors::{SafetensorsWriter, TensorEntry};
use model_export::model::{SafetensorsFile, TensorDtype};

use crate::common::{fixture, run_in};

/// name -> (shape, values as f32)
fn tensors(path: &Path) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    let file = SafetensorsFile::open(path).unwrap();
    file.tensors()
        .iter()
        .map(|t| {
            let mut values = Vec::new();
            file.read_f32(t, &mut values).unwrap();
            (t.name.clone(), (t.shape.clone(), values))
        })
        .collect()
}

fn merge(dir: &Path, base: &Path, adapter: &Path, extra: &[&str]) -> (crate::common::Output, PathBuf) {
    let out = dir.join("merged");
    let mut args = vec!["merge", "--base", base.to_str().unwrap(), "--adapter", adapter.to_str().unwrap()];
    args.extend_from_slice(&["--out", out.to_str().unwrap(), "--message-format", "json"]);
    args.extend_from_slice(extra);
    (run_in(dir, &args, &[]), out)
}

fn assert_matches_peft(case: &str, base: &str, adapter: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (out, merged) = merge(dir.path(), &fixture(base), &fixture(adapter), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let ours = tensors(&merged.join("model.safetensors"));
    let peft = tensors(&fixture(&format!("reference/{case}-merged/model.safetensors")));
    assert_eq!(ours.keys().collect::<Vec<_>>(), peft.keys().collect::<Vec<_>>(), "same tensor names");
    let mut worst = (0.0f32, String::new());
    for (name, (shape, values)) in &peft {
        let (our_shape, our_values) = &ours[name];
        assert_eq!(our_shape, shape, "{name}");
        for (a, b) in our_values.iter().zip(values) {
            let diff = (a - b).abs();
            if diff > worst.0 {
                worst = (diff, name.clone());
            }
        }
    }
    assert!(worst.0 <= 1e-6, "{case}: max abs difference {} in {}", worst.0, worst.1);
    // The adapter mattered: some tensor moved away from the base.
    let base_tensors = tensors(&fixture(&format!("{base}/model.safetensors")));
    let moved =
        base_tensors.iter().any(|(n, (_, v))| v.iter().zip(&ours[n].1).any(|(a, b)| (a - b).abs() > 1e-3));
    assert!(moved, "{case}: the merge changed nothing");
}

#[test]
fn qwen3_run_merge_equals_peft() {
    assert_matches_peft("qwen3-tiny", "qwen3-tiny", "qwen3-tiny-run");
}

#[test]
fn qwen2_rslora_adapter_merge_equals_peft() {
    assert_matches_peft("qwen2-tiny", "qwen2-tiny", "qwen2-tiny-adapter");
}

#[test]
fn qwen3_moe_merge_of_attention_and_every_expert_equals_peft() {
    // LoRA on q/k/v/o and on gate/up/down of each of the 8 experts; the router untouched.
    assert_matches_peft("qwen3-moe-tiny", "qwen3-moe-tiny", "qwen3-moe-tiny-adapter");
}

#[test]
fn merged_folder_is_complete_and_clean() {
    let dir = tempfile::tempdir().unwrap();
    let (out, merged) = merge(dir.path(), &fixture("qwen3-tiny"), &fixture("qwen3-tiny-run"), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let v = out.json();
    assert_eq!(v["checkpoint"], "checkpoint-4");
    assert_eq!(v["dtype"], "f32");
    assert_eq!(v["parameters"], 98_688);
    let mut files: Vec<String> = std::fs::read_dir(&merged)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "chat_template.jinja",
            "config.json",
            "generation_config.json",
            "manifest.json",
            "model.safetensors",
            "special_tokens_map.json",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    // Tokenizer and chat template from the checkpoint; config from the base with its dtype.
    assert_eq!(
        std::fs::read(merged.join("chat_template.jinja")).unwrap(),
        std::fs::read(fixture("qwen3-tiny-run/checkpoint-4/chat_template.jinja")).unwrap()
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "float32");
    assert_eq!(config["tie_word_embeddings"], true);
    // The manifest lists every other file with its size and hash, and the provenance.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"].as_array().unwrap().len(), files.len() - 1);
    assert_eq!(manifest["provenance"]["global_step"], 4);
    let weights = std::fs::read(merged.join("model.safetensors")).unwrap();
    let entry =
        manifest["files"].as_array().unwrap().iter().find(|f| f["path"] == "model.safetensors").unwrap();
    assert_eq!(entry["size"], weights.len());
    assert_eq!(entry["sha256"], model_export::export::manifest::sha256_hex(&weights));
    // Nothing else was left beside the folder.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn two_merges_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let (first, a) =
        merge(dir.path(), &fixture("qwen2-tiny"), &fixture("qwen2-tiny-adapter"), &["--dtype", "bf16"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let a_copy = dir.path().join("first");
    std::fs::rename(&a, &a_copy).unwrap();
    let (second, b) =
        merge(dir.path(), &fixture("qwen2-tiny"), &fixture("qwen2-tiny-adapter"), &["--dtype", "bf16"]);
    assert_eq!(second.code, 0);
    for entry in std::fs::read_dir(&a_copy).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            std::fs::read(a_copy.join(&name)).unwrap() == std::fs::read(b.join(&name)).unwrap(),
            "{name:?} differs"
        );
    }
}

#[test]
fn bf16_output_is_the_rounded_f32_merge() {
    let dir = tempfile::tempdir().unwrap();
    let (out, merged) =
        merge(dir.path(), &fixture("qwen2-tiny"), &fixture("qwen2-tiny-adapter"), &["--dtype", "bf16"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let file = SafetensorsFile::open(&merged.join("model.safetensors")).unwrap();
    assert!(file.tensors().iter().all(|t| t.dtype == TensorDtype::BF16));
    let ours = tensors(&merged.join("model.safetensors"));
    let peft = tensors(&fixture("reference/qwen2-tiny-merged/model.safetensors"));
    // Each value is peft's f32 result rounded once to bf16; where peft's value sits within a
    // rounding error of a tie, our f32 value (1e-8 away) may round to the neighbour.
    let (mut exact, mut total) = (0usize, 0usize);
    for (name, (_, values)) in &peft {
        for (a, b) in ours[name].1.iter().zip(values) {
            let rounded = half::bf16::from_f32(*b).to_f32();
            assert!((a - rounded).abs() <= b.abs() / 128.0, "{name}: {a} vs {b}");
            exact += usize::from(*a == rounded);
            total += 1;
        }
    }
    assert!(exact as f64 >= 0.999 * total as f64, "{exact} of {total} values round identically");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
}

#[test]
fn sharded_output_has_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let (out, merged) =
        merge(dir.path(), &fixture("qwen3-tiny"), &fixture("qwen3-tiny-run"), &["--max-shard-size", "100KB"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(merged.join("model.safetensors.index.json")).unwrap()).unwrap();
    assert_eq!(index["metadata"]["total_size"], 98_688 * 4);
    assert_eq!(index["weight_map"].as_object().unwrap().len(), 24);
    assert!(merged.join("model-00005-of-00005.safetensors").is_file());
    assert!(!merged.join("model.safetensors").exists());
    let inspect = run_in(dir.path(), &["inspect", merged.to_str().unwrap(), "--message-format", "json"], &[]);
    assert_eq!(inspect.json()["parameters"], 98_688);
}

/// Copies the qwen3 checkpoint-4 adapter, letting the caller rewrite its config and tensors.
fn broken_adapter(
    dir: &Path,
    edit_config: impl Fn(String) -> String,
    keep: impl Fn(&str) -> bool,
    reshape: impl Fn(&str, Vec<usize>) -> Vec<usize>,
) -> PathBuf {
    let src = fixture("qwen3-tiny-run/checkpoint-4");
    let out = dir.join("adapter");
    std::fs::create_dir_all(&out).unwrap();
    let config = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    std::fs::write(out.join("adapter_config.json"), edit_config(config)).unwrap();
    let file = SafetensorsFile::open(&src.join("adapter_model.safetensors")).unwrap();
    let kept: Vec<_> = file.tensors().iter().filter(|t| keep(&t.name)).collect();
    let entries: Vec<TensorEntry> = kept
        .iter()
        .map(|t| TensorEntry::new(t.name.clone(), TensorDtype::F32, reshape(&t.name, t.shape.clone())))
        .collect();
    let path = out.join("adapter_model.safetensors");
    let mut writer = SafetensorsWriter::create(&path, &entries, &[]).unwrap();
    for entry in &entries {
        writer.write(&vec![0u8; entry.byte_len() as usize]).unwrap();
    }
    writer.finish().unwrap();
    out
}

fn refused(adapter: &Path, dir: &Path) -> String {
    let (out, merged) = merge(dir, &fixture("qwen3-tiny"), adapter, &[]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(!merged.exists(), "nothing is written for a refused adapter");
    let leftovers: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n != "adapter").collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    out.json()["message"].as_str().unwrap().to_string()
}

#[test]
fn adapter_with_wrong_shapes_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = broken_adapter(
        dir.path(),
        |c| c,
        |_| true,
        |name, shape| if name.contains("layers.1.mlp.up_proj.lora_B") { vec![96, shape[1]] } else { shape },
    );
    let message = refused(&adapter, dir.path());
    assert!(
        message.contains(
            "tensor `base_model.model.model.layers.1.mlp.up_proj.lora_A.weight`: does not fit the base"
        ),
        "{message}"
    );
}

#[test]
fn unknown_target_module_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = broken_adapter(
        dir.path(),
        |c| c.replace("\"q_proj\"\n", "\"q_proj\",\n    \"c_attn\"\n"),
        |_| true,
        |_, s| s,
    );
    let message = refused(&adapter, dir.path());
    assert!(message.contains("target module `c_attn` matches no module of the base model"), "{message}");
}

#[test]
fn missing_tensors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let adapter =
        broken_adapter(dir.path(), |c| c, |name| !name.contains("layers.1.self_attn.k_proj"), |_, s| s);
    let message = refused(&adapter, dir.path());
    assert!(
        message.contains("tensor `base_model.model.model.layers.1.self_attn.k_proj.lora_A.weight`: missing"),
        "{message}"
    );

    let dir = tempfile::tempdir().unwrap();
    let adapter =
        broken_adapter(dir.path(), |c| c, |name| !name.contains("layers.0.mlp.gate_proj.lora_B"), |_, s| s);
    let message = refused(&adapter, dir.path());
    assert!(message.contains("tensor `base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight`: has lora_A but no matching lora_B"), "{message}");
}

#[test]
fn truncated_adapter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let message = refused(&fixture("qwen3-tiny-run/checkpoint-6"), dir.path());
    assert!(message.contains("truncated tensor data"), "{message}");
    assert!(message.contains("tensor `base_model.model."), "{message}");
}

#[test]
fn all_linear_and_regex_targets_select_the_same_modules() {
    for targets in ["\"all-linear\"", "\".*\\\\.(q|k|v|o|gate|up|down)_proj\""] {
        let dir = tempfile::tempdir().unwrap();
        let src = fixture("qwen3-tiny-run/checkpoint-4");
        let adapter = dir.path().join("adapter");
        std::fs::create_dir(&adapter).unwrap();
        std::fs::copy(src.join("adapter_model.safetensors"), adapter.join("adapter_model.safetensors"))
            .unwrap();
        let config = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
        let start = config.find("\"target_modules\": [").unwrap();
        let end = start + config[start..].find(']').unwrap() + 1;
        let edited = format!("{}\"target_modules\": {targets}{}", &config[..start], &config[end..]);
        std::fs::write(adapter.join("adapter_config.json"), edited).unwrap();
        let (out, merged) = merge(dir.path(), &fixture("qwen3-tiny"), &adapter, &[]);
        assert_eq!(out.code, 0, "{targets}: {}", out.stderr);
        let ours = tensors(&merged.join("model.safetensors"));
        let peft = tensors(&fixture("reference/qwen3-tiny-merged/model.safetensors"));
        for (name, (_, values)) in &peft {
            let max = ours[name].1.iter().zip(values).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(max <= 1e-6, "{targets}: {name} off by {max}");
        }
    }
}
