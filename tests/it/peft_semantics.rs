//! PEFT features the golden fixtures do not exercise (DoRA, rank/alpha patterns, rsLoRA,
//! embedding LoRA, modules_to_save, tied heads), checked against a naive re-implementation of
//! the rules in tests/fixtures/README.md, written independently of src/merge.

use std::collections::BTreeMap;
use std::path::Path;

use model_export::export::safetensors::{SafetensorsWriter, TensorEntry};
use model_export::model::{SafetensorsFile, TensorDtype};

use crate::common::{fixture, run_in};

type Tensors = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

fn read(path: &Path) -> Tensors {
    let file = SafetensorsFile::open(path).unwrap();
    file.tensors()
        .iter()
        .map(|t| {
            let mut v = Vec::new();
            file.read_f32(t, &mut v).unwrap();
            (t.name.clone(), (t.shape.clone(), v))
        })
        .collect()
}

/// Deterministic values in [lo, hi).
fn values(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((state >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn write_adapter(dir: &Path, config: serde_json::Value, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    let entries: Vec<TensorEntry> =
        tensors.iter().map(|(n, s, _)| TensorEntry::new(n.clone(), TensorDtype::F32, s.clone())).collect();
    let mut w = SafetensorsWriter::create(&dir.join("adapter_model.safetensors"), &entries, &[]).unwrap();
    for (_, _, v) in tensors {
        w.write(&v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>()).unwrap();
    }
    w.finish().unwrap();
}

/// B @ A for B [out, r], A [r, in].
fn matmul(b: &[f32], a: &[f32], out: usize, r: usize, inp: usize) -> Vec<f32> {
    let mut d = vec![0.0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            d[o * inp + i] = (0..r).map(|k| b[o * r + k] * a[k * inp + i]).sum();
        }
    }
    d
}

fn merge(dir: &Path, adapter: &Path) -> Tensors {
    merge_onto(dir, "qwen3-tiny", adapter)
}

fn merge_onto(dir: &Path, base: &str, adapter: &Path) -> Tensors {
    let out = dir.join("merged");
    let base = fixture(base);
    let args = [
        "merge",
        "--base",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let result = run_in(dir, &args, &[]);
    assert_eq!(result.code, 0, "{}", result.stderr);
    read(&out.join("model.safetensors"))
}

/// Our merge (in `dir/merged`) against the unmerged reference on transformers' batch: two
/// implementations of the same peft semantics that share no code must give the same logits.
fn agrees_with_unmerged(dir: &Path, base: &str, adapter: &Path) {
    use model_export::model::ModelFolder;
    use model_export::runtime::reference::Forward;
    use model_export::runtime::{KvCache, ReferenceModel};
    let g = crate::reference::golden(base);
    fn logits(m: &impl Forward, batch: &model_export::runtime::Batch) -> Vec<f32> {
        m.forward(batch, &mut KvCache::default()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }
    let folder = ModelFolder::open(&fixture(base), None).unwrap();
    let unmerged = model_export::validate::unmerged::load_unmerged(&folder, Some(adapter)).unwrap();
    let merged = ReferenceModel::load(&ModelFolder::open(&dir.join("merged"), None).unwrap()).unwrap();
    let (reference, ours) = (logits(&unmerged, &g.batch), logits(&merged, &g.batch));
    let error = crate::reference::relative_error(&ours, &reference, &g.batch, g.vocab);
    assert!(error <= 1e-5, "{}: merged vs unmerged {error} (relative)", adapter.display());
    // And the adapter matters: the base alone is far from both.
    let plain = logits(&ReferenceModel::load(&folder).unwrap(), &g.batch);
    let moved = crate::reference::relative_error(&plain, &reference, &g.batch, g.vocab);
    assert!(moved > 1e-3, "{}: the adapter changes nothing ({moved})", adapter.display());
}

fn assert_close(ours: &[f32], expected: &[f32], what: &str) {
    let max = ours.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert_eq!(ours.len(), expected.len(), "{what}");
    assert!(max <= 2e-6, "{what}: max abs difference {max}");
}

#[test]
fn dora_with_rank_and_alpha_patterns_and_rslora() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&fixture("qwen3-tiny/model.safetensors"));
    // Rank 4 by default, 2 for v_proj; alpha 8 by default, 5 for layer 0's q_proj; rsLoRA.
    let rank = |m: &str| if m.ends_with("v_proj") { 2 } else { 4 };
    let alpha = |m: &str| if m == "model.layers.0.self_attn.q_proj" { 5.0f32 } else { 8.0 };
    let mut tensors = Vec::new();
    let mut modules = Vec::new();
    for layer in 0..2 {
        for (proj, out) in [("q_proj", 64), ("v_proj", 32)] {
            let m = format!("model.layers.{layer}.self_attn.{proj}");
            let r = rank(&m);
            let a = values(layer as u64 * 10 + r as u64, r * 64, -0.3, 0.3);
            let b = values(layer as u64 * 10 + out as u64, out * r, -0.3, 0.3);
            let mag = values(layer as u64 + out as u64, out, 0.5, 1.5);
            tensors.push((format!("base_model.model.{m}.lora_A.weight"), vec![r, 64], a.clone()));
            tensors.push((format!("base_model.model.{m}.lora_B.weight"), vec![out, r], b.clone()));
            tensors.push((format!("base_model.model.{m}.lora_magnitude_vector"), vec![out], mag.clone()));
            modules.push((m, r, out, a, b, mag));
        }
    }
    let config = serde_json::json!({
        "peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": true, "use_dora": true,
        "target_modules": ["v_proj", "q_proj"], "rank_pattern": {"v_proj": 2},
        "alpha_pattern": {"layers.0.self_attn.q_proj": 5}, "fan_in_fan_out": false
    });
    let adapter = dir.path().join("dora");
    write_adapter(&adapter, config, &tensors);
    let ours = merge(dir.path(), &adapter);
    for (m, r, out, a, b, mag) in modules {
        let scale = alpha(&m) / (r as f32).sqrt();
        let w = &base[&format!("{m}.weight")].1;
        let delta = matmul(&b, &a, out, r, 64);
        let mut expected: Vec<f32> = w.iter().zip(&delta).map(|(w, d)| w + d * scale).collect();
        for o in 0..out {
            let row = &mut expected[o * 64..(o + 1) * 64];
            let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
            row.iter_mut().for_each(|x| *x *= mag[o] / norm);
        }
        assert_close(&ours[&format!("{m}.weight")].1, &expected, &m);
    }
    // Untouched tensors are copied exactly.
    assert_eq!(ours["model.layers.0.mlp.up_proj.weight"].1, base["model.layers.0.mlp.up_proj.weight"].1);
    agrees_with_unmerged(dir.path(), "qwen3-tiny", &adapter);
}

#[test]
fn embedding_lora_and_saved_head_untie_a_tied_model() {
    let dir = tempfile::tempdir().unwrap();
    let base = read(&fixture("qwen3-tiny/model.safetensors"));
    let embed = &base["model.embed_tokens.weight"].1;
    let (r, vocab, hidden) = (4, 384, 64);
    let ea = values(1, r * vocab, -0.2, 0.2);
    let eb = values(2, hidden * r, -0.2, 0.2);
    let head = values(3, vocab * hidden, -0.1, 0.1);
    let oa = values(4, r * 64, -0.2, 0.2);
    let ob = values(5, 64 * r, -0.2, 0.2);
    let mut tensors = vec![
        (
            "base_model.model.model.embed_tokens.base_layer.weight".to_string(),
            vec![vocab, hidden],
            embed.clone(),
        ),
        ("base_model.model.model.embed_tokens.lora_embedding_A".to_string(), vec![r, vocab], ea.clone()),
        ("base_model.model.model.embed_tokens.lora_embedding_B".to_string(), vec![hidden, r], eb.clone()),
        ("base_model.model.lm_head.weight".to_string(), vec![vocab, hidden], head.clone()),
    ];
    for layer in 0..2 {
        tensors.push((
            format!("base_model.model.model.layers.{layer}.self_attn.o_proj.lora_A.weight"),
            vec![r, 64],
            oa.clone(),
        ));
        tensors.push((
            format!("base_model.model.model.layers.{layer}.self_attn.o_proj.lora_B.weight"),
            vec![64, r],
            ob.clone(),
        ));
    }
    let config = serde_json::json!({
        "peft_type": "LORA", "r": 4, "lora_alpha": 6, "target_modules": ["embed_tokens", "o_proj"],
        "modules_to_save": ["lm_head"]
    });
    let adapter = dir.path().join("emb");
    write_adapter(&adapter, config, &tensors);
    let ours = merge(dir.path(), &adapter);

    // Embedding: W + (B @ A)^T * scale, with scale = 6 / 4.
    let ba = matmul(&eb, &ea, hidden, r, vocab); // [hidden, vocab]
    let mut expected = embed.clone();
    for v in 0..vocab {
        for h in 0..hidden {
            expected[v * hidden + h] += ba[h * vocab + v] * 1.5;
        }
    }
    assert_close(&ours["model.embed_tokens.weight"].1, &expected, "embed_tokens");
    // The saved head replaces the (tied) head, which is now stored on its own.
    assert_eq!(ours["lm_head.weight"].1, head);
    let o = matmul(&ob, &oa, 64, r, 64);
    let w = &base["model.layers.1.self_attn.o_proj.weight"].1;
    let expected_o: Vec<f32> = w.iter().zip(&o).map(|(w, d)| w + d * 1.5).collect();
    assert_close(&ours["model.layers.1.self_attn.o_proj.weight"].1, &expected_o, "o_proj");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("merged/config.json")).unwrap()).unwrap();
    assert_eq!(
        config["tie_word_embeddings"], false,
        "transformers would re-tie the head and lose the fine-tune"
    );
    agrees_with_unmerged(dir.path(), "qwen3-tiny", &adapter);
}

#[test]
fn embedding_lora_alone_keeps_the_original_head() {
    // Training used W + delta as input embeddings but the untouched W as output head.
    let dir = tempfile::tempdir().unwrap();
    let base = read(&fixture("qwen3-tiny/model.safetensors"));
    let tensors = vec![
        (
            "base_model.model.model.embed_tokens.lora_embedding_A".to_string(),
            vec![2, 384],
            values(7, 768, -0.5, 0.5),
        ),
        (
            "base_model.model.model.embed_tokens.lora_embedding_B".to_string(),
            vec![64, 2],
            values(8, 128, -0.5, 0.5),
        ),
    ];
    let config =
        serde_json::json!({"peft_type": "LORA", "r": 2, "lora_alpha": 2, "target_modules": ["embed_tokens"]});
    let adapter = dir.path().join("emb");
    write_adapter(&adapter, config, &tensors);
    let ours = merge(dir.path(), &adapter);
    assert_eq!(ours["lm_head.weight"].1, base["model.embed_tokens.weight"].1);
    assert_ne!(ours["model.embed_tokens.weight"].1, base["model.embed_tokens.weight"].1);
    agrees_with_unmerged(dir.path(), "qwen3-tiny", &adapter);
}

#[test]
fn fan_in_fan_out_is_ignored_for_linear_layers_as_peft_does() {
    // PEFT resets fan_in_fan_out to false for nn.Linear targets (Qwen's projections are Linear).
    let dir = tempfile::tempdir().unwrap();
    let base = read(&fixture("qwen3-tiny/model.safetensors"));
    let (r, out, inp) = (2, 128, 64);
    let a = values(11, r * inp, -0.3, 0.3);
    let b = values(12, out * r, -0.3, 0.3);
    let tensors = vec![
        ("base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight".to_string(), vec![r, inp], a.clone()),
        ("base_model.model.model.layers.0.mlp.gate_proj.lora_B.weight".to_string(), vec![out, r], b.clone()),
    ];
    let config = serde_json::json!({
        "peft_type": "LORA", "r": 2, "lora_alpha": 4, "fan_in_fan_out": true,
        "target_modules": "model\\.layers\\.0\\.mlp\\.gate_proj"
    });
    let adapter = dir.path().join("fifo");
    write_adapter(&adapter, config, &tensors);
    let ours = merge(dir.path(), &adapter);
    let w = &base["model.layers.0.mlp.gate_proj.weight"].1;
    let delta = matmul(&b, &a, out, r, inp);
    let expected: Vec<f32> = w.iter().zip(&delta).map(|(w, d)| w + d * 2.0).collect();
    assert_close(&ours["model.layers.0.mlp.gate_proj.weight"].1, &expected, "gate_proj");
    agrees_with_unmerged(dir.path(), "qwen3-tiny", &adapter);
}

#[test]
fn lora_bias_is_added_to_the_base_bias_and_matches_the_unmerged_forward() {
    // `lora_bias = true`: lora_B has a bias; peft's forward adds s · b_B, its merge adds it to the
    // base bias (Qwen2's q_proj has one).
    let dir = tempfile::tempdir().unwrap();
    let base = read(&fixture("qwen2-tiny/model.safetensors"));
    let (r, out, inp) = (2, 64, 64);
    let m = "model.layers.1.self_attn.q_proj";
    let bias = values(21, out, -0.5, 0.5);
    let tensors = vec![
        (format!("base_model.model.{m}.lora_A.weight"), vec![r, inp], values(22, r * inp, -0.3, 0.3)),
        (format!("base_model.model.{m}.lora_B.weight"), vec![out, r], values(23, out * r, -0.3, 0.3)),
        (format!("base_model.model.{m}.lora_B.bias"), vec![out], bias.clone()),
    ];
    let config = serde_json::json!({
        "peft_type": "LORA", "r": 2, "lora_alpha": 3, "lora_bias": true, "target_modules": ["q_proj"],
        "layers_to_transform": [1]
    });
    let adapter = dir.path().join("bias");
    write_adapter(&adapter, config, &tensors);
    let ours = merge_onto(dir.path(), "qwen2-tiny", &adapter);
    let expected: Vec<f32> =
        base[&format!("{m}.bias")].1.iter().zip(&bias).map(|(b, d)| b + d * 1.5).collect();
    assert_close(&ours[&format!("{m}.bias")].1, &expected, "q_proj bias");
    agrees_with_unmerged(dir.path(), "qwen2-tiny", &adapter);
}
