//! The candle reference forward against transformers' golden logits and greedy ids.

use std::path::Path;

use model_export::checkpoint::detect;
use model_export::export::safetensors::{MergeOptions, write_merged_folder};
use model_export::model::{ModelFolder, SafetensorsFile};
use model_export::runtime::{Batch, GreedyOptions, KvCache, ReferenceEngine, ReferenceModel, greedy};

use crate::common::fixture;

pub struct Golden {
    pub batch: Batch,
    pub logits_base: Vec<f32>,
    pub logits_merged: Vec<f32>,
    /// peft's forward with the adapter unmerged, where the case records it (qwen3-moe-tiny):
    /// its merged and unmerged logits differ by up to 1e-5 there.
    pub logits_unmerged: Option<Vec<f32>>,
    pub greedy_ids: Vec<Vec<i64>>,
    pub vocab: usize,
}

fn i64_rows(file: &SafetensorsFile, name: &str) -> Vec<Vec<i64>> {
    let info = file.get(name).unwrap();
    let values: Vec<i64> =
        file.bytes(info).chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect();
    values.chunks(info.shape[1]).map(<[i64]>::to_vec).collect()
}

fn f32_values(file: &SafetensorsFile, name: &str) -> Vec<f32> {
    let mut values = Vec::new();
    file.read_f32(file.get(name).unwrap(), &mut values).unwrap();
    values
}

pub fn golden(case: &str) -> Golden {
    let file = SafetensorsFile::open(&fixture(&format!("reference/{case}.safetensors"))).unwrap();
    let vocab = *file.get("logits_base").unwrap().shape.last().unwrap();
    Golden {
        batch: Batch {
            input_ids: i64_rows(&file, "input_ids"),
            attention_mask: i64_rows(&file, "attention_mask"),
            position_ids: i64_rows(&file, "position_ids"),
        },
        logits_base: f32_values(&file, "logits_base"),
        logits_merged: f32_values(&file, "logits_merged"),
        logits_unmerged: file.get("logits_unmerged").map(|_| f32_values(&file, "logits_unmerged")),
        greedy_ids: i64_rows(&file, "greedy_ids"),
        vocab,
    }
}

/// How close every engine must come to transformers' logits: max |Δ| ≤ 1e-5 · max(1, RMS of
/// transformers' logits) over real tokens (the figure README.md and docs/ give).
pub const GOLDEN_RELATIVE: f64 = 1e-5;

/// `max |Δ| / max(1, RMS of golden)` over positions where attention_mask == 1.
pub fn relative_error(ours: &[f32], golden: &[f32], batch: &Batch, vocab: usize) -> f64 {
    model_export::validate::metrics::compare_logits(ours, golden, batch, vocab, 1e-3).relative_error
}

/// Max abs difference over positions where attention_mask == 1.
pub fn max_valid_error(ours: &[f32], golden: &[f32], batch: &Batch, vocab: usize) -> f32 {
    let mut worst = 0.0f32;
    for (b, row) in batch.attention_mask.iter().enumerate() {
        for (i, &m) in row.iter().enumerate() {
            if m == 1 {
                let at = (b * row.len() + i) * vocab;
                for k in at..at + vocab {
                    worst = worst.max((ours[k] - golden[k]).abs());
                }
            }
        }
    }
    worst
}

fn logits(model_dir: &Path, batch: &Batch) -> Vec<f32> {
    let folder = ModelFolder::open(model_dir, None).unwrap();
    let model = ReferenceModel::load(&folder).unwrap();
    let logits = model.forward(batch, &mut KvCache::default()).unwrap();
    logits.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Merges the fixture case with our merge, into a temp folder.
fn our_merge(base: &str, adapter: &str, out: &Path) {
    let base = ModelFolder::open(&fixture(base), None).unwrap();
    let detection = detect(&fixture(adapter), Some(&base)).unwrap();
    write_merged_folder(&base, Some(&detection), &MergeOptions::default(), out).unwrap();
}

fn check_case(case: &str, base: &str, adapter: &str) {
    let g = golden(case);
    let base_error = relative_error(&logits(&fixture(base), &g.batch), &g.logits_base, &g.batch, g.vocab);
    assert!(base_error <= GOLDEN_RELATIVE, "{case}: base logits off by {base_error} (relative)");

    let dir = tempfile::tempdir().unwrap();
    let merged = dir.path().join("merged");
    our_merge(base, adapter, &merged);
    let merged_error = relative_error(&logits(&merged, &g.batch), &g.logits_merged, &g.batch, g.vocab);
    assert!(merged_error <= GOLDEN_RELATIVE, "{case}: merged logits off by {merged_error} (relative)");

    let model = ReferenceModel::load(&ModelFolder::open(&merged, None).unwrap()).unwrap();
    let new_tokens = g.greedy_ids[0].len() - g.batch.input_ids[0].len();
    let options =
        GreedyOptions { max_new_tokens: new_tokens, eos_token_ids: vec![383, 381], pad_token_id: 381 };
    let ids = greedy(&mut ReferenceEngine::new(&model), &g.batch, &options).unwrap();
    assert_eq!(ids, g.greedy_ids, "{case}: greedy ids");
    eprintln!(
        "{case}: max abs logit error base {base_error:.2e}, merged {merged_error:.2e}; greedy ids equal"
    );
}

#[test]
fn qwen3_tied_logits_and_greedy_match_transformers() {
    check_case("qwen3-tiny", "qwen3-tiny", "qwen3-tiny-run");
}

#[test]
fn qwen2_biased_logits_and_greedy_match_transformers() {
    check_case("qwen2-tiny", "qwen2-tiny", "qwen2-tiny-adapter");
}

#[test]
fn qwen3_moe_routed_logits_and_greedy_match_transformers() {
    check_case("qwen3-moe-tiny", "qwen3-moe-tiny", "qwen3-moe-tiny-adapter");
}

#[test]
fn padded_rows_equal_rows_run_alone() {
    // The golden json records that padding changes nothing at valid positions; so must we.
    let g = golden("qwen3-tiny");
    let folder = ModelFolder::open(&fixture("reference/qwen3-tiny-merged"), None).unwrap();
    let model = ReferenceModel::load(&folder).unwrap();
    let padded = model.forward(&g.batch, &mut KvCache::default()).unwrap();
    let row = 1;
    let len = g.batch.input_ids[row].len();
    let real: Vec<i64> = g.batch.input_ids[row]
        .iter()
        .zip(&g.batch.attention_mask[row])
        .filter(|(_, m)| **m == 1)
        .map(|(t, _)| *t)
        .collect();
    let alone = model
        .forward(&Batch::left_padded(std::slice::from_ref(&real), 381), &mut KvCache::default())
        .unwrap();
    let padded_row = padded.get(row).unwrap().narrow(0, len - real.len(), real.len()).unwrap();
    let diff = (padded_row - alone.get(0).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "padding changed valid logits by {diff}");
    assert!(
        padded.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| v.is_finite()),
        "no NaN on padded rows"
    );
}

/// The streamed model (weights read layer by layer on every pass) computes exactly what the
/// resident one does: the same ops on the same values, bit for bit, prompt logits and greedy
/// continuation with the KV cache, on a tied (qwen3) and an untied, biased (qwen2) model.
#[test]
fn streamed_model_equals_the_resident_one_bit_for_bit() {
    use model_export::runtime::StreamedModel;
    for case in ["qwen3-tiny", "qwen2-tiny"] {
        let g = golden(case);
        let folder = ModelFolder::open(&fixture(&format!("reference/{case}-merged")), None).unwrap();
        let resident = ReferenceModel::load(&folder).unwrap();
        let streamed = StreamedModel::of_folder(&folder);
        let ours = streamed.forward(&g.batch, &mut KvCache::default()).unwrap();
        let theirs = resident.forward(&g.batch, &mut KvCache::default()).unwrap();
        let (ours, theirs) = (
            ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(ours.len(), g.logits_merged.len());
        assert!(ours.iter().zip(&theirs).all(|(a, b)| a.to_bits() == b.to_bits()), "{case}: logits differ");
        let options = GreedyOptions { max_new_tokens: 6, eos_token_ids: vec![], pad_token_id: 381 };
        let a = greedy(&mut ReferenceEngine::new(&streamed), &g.batch, &options).unwrap();
        let b = greedy(&mut ReferenceEngine::new(&resident), &g.batch, &options).unwrap();
        assert_eq!(a, b, "{case}: greedy ids");
        assert!(a[0].len() > g.batch.input_ids[0].len(), "{case}: nothing was generated");
    }
}
