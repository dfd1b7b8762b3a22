//! Peak-memory estimates of the stages, from measurements (docs/pipeline.md, "Memory"): peak RSS
//! of each stage of `run` on the Qwen3-0.6B shape (596M parameters, bf16) with a rank-16 run,
//! release build, this machine (`cargo bench --bench memory_estimates`). Streaming stages hold blocks of rows, not tensors; validation
//! holds one f32 copy of the model (the reference, released before the export is loaded) or the
//! export in its engine, whichever is larger.

use crate::config::schema::{ExportSpec, Format};
use crate::merge::execute::BLOCK_ELEMENTS;

/// The process itself: binary, allocator, tokenizer, thread pools (the streaming stages of the
/// 0.6B shape peak at 71-83 MiB in a release build, of which three blocks of rows are 48 MiB).
pub const BASE_MEMORY: u64 = 32 << 20;

/// A stage that streams tensors in blocks of rows: the f32 block, its encoded copy, the
/// writer's buffer (release build: merge 83 MiB, safetensors export 71 MiB; estimated 80 MiB).
pub fn streaming(largest_tensor_f32: u64) -> u64 {
    BASE_MEMORY + 3 * largest_tensor_f32.min(4 * BLOCK_ELEMENTS as u64)
}

/// The reference: 4 bytes per parameter, plus activations, logits and the KV cache of the
/// prompts (about 10%; measured 2.6-2.9 GiB validating a safetensors export of 596M parameters).
pub fn reference(parameters: u64) -> u64 {
    parameters * 4 * 11 / 10
}

/// An export loaded in the engines that run it: candle reads safetensors in f32; ONNX Runtime and
/// tract hold about 1.75x the file (measured 3.87-3.96 GiB for a 2.2 GiB f32 graph); GGUF keeps
/// its blocks plus an f16 copy of a quantized embedding (`embedding_f16`).
pub fn engine(spec: &ExportSpec, bytes: u64, parameters: u64, embedding_f16: u64) -> u64 {
    match spec.format {
        Format::Safetensors => parameters * 4,
        Format::Onnx => bytes * 7 / 4,
        Format::Gguf => bytes + embedding_f16,
    }
}

/// Writing an export: streaming, plus for ONNX the graph held as one protobuf when its weights
/// are inline (up to 256 MiB) and the export-time check, which loads it in the engines.
pub fn export(spec: &ExportSpec, bytes: u64, largest_tensor_f32: u64, check: bool) -> u64 {
    let stream = streaming(largest_tensor_f32);
    if spec.format != Format::Onnx {
        return stream;
    }
    let inline = if spec.options.external_data == Some(true) || bytes > 256 << 20 { 0 } else { bytes };
    let checked = if check { bytes * 7 / 4 } else { 0 };
    stream + inline + checked
}

/// Validating an export: the reference or the engine, whichever is larger (never both at once).
pub fn validation(spec: &ExportSpec, bytes: u64, parameters: u64, embedding_f16: u64) -> u64 {
    BASE_MEMORY + reference(parameters).max(engine(spec, bytes, parameters, embedding_f16))
}
