//! Perplexity and KL divergence on an evaluation text (`[validate] text`, `validate --text`):
//! the text is tokenized as written (special tokens included, nothing added), cut into chunks of
//! `text-context` tokens (no padding; a short tail is dropped), and every token after the first
//! of a chunk is predicted from the tokens before it in the chunk. The reference keeps its
//! log-probabilities; each export in each engine is scored against them as
//! `llama-perplexity --kl-divergence` reports it: perplexity and its change, mean and 99th
//! percentile KL divergence of the token distributions, and top-1 agreement. Unlike
//! llama-perplexity, which scores only the second half of each chunk, every position is scored,
//! as transformers computes a model's perplexity on fixed-length rows.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metrics::{kl_of_log_probs, log_sum_exp};
use crate::error::{ConfigError, Error, ModelError};
use crate::runtime::Batch;
use crate::runtime::sampler::argmax;

/// Chunks scored per forward pass: as many as keep one batch's logits near this size.
const BATCH_LOGITS_BYTES: usize = 64 << 20;

/// An evaluation text, tokenized and cut into chunks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalText {
    pub path: PathBuf,
    pub context: usize,
    /// Tokens of the whole text (the chunks hold `chunks.len() * context` of them).
    pub tokens: usize,
    pub chunks: Vec<Vec<i64>>,
}

impl EvalText {
    /// The configured `[validate] text`, read with the run's tokenizer, if there is one. The
    /// default `text-context` is capped to the model's length; a chosen one beyond it is refused.
    pub fn configured(
        config: &crate::config::Config,
        base: &crate::model::ModelFolder,
        detection: Option<&crate::checkpoint::Detection>,
    ) -> Result<Option<Self>, Error> {
        let v = &config.validate;
        let Some(path) = &v.text.value else { return Ok(None) };
        let tokenizer_dir = crate::checkpoint::detect::tokenizer_dir(detection, &base.dir);
        let max_positions = base.config.max_position_embeddings;
        let context = match v.text_context.source {
            crate::config::Source::Default => (v.text_context.value as usize).min(max_positions),
            _ => v.text_context.value as usize,
        };
        let chunks = v.text_chunks.value.map(|n| n as usize);
        Self::read(path, &tokenizer_dir, context, chunks, max_positions).map(Some)
    }

    /// Reads and tokenizes `path` with the tokenizer.json in `tokenizer_dir`. Refuses a text
    /// shorter than one chunk and a context longer than the model's.
    pub fn read(
        path: &Path,
        tokenizer_dir: &Path,
        context: usize,
        max_chunks: Option<usize>,
        max_positions: usize,
    ) -> Result<Self, Error> {
        let invalid = |message: String, help: &str| ConfigError::Invalid {
            origin: path.display().to_string(),
            key: "validate.text".into(),
            message,
            help: help.into(),
        };
        if context < 2 || context > max_positions {
            return Err(ConfigError::Invalid {
                origin: path.display().to_string(),
                key: "validate.text-context".into(),
                message: format!("{context} tokens: a chunk needs 2 to {max_positions} (the model's max_position_embeddings)"),
                help: "set `text-context` in [validate] (or --text-context) within that range".into(),
            }
            .into());
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(format!("cannot read it as UTF-8 text: {e}"), "point `text` at a UTF-8 text file")
        })?;
        let tokenizer_path = tokenizer_dir.join("tokenizer.json");
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| ModelError::Json {
            path: tokenizer_path.clone(),
            message: format!("not a usable tokenizer: {e}"),
        })?;
        let encoding = tokenizer.encode(text.as_str(), false).map_err(|e| ModelError::Json {
            path: tokenizer_path.clone(),
            message: format!("cannot tokenize {}: {e}", path.display()),
        })?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&t| i64::from(t)).collect();
        if ids.len() < context {
            return Err(invalid(
                format!("{} tokens, fewer than one chunk of {context}", ids.len()),
                "use a longer text, or lower `text-context` in [validate] (or --text-context)",
            )
            .into());
        }
        let chunks =
            ids.chunks_exact(context).take(max_chunks.unwrap_or(usize::MAX)).map(<[i64]>::to_vec).collect();
        Ok(Self { path: path.to_path_buf(), context, tokens: ids.len(), chunks })
    }

    /// Positions scored: every token of a chunk but the first.
    pub fn scored(&self) -> usize {
        self.chunks.len() * (self.context - 1)
    }

    /// The chunks in forward passes of a few chunks each (unpadded rows from position 0).
    fn batches(&self, vocab: usize) -> impl Iterator<Item = (usize, Batch)> + '_ {
        let per_batch = (BATCH_LOGITS_BYTES / (self.context * vocab * 4).max(1)).max(1);
        self.chunks.chunks(per_batch).enumerate().map(move |(i, rows)| {
            let batch = Batch {
                input_ids: rows.to_vec(),
                attention_mask: rows.iter().map(|r| vec![1; r.len()]).collect(),
                position_ids: rows.iter().map(|r| (0..r.len() as i64).collect()).collect(),
            };
            (i * per_batch, batch)
        })
    }
}

/// log-softmax of one row of logits, in f64 sums.
fn log_softmax(logits: &[f32], out: &mut Vec<f32>) {
    let log_sum = log_sum_exp(logits);
    out.clear();
    out.extend(logits.iter().map(|&v| (f64::from(v) - log_sum) as f32));
}

/// The reference's scores of the text: log-probabilities at every scored position.
#[derive(Debug, Clone)]
pub struct TextReference {
    pub text: EvalText,
    pub vocab: usize,
    /// [chunks, context - 1, vocab].
    pub log_probs: Vec<f32>,
    pub perplexity: f64,
}

/// What the report shows of the text and the reference's perplexity on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextSummary {
    pub path: String,
    pub tokens: usize,
    pub chunks: usize,
    pub context: usize,
    /// Positions scored (`chunks * (context - 1)`).
    pub scored: usize,
    pub perplexity: f64,
}

impl TextReference {
    pub fn summary(&self) -> TextSummary {
        TextSummary {
            path: self.text.path.display().to_string(),
            tokens: self.text.tokens,
            chunks: self.text.chunks.len(),
            context: self.text.context,
            scored: self.text.scored(),
            perplexity: self.perplexity,
        }
    }
}

/// One engine's scores of an export against the reference's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextMetrics {
    pub perplexity: f64,
    /// `perplexity / reference perplexity - 1`.
    pub perplexity_change: f64,
    /// Mean over scored positions of KL(reference || export), in nats.
    pub mean_kl: f64,
    /// 99th percentile of the same.
    pub kl_p99: f64,
    /// Positions where the export's most likely token is the reference's.
    pub top1_agreement: f64,
    pub scored: usize,
}

/// Runs the text through `forward` (logits [batch, context, vocab] of a batch of chunks) and
/// hands each scored position's log-probabilities with the token that follows to `position`.
fn score_with(
    text: &EvalText,
    vocab: usize,
    forward: &mut dyn FnMut(&Batch) -> Result<Vec<f32>, Error>,
    position: &mut dyn FnMut(usize, &[f32], usize),
) -> Result<(), Error> {
    let context = text.context;
    let mut row = Vec::with_capacity(vocab);
    for (first, batch) in text.batches(vocab) {
        let logits = forward(&batch)?;
        for (b, ids) in batch.input_ids.iter().enumerate() {
            for t in 0..context - 1 {
                let at = (b * context + t) * vocab;
                log_softmax(&logits[at..at + vocab], &mut row);
                let index = (first + b) * (context - 1) + t;
                position(index, &row, ids[t + 1] as usize);
            }
        }
    }
    Ok(())
}

/// The negative log-likelihood of `next`, counted as certain loss when it is outside the vocabulary.
fn nll(log_probs: &[f32], next: usize) -> f64 {
    -f64::from(log_probs.get(next).copied().unwrap_or(f32::NEG_INFINITY))
}

/// Scores `text` with the reference model.
pub fn score_reference(
    text: EvalText,
    vocab: usize,
    forward: &mut dyn FnMut(&Batch) -> Result<Vec<f32>, Error>,
) -> Result<TextReference, Error> {
    let mut log_probs = vec![0.0f32; text.scored() * vocab];
    let mut total = 0.0f64;
    score_with(&text, vocab, forward, &mut |index, row, next| {
        log_probs[index * vocab..(index + 1) * vocab].copy_from_slice(row);
        total += nll(row, next);
    })?;
    let perplexity = (total / text.scored() as f64).exp();
    Ok(TextReference { text, vocab, log_probs, perplexity })
}

/// Scores an export (through `forward`) against the reference's scores.
pub fn score_export(
    reference: &TextReference,
    forward: &mut dyn FnMut(&Batch) -> Result<Vec<f32>, Error>,
) -> Result<TextMetrics, Error> {
    let vocab = reference.vocab;
    let scored = reference.text.scored();
    let mut kl = Vec::with_capacity(scored);
    let (mut total, mut agree) = (0.0f64, 0usize);
    score_with(&reference.text, vocab, forward, &mut |index, ours, next| {
        let theirs = &reference.log_probs[index * vocab..(index + 1) * vocab];
        kl.push(kl_of_log_probs(theirs, ours));
        total += nll(ours, next);
        agree += usize::from(argmax(ours) == argmax(theirs));
    })?;
    let perplexity = (total / scored as f64).exp();
    let mean_kl = kl.iter().sum::<f64>() / scored as f64;
    kl.sort_by(f64::total_cmp);
    let p99 = kl[((scored as f64 * 0.99).ceil() as usize).clamp(1, scored) - 1];
    Ok(TextMetrics {
        perplexity,
        perplexity_change: perplexity / reference.perplexity - 1.0,
        mean_kl,
        kl_p99: p99,
        top1_agreement: agree as f64 / scored as f64,
        scored,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(chunks: Vec<Vec<i64>>) -> EvalText {
        let context = chunks[0].len();
        EvalText { path: "t.txt".into(), context, tokens: chunks.len() * context, chunks }
    }

    /// A model that always predicts token 0 with probability p (vocab 2).
    fn constant(p: f32) -> impl FnMut(&Batch) -> Result<Vec<f32>, Error> {
        move |batch: &Batch| {
            let logit = (p / (1.0 - p)).ln();
            Ok(batch.input_ids.iter().flat_map(|r| r.iter().flat_map(|_| [logit, 0.0])).collect())
        }
    }

    #[test]
    fn perplexity_kl_and_top1_follow_their_definitions() {
        // Next tokens 0, 1, 0 in one chunk; the reference gives token 0 p = 0.8.
        let reference = score_reference(text(vec![vec![5, 0, 1, 0]]), 2, &mut constant(0.8)).unwrap();
        let nll = -(0.8f64.ln() + 0.2f64.ln() + 0.8f64.ln()) / 3.0;
        assert!((reference.perplexity - nll.exp()).abs() < 1e-5, "{}", reference.perplexity);
        // Against itself: no divergence, same perplexity.
        let same = score_export(&reference, &mut constant(0.8)).unwrap();
        assert!(same.mean_kl < 1e-7 && same.perplexity_change.abs() < 1e-6 && same.top1_agreement == 1.0);
        // p = 0.6: KL(0.8 || 0.6) at every position; top-1 still agrees.
        let other = score_export(&reference, &mut constant(0.6)).unwrap();
        let kl = 0.8 * (0.8f64 / 0.6).ln() + 0.2 * (0.2f64 / 0.4).ln();
        assert!((other.mean_kl - kl).abs() < 1e-5 && (other.kl_p99 - kl).abs() < 1e-5, "{other:?}");
        assert_eq!(other.top1_agreement, 1.0);
        let nll = -(0.6f64.ln() + 0.4f64.ln() + 0.6f64.ln()) / 3.0;
        assert!((other.perplexity - nll.exp()).abs() < 1e-4);
        // p = 0.3: the most likely token flips everywhere.
        assert_eq!(score_export(&reference, &mut constant(0.3)).unwrap().top1_agreement, 0.0);
    }
}
