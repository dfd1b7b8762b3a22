//! GGUF's vocabulary, in one place for the writer (`export::gguf`) and the reader
//! (`runtime::gguf`), after gguf-py's `constants.py`: metadata keys, llama.cpp's names of the
//! ggml types, their block sizes and the fallbacks llama.cpp takes when blocks do not fit a row.

use std::collections::BTreeMap;

use candle_core::quantized::GgmlDType;

/// Byte alignment of the tensor data (`general.alignment`).
pub const ALIGNMENT: u64 = 32;
/// `GGML_QNT_VERSION`: the block layouts candle and current llama.cpp share.
pub const QUANTIZATION_VERSION: u32 = 2;

pub const GENERAL_ARCHITECTURE: &str = "general.architecture";
pub const GENERAL_TYPE: &str = "general.type";
pub const GENERAL_NAME: &str = "general.name";
pub const GENERAL_FILE_TYPE: &str = "general.file_type";
pub const GENERAL_QUANTIZATION_VERSION: &str = "general.quantization_version";
pub const GENERAL_ALIGNMENT: &str = "general.alignment";

/// Keys under the architecture's name: `<arch>.<key>` ([`arch_key`]).
pub mod arch {
    pub const VOCAB_SIZE: &str = "vocab_size";
    pub const CONTEXT_LENGTH: &str = "context_length";
    pub const EMBEDDING_LENGTH: &str = "embedding_length";
    pub const BLOCK_COUNT: &str = "block_count";
    pub const FEED_FORWARD_LENGTH: &str = "feed_forward_length";
    pub const HEAD_COUNT: &str = "attention.head_count";
    pub const HEAD_COUNT_KV: &str = "attention.head_count_kv";
    pub const KEY_LENGTH: &str = "attention.key_length";
    pub const VALUE_LENGTH: &str = "attention.value_length";
    pub const RMS_NORM_EPS: &str = "attention.layer_norm_rms_epsilon";
    pub const ROPE_DIMENSION_COUNT: &str = "rope.dimension_count";
    pub const ROPE_FREQ_BASE: &str = "rope.freq_base";
    pub const ROPE_SCALING_TYPE: &str = "rope.scaling.type";
    pub const ROPE_SCALING_FACTOR: &str = "rope.scaling.factor";
    pub const ROPE_SCALING_ORIGINAL_CONTEXT: &str = "rope.scaling.original_context_length";
    pub const EXPERT_COUNT: &str = "expert_count";
    pub const EXPERT_USED_COUNT: &str = "expert_used_count";
    pub const EXPERT_FEED_FORWARD_LENGTH: &str = "expert_feed_forward_length";
}

/// `<arch>.<key>`.
pub fn arch_key(arch: &str, key: &str) -> String {
    format!("{arch}.{key}")
}

pub const TOKENIZER_MODEL: &str = "tokenizer.ggml.model";
pub const TOKENIZER_PRE: &str = "tokenizer.ggml.pre";
pub const TOKENIZER_TOKENS: &str = "tokenizer.ggml.tokens";
pub const TOKENIZER_TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
pub const TOKENIZER_MERGES: &str = "tokenizer.ggml.merges";
pub const TOKENIZER_BOS_ID: &str = "tokenizer.ggml.bos_token_id";
pub const TOKENIZER_EOS_ID: &str = "tokenizer.ggml.eos_token_id";
pub const TOKENIZER_PAD_ID: &str = "tokenizer.ggml.padding_token_id";
pub const TOKENIZER_ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
pub const TOKENIZER_CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// llama.cpp's name of a ggml type (`ggml_type_name`).
pub fn type_name(format: GgmlDType) -> &'static str {
    match format {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// ggml's number for a tensor type (ggml.h `enum ggml_type`).
pub fn ggml_type_id(dtype: GgmlDType) -> u32 {
    match dtype {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// Bytes of `elements` values stored in `format` (whole blocks; f32/f16/bf16 are blocks of 1).
pub fn block_bytes(format: GgmlDType, elements: usize) -> u64 {
    (elements / format.block_size() * format.type_size()) as u64
}

/// The nearest block format that fits rows of `width` (llama.cpp's fallbacks for k-quants),
/// or `None` when no block format does (the tensor then stays f16).
pub fn fitting_format(wanted: GgmlDType, width: usize) -> Option<GgmlDType> {
    let mut format = wanted;
    loop {
        if width.is_multiple_of(format.block_size()) {
            return Some(format);
        }
        format = match format {
            GgmlDType::Q2K | GgmlDType::Q3K => GgmlDType::Q4_0,
            GgmlDType::Q4K => GgmlDType::Q5_0,
            GgmlDType::Q5K => GgmlDType::Q5_1,
            GgmlDType::Q6K => GgmlDType::Q8_0,
            _ => return None,
        };
    }
}

/// Tensors per type, by llama.cpp's type names.
pub fn count_types(types: impl Iterator<Item = GgmlDType>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for t in types {
        *counts.entry(type_name(t).to_string()).or_insert(0) += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_quants_fall_back_as_llama_cpp_does() {
        assert_eq!(fitting_format(GgmlDType::Q4K, 1024), Some(GgmlDType::Q4K));
        assert_eq!(fitting_format(GgmlDType::Q4K, 64), Some(GgmlDType::Q5_0));
        assert_eq!(fitting_format(GgmlDType::Q6K, 128), Some(GgmlDType::Q8_0));
        assert_eq!(fitting_format(GgmlDType::Q8_0, 48), None);
    }
}
