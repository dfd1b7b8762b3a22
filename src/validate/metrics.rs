//! How close an engine's logits and tokens are to the reference's, over the positions that are
//! real tokens (padding is excluded, as transformers defines it).

use serde::{Deserialize, Serialize};

use crate::runtime::Batch;
use crate::runtime::sampler::argmax;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogitMetrics {
    pub max_abs_error: f64,
    /// Root mean square of the reference logits over the valid positions: their scale.
    #[serde(default)]
    pub reference_rms: f64,
    /// `max_abs_error / max(1, reference_rms)`.
    #[serde(default)]
    pub relative_error: f64,
    pub mean_abs_error: f64,
    /// Mean over valid positions of the cosine similarity of the two logit vectors.
    pub cosine: f64,
    /// Top-1 agreement at positions whose reference top-1/top-2 margin exceeds `margin`.
    pub top1_agreement: f64,
    /// Top-1 agreement over every valid position.
    pub top1_agreement_raw: f64,
    pub positions: usize,
    pub positions_with_margin: usize,
    /// Mean over valid positions of KL(reference || ours) of the token distributions, in nats.
    #[serde(default)]
    pub mean_kl: f64,
}

/// `log Σ exp(row)`, summed in f64 around the row's largest value.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    f64::from(max) + row.iter().map(|&v| f64::from(v - max).exp()).sum::<f64>().ln()
}

/// KL(p || q) in nats of the distributions whose log-probabilities are `p - lp` and `q - lq`.
fn kl_shifted(p: &[f32], lp: f64, q: &[f32], lq: f64) -> f64 {
    let kl: f64 = p
        .iter()
        .zip(q)
        .map(|(&p, &q)| {
            let log_p = f64::from(p) - lp;
            log_p.exp() * (log_p - (f64::from(q) - lq))
        })
        .sum();
    kl.max(0.0)
}

/// KL(p || q) of the softmax distributions of two rows of logits, in nats.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    kl_shifted(p_logits, log_sum_exp(p_logits), q_logits, log_sum_exp(q_logits))
}

/// KL(p || q) of two rows of log-probabilities, in nats.
pub fn kl_of_log_probs(p: &[f32], q: &[f32]) -> f64 {
    kl_shifted(p, 0.0, q, 0.0)
}

fn top2_margin(values: &[f32]) -> f32 {
    let (mut first, mut second) = (f32::MIN, f32::MIN);
    for &v in values {
        if v > first {
            second = first;
            first = v;
        } else if v > second {
            second = v;
        }
    }
    first - second
}

/// Compares `ours` with `reference` ([batch, seq, vocab]) where `batch.attention_mask` is 1.
pub fn compare_logits(
    ours: &[f32],
    reference: &[f32],
    batch: &Batch,
    vocab: usize,
    margin: f32,
) -> LogitMetrics {
    let (mut max_abs, mut sum_abs, mut count, mut sum_sq) = (0.0f64, 0.0f64, 0usize, 0.0f64);
    let (mut cos_sum, mut positions, mut agree, mut agree_raw, mut with_margin) =
        (0.0, 0usize, 0usize, 0usize, 0usize);
    let mut kl_sum = 0.0f64;
    for (b, row) in batch.attention_mask.iter().enumerate() {
        for (i, &m) in row.iter().enumerate() {
            if m == 0 {
                continue;
            }
            let at = (b * row.len() + i) * vocab;
            let (x, y) = (&ours[at..at + vocab], &reference[at..at + vocab]);
            let (mut dot, mut nx, mut ny) = (0.0f64, 0.0f64, 0.0f64);
            for (&a, &r) in x.iter().zip(y) {
                let diff = f64::from((a - r).abs());
                max_abs = max_abs.max(diff);
                sum_abs += diff;
                dot += f64::from(a) * f64::from(r);
                nx += f64::from(a) * f64::from(a);
                ny += f64::from(r) * f64::from(r);
            }
            count += vocab;
            sum_sq += ny;
            cos_sum += dot / (nx.sqrt() * ny.sqrt()).max(f64::MIN_POSITIVE);
            kl_sum += kl_divergence(y, x);
            positions += 1;
            let same = argmax(x) == argmax(y);
            agree_raw += usize::from(same);
            if top2_margin(y) > margin {
                with_margin += 1;
                agree += usize::from(same);
            }
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let reference_rms = if count == 0 { 0.0 } else { (sum_sq / count as f64).sqrt() };
    LogitMetrics {
        max_abs_error: max_abs,
        reference_rms,
        relative_error: max_abs / reference_rms.max(1.0),
        mean_abs_error: if count == 0 { 0.0 } else { sum_abs / count as f64 },
        cosine: if positions == 0 { 1.0 } else { cos_sum / positions as f64 },
        top1_agreement: ratio(agree, with_margin),
        top1_agreement_raw: ratio(agree_raw, positions),
        positions,
        positions_with_margin: with_margin,
        mean_kl: if positions == 0 { 0.0 } else { kl_sum / positions as f64 },
    }
}

/// The first (row, generated-token index) where two greedy outputs differ.
pub fn first_divergence(
    ours: &[Vec<i64>],
    reference: &[Vec<i64>],
    prompt_len: usize,
) -> Option<(usize, usize)> {
    ours.iter().zip(reference).enumerate().find_map(|(row, (a, b))| {
        let len = a.len().max(b.len());
        (prompt_len..len).find(|&i| a.get(i) != b.get(i)).map(|i| (row, i - prompt_len))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_skip_padding_and_count_top1() {
        let batch = Batch::left_padded(&[vec![1, 2], vec![3]], 0);
        // vocab 2; row 1 position 0 is padding and differs wildly: ignored.
        let reference = vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0];
        let ours = vec![0.9, 0.0, 0.0, 1.0, 100.0, -100.0, 0.0, 1.0];
        let m = compare_logits(&ours, &reference, &batch, 2, 0.5);
        assert_eq!(m.positions, 3);
        assert!((m.max_abs_error - 1.0).abs() < 1e-9);
        assert!((m.top1_agreement - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(first_divergence(&[vec![1, 5, 6]], &[vec![1, 5, 7]], 1), Some((0, 1)));
        assert_eq!(first_divergence(&[vec![1, 5]], &[vec![1, 5]], 1), None);
    }
}
