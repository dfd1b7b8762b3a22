//! Greedy decoding with a KV cache, as transformers' `generate(do_sample=False)` does it on a
//! left-padded batch: prefill once, then one token per step; a finished row continues with pad.

use super::batch::{Batch, positions_from_mask};
use super::reference::{KvCache, ReferenceModel};
use crate::error::RuntimeError;

/// Index of the largest value; the first one on ties (as torch.argmax).
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

pub struct GreedyOptions {
    pub max_new_tokens: usize,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: i64,
}

/// The prompt rows followed by up to `max_new_tokens` generated ids each.
pub fn greedy(
    model: &ReferenceModel,
    prompt: &Batch,
    options: &GreedyOptions,
) -> Result<Vec<Vec<i64>>, RuntimeError> {
    let mut cache = KvCache::default();
    let mut sequences = prompt.input_ids.clone();
    let mut mask = prompt.attention_mask.clone();
    let mut finished = vec![false; sequences.len()];
    let mut step = prompt.clone();
    for _ in 0..options.max_new_tokens {
        let logits = model.forward(&step, &mut cache)?;
        let (_, s, _) = logits.dims3()?;
        let last = logits.narrow(1, s - 1, 1)?.squeeze(1)?.to_vec2::<f32>()?;
        let mut next = Vec::with_capacity(last.len());
        for (row, values) in last.iter().enumerate() {
            let token = if finished[row] { options.pad_token_id } else { argmax(values) as i64 };
            finished[row] |= options.eos_token_ids.contains(&token);
            sequences[row].push(token);
            mask[row].push(1);
            next.push(vec![token]);
        }
        if finished.iter().all(|f| *f) {
            break;
        }
        let position_ids = positions_from_mask(&mask, 1);
        step = Batch { input_ids: next, attention_mask: mask.clone(), position_ids };
    }
    Ok(sequences)
}
