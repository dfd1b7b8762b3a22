//! Which ggml type each tensor gets in a file of a given type, following llama.cpp so a file
//! we write is laid out like the one its tools would make (docs/gguf.md lists the rules):
//! - vectors (norms, biases) stay f32 in every file;
//! - f32/f16/bf16 files store every matrix in that type (`convert_hf_to_gguf.py --outtype`);
//! - q8_0 stores every matrix in q8_0 (`--outtype q8_0`);
//! - q4_0, q4_k and q6_k follow `llama-quantize` (Q4_0, Q4_K_M, Q6_K): the output head (the
//!   embedding table when it is tied to the head) becomes q6_k; in q4_k files the v projection
//!   and the down projection of the layers `use_more_bits` picks become q6_k too;
//! - in a model of exactly 8 experts, llama-quantize gives the k and v projections q8_0 and, in
//!   q4_k files, the output projection q5_k (`n_expert == 8` in `llama_tensor_get_type`);
//! - a matrix whose rows are not a whole number of the type's blocks falls back as llama.cpp
//!   does (q4_k -> q5_0, q6_k -> q8_0, then f16).

use candle_core::quantized::GgmlDType;

use crate::config::ExportDtype;
use crate::gguf_constants::{fitting_format, type_name};

/// What a tensor is, as far as the type rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// Norm weights and biases.
    Vector,
    /// The token embedding table; `tied`: it is also the output head.
    Embedding {
        tied: bool,
    },
    Head,
    /// The v projection of a layer.
    AttentionV {
        layer: usize,
    },
    /// The k projection.
    AttentionK,
    /// The attention's output projection.
    AttentionOutput,
    /// The down projection of a layer.
    FfnDown {
        layer: usize,
    },
    /// Any other matrix.
    Matrix,
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) for a file of `dtype` (ONNX-only
/// dtypes are refused for GGUF when the config is resolved; they would read as f16).
pub fn file_type(dtype: ExportDtype) -> u32 {
    dtype.scheme().gguf.map_or(1, |g| g.file_type)
}

/// The file's base type for matrices.
fn base_type(dtype: ExportDtype) -> GgmlDType {
    dtype.scheme().gguf.map_or(GgmlDType::F16, |g| g.base)
}

/// llama-quantize's choice of layers that get more bits: the first and last eighth, and every
/// third layer in between.
fn use_more_bits(layer: usize, layers: usize) -> bool {
    let (layer, layers) = (layer as i64, layers as i64);
    layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2
}

/// The shape of the model that llama-quantize's rules look at.
#[derive(Debug, Clone, Copy)]
pub struct ModelShape {
    pub layers: usize,
    /// Experts per MoE layer (0: dense).
    pub experts: usize,
}

/// The type of a tensor of `kind` with rows of `cols` values in a `dtype` file of a model of
/// `shape`, and the fallback taken when the chosen type's blocks do not fit the rows.
pub fn tensor_type(
    dtype: ExportDtype,
    kind: TensorKind,
    cols: usize,
    shape: ModelShape,
) -> (GgmlDType, Option<(GgmlDType, String)>) {
    let layers = shape.layers;
    let eight_experts = shape.experts == 8;
    let base = base_type(dtype);
    let quantized_by_llama_quantize =
        matches!(dtype, ExportDtype::Q4_0 | ExportDtype::Q4K | ExportDtype::Q6K);
    let wanted = match kind {
        TensorKind::Vector => return (GgmlDType::F32, None),
        TensorKind::Head | TensorKind::Embedding { tied: true } if quantized_by_llama_quantize => {
            if !cols.is_multiple_of(base.block_size()) { GgmlDType::Q8_0 } else { GgmlDType::Q6K }
        }
        TensorKind::AttentionV { .. } | TensorKind::AttentionK
            if quantized_by_llama_quantize && eight_experts =>
        {
            GgmlDType::Q8_0
        }
        TensorKind::AttentionOutput if dtype == ExportDtype::Q4K && eight_experts => GgmlDType::Q5K,
        TensorKind::AttentionV { layer } | TensorKind::FfnDown { layer }
            if dtype == ExportDtype::Q4K && use_more_bits(layer, layers) =>
        {
            GgmlDType::Q6K
        }
        _ => base,
    };
    // llama-quantize's fallbacks (q4_k -> q5_0, q6_k -> q8_0), then f16: the loader's rule.
    match fitting_format(wanted, cols) {
        Some(stored) if stored == wanted => (wanted, None),
        fitting => {
            let reason = format!(
                "rows of {cols} values are not a multiple of {}'s {}-value blocks",
                type_name(wanted),
                wanted.block_size()
            );
            (fitting.unwrap_or(GgmlDType::F16), Some((wanted, reason)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_k_follows_llama_quantize_q4_k_m() {
        let layers = 28; // Qwen3-0.6B
        let chosen = |kind| tensor_type(ExportDtype::Q4K, kind, 1024, ModelShape { layers, experts: 0 }).0;
        assert_eq!(chosen(TensorKind::Vector), GgmlDType::F32);
        assert_eq!(chosen(TensorKind::Embedding { tied: true }), GgmlDType::Q6K);
        assert_eq!(chosen(TensorKind::Embedding { tied: false }), GgmlDType::Q4K);
        assert_eq!(chosen(TensorKind::Head), GgmlDType::Q6K);
        assert_eq!(chosen(TensorKind::Matrix), GgmlDType::Q4K);
        // use_more_bits for 28 layers: 0..3, 24..28, and 5, 8, 11, ... in between.
        let more: Vec<usize> =
            (0..layers).filter(|&l| chosen(TensorKind::AttentionV { layer: l }) == GgmlDType::Q6K).collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
        assert_eq!(chosen(TensorKind::FfnDown { layer: 4 }), GgmlDType::Q4K);
        assert_eq!(file_type(ExportDtype::Q4K), 15);
    }

    #[test]
    fn eight_experts_get_llama_quantize_bumps() {
        let shape = ModelShape { layers: 48, experts: 8 };
        let chosen = |dtype, kind| tensor_type(dtype, kind, 2048, shape).0;
        assert_eq!(chosen(ExportDtype::Q4K, TensorKind::AttentionK), GgmlDType::Q8_0);
        assert_eq!(chosen(ExportDtype::Q4_0, TensorKind::AttentionV { layer: 9 }), GgmlDType::Q8_0);
        assert_eq!(chosen(ExportDtype::Q4K, TensorKind::AttentionOutput), GgmlDType::Q5K);
        assert_eq!(chosen(ExportDtype::Q6K, TensorKind::AttentionOutput), GgmlDType::Q6K);
        let dense = ModelShape { layers: 48, experts: 0 };
        assert_eq!(tensor_type(ExportDtype::Q4K, TensorKind::AttentionK, 2048, dense).0, GgmlDType::Q4K);
        // Qwen3-30B-A3B has 128 experts: no bump.
        let many = ModelShape { layers: 48, experts: 128 };
        assert_eq!(tensor_type(ExportDtype::Q4K, TensorKind::AttentionK, 2048, many).0, GgmlDType::Q4K);
    }

    #[test]
    fn rows_that_do_not_fit_the_blocks_fall_back_like_llama_cpp() {
        let shape = |layers| ModelShape { layers, experts: 0 };
        // The fixtures' 64-wide rows: no 256-value k-quant block fits.
        let (stored, fallback) = tensor_type(ExportDtype::Q4K, TensorKind::Matrix, 64, shape(2));
        assert_eq!(stored, GgmlDType::Q5_0);
        assert_eq!(fallback.unwrap().0, GgmlDType::Q4K);
        assert_eq!(tensor_type(ExportDtype::Q6K, TensorKind::Matrix, 64, shape(2)).0, GgmlDType::Q8_0);
        assert_eq!(tensor_type(ExportDtype::Q4_0, TensorKind::Head, 64, shape(2)).0, GgmlDType::Q8_0);
        assert_eq!(tensor_type(ExportDtype::Q8_0, TensorKind::Matrix, 48, shape(2)).0, GgmlDType::F16);
        assert_eq!(
            tensor_type(ExportDtype::F16, TensorKind::Embedding { tied: true }, 64, shape(2)),
            (GgmlDType::F16, None)
        );
    }
}
