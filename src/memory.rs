//! Peak-memory estimates of the stages, from measurements (docs/pipeline.md, "Memory"): peak RSS
//! of each stage of `run` on the Qwen3-0.6B shape (596M parameters, bf16) with a rank-16 run,
//! release build, this machine (`cargo bench --bench memory_estimates`), and of the Qwen2.5-7B
//! shape (`cargo bench --bench pipeline_7b`). Streaming stages hold blocks of rows, not tensors;
//! validation streams the reference layer by layer, then holds one export in one engine at a time.

use crate::config::schema::{Engine, ExportDtype, ExportSpec, Format};
use crate::merge::execute::BLOCK_ELEMENTS;

/// The process itself: binary, allocator, tokenizer, thread pools (the streaming stages of the
/// 0.6B shape peak at 71-83 MiB in a release build, of which three blocks of rows are 48 MiB).
pub const BASE_MEMORY: u64 = 32 << 20;

/// The process in a stage after others: their libraries (ONNX Runtime's), thread pools and
/// allocator arenas stay (the report stage measured 80-114 MiB after a 7B run's validations).
pub const LATER_STAGE_BASE: u64 = 96 << 20;

/// A stage that streams tensors in blocks of rows: the f32 block with its encoded copy and the
/// writer's buffer (two blocks), and the adapter's mapped file, which is read whole tensor by
/// tensor and stays mapped (77 MiB for a rank-16 all-linear run of a 7B). Measured, bf16
/// safetensors export: 74 MiB for the 0.6B shape (estimate 83), 0.17 GiB for the 7B (0.14).
pub fn streaming(largest_tensor_f32: u64, adapter_bytes: u64) -> u64 {
    BASE_MEMORY + 2 * largest_tensor_f32.min(4 * BLOCK_ELEMENTS as u64) + adapter_bytes
}

/// The sizes that decide a streamed model's memory: its largest part in f32 (the embedding, one
/// layer, or the head), and the logits of a prompt batch.
#[derive(Debug, Clone, Copy)]
pub struct ModelParts {
    pub parameters: u64,
    pub largest_part_f32: u64,
    pub vocab: u64,
    /// The adapter's weights file (0 without one).
    pub adapter_bytes: u64,
}

impl ModelParts {
    pub fn of(base: &crate::model::ModelFolder, adapter_bytes: u64) -> Self {
        let mut layers: Vec<u64> = vec![0; base.config.num_hidden_layers];
        let mut largest = 0u64;
        for (_, t) in base.tensors() {
            let name = t.name.as_str();
            let bytes = t.numel() as u64 * 4;
            match base.config.decoder.layer_of(name).and_then(|i| layers.get_mut(i)) {
                Some(layer) => *layer += bytes,
                None => largest = largest.max(bytes),
            }
        }
        ModelParts {
            parameters: base.parameter_count(),
            largest_part_f32: layers.into_iter().fold(largest, u64::max),
            vocab: base.config.vocab_size as u64,
            adapter_bytes,
        }
    }
}

/// Prompt tokens a validation batch is assumed to hold per prompt (chat template included).
const TOKENS_PER_PROMPT: u64 = 32;

/// A model streamed layer by layer in f32 (the reference; candle on a safetensors export): the
/// part being run (the tensor being read is released block by block as it is upcast), the
/// logits of the batch in candle, as a vector and as the cached reference (3 copies), the
/// adapter's mapped file, and activations.
pub fn streamed(parts: &ModelParts, prompts: usize) -> u64 {
    BASE_MEMORY + parts.largest_part_f32 * 21 / 20 + 3 * logits_bytes(parts, prompts) + parts.adapter_bytes
}

fn logits_bytes(parts: &ModelParts, prompts: usize) -> u64 {
    prompts as u64 * TOKENS_PER_PROMPT * parts.vocab * 4
}

/// The evaluation text's share of validation: the reference's log-probabilities at every scored
/// position, held while each engine runs, and one batch of chunks' logits with their
/// log-softmax (batches are cut near 64 MiB of logits).
pub fn text(scored_positions: u64, vocab: u64) -> u64 {
    let log_probs = scored_positions * vocab * 4;
    log_probs + 2 * log_probs.min(64 << 20)
}

/// The unmerged reference: a streamed model (then the merged one, measured against it, the same way).
pub fn reference(parts: &ModelParts, prompts: usize) -> u64 {
    streamed(parts, prompts)
}

/// Resident memory per byte of an ONNX file in an engine (measured: ONNX Runtime 1.75x for an
/// f32 graph of the 0.6B shape and 0.82x for the int4 `ort` export of the 7B shape, where it
/// maps MatMulNBits blocks as stored; tract 1.75x for f32, 3.03x for int4, which it unpacks
/// into its own Q4_0 blocks, zero-point terms and packed panels).
fn onnx_factor(spec: &ExportSpec, engine: Engine) -> f64 {
    match (spec.dtype, engine) {
        (Some(ExportDtype::Int4), Engine::Ort) => 0.85,
        (Some(ExportDtype::Int4), _) => 3.1,
        _ => 1.75,
    }
}

/// An export loaded in one engine: candle streams safetensors like the reference, and GGUF one
/// layer of blocks at a time (the embedding stays in its blocks, rows expanded on lookup);
/// ONNX engines hold the file as measured.
pub fn engine(spec: &ExportSpec, engine: Engine, bytes: u64, parts: &ModelParts, prompts: usize) -> u64 {
    let logits = 3 * logits_bytes(parts, prompts);
    match spec.format {
        Format::Safetensors => streamed(parts, prompts),
        Format::Onnx => BASE_MEMORY + (bytes as f64 * onnx_factor(spec, engine)) as u64 + logits,
        Format::Gguf => {
            // The largest part's blocks (the head, stored with more bits than the average: q6_k's
            // 0.82 bytes per weight in a Q4_K_M file averaging 0.62, hence 1.5x) and candle's
            // repacked copy of them, about as large (measured 1.24-1.31 GiB for the 7B shape's
            // q4_k file).
            let bytes_per_weight = 1.5 * bytes as f64 / parts.parameters.max(1) as f64;
            let largest_blocks = (parts.largest_part_f32 as f64 / 4.0 * bytes_per_weight) as u64;
            BASE_MEMORY + 2 * largest_blocks + logits
        }
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
    spec.format
        .engines()
        .iter()
        .filter(|e| requested.contains(e))
        .map(|&e| (e, engine(spec, e, bytes, parts, prompts)))
        .collect()
}

/// Validating an export: the reference, then each engine in turn (one thing at a time); engines
/// over `limit` are refused at validation and do not count.
pub fn validation(reference: u64, engines: &[(Engine, u64)], limit: Option<u64>) -> u64 {
    engines.iter().map(|(_, m)| *m).filter(|m| limit.is_none_or(|l| *m <= l)).fold(reference, u64::max)
}

/// Writing an export: streaming, plus for ONNX the largest float matrix, held whole while it is
/// laid out transposed for `MatMul` (in f32, or f16 in the reduced precisions), the graph held as
/// one protobuf when its weights are inline (up to 256 MiB) and the export-time check, which loads
/// it in each of `checked_in` in turn.
pub fn export(
    spec: &ExportSpec,
    bytes: u64,
    largest_tensor_f32: u64,
    adapter_bytes: u64,
    checked_in: &[Engine],
) -> u64 {
    let stream = streaming(largest_tensor_f32, adapter_bytes);
    match spec.format {
        Format::Safetensors => return stream,
        // The k-quant encoder's rows and search scratch on each thread: three more blocks
        // (measured 0.21 GiB writing the 7B shape's q4_k file, 0.17 GiB for its bf16 safetensors).
        Format::Gguf => return stream + 3 * largest_tensor_f32.min(4 * BLOCK_ELEMENTS as u64),
        Format::Onnx => {}
    }
    let transposed = match spec.dtype {
        None | Some(ExportDtype::F32) => largest_tensor_f32,
        _ => largest_tensor_f32 / 2,
    };
    stream
        + transposed
        + onnx_inline(spec, bytes)
        + checked_in.iter().map(|&e| onnx_check(spec, bytes, e)).max().unwrap_or(0)
}

/// The graph held as one protobuf while it is written, when its weights are inline.
fn onnx_inline(spec: &ExportSpec, bytes: u64) -> u64 {
    if spec.options.external_data == Some(true) || bytes > 256 << 20 { 0 } else { bytes }
}

/// The export-time check's load of the written file in `engine`.
pub fn onnx_check(spec: &ExportSpec, bytes: u64, engine: Engine) -> u64 {
    (bytes as f64 * onnx_factor(spec, engine)) as u64
}
