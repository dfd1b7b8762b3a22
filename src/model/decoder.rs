//! The decoder as data: what every layer computes and which tensors it reads, built once from
//! the profile and config.json (after `features` honoured or refused every key). The candle
//! reference, the ONNX emitters, the GGUF writer and reader, the loader, the quantization report
//! and the layout check interpret this description; none of them classifies tensor names.

use std::collections::HashMap;

use serde::Serialize;

use super::rope::RopeScaling;
use crate::error::ProfileError;
use crate::profile::{LayerTensor, Profile};

/// What a tensor is to the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The token embedding table (also the output head when tied).
    Embedding,
    /// The output head's own matrix.
    Head,
    /// A norm's weight vector.
    Norm,
    /// The bias vector of a projection in layer `layer`.
    Bias { layer: usize, kind: Projection },
    /// A projection's matrix in layer `layer`.
    Projection { layer: usize, kind: Projection },
}

/// The projections of a layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Projection {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Projection {
    pub fn in_attention(self) -> bool {
        matches!(self, Projection::Q | Projection::K | Projection::V | Projection::O)
    }
}

/// One tensor the decoder reads: its Hugging Face name, llama.cpp's name, shape and role.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorDesc {
    pub name: String,
    pub gguf: String,
    pub shape: Vec<usize>,
    pub role: Role,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// `x / sqrt(mean(x²) + eps) * weight`, computed in f32.
    Rms,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NormDesc {
    pub kind: NormKind,
    pub eps: f64,
    pub weight: TensorDesc,
}

/// `y = x W^T (+ b)`, W of [outputs, inputs].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinearDesc {
    pub weight: TensorDesc,
    pub bias: Option<TensorDesc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RopeDesc {
    pub theta: f64,
    pub scaling: RopeScaling,
    /// Leading dimensions of each head that rotate (the whole head in Qwen).
    pub rotary_dim: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttentionDesc {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub q: LinearDesc,
    pub k: LinearDesc,
    pub v: LinearDesc,
    pub o: LinearDesc,
    /// Qwen3's per-head RMSNorm of q and k before RoPE.
    pub q_norm: Option<NormDesc>,
    pub k_norm: Option<NormDesc>,
    pub rope: RopeDesc,
}

/// `down(silu(gate(x)) * up(x))`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SwiGluDesc {
    pub intermediate: usize,
    pub gate: LinearDesc,
    pub up: LinearDesc,
    pub down: LinearDesc,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MlpDesc {
    SwiGlu(SwiGluDesc),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerDesc {
    pub index: usize,
    pub input_norm: NormDesc,
    pub attention: AttentionDesc,
    pub post_attention_norm: NormDesc,
    pub mlp: MlpDesc,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecoderDesc {
    pub profile: &'static str,
    pub vocab: usize,
    pub hidden: usize,
    pub max_positions: usize,
    pub embedding: TensorDesc,
    /// The head is the embedding table (`tie_word_embeddings`).
    pub tied: bool,
    pub layers: Vec<LayerDesc>,
    pub final_norm: NormDesc,
    /// The head's own matrix; described even when tied, since a tied model may still store it.
    pub head: TensorDesc,
    #[serde(skip)]
    index: HashMap<String, usize>,
    #[serde(skip)]
    order: Vec<TensorDesc>,
}

/// The sizes and settings of config.json the description is made of (`HfConfig` fills it).
#[derive(Debug, Clone, Copy)]
pub struct Dims<'a> {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub rope_scaling: &'a RopeScaling,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
}

impl DecoderDesc {
    pub fn new(profile: &'static Profile, config: Dims<'_>) -> Result<Self, ProfileError> {
        let (names, gguf) = (&profile.tensors, &profile.gguf.tensors);
        let (hidden, head_dim) = (config.hidden_size, config.head_dim);
        let q_out = config.num_attention_heads.saturating_mul(head_dim);
        let kv_out = config.num_key_value_heads.saturating_mul(head_dim);
        let inter = config.intermediate_size;
        let tensor = |name: &str, gguf: &str, shape: Vec<usize>, role: Role| TensorDesc {
            name: name.to_string(),
            gguf: gguf.to_string(),
            shape,
            role,
        };
        let norm = |weight: TensorDesc| NormDesc { kind: NormKind::Rms, eps: config.rms_norm_eps, weight };
        let mut order =
            vec![tensor(names.embed, gguf.embed, vec![config.vocab_size, hidden], Role::Embedding)];
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            let in_layer = |t: &crate::profile::TensorNames, suffix: &str| {
                format!("{}{suffix}", t.layer_prefix.replace("{layer}", &layer.to_string()))
            };
            // The layer's tensors in the profile's order (the converter's), each described once.
            let mut of_role = Vec::new();
            for (role, suffix) in names.layer {
                let gguf_suffix = gguf.layer.iter().find(|(r, _)| r == role).map_or("", |(_, s)| *s);
                let (shape, kind) = match role {
                    LayerTensor::InputNorm | LayerTensor::PostAttentionNorm => (vec![hidden], Role::Norm),
                    LayerTensor::QNorm | LayerTensor::KNorm => (vec![head_dim], Role::Norm),
                    LayerTensor::QBias => (vec![q_out], Role::Bias { layer, kind: Projection::Q }),
                    LayerTensor::KBias => (vec![kv_out], Role::Bias { layer, kind: Projection::K }),
                    LayerTensor::VBias => (vec![kv_out], Role::Bias { layer, kind: Projection::V }),
                    LayerTensor::QProj => (vec![q_out, hidden], projection(layer, Projection::Q)),
                    LayerTensor::KProj => (vec![kv_out, hidden], projection(layer, Projection::K)),
                    LayerTensor::VProj => (vec![kv_out, hidden], projection(layer, Projection::V)),
                    LayerTensor::OProj => (vec![hidden, q_out], projection(layer, Projection::O)),
                    LayerTensor::GateProj => (vec![inter, hidden], projection(layer, Projection::Gate)),
                    LayerTensor::UpProj => (vec![inter, hidden], projection(layer, Projection::Up)),
                    LayerTensor::DownProj => (vec![hidden, inter], projection(layer, Projection::Down)),
                };
                let t = tensor(&in_layer(names, suffix), &in_layer(gguf, gguf_suffix), shape, kind);
                order.push(t.clone());
                of_role.push((*role, t));
            }
            let find = |role: LayerTensor| of_role.iter().find(|(r, _)| *r == role).map(|(_, t)| t.clone());
            let required = |role: LayerTensor| {
                find(role)
                    .ok_or(ProfileError::MissingTensor { profile: profile.name, role: format!("{role:?}") })
            };
            let linear =
                |weight: LayerTensor, bias: Option<LayerTensor>| -> Result<LinearDesc, ProfileError> {
                    Ok(LinearDesc { weight: required(weight)?, bias: bias.and_then(find) })
                };
            layers.push(LayerDesc {
                index: layer,
                input_norm: norm(required(LayerTensor::InputNorm)?),
                attention: AttentionDesc {
                    heads: config.num_attention_heads,
                    kv_heads: config.num_key_value_heads,
                    head_dim,
                    q: linear(LayerTensor::QProj, Some(LayerTensor::QBias))?,
                    k: linear(LayerTensor::KProj, Some(LayerTensor::KBias))?,
                    v: linear(LayerTensor::VProj, Some(LayerTensor::VBias))?,
                    o: linear(LayerTensor::OProj, None)?,
                    q_norm: find(LayerTensor::QNorm).map(norm),
                    k_norm: find(LayerTensor::KNorm).map(norm),
                    rope: RopeDesc {
                        theta: config.rope_theta,
                        scaling: config.rope_scaling.clone(),
                        rotary_dim: head_dim,
                    },
                },
                post_attention_norm: norm(required(LayerTensor::PostAttentionNorm)?),
                mlp: MlpDesc::SwiGlu(SwiGluDesc {
                    intermediate: inter,
                    gate: linear(LayerTensor::GateProj, None)?,
                    up: linear(LayerTensor::UpProj, None)?,
                    down: linear(LayerTensor::DownProj, None)?,
                }),
            });
        }
        let final_norm = tensor(names.final_norm, gguf.final_norm, vec![hidden], Role::Norm);
        let head = tensor(names.lm_head, gguf.lm_head, vec![config.vocab_size, hidden], Role::Head);
        order.push(final_norm.clone());
        order.push(head.clone());
        let index = order.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(DecoderDesc {
            profile: profile.name,
            vocab: config.vocab_size,
            hidden,
            max_positions: config.max_position_embeddings,
            embedding: order[0].clone(),
            tied: config.tie_word_embeddings,
            layers,
            final_norm: norm(final_norm),
            head,
            index,
            order,
        })
    }

    /// Every tensor in the order llama.cpp's converter writes them: embedding, each layer's
    /// tensors in the profile's order, final norm, head (listed even when tied).
    pub fn tensors(&self) -> &[TensorDesc] {
        &self.order
    }

    /// The tensors of the layers, layer by layer in the profile's order.
    pub fn layer_tensors(&self) -> &[TensorDesc] {
        &self.order[1..self.order.len().saturating_sub(2).max(1)]
    }

    /// The description of the tensor called `name`, if the decoder reads one.
    pub fn tensor(&self, name: &str) -> Option<&TensorDesc> {
        self.index.get(name).map(|&i| &self.order[i])
    }

    /// The tensors a checkpoint of this model stores: all of them, less the head when tied.
    pub fn stored_tensors(&self) -> impl Iterator<Item = &TensorDesc> {
        self.order.iter().filter(|t| !(self.tied && t.role == Role::Head))
    }
}

impl DecoderDesc {
    /// A description with no tensors, for the moment between reading config.json's fields and
    /// describing the decoder they make (`HfConfig::parse`).
    pub(super) fn pending(profile: &'static Profile) -> Self {
        let nothing =
            TensorDesc { name: String::new(), gguf: String::new(), shape: Vec::new(), role: Role::Norm };
        DecoderDesc {
            profile: profile.name,
            vocab: 0,
            hidden: 0,
            max_positions: 0,
            embedding: nothing.clone(),
            tied: false,
            layers: Vec::new(),
            final_norm: NormDesc { kind: NormKind::Rms, eps: 0.0, weight: nothing.clone() },
            head: nothing,
            index: HashMap::new(),
            order: Vec::new(),
        }
    }
}

fn projection(layer: usize, kind: Projection) -> Role {
    Role::Projection { layer, kind }
}
