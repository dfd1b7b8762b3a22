//! Static RoPE tables: cos and sin for every position up to `max_position_embeddings`, computed
//! as transformers does (inverse frequencies and angles in f32, `emb = cat(freqs, freqs)`).

use crate::model::HfConfig;

/// (cos, sin), each [max_position_embeddings, head_dim] row-major.
pub fn rope_tables(config: &HfConfig) -> (Vec<f32>, Vec<f32>) {
    let d = config.head_dim;
    let inv_freq: Vec<f32> =
        (0..d / 2).map(|i| 1.0 / (config.rope_theta as f32).powf((2 * i) as f32 / d as f32)).collect();
    let positions = config.max_position_embeddings;
    let mut cos = Vec::with_capacity(positions * d);
    let mut sin = Vec::with_capacity(positions * d);
    for p in 0..positions {
        for _ in 0..2 {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
    }
    (cos, sin)
}
