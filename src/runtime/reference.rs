//! The reference engine: a Qwen2/Qwen3 decoder written with candle ops and driven by the
//! profile, computing in f32. Unlike candle-transformers' models it returns logits for every
//! position of a padded batch, honours `attention_mask` and explicit `position_ids` exactly as
//! transformers does, and keeps a KV cache for generation. Every other engine is judged
//! against it.

use candle_core::{D, DType, Device, Tensor};

use super::batch::Batch;
use crate::error::RuntimeError;
use crate::model::ModelFolder;
use crate::profile::LayerTensor;

type Result<T> = std::result::Result<T, RuntimeError>;

struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// `x @ W^T (+ b)` for x of shape [rows, in].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.weight.t()?)?;
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

pub struct ReferenceModel {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Tensor,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    inv_freq: Vec<f32>,
    pub vocab_size: usize,
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

impl ReferenceModel {
    /// Loads every weight of `folder` as f32 on the CPU.
    pub fn load(folder: &ModelFolder) -> Result<Self> {
        Self::load_with(folder, &|name| {
            let Some((file, info)) = folder.tensor(name) else { return Ok(None) };
            let mut values = Vec::new();
            file.read_f32(info, &mut values)?;
            Ok(Some((values, info.shape.clone())))
        })
    }

    /// Loads the architecture of `folder` with weights from `weights` (name -> f32 values and
    /// shape), e.g. a merge computed in memory.
    pub fn load_with(folder: &ModelFolder, weights: &WeightSource<'_>) -> Result<Self> {
        let device = Device::Cpu;
        let tensor = |name: &str| -> Result<Tensor> {
            let (values, shape) = weights(name)?.ok_or_else(|| RuntimeError::MissingTensor {
                path: folder.dir.clone(),
                tensor: name.to_string(),
            })?;
            Ok(Tensor::from_vec(values, shape.as_slice(), &device)?)
        };
        let profile = folder.profile;
        let c = &folder.config;
        let role = |layer: usize, role: LayerTensor| -> Result<Option<Tensor>> {
            profile.layer_tensor(layer, role).map(|name| tensor(&name)).transpose()
        };
        let required = |layer: usize, r: LayerTensor| -> Result<Tensor> {
            role(layer, r)?.ok_or_else(|| RuntimeError::Unsupported {
                message: format!("the {} profile has no {r:?} tensor", profile.name),
            })
        };
        let linear = |layer: usize, w: LayerTensor, b: Option<LayerTensor>| -> Result<Linear> {
            Ok(Linear {
                weight: required(layer, w)?,
                bias: match b {
                    Some(b) => role(layer, b)?,
                    None => None,
                },
            })
        };
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            layers.push(Layer {
                input_norm: required(i, LayerTensor::InputNorm)?,
                q: linear(i, LayerTensor::QProj, Some(LayerTensor::QBias))?,
                k: linear(i, LayerTensor::KProj, Some(LayerTensor::KBias))?,
                v: linear(i, LayerTensor::VProj, Some(LayerTensor::VBias))?,
                o: linear(i, LayerTensor::OProj, None)?,
                q_norm: role(i, LayerTensor::QNorm)?,
                k_norm: role(i, LayerTensor::KNorm)?,
                post_norm: required(i, LayerTensor::PostAttentionNorm)?,
                gate: linear(i, LayerTensor::GateProj, None)?,
                up: linear(i, LayerTensor::UpProj, None)?,
                down: linear(i, LayerTensor::DownProj, None)?,
            });
        }
        let embed = tensor(profile.tensors.embed)?;
        let lm_head = match weights(profile.tensors.lm_head)? {
            Some((values, shape)) => Tensor::from_vec(values, shape.as_slice(), &device)?,
            None if c.tie_word_embeddings => embed.clone(),
            None => {
                return Err(RuntimeError::MissingTensor {
                    path: folder.dir.clone(),
                    tensor: profile.tensors.lm_head.to_string(),
                });
            }
        };
        // As transformers computes it: 1 / theta^(2i/d) in f32.
        let inv_freq = (0..c.head_dim / 2)
            .map(|i| 1.0 / (c.rope_theta as f32).powf((2 * i) as f32 / c.head_dim as f32))
            .collect();
        Ok(ReferenceModel {
            embed,
            layers,
            norm: tensor(profile.tensors.final_norm)?,
            lm_head,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            eps: c.rms_norm_eps,
            inv_freq,
            vocab_size: c.vocab_size,
        })
    }

    /// cos and sin for `positions` ([batch, seq]): [batch, 1, seq, head_dim].
    fn rope(&self, positions: &[Vec<i64>]) -> Result<(Tensor, Tensor)> {
        let (b, s) = (positions.len(), positions.first().map_or(0, Vec::len));
        let d = self.head_dim;
        let mut cos = Vec::with_capacity(b * s * d);
        let mut sin = Vec::with_capacity(b * s * d);
        for row in positions {
            for &p in row {
                // transformers' emb = cat(freqs, freqs).
                for _ in 0..2 {
                    for f in &self.inv_freq {
                        let angle = p as f32 * f;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
            }
        }
        let shape = (b, 1, s, d);
        Ok((Tensor::from_vec(cos, shape, &Device::Cpu)?, Tensor::from_vec(sin, shape, &Device::Cpu)?))
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
        Ok(Tensor::from_vec(values, (attention_mask.len(), 1, seq, total), &Device::Cpu)?)
    }

    /// Logits for every position of `batch` ([batch, seq, vocab]), extending `cache`.
    pub fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
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
        let ids = Tensor::from_vec(ids, b * s, &Device::Cpu)?;
        let mut x = self.embed.index_select(&ids, 0)?.reshape((b, s, ()))?;
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
        let x = rms_norm(&x, &self.norm, self.eps)?.reshape((b * s, ()))?;
        let logits = x.matmul(&self.lm_head.t()?)?.reshape((b, s, self.vocab_size))?;
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
        let logits = self.model.forward(batch, &mut self.cache)?;
        let (b, s, vocab) = logits.dims3()?;
        Ok(super::engine::Logits { values: logits.flatten_all()?.to_vec1::<f32>()?, batch: b, seq: s, vocab })
    }

    fn reset(&mut self) {
        self.cache = KvCache::default();
    }
}
