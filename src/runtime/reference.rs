//! The reference engine: a Qwen2/Qwen3 decoder written with candle ops and driven by the
//! profile, computing in f32. Unlike candle-transformers' models it returns logits for every
//! position of a padded batch, honours `attention_mask` and explicit `position_ids` exactly as
//! transformers does, and keeps a KV cache for generation. Every other engine is judged
//! against it. The loader builds the same model with f16/bf16 or quantized (`QMatMul`) linear
//! weights, on any candle device; activations stay f32 either way.

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};

use super::attention::{LayerCache, Shape, capacity_for};
use super::batch::Batch;
use crate::error::RuntimeError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::kernels::BlockMatrix;
use super::linear::{Linear, SwiGlu};
pub use super::linear::{LoraBranch, Weight};
use super::moe::Moe;
use crate::model::decoder::{LinearDesc, MlpDesc, SwiGluDesc, TensorDesc};
use crate::model::{DecoderDesc, HfConfig, ModelFolder};

type Result<T> = std::result::Result<T, RuntimeError>;

struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    post_norm: Tensor,
    mlp: Mlp,
}

enum Mlp {
    SwiGlu(SwiGlu),
    Moe(Moe),
}

/// The embedding table (f32, or f16/bf16 when loaded so; rows are looked up, then cast) and an
/// embedding LoRA applied on lookup (the unmerged reference only).
pub struct Embedding {
    table: Table,
    lora: Option<LoraBranch>,
}

enum Table {
    Dense(Tensor),
    /// Blocks our kernels read: the looked-up rows are dequantized to f32 (as llama.cpp's
    /// `get_rows`), and a tied head multiplies the same bytes.
    Blocks(Arc<BlockMatrix>),
    /// Blocks in a format only candle multiplies: the looked-up rows are expanded, rounded
    /// through f16 as the resident model's f16 copy of such a table is.
    Candle(Arc<candle_core::quantized::QTensor>),
}

impl Table {
    fn as_head(&self) -> Weight {
        match self {
            Table::Dense(t) => Weight::Dense(t.clone()),
            Table::Blocks(m) => Weight::Blocks(m.clone()),
            Table::Candle(q) => Weight::Quantized(QMatMul::QTensor(q.clone())),
        }
    }
}

impl Embedding {
    /// Rows of `ids` ([n]) in f32: [n, hidden].
    fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        let x = match &self.table {
            Table::Dense(t) => t.index_select(ids, 0)?.to_dtype(DType::F32)?,
            Table::Blocks(m) => {
                let ids = ids.to_vec1::<u32>()?;
                let mut rows = vec![0f32; ids.len() * m.cols()];
                for (&id, row) in ids.iter().zip(rows.chunks_exact_mut(m.cols())) {
                    if id as usize >= m.rows() {
                        return Err(RuntimeError::Input {
                            message: format!(
                                "token id {id} is outside the embedding table ({} rows)",
                                m.rows()
                            ),
                        });
                    }
                    m.dequantize_row(id as usize, row);
                }
                Tensor::from_vec(rows, (ids.len(), m.cols()), &Device::Cpu)?
            }
            Table::Candle(q) => q.embedding(ids)?.to_dtype(DType::F16)?.to_dtype(DType::F32)?,
        };
        Ok(match &self.lora {
            // peft: embedding(ids, Aᵀ) @ Bᵀ · s
            Some(lora) => {
                let rows = lora.a.t()?.contiguous()?.index_select(ids, 0)?;
                (x + (rows.matmul(&lora.b.t()?)? * lora.scale)?)?
            }
            None => x,
        })
    }
}

/// The final norm and the output projection.
pub struct Head {
    norm: Tensor,
    lm_head: Weight,
}

/// Where the model's weights are while it runs: all in memory, or read from their source for
/// each forward pass and released part by part.
trait Parts {
    fn embedding<R>(&self, run: impl FnOnce(&Embedding) -> Result<R>) -> Result<R>;
    fn layer<R>(&self, index: usize, run: impl FnOnce(&Layer) -> Result<R>) -> Result<R>;
    fn head<R>(&self, run: impl FnOnce(&Head) -> Result<R>) -> Result<R>;
}

/// Keys and values of every layer for the tokens seen so far, in buffers [batch, kv_heads,
/// capacity, head_dim] written in place (a step copies only its own tokens in; the buffers
/// double when full), of which the first `len` positions are filled.
/// On the CPU the buffers are plain ones the attention reads in place (see `attention`).
#[derive(Default)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    host: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    pub fn past_len(&self) -> usize {
        self.len
    }

    /// Layer `layer`'s CPU buffers.
    fn host(&mut self, layer: usize) -> &mut LayerCache {
        if self.host.len() <= layer {
            self.host.resize_with(layer + 1, LayerCache::default);
        }
        &mut self.host[layer]
    }

    /// Writes layer `layer`'s new keys and values ([batch, kv_heads, new, head_dim]) after the
    /// `past` cached ones and returns views of all `past + new`.
    fn store(&mut self, layer: usize, past: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, kvh, s, d) = k.dims4()?;
        let needed = past + s;
        let buffer = |capacity: usize, old: Option<&Tensor>| -> Result<Tensor> {
            let t = Tensor::zeros((b, kvh, capacity, d), k.dtype(), k.device())?;
            if let Some(old) = old.filter(|_| past > 0) {
                t.slice_set(&old.narrow(2, 0, past)?.contiguous()?, 2, 0)?;
            }
            Ok(t)
        };
        if self.layers.len() <= layer {
            let capacity = capacity_for(0, needed);
            self.layers.push((buffer(capacity, None)?, buffer(capacity, None)?));
        }
        let (keys, values) = &mut self.layers[layer];
        if keys.dim(2)? < needed {
            let capacity = capacity_for(keys.dim(2)?, needed);
            *keys = buffer(capacity, Some(keys))?;
            *values = buffer(capacity, Some(values))?;
        }
        keys.slice_set(&k.contiguous()?, 2, past)?;
        values.slice_set(&v.contiguous()?, 2, past)?;
        Ok((keys.narrow(2, 0, needed)?, values.narrow(2, 0, needed)?))
    }
}

/// A weight by name: its f32 values and shape, or `None` when the model has no such tensor.
pub type WeightSource<'a> = dyn Fn(&str) -> Result<Option<(Vec<f32>, Vec<usize>)>> + 'a;

/// A weight by name as the model will hold it (taken: each is asked for once), or `None`.
pub type TakeWeight<'a> = dyn FnMut(&str) -> Result<Option<Weight>> + 'a;

/// A weight by name, read again each time it is asked for (a streamed model's source).
pub type ReadWeight<'a> = dyn Fn(&str) -> Result<Option<Weight>> + 'a;

/// What the forward needs of config.json, whatever holds the weights.
struct Arch {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f64,
    inv_freq: Vec<f32>,
    /// Multiplies cos and sin (YaRN's attention factor; 1 otherwise).
    rope_attention: f32,
    /// The CPU cache keeps keys and values in f16 (a quantized GGUF file's, as llama.cpp).
    half_kv: bool,
    vocab_size: usize,
    device: Device,
}

/// A model whose weights are all in memory (the loader's, quantized or not).
pub struct ReferenceModel {
    embed: Embedding,
    layers: Vec<Layer>,
    head: Head,
    arch: Arch,
    pub vocab_size: usize,
}

/// A model read layer by layer from its source on every forward pass: each part's weights are
/// read (and upcast), used for the whole batch and released before the next, so it holds one
/// layer, the embedding or the head at a time, plus activations and the KV cache.
pub struct StreamedModel<'a> {
    source: Box<ReadWeight<'a>>,
    decoder: Arc<DecoderDesc>,
    origin: PathBuf,
    layers: usize,
    arch: Arch,
    pub vocab_size: usize,
}

fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    // transformers: x * rsqrt(mean(x^2) + eps) * weight, in f32; candle's fused op computes
    // x / sqrt(mean(x^2) + eps) * weight (within an ulp of it) in one pass instead of seven.
    Ok(candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps as f32)?)
}

/// A dense weight (norms, biases, the embedding table) on `device`.
fn dense(take: &mut TakeWeight<'_>, name: &str, device: &Device) -> Result<Option<Tensor>> {
    match take(name)? {
        None => Ok(None),
        Some(Weight::Dense(t)) => Ok(Some(t.to_device(device)?)),
        Some(Weight::Blocks(_) | Weight::Quantized(_) | Weight::Adapted { .. }) => {
            Err(RuntimeError::Unsupported {
                message: format!(
                    "tensor `{name}` must be dense (norms, biases and embeddings are not quantized or adapted)"
                ),
            })
        }
    }
}

/// A matrix of a linear layer, dense (moved to `device`) or quantized (already there).
fn matrix(take: &mut TakeWeight<'_>, name: &str, device: &Device) -> Result<Option<Weight>> {
    Ok(match take(name)? {
        Some(Weight::Dense(t)) => Some(Weight::Dense(t.to_device(device)?)),
        other => other,
    })
}

/// How a model's parts are named and asked for: the decoder's description.
struct Assembly<'p> {
    decoder: &'p DecoderDesc,
    origin: &'p Path,
    device: &'p Device,
}

impl Assembly<'_> {
    fn missing(&self, name: &str) -> RuntimeError {
        RuntimeError::MissingTensor { path: self.origin.to_path_buf(), tensor: name.to_string() }
    }

    /// A vector the description may leave out (q/k norms, biases); `Some` must be in the file.
    fn vector(&self, take: &mut TakeWeight<'_>, t: Option<&TensorDesc>) -> Result<Option<Tensor>> {
        match t {
            Some(t) => Ok(dense(take, &t.name, self.device)?.map(|t| t.to_dtype(DType::F32)).transpose()?),
            None => Ok(None),
        }
    }

    fn required(&self, take: &mut TakeWeight<'_>, t: &TensorDesc) -> Result<Tensor> {
        Ok(dense(take, &t.name, self.device)?.ok_or_else(|| self.missing(&t.name))?.to_dtype(DType::F32)?)
    }

    fn linear(&self, take: &mut TakeWeight<'_>, l: &LinearDesc) -> Result<Linear> {
        let weight =
            matrix(take, &l.weight.name, self.device)?.ok_or_else(|| self.missing(&l.weight.name))?;
        let bias = self.vector(take, l.bias.as_ref())?;
        Ok(Linear { weight, bias })
    }

    fn layer(&self, take: &mut TakeWeight<'_>, i: usize) -> Result<Layer> {
        let d = &self.decoder.layers[i];
        let a = &d.attention;
        // The order a streamed source is asked in (norms first, then q/k/v/o, then the MLP).
        let input_norm = self.required(take, &d.input_norm.weight)?;
        let post_norm = self.required(take, &d.post_attention_norm.weight)?;
        let q_norm = self.vector(take, a.q_norm.as_ref().map(|n| &n.weight))?;
        let k_norm = self.vector(take, a.k_norm.as_ref().map(|n| &n.weight))?;
        let (q, k, v, o) = (
            self.linear(take, &a.q)?,
            self.linear(take, &a.k)?,
            self.linear(take, &a.v)?,
            self.linear(take, &a.o)?,
        );
        let swiglu = |take: &mut TakeWeight<'_>, m: &SwiGluDesc| -> Result<SwiGlu> {
            Ok(SwiGlu {
                gate: self.linear(take, &m.gate)?,
                up: self.linear(take, &m.up)?,
                down: self.linear(take, &m.down)?,
            })
        };
        let mlp = match &d.mlp {
            MlpDesc::SwiGlu(m) => Mlp::SwiGlu(swiglu(take, m)?),
            MlpDesc::Moe(m) => Mlp::Moe(Moe {
                router: self.linear(take, &m.router)?,
                experts: m.experts.iter().map(|e| swiglu(take, e)).collect::<Result<_>>()?,
                top_k: m.top_k,
                norm_topk_prob: m.norm_topk_prob,
            }),
        };
        Ok(Layer { input_norm, q, k, v, o, q_norm, k_norm, post_norm, mlp })
    }

    fn embedding(&self, take: &mut TakeWeight<'_>) -> Result<Embedding> {
        let name = &self.decoder.embedding.name;
        match take(name)? {
            Some(Weight::Adapted { base, lora }) => {
                Ok(Embedding { table: Table::Dense(base.to_device(self.device)?), lora: Some(lora) })
            }
            Some(Weight::Dense(t)) => {
                Ok(Embedding { table: Table::Dense(t.to_device(self.device)?), lora: None })
            }
            Some(Weight::Blocks(m)) => Ok(Embedding { table: Table::Blocks(m), lora: None }),
            Some(Weight::Quantized(QMatMul::QTensor(q))) => {
                Ok(Embedding { table: Table::Candle(q), lora: None })
            }
            // candle dequantized it already (CANDLE_DEQUANTIZE_ALL).
            Some(Weight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t))) => {
                Ok(Embedding { table: Table::Dense(t), lora: None })
            }
            None => Err(self.missing(name)),
        }
    }

    /// The head; a tied model without its own head weight reads the embedding's table.
    fn head(
        &self,
        take: &mut TakeWeight<'_>,
        embedding: &mut dyn FnMut(&mut TakeWeight<'_>) -> Result<Weight>,
    ) -> Result<Head> {
        let d = self.decoder;
        let lm_head = match matrix(take, &d.head.name, self.device)? {
            Some(head) => head,
            None if d.tied => embedding(take)?,
            None => return Err(self.missing(&d.head.name)),
        };
        let norm = self.required(take, &d.final_norm.weight)?;
        Ok(Head { norm, lm_head })
    }
}

impl Arch {
    /// The forward's constants from the description (every Qwen layer shares them; a layerless
    /// model has no attention to configure).
    fn new(c: &HfConfig, device: &Device) -> Self {
        let d = &c.decoder;
        let (heads, kv_heads, head_dim, inv_freq, rope_attention) = match d.layers.first() {
            Some(layer) => {
                let a = &layer.attention;
                let rope = crate::model::rope::RopeSpec {
                    theta: a.rope.theta,
                    dim: a.rope.rotary_dim,
                    max_position_embeddings: d.max_positions,
                    scaling: &a.rope.scaling,
                };
                let (inv_freq, factor) = rope.inv_freq_and_attention_factor();
                (a.heads, a.kv_heads, a.head_dim, inv_freq, factor)
            }
            None => {
                let (inv_freq, factor) = c.rope().inv_freq_and_attention_factor();
                (c.num_attention_heads, c.num_key_value_heads, c.head_dim, inv_freq, factor)
            }
        };
        Arch {
            heads,
            kv_heads,
            head_dim,
            eps: d.final_norm.eps,
            inv_freq,
            rope_attention,
            half_kv: false,
            vocab_size: d.vocab,
            device: device.clone(),
        }
    }

    /// cos and sin for `positions` ([batch, seq]): [batch, seq, head_dim / 2], the angles
    /// both halves of a head are rotated by.
    fn rope(&self, positions: &[Vec<i64>]) -> Result<(Tensor, Tensor)> {
        let (b, s) = (positions.len(), positions.first().map_or(0, Vec::len));
        let d = self.head_dim / 2;
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
        let shape = (b, s, d);
        Ok((Tensor::from_vec(cos, shape, &self.device)?, Tensor::from_vec(sin, shape, &self.device)?))
    }

    /// Additive mask [batch, seq, past + seq]: key j is visible to query i when it is a real
    /// token and not in the future. A finite fill keeps fully padded rows free of NaN.
    fn mask(&self, attention_mask: &[Vec<i64>], past: usize, seq: usize) -> Vec<f32> {
        let total = past + seq;
        let mut values = Vec::with_capacity(attention_mask.len() * seq * total);
        for row in attention_mask {
            for i in 0..seq {
                for (j, &m) in row.iter().enumerate().take(total) {
                    values.push(if m != 0 && j <= past + i { 0.0 } else { f32::MIN });
                }
            }
        }
        values
    }

    /// Logits for every position of `batch` ([batch, seq, vocab]), or of the last one only
    /// ([batch, 1, vocab]), extending `cache`. The parts are asked for in order: embedding,
    /// layers, head.
    fn forward(
        &self,
        parts: &impl Parts,
        layer_count: usize,
        batch: &Batch,
        cache: &mut KvCache,
        last_only: bool,
    ) -> Result<Tensor> {
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
        let mut x = parts.embedding(|e| e.lookup(&ids))?.reshape((b, s, ()))?;
        let (cos, sin) = self.rope(&batch.position_ids)?;
        let mask = self.mask(&batch.attention_mask, past, s);
        let host = self.device.is_cpu();
        let mask_tensor =
            if host { None } else { Some(Tensor::from_slice(&mask, (b, 1, 1, s, past + s), &self.device)?) };
        let shape = Shape { batch: b, heads: self.heads, kv_heads: self.kv_heads, head_dim: self.head_dim };
        let (h, kvh, d) = (self.heads, self.kv_heads, self.head_dim);
        let scale = 1.0 / (d as f64).sqrt();
        for i in 0..layer_count {
            x = parts.layer(i, |layer| {
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
                // [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]: transformers' q * cos +
                // rotate_half(q) * sin, in one pass (the same products and sums).
                let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
                let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
                let attn = match &mask_tensor {
                    None => {
                        let values =
                            |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
                        let layer_cache = cache.host(i);
                        layer_cache.store(shape, past, &values(&k)?, &values(&v)?, self.half_kv);
                        let out = layer_cache.attend(shape, past + s, &values(&q)?, &mask, scale as f32);
                        Tensor::from_vec(out, (b * s, h * d), &self.device)?
                    }
                    Some(mask) => {
                        let (k, v) = cache.store(i, past, &k, &v)?;
                        // GQA: query head n reads kv head n / (h / kvh), as transformers'
                        // repeat_kv does; the query heads of one kv head are multiplied as one
                        // [rep · s] block, so the keys and values are never repeated.
                        let (rep, total) = (h / kvh, past + s);
                        let grouped = q.reshape((b, kvh, rep * s, d))?;
                        let scores = (grouped.matmul(&k.t()?)? * scale)?
                            .reshape((b, kvh, rep, s, total))?
                            .broadcast_add(mask)?;
                        let probs =
                            candle_nn::ops::softmax_last_dim(&scores)?.reshape((b, kvh, rep * s, total))?;
                        probs.matmul(&v)?.reshape((b, h, s, d))?.transpose(1, 2)?.reshape((b * s, h * d))?
                    }
                };
                let x = (&x + layer.o.forward(&attn)?.reshape((b, s, ()))?)?;
                let normed = rms_norm(&x, &layer.post_norm, self.eps)?.reshape((b * s, ()))?;
                let mlp = match &layer.mlp {
                    Mlp::SwiGlu(m) => m.forward(&normed)?,
                    Mlp::Moe(m) => m.forward(&normed)?,
                };
                Ok((x + mlp.reshape((b, s, ()))?)?)
            })?;
        }
        cache.len = past + s;
        let (x, s) = if last_only { (x.narrow(1, s - 1, 1)?, 1) } else { (x, s) };
        let logits = parts.head(|head| {
            let x = rms_norm(&x, &head.norm, self.eps)?.reshape((b * s, ()))?;
            Ok(head.lm_head.matmul_t(&x)?.reshape((b, s, self.vocab_size))?)
        })?;
        Ok(logits.to_dtype(DType::F32)?)
    }
}

impl Parts for ReferenceModel {
    fn embedding<R>(&self, run: impl FnOnce(&Embedding) -> Result<R>) -> Result<R> {
        run(&self.embed)
    }

    fn layer<R>(&self, index: usize, run: impl FnOnce(&Layer) -> Result<R>) -> Result<R> {
        run(&self.layers[index])
    }

    fn head<R>(&self, run: impl FnOnce(&Head) -> Result<R>) -> Result<R> {
        run(&self.head)
    }
}

impl ReferenceModel {
    /// Loads every weight of `folder` as f32 on the CPU.
    pub fn load(folder: &ModelFolder) -> Result<Self> {
        Self::load_with(folder, &|name| read_f32_released(folder, name))
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
        Self::assemble_from(&folder.config, &folder.dir, device, take)
    }

    /// Like [`ReferenceModel::assemble`] for a model described by `config` rather than a
    /// folder (a GGUF file); `origin` names it in errors.
    pub fn assemble_from(
        c: &HfConfig,
        origin: &Path,
        device: &Device,
        take: &mut TakeWeight<'_>,
    ) -> Result<Self> {
        let assembly = Assembly { decoder: &c.decoder, origin, device };
        let layers = (0..c.num_hidden_layers).map(|i| assembly.layer(take, i)).collect::<Result<Vec<_>>>()?;
        let embed = assembly.embedding(take)?;
        let head = assembly.head(take, &mut |_| Ok(embed.table.as_head()))?;
        Ok(ReferenceModel { embed, layers, head, arch: Arch::new(c, device), vocab_size: c.vocab_size })
    }

    pub fn device(&self) -> &Device {
        &self.arch.device
    }

    /// Keys and values cached in f16 on the CPU (a quantized GGUF file's, as llama.cpp keeps them).
    pub fn with_half_kv(mut self, half: bool) -> Self {
        self.arch.half_kv = half;
        self
    }

    /// Logits for every position of `batch` ([batch, seq, vocab]), extending `cache`.
    pub fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        self.arch.forward(self, self.layers.len(), batch, cache, false)
    }

    /// Logits of the last position of each row only ([batch, 1, vocab]), extending `cache`:
    /// what generation needs, without a [batch, seq, vocab] tensor for a long prompt.
    pub fn forward_last(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        self.arch.forward(self, self.layers.len(), batch, cache, true)
    }
}

/// `name` of `folder` in f32, its mapped pages dropped from the RSS once copied.
pub fn read_f32_released(folder: &ModelFolder, name: &str) -> Result<Option<(Vec<f32>, Vec<usize>)>> {
    let Some((file, info)) = folder.tensor(name) else { return Ok(None) };
    let mut values = Vec::new();
    file.read_f32_released(info, &mut values)?;
    Ok(Some((values, info.shape.clone())))
}

impl<'a> StreamedModel<'a> {
    /// A model of `folder`'s architecture whose weights `source` reads on demand.
    pub fn new(folder: &ModelFolder, source: Box<ReadWeight<'a>>) -> Self {
        Self::from_parts(&folder.config, &folder.dir, source)
    }

    /// A model described by `profile` and `config` (a GGUF file's); `origin` names it in errors.
    pub fn from_parts(c: &HfConfig, origin: &Path, source: Box<ReadWeight<'a>>) -> Self {
        StreamedModel {
            source,
            decoder: c.decoder.clone(),
            origin: origin.to_path_buf(),
            layers: c.num_hidden_layers,
            arch: Arch::new(c, &Device::Cpu),
            vocab_size: c.vocab_size,
        }
    }

    /// `folder`'s own weights in f32, read layer by layer.
    pub fn of_folder(folder: &'a ModelFolder) -> Self {
        let device = Device::Cpu;
        Self::new(
            folder,
            Box::new(move |name| {
                let Some((values, shape)) = read_f32_released(folder, name)? else { return Ok(None) };
                Ok(Some(Weight::Dense(Tensor::from_vec(values, shape.as_slice(), &device)?)))
            }),
        )
    }

    /// Keys and values cached in f16 on the CPU (see [`ReferenceModel::with_half_kv`]).
    pub fn with_half_kv(mut self, half: bool) -> Self {
        self.arch.half_kv = half;
        self
    }

    /// Every weight name the model asks its source for, in the order of a forward pass.
    pub fn weight_names(decoder: &DecoderDesc) -> Vec<String> {
        let mut names = vec![decoder.embedding.name.clone()];
        names.extend(decoder.layer_tensors().iter().map(|t| t.name.clone()));
        names.extend([decoder.head.name.clone(), decoder.final_norm.weight.name.clone()]);
        names
    }

    fn assembly(&self) -> Assembly<'_> {
        Assembly { decoder: &self.decoder, origin: &self.origin, device: &self.arch.device }
    }

    pub fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        self.arch.forward(self, self.layers, batch, cache, false)
    }

    pub fn forward_last(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        self.arch.forward(self, self.layers, batch, cache, true)
    }
}

impl Parts for StreamedModel<'_> {
    fn embedding<R>(&self, run: impl FnOnce(&Embedding) -> Result<R>) -> Result<R> {
        run(&self.assembly().embedding(&mut |name| (self.source)(name))?)
    }

    fn layer<R>(&self, index: usize, run: impl FnOnce(&Layer) -> Result<R>) -> Result<R> {
        run(&self.assembly().layer(&mut |name| (self.source)(name), index)?)
    }

    fn head<R>(&self, run: impl FnOnce(&Head) -> Result<R>) -> Result<R> {
        let assembly = self.assembly();
        let head = assembly.head(&mut |name| (self.source)(name), &mut |take| {
            Ok(assembly.embedding(take)?.table.as_head())
        })?;
        run(&head)
    }
}

/// A model as an engine keeps its own cache between steps.
pub trait Forward {
    fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor>;
    fn forward_last(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor>;
}

impl Forward for ReferenceModel {
    fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        ReferenceModel::forward(self, batch, cache)
    }
    fn forward_last(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        ReferenceModel::forward_last(self, batch, cache)
    }
}

impl Forward for StreamedModel<'_> {
    fn forward(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        StreamedModel::forward(self, batch, cache)
    }
    fn forward_last(&self, batch: &Batch, cache: &mut KvCache) -> Result<Tensor> {
        StreamedModel::forward_last(self, batch, cache)
    }
}

/// The reference model as an engine: it keeps its own cache between steps.
pub struct ReferenceEngine<'m, M: Forward = ReferenceModel> {
    pub model: &'m M,
    cache: KvCache,
}

impl<'m, M: Forward> ReferenceEngine<'m, M> {
    pub fn new(model: &'m M) -> Self {
        Self { model, cache: KvCache::default() }
    }
}

impl<M: Forward> super::engine::DecoderEngine for ReferenceEngine<'_, M> {
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
