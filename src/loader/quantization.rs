//! What each load-time quantization mode stores for each kind of tensor, and what a tensor
//! whose rows do not fit a format's blocks gets instead (llama.cpp's rule: k-quants need rows
//! that are a multiple of 256; `q4_k` then falls back to `q5_0`, a 32-block format; a row that
//! fits no block format stays f16).

use std::fmt;
use std::str::FromStr;

use candle_core::quantized::GgmlDType;
use serde::Serialize;

use crate::gguf_constants::{block_bytes, fitting_format, type_name};
use crate::quant::ggml::candle_multiplies;

/// `quantization = none | q8_0 | q4_0 | q4_k`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// Weights as `dtype` says (f32 by default).
    #[default]
    None,
    /// 8-bit blocks of 32 (34 bytes per 32 weights).
    Q8_0,
    /// 4-bit blocks of 32 with one f16 scale (18 bytes per 32 weights).
    Q4_0,
    /// 4-bit k-quant super-blocks of 256 (144 bytes per 256 weights).
    Q4K,
}

impl Quantization {
    pub const ALL: [Quantization; 4] =
        [Quantization::None, Quantization::Q8_0, Quantization::Q4_0, Quantization::Q4K];

    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::None => "none",
            Quantization::Q8_0 => "q8_0",
            Quantization::Q4_0 => "q4_0",
            Quantization::Q4K => "q4_k",
        }
    }

    /// The block format of the linear layers' weights, before any fallback.
    pub fn format(self) -> Option<GgmlDType> {
        match self {
            Quantization::None => None,
            Quantization::Q8_0 => Some(GgmlDType::Q8_0),
            Quantization::Q4_0 => Some(GgmlDType::Q4_0),
            Quantization::Q4K => Some(GgmlDType::Q4K),
        }
    }

    /// The format of the output head: like llama.cpp, a 4-bit file keeps its head at 6 bits
    /// (q6_k), an 8-bit one at 8.
    pub fn head_format(self) -> Option<GgmlDType> {
        match self {
            Quantization::None => None,
            Quantization::Q8_0 => Some(GgmlDType::Q8_0),
            Quantization::Q4_0 | Quantization::Q4K => Some(GgmlDType::Q6K),
        }
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Quantization {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantization::ALL
            .into_iter()
            .find(|q| q.as_str() == s)
            .ok_or_else(|| format!("unknown quantization `{s}`: use none, q8_0, q4_0 or q4_k"))
    }
}

/// How one tensor is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Dense, in f32 (norms, biases) or in the load dtype.
    Dense(candle_core::DType),
    Blocks(GgmlDType),
}

impl Placement {
    /// Resident bytes for `elements` values.
    pub fn bytes(self, elements: usize) -> u64 {
        match self {
            Placement::Dense(dtype) => (elements * dtype.size_in_bytes()) as u64,
            Placement::Blocks(format) => block_bytes(format, elements),
        }
    }

    pub fn label(self) -> String {
        match self {
            Placement::Dense(dtype) => dtype.as_str().to_string(),
            Placement::Blocks(format) => type_name(format).to_string(),
        }
    }
}

/// What kind of tensor a weight is, for the placement rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A linear layer's matrix inside a decoder layer.
    Linear,
    /// The token embedding table (looked up by row).
    Embedding,
    /// The embedding table on the CPU, where our kernels dequantize the looked-up rows from
    /// blocks and a tied head multiplies the same blocks: placed like the head.
    LookupBlocks,
    /// The output head (its own matrix, or a copy of the tied embeddings when quantized).
    Head,
    /// Norm weights and biases.
    Vector,
}

/// A tensor that did not get its mode's format, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FormatFallback {
    pub tensor: String,
    pub wanted: String,
    pub used: String,
    pub reason: String,
}

/// Where a tensor goes under `quantization` with dense weights in `dtype`:
/// - norms and biases: f32 always;
/// - the embedding table: `dtype` without quantization; with it, on the CPU, the head's format
///   (our kernels dequantize the looked-up rows and a tied head multiplies the same blocks),
///   elsewhere f16 (candle would dequantize a whole block table at every step);
/// - linear matrices: the mode's format; the head: [`Quantization::head_format`];
///   either falls back (see [`fitting_format`]) when its rows do not fit the blocks.
pub fn placement(
    quantization: Quantization,
    dtype: candle_core::DType,
    role: Role,
    name: &str,
    shape: &[usize],
) -> (Placement, Option<FormatFallback>) {
    use candle_core::DType;
    let wanted = match role {
        Role::Vector => return (Placement::Dense(DType::F32), None),
        Role::Embedding if quantization == Quantization::None => return (Placement::Dense(dtype), None),
        Role::Embedding => return (Placement::Dense(DType::F16), None),
        Role::LookupBlocks if quantization == Quantization::None => return (Placement::Dense(dtype), None),
        Role::LookupBlocks => quantization.head_format(),
        Role::Linear => quantization.format(),
        Role::Head => quantization.head_format(),
    };
    let Some(wanted) = wanted else { return (Placement::Dense(dtype), None) };
    let width = shape.last().copied().unwrap_or(0);
    match fitting_format(wanted, width) {
        Some(format) if format == wanted && candle_multiplies(format, width) => {
            (Placement::Blocks(format), None)
        }
        Some(format) if !candle_multiplies(format, width) => {
            let fallback = FormatFallback {
                tensor: name.to_string(),
                wanted: type_name(wanted).into(),
                used: Placement::Dense(DType::F16).label(),
                reason: format!(
                    "rows of {width} values are an odd number of {}'s blocks, which candle's kernel does not multiply",
                    type_name(format)
                ),
            };
            (Placement::Dense(DType::F16), Some(fallback))
        }
        used => {
            let placed = used.map_or(Placement::Dense(DType::F16), Placement::Blocks);
            let fallback = FormatFallback {
                tensor: name.to_string(),
                wanted: type_name(wanted).into(),
                used: placed.label(),
                reason: format!(
                    "rows of {width} values are not a multiple of {}'s block of {}",
                    type_name(wanted),
                    wanted.block_size()
                ),
            };
            (placed, Some(fallback))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn placements_follow_the_documented_rules() {
        let q = Quantization::Q4K;
        assert_eq!(placement(q, DType::F32, Role::Vector, "n", &[64]).0, Placement::Dense(DType::F32));
        assert_eq!(
            placement(q, DType::F32, Role::Embedding, "e", &[384, 64]).0,
            Placement::Dense(DType::F16)
        );
        assert_eq!(
            placement(q, DType::F32, Role::Linear, "w", &[64, 256]).0,
            Placement::Blocks(GgmlDType::Q4K)
        );
        let (placed, fallback) = placement(q, DType::F32, Role::Linear, "w", &[128, 64]);
        assert_eq!(placed, Placement::Blocks(GgmlDType::Q5_0));
        let fallback = fallback.unwrap();
        assert_eq!((fallback.wanted.as_str(), fallback.used.as_str()), ("q4_k", "q5_0"));
        assert_eq!(fallback.reason, "rows of 64 values are not a multiple of q4_k's block of 256");
        let (placed, fallback) = placement(Quantization::Q8_0, DType::F32, Role::Linear, "w", &[8, 40]);
        assert_eq!((placed, fallback.unwrap().used.as_str()), (Placement::Dense(DType::F16), "f16"));
        assert_eq!(
            placement(Quantization::None, DType::BF16, Role::Linear, "w", &[8, 40]).0,
            Placement::Dense(DType::BF16)
        );
    }

    #[test]
    fn block_bytes_match_ggml() {
        // q8_0: 34 bytes per 32; q4_0: 18 per 32; q4_k: 144 per 256; q6_k: 210 per 256.
        assert_eq!(Placement::Blocks(GgmlDType::Q8_0).bytes(64), 68);
        assert_eq!(Placement::Blocks(GgmlDType::Q4_0).bytes(64), 36);
        assert_eq!(Placement::Blocks(GgmlDType::Q4K).bytes(512), 288);
        assert_eq!(Placement::Blocks(GgmlDType::Q6K).bytes(256), 210);
        assert_eq!(Placement::Dense(DType::BF16).bytes(10), 20);
    }
}
