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
    EmbeddingsMode { Auto => "auto", F16 => "f16", Quantized => "quantized" }
);

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
