//! Rotary position embeddings as transformers computes them (`modeling_rope_utils.py`): the
//! inverse frequencies of the default, `linear` and `yarn` types, and the attention factor that
//! multiplies cos and sin. Every engine and writer takes its tables from here.

use serde::Serialize;

/// `rope_scaling` (or `rope_parameters`) of config.json, after the feature check.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// No scaling (`rope_type = "default"`, or no `rope_scaling`).
    Default,
    /// Positions divided by `factor` (inverse frequencies divided by it).
    Linear { factor: f64 },
    /// YaRN: interpolation blended with extrapolation by a linear ramp over the dimensions.
    Yarn {
        /// As given in config.json.
        factor: f64,
        original_max_position_embeddings: Option<usize>,
        attention_factor: Option<f64>,
        beta_fast: Option<f64>,
        beta_slow: Option<f64>,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        truncate: Option<bool>,
    },
}

/// What a model needs to compute its RoPE tables.
#[derive(Debug, Clone, Copy)]
pub struct RopeSpec<'a> {
    pub theta: f64,
    /// Rotated dimensions: the head dimension (partial rotary is refused).
    pub dim: usize,
    pub max_position_embeddings: usize,
    pub scaling: &'a RopeScaling,
}

impl RopeScaling {
    /// YaRN's factor as transformers uses it: with `original_max_position_embeddings` it is
    /// `max_position_embeddings / original`, whatever `factor` says.
    pub fn yarn_effective_factor(&self, max_position_embeddings: usize) -> Option<f64> {
        match self {
            RopeScaling::Yarn { factor, original_max_position_embeddings, .. } => {
                Some(match original_max_position_embeddings {
                    Some(original) => max_position_embeddings as f64 / *original as f64,
                    None => *factor,
                })
            }
            _ => None,
        }
    }
}

fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 { 1.0 } else { 0.1 * mscale * scale.ln() + 1.0 }
}

impl RopeSpec<'_> {
    /// The default inverse frequencies `1 / theta^(2i/d)`, in f32 as torch computes them.
    fn default_inv_freq(&self) -> Vec<f32> {
        let d = self.dim;
        (0..d / 2).map(|i| 1.0 / (self.theta as f32).powf((2 * i) as f32 / d as f32)).collect()
    }

    /// Inverse frequencies ([dim / 2]) and the factor cos and sin are multiplied by.
    pub fn inv_freq_and_attention_factor(&self) -> (Vec<f32>, f32) {
        match self.scaling {
            RopeScaling::Default => (self.default_inv_freq(), 1.0),
            RopeScaling::Linear { factor } => {
                let factor = *factor as f32;
                (self.default_inv_freq().into_iter().map(|f| f / factor).collect(), 1.0)
            }
            RopeScaling::Yarn {
                original_max_position_embeddings,
                attention_factor,
                beta_fast,
                beta_slow,
                mscale,
                mscale_all_dim,
                truncate,
                ..
            } => {
                let factor = self.scaling.yarn_effective_factor(self.max_position_embeddings).unwrap_or(1.0);
                let original =
                    original_max_position_embeddings.unwrap_or(self.max_position_embeddings) as f64;
                let attention = match (attention_factor, mscale, mscale_all_dim) {
                    (Some(a), _, _) => *a,
                    // transformers tests both for truthiness: 0 counts as absent.
                    (None, Some(m), Some(all)) if *m != 0.0 && *all != 0.0 => {
                        yarn_mscale(factor, *m) / yarn_mscale(factor, *all)
                    }
                    _ => yarn_mscale(factor, 1.0),
                };
                // `or 32` / `or 1` in transformers: a zero is replaced too.
                let fast = beta_fast.filter(|b| *b != 0.0).unwrap_or(32.0);
                let slow = beta_slow.filter(|b| *b != 0.0).unwrap_or(1.0);
                let (d, base) = (self.dim as f64, self.theta);
                let correction_dim = |rotations: f64| {
                    (d * (original / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(fast), correction_dim(slow));
                if truncate.unwrap_or(true) {
                    (low, high) = (low.floor(), high.ceil());
                }
                let (low, mut high) = (low.max(0.0), high.min(d - 1.0));
                if low == high {
                    high += 0.001;
                }
                let (low32, span32) = (low as f32, (high - low) as f32);
                let factor32 = factor as f32;
                let inv_freq = (0..self.dim / 2)
                    .map(|i| {
                        let pos_freq = (base as f32).powf((2 * i) as f32 / self.dim as f32);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (factor32 * pos_freq);
                        let ramp = ((i as f32 - low32) / span32).clamp(0.0, 1.0);
                        let extrapolation_weight = 1.0 - ramp;
                        interpolation * (1.0 - extrapolation_weight) + extrapolation * extrapolation_weight
                    })
                    .collect();
                (inv_freq, attention as f32)
            }
        }
    }

    /// (cos, sin), each [positions, dim] row-major for positions 0..positions, as transformers'
    /// rotary embedding: `emb = cat(freqs, freqs)`, `cos(emb) * attention_factor`.
    pub fn tables(&self, positions: usize) -> (Vec<f32>, Vec<f32>) {
        let (inv_freq, attention) = self.inv_freq_and_attention_factor();
        let mut cos = Vec::with_capacity(positions * self.dim);
        let mut sin = Vec::with_capacity(positions * self.dim);
        for p in 0..positions {
            let start = cos.len();
            push_position(p as f32, &inv_freq, attention, &mut cos, &mut sin);
            cos.extend_from_within(start..);
            sin.extend_from_within(start..);
        }
        (cos, sin)
    }
}

/// Appends one position's cos and sin rows ([inv_freq.len()] each), as transformers' rotary
/// embedding computes them, `cos(freqs) * attention_factor`: its `emb = cat(freqs, freqs)`
/// repeats them for the second half of the head, which a rotation reads from the same entries.
pub fn push_position(
    position: f32,
    inv_freq: &[f32],
    attention: f32,
    cos: &mut Vec<f32>,
    sin: &mut Vec<f32>,
) {
    for f in inv_freq {
        let angle = position * f;
        cos.push(angle.cos() * attention);
        sin.push(angle.sin() * attention);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yarn(original: Option<usize>) -> RopeScaling {
        RopeScaling::Yarn {
            factor: 4.0,
            original_max_position_embeddings: original,
            attention_factor: None,
            beta_fast: None,
            beta_slow: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: None,
        }
    }

    #[test]
    fn yarn_blends_extrapolation_and_interpolation_and_scales_by_the_attention_factor() {
        // qwen3-yarn's config: head_dim 16, theta 1e6, factor 4 over 32 original positions.
        let scaling = yarn(Some(32));
        let spec = RopeSpec { theta: 1e6, dim: 16, max_position_embeddings: 128, scaling: &scaling };
        let (inv, attention) = spec.inv_freq_and_attention_factor();
        assert!((f64::from(attention) - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-7);
        // The ramp runs over [0, 1]: dimension 0 extrapolates, the rest interpolate.
        assert_eq!(inv[0], 1.0);
        let default = RopeSpec { scaling: &RopeScaling::Default, ..spec }.inv_freq_and_attention_factor().0;
        for i in 1..8 {
            assert!((inv[i] - default[i] / 4.0).abs() <= default[i] * 1e-6, "{i}");
        }
    }

    #[test]
    fn linear_divides_the_frequencies_and_keeps_the_amplitude() {
        let scaling = RopeScaling::Linear { factor: 2.0 };
        let spec = RopeSpec { theta: 1e4, dim: 8, max_position_embeddings: 16, scaling: &scaling };
        let (cos, _) = spec.tables(3);
        let (inv, attention) = spec.inv_freq_and_attention_factor();
        assert_eq!(attention, 1.0);
        assert_eq!(inv[0], 0.5);
        assert_eq!(cos[8], 0.5f32.cos());
    }
}
