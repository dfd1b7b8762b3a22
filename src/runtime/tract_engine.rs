//! tract, pure Rust: loads the exported ONNX (external data included) with symbolic batch,
//! sequence and past lengths, optimises it, and runs it with the cache kept by the caller.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use super::batch::Batch;
use super::engine::{DecoderEngine, Logits};
use crate::error::RuntimeError;

type Runnable = Arc<TypedRunnableModel>;

pub struct TractEngine {
    model: Runnable,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    past: Vec<TValue>,
}

fn tract_error(context: &str) -> impl Fn(TractError) -> RuntimeError + '_ {
    move |e| RuntimeError::Engine { engine: "tract", message: format!("{context}: {e:#}") }
}

/// tract's transformer rewrites that the portable graph is shaped for. `into_optimized` does not
/// run them by itself; the validator keeps the KV cache, so `detect_kv_cache` is not used.
const REWRITES: &[&str] = &["detect_apply_rope", "detect_scaled_masked_softmax"];

/// Loads, declutters, applies the transformer rewrites and optimises.
fn optimized(path: &Path) -> TractResult<TypedModel> {
    let mut model = tract_onnx::onnx().model_for_path(path)?.into_typed()?.into_decluttered()?;
    for name in REWRITES {
        match tract_onnx::tract_core::transform::get_transform(name)? {
            Some(transform) => transform.transform(&mut model)?,
            None => tracing::debug!("tract has no `{name}` rewrite in this build"),
        }
    }
    model.into_optimized()
}

impl TractEngine {
    pub fn load(model: &Path, layers: usize, kv_heads: usize, head_dim: usize) -> Result<Self, RuntimeError> {
        let context = model.display().to_string();
        let err = tract_error(&context);
        let model = optimized(model).map_err(&err)?.into_runnable().map_err(&err)?;
        Ok(Self { model, layers, kv_heads, head_dim, past: Vec::new() })
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
        if self.past.is_empty() {
            let empty =
                Tensor::zero::<f32>(&[b, self.kv_heads, 0, self.head_dim]).map_err(&err)?.into_tvalue();
            self.past = vec![empty; 2 * self.layers];
        }
        let mut inputs: TVec<TValue> = tvec![
            i64_value(&batch.input_ids).map_err(&err)?,
            i64_value(&batch.attention_mask).map_err(&err)?,
            i64_value(&batch.position_ids).map_err(&err)?,
        ];
        inputs.extend(self.past.drain(..));
        let mut outputs = self.model.run(inputs).map_err(&err)?;
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
