//! The reference run kept in `<out-dir>/.state/reference.bin`, so a re-run that validates an
//! export again (or validates the next one after a stop) compares with it instead of running a
//! 7B reference again. One file, written atomically: a little-endian u64 length, a JSON header
//! (what it was computed from, the batch, greedy ids, the merge check, the evaluation text's
//! chunks), then the logits and the text's log-probabilities as little-endian f32. A file whose
//! digest or length does not match is not used.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Reference;
use super::report::MergeCheck;
use super::text::{EvalText, TextReference};
use crate::error::Error;
use crate::runtime::{Batch, GreedyOptions};

pub const CACHE_FILE: &str = "reference.bin";

#[derive(Serialize, Deserialize)]
struct Header {
    /// The inputs digest of the reference (weights, prompts, generation options, method).
    digest: String,
    input_ids: Vec<Vec<i64>>,
    attention_mask: Vec<Vec<i64>>,
    position_ids: Vec<Vec<i64>>,
    vocab: usize,
    logits: usize,
    greedy: Vec<Vec<i64>>,
    max_new_tokens: usize,
    eos_token_ids: Vec<i64>,
    pad_token_id: i64,
    merge: Option<MergeCheck>,
    /// The evaluation text, its reference perplexity and how many log-probabilities follow the logits.
    #[serde(default)]
    text: Option<(EvalText, f64, usize)>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(CACHE_FILE)
}

/// Writes `reference` computed from inputs with `digest`.
pub fn save(state_dir: &Path, digest: &str, reference: &Reference) -> Result<(), Error> {
    let header = Header {
        digest: digest.to_string(),
        input_ids: reference.batch.input_ids.clone(),
        attention_mask: reference.batch.attention_mask.clone(),
        position_ids: reference.batch.position_ids.clone(),
        vocab: reference.vocab,
        logits: reference.logits.len(),
        greedy: reference.greedy.clone(),
        max_new_tokens: reference.options.max_new_tokens,
        eos_token_ids: reference.options.eos_token_ids.clone(),
        pad_token_id: reference.options.pad_token_id,
        merge: reference.merge.clone(),
        text: reference.text.as_ref().map(|t| (t.text.clone(), t.perplexity, t.log_probs.len())),
    };
    let path = path(state_dir);
    let json = serde_json::to_vec(&header).map_err(|e| Error::write(&path, std::io::Error::other(e)))?;
    let log_probs = reference.text.as_ref().map_or(&[][..], |t| t.log_probs.as_slice());
    let mut bytes = Vec::with_capacity(8 + json.len() + (reference.logits.len() + log_probs.len()) * 4);
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    for v in reference.logits.iter().chain(log_probs) {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    crate::fsutil::atomic_write(&path, &bytes)
}

/// Whether `state_dir` holds a whole reference computed from inputs with `digest`.
pub fn holds(state_dir: &Path, digest: &str) -> bool {
    load(state_dir, digest).is_some()
}

/// The cached reference computed from inputs with `digest`, if there is one that is whole.
pub fn load(state_dir: &Path, digest: &str) -> Option<Reference> {
    let bytes = std::fs::read(path(state_dir)).ok()?;
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let header: Header = serde_json::from_slice(bytes.get(8..8usize.checked_add(len)?)?).ok()?;
    let data = &bytes[8 + len..];
    let text_len = header.text.as_ref().map_or(0, |t| t.2);
    if header.digest != digest || data.len() != (header.logits + text_len) * 4 {
        return None;
    }
    let mut values = data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    let logits = values.by_ref().take(header.logits).collect();
    let text = header.text.map(|(text, perplexity, _)| TextReference {
        text,
        vocab: header.vocab,
        log_probs: values.collect(),
        perplexity,
    });
    Some(Reference {
        batch: Batch {
            input_ids: header.input_ids,
            attention_mask: header.attention_mask,
            position_ids: header.position_ids,
        },
        logits,
        vocab: header.vocab,
        greedy: header.greedy,
        options: GreedyOptions {
            max_new_tokens: header.max_new_tokens,
            eos_token_ids: header.eos_token_ids,
            pad_token_id: header.pad_token_id,
        },
        merge: header.merge,
        text,
    })
}
