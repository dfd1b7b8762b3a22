//! The two tables everything else reads about what the tool writes: the formats (the dtypes
//! and targets each takes, the engines that run it) and the element types and quantization
//! schemes (block layout, bytes per weight for estimates, llama.cpp's and ONNX's names for them,
//! the default validation bars). Config validation, `init`, `explain`, the size and memory
//! estimates, the engines an export is validated in, the GGUF writer's file types, the
//! tolerances and docs/config.md (a test renders the tables into it) all read these rows, so a
//! new format or scheme is one row here, not a match in every module.

use candle_core::quantized::GgmlDType;

use super::schema::{Engine, ExportDtype, Format, Target};

/// What an export that gives no `dtype` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultDtype {
    /// The base model's storage dtype (as llama.cpp's converter's `--outtype auto`).
    Base,
    Fixed(ExportDtype),
}

#[derive(Debug, Clone, Copy)]
pub struct FormatInfo {
    pub format: Format,
    pub summary: &'static str,
    /// The dtypes it writes, in `ExportDtype::ALL` order.
    pub dtypes: &'static [ExportDtype],
    pub default_dtype: DefaultDtype,
    /// ONNX flavours (empty: the format has none); the first is the default.
    pub targets: &'static [Target],
    /// The engines that load and run it in validation.
    pub engines: &'static [Engine],
    /// Why a dtype it does not write is refused, where there is more to say: (dtype, reason, help).
    pub refused: &'static [(ExportDtype, &'static str, &'static str)],
}

pub const FORMATS: &[FormatInfo] = &[
    FormatInfo {
        format: Format::Safetensors,
        summary: "a Hugging Face model folder (transformers, candle, vLLM)",
        dtypes: &[ExportDtype::F32, ExportDtype::F16, ExportDtype::Bf16],
        default_dtype: DefaultDtype::Base,
        targets: &[],
        engines: &[Engine::Candle],
        refused: &[],
    },
    FormatInfo {
        format: Format::Onnx,
        summary: "an ONNX decoder with KV cache (ONNX Runtime, onnxruntime-genai, tract)",
        dtypes: &[ExportDtype::F32, ExportDtype::F16, ExportDtype::Int8, ExportDtype::Int4],
        default_dtype: DefaultDtype::Fixed(ExportDtype::F32),
        targets: &[Target::Portable, Target::Ort],
        engines: &[Engine::Ort, Engine::Tract],
        refused: &[(
            ExportDtype::Bf16,
            "bf16 ONNX is not run by tract or ONNX Runtime's CPU provider",
            "use f16 (same size, runs everywhere), or bf16 safetensors",
        )],
    },
    FormatInfo {
        format: Format::Gguf,
        summary: "one GGUF file (llama.cpp, Ollama, LM Studio)",
        dtypes: &[
            ExportDtype::F32,
            ExportDtype::F16,
            ExportDtype::Bf16,
            ExportDtype::Q8_0,
            ExportDtype::Q4_0,
            ExportDtype::Q4K,
            ExportDtype::Q6K,
        ],
        default_dtype: DefaultDtype::Base,
        targets: &[],
        // candle's ggml kernels on the file's own blocks.
        engines: &[Engine::Candle],
        refused: &[],
    },
];

/// The validation bars a dtype gets unless an export's options set its own
/// (docs/validation.md gives the measurements behind them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DefaultBars {
    /// `max |Δ| / max(1, RMS of the reference logits)`, where judged on it.
    pub max_relative_error: Option<f64>,
    pub min_cosine: f64,
    pub min_top1: f64,
    /// Top-1 counts only where the reference's top-1/top-2 margin exceeds this.
    pub top1_margin: f32,
    pub greedy_must_match: bool,
    /// Mean KL divergence from the reference, nats.
    pub max_mean_kl: f64,
    /// Top-1 agreement on an evaluation text.
    pub min_text_top1: f64,
}

/// f32: `max |Δ| ≤ 1e-4 · max(1, RMS)`.
pub const F32_RELATIVE: f64 = 1e-4;
/// f16: `max |Δ| ≤ 1e-1 · max(1, RMS)`, beside cosine and top-1.
pub const F16_RELATIVE: f64 = 1e-1;
/// 4-bit types (int4, q4_0, q4_k): mean KL divergence and text top-1 chosen from trained
/// weights (docs/validation.md, "Tolerances from trained weights"): the trained fixture
/// measures 1.1e-3 to 1.3e-3 and 94-95% (q4_k 3.6e-4 and 97%); llama.cpp's published figures
/// for 7-8B models at 4 bits are 0.01-0.04 nats and 90-95%; the bars leave room above both.
pub const MAX_MEAN_KL_4BIT: f64 = 0.1;
pub const MIN_TEXT_TOP1_4BIT: f64 = 0.85;

const FOUR_BIT: DefaultBars = DefaultBars {
    max_relative_error: None,
    min_cosine: 0.99,
    min_top1: 0.9,
    top1_margin: 0.1,
    greedy_must_match: false,
    max_mean_kl: MAX_MEAN_KL_4BIT,
    min_text_top1: MIN_TEXT_TOP1_4BIT,
};

/// llama.cpp's names for a type a GGUF file is written in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GgufType {
    /// The type of the file's matrices before llama.cpp's per-tensor rules (`export::gguf::types`).
    pub base: GgmlDType,
    /// `general.file_type` (`enum llama_ftype`).
    pub file_type: u32,
}

#[derive(Debug, Clone, Copy)]
pub struct SchemeInfo {
    pub dtype: ExportDtype,
    pub summary: &'static str,
    /// Values per block and the bytes a block takes (float types: blocks of one value).
    pub block: usize,
    pub block_bytes: usize,
    /// Bytes per weight of a whole export in this type, for size estimates: quantized ONNX
    /// matrices with their scales and zero points (embeddings stay f16, `pipeline::plan`);
    /// GGUF blocks with the tensors llama.cpp's rules keep wider.
    pub bytes_per_weight: f64,
    pub gguf: Option<GgufType>,
    /// How an ONNX projection in this type is computed.
    pub onnx: Option<&'static str>,
    pub bars: DefaultBars,
}

pub const SCHEMES: &[SchemeInfo] = &[
    SchemeInfo {
        dtype: ExportDtype::F32,
        summary: "exact: the precision of the merge and the reference",
        block: 1,
        block_bytes: 4,
        bytes_per_weight: 4.0,
        gguf: Some(GgufType { base: GgmlDType::F32, file_type: 0 }),
        onnx: Some("MatMul"),
        bars: DefaultBars {
            max_relative_error: Some(F32_RELATIVE),
            min_cosine: 0.999_999,
            min_top1: 1.0,
            top1_margin: 1e-3,
            greedy_must_match: true,
            max_mean_kl: 1e-6,
            min_text_top1: 0.999,
        },
    },
    SchemeInfo {
        dtype: ExportDtype::F16,
        summary: "half precision, 10-bit mantissa",
        block: 1,
        block_bytes: 2,
        bytes_per_weight: 2.0,
        gguf: Some(GgufType { base: GgmlDType::F16, file_type: 1 }),
        onnx: Some("Cast + MatMul"),
        bars: DefaultBars {
            max_relative_error: Some(F16_RELATIVE),
            min_cosine: 0.9999,
            min_top1: 0.99,
            top1_margin: 2e-2,
            greedy_must_match: false,
            max_mean_kl: 1e-3,
            min_text_top1: 0.98,
        },
    },
    SchemeInfo {
        dtype: ExportDtype::Bf16,
        summary: "bfloat16, f32's range with a 7-bit mantissa",
        block: 1,
        block_bytes: 2,
        bytes_per_weight: 2.0,
        gguf: Some(GgufType { base: GgmlDType::BF16, file_type: 32 }),
        onnx: None,
        bars: DefaultBars {
            max_relative_error: None,
            min_cosine: 0.999,
            min_top1: 0.98,
            top1_margin: 5e-2,
            greedy_must_match: false,
            max_mean_kl: 5e-3,
            min_text_top1: 0.97,
        },
    },
    SchemeInfo {
        dtype: ExportDtype::Int8,
        summary: "8-bit codes, symmetric per output channel (ort target: blocks)",
        block: 1,
        block_bytes: 1,
        bytes_per_weight: 1.03,
        gguf: None,
        onnx: Some("DequantizeLinear + Gemm (portable), MatMulNBits (ort)"),
        bars: FOUR_BIT,
    },
    SchemeInfo {
        dtype: ExportDtype::Int4,
        summary: "4-bit codes in blocks of 32 (16-128) with f32 scales and zero points",
        block: 32,
        block_bytes: 16,
        // int4 blocks of 32 with f32 scales and 4-bit zero points (measured 0.64 on the 7B shape).
        bytes_per_weight: 0.64,
        gguf: None,
        onnx: Some("MatMulNBits"),
        bars: FOUR_BIT,
    },
    SchemeInfo {
        dtype: ExportDtype::Q8_0,
        summary: "llama.cpp's 8-bit blocks of 32 with an f16 scale",
        block: 32,
        block_bytes: 34,
        bytes_per_weight: 1.07,
        gguf: Some(GgufType { base: GgmlDType::Q8_0, file_type: 7 }),
        onnx: None,
        bars: DefaultBars {
            max_relative_error: None,
            min_cosine: 0.999,
            min_top1: 0.95,
            top1_margin: 5e-2,
            greedy_must_match: false,
            max_mean_kl: 1e-2,
            min_text_top1: 0.95,
        },
    },
    SchemeInfo {
        dtype: ExportDtype::Q4_0,
        summary: "llama.cpp's 4-bit blocks of 32 (llama-quantize Q4_0: the head q6_k)",
        block: 32,
        block_bytes: 18,
        bytes_per_weight: 0.65,
        gguf: Some(GgufType { base: GgmlDType::Q4_0, file_type: 2 }),
        onnx: None,
        bars: FOUR_BIT,
    },
    SchemeInfo {
        dtype: ExportDtype::Q4K,
        summary: "llama.cpp's 4-bit k-quant super-blocks of 256 (Q4_K_M: some tensors q6_k)",
        block: 256,
        block_bytes: 144,
        bytes_per_weight: 0.65,
        gguf: Some(GgufType { base: GgmlDType::Q4K, file_type: 15 }),
        onnx: None,
        bars: FOUR_BIT,
    },
    SchemeInfo {
        dtype: ExportDtype::Q6K,
        summary: "llama.cpp's 6-bit k-quant super-blocks of 256",
        block: 256,
        block_bytes: 210,
        bytes_per_weight: 0.83,
        gguf: Some(GgufType { base: GgmlDType::Q6K, file_type: 18 }),
        onnx: None,
        bars: DefaultBars {
            max_relative_error: None,
            min_cosine: 0.999,
            min_top1: 0.95,
            top1_margin: 5e-2,
            greedy_must_match: false,
            max_mean_kl: 1e-2,
            min_text_top1: 0.95,
        },
    },
];

impl Format {
    /// Its row: `FORMATS` lists the formats in `Format::ALL`'s order (a test holds it so).
    pub fn info(self) -> &'static FormatInfo {
        &FORMATS[Format::ALL.iter().position(|f| *f == self).unwrap_or_default()]
    }

    /// Engines that can run an export of this format.
    pub fn engines(self) -> &'static [Engine] {
        self.info().engines
    }

    /// Whether this format writes `dtype`.
    pub fn writes(self, dtype: ExportDtype) -> bool {
        self.info().dtypes.contains(&dtype)
    }
}

impl ExportDtype {
    /// Its row: `SCHEMES` lists the dtypes in `ExportDtype::ALL`'s order (a test holds it so).
    pub fn scheme(self) -> &'static SchemeInfo {
        &SCHEMES[ExportDtype::ALL.iter().position(|d| *d == self).unwrap_or_default()]
    }

    /// The formats that write this dtype.
    pub fn formats(self) -> Vec<Format> {
        FORMATS.iter().filter(|f| f.dtypes.contains(&self)).map(|f| f.format).collect()
    }
}

/// `a, b or c`.
pub fn or_list<T: std::fmt::Display>(items: &[T]) -> String {
    let names: Vec<String> = items.iter().map(T::to_string).collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        Some((last, _)) => last.clone(),
        None => String::new(),
    }
}

/// The formats table of docs/config.md.
pub fn formats_markdown() -> String {
    let mut out = String::from(
        "| format | writes | dtypes | default dtype | targets | validated in |\n|---|---|---|---|---|---|\n",
    );
    for f in FORMATS {
        let list = |items: Vec<String>| if items.is_empty() { "–".to_string() } else { items.join(", ") };
        let default = match f.default_dtype {
            DefaultDtype::Base => "the base's storage dtype".to_string(),
            DefaultDtype::Fixed(d) => format!("`{d}`"),
        };
        out.push_str(&format!(
            "| `{}` | {} | {} | {default} | {} | {} |\n",
            f.format,
            f.summary,
            list(f.dtypes.iter().map(|d| format!("`{d}`")).collect()),
            list(f.targets.iter().map(|t| format!("`{t}`")).collect()),
            list(f.engines.iter().map(|e| e.to_string()).collect()),
        ));
    }
    out
}

/// The element types table of docs/config.md.
pub fn schemes_markdown() -> String {
    let mut out = String::from(
        "| dtype | what | block (values / bytes) | bytes per weight (estimates) | GGUF (ggml type, file_type) | ONNX projection | default bars (cosine, top-1, mean KL, text top-1) |\n|---|---|---|---|---|---|---|\n",
    );
    for s in SCHEMES {
        let gguf = s.gguf.map_or("–".to_string(), |g| {
            format!("{}, {}", crate::gguf_constants::type_name(g.base), g.file_type)
        });
        let b = s.bars;
        out.push_str(&format!(
            "| `{}` | {} | {} / {} | {} | {gguf} | {} | {}, {}, {:e}, {} |\n",
            s.dtype,
            s.summary,
            s.block,
            s.block_bytes,
            s.bytes_per_weight,
            s.onnx.unwrap_or("–"),
            b.min_cosine,
            b.min_top1,
            b.max_mean_kl,
            b.min_text_top1,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_and_dtype_has_its_row_in_order() {
        assert_eq!(FORMATS.iter().map(|i| i.format).collect::<Vec<_>>(), Format::ALL);
        assert_eq!(SCHEMES.iter().map(|s| s.dtype).collect::<Vec<_>>(), ExportDtype::ALL);
        for d in ExportDtype::ALL {
            assert!(!d.formats().is_empty(), "{d} is written by no format");
            // GGUF writes exactly the types that have llama.cpp names.
            assert_eq!(Format::Gguf.writes(*d), d.scheme().gguf.is_some(), "{d}");
        }
        // Block layouts agree with ggml's.
        for s in SCHEMES {
            if let Some(g) = s.gguf {
                assert_eq!(
                    (g.base.block_size(), g.base.type_size()),
                    (s.block, s.block_bytes),
                    "{}",
                    s.dtype
                );
            }
        }
        assert_eq!(or_list(&["f32", "f16", "bf16"]), "f32, f16 or bf16");
    }

    #[test]
    fn docs_config_md_shows_the_tables() {
        let docs = include_str!("../../docs/config.md");
        if std::env::var_os("PRINT_TABLES").is_some() {
            println!("FORMATS\n{}SCHEMES\n{}END", formats_markdown(), schemes_markdown());
        }
        assert!(
            docs.contains(&formats_markdown()),
            "docs/config.md: formats table differs from:\n{}",
            formats_markdown()
        );
        assert!(
            docs.contains(&schemes_markdown()),
            "docs/config.md: dtypes table differs from:\n{}",
            schemes_markdown()
        );
    }
}
