//! tract, pure Rust: loads the exported ONNX (external data included) with symbolic batch,
//! sequence and past lengths, optimises it, and runs it with the cache kept by the caller.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::batch::Batch;
use super::engine::{DecoderEngine, Logits};
use crate::config::{EmbeddingsMode, ExportDtype, ExportSpec, Target};
use crate::error::RuntimeError;

type Runnable = Arc<TypedRunnableModel>;

/// The portable graph runs every step in one model. The fused graph's GroupQueryAttention
/// runs in tract only as a first prompt (empty cache) or one token at a time, so it is loaded
/// twice with the lengths pinned: once for the prompt, once for decoding.
enum Models {
    Single(Runnable),
    Split { prompt: Runnable, decode: Runnable },
}

pub struct TractEngine {
    models: Models,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    past: Vec<TValue>,
}

fn tract_error(context: &str) -> impl Fn(TractError) -> RuntimeError + '_ {
    move |e| RuntimeError::Engine { engine: "tract", message: format!("{context}: {e:#}") }
}

fn tract_load_error(context: &str) -> impl Fn(TractError) -> RuntimeError + '_ {
    move |e| RuntimeError::EngineLoad { engine: "tract", message: format!("{context}: {e:#}") }
}

/// tract's transformer rewrites that the portable graph is shaped for. `into_optimized` does not
/// run them by itself; the validator keeps the KV cache, so `detect_kv_cache` is not used.
const REWRITES: &[&str] = &["detect_apply_rope", "detect_scaled_masked_softmax"];

/// Why tract cannot run an export of this dtype and target, if it cannot; `experts`: the model
/// has mixture-of-experts layers.
pub fn unsupported(
    dtype: ExportDtype,
    target: Target,
    symmetric: bool,
    experts: bool,
    eight_bit_table: bool,
) -> Option<&'static str> {
    match (dtype, target) {
        _ if eight_bit_table => Some(
            "tract's GatherBlockQuantized reads 4-bit tables only; this export keeps its embedding table in 8-bit blocks (ORT runs it)",
        ),
        (ExportDtype::F32 | ExportDtype::F16, Target::Ort) if experts => Some(
            "tract has no com.microsoft MoE, which the ort target's float experts use (ONNX Runtime runs them)",
        ),
        (ExportDtype::Int4, _) if symmetric => Some(
            "tract 0.23.9 miscomputes MatMulNBits whose zero points all equal 8 (symmetric int4): cosine 0.46 where ONNX Runtime gives 0.99",
        ),
        (ExportDtype::Bf16, _) => Some("tract loads no bf16 tensors"),
        (ExportDtype::Int8, Target::Ort) => {
            Some("tract's MatMulNBits reads 4-bit codes only; this export holds 8-bit blocks (ORT runs it)")
        }
        _ => None,
    }
}

/// [`unsupported`] for an export as configured in `spec`, written as `dtype` for `target`.
pub fn unsupported_for(
    spec: &ExportSpec,
    dtype: ExportDtype,
    target: Target,
    experts: bool,
) -> Option<&'static str> {
    let eight_bit_table = spec.options.embeddings == Some(EmbeddingsMode::Int8);
    unsupported(dtype, target, spec.options.symmetric.unwrap_or(false), experts, eight_bit_table)
}

/// How the inputs' lengths are pinned before typing.
#[derive(Clone, Copy)]
enum Pin {
    None,
    /// Empty cache: past length 0, the mask as long as the prompt.
    Prompt,
    /// One new token after `past_sequence_length` cached ones.
    Decode,
}

fn pin_inputs(
    model: &mut InferenceModel,
    pin: Pin,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
) -> TractResult<()> {
    let b = model.symbols.sym("batch_size").to_dim();
    let (tokens, total, past) = match pin {
        Pin::None => return Ok(()),
        Pin::Prompt => {
            let s = model.symbols.sym("sequence_length").to_dim();
            (s.clone(), s, 0.to_dim())
        }
        Pin::Decode => {
            let p = model.symbols.sym("past_sequence_length").to_dim();
            (1.to_dim(), p.clone() + 1, p)
        }
    };
    let i64_fact = |cols: TDim| InferenceFact::dt_shape(i64::datum_type(), [b.clone(), cols]);
    model.set_input_fact(0, i64_fact(tokens.clone()))?;
    model.set_input_fact(1, i64_fact(total))?;
    model.set_input_fact(2, i64_fact(tokens))?;
    for i in 0..2 * layers {
        let shape = [b.clone(), kv_heads.to_dim(), past.clone(), head_dim.to_dim()];
        model.set_input_fact(3 + i, InferenceFact::dt_shape(f32::datum_type(), shape))?;
    }
    Ok(())
}

/// Loads, declutters, applies the transformer rewrites and optimises.
fn optimized(path: &Path) -> TractResult<TypedModel> {
    optimized_pinned(path, Pin::None, (0, 0, 0))
}

fn optimized_pinned(
    path: &Path,
    pin: Pin,
    (layers, kv_heads, head_dim): (usize, usize, usize),
) -> TractResult<TypedModel> {
    let started = std::time::Instant::now();
    let phase = |what: &str| tracing::debug!("tract: {what} at {:.2} s", started.elapsed().as_secs_f64());
    let mut model = tract_onnx::onnx().model_for_path(path)?;
    phase("parsed");
    pin_inputs(&mut model, pin, layers, kv_heads, head_dim)?;
    let model = model.into_typed()?;
    phase("typed");
    let mut model = model.into_decluttered()?;
    phase("decluttered");
    for name in REWRITES {
        match tract_onnx::tract_core::transform::get_transform(name)? {
            Some(transform) => transform.transform(&mut model)?,
            None => tracing::debug!("tract has no `{name}` rewrite in this build"),
        }
    }
    phase("rewritten");
    let model = model.into_optimized()?;
    phase("optimized");
    Ok(model)
}

impl TractEngine {
    /// Loads a portable export.
    pub fn load(model: &Path, layers: usize, kv_heads: usize, head_dim: usize) -> Result<Self, RuntimeError> {
        Self::load_for(Target::Portable, model, layers, kv_heads, head_dim)
    }

    /// Loads an export of either target.
    pub fn load_for(
        target: Target,
        model: &Path,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<Self, RuntimeError> {
        let context = model.display().to_string();
        if crate::hooks::fails("tract-load") {
            return Err(RuntimeError::EngineLoad {
                engine: "tract",
                message: format!("{context}: injected fault (tract-load)"),
            });
        }
        let err = tract_load_error(&context);
        let dims = (layers, kv_heads, head_dim);
        let load = |pin| optimized_pinned(model, pin, dims).and_then(|m| m.into_runnable());
        let models = match target {
            Target::Portable => Models::Single(load(Pin::None).map_err(&err)?),
            Target::Ort => Models::Split {
                prompt: load(Pin::Prompt).map_err(&err)?,
                decode: load(Pin::Decode).map_err(&err)?,
            },
        };
        Ok(Self { models, layers, kv_heads, head_dim, past: Vec::new() })
    }

    /// The op names of the optimised model (to check that tract's fusing rewrites fired).
    pub fn op_names(model: &Path) -> Result<Vec<String>, RuntimeError> {
        let context = model.display().to_string();
        let optimized = optimized(model).map_err(tract_error(&context))?;
        Ok(optimized.nodes().iter().map(|n| n.op().name().to_string()).collect())
    }
}

fn i64_value(rows: &[Vec<i64>]) -> Result<TValue, TractError> {
    let shape = [rows.len(), rows.first().map_or(0, Vec::len)];
    Ok(tract_ndarray::Array2::from_shape_vec(shape, rows.concat())?.into_tensor().into_tvalue())
}

impl DecoderEngine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn step(&mut self, batch: &Batch) -> Result<Logits, RuntimeError> {
        let (b, s) = batch.dims();
        let err = tract_error("run");
        let fresh = self.past.is_empty();
        if fresh {
            let empty =
                Tensor::zero::<f32>(&[b, self.kv_heads, 0, self.head_dim]).map_err(&err)?.into_tvalue();
            self.past = vec![empty; 2 * self.layers];
        }
        let mut inputs: TVec<TValue> = tvec![
            i64_value(&batch.input_ids).map_err(&err)?,
            i64_value(&batch.attention_mask).map_err(&err)?,
            i64_value(&batch.position_ids).map_err(&err)?,
        ];
        let model = match &self.models {
            Models::Single(m) => m,
            Models::Split { prompt, .. } if fresh => prompt,
            Models::Split { decode, .. } if s == 1 => decode,
            Models::Split { .. } => {
                return Err(RuntimeError::Engine {
                    engine: "tract",
                    message: format!(
                        "tract runs the fused graph's GroupQueryAttention on a first prompt or one token at a time, not {s} tokens after a cache"
                    ),
                });
            }
        };
        inputs.extend(self.past.drain(..));
        let mut outputs = model.run(inputs).map_err(&err)?;
        let present: Vec<TValue> = outputs.drain(1..).collect();
        let logits = outputs.remove(0);
        let vocab = logits.shape().last().copied().unwrap_or(0);
        let values = logits.to_plain_array_view::<f32>().map_err(&err)?.iter().copied().collect();
        self.past = present;
        Ok(Logits { values, batch: b, seq: s, vocab })
    }

    fn reset(&mut self) {
        self.past.clear();
    }
}
