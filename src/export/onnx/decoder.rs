//! The Qwen decoder as an ONNX graph of standard ops (the `portable` target), emitted from the
//! profile and config.json: no tracing, so no data-dependent shapes and no masking code that
//! breaks under export. Activations stay 2-D ([batch*seq, hidden]) between blocks. A float
//! projection is `MatMul(x, W^T)` on its weight stored transposed (the form ONNX Runtime's
//! `MatMulNBitsQuantizer` and the transformers optimizer's fusions recognise; they skip `Gemm`),
//! except a head tied to the embedding table, `Gemm(x, E, transB=1)` on the one table.
//!
//! - RoPE is static: cos/sin tables for every position are initializers gathered by
//!   `position_ids`, applied as `Add(Mul(x, cos), Mul(rotate_half(x), sin))` (tract's rope rewrite).
//! - The mask is built from `attention_mask` and index ranges with comparisons, filled with a
//!   finite large negative, so fully padded rows give no NaN; attention is
//!   `Softmax(Add(Mul(QK, scale), mask))` (tract's scaled-masked-softmax rewrite).

use super::builder::{BuildError, Dim, Elem, GraphBuilder, attr_int, attr_ints};
use super::weights::WeightForm;
use crate::model::HfConfig;
use crate::model::decoder::{MlpDesc, MoeDesc, SwiGluDesc};
use crate::onnx_io::{
    ATTENTION_MASK, INPUT_IDS, LOGITS, PAST_KEY, PAST_VALUE, POSITION_IDS, PRESENT_KEY, PRESENT_VALUE,
    io_name,
};
use crate::profile::{LayerTensor, Profile};

pub const ROPE_COS: &str = "/model/rotary_emb/cos_cache";
pub const ROPE_SIN: &str = "/model/rotary_emb/sin_cache";

/// What the graph needs to know about the weights it references.
pub struct DecoderSpec<'a> {
    pub config: &'a HfConfig,
    pub profile: &'static Profile,
    /// The initializer used as output head: `lm_head.weight`, or the embedding when tied.
    pub head: String,
    /// How the graph reads each weight (f16 is cast to f32 where used; quantized matrices go
    /// through DequantizeLinear or MatMulNBits).
    pub weight: &'a dyn Fn(&str) -> WeightForm,
    /// MatMulNBits' accuracy_level (0: f32 activations).
    pub accuracy_level: i64,
}

struct Emitter<'a, 'b> {
    g: &'a mut GraphBuilder,
    spec: &'a DecoderSpec<'b>,
}

impl Emitter<'_, '_> {
    fn linear(
        &mut self,
        scope: &str,
        x: &str,
        weight: &str,
        bias: Option<&str>,
    ) -> Result<String, BuildError> {
        linear(self.g, self.spec, scope, x, weight, bias)
    }

    /// RMSNorm over the last axis, as transformers computes it in f32.
    fn rms_norm(&mut self, scope: &str, x: &str, weight: &str) -> Result<String, BuildError> {
        let eps = self.g.const_f32(&[self.spec.config.rms_norm_eps as f32], &[]);
        let sq = self.g.node(scope, "Mul", &[x, x], vec![])?;
        let mean = self.g.reduce_mean(scope, &sq, &[-1])?;
        let shifted = self.g.node(scope, "Add", &[&mean, &eps], vec![])?;
        let root = self.g.node(scope, "Sqrt", &[&shifted], vec![])?;
        let inverse = self.g.node(scope, "Reciprocal", &[&root], vec![])?;
        let normed = self.g.node(scope, "Mul", &[x, &inverse], vec![])?;
        self.g.node(scope, "Mul", &[&normed, weight], vec![])
    }

    /// `x * cos + rotate_half(x) * sin` with rotate_half = [-x2, x1].
    fn rope(&mut self, scope: &str, x: &str, cos: &str, sin: &str) -> Result<String, BuildError> {
        let half = self.spec.config.head_dim as i64 / 2;
        let axes = self.g.const_i64(&[-1], &[1]);
        let (zero, mid, end) = (
            self.g.const_i64(&[0], &[1]),
            self.g.const_i64(&[half], &[1]),
            self.g.const_i64(&[2 * half], &[1]),
        );
        let lo = self.g.node(scope, "Slice", &[x, &zero, &mid, &axes], vec![])?;
        let hi = self.g.node(scope, "Slice", &[x, &mid, &end, &axes], vec![])?;
        let neg = self.g.node(scope, "Neg", &[&hi], vec![])?;
        let rotated = self.g.node(scope, "Concat", &[&neg, &lo], vec![attr_int("axis", -1)])?;
        let a = self.g.node(scope, "Mul", &[x, cos], vec![])?;
        let b = self.g.node(scope, "Mul", &[&rotated, sin], vec![])?;
        self.g.node(scope, "Add", &[&a, &b], vec![])
    }
}

/// Emits the whole decoder into `g`; weights are referenced by their Hugging Face names.
pub fn build_decoder(g: &mut GraphBuilder, spec: &DecoderSpec<'_>) -> Result<(), BuildError> {
    let c = spec.config;
    let (h, kvh, d) = (c.num_attention_heads as i64, c.num_key_value_heads as i64, c.head_dim as i64);
    let io = declare_io(g, c);
    let sizes = dynamic_sizes(g, &io)?;
    let (batch, seq, total_scalar) = (sizes.batch.clone(), sizes.seq.clone(), sizes.total_scalar.clone());
    let past_scalar = g.node("/model/shapes", "Sub", &[&total_scalar, &sizes.seq_scalar], vec![])?;
    let (attention_mask, position_ids) = (io.attention_mask, io.position_ids);
    let mut x = embed(g, spec, &io.input_ids)?;
    let mut e = Emitter { g, spec };
    let names = &spec.profile.tensors;

    // cos/sin for each position: [batch, 1, seq, head_dim].
    let scope = "/model/rotary_emb";
    let axis1 = e.g.const_i64(&[1], &[1]);
    let cos = e.g.node(scope, "Gather", &[ROPE_COS, &position_ids], vec![attr_int("axis", 0)])?;
    let cos = e.g.node(scope, "Unsqueeze", &[&cos, &axis1], vec![])?;
    let sin = e.g.node(scope, "Gather", &[ROPE_SIN, &position_ids], vec![attr_int("axis", 0)])?;
    let sin = e.g.node(scope, "Unsqueeze", &[&sin, &axis1], vec![])?;

    // Additive mask [batch, 1, seq, total]: key j visible to query i (absolute past + i) when
    // j <= past + i and attention_mask[j] == 1.
    let scope = "/model/attn_mask";
    let (zero_s, one_s) = (e.g.const_i64(&[0], &[]), e.g.const_i64(&[1], &[]));
    let keys = e.g.node(scope, "Range", &[&zero_s, &total_scalar, &one_s], vec![])?;
    let queries = e.g.node(scope, "Range", &[&past_scalar, &total_scalar, &one_s], vec![])?;
    let axis0 = e.g.const_i64(&[0], &[1]);
    let keys_row = e.g.node(scope, "Unsqueeze", &[&keys, &axis0], vec![])?;
    let queries_col = e.g.node(scope, "Unsqueeze", &[&queries, &axis1], vec![])?;
    let causal = e.g.node(scope, "LessOrEqual", &[&keys_row, &queries_col], vec![])?;
    let real = real_keys(e.g, scope, &attention_mask)?;
    let allowed = e.g.node(scope, "And", &[&causal, &real], vec![])?;
    let mask = additive_mask(e.g, scope, &allowed)?;

    // Shapes for splitting heads: [batch, seq, heads, head_dim].
    let scope = "/model/shapes";
    let q_tail = e.g.const_i64(&[h, d], &[2]);
    let kv_tail = e.g.const_i64(&[kvh, d], &[2]);
    let q_shape = e.g.node(scope, "Concat", &[&batch, &seq, &q_tail], vec![attr_int("axis", 0)])?;
    let kv_shape = e.g.node(scope, "Concat", &[&batch, &seq, &kv_tail], vec![attr_int("axis", 0)])?;
    let attn_flat = e.g.const_i64(&[-1, h * d], &[2]);
    let rep = h / kvh;
    let expand = e.g.const_i64(&[1, 1, rep, 1, 1], &[5]);
    let grouped = e.g.const_i64(&[0, h, -1, d], &[4]);
    let axis2 = e.g.const_i64(&[2], &[1]);
    let scale = e.g.const_f32(&[1.0 / (d as f32).sqrt()], &[]);

    let tensor = |layer: usize, role: LayerTensor| spec.profile.layer_tensor(layer, role);
    for layer in 0..c.num_hidden_layers {
        let root = format!("/model/layers.{layer}");
        let required = |role: LayerTensor| layer_weight(spec, layer, role);
        let normed =
            e.rms_norm(&format!("{root}/input_layernorm"), &x, &required(LayerTensor::InputNorm)?)?;

        let attn = format!("{root}/attn");
        let heads = |e: &mut Emitter<'_, '_>,
                     proj: LayerTensor,
                     bias: LayerTensor,
                     norm: Option<LayerTensor>,
                     shape: &str,
                     label: &str|
         -> Result<String, BuildError> {
            let scope = format!("{attn}/{label}");
            let bias = tensor(layer, bias);
            let y = e.linear(&scope, &normed, &required(proj)?, bias.as_deref())?;
            let y = e.g.node(&scope, "Reshape", &[&y, shape], vec![])?;
            let y = match norm.and_then(|n| tensor(layer, n)) {
                Some(w) => e.rms_norm(&format!("{attn}/{label}_norm"), &y, &w)?,
                None => y,
            };
            e.g.node(&scope, "Transpose", &[&y], vec![attr_ints("perm", &[0, 2, 1, 3])])
        };
        let q = heads(
            &mut e,
            LayerTensor::QProj,
            LayerTensor::QBias,
            Some(LayerTensor::QNorm),
            &q_shape,
            "q_proj",
        )?;
        let k = heads(
            &mut e,
            LayerTensor::KProj,
            LayerTensor::KBias,
            Some(LayerTensor::KNorm),
            &kv_shape,
            "k_proj",
        )?;
        let v = heads(&mut e, LayerTensor::VProj, LayerTensor::VBias, None, &kv_shape, "v_proj")?;
        let q = e.rope(&format!("{attn}/q_rotary"), &q, &cos, &sin)?;
        let k = e.rope(&format!("{attn}/k_rotary"), &k, &cos, &sin)?;

        let present_k = io_name(PRESENT_KEY, layer);
        let present_v = io_name(PRESENT_VALUE, layer);
        let (past_k, past_v) = (io_name(PAST_KEY, layer), io_name(PAST_VALUE, layer));
        e.g.node_into(
            &format!("{attn}/k_cache"),
            "Concat",
            &[&past_k, &k],
            &[&present_k],
            vec![attr_int("axis", 2)],
        )?;
        e.g.node_into(
            &format!("{attn}/v_cache"),
            "Concat",
            &[&past_v, &v],
            &[&present_v],
            vec![attr_int("axis", 2)],
        )?;
        // GQA: each kv head serves `rep` query heads, as transformers' repeat_kv lays them out.
        let (k_all, v_all) = if rep > 1 {
            let scope = format!("{attn}/repeat_kv");
            let repeat = |e: &mut Emitter<'_, '_>, x: &str| -> Result<String, BuildError> {
                let y = e.g.node(&scope, "Unsqueeze", &[x, &axis2], vec![])?;
                let y = e.g.node(&scope, "Expand", &[&y, &expand], vec![])?;
                e.g.node(&scope, "Reshape", &[&y, &grouped], vec![])
            };
            (repeat(&mut e, &present_k)?, repeat(&mut e, &present_v)?)
        } else {
            (present_k.clone(), present_v.clone())
        };
        let scope = format!("{attn}/sdpa");
        let k_t = e.g.node(&scope, "Transpose", &[&k_all], vec![attr_ints("perm", &[0, 1, 3, 2])])?;
        let scores = e.g.node(&scope, "MatMul", &[&q, &k_t], vec![])?;
        let scores = e.g.node(&scope, "Mul", &[&scores, &scale], vec![])?;
        let scores = e.g.node(&scope, "Add", &[&scores, &mask], vec![])?;
        let probs = e.g.node(&scope, "Softmax", &[&scores], vec![attr_int("axis", -1)])?;
        let context = e.g.node(&scope, "MatMul", &[&probs, &v_all], vec![])?;
        let context = e.g.node(&scope, "Transpose", &[&context], vec![attr_ints("perm", &[0, 2, 1, 3])])?;
        let context = e.g.node(&scope, "Reshape", &[&context, &attn_flat], vec![])?;
        let out = e.linear(&format!("{attn}/o_proj"), &context, &required(LayerTensor::OProj)?, None)?;
        x = e.g.node(&format!("{root}/attn_residual"), "Add", &[&x, &out], vec![])?;

        let normed = e.rms_norm(
            &format!("{root}/post_attention_layernorm"),
            &x,
            &required(LayerTensor::PostAttentionNorm)?,
        )?;
        let down = mlp(e.g, spec, &root, layer, &normed)?;
        x = e.g.node(&format!("{root}/mlp_residual"), "Add", &[&x, &down], vec![])?;
    }

    let normed = e.rms_norm("/model/norm", &x, names.final_norm)?;
    lm_head(e.g, spec, &normed, &sizes)
}

/// The graph inputs every decoder takes, with the outputs declared.
pub(super) struct Io {
    pub input_ids: String,
    pub attention_mask: String,
    pub position_ids: String,
}

/// Declares inputs and outputs with optimum's and onnxruntime-genai's names and dynamic axes.
pub(super) fn declare_io(g: &mut GraphBuilder, c: &HfConfig) -> Io {
    let (kvh, d, vocab) = (c.num_key_value_heads as i64, c.head_dim as i64, c.vocab_size as i64);
    let (b, s, p, t) = (
        Dim::Named("batch_size"),
        Dim::Named("sequence_length"),
        Dim::Named("past_sequence_length"),
        Dim::Named("total_sequence_length"),
    );
    let input_ids = g.input(INPUT_IDS, Elem::I64, &[b.clone(), s.clone()]);
    let attention_mask = g.input(ATTENTION_MASK, Elem::I64, &[b.clone(), t.clone()]);
    let position_ids = g.input(POSITION_IDS, Elem::I64, &[b.clone(), s.clone()]);
    for layer in 0..c.num_hidden_layers {
        for pattern in [PAST_KEY, PAST_VALUE] {
            g.input(
                &io_name(pattern, layer),
                Elem::F32,
                &[b.clone(), Dim::Fixed(kvh), p.clone(), Dim::Fixed(d)],
            );
        }
    }
    g.output(LOGITS, Elem::F32, &[b.clone(), s.clone(), Dim::Fixed(vocab)]);
    for layer in 0..c.num_hidden_layers {
        for pattern in [PRESENT_KEY, PRESENT_VALUE] {
            g.output(
                &io_name(pattern, layer),
                Elem::F32,
                &[b.clone(), Dim::Fixed(kvh), t.clone(), Dim::Fixed(d)],
            );
        }
    }
    Io { input_ids, attention_mask, position_ids }
}

/// Dynamic sizes: batch, seq and total as 1-D tensors of one element, seq and total as scalars.
pub(super) struct Sizes {
    pub batch: String,
    pub seq: String,
    pub total: String,
    pub seq_scalar: String,
    pub total_scalar: String,
}

pub(super) fn dynamic_sizes(g: &mut GraphBuilder, io: &Io) -> Result<Sizes, BuildError> {
    let scope = "/model/shapes";
    let ids_shape = g.node(scope, "Shape", &[&io.input_ids], vec![])?;
    let mask_shape = g.node(scope, "Shape", &[&io.attention_mask], vec![])?;
    let (i0, i1) = (g.const_i64(&[0], &[1]), g.const_i64(&[1], &[1]));
    let batch = g.node(scope, "Gather", &[&ids_shape, &i0], vec![attr_int("axis", 0)])?;
    let seq = g.node(scope, "Gather", &[&ids_shape, &i1], vec![attr_int("axis", 0)])?;
    let total = g.node(scope, "Gather", &[&mask_shape, &i1], vec![attr_int("axis", 0)])?;
    let scalar = g.const_i64(&[], &[0]);
    let seq_scalar = g.node(scope, "Reshape", &[&seq, &scalar], vec![])?;
    let total_scalar = g.node(scope, "Reshape", &[&total, &scalar], vec![])?;
    Ok(Sizes { batch, seq, total, seq_scalar, total_scalar })
}

/// The embeddings of `input_ids` in f32, flattened to [batch*seq, hidden].
pub(super) fn embed(
    g: &mut GraphBuilder,
    spec: &DecoderSpec<'_>,
    input_ids: &str,
) -> Result<String, BuildError> {
    let scope = "/model/embed_tokens";
    let table = spec.profile.tensors.embed;
    let embedded = g.node(scope, "Gather", &[table, input_ids], vec![attr_int("axis", 0)])?;
    let embedded = match (spec.weight)(table) {
        WeightForm::Float(Elem::F16) => g.node(scope, "Cast", &[&embedded], vec![attr_int("to", 1)])?,
        _ => embedded,
    };
    let flat = g.const_i64(&[-1, spec.config.hidden_size as i64], &[2]);
    g.node(scope, "Reshape", &[&embedded, &flat], vec![])
}

/// Which keys are real tokens: `attention_mask` as bool [batch, 1, 1, total].
pub(super) fn real_keys(
    g: &mut GraphBuilder,
    scope: &str,
    attention_mask: &str,
) -> Result<String, BuildError> {
    let real = g.node(scope, "Cast", &[attention_mask], vec![attr_int("to", 9)])?;
    let axes12 = g.const_i64(&[1, 2], &[2]);
    g.node(scope, "Unsqueeze", &[&real, &axes12], vec![])
}

/// 0 where `allowed`, else the finite -3.4e38 (so fully masked rows give no NaN).
pub(super) fn additive_mask(g: &mut GraphBuilder, scope: &str, allowed: &str) -> Result<String, BuildError> {
    let (open, closed) = (g.const_f32(&[0.0], &[]), g.const_f32(&[f32::MIN], &[]));
    g.node(scope, "Where", &[allowed, &open, &closed], vec![])
}

/// A layer's weight by role, or an error naming the role the profile lacks.
pub(super) fn layer_weight(
    spec: &DecoderSpec<'_>,
    layer: usize,
    role: LayerTensor,
) -> Result<String, BuildError> {
    spec.profile
        .layer_tensor(layer, role)
        .ok_or(BuildError::MissingWeight { role, profile: spec.profile.name })
}

/// SwiGLU: `down(silu(gate(x)) * up(x))`, SiLU as `gate * Sigmoid(gate)`.
pub(super) fn swiglu_mlp(
    g: &mut GraphBuilder,
    spec: &DecoderSpec<'_>,
    root: &str,
    layer: usize,
    normed: &str,
) -> Result<String, BuildError> {
    let mlp = format!("{root}/mlp");
    let weight = |role| layer_weight(spec, layer, role);
    let gate = linear(g, spec, &format!("{mlp}/gate_proj"), normed, &weight(LayerTensor::GateProj)?, None)?;
    let up = linear(g, spec, &format!("{mlp}/up_proj"), normed, &weight(LayerTensor::UpProj)?, None)?;
    let sig = g.node(&format!("{mlp}/act_fn"), "Sigmoid", &[&gate], vec![])?;
    let act = g.node(&format!("{mlp}/act_fn"), "Mul", &[&gate, &sig], vec![])?;
    let act = g.node(&mlp, "Mul", &[&act, &up], vec![])?;
    linear(g, spec, &format!("{mlp}/down_proj"), &act, &weight(LayerTensor::DownProj)?, None)
}

/// Layer `layer`'s MLP as the decoder's description has it: SwiGLU, or routed experts.
pub(super) fn mlp(
    g: &mut GraphBuilder,
    spec: &DecoderSpec<'_>,
    root: &str,
    layer: usize,
    normed: &str,
) -> Result<String, BuildError> {
    match spec.config.decoder.layers.get(layer).map(|l| &l.mlp) {
        Some(MlpDesc::Moe(moe)) => moe_mlp(g, spec, root, moe, normed),
        _ => swiglu_mlp(g, spec, root, layer, normed),
    }
}

/// One SwiGLU on `x` with the weights `m` names, its nodes under `scope`.
fn swiglu_of(
    g: &mut GraphBuilder,
    spec: &DecoderSpec<'_>,
    scope: &str,
    m: &SwiGluDesc,
    x: &str,
) -> Result<String, BuildError> {
    let gate = linear(g, spec, &format!("{scope}/gate_proj"), x, &m.gate.weight.name, None)?;
    let up = linear(g, spec, &format!("{scope}/up_proj"), x, &m.up.weight.name, None)?;
    let sig = g.node(&format!("{scope}/act_fn"), "Sigmoid", &[&gate], vec![])?;
    let act = g.node(&format!("{scope}/act_fn"), "Mul", &[&gate, &sig], vec![])?;
    let act = g.node(scope, "Mul", &[&act, &up], vec![])?;
    linear(g, spec, &format!("{scope}/down_proj"), &act, &m.down.weight.name, None)
}

/// Qwen3MoeSparseMoeBlock in standard ops (tract and every ONNX Runtime run it): Softmax of
/// the router's logits, TopK (largest first, the lower index on ties, as torch.topk), the top-k
/// probabilities renormalised when `norm_topk_prob`, scattered into a dense [tokens, experts]
/// weight matrix; every expert is evaluated on every token and added with its column of
/// weights (zero for the tokens not routed to it), in expert order.
fn moe_mlp(
    g: &mut GraphBuilder,
    spec: &DecoderSpec<'_>,
    root: &str,
    moe: &MoeDesc,
    x: &str,
) -> Result<String, BuildError> {
    let scope = format!("{root}/mlp");
    let logits = linear(g, spec, &format!("{scope}/gate"), x, &moe.router.weight.name, None)?;
    let probs = g.node(&scope, "Softmax", &[&logits], vec![attr_int("axis", -1)])?;
    let k = g.const_i64(&[moe.top_k as i64], &[1]);
    let top = g.node_outputs(&scope, "TopK", &[&probs, &k], 2, vec![attr_int("axis", -1)])?;
    let (values, indices) = (&top[0], &top[1]);
    let values = if moe.norm_topk_prob {
        let axes = g.const_i64(&[-1], &[1]);
        let sum = g.node(&scope, "ReduceSum", &[values, &axes], vec![attr_int("keepdims", 1)])?;
        g.node(&scope, "Div", &[values, &sum], vec![])?
    } else {
        values.clone()
    };
    let zero = g.const_f32(&[0.0], &[]);
    let zeros = g.node(&scope, "Mul", &[&probs, &zero], vec![])?;
    let weights =
        g.node(&scope, "ScatterElements", &[&zeros, indices, &values], vec![attr_int("axis", 1)])?;
    let axes = g.const_i64(&[1], &[1]);
    let mut sum: Option<String> = None;
    for (e, expert) in moe.experts.iter().enumerate() {
        let scope = format!("{scope}/experts.{e}");
        let y = swiglu_of(g, spec, &scope, expert, x)?;
        let (from, to) = (g.const_i64(&[e as i64], &[1]), g.const_i64(&[e as i64 + 1], &[1]));
        let column = g.node(&scope, "Slice", &[&weights, &from, &to, &axes], vec![])?;
        let weighted = g.node(&scope, "Mul", &[&y, &column], vec![])?;
        sum = Some(match sum {
            Some(acc) => g.node(&scope, "Add", &[&acc, &weighted], vec![])?,
            None => weighted,
        });
    }
    sum.ok_or(BuildError::NoExperts { layer: root.to_string() })
}

/// The output head on the final hidden states, reshaped to the `logits` output.
pub(super) fn lm_head(
    g: &mut GraphBuilder,
    spec: &DecoderSpec<'_>,
    normed: &str,
    sizes: &Sizes,
) -> Result<(), BuildError> {
    let scope = "/lm_head";
    let logits = linear(g, spec, scope, normed, &spec.head, None)?;
    let v_tail = g.const_i64(&[spec.config.vocab_size as i64], &[1]);
    let shape = g.node(scope, "Concat", &[&sizes.batch, &sizes.seq, &v_tail], vec![attr_int("axis", 0)])?;
    g.node_into(scope, "Reshape", &[&logits, &shape], &[LOGITS], vec![])
}

/// `x @ W^T (+ b)` for a weight stored as HF lays it out ([out, in]), however it is stored.
pub fn linear(
    g: &mut GraphBuilder,
    spec: &DecoderSpec<'_>,
    scope: &str,
    x: &str,
    weight: &str,
    bias: Option<&str>,
) -> Result<String, BuildError> {
    let gemm = |g: &mut GraphBuilder, w: &str| {
        let mut inputs = vec![x, w];
        if let Some(b) = bias {
            inputs.push(b);
        }
        g.node(scope, "Gemm", &inputs, vec![attr_int("transB", 1)])
    };
    let matmul = |g: &mut GraphBuilder, w: &str| {
        let y = g.node(scope, "MatMul", &[x, w], vec![])?;
        match bias {
            Some(b) => g.node(scope, "Add", &[&y, b], vec![]),
            None => Ok(y),
        }
    };
    match (spec.weight)(weight) {
        WeightForm::Float(Elem::F16) => {
            let w = g.node(scope, "Cast", &[weight], vec![attr_int("to", 1)])?;
            gemm(g, &w)
        }
        WeightForm::Float(_) => gemm(g, weight),
        WeightForm::Transposed(Elem::F16) => {
            let w = g.node(scope, "Cast", &[weight], vec![attr_int("to", 1)])?;
            matmul(g, &w)
        }
        WeightForm::Transposed(_) => matmul(g, weight),
        WeightForm::Int8 { codes, scale } => {
            let w = g.node(scope, "DequantizeLinear", &[&codes, &scale], vec![attr_int("axis", 0)])?;
            gemm(g, &w)
        }
        WeightForm::Blocks { codes, scales, zero_points, bits, block, n, k } => {
            let inputs = [x, codes.as_str(), scales.as_str(), zero_points.as_str()];
            let mut attributes = vec![
                attr_int("K", k as i64),
                attr_int("N", n as i64),
                attr_int("bits", i64::from(bits)),
                attr_int("block_size", block as i64),
            ];
            if spec.accuracy_level != 0 {
                attributes.push(attr_int("accuracy_level", spec.accuracy_level));
            }
            let y = g.node(scope, "MatMulNBits", &inputs, attributes)?;
            match bias {
                Some(b) => g.node(scope, "Add", &[&y, b], vec![]),
                None => Ok(y),
            }
        }
    }
}
