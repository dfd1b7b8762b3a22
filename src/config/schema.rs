//! The values a `[package.metadata.model-export]` table may hold: enums with their accepted
//! spellings, export entries and their options.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::size::ByteSize;

/// Declares a closed set of lowercase names, usable from TOML, env vars and flags alike.
macro_rules! name_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn accepted() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("`{s}` is not one of {}", Self::accepted()))
            }
        }
    };
}

name_enum!(
    /// What an export writes.
    Format { Safetensors => "safetensors", Onnx => "onnx", Gguf => "gguf" }
);

name_enum!(
    /// The element type of an export's weights.
    /// (`int8`/`int4`: ONNX; `q8_0`, `q4_0`, `q4_k`, `q6_k`: llama.cpp's GGUF block formats.)
    ExportDtype {
        F32 => "f32", F16 => "f16", Bf16 => "bf16", Int8 => "int8", Int4 => "int4",
        Q8_0 => "q8_0", Q4_0 => "q4_0", Q4K => "q4_k", Q6K => "q6_k"
    }
);

name_enum!(
    /// The ONNX flavour: standard ops everywhere, or ONNX Runtime's fused operators.
    Target { Portable => "portable", Ort => "ort" }
);

name_enum!(
    /// An inference engine the validator can run.
    Engine { Candle => "candle", Ort => "ort", Tract => "tract" }
);

name_enum!(
    /// How a quantized export stores the embedding table and the output head.
    EmbeddingsMode { Auto => "auto", F16 => "f16", Quantized => "quantized", Int8 => "int8" }
);

/// Models from this size on get a quantized head in the `portable` target by default
/// (`embeddings = "auto"`); smaller ones keep it in f16: the head is a large share of a small
/// model and its error reaches the logits directly.
pub const QUANTIZED_HEAD_FROM: u64 = 1_000_000_000;

/// MatMulNBits' `accuracy_level` of an `ort`-target export that sets none: int8 activations.
/// Measured on the trained fixture (qwen3-code, held-out Rust text, ONNX Runtime): mean KL to
/// the reference 5.43e-3 at level 0 and 5.50e-3 at 4 (int4 table), 1.31e-3 and 1.32e-3 (f16
/// table), for half the decode time on the Qwen3-0.6B shape (docs/quantization.md).
pub const DEFAULT_ACCURACY_LEVEL: u8 = 4;

/// Models from this size on keep their embedding table in the export's blocks in the `ort`
/// target by default: every released Qwen model (0.5B up), where the head is read for every
/// token. Below it (test-sized models) the head costs no time worth saving, and on random
/// weights a 4-bit head alone takes the logits' cosine below the int4 bar (qwen3-tiny: 0.986).
pub const QUANTIZED_TABLE_FROM: u64 = 100_000_000;

/// Where a quantized ONNX export keeps its embedding table and output head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableStorage {
    /// Both in f16 (a tied head multiplies the table itself).
    F16,
    /// The head quantized like the projections (a quantized copy when tied); the table f16.
    QuantizedHead,
    /// The table itself in `bits`-bit blocks, looked up by `GatherBlockQuantized`; a tied head
    /// multiplies the same bytes with `MatMulNBits`, an untied one is quantized alike.
    Blocks { bits: u8 },
}

impl EmbeddingsMode {
    /// The storage this mode means for an export of `parameters` weights whose matrices are
    /// quantized to `bits` bits for `target`. Only ONNX Runtime gathers block-quantized rows,
    /// so the `portable` target keeps the table in f16 (`int8` is refused there when the
    /// configuration is read).
    pub fn storage(self, target: Target, bits: u8, parameters: u64) -> TableStorage {
        match (self, target) {
            (EmbeddingsMode::F16, _) => TableStorage::F16,
            (EmbeddingsMode::Quantized, Target::Ort) => TableStorage::Blocks { bits },
            (EmbeddingsMode::Auto, Target::Ort) if parameters >= QUANTIZED_TABLE_FROM => {
                TableStorage::Blocks { bits }
            }
            (EmbeddingsMode::Auto, Target::Ort) => TableStorage::F16,
            (EmbeddingsMode::Int8, _) => TableStorage::Blocks { bits: 8 },
            (EmbeddingsMode::Quantized, Target::Portable) => TableStorage::QuantizedHead,
            (EmbeddingsMode::Auto, Target::Portable) if parameters >= QUANTIZED_HEAD_FROM => {
                TableStorage::QuantizedHead
            }
            (EmbeddingsMode::Auto, Target::Portable) => TableStorage::F16,
        }
    }
}

impl ExportDtype {
    /// ONNX's quantized dtypes: written by ONNX only (`config::registry`).
    pub fn is_quantized(self) -> bool {
        self.formats() == [Format::Onnx]
    }

    /// llama.cpp's block formats, written only as GGUF.
    pub fn is_ggml_block(self) -> bool {
        self.formats() == [Format::Gguf]
    }
}

/// Block sizes the int4 quantizer supports.
pub const INT4_BLOCK_SIZES: &[u32] = &[16, 32, 64, 128];
/// ONNX opsets the graph builder can target.
pub const ONNX_OPSETS: std::ops::RangeInclusive<u32> = 17..=21;

/// Per-export knobs; each applies to some formats only (checked when the config is resolved).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExportOptions {
    /// safetensors: split into shards no larger than this (e.g. "5GB").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_shard_size: Option<ByteSize>,
    /// onnx: the default opset of the graph.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opset: Option<u32>,
    /// onnx: store initializers in `model.onnx_data` (default above 256 MiB; always above 2 GiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_data: Option<bool>,
    /// int4 (and int8 with target "ort"): quantization block size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// int4 (and int8 with target "ort"): symmetric blocks (no zero points); default false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symmetric: Option<bool>,
    /// int8/int4: "f16" keeps the embedding table and the output head in f16; "quantized"
    /// quantizes the head like the other matrices (the embedding table stays f16); "auto" is
    /// f16 below 1B parameters, quantized above.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<EmbeddingsMode>,
    /// int8/int4 with target "ort": MatMulNBits' accuracy_level (0 = f32 activations, 4 = int8
    /// activations: faster, less exact).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_level: Option<u8>,
    /// validation: largest allowed absolute logit error against the reference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_abs_error: Option<f64>,
    /// validation: largest allowed logit error relative to the reference's scale,
    /// `max |Δ| / max(1, RMS of the reference logits)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_relative_error: Option<f64>,
    /// validation: smallest allowed mean cosine similarity of the logits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_cosine: Option<f64>,
    /// validation: smallest allowed top-1 agreement (0 to 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_top1: Option<f64>,
    /// validation: largest allowed mean KL divergence from the reference (nats), on the
    /// evaluation text if there is one, else on the prompts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_mean_kl: Option<f64>,
    /// validation: smallest allowed top-1 agreement on the evaluation text (0 to 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_text_top1: Option<f64>,
}

impl ExportOptions {
    pub fn is_empty(&self) -> bool {
        self == &ExportOptions::default()
    }
}

/// One `[[package.metadata.model-export.export]]` entry after validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportSpec {
    pub name: String,
    pub format: Format,
    /// `None`: the base model's storage dtype (safetensors only).
    pub dtype: Option<ExportDtype>,
    /// ONNX only.
    pub target: Option<Target>,
    #[serde(skip_serializing_if = "ExportOptions::is_empty")]
    pub options: ExportOptions,
}

#[cfg(test)]
mod tests {
    use super::{EmbeddingsMode, TableStorage, Target};

    #[test]
    fn auto_quantizes_the_table_of_real_models_in_the_ort_target_only() {
        let (small, qwen3_0_6b, seven_b) = (1_000_000, 596_049_920, 7_615_616_512);
        let auto = |target, parameters| EmbeddingsMode::Auto.storage(target, 4, parameters);
        assert_eq!(auto(Target::Ort, small), TableStorage::F16);
        assert_eq!(auto(Target::Ort, qwen3_0_6b), TableStorage::Blocks { bits: 4 });
        assert_eq!(auto(Target::Portable, qwen3_0_6b), TableStorage::F16);
        assert_eq!(auto(Target::Portable, seven_b), TableStorage::QuantizedHead);
        assert_eq!(EmbeddingsMode::Int8.storage(Target::Ort, 4, small), TableStorage::Blocks { bits: 8 });
        assert_eq!(
            EmbeddingsMode::Quantized.storage(Target::Ort, 8, small),
            TableStorage::Blocks { bits: 8 }
        );
        assert_eq!(EmbeddingsMode::F16.storage(Target::Ort, 4, seven_b), TableStorage::F16);
    }
}
