//! Peak-memory estimates of the stages, from measurements (docs/pipeline.md, "Memory"): peak RSS
//! of each stage of `run` on the Qwen3-0.6B shape (596M parameters, bf16) with a rank-16 run,
//! release build, this machine (`cargo bench --bench memory_estimates`), and of the Qwen2.5-7B
//! shape (`cargo bench --bench pipeline_7b`). Streaming stages hold blocks of rows, not tensors;
//! validation streams the reference layer by layer, then holds one export in one engine at a time.

use crate::config::schema::{Engine, ExportSpec, Format};
use crate::merge::execute::BLOCK_ELEMENTS;

/// The process itself: binary, allocator, tokenizer, thread pools (the streaming stages of the
/// 0.6B shape peak at 71-83 MiB in a release build, of which three blocks of rows are 48 MiB).
pub const BASE_MEMORY: u64 = 32 << 20;

/// A stage that streams tensors in blocks of rows: the f32 block, its encoded copy, the
/// writer's buffer (release build: merge 83 MiB, safetensors export 71 MiB; estimated 80 MiB).
pub fn streaming(largest_tensor_f32: u64) -> u64 {
    BASE_MEMORY + 3 * largest_tensor_f32.min(4 * BLOCK_ELEMENTS as u64)
}

/// The sizes that decide a streamed model's memory: its largest part in f32 (the embedding, one
/// layer, or the head), and the logits of a prompt batch.
#[derive(Debug, Clone, Copy)]
pub struct ModelParts {
    pub parameters: u64,
    pub largest_part_f32: u64,
    /// The embedding in f16 (a quantized GGUF embedding is expanded to f16 for the lookup).
    pub embedding_f16: u64,
    pub vocab: u64,
}

impl ModelParts {
    pub fn of(base: &crate::model::ModelFolder) -> Self {
        let mut layers: Vec<u64> = vec![0; base.config.num_hidden_layers];
        let mut largest = 0u64;
        for (_, t) in base.tensors() {
            let name = t.name.as_str();
            let bytes = t.numel() as u64 * 4;
            match crate::checkpoint::adapter_config::layer_index(name).and_then(|i| layers.get_mut(i)) {
                Some(layer) => *layer += bytes,
                None => largest = largest.max(bytes),
            }
        }
        let embedding = base.tensor(base.profile.tensors.embed).map_or(0, |(_, t)| t.numel() as u64);
        ModelParts {
            parameters: base.parameter_count(),
            largest_part_f32: layers.into_iter().fold(largest, u64::max),
            embedding_f16: embedding * 2,
            vocab: base.config.vocab_size as u64,
        }
    }
}

/// Prompt tokens a validation batch is assumed to hold per prompt (chat template included).
const TOKENS_PER_PROMPT: u64 = 64;

/// A model streamed layer by layer in f32 (the reference; candle on a safetensors export): the
/// part being run, the mapped pages of the tensor being read (released after), the logits of the
/// batch in candle, as a vector and as the cached reference (3 copies), and activations.
pub fn streamed(parts: &ModelParts, prompts: usize) -> u64 {
    let logits = prompts as u64 * TOKENS_PER_PROMPT * parts.vocab * 4;
    BASE_MEMORY + parts.largest_part_f32 * 5 / 4 + 3 * logits
}

/// The unmerged reference: a streamed model (then the merged one, measured against it, the same way).
pub fn reference(parts: &ModelParts, prompts: usize) -> u64 {
    streamed(parts, prompts)
}

/// An export loaded in one engine: candle streams safetensors like the reference; ONNX Runtime
/// and tract hold about 1.75x the file (measured 3.87-3.96 GiB for a 2.2 GiB f32 graph); GGUF
/// keeps its blocks plus an f16 copy of a quantized embedding.
pub fn engine(spec: &ExportSpec, bytes: u64, parts: &ModelParts, prompts: usize) -> u64 {
    BASE_MEMORY
        + match spec.format {
            Format::Safetensors => streamed(parts, prompts) - BASE_MEMORY,
            Format::Onnx => bytes * 7 / 4,
            Format::Gguf => bytes + parts.embedding_f16,
        }
}

/// Each requested engine that runs `spec` with its estimate.
pub fn engines(
    spec: &ExportSpec,
    requested: &[Engine],
    bytes: u64,
    parts: &ModelParts,
    prompts: usize,
) -> Vec<(Engine, u64)> {
    crate::validate::engines_for(spec.format)
        .iter()
        .filter(|e| requested.contains(e))
        .map(|&e| (e, engine(spec, bytes, parts, prompts)))
        .collect()
}

/// Validating an export: the reference, then each engine in turn (one thing at a time); engines
/// over `limit` are refused at validation and do not count.
pub fn validation(reference: u64, engines: &[(Engine, u64)], limit: Option<u64>) -> u64 {
    engines.iter().map(|(_, m)| *m).filter(|m| limit.is_none_or(|l| *m <= l)).fold(reference, u64::max)
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
