//! The proof cannot agree with itself: the reference is the base with the adapter unmerged
//! (checked against peft's own logits), a merge bug fails `run`, config features are honoured
//! (YaRN, linear rope scaling: transformers' logits in every engine) or refused by name, logit
//! tolerances scale with the logits, and an export no engine measured is `unverified`.

use std::path::Path;

use model_export::config::Target;
use model_export::model::ModelFolder;
use model_export::runtime::gguf::GgufFile;
use model_export::runtime::ort_engine::{self, OrtEngine};
use model_export::runtime::reference::Forward;
use model_export::runtime::tract_engine::TractEngine;
use model_export::runtime::{
    Batch, DecoderEngine, GreedyOptions, KvCache, ReferenceEngine, ReferenceModel, greedy,
};
use model_export::validate::metrics::compare_logits;
use model_export::validate::report::{ValidationReport, Verdict};
use model_export::validate::unmerged::load_unmerged;

use crate::common::{Project, fixture};
use crate::reference::golden;

use crate::reference::GOLDEN_RELATIVE;

fn relative(ours: &[f32], golden: &[f32], batch: &Batch, vocab: usize) -> f64 {
    compare_logits(ours, golden, batch, vocab, 1e-3).relative_error
}

fn logits_of(model: &impl Forward, batch: &Batch) -> Vec<f32> {
    let logits = model.forward(batch, &mut KvCache::default()).unwrap();
    logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn report(project: &Project) -> ValidationReport {
    serde_json::from_slice(&std::fs::read(project.path().join("out/report.json")).unwrap()).unwrap()
}

fn prompts_toml(case: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("reference/{case}.json"))).unwrap()).unwrap();
    format!("prompts = {}\nmax-new-tokens = 12", json["prompts"])
}

#[test]
fn the_unmerged_reference_reproduces_peft_without_the_merge() {
    for (case, base, adapter) in [
        ("qwen3-tiny", "qwen3-tiny", "qwen3-tiny-run/checkpoint-4"),
        ("qwen2-tiny", "qwen2-tiny", "qwen2-tiny-adapter"),
        ("qwen3-moe-tiny", "qwen3-moe-tiny", "qwen3-moe-tiny-adapter"),
    ] {
        let g = golden(case);
        let base = ModelFolder::open(&fixture(base), None).unwrap();
        let model = load_unmerged(&base, Some(&fixture(adapter))).unwrap();
        let peft = g.logits_unmerged.as_ref().unwrap_or(&g.logits_merged);
        let error = relative(&logits_of(&model, &g.batch), peft, &g.batch, g.vocab);
        assert!(error <= GOLDEN_RELATIVE, "{case}: unmerged reference {error:e} from peft's logits");
        let options = GreedyOptions { max_new_tokens: 12, eos_token_ids: vec![383, 381], pad_token_id: 381 };
        let ids = greedy(&mut ReferenceEngine::new(&model), &g.batch, &options).unwrap();
        assert_eq!(ids, g.greedy_ids, "{case}");
        // Without the adapter it is the base model.
        let plain = load_unmerged(&base, None).unwrap();
        let error = relative(&logits_of(&plain, &g.batch), &g.logits_base, &g.batch, g.vocab);
        assert!(error <= GOLDEN_RELATIVE, "{case} base: {error:e}");
    }
    // The trained model: transformers' merged logits on held-out Rust rows.
    let file =
        model_export::model::SafetensorsFile::open(&fixture("reference/qwen3-code.safetensors")).unwrap();
    let info = file.get("eval_rust_ids").unwrap();
    let ids: Vec<i64> =
        file.bytes(info).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    let rows: Vec<Vec<i64>> = ids.chunks(info.shape[1]).take(4).map(<[i64]>::to_vec).collect();
    let batch = Batch::left_padded(&rows, 0);
    let mut golden_logits = Vec::new();
    file.read_f32(file.get("logits_merged_rust4").unwrap(), &mut golden_logits).unwrap();
    let base = ModelFolder::open(&fixture("qwen3-code-base"), None).unwrap();
    let model = load_unmerged(&base, Some(&fixture("qwen3-code-rust-run/checkpoint-150"))).unwrap();
    let ours = logits_of(&model, &batch);
    let m = compare_logits(&ours, &golden_logits, &batch, 2048, 1e-3);
    assert!(m.relative_error <= GOLDEN_RELATIVE, "qwen3-code: {m:?}");
    assert!(m.reference_rms > 1.0, "a trained model's logits are larger than the random ones': {m:?}");
}

fn hf_project(base: &str, adapter: Option<&str>, case: &str, exports: &str) -> Project {
    let adapter = adapter.map(|a| format!("adapter = \"{{fixtures}}/{a}\"\n")).unwrap_or_default();
    Project::new(&format!(
        "[package.metadata.model-export]\nbase = \"{{fixtures}}/{base}\"\n{adapter}out-dir = \"out\"\n\n\
         [package.metadata.model-export.validate]\n{}\n\n{exports}",
        prompts_toml(case)
    ))
}

const HF_F32: &str = "[[package.metadata.model-export.export]]\nname = \"hf-f32\"\nformat = \"safetensors\"\ndtype = \"f32\"\n";

#[test]
fn merged_vs_unmerged_is_reported_and_a_merge_bug_fails_run_naming_the_export() {
    for (base, adapter, case) in [
        ("qwen3-tiny", "qwen3-tiny-run", "qwen3-tiny"),
        ("qwen2-tiny", "qwen2-tiny-adapter", "qwen2-tiny"),
        ("qwen3-code-base", "qwen3-code-rust-run", "qwen3-tiny"),
    ] {
        let project = hf_project(base, Some(adapter), case, HF_F32);
        let out = project.run(&["run"]);
        assert_eq!(out.code, 0, "{base}: {}\n{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("merged vs unmerged"), "{}", out.stdout);
        let merge = report(&project).merge.unwrap();
        assert!(merge.relative_error <= 1e-5 && merge.passed, "{base}: {merge:?}");

        let broken = hf_project(base, Some(adapter), case, HF_F32);
        let out = broken.run_env(&["run"], &[("MODEL_EXPORT_FAULT", "merge-scale-x2")]);
        assert_eq!(out.code, 1, "{base}: {}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains("validation failed for hf-f32 in candle"), "{}", out.stderr);
        assert!(out.stderr.contains("the merge (merged vs unmerged"), "{}", out.stderr);
        let report = report(&broken);
        assert_eq!(report.exports[0].verdict, Verdict::Failed);
        assert!(!report.merge.unwrap().passed);
    }
}

/// Every engine on the golden batch: logits within 1e-5 relative of transformers', greedy ids.
fn check_engine(name: &str, engine: &mut dyn DecoderEngine, case: &str) {
    let g = golden(case);
    let logits = engine.step(&g.batch).unwrap();
    engine.reset();
    let m = compare_logits(&logits.values, &g.logits_merged, &g.batch, g.vocab, 1e-3);
    eprintln!(
        "{case} {name}: max abs {:.2e}, RMS {:.3}, relative {:.2e}",
        m.max_abs_error, m.reference_rms, m.relative_error
    );
    assert!(m.relative_error <= GOLDEN_RELATIVE, "{case} {name}: {m:?} from transformers' logits");
    let options = GreedyOptions { max_new_tokens: 12, eos_token_ids: vec![383], pad_token_id: 381 };
    assert_eq!(greedy(engine, &g.batch, &options).unwrap(), g.greedy_ids, "{case} {name}");
}

#[test]
fn yarn_and_linear_rope_scaling_match_transformers_in_every_engine() {
    let exports = "[[package.metadata.model-export.export]]\nname = \"hf-f32\"\nformat = \"safetensors\"\ndtype = \"f32\"\n\n\
        [[package.metadata.model-export.export]]\nname = \"onnx-f32\"\nformat = \"onnx\"\n\n\
        [[package.metadata.model-export.export]]\nname = \"onnx-ort\"\nformat = \"onnx\"\ntarget = \"ort\"\n\n\
        [[package.metadata.model-export.export]]\nname = \"gguf-f32\"\nformat = \"gguf\"\ndtype = \"f32\"\n";
    for case in ["qwen3-yarn", "qwen2-linear"] {
        let project = hf_project(case, None, case, exports);
        let out = project.run(&["run"]);
        assert_eq!(out.code, 0, "{case}: {}\n{}", out.stdout, out.stderr);
        let out_dir = project.path().join("out");
        let hf = ModelFolder::open(&out_dir.join("hf-f32"), None).unwrap();
        let c = hf.config.clone();
        assert!(!matches!(c.rope_scaling, model_export::model::rope::RopeScaling::Default));
        let model = ReferenceModel::load(&hf).unwrap();
        check_engine("safetensors in candle", &mut ReferenceEngine::new(&model), case);
        let gguf = GgufFile::open(&out_dir.join("gguf-f32/model.gguf")).unwrap();
        assert_eq!(gguf.config.rope_scaling, c.rope_scaling, "{case}: rope scaling read back from GGUF");
        let model = gguf.load(&candle_core::Device::Cpu).unwrap();
        check_engine("gguf in candle", &mut ReferenceEngine::new(&model), case);
        let (layers, kv, d) = (c.num_hidden_layers, c.num_key_value_heads, c.head_dim);
        for (export, target) in [("onnx-f32", Target::Portable), ("onnx-ort", Target::Ort)] {
            let onnx = out_dir.join(export).join("model.onnx");
            let mut tract = TractEngine::load_for(target, &onnx, layers, kv, d).unwrap();
            check_engine(&format!("{export} in tract"), &mut tract, case);
            if ort_engine::available() {
                let mut ort = OrtEngine::load(&onnx, layers, kv, d, 1).unwrap();
                check_engine(&format!("{export} in ort"), &mut ort, case);
            } else {
                assert!(!crate::common::ci(), "ONNX Runtime is required under CI=true");
            }
        }
        // `generate` on the base folder: transformers' greedy tokens.
        crate::generate::reproduces_greedy_ids(case, &model_export::loader::LoadOptions::new(fixture(case)));
    }
}

/// A copy of qwen3-tiny whose config.json has `edit` applied.
fn edited_base(dir: &Path, edit: serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture("qwen3-tiny")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    let path = dir.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for (k, v) in edit.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
}

#[test]
fn config_features_that_are_not_implemented_are_refused_by_name_before_writing() {
    use serde_json::json;
    for (edit, key, value) in [
        (
            json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}),
            "rope_scaling.rope_type",
            "\"dynamic\"",
        ),
        (
            json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}),
            "rope_scaling.rope_type",
            "\"llama3\"",
        ),
        (
            json!({"rope_scaling": {"rope_type": "longrope", "factor": 4.0}}),
            "rope_scaling.rope_type",
            "\"longrope\"",
        ),
        (json!({"hidden_act": "gelu"}), "hidden_act", "\"gelu\""),
        (
            json!({"use_sliding_window": true, "sliding_window": 16, "max_window_layers": 1, "layer_types": null}),
            "use_sliding_window",
            "true",
        ),
        (
            json!({"layer_types": ["full_attention", "sliding_attention"]}),
            "layer_types",
            "\"sliding_attention\"",
        ),
        (json!({"partial_rotary_factor": 0.5}), "partial_rotary_factor", "0.5"),
    ] {
        let project = Project::new(
            "[package.metadata.model-export]\nbase = \"base\"\nout-dir = \"out\"\n\n[[package.metadata.model-export.export]]\nname = \"hf\"\nformat = \"safetensors\"\n",
        );
        edited_base(&project.path().join("base"), edit);
        let out = project.run(&["run"]);
        assert_eq!(out.code, 2, "{key}: {}\n{}", out.stdout, out.stderr);
        assert!(out.stderr.contains(&format!("`{key}` = {value} is not supported")), "{key}: {}", out.stderr);
        assert!(out.stderr.contains("supported:"), "{}", out.stderr);
        assert!(!project.path().join("out/hf").exists(), "{key}: something was written");
    }
}

#[test]
fn an_export_no_engine_measured_is_unverified_and_fails_unless_allowed() {
    let project = Project::new(&format!(
        "[package.metadata.model-export]\nbase = \"{{fixtures}}/qwen3-tiny\"\nadapter = \"{{fixtures}}/qwen3-tiny-run\"\nout-dir = \"out\"\n\n\
         [package.metadata.model-export.validate]\nengines = [\"candle\"]\n{}\n\n\
         [[package.metadata.model-export.export]]\nname = \"onnx\"\nformat = \"onnx\"\n",
        prompts_toml("qwen3-tiny")
    ));
    let out = project.run(&["run"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("unverified: no engine measured onnx"), "{}", out.stderr);
    assert!(
        out.stdout.contains("unverified (no engine measured it: a onnx export runs in ort, tract"),
        "{}",
        out.stdout
    );
    let report = report(&project);
    assert_eq!(report.exports[0].verdict, Verdict::Unverified);
    assert!(!report.exports[0].passed && !report.passed);
    let out = project.run(&["validate", "--allow-unverified"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("unverified"), "{}", out.stdout);
}

#[test]
fn a_deep_wide_f32_export_passes_in_both_engines_and_a_perturbed_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let shape = model_export::synth::ModelShape::by_name("qwen3-12x512").unwrap();
    model_export::synth::write_model(shape, &dir.path().join("base"), 7, None).unwrap();
    let project = Project::new(&format!(
        "[package.metadata.model-export]\nbase = \"{}\"\nout-dir = \"out\"\n\n\
         [package.metadata.model-export.validate]\nmax-new-tokens = 4\n\n\
         [[package.metadata.model-export.export]]\nname = \"onnx\"\nformat = \"onnx\"\n\n{HF_F32}",
        dir.path().join("base").display()
    ));
    let out = project.run(&["run"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = report(&project);
    let onnx = &report.exports[0];
    assert_eq!(onnx.verdict, Verdict::Passed);
    let engines: Vec<&str> =
        onnx.engines.iter().filter(|e| e.skipped.is_none()).map(|e| e.engine.as_str()).collect();
    assert!(engines.contains(&"tract"), "{engines:?}");
    for e in &onnx.engines {
        let m = e.logits.as_ref().unwrap();
        eprintln!(
            "12x512 {}: max abs {:.3e}, rms {:.3}, relative {:.3e}",
            e.engine, m.max_abs_error, m.reference_rms, m.relative_error
        );
    }
    // One norm weight 1% off: a real error, far above f32 rounding, must fail.
    let hf = project.path().join("out/hf-f32/model.safetensors");
    let file = model_export::model::SafetensorsFile::open(&hf).unwrap();
    let info = file.get("model.norm.weight").unwrap().clone();
    let start = file.header_bytes().len() + info.data_offsets.0;
    drop(file);
    let mut bytes = std::fs::read(&hf).unwrap();
    for chunk in bytes[start..start + 4 * info.numel()].chunks_exact_mut(4) {
        let v = f32::from_le_bytes(chunk.try_into().unwrap()) * 1.01;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    std::fs::write(&hf, bytes).unwrap();
    let out = project.run(&["validate"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("validation failed for hf-f32 in candle"), "{}", out.stderr);
}
