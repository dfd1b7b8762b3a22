//! `run` and `validate` end to end: the report of the fixtures' exports is snapshot-tested, and
//! a corrupted export fails naming the export, the engine and the first diverging token.

use model_export::runtime::Batch;
use model_export::validate::metrics::compare_logits;
use model_export::validate::report::ValidationReport;
use model_export::validate::tolerance::Tolerance;

use crate::common::{Project, fixture};

const PROMPTS: &str = r#"prompts = ["Hello, how are you today?", "用一句话解释LoRA", "<|im_start|>user\nWhat does a tiny model learn?<|im_end|>\n<|im_start|>assistant\n"]
max-new-tokens = 12"#;

fn project(exports: &str) -> Project {
    Project::new(&format!(
        "[package.metadata.model-export]\nbase = \"{{fixtures}}/qwen3-tiny\"\nadapter = \"{{fixtures}}/qwen3-tiny-run\"\nout-dir = \"out\"\n\n[package.metadata.model-export.validate]\n{PROMPTS}\n\n{exports}"
    ))
}

fn report(project: &Project) -> ValidationReport {
    serde_json::from_slice(&std::fs::read(project.path().join("out/report.json")).unwrap()).unwrap()
}

#[test]
fn tokenizer_reproduces_the_golden_prompt_ids() {
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("reference/qwen3-tiny.json")).unwrap()).unwrap();
    let prompts: Vec<String> = serde_json::from_value(info["prompts"].clone()).unwrap();
    let ids = model_export::validate::tokenize(&fixture("qwen3-tiny"), &prompts).unwrap();
    assert_eq!(serde_json::to_value(ids).unwrap(), info["prompt_ids"]);
}

#[test]
fn fixture_exports_pass_in_every_engine_and_the_report_is_stable() {
    let project = project(
        "[[package.metadata.model-export.export]]\nname = \"hf-f32\"\nformat = \"safetensors\"\ndtype = \"f32\"\n\n\
         [[package.metadata.model-export.export]]\nname = \"onnx-f32\"\nformat = \"onnx\"\n\n\
         [[package.metadata.model-export.export]]\nname = \"onnx-f16\"\nformat = \"onnx\"\ndtype = \"f16\"\n",
    );
    let out = project.run(&["run"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    let report = report(&project);
    for e in &report.exports {
        for r in &e.engines {
            let m = r.logits.as_ref().unwrap();
            if e.dtype == "f32" {
                assert!(m.relative_error <= 1e-5, "{} {}: {}", e.export, r.engine, m.relative_error);
            }
            assert_eq!(r.greedy_match, Some(true), "{} {}", e.export, r.engine);
        }
    }
    insta::assert_yaml_snapshot!(report.snapshot());
    // The exports hold the merged model (not the base): check them against transformers directly.
    let g = crate::reference::golden("qwen3-tiny");
    let onnx = project.path().join("out/onnx-f32/model.onnx");
    let mut tract = model_export::runtime::tract_engine::TractEngine::load(&onnx, 2, 2, 16).unwrap();
    let logits = model_export::runtime::DecoderEngine::step(&mut tract, &g.batch).unwrap();
    let error = crate::reference::relative_error(&logits.values, &g.logits_merged, &g.batch, g.vocab);
    assert!(
        error <= crate::reference::GOLDEN_RELATIVE,
        "onnx-f32 from `run` is {error} (relative) from transformers' logits"
    );
    let hf = model_export::model::ModelFolder::open(&project.path().join("out/hf-f32"), None).unwrap();
    let candle = model_export::runtime::ReferenceModel::load(&hf).unwrap();
    let logits = candle.forward(&g.batch, &mut model_export::runtime::KvCache::default()).unwrap();
    let logits = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let error = crate::reference::relative_error(&logits, &g.logits_merged, &g.batch, g.vocab);
    assert!(
        error <= crate::reference::GOLDEN_RELATIVE,
        "hf-f32 from `run` is {error} (relative) from transformers' logits"
    );
    for export in ["hf-f32", "onnx-f32", "onnx-f16"] {
        let dir = project.path().join("out").join(export);
        assert!(dir.join("validation.json").is_file() && dir.join("validation.md").is_file());
    }
    assert!(
        std::fs::read_to_string(project.path().join("out/report.md"))
            .unwrap()
            .contains("| onnx-f16 | onnx | f16 | tract |")
    );
    // validate alone re-checks the installed exports (the reports are not part of the manifests).
    let again = project.run(&["validate", "--message-format", "json"]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.json()["passed"], true);
}

#[test]
fn corrupted_export_fails_naming_export_engine_and_position() {
    let project = project(
        "[[package.metadata.model-export.export]]\nname = \"onnx-ext\"\nformat = \"onnx\"\noptions = { external-data = true }\n",
    );
    assert_eq!(project.run(&["run", "-q"]).code, 0);
    // The embedding comes first in model.onnx_data: flatten its rows.
    let data = project.path().join("out/onnx-ext/model.onnx_data");
    let mut bytes = std::fs::read(&data).unwrap();
    for chunk in bytes[..384 * 64 * 4].chunks_exact_mut(4) {
        chunk.copy_from_slice(&0.01f32.to_le_bytes());
    }
    std::fs::write(&data, bytes).unwrap();
    let out = project.run(&["validate"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("validation failed for onnx-ext in"), "{}", out.stderr);
    assert!(out.stdout.contains("differs at prompt 0 token 0"), "{}", out.stdout);
    let report = report(&project);
    let tract = report.exports[0].engines.iter().find(|r| r.engine == "tract").unwrap();
    assert!(!tract.passed);
    assert_eq!(tract.first_divergence, Some((0, 0)));
    assert!(tract.failures.iter().any(|f| f.starts_with("max abs logit error")), "{:?}", tract.failures);
}

#[test]
fn a_perturbed_logit_breaks_the_f32_tolerance_and_the_snapshot_bucket() {
    let batch = Batch::left_padded(&[vec![1, 2, 3]], 0);
    let reference: Vec<f32> = (0..3 * 8).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut ours = reference.clone();
    ours[5] += 2e-6;
    let tolerance = Tolerance::default_for(model_export::config::ExportDtype::F32);
    let bound = tolerance.max_relative_error.unwrap();
    let close = compare_logits(&ours, &reference, &batch, 8, tolerance.top1_margin);
    assert!(close.relative_error <= bound);
    assert_eq!(model_export::validate::report::decade(close.max_abs_error), "<=1e-5");
    ours[5] += 1e-3;
    let off = compare_logits(&ours, &reference, &batch, 8, tolerance.top1_margin);
    assert!(off.relative_error > bound);
    assert_eq!(model_export::validate::report::decade(off.max_abs_error), "<=1e-2");
    // The bound scales with the logits: the same errors on logits 30 times larger.
    let scaled: Vec<f32> = reference.iter().map(|x| x * 30.0).collect();
    let mut ours: Vec<f32> = scaled.clone();
    ours[5] += 1e-3;
    let large = compare_logits(&ours, &scaled, &batch, 8, tolerance.top1_margin);
    assert!(large.reference_rms > 15.0 && large.relative_error <= bound, "{large:?}");
    ours[5] += 1e-2;
    let off = compare_logits(&ours, &scaled, &batch, 8, tolerance.top1_margin);
    assert!(off.relative_error > bound, "{off:?}");
}

#[test]
fn chat_template_renders_as_transformers_did() {
    use model_export::runtime::chat::{ChatTemplate, Message};
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("reference/qwen3-tiny.json")).unwrap()).unwrap();
    let message = Message { role: "user".into(), content: "What does a tiny model learn?".into() };
    // Both places a template can live: the checkpoint's chat_template.jinja, the base's tokenizer_config.json.
    for dir in ["qwen3-tiny-run/checkpoint-4", "qwen3-tiny"] {
        let rendered = ChatTemplate::from_dir(&fixture(dir))
            .unwrap()
            .render(std::slice::from_ref(&message), true)
            .unwrap();
        assert_eq!(rendered, info["prompts"][2], "{dir}");
    }
    // Validation with chat-template = true tokenizes the rendered prompt.
    let project = Project::new(
        "[package.metadata.model-export]\nbase = \"{fixtures}/qwen3-tiny\"\nadapter = \"{fixtures}/qwen3-tiny-run\"\nout-dir = \"out\"\n\n\
         [package.metadata.model-export.validate]\nprompts = [\"What does a tiny model learn?\"]\nchat-template = true\nmax-new-tokens = 4\n\n\
         [[package.metadata.model-export.export]]\nname = \"hf\"\nformat = \"safetensors\"\n",
    );
    let out = project.run(&["run", "--message-format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.json()["validation"]["exports"][0]["engines"][0]["logits"]["positions"],
        info["prompt_ids"][2].as_array().unwrap().len()
    );
}

#[test]
fn bench_measures_each_export_in_each_engine() {
    let project = project(
        "[[package.metadata.model-export.export]]\nname = \"hf\"\nformat = \"safetensors\"\n\n\
         [[package.metadata.model-export.export]]\nname = \"onnx\"\nformat = \"onnx\"\n",
    );
    assert_eq!(project.run(&["run", "-q"]).code, 0);
    let out = project.run(&[
        "bench",
        "--prompt-tokens",
        "8",
        "--decode-tokens",
        "2",
        "--repetitions",
        "2",
        "--message-format",
        "json",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let results = out.json();
    let pairs: Vec<(String, String)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["export"].as_str().unwrap().to_string(), r["engine"].as_str().unwrap().to_string()))
        .collect();
    assert!(
        pairs.contains(&("hf".into(), "candle".into())) && pairs.contains(&("onnx".into(), "tract".into())),
        "{pairs:?}"
    );
    for r in results.as_array().unwrap() {
        assert_eq!(r["prefill_tokens"], 8);
        assert!(r["decode_ms_per_token"]["median"].as_f64().unwrap() > 0.0);
        assert!(
            r["decode_ms_per_token"]["min"].as_f64().unwrap()
                <= r["decode_ms_per_token"]["max"].as_f64().unwrap()
        );
        assert!(r["file_bytes"].as_u64().unwrap() > 100_000);
    }
    let md = project.run(&[
        "bench",
        "--export",
        "onnx",
        "--prompt-tokens",
        "4",
        "--decode-tokens",
        "1",
        "--repetitions",
        "1",
    ]);
    assert!(
        md.stdout.starts_with(
            "| export | engine | size | load | prefill | decode | tokens/s | peak RSS | llama.cpp"
        ),
        "{}",
        md.stdout
    );
    assert!(!md.stdout.contains("| hf |"));
}

#[test]
fn bench_puts_llama_cpp_beside_a_gguf_export_with_our_time_over_its_time() {
    use std::os::unix::fs::PermissionsExt;
    let project = project(
        "[[package.metadata.model-export.export]]\nname = \"gg\"\nformat = \"gguf\"\ndtype = \"q8_0\"\n",
    );
    assert_eq!(project.run(&["run", "-q", "--no-validate"]).code, 0);
    // A stand-in for llama-bench printing its JSON: 4 ms for the prompt, 10 ms for 2 tokens.
    let fake = project.dir.path().join("llama-bench");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho '[{\"n_prompt\": 8, \"n_gen\": 0, \"samples_ns\": [4000000, 4000000]}, {\"n_prompt\": 0, \"n_gen\": 2, \"samples_ns\": [10000000, 10000000]}]'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args = [
        "bench",
        "--prompt-tokens",
        "8",
        "--decode-tokens",
        "2",
        "--repetitions",
        "2",
        "--message-format",
        "json",
    ];
    let out = project.run_env(&args, &[("LLAMA_BENCH", fake.to_str().unwrap())]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let row = &out.json()[0];
    assert_eq!(row["llama_cpp"]["engine"], "llama.cpp (llama-bench)");
    assert_eq!(row["llama_cpp"]["decode_ms_per_token"]["median"], 5.0);
    assert_eq!(row["llama_cpp"]["prefill_ms"]["median"], 4.0);
    let md = project.run_env(&args[..7], &[("LLAMA_BENCH", fake.to_str().unwrap())]);
    // Our median over llama.cpp's, beside each of its figures.
    assert!(md.stdout.contains("| 5.00 ms/token (×") && md.stdout.contains(" / 4.0 ms (×"), "{}", md.stdout);
    // Without a llama.cpp the row has no peer, and bench still succeeds.
    let alone = project.run_env(&args, &[("LLAMA_BENCH", "/nonexistent/llama-bench")]);
    assert_eq!(alone.code, 0, "{}", alone.stderr);
    assert!(alone.json()[0]["llama_cpp"].is_null());
    assert!(alone.stderr.contains("llama-bench"), "{}", alone.stderr);
}
