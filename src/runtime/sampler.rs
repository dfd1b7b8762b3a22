//! Choosing the next token from logits, as transformers' `generate` does: the repetition
//! penalty first, then (when sampling) temperature, top-k, top-p and min-p, then a draw from
//! the softmax with a seeded ChaCha generator; greedy takes the argmax. Every engine's
//! generation goes through this one sampler.

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::Serialize;

/// Sampling settings after defaults were applied (see `GenerateOptions`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplingParams {
    /// `false`: greedy (argmax), the other fields but `repetition_penalty` are ignored.
    pub do_sample: bool,
    pub temperature: f32,
    /// 0: off.
    pub top_k: usize,
    /// 1.0: off.
    pub top_p: f32,
    /// 0.0: off.
    pub min_p: f32,
    /// 1.0: off.
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// One sampler per row of a batch, each with its own random stream, so a prompt's tokens do not
/// depend on what else is in the batch.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: &SamplingParams, row: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        rng.set_stream(row as u64);
        Self { params: params.clone(), rng }
    }

    /// The next token after `context` (the row's tokens so far, prompt included).
    pub fn next(&mut self, logits: &[f32], context: &[i64]) -> i64 {
        let mut scores = logits.to_vec();
        penalize_repetitions(&mut scores, context, self.params.repetition_penalty);
        if !self.params.do_sample || self.params.temperature <= 0.0 {
            return argmax(&scores) as i64;
        }
        let p = &self.params;
        scores.iter_mut().for_each(|s| *s /= p.temperature);
        let probs = filtered_probabilities(&scores, p.top_k, p.top_p, p.min_p);
        // A uniform draw in [0, 1) with 53 random bits.
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let mut acc = 0.0;
        let mut last = 0;
        for (i, &q) in probs.iter().enumerate() {
            if q > 0.0 {
                acc += q;
                last = i;
                if u < acc {
                    return i as i64;
                }
            }
        }
        last as i64
    }
}

/// transformers' RepetitionPenaltyLogitsProcessor: every token already present has its score
/// divided by the penalty when positive, multiplied when negative.
fn penalize_repetitions(scores: &mut [f32], context: &[i64], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; scores.len()];
    for &t in context {
        if let Some(s) = usize::try_from(t).ok().filter(|&t| t < scores.len())
            && !seen[s]
        {
            seen[s] = true;
            scores[s] = if scores[s] < 0.0 { scores[s] * penalty } else { scores[s] / penalty };
        }
    }
}

/// Softmax of `scores` with top-k, top-p and min-p applied in transformers' order; removed
/// tokens get probability 0, the rest are renormalised (in f64).
fn filtered_probabilities(scores: &[f32], top_k: usize, top_p: f32, min_p: f32) -> Vec<f64> {
    let mut keep = vec![true; scores.len()];
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // Descending by score; ties keep the lower id first, as a stable sort does.
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    if top_k > 0 && top_k < order.len() {
        order[top_k..].iter().for_each(|&i| keep[i] = false);
    }
    let softmax = |keep: &[bool]| -> Vec<f64> {
        let max =
            scores.iter().zip(keep).filter(|(_, k)| **k).map(|(s, _)| *s as f64).fold(f64::MIN, f64::max);
        let exp: Vec<f64> =
            scores.iter().zip(keep).map(|(s, k)| if *k { (*s as f64 - max).exp() } else { 0.0 }).collect();
        let sum: f64 = exp.iter().sum();
        exp.into_iter().map(|e| e / sum).collect()
    };
    if top_p < 1.0 {
        // Keep the smallest set of most likely tokens whose mass reaches top_p (at least one).
        let probs = softmax(&keep);
        let mut mass = 0.0;
        let ranked: Vec<usize> = order.iter().copied().filter(|&i| keep[i]).collect();
        for (rank, i) in ranked.into_iter().enumerate() {
            if rank > 0 && mass >= top_p as f64 {
                keep[i] = false;
            }
            mass += probs[i];
        }
    }
    if min_p > 0.0 {
        let probs = softmax(&keep);
        let top = probs.iter().copied().fold(0.0, f64::max);
        for (i, p) in probs.iter().enumerate() {
            if *p < min_p as f64 * top {
                keep[i] = false;
            }
        }
    }
    softmax(&keep)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative_scores() {
        let mut scores = vec![2.0, -2.0, 1.0];
        penalize_repetitions(&mut scores, &[0, 1, 1], 2.0);
        assert_eq!(scores, [1.0, -4.0, 1.0]);
    }

    #[test]
    fn filters_keep_what_transformers_keeps() {
        // softmax of ln([0.5, 0.3, 0.15, 0.05]) is those probabilities.
        let scores: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let kept = |p: Vec<f64>| p.iter().map(|q| *q > 0.0).collect::<Vec<_>>();
        assert_eq!(kept(filtered_probabilities(&scores, 2, 1.0, 0.0)), [true, true, false, false]);
        // top-p 0.79: 0.5 + 0.3 reaches it, so the rest go.
        assert_eq!(kept(filtered_probabilities(&scores, 0, 0.79, 0.0)), [true, true, false, false]);
        assert_eq!(kept(filtered_probabilities(&scores, 0, 0.81, 0.0)), [true, true, true, false]);
        // min-p 0.2: below 0.2 * 0.5 = 0.1 goes.
        assert_eq!(kept(filtered_probabilities(&scores, 0, 1.0, 0.2)), [true, true, true, false]);
        let p = filtered_probabilities(&scores, 2, 1.0, 0.0);
        assert!((p[0] - 0.625).abs() < 1e-7 && (p[1] - 0.375).abs() < 1e-7, "{p:?}");
    }

    #[test]
    fn the_same_seed_draws_the_same_tokens_and_greedy_ignores_it() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37 % 11) as f32) * 0.3).collect();
        let params = SamplingParams { do_sample: true, seed: 7, ..Default::default() };
        let draw = |params: &SamplingParams, row| {
            let mut s = Sampler::new(params, row);
            (0..20).map(|_| s.next(&logits, &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(&params, 0), draw(&params, 0));
        assert_ne!(draw(&params, 0), draw(&SamplingParams { seed: 8, ..params.clone() }, 0));
        assert_ne!(draw(&params, 0), draw(&params, 1), "rows draw from their own streams");
        let greedy = SamplingParams { do_sample: false, ..params };
        assert!(draw(&greedy, 0).iter().all(|&t| t == argmax(&logits) as i64));
    }
}
