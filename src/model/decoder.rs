//! The decoder as data: what every layer computes and which tensors it reads, built once from
//! the profile and config.json (after `features` honoured or refused every key). The candle
//! reference, the ONNX emitters, the GGUF writer and reader, the loader, the quantization report
//! and the layout check interpret this description; none of them classifies tensor names.

use std::collections::HashMap;

use serde::Serialize;

use super::rope::RopeScaling;
use crate::error::ProfileError;
use crate::profile::{LayerTensor, MoeProfile, Profile};

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
    /// The router of a mixture-of-experts layer (hidden -> experts logits); kept in f32, as
    /// llama.cpp keeps `ffn_gate_inp`.
    Router { layer: usize },
    /// A projection (gate, up or down) of expert `expert` in layer `layer`.
    Expert { layer: usize, expert: usize, kind: Projection },
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

/// Qwen3MoeSparseMoeBlock: softmax over the router's logits (f32), the top-k experts per token,
/// their probabilities renormalised to sum to 1 when `norm_topk_prob`, and the experts' outputs
/// summed with those weights.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoeDesc {
    pub router: LinearDesc,
    pub experts: Vec<SwiGluDesc>,
    pub top_k: usize,
    pub norm_topk_prob: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MlpDesc {
    SwiGlu(Box<SwiGluDesc>),
    Moe(Box<MoeDesc>),
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
    pub vocab: usize,
    pub hidden: usize,
    pub max_positions: usize,
    /// The attention shape every layer shares (and the KV cache's): heads, kv heads, head_dim.
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
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
    /// The layer of each tensor of `order` (None: embedding, final norm, head).
    #[serde(skip)]
    layer_of: Vec<Option<usize>>,
}

/// config.json's mixture-of-experts fields (Qwen3MoeConfig), defaults from the profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MoeConfig {
    /// `num_experts`; 0 makes every layer dense.
    pub num_experts: usize,
    /// `num_experts_per_tok`: the top-k experts each token is routed to.
    pub top_k: usize,
    /// `moe_intermediate_size`: each expert's MLP width.
    pub intermediate: usize,
    /// `norm_topk_prob`: the top-k router probabilities are renormalised to sum to 1.
    pub norm_topk_prob: bool,
    /// `decoder_sparse_step`: layer i has experts when (i + 1) % step == 0 ...
    pub decoder_sparse_step: usize,
    /// ... and i is not in `mlp_only_layers`.
    pub mlp_only_layers: Vec<usize>,
}

impl MoeConfig {
    /// Whether layer `layer` routes to experts (transformers' Qwen3MoeDecoderLayer rule).
    pub fn is_sparse(&self, layer: usize) -> bool {
        self.num_experts > 0
            && !self.mlp_only_layers.contains(&layer)
            && (layer + 1).is_multiple_of(self.decoder_sparse_step)
    }
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
    pub moe: Option<&'a MoeConfig>,
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
        let mut layer_of = vec![None];
        for layer in 0..config.num_hidden_layers {
            let in_layer = |t: &crate::profile::TensorNames, suffix: &str| {
                format!("{}{suffix}", t.layer_prefix.replace("{layer}", &layer.to_string()))
            };
            let sparse = config.moe.filter(|m| m.is_sparse(layer));
            // The layer's tensors in the profile's order (the converter's), each described once;
            // a layer with experts has no dense gate/up/down.
            let mut of_role = Vec::new();
            for (role, suffix) in names.layer {
                let dense_mlp =
                    matches!(role, LayerTensor::GateProj | LayerTensor::UpProj | LayerTensor::DownProj);
                if dense_mlp && sparse.is_some() {
                    continue;
                }
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
                mlp: match (sparse, &profile.moe) {
                    (Some(moe), Some(names)) => {
                        let (desc, tensors) =
                            describe_moe(names, moe, layer, &in_layer(gguf, ""), hidden, &|s| {
                                in_layer(&profile.tensors, s)
                            });
                        order.extend(tensors);
                        MlpDesc::Moe(Box::new(desc))
                    }
                    _ => MlpDesc::SwiGlu(Box::new(SwiGluDesc {
                        intermediate: inter,
                        gate: linear(LayerTensor::GateProj, None)?,
                        up: linear(LayerTensor::UpProj, None)?,
                        down: linear(LayerTensor::DownProj, None)?,
                    })),
                },
            });
            layer_of.resize(order.len(), Some(layer));
        }
        let final_norm = tensor(names.final_norm, gguf.final_norm, vec![hidden], Role::Norm);
        let head = tensor(names.lm_head, gguf.lm_head, vec![config.vocab_size, hidden], Role::Head);
        order.push(final_norm.clone());
        order.push(head.clone());
        layer_of.resize(order.len(), None);
        let index = order.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        Ok(DecoderDesc {
            vocab: config.vocab_size,
            hidden,
            max_positions: config.max_position_embeddings,
            heads: config.num_attention_heads,
            kv_heads: config.num_key_value_heads,
            head_dim,
            embedding: order[0].clone(),
            tied: config.tie_word_embeddings,
            layers,
            final_norm: norm(final_norm),
            head,
            index,
            order,
            layer_of,
        })
    }

    /// Every tensor in the order llama.cpp's converter writes them: embedding, each layer's
    /// tensors in the profile's order, final norm, head (listed even when tied).
    pub fn tensors(&self) -> &[TensorDesc] {
        &self.order
    }

    /// Whether `module` (a tensor name without `.weight`) is one of the linear layers PEFT's
    /// `all-linear` targets: every projection, expert projection and router, never the head.
    pub fn is_linear(&self, module: &str) -> bool {
        self.tensor(&format!("{module}.weight")).is_some_and(|t| {
            matches!(t.role, Role::Projection { .. } | Role::Expert { .. } | Role::Router { .. })
        })
    }

    /// Whether any layer routes to experts.
    pub fn has_experts(&self) -> bool {
        self.moe_layers().next().is_some()
    }

    /// The mixture-of-experts blocks of the layers that have one.
    pub fn moe_layers(&self) -> impl Iterator<Item = &MoeDesc> {
        self.layers.iter().filter_map(|l| match &l.mlp {
            MlpDesc::Moe(m) => Some(&**m),
            MlpDesc::SwiGlu(_) => None,
        })
    }

    /// The tensors of the layers, layer by layer in the profile's order.
    pub fn layer_tensors(&self) -> &[TensorDesc] {
        self.order.get(1..self.order.len().saturating_sub(2)).unwrap_or(&[])
    }

    /// The description of the tensor called `name`, if the decoder reads one.
    pub fn tensor(&self, name: &str) -> Option<&TensorDesc> {
        self.index.get(name).map(|&i| &self.order[i])
    }

    /// The layer that reads the tensor called `name` (None: embedding, final norm, head, or a
    /// tensor the decoder does not read).
    pub fn layer_of(&self, name: &str) -> Option<usize> {
        self.index.get(name).and_then(|&i| self.layer_of[i])
    }

    /// The tensors a checkpoint of this model stores: all of them, less the head when tied.
    pub fn stored_tensors(&self) -> impl Iterator<Item = &TensorDesc> {
        self.order.iter().filter(|t| !(self.tied && t.role == Role::Head))
    }
}

/// The router and experts of MoE layer `layer`, and their tensors in the order the GGUF writer
/// stacks them: the router, every expert's gate, every expert's up, every expert's down.
fn describe_moe(
    names: &MoeProfile,
    moe: &MoeConfig,
    layer: usize,
    gguf_prefix: &str,
    hidden: usize,
    in_layer: &dyn Fn(&str) -> String,
) -> (MoeDesc, Vec<TensorDesc>) {
    let inter = moe.intermediate;
    let stacks =
        [names.gguf.gate_exps, names.gguf.up_exps, names.gguf.down_exps].map(|s| format!("{gguf_prefix}{s}"));
    let router = TensorDesc {
        name: in_layer(names.router),
        gguf: format!("{gguf_prefix}{}", names.gguf.router),
        shape: vec![moe.num_experts, hidden],
        role: Role::Router { layer },
    };
    let expert = |e: usize, i: usize, suffix: &str, kind: Projection, shape: Vec<usize>| TensorDesc {
        name: in_layer(&format!("{}{suffix}", names.expert_prefix.replace("{expert}", &e.to_string()))),
        gguf: stacks[i].clone(),
        shape,
        role: Role::Expert { layer, expert: e, kind },
    };
    let linear = |weight| LinearDesc { weight, bias: None };
    let experts: Vec<SwiGluDesc> = (0..moe.num_experts)
        .map(|e| SwiGluDesc {
            intermediate: inter,
            gate: linear(expert(e, 0, names.gate_proj, Projection::Gate, vec![inter, hidden])),
            up: linear(expert(e, 1, names.up_proj, Projection::Up, vec![inter, hidden])),
            down: linear(expert(e, 2, names.down_proj, Projection::Down, vec![hidden, inter])),
        })
        .collect();
    let mut order = vec![router.clone()];
    order.extend(experts.iter().map(|x| x.gate.weight.clone()));
    order.extend(experts.iter().map(|x| x.up.weight.clone()));
    order.extend(experts.iter().map(|x| x.down.weight.clone()));
    let desc =
        MoeDesc { router: linear(router), experts, top_k: moe.top_k, norm_topk_prob: moe.norm_topk_prob };
    (desc, order)
}

fn projection(layer: usize, kind: Projection) -> Role {
    Role::Projection { layer, kind }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::model::HfConfig;

    fn describe(json: &str) -> Arc<DecoderDesc> {
        HfConfig::parse(Path::new("config.json"), json, None).unwrap().0.decoder
    }

    const DENSE: &str = r#""vocab_size":384,"hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,"rms_norm_eps":1e-6"#;

    #[test]
    fn a_dense_layer_is_described_with_names_shapes_roles_and_llama_cpp_names() {
        let d = describe(&format!(r#"{{"model_type":"qwen2",{DENSE}}}"#));
        // embedding, 2 layers of 12 tensors (9 + 3 biases), final norm, head (listed though tied or not)
        assert_eq!(d.tensors().len(), 1 + 2 * 12 + 2);
        let k_bias = d.tensor("model.layers.1.self_attn.k_proj.bias").unwrap();
        assert_eq!((k_bias.gguf.as_str(), k_bias.shape.as_slice()), ("blk.1.attn_k.bias", &[32usize][..]));
        assert_eq!(k_bias.role, Role::Bias { layer: 1, kind: Projection::K });
        assert_eq!(
            d.tensor("model.layers.0.post_attention_layernorm.weight").unwrap().gguf,
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(d.tensor("lm_head.weight").unwrap().gguf, "output.weight");
        assert_eq!(d.layer_of("model.layers.1.mlp.down_proj.weight"), Some(1));
        assert_eq!(d.layer_of("model.norm.weight"), None);
        assert!(d.is_linear("model.layers.0.mlp.up_proj") && !d.is_linear("lm_head"));
        let MlpDesc::SwiGlu(mlp) = &d.layers[1].mlp else { panic!("dense") };
        assert_eq!(mlp.down.weight.shape, [64, 128]);
        assert!(d.layers[0].attention.q_norm.is_none() && d.layers[0].attention.q.bias.is_some());
    }

    #[test]
    fn a_broken_expert_count_is_refused_before_it_is_described() {
        let json =
            format!(r#"{{"model_type":"qwen3_moe",{DENSE},"num_experts":4096,"num_experts_per_tok":2}}"#)
                .replace(r#""num_hidden_layers":2"#, r#""num_hidden_layers":4096"#);
        let err = HfConfig::parse(Path::new("config.json"), &json, None).unwrap_err().to_string();
        assert!(err.contains("num_experts = 4096 in 4096 layers"), "{err}");
    }

    #[test]
    fn a_moe_layer_routes_to_experts_and_dense_layers_keep_the_mlp() {
        let d = describe(&format!(
            r#"{{"model_type":"qwen3_moe",{DENSE},"num_experts":4,"num_experts_per_tok":2,
            "moe_intermediate_size":32,"norm_topk_prob":true,"mlp_only_layers":[1]}}"#
        ));
        let MlpDesc::Moe(moe) = &d.layers[0].mlp else { panic!("layer 0 has experts") };
        assert_eq!((moe.experts.len(), moe.top_k, moe.norm_topk_prob), (4, 2, true));
        assert_eq!(moe.router.weight.name, "model.layers.0.mlp.gate.weight");
        assert_eq!(moe.router.weight.shape, [4, 64]);
        let down = &moe.experts[3].down.weight;
        assert_eq!(down.name, "model.layers.0.mlp.experts.3.down_proj.weight");
        assert_eq!(
            (down.gguf.as_str(), down.shape.as_slice()),
            ("blk.0.ffn_down_exps.weight", &[64usize, 32][..])
        );
        assert_eq!(down.role, Role::Expert { layer: 0, expert: 3, kind: Projection::Down });
        assert!(d.tensor("model.layers.0.mlp.gate_proj.weight").is_none());
        assert!(
            d.is_linear("model.layers.0.mlp.gate") && d.is_linear("model.layers.0.mlp.experts.1.up_proj")
        );
        // mlp_only_layers = [1]: the dense MLP of intermediate_size.
        let MlpDesc::SwiGlu(dense) = &d.layers[1].mlp else { panic!("layer 1 is dense") };
        assert_eq!(dense.gate.weight.shape, [128, 64]);
        assert_eq!(d.moe_layers().count(), 1);
        // Stacks are listed expert by expert, gate, then up, then down.
        let names: Vec<&str> = d.layer_tensors().iter().map(|t| t.name.as_str()).collect();
        let at = |n: &str| names.iter().position(|x| *x == n).unwrap();
        assert!(
            at("model.layers.0.mlp.experts.3.gate_proj.weight")
                < at("model.layers.0.mlp.experts.0.up_proj.weight")
        );
    }
}
