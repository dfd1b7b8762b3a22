//! The linear pieces every decoder layer is made of: a weight as a model holds it (dense,
//! quantized blocks, or a base with an unmerged LoRA branch), a projection with its bias, and
//! the SwiGLU MLP the dense layers and every expert compute.

use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Module, Tensor};

use super::kernels::BlockMatrix;
use crate::error::RuntimeError;

type Result<T> = std::result::Result<T, RuntimeError>;

/// A weight as the model holds it: a dense tensor (f32, f16 or bf16), ggml blocks multiplied by
/// our kernels (CPU) or by candle's (`QMatMul`: other devices, other formats), or an f32 base
/// weight with a LoRA side branch that is not merged into it.
pub enum Weight {
    Dense(Tensor),
    Blocks(Arc<BlockMatrix>),
    Quantized(QMatMul),
    Adapted { base: Tensor, lora: LoraBranch },
}

/// A LoRA update applied beside its base weight, as peft's forward does before
/// `merge_and_unload`: `y = W x + s · (B (A x) + b_B)`, or with DoRA
/// `y = m / ‖W + s·B A‖ ⊙ (W x + s · B (A x))`. For an embedding, `A` is [r, vocab] and
/// `B` [hidden, r], and the rows of `Aᵀ` are looked up by token.
pub struct LoraBranch {
    /// [r, in] (embedding: [r, vocab]), f32.
    pub a: Tensor,
    /// [out, r] (embedding: [hidden, r]), f32.
    pub b: Tensor,
    /// `lora_B.bias` ([out]), with `lora_bias = true`.
    pub b_bias: Option<Tensor>,
    pub scale: f64,
    /// DoRA: magnitude over the row norm of the adapted weight ([out]).
    pub dora_scale: Option<Tensor>,
}

impl LoraBranch {
    /// `s · (B (A x) + b_B)` for x of shape [rows, in].
    pub(super) fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let low = x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)?;
        let low = match &self.b_bias {
            Some(bias) => low.broadcast_add(bias)?,
            None => low,
        };
        Ok((low * self.scale)?)
    }
}

impl Weight {
    /// `x @ W^T` for x of shape [rows, in] in f32; f16/bf16 weights multiply in their own dtype.
    pub(super) fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Weight::Dense(w) if w.dtype() == DType::F32 => x.matmul(&w.t()?)?,
            Weight::Dense(w) => x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32)?,
            Weight::Blocks(m) => {
                let (n, _) = x.dims2()?;
                let values = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                Tensor::from_vec(m.matmul_t(&values, n), (n, m.rows()), x.device())?
            }
            Weight::Quantized(q) => q.forward(x)?,
            Weight::Adapted { base, lora } => {
                let y = (x.matmul(&base.t()?)? + lora.delta(x)?)?;
                match &lora.dora_scale {
                    Some(m) => y.broadcast_mul(m)?,
                    None => y,
                }
            }
        })
    }
}

pub(super) struct Linear {
    pub(super) weight: Weight,
    pub(super) bias: Option<Tensor>,
}

impl Linear {
    /// `x @ W^T (+ b)` for x of shape [rows, in].
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.matmul_t(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

/// `down(silu(gate(x)) * up(x))`.
pub(super) struct SwiGlu {
    pub(super) gate: Linear,
    pub(super) up: Linear,
    pub(super) down: Linear,
}

impl SwiGlu {
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.down.forward(&(self.gate.forward(x)?.silu()? * self.up.forward(x)?)?)
    }
}
