//! ONNX exports against transformers' golden logits and greedy ids, in ONNX Runtime and tract.

use std::path::Path;

use model_export::checkpoint::detect;
use model_export::export::onnx::{OnnxOptions, OnnxPrecision, OnnxReport, write_onnx_folder};
use model_export::model::ModelFolder;
use model_export::runtime::ort_engine::{self, OrtEngine};
use model_export::runtime::tract_engine::TractEngine;
use model_export::runtime::{DecoderEngine, GreedyOptions, greedy};

use crate::common::fixture;
use crate::reference::{golden, max_valid_error};

/// ONNX Runtime must be present in CI (scripts/test.sh installs it); elsewhere its absence
/// skips the ORT half of a test with a note.
fn ort_present() -> bool {
    let present = ort_engine::available();
    if !present {
        assert!(!crate::common::ci(), "CI=true but ONNX Runtime was not found: scripts/test.sh installs it");
        eprintln!("ONNX Runtime not found: checking tract only");
    }
    present
}

fn export(base: &str, adapter: &str, out: &Path, options: &OnnxOptions) -> (ModelFolder, OnnxReport) {
    let base = ModelFolder::open(&fixture(base), None).unwrap();
    let detection = detect(&fixture(adapter), Some(&base)).unwrap();
    let inputs = model_export::export::ExportInputs::from_base(&base, Some(&detection));
    let report = write_onnx_folder(&inputs, options, out).unwrap();
    (base, report)
}

fn engines(model: &Path, base: &ModelFolder) -> Vec<Box<dyn DecoderEngine>> {
    let c = &base.config;
    let (l, kv, d) = (c.num_hidden_layers, c.num_key_value_heads, c.head_dim);
    let mut list: Vec<Box<dyn DecoderEngine>> = vec![Box::new(TractEngine::load(model, l, kv, d).unwrap())];
    if ort_present() {
        list.push(Box::new(OrtEngine::load(model, l, kv, d, 2).unwrap()));
    }
    list
}

fn check_case(case: &str, base: &str, adapter: &str, options: OnnxOptions) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("onnx");
    let (base, report) = export(base, adapter, &out, &options);
    assert!(report.checked_in.contains(&"tract"));
    let g = golden(case);
    for mut engine in engines(&out.join("model.onnx"), &base) {
        let logits = engine.step(&g.batch).unwrap();
        let error = crate::reference::relative_error(&logits.values, &g.logits_merged, &g.batch, g.vocab);
        assert!(
            error <= crate::reference::GOLDEN_RELATIVE,
            "{case} {}: logits off by {error} (relative)",
            engine.name()
        );
        let new_tokens = g.greedy_ids[0].len() - g.batch.input_ids[0].len();
        let options =
            GreedyOptions { max_new_tokens: new_tokens, eos_token_ids: vec![383, 381], pad_token_id: 381 };
        let ids = greedy(engine.as_mut(), &g.batch, &options).unwrap();
        assert_eq!(ids, g.greedy_ids, "{case} {}: greedy ids", engine.name());
        eprintln!("{case} {}: max abs logit error {error:.2e}; greedy ids equal", engine.name());
    }
}

#[test]
fn qwen3_tied_f32_matches_transformers_in_both_engines() {
    check_case("qwen3-tiny", "qwen3-tiny", "qwen3-tiny-run", OnnxOptions::default());
}

#[test]
fn qwen2_biased_f32_matches_transformers_in_both_engines() {
    check_case("qwen2-tiny", "qwen2-tiny", "qwen2-tiny-adapter", OnnxOptions::default());
}

#[test]
fn qwen3_moe_routed_experts_match_transformers_in_both_engines_and_both_targets() {
    // Router softmax, top-2 of 8 experts, renormalised weights: standard ops in both targets
    // (ONNX Runtime's MoE contrib op is not used; see docs/onnx.md).
    check_case("qwen3-moe-tiny", "qwen3-moe-tiny", "qwen3-moe-tiny-adapter", OnnxOptions::default());
    if !ort_present() {
        return;
    }
    // The ort target's fused attention runs in ONNX Runtime only; its experts are the same ops.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("onnx");
    let ort = OnnxOptions { target: model_export::config::Target::Ort, ..OnnxOptions::default() };
    let (base, report) = export("qwen3-moe-tiny", "qwen3-moe-tiny-adapter", &out, &ort);
    assert!(report.checked_in.contains(&"ort") && report.fallbacks.is_empty(), "{:?}", report.fallbacks);
    // The float experts go through ONNX Runtime's own MoE op, one per layer.
    let bytes = std::fs::read(out.join("model.onnx")).unwrap();
    let graph = <tract_onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice()).unwrap();
    let moe =
        graph.graph.unwrap().node.into_iter().filter(|n| n.op_type == "MoE" && n.domain == "com.microsoft");
    assert_eq!(moe.count(), 2, "one com.microsoft MoE node per layer");
    let g = golden("qwen3-moe-tiny");
    let c = &base.config;
    let mut engine =
        OrtEngine::load(&out.join("model.onnx"), c.num_hidden_layers, c.num_key_value_heads, c.head_dim, 2)
            .unwrap();
    let logits = engine.step(&g.batch).unwrap();
    let error = crate::reference::relative_error(&logits.values, &g.logits_merged, &g.batch, g.vocab);
    assert!(error <= crate::reference::GOLDEN_RELATIVE, "ort target: logits off by {error}");
    let options = GreedyOptions { max_new_tokens: 12, eos_token_ids: vec![383, 381], pad_token_id: 381 };
    assert_eq!(greedy(&mut engine, &g.batch, &options).unwrap(), g.greedy_ids, "ort target: greedy ids");
}

#[test]
fn external_data_and_opset_18_give_the_same_model() {
    let options = OnnxOptions { external_data: Some(true), opset: 18, ..OnnxOptions::default() };
    check_case("qwen3-tiny", "qwen3-tiny", "qwen3-tiny-run", options);
}

#[test]
fn tract_fuses_rope_softmax_rmsnorm_and_silu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("onnx");
    export("qwen3-tiny", "qwen3-tiny-run", &out, &OnnxOptions::default());
    let ops = TractEngine::op_names(&out.join("model.onnx")).unwrap();
    let count = |name: &str| ops.iter().filter(|o| o.as_str() == name).count();
    eprintln!("optimised tract ops: {ops:?}");
    // 2 layers: q and k rotary each; one attention; 2 norms + 2 q/k norms per layer, + final.
    assert_eq!(count("ApplyRope"), 4, "{ops:?}");
    assert_eq!(count("ScaledMaskedSoftmax"), 2, "{ops:?}");
    assert_eq!(count("RmsNorm"), 2 * 4 + 1, "{ops:?}");
    assert!(ops.iter().any(|o| o.contains("Silu")), "{ops:?}");
}

#[test]
fn f16_export_keeps_top1_and_greedy() {
    let g = golden("qwen3-tiny");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("onnx-f16");
    let options = OnnxOptions { precision: OnnxPrecision::F16, ..OnnxOptions::default() };
    let (base, _) = export("qwen3-tiny", "qwen3-tiny-run", &out, &options);
    let size_f16 = std::fs::metadata(out.join("model.onnx")).unwrap().len();
    for mut engine in engines(&out.join("model.onnx"), &base) {
        let logits = engine.step(&g.batch).unwrap();
        let error = max_valid_error(&logits.values, &g.logits_merged, &g.batch, g.vocab);
        let (mut agree, mut total) = (0, 0);
        for (b, row) in g.batch.attention_mask.iter().enumerate() {
            for (i, &m) in row.iter().enumerate() {
                if m == 1 {
                    let at = (b * row.len() + i) * g.vocab;
                    let argmax = |v: &[f32]| model_export::runtime::sampler::argmax(v);
                    agree += usize::from(
                        argmax(&logits.values[at..at + g.vocab])
                            == argmax(&g.logits_merged[at..at + g.vocab]),
                    );
                    total += 1;
                }
            }
        }
        assert!(agree as f64 >= 0.99 * total as f64, "{}: top-1 agreement {agree}/{total}", engine.name());
        let relative = crate::reference::relative_error(&logits.values, &g.logits_merged, &g.batch, g.vocab);
        assert!(relative <= 1e-2, "{}: f16 logits {relative} (relative) from transformers'", engine.name());
        let new_tokens = g.greedy_ids[0].len() - g.batch.input_ids[0].len();
        let options =
            GreedyOptions { max_new_tokens: new_tokens, eos_token_ids: vec![383, 381], pad_token_id: 381 };
        assert_eq!(greedy(engine.as_mut(), &g.batch, &options).unwrap(), g.greedy_ids, "{}", engine.name());
        eprintln!(
            "f16 {}: max abs logit error {error:.2e}, top-1 {agree}/{total}, greedy ids equal, model {size_f16} bytes",
            engine.name()
        );
    }
}

#[test]
fn companion_files_and_genai_config() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("onnx");
    let (_, report) = export("qwen3-tiny", "qwen3-tiny-run", &out, &OnnxOptions::default());
    assert!(!report.external_data);
    for file in [
        "model.onnx",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "genai_config.json",
        "manifest.json",
    ] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let genai: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("genai_config.json")).unwrap()).unwrap();
    assert_eq!(genai["model"]["type"], "qwen3");
    assert_eq!(genai["model"]["vocab_size"], 384);
    assert_eq!(genai["model"]["eos_token_id"], serde_json::json!([383, 381]));
    assert_eq!(genai["model"]["pad_token_id"], 381);
    assert_eq!(genai["model"]["decoder"]["head_size"], 16);
    assert_eq!(genai["model"]["decoder"]["num_key_value_heads"], 2);
    assert_eq!(genai["model"]["decoder"]["inputs"]["past_key_names"], "past_key_values.%d.key");
    assert_eq!(genai["search"]["past_present_share_buffer"], false);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "onnx");
    assert_eq!(manifest["provenance"]["options"]["opset"], 17);
}

#[test]
fn onnx_checker_accepts_the_export() {
    // The `onnx` Python package is an independent validator; scripts/test.sh installs it.
    let probe = std::process::Command::new("python3").args(["-c", "import onnx"]).status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(!crate::common::ci(), "CI=true but the onnx Python package is missing");
        eprintln!("onnx (Python) not installed: skipping the checker");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for (name, options) in [
        ("embedded", OnnxOptions::default()),
        (
            "external",
            OnnxOptions {
                external_data: Some(true),
                precision: OnnxPrecision::F16,
                opset: 21,
                ..OnnxOptions::default()
            },
        ),
    ] {
        let out = dir.path().join(name);
        export("qwen2-tiny", "qwen2-tiny-adapter", &out, &options);
        let script = format!(
            "import onnx; onnx.checker.check_model({:?}, full_check=True)",
            out.join("model.onnx").display().to_string()
        );
        let result = std::process::Command::new("python3").args(["-c", &script]).output().unwrap();
        assert!(result.status.success(), "{name}: {}", String::from_utf8_lossy(&result.stderr));
    }
}

/// ONNX Runtime's own tools must find the projections: its `MatMulNBitsQuantizer` (and the
/// transformers optimizer's fusions) only rewrite `MatMul` nodes whose weight is an initializer,
/// and skip `Gemm`. Every projection is such a `MatMul`, so ORT's RTN quantizer converts all of
/// them; the tied head of qwen3-tiny stays `Gemm` on the one embedding table (the lookup needs
/// it by rows), and the quantized model still predicts as the golden logits do.
#[test]
fn onnx_runtime_quantizes_every_projection_of_the_export() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import onnxruntime.quantization.matmul_nbits_quantizer"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        assert!(!crate::common::ci(), "CI=true but onnxruntime's quantizer (onnx-ir) is missing");
        eprintln!("onnxruntime.quantization not importable: skipping");
        return;
    }
    let script = r#"
import json, sys, onnx
from onnxruntime.quantization import matmul_nbits_quantizer as m
model = onnx.load(sys.argv[1])
count = lambda g, op: sum(n.op_type == op for n in g.node)
before = {op: count(model.graph, op) for op in ("Gemm", "MatMul")}
q = m.MatMulNBitsQuantizer(model, block_size=32, is_symmetric=False, algo_config=m.RTNWeightOnlyQuantConfig())
q.process()
q.model.save_model_to_file(sys.argv[2], use_external_data_format=False)
after = {op: count(q.model.model.graph, op) for op in ("Gemm", "MatMul", "MatMulNBits")}
print("\ncounts=" + json.dumps({"before": before, "after": after}))
"#;
    let dir = tempfile::tempdir().unwrap();
    for (case, adapter, head_matmul) in
        [("qwen2-tiny", "qwen2-tiny-adapter", 1), ("qwen3-tiny", "qwen3-tiny-run", 0)]
    {
        let out = dir.path().join(case);
        let (base, _) = export(case, adapter, &out, &OnnxOptions::default());
        let quantized = out.join("model.rtn.onnx");
        let result = std::process::Command::new("python3")
            .args([
                "-c",
                script,
                &out.join("model.onnx").display().to_string(),
                &quantized.display().to_string(),
            ])
            .output()
            .unwrap();
        assert!(result.status.success(), "{case}: {}", String::from_utf8_lossy(&result.stderr));
        // The quantizer prints a progress bar on stdout too.
        let stdout = String::from_utf8_lossy(&result.stdout);
        let counts: serde_json::Value =
            serde_json::from_str(stdout.lines().find_map(|l| l.strip_prefix("counts=")).unwrap()).unwrap();
        let layers = base.config.num_hidden_layers as u64;
        let projections = 7 * layers + head_matmul;
        // Two attention products per layer stay MatMul; a tied head stays Gemm.
        assert_eq!(counts["before"]["Gemm"], 1 - head_matmul, "{case}: {counts}");
        assert_eq!(counts["before"]["MatMul"], projections + 2 * layers, "{case}: {counts}");
        assert_eq!(counts["after"]["MatMulNBits"], projections, "{case}: {counts}");
        assert_eq!(counts["after"]["MatMul"], 2 * layers, "{case}: {counts}");
        if ort_present() {
            let c = &base.config;
            let mut engine =
                OrtEngine::load(&quantized, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, 2)
                    .unwrap();
            let g = golden(case);
            let logits = engine.step(&g.batch).unwrap();
            let error = crate::reference::relative_error(&logits.values, &g.logits_merged, &g.batch, g.vocab);
            // It runs, on 4-bit weights (random weights: docs/quantization.md says why the error is
            // large; the trained model's comparison is scripts/compat.sh's).
            assert!(logits.values.iter().all(|v| v.is_finite()), "{case}: non-finite logits");
            assert!(
                error > crate::reference::GOLDEN_RELATIVE && error < 5.0,
                "{case}: relative error {error}"
            );
            eprintln!(
                "{case}: ORT's RTN quantized {projections} projections; logits {error:.2e} (relative) from transformers'"
            );
        }
    }
}
