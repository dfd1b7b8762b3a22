//! Greedy decoding with a KV cache, as transformers' `generate(do_sample=False)` does it on a
//! left-padded batch: prefill once, then one token per step; a finished row continues with pad.
//! Every engine decodes through this one loop.

use super::batch::{Batch, positions_from_mask};
use super::engine::DecoderEngine;
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
    engine: &mut dyn DecoderEngine,
    prompt: &Batch,
    options: &GreedyOptions,
) -> Result<Vec<Vec<i64>>, RuntimeError> {
    engine.reset();
    let mut sequences = prompt.input_ids.clone();
    let mut mask = prompt.attention_mask.clone();
    let mut finished = vec![false; sequences.len()];
    let mut step = prompt.clone();
    for generated in 0..options.max_new_tokens {
        let logits = engine.step(&step)?;
        let mut next = Vec::with_capacity(sequences.len());
        for (row, done) in finished.iter_mut().enumerate() {
            let token = if *done { options.pad_token_id } else { argmax(logits.last(row)) as i64 };
            *done |= options.eos_token_ids.contains(&token);
            sequences[row].push(token);
            mask[row].push(1);
            next.push(vec![token]);
        }
        if finished.iter().all(|f| *f) || generated + 1 == options.max_new_tokens {
            break;
        }
        let position_ids = positions_from_mask(&mask, 1);
        step = Batch { input_ids: next, attention_mask: mask.clone(), position_ids };
    }
    engine.reset();
    Ok(sequences)
}
