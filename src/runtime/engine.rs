//! What every engine offers the validator and generation: one forward step over a batch, with
//! the engine keeping its own KV cache between steps.

use super::batch::Batch;
use crate::error::RuntimeError;

/// Logits of one step: [batch, seq, vocab], row-major.
pub struct Logits {
    pub values: Vec<f32>,
    pub batch: usize,
    pub seq: usize,
    pub vocab: usize,
}

impl Logits {
    /// The logits of the last position of `row`.
    pub fn last(&self, row: usize) -> &[f32] {
        let at = (row * self.seq + self.seq - 1) * self.vocab;
        &self.values[at..at + self.vocab]
    }
}

pub trait DecoderEngine {
    fn name(&self) -> &'static str;
    /// Runs `batch` (new tokens; `attention_mask` covers past + new) and extends the cache.
    fn step(&mut self, batch: &Batch) -> Result<Logits, RuntimeError>;
    /// Like `step`, returning only each row's last position ([batch, 1, vocab]); engines that
    /// can skip the other positions' output head override it.
    fn step_last(&mut self, batch: &Batch) -> Result<Logits, RuntimeError> {
        let all = self.step(batch)?;
        let values = (0..all.batch).flat_map(|row| all.last(row).to_vec()).collect();
        Ok(Logits { values, batch: all.batch, seq: 1, vocab: all.vocab })
    }
    /// Forgets the cache, for a new batch.
    fn reset(&mut self);
}
