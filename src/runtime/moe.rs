//! The mixture-of-experts MLP of Qwen3-MoE, as transformers' `Qwen3MoeSparseMoeBlock` computes
//! it: softmax of the router's logits in f32, the top-k experts of each token (largest first,
//! the lower index on ties, as `torch.topk`), their probabilities renormalised to sum to 1 when
//! `norm_topk_prob`, and each expert run on the tokens routed to it, its output weighted and
//! added back in expert order (`index_add_`).

use candle_core::Tensor;

use super::linear::{Linear, SwiGlu};
use crate::error::RuntimeError;

type Result<T> = std::result::Result<T, RuntimeError>;

pub(super) struct Moe {
    pub router: Linear,
    pub experts: Vec<SwiGlu>,
    pub top_k: usize,
    pub norm_topk_prob: bool,
}

/// The top-k experts of one token's router probabilities with their weights.
pub fn route(probs: &[f32], top_k: usize, norm_topk_prob: bool) -> Vec<(usize, f32)> {
    let mut order: Vec<usize> = (0..probs.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    order.truncate(top_k);
    let sum: f32 = order.iter().map(|&e| probs[e]).sum();
    order.into_iter().map(|e| (e, if norm_topk_prob { probs[e] / sum } else { probs[e] })).collect()
}

impl Moe {
    /// `x`: [tokens, hidden] in f32.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let logits = self.router.forward(x)?;
        let probs: Vec<Vec<f32>> = candle_nn::ops::softmax_last_dim(&logits)?.to_vec2()?;
        let mut routed: Vec<(Vec<u32>, Vec<f32>)> = vec![(Vec::new(), Vec::new()); self.experts.len()];
        for (token, row) in probs.iter().enumerate() {
            for (expert, weight) in route(row, self.top_k, self.norm_topk_prob) {
                routed[expert].0.push(token as u32);
                routed[expert].1.push(weight);
            }
        }
        let mut out = x.zeros_like()?;
        for (expert, (tokens, weights)) in self.experts.iter().zip(routed) {
            if tokens.is_empty() {
                continue;
            }
            let n = tokens.len();
            let index = Tensor::from_vec(tokens, n, x.device())?;
            let y = expert.forward(&x.index_select(&index, 0)?)?;
            let weighted = y.broadcast_mul(&Tensor::from_vec(weights, (n, 1), x.device())?)?;
            out = out.index_add(&index, &weighted, 0)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::route;

    #[test]
    fn routing_takes_the_largest_and_renormalises_like_transformers() {
        let probs = [0.1, 0.4, 0.2, 0.3];
        assert_eq!(route(&probs, 2, false), [(1, 0.4), (3, 0.3)]);
        let renormalised = route(&probs, 2, true);
        assert_eq!(renormalised.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 3]);
        assert!((renormalised[0].1 - 0.4 / 0.7).abs() < 1e-7 && (renormalised[1].1 - 0.3 / 0.7).abs() < 1e-7);
        // torch.topk keeps the lower index first on a tie.
        assert_eq!(route(&[0.25, 0.25, 0.5], 2, false), [(2, 0.5), (0, 0.25)]);
    }
}
