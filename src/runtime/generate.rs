//! Greedy decoding with a KV cache, as transformers' `generate(do_sample=False)` does it on a
//! left-padded batch: prefill once, then one token per step; a finished row continues with pad.
//! A token-level view of the one generation loop (`generation::generate_batch`) that every
//! engine decodes through.

use super::batch::Batch;
use super::engine::DecoderEngine;
use super::generation::{Resolved, generate_batch};
use super::sampler::SamplingParams;
use crate::error::RuntimeError;

pub struct GreedyOptions {
    pub max_new_tokens: usize,
    pub eos_token_ids: Vec<i64>,
    pub pad_token_id: i64,
}

/// The prompt rows followed by up to `max_new_tokens` generated ids each, as transformers'
/// `generate` returns them: every row as long as the longest, a finished row filled with pad.
/// Runs the shared generation loop with an argmax sampler.
pub fn greedy(
    engine: &mut dyn DecoderEngine,
    prompt: &Batch,
    options: &GreedyOptions,
) -> Result<Vec<Vec<i64>>, RuntimeError> {
    let settings = Resolved {
        sampling: SamplingParams::default(),
        eos_token_ids: options.eos_token_ids.clone(),
        pad_token_id: options.pad_token_id,
        max_new_tokens: options.max_new_tokens,
        stop: Vec::new(),
    };
    // The prompts without their left padding; the loop pads them again the same way.
    let prompts: Vec<Vec<i64>> = prompt
        .input_ids
        .iter()
        .zip(&prompt.attention_mask)
        .map(|(ids, mask)| ids.iter().zip(mask).filter(|(_, m)| **m != 0).map(|(t, _)| *t).collect())
        .collect();
    let generated = generate_batch(engine, None, &prompts, &settings, &mut |_| {})?;
    let longest = generated.iter().map(|(ids, _, _)| ids.len()).max().unwrap_or(0);
    Ok(prompt
        .input_ids
        .iter()
        .zip(generated)
        .map(|(row, (ids, _, _))| {
            let mut sequence = row.clone();
            let filled = longest - ids.len();
            sequence.extend(ids);
            sequence.extend(std::iter::repeat_n(options.pad_token_id, filled));
            sequence
        })
        .collect())
}
