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
use crate::model::decoder::{LayerDesc, LinearDesc, MoeDesc, NormDesc, SwiGluDesc};
use crate::model::{DecoderDesc, HfConfig};
use crate::onnx_io::{
    ATTENTION_MASK, INPUT_IDS, LOGITS, PAST_KEY, PAST_VALUE, POSITION_IDS, PRESENT_KEY, PRESENT_VALUE,
    io_name,
};

pub const ROPE_COS: &str = "/model/rotary_emb/cos_cache";
pub const ROPE_SIN: &str = "/model/rotary_emb/sin_cache";

/// What the graph needs to know about the weights it references.
pub struct DecoderSpec<'a> {
    pub config: &'a HfConfig,
    /// The initializer used as output head: `lm_head.weight`, or the embedding when tied.
    pub head: String,
    /// How the graph reads each weight (f16 is cast to f32 where used; quantized matrices go
    /// through DequantizeLinear or MatMulNBits).
    pub weight: &'a dyn Fn(&str) -> WeightForm,
    /// MatMulNBits' accuracy_level (0: f32 activations).
    pub accuracy_level: i64,
}

/// What differs between the targets, block by block; the layer loop ([`build_decoder`]) and
/// the shared pieces (inputs, embedding, MLP and experts, head) are one. Each variant keeps its
/// own residual stream: the portable graph adds explicitly, the `ort` target folds the add into
/// the next `SkipSimplifiedLayerNormalization`.
pub(super) trait Blocks {
    /// Everything before the first layer (masks, rotary tables, shapes, the embedding).
    fn prelude(
        &mut self,
        g: &mut GraphBuilder,
        spec: &DecoderSpec<'_>,
        io: &Io,
        sizes: &Sizes,
    ) -> Result<(), BuildError>;
    /// The layer's input norm.
    fn input_norm(
        &mut self,
        g: &mut GraphBuilder,
        root: &str,
        layer: &LayerDesc,
    ) -> Result<String, BuildError>;
    /// Attention on the normed input, its residual, and the post-attention norm (the MLP's input).
    fn attention(
        &mut self,
        g: &mut GraphBuilder,
        spec: &DecoderSpec<'_>,
        root: &str,
        layer: &LayerDesc,
        normed: &str,
    ) -> Result<String, BuildError>;
    /// A mixture-of-experts MLP on the normed input; standard ops unless the target has better.
    fn moe(
        &mut self,
        g: &mut GraphBuilder,
        spec: &DecoderSpec<'_>,
        root: &str,
        moe: &MoeDesc,
        normed: &str,
    ) -> Result<String, BuildError> {
        moe_mlp(g, spec, root, moe, normed)
    }
    /// The MLP's output joins the residual stream.
    fn mlp_residual(&mut self, g: &mut GraphBuilder, root: &str, out: String) -> Result<(), BuildError>;
    /// The final norm of the residual stream.
    fn final_norm(&mut self, g: &mut GraphBuilder, norm: &NormDesc) -> Result<String, BuildError>;
}

/// RMSNorm over the last axis, as transformers computes it in f32.
fn rms_norm(
    g: &mut GraphBuilder,
    eps: f64,
    scope: &str,
    x: &str,
    weight: &str,
) -> Result<String, BuildError> {
    let eps = g.const_f32(&[eps as f32], &[]);
    let sq = g.node(scope, "Mul", &[x, x], vec![])?;
    let mean = g.reduce_mean(scope, &sq, &[-1])?;
    let shifted = g.node(scope, "Add", &[&mean, &eps], vec![])?;
    let root = g.node(scope, "Sqrt", &[&shifted], vec![])?;
    let inverse = g.node(scope, "Reciprocal", &[&root], vec![])?;
    let normed = g.node(scope, "Mul", &[x, &inverse], vec![])?;
    g.node(scope, "Mul", &[&normed, weight], vec![])
}

/// `x * cos + rotate_half(x) * sin` with rotate_half = [-x2, x1].
fn rope(
    g: &mut GraphBuilder,
    head_dim: usize,
    scope: &str,
    x: &str,
    cos: &str,
    sin: &str,
) -> Result<String, BuildError> {
    let half = head_dim as i64 / 2;
    let axes = g.const_i64(&[-1], &[1]);
    let (zero, mid, end) =
        (g.const_i64(&[0], &[1]), g.const_i64(&[half], &[1]), g.const_i64(&[2 * half], &[1]));
    let lo = g.node(scope, "Slice", &[x, &zero, &mid, &axes], vec![])?;
    let hi = g.node(scope, "Slice", &[x, &mid, &end, &axes], vec![])?;
    let neg = g.node(scope, "Neg", &[&hi], vec![])?;
    let rotated = g.node(scope, "Concat", &[&neg, &lo], vec![attr_int("axis", -1)])?;
    let a = g.node(scope, "Mul", &[x, cos], vec![])?;
    let b = g.node(scope, "Mul", &[&rotated, sin], vec![])?;
    g.node(scope, "Add", &[&a, &b], vec![])
}

/// The portable target's blocks: standard ops, explicit residual adds.
pub(super) struct Portable {
    head_dim: usize,
    /// The residual stream, [batch*seq, hidden].
    x: String,
    cos: String,
    sin: String,
    mask: String,
    q_shape: String,
    kv_shape: String,
    attn_flat: String,
    /// Query heads per kv head, and the constants that repeat kv heads for them.
    rep: i64,
    expand: String,
    grouped: String,
    axis2: String,
    scale: String,
}

impl Portable {
    pub(super) fn new(decoder: &DecoderDesc) -> Self {
        Portable {
            head_dim: decoder.head_dim,
            x: String::new(),
            cos: String::new(),
            sin: String::new(),
            mask: String::new(),
            q_shape: String::new(),
            kv_shape: String::new(),
            attn_flat: String::new(),
            rep: 1,
            expand: String::new(),
            grouped: String::new(),
            axis2: String::new(),
            scale: String::new(),
        }
    }
}

impl Blocks for Portable {
    fn prelude(
        &mut self,
        g: &mut GraphBuilder,
        spec: &DecoderSpec<'_>,
        io: &Io,
        sizes: &Sizes,
    ) -> Result<(), BuildError> {
        let c = &spec.config.decoder;
        let (h, kvh, d) = (c.heads as i64, c.kv_heads as i64, c.head_dim as i64);
        let (batch, seq, total_scalar) = (&sizes.batch, &sizes.seq, &sizes.total_scalar);
        let past_scalar = g.node("/model/shapes", "Sub", &[total_scalar, &sizes.seq_scalar], vec![])?;
        self.x = embed(g, spec, &io.input_ids)?;

        // cos/sin for each position: [batch, 1, seq, head_dim].
        let scope = "/model/rotary_emb";
        let axis1 = g.const_i64(&[1], &[1]);
        let cos = g.node(scope, "Gather", &[ROPE_COS, &io.position_ids], vec![attr_int("axis", 0)])?;
        self.cos = g.node(scope, "Unsqueeze", &[&cos, &axis1], vec![])?;
        let sin = g.node(scope, "Gather", &[ROPE_SIN, &io.position_ids], vec![attr_int("axis", 0)])?;
        self.sin = g.node(scope, "Unsqueeze", &[&sin, &axis1], vec![])?;

        // Additive mask [batch, 1, seq, total]: key j visible to query i (absolute past + i) when
        // j <= past + i and attention_mask[j] == 1.
        let scope = "/model/attn_mask";
        let (zero_s, one_s) = (g.const_i64(&[0], &[]), g.const_i64(&[1], &[]));
        let keys = g.node(scope, "Range", &[&zero_s, total_scalar, &one_s], vec![])?;
        let queries = g.node(scope, "Range", &[&past_scalar, total_scalar, &one_s], vec![])?;
        let axis0 = g.const_i64(&[0], &[1]);
        let keys_row = g.node(scope, "Unsqueeze", &[&keys, &axis0], vec![])?;
        let queries_col = g.node(scope, "Unsqueeze", &[&queries, &axis1], vec![])?;
        let causal = g.node(scope, "LessOrEqual", &[&keys_row, &queries_col], vec![])?;
        let real = real_keys(g, scope, &io.attention_mask)?;
        let allowed = g.node(scope, "And", &[&causal, &real], vec![])?;
        self.mask = additive_mask(g, scope, &allowed)?;

        // Shapes for splitting heads: [batch, seq, heads, head_dim].
        let scope = "/model/shapes";
        let q_tail = g.const_i64(&[h, d], &[2]);
        let kv_tail = g.const_i64(&[kvh, d], &[2]);
        self.q_shape = g.node(scope, "Concat", &[batch, seq, &q_tail], vec![attr_int("axis", 0)])?;
        self.kv_shape = g.node(scope, "Concat", &[batch, seq, &kv_tail], vec![attr_int("axis", 0)])?;
        self.attn_flat = g.const_i64(&[-1, h * d], &[2]);
        self.rep = h / kvh;
        self.expand = g.const_i64(&[1, 1, self.rep, 1, 1], &[5]);
        self.grouped = g.const_i64(&[0, h, -1, d], &[4]);
        self.axis2 = g.const_i64(&[2], &[1]);
        self.scale = g.const_f32(&[1.0 / (d as f32).sqrt()], &[]);
        Ok(())
    }

    fn input_norm(
        &mut self,
        g: &mut GraphBuilder,
        root: &str,
        layer: &LayerDesc,
    ) -> Result<String, BuildError> {
        let n = &layer.input_norm;
        rms_norm(g, n.eps, &format!("{root}/input_layernorm"), &self.x, &n.weight.name)
    }

    fn attention(
        &mut self,
        g: &mut GraphBuilder,
        spec: &DecoderSpec<'_>,
        root: &str,
        layer: &LayerDesc,
        normed: &str,
    ) -> Result<String, BuildError> {
        let a = &layer.attention;
        let attn = format!("{root}/attn");
        let head_dim = self.head_dim;
        let heads = |g: &mut GraphBuilder,
                     proj: &LinearDesc,
                     norm: Option<&NormDesc>,
                     shape: &str,
                     label: &str|
         -> Result<String, BuildError> {
            let scope = format!("{attn}/{label}");
            let bias = proj.bias.as_ref().map(|b| b.name.as_str());
            let y = linear(g, spec, &scope, normed, &proj.weight.name, bias)?;
            let y = g.node(&scope, "Reshape", &[&y, shape], vec![])?;
            let y = match norm {
                Some(n) => rms_norm(g, n.eps, &format!("{attn}/{label}_norm"), &y, &n.weight.name)?,
                None => y,
            };
            g.node(&scope, "Transpose", &[&y], vec![attr_ints("perm", &[0, 2, 1, 3])])
        };
        let q = heads(g, &a.q, a.q_norm.as_ref(), &self.q_shape, "q_proj")?;
        let k = heads(g, &a.k, a.k_norm.as_ref(), &self.kv_shape, "k_proj")?;
        let v = heads(g, &a.v, None, &self.kv_shape, "v_proj")?;
        let q = rope(g, head_dim, &format!("{attn}/q_rotary"), &q, &self.cos, &self.sin)?;
        let k = rope(g, head_dim, &format!("{attn}/k_rotary"), &k, &self.cos, &self.sin)?;

        let i = layer.index;
        let (present_k, present_v) = (io_name(PRESENT_KEY, i), io_name(PRESENT_VALUE, i));
        let (past_k, past_v) = (io_name(PAST_KEY, i), io_name(PAST_VALUE, i));
        g.node_into(
            &format!("{attn}/k_cache"),
            "Concat",
            &[&past_k, &k],
            &[&present_k],
            vec![attr_int("axis", 2)],
        )?;
        g.node_into(
            &format!("{attn}/v_cache"),
            "Concat",
            &[&past_v, &v],
            &[&present_v],
            vec![attr_int("axis", 2)],
        )?;
        // GQA: each kv head serves `rep` query heads, as transformers' repeat_kv lays them out.
        let (k_all, v_all) = if self.rep > 1 {
            let scope = format!("{attn}/repeat_kv");
            let repeat = |g: &mut GraphBuilder, x: &str| -> Result<String, BuildError> {
                let y = g.node(&scope, "Unsqueeze", &[x, &self.axis2], vec![])?;
                let y = g.node(&scope, "Expand", &[&y, &self.expand], vec![])?;
                g.node(&scope, "Reshape", &[&y, &self.grouped], vec![])
            };
            (repeat(g, &present_k)?, repeat(g, &present_v)?)
        } else {
            (present_k.clone(), present_v.clone())
        };
        let scope = format!("{attn}/sdpa");
        let k_t = g.node(&scope, "Transpose", &[&k_all], vec![attr_ints("perm", &[0, 1, 3, 2])])?;
        let scores = g.node(&scope, "MatMul", &[&q, &k_t], vec![])?;
        let scores = g.node(&scope, "Mul", &[&scores, &self.scale], vec![])?;
        let scores = g.node(&scope, "Add", &[&scores, &self.mask], vec![])?;
        let probs = g.node(&scope, "Softmax", &[&scores], vec![attr_int("axis", -1)])?;
        let context = g.node(&scope, "MatMul", &[&probs, &v_all], vec![])?;
        let context = g.node(&scope, "Transpose", &[&context], vec![attr_ints("perm", &[0, 2, 1, 3])])?;
        let context = g.node(&scope, "Reshape", &[&context, &self.attn_flat], vec![])?;
        let out = linear(g, spec, &format!("{attn}/o_proj"), &context, &a.o.weight.name, None)?;
        self.x = g.node(&format!("{root}/attn_residual"), "Add", &[&self.x, &out], vec![])?;
        let post = &layer.post_attention_norm;
        rms_norm(g, post.eps, &format!("{root}/post_attention_layernorm"), &self.x, &post.weight.name)
    }

    fn mlp_residual(&mut self, g: &mut GraphBuilder, root: &str, out: String) -> Result<(), BuildError> {
        self.x = g.node(&format!("{root}/mlp_residual"), "Add", &[&self.x, &out], vec![])?;
        Ok(())
    }

    fn final_norm(&mut self, g: &mut GraphBuilder, norm: &NormDesc) -> Result<String, BuildError> {
        rms_norm(g, norm.eps, "/model/norm", &self.x, &norm.weight.name)
    }
}

/// The graph inputs every decoder takes, with the outputs declared.
pub(super) struct Io {
    pub input_ids: String,
    pub attention_mask: String,
    pub position_ids: String,
}

/// Declares inputs and outputs with optimum's and onnxruntime-genai's names and dynamic axes.
pub(super) fn declare_io(g: &mut GraphBuilder, c: &DecoderDesc) -> Io {
    let (kvh, d, vocab) = (c.kv_heads as i64, c.head_dim as i64, c.vocab as i64);
    let (b, s, p, t) = (
        Dim::Named("batch_size"),
        Dim::Named("sequence_length"),
        Dim::Named("past_sequence_length"),
        Dim::Named("total_sequence_length"),
    );
    let input_ids = g.input(INPUT_IDS, Elem::I64, &[b.clone(), s.clone()]);
    let attention_mask = g.input(ATTENTION_MASK, Elem::I64, &[b.clone(), t.clone()]);
    let position_ids = g.input(POSITION_IDS, Elem::I64, &[b.clone(), s.clone()]);
    for layer in 0..c.layers.len() {
        for pattern in [PAST_KEY, PAST_VALUE] {
            g.input(
                &io_name(pattern, layer),
                Elem::F32,
                &[b.clone(), Dim::Fixed(kvh), p.clone(), Dim::Fixed(d)],
            );
        }
    }
    g.output(LOGITS, Elem::F32, &[b.clone(), s.clone(), Dim::Fixed(vocab)]);
    for layer in 0..c.layers.len() {
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
    let table = spec.config.decoder.embedding.name.as_str();
    let hidden = spec.config.decoder.hidden as i64;
    let embedded = match (spec.weight)(table) {
        WeightForm::Float(Elem::F16) => {
            let rows = g.node(scope, "Gather", &[table, input_ids], vec![attr_int("axis", 0)])?;
            g.node(scope, "Cast", &[&rows], vec![attr_int("to", 1)])?
        }
        WeightForm::Blocks { codes, scales, zero_points, bits, block, n, k } => {
            // The table's codes, [vocab, blocks, bytes per block] for MatMulNBits, viewed as
            // the [vocab, bytes per row] GatherBlockQuantized reads; rows are dequantized as
            // they are looked up, and a padded last block is cut off.
            let row_bytes = (k.div_ceil(block) * block * usize::from(bits) / 8) as i64;
            let shape = g.const_i64(&[n as i64, row_bytes], &[2]);
            let data = g.node(scope, "Reshape", &[&codes, &shape], vec![])?;
            let attributes = vec![
                attr_int("bits", i64::from(bits)),
                attr_int("block_size", block as i64),
                attr_int("gather_axis", 0),
                attr_int("quantize_axis", 1),
            ];
            let inputs = [data.as_str(), input_ids, scales.as_str(), zero_points.as_str()];
            let rows = g.node(scope, "GatherBlockQuantized", &inputs, attributes)?;
            if k.is_multiple_of(block) {
                rows
            } else {
                let (from, to, axes) =
                    (g.const_i64(&[0], &[1]), g.const_i64(&[hidden], &[1]), g.const_i64(&[-1], &[1]));
                g.node(scope, "Slice", &[&rows, &from, &to, &axes], vec![])?
            }
        }
        _ => g.node(scope, "Gather", &[table, input_ids], vec![attr_int("axis", 0)])?,
    };
    let flat = g.const_i64(&[-1, hidden], &[2]);
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

/// SwiGLU `down(silu(gate(x)) * up(x))` on `x`, SiLU as `gate * Sigmoid(gate)`, with the
/// weights `m` names, its nodes under `scope`.
pub(super) fn swiglu_of(
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
pub(super) fn moe_mlp(
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

/// The output head on the final hidden states. A `MatMul` or `MatMulNBits` head reads them as
/// [batch, seq, hidden] and writes `logits` itself: a graph output reshaped from an inner
/// value is a copy, and for a prompt the logits are the largest activation there is.
pub(super) fn lm_head(
    g: &mut GraphBuilder,
    spec: &DecoderSpec<'_>,
    normed: &str,
    sizes: &Sizes,
) -> Result<(), BuildError> {
    let scope = "/lm_head";
    let c = &spec.config.decoder;
    if matches!((spec.weight)(&spec.head), WeightForm::Blocks { .. } | WeightForm::Transposed(_)) {
        let tail = g.const_i64(&[c.hidden as i64], &[1]);
        let shape = g.node(scope, "Concat", &[&sizes.batch, &sizes.seq, &tail], vec![attr_int("axis", 0)])?;
        let x = g.node(scope, "Reshape", &[normed, &shape], vec![])?;
        project(g, spec, scope, &x, &spec.head, None, Some(LOGITS))?;
        return Ok(());
    }
    let logits = linear(g, spec, scope, normed, &spec.head, None)?;
    let v_tail = g.const_i64(&[c.vocab as i64], &[1]);
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
    project(g, spec, scope, x, weight, bias, None)
}

/// [`linear`], its last node writing `output` when one is named.
fn project(
    g: &mut GraphBuilder,
    spec: &DecoderSpec<'_>,
    scope: &str,
    x: &str,
    weight: &str,
    bias: Option<&str>,
    output: Option<&str>,
) -> Result<String, BuildError> {
    let emit = |g: &mut GraphBuilder, op: &str, inputs: &[&str], attributes, last: bool| match output {
        Some(out) if last => g.node_into(scope, op, inputs, &[out], attributes).map(|()| out.to_string()),
        _ => g.node(scope, op, inputs, attributes),
    };
    let gemm = |g: &mut GraphBuilder, w: &str| {
        let mut inputs = vec![x, w];
        if let Some(b) = bias {
            inputs.push(b);
        }
        emit(g, "Gemm", &inputs, vec![attr_int("transB", 1)], true)
    };
    let then_bias = |g: &mut GraphBuilder, op: &str, inputs: &[&str], attributes| {
        let y = emit(g, op, inputs, attributes, bias.is_none())?;
        match bias {
            Some(b) => emit(g, "Add", &[&y, b], vec![], true),
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
            then_bias(g, "MatMul", &[x, &w], vec![])
        }
        WeightForm::Transposed(_) => then_bias(g, "MatMul", &[x, weight], vec![]),
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
            then_bias(g, "MatMulNBits", &inputs, attributes)
        }
    }
}
