//! The reference engine: a Qwen2/Qwen3 decoder written with candle ops and driven by the
//! profile, computing in f32. Unlike candle-transformers' models it returns logits for every
//! position of a padded batch, honours `attention_mask` and explicit `position_ids` exactly as
//! transformers does, and keeps a KV cache for generation. Every other engine is judged
//! against it. The loader builds the same model with f16/bf16 or quantized (`QMatMul`) linear
//! weights, on any candle device; activations stay f32 either way.

use candle_core::quantized::QMatMul;
use candle_core::{D, DType, Device, Module, Tensor};

use super::batch::Batch;
use crate::error::RuntimeError;
use std::path::Path;

use crate::model::{HfConfig, ModelFolder};
use crate::profile::{LayerTensor, Profile};

type Result<T> = std::result::Result<T, RuntimeError>;

/// A weight as the model holds it: a dense tensor (f32, f16 or bf16), quantized blocks, or an
/// f32 base weight with a LoRA side branch that is not merged into it.
pub enum Weight {
    Dense(Tensor),
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
    fn delta(&self, x: &Tensor) -> Result<Tensor> {
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
    fn matmul_t(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Weight::Dense(w) if w.dtype() == DType::F32 => x.matmul(&w.t()?)?,
            Weight::Dense(w) => x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32)?,
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

struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// `x @ W^T (+ b)` for x of shape [rows, in].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.weight.matmul_t(x)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// Keys and values of every layer for the tokens seen so far: [batch, kv_heads, past, head_dim].
#[derive(Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
}

impl KvCache {
    pub fn past_len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }
}

/// A weight by name: its f32 values and shape, or `None` when the model has no such tensor.
pub type WeightSource<'a> = dyn Fn(&str) -> Result<Option<(Vec<f32>, Vec<usize>)>> + 'a;

/// A weight by name as the model will hold it (taken: each is asked for once), or `None`.
pub type TakeWeight<'a> = dyn FnMut(&str) -> Result<Option<Weight>> + 'a;

pub struct ReferenceModel {
    /// The embedding table (f32, or f16/bf16 when loaded so); rows are looked up, then cast.
    embed: Tensor,
    /// An embedding LoRA applied on lookup (the unmerged reference only).
    embed_lora: Option<LoraBranch>,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Weight,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    rope_attention: f32,
    pub vocab_size: usize,
    device: Device,
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    // transformers: x * rsqrt(mean(x^2) + eps) * weight, in f32.
    let variance = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_mul(&(variance + eps)?.sqrt()?.recip()?)?.broadcast_mul(weight)?)
}

/// `rotate_half`: [x1, x2] -> [-x2, x1] over the last dimension.
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let x1 = x.narrow(D::Minus1, 0, half)?;
    let x2 = x.narrow(D::Minus1, half, half)?;
    Ok(Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?)
}

/// A dense weight (norms, biases, the embedding table) on `device`.
fn dense(take: &mut TakeWeight<'_>, name: &str, device: &Device) -> Result<Option<Tensor>> {
    match take(name)? {
        None => Ok(None),
        Some(Weight::Dense(t)) => Ok(Some(t.to_device(device)?)),
        Some(Weight::Quantized(_) | Weight::Adapted { .. }) => Err(RuntimeError::Unsupported {
            message: format!(
                "tensor `{name}` must be dense (norms, biases and embeddings are not quantized or adapted)"
            ),
        }),
    }
}

/// A matrix of a linear layer, dense (moved to `device`) or quantized (already there).
fn matrix(take: &mut TakeWeight<'_>, name: &str, device: &Device) -> Result<Option<Weight>> {
    Ok(match take(name)? {
        Some(Weight::Dense(t)) => Some(Weight::Dense(t.to_device(device)?)),
        other => other,
    })
}

impl ReferenceModel {
    /// Loads every weight of `folder` as f32 on the CPU.
    pub fn load(folder: &ModelFolder) -> Result<Self> {
        Self::load_with(folder, &|name| {
            let Some((file, info)) = folder.tensor(name) else { return Ok(None) };
            let mut values = Vec::new();
            file.read_f32(info, &mut values)?;
            // The f32 copy is what the model keeps: drop the mapped pages from the RSS.
            file.release(info, 0, info.byte_len());
            Ok(Some((values, info.shape.clone())))
        })
    }

    /// Loads the architecture of `folder` with weights from `weights` (name -> f32 values and
    /// shape), e.g. a merge computed in memory.
    pub fn load_with(folder: &ModelFolder, weights: &WeightSource<'_>) -> Result<Self> {
        let device = Device::Cpu;
        Self::assemble(folder, &device, &mut |name| {
            let Some((values, shape)) = weights(name)? else { return Ok(None) };
            Ok(Some(Weight::Dense(Tensor::from_vec(values, shape.as_slice(), &device)?)))
        })
    }

    /// Builds the model of `folder`'s architecture from weights handed over one by one (dense
    /// or quantized), on `device`. Norms, biases and the embedding table must be dense.
    pub fn assemble(folder: &ModelFolder, device: &Device, take: &mut TakeWeight<'_>) -> Result<Self> {
        Self::assemble_from(folder.profile, &folder.config, &folder.dir, device, take)
    }

    /// Like [`ReferenceModel::assemble`] for a model described by `profile` and `config`
    /// rather than a folder (a GGUF file); `origin` names it in errors.
    pub fn assemble_from(
        profile: &Profile,
        c: &HfConfig,
        origin: &Path,
        device: &Device,
        take: &mut TakeWeight<'_>,
    ) -> Result<Self> {
        let missing =
            |name: &str| RuntimeError::MissingTensor { path: origin.to_path_buf(), tensor: name.to_string() };
        let named = |layer: usize, r: LayerTensor| -> Result<String> {
            profile.layer_tensor(layer, r).ok_or_else(|| RuntimeError::Unsupported {
                message: format!("the {} profile has no {r:?} tensor", profile.name),
            })
        };
        // Optional per-layer vectors (q/k norms, biases): absent from the profile or the file.
        let vector = |take: &mut TakeWeight<'_>, layer: usize, r: LayerTensor| -> Result<Option<Tensor>> {
            match profile.layer_tensor(layer, r) {
                Some(n) => Ok(dense(take, &n, device)?.map(|t| t.to_dtype(DType::F32)).transpose()?),
                None => Ok(None),
            }
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let required = |take: &mut TakeWeight<'_>, r: LayerTensor| -> Result<Tensor> {
                let n = named(i, r)?;
                Ok(dense(take, &n, device)?.ok_or_else(|| missing(&n))?.to_dtype(DType::F32)?)
            };
            let input_norm = required(take, LayerTensor::InputNorm)?;
            let post_norm = required(take, LayerTensor::PostAttentionNorm)?;
            let q_norm = vector(take, i, LayerTensor::QNorm)?;
            let k_norm = vector(take, i, LayerTensor::KNorm)?;
            let linear =
                |take: &mut TakeWeight<'_>, r: LayerTensor, bias: Option<LayerTensor>| -> Result<Linear> {
                    let n = named(i, r)?;
                    let weight = matrix(take, &n, device)?.ok_or_else(|| missing(&n))?;
                    let bias = match bias {
                        Some(b) => vector(take, i, b)?,
                        None => None,
                    };
                    Ok(Linear { weight, bias })
                };
            layers.push(Layer {
                input_norm,
                q: linear(take, LayerTensor::QProj, Some(LayerTensor::QBias))?,
                k: linear(take, LayerTensor::KProj, Some(LayerTensor::KBias))?,
                v: linear(take, LayerTensor::VProj, Some(LayerTensor::VBias))?,
                o: linear(take, LayerTensor::OProj, None)?,
                q_norm,
                k_norm,
                post_norm,
                gate: linear(take, LayerTensor::GateProj, None)?,
                up: linear(take, LayerTensor::UpProj, None)?,
                down: linear(take, LayerTensor::DownProj, None)?,
            });
        }
        let (embed, embed_lora) = match take(profile.tensors.embed)? {
            Some(Weight::Adapted { base, lora }) => (base.to_device(device)?, Some(lora)),
            Some(Weight::Dense(t)) => (t.to_device(device)?, None),
            Some(Weight::Quantized(_)) => {
                return Err(RuntimeError::Unsupported {
                    message: format!(
                        "tensor `{}` must be dense (the embedding is looked up)",
                        profile.tensors.embed
                    ),
                });
            }
            None => return Err(missing(profile.tensors.embed)),
        };
        let lm_head = match matrix(take, profile.tensors.lm_head, device)? {
            Some(head) => head,
            None if c.tie_word_embeddings => Weight::Dense(embed.clone()),
            None => return Err(missing(profile.tensors.lm_head)),
        };
        let norm = dense(take, profile.tensors.final_norm, device)?
            .ok_or_else(|| missing(profile.tensors.final_norm))?
            .to_dtype(DType::F32)?;
        let (inv_freq, rope_attention) = c.rope().inv_freq_and_attention_factor();
        Ok(ReferenceModel {
            embed,
            embed_lora,
            layers,
            norm,
            lm_head,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            eps: c.rms_norm_eps,
            inv_freq,
            rope_attention,
            vocab_size: c.vocab_size,
            device: device.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// cos and sin for `positions` ([batch, seq]): [batch, 1, seq, head_dim].
    fn rope(&self, positions: &[Vec<i64>]) -> Result<(Tensor, Tensor)> {
        let (b, s) = (positions.len(), positions.first().map_or(0, Vec::len));
        let d = self.head_dim;
        let mut cos = Vec::with_capacity(b * s * d);
        let mut sin = Vec::with_capacity(b * s * d);
        for &p in positions.iter().flatten() {
            crate::model::rope::push_position(
                p as f32,
                &self.inv_freq,
                self.rope_attention,
                &mut cos,
                &mut sin,
            );
        }
        let shape = (b, 1, s, d);
        Ok((Tensor::from_vec(cos, shape, &self.device)?, Tensor::from_vec(sin, shape, &self.device)?))
    }

    /// Additive mask [batch, 1, seq, past + seq]: key j is visible to query i when it is a real
    /// token and not in the future. A finite fill keeps fully padded rows free of NaN.
    fn mask(&self, attention_mask: &[Vec<i64>], past: usize, seq: usize) -> Result<Tensor> {
        let total = past + seq;
        let mut values = Vec::with_capacity(attention_mask.len() * seq * total);
        for row in attention_mask {
            for i in 0..seq {
                for (j, &m) in row.iter().enumerate().take(total) {
                    values.push(if m != 0 && j <= past + i { 0.0 } else { f32::MIN });
                }
            }
        }
        Ok(Tensor::from_vec(values, (attention_mask.len(), 1, seq, total), &self.device)?)
    }

    /// Logits for every position of `batch` ([batch, seq, vocab]), extending `cache`.
    pub fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_positions(batch, cache, false)
    }

    /// Logits of the last position of each row only ([batch, 1, vocab]), extending `cache`:
    /// what generation needs, without a [batch, seq, vocab] tensor for a long prompt.
    pub fn forward_last(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        self.forward_positions(batch, cache, true)
    }

    fn forward_positions(&self, batch: &Batch, cache: &mut KvCache, last_only: bool) -> Result<Tensor> {
        let (b, s) = batch.dims();
        let past = cache.past_len();
        if batch.attention_mask.iter().any(|m| m.len() != past + s) {
            return Err(RuntimeError::Input {
                message: format!("attention_mask must cover past ({past}) + new ({s}) tokens"),
            });
        }
        let ids: Vec<u32> = batch.input_ids.iter().flatten().map(|&t| t as u32).collect();
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(RuntimeError::Input {
                message: format!("token id {bad} is outside the vocabulary ({})", self.vocab_size),
            });
        }
        let ids = Tensor::from_vec(ids, b * s, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?.to_dtype(DType::F32)?;
        if let Some(lora) = &self.embed_lora {
            // peft: embedding(ids, Aᵀ) @ Bᵀ · s
            let rows = lora.a.t()?.contiguous()?.index_select(&ids, 0)?;
            x = (x + (rows.matmul(&lora.b.t()?)? * lora.scale)?)?;
        }
        let mut x = x.reshape((b, s, ()))?;
        let (cos, sin) = self.rope(&batch.position_ids)?;
        let mask = self.mask(&batch.attention_mask, past, s)?;
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let scale = 1.0 / (d as f64).sqrt();
        let fresh = cache.layers.is_empty();
        for (i, layer) in self.layers.iter().enumerate() {
            let normed = rms_norm(&x, &layer.input_norm, self.eps)?.reshape((b * s, ()))?;
            let heads = |t: Tensor, n: usize, norm: &Option<Tensor>| -> Result<Tensor> {
                let t = t.reshape((b, s, n, d))?;
                let t = match norm {
                    Some(w) => rms_norm(&t, w, self.eps)?,
                    None => t,
                };
                Ok(t.transpose(1, 2)?.contiguous()?)
            };
            let q = heads(layer.q.forward(&normed)?, h, &layer.q_norm)?;
            let k = heads(layer.k.forward(&normed)?, kvh, &layer.k_norm)?;
            let v = heads(layer.v.forward(&normed)?, kvh, &None)?;
            let q = (q.broadcast_mul(&cos)? + rotate_half(&q)?.broadcast_mul(&sin)?)?;
            let k = (k.broadcast_mul(&cos)? + rotate_half(&k)?.broadcast_mul(&sin)?)?;
            let (k, v) = if fresh {
                (k, v)
            } else {
                let (pk, pv) = &cache.layers[i];
                (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?)
            };
            if fresh {
                cache.layers.push((k.clone(), v.clone()));
            } else {
                cache.layers[i] = (k.clone(), v.clone());
            }
            // GQA: query head n reads kv head n / (h / kvh), as transformers' repeat_kv does.
            let rep = h / kvh;
            let expand = |t: &Tensor| -> Result<Tensor> {
                let (bb, _, t_len, dd) = t.dims4()?;
                Ok(t.unsqueeze(2)?.expand((bb, kvh, rep, t_len, dd))?.reshape((bb, h, t_len, dd))?)
            };
            let (k, v) = (expand(&k)?, expand(&v)?);
            let scores = (q.matmul(&k.t()?.contiguous()?)? * scale)?.broadcast_add(&mask)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let attn = probs.matmul(&v.contiguous()?)?.transpose(1, 2)?.reshape((b * s, h * d))?;
            x = (x + layer.o.forward(&attn)?.reshape((b, s, ()))?)?;
            let normed = rms_norm(&x, &layer.post_norm, self.eps)?.reshape((b * s, ()))?;
            let mlp =
                layer.down.forward(&(layer.gate.forward(&normed)?.silu()? * layer.up.forward(&normed)?)?)?;
            x = (x + mlp.reshape((b, s, ()))?)?;
        }
        let (x, s) = if last_only { (x.narrow(1, s - 1, 1)?, 1) } else { (x, s) };
        let x = rms_norm(&x, &self.norm, self.eps)?.reshape((b * s, ()))?;
        let logits = self.lm_head.matmul_t(&x)?.reshape((b, s, self.vocab_size))?;
        Ok(logits.to_dtype(DType::F32)?)
    }
}

/// The reference model as an engine: it keeps its own cache between steps.
pub struct ReferenceEngine<'m> {
    pub model: &'m ReferenceModel,
    cache: KvCache,
}

impl<'m> ReferenceEngine<'m> {
    pub fn new(model: &'m ReferenceModel) -> Self {
        Self { model, cache: KvCache::default() }
    }
}

impl super::engine::DecoderEngine for ReferenceEngine<'_> {
    fn name(&self) -> &'static str {
        "candle"
    }

    fn step(&mut self, batch: &Batch) -> Result<super::engine::Logits> {
        to_logits(self.model.forward(batch, &mut self.cache)?)
    }

    fn step_last(&mut self, batch: &Batch) -> Result<super::engine::Logits> {
        to_logits(self.model.forward_last(batch, &mut self.cache)?)
    }

    fn reset(&mut self) {
        self.cache = KvCache::default();
    }
}

fn to_logits(logits: Tensor) -> Result<super::engine::Logits> {
    let (b, s, vocab) = logits.dims3()?;
    Ok(super::engine::Logits { values: logits.flatten_all()?.to_vec1::<f32>()?, batch: b, seq: s, vocab })
}
