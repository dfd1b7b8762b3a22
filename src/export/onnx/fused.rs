//! The Qwen decoder with ONNX Runtime's fused operators (the `ort` target), the layout
//! onnxruntime-genai's own builder writes: `SimplifiedLayerNormalization` and
//! `SkipSimplifiedLayerNormalization` (the residual add fused into the norm), com.microsoft
//! `RotaryEmbedding` driven by `position_ids` (so left-padded rows rotate correctly),
//! `GroupQueryAttention` with the KV cache, and `MatMulNBits` for quantized matrices.
//!
//! GroupQueryAttention masks causally from `seqlens_k` (every row is `total - 1` here) and takes
//! the padding mask as an additive `attention_bias` built from `attention_mask`, the same mask
//! as the portable graph; its own rotary path is not used, because it derives positions from
//! sequence lengths, which is wrong for left padding.

use super::builder::{BuildError, GraphBuilder, attr_float, attr_int};
use super::decoder::{
    DecoderSpec, ROPE_COS, ROPE_SIN, additive_mask, declare_io, dynamic_sizes, embed, layer_weight, linear,
    lm_head, mlp, real_keys,
};
use crate::onnx_io::{PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE, io_name};
use crate::profile::LayerTensor;

struct Fused<'a, 'b> {
    g: &'a mut GraphBuilder,
    spec: &'a DecoderSpec<'b>,
    eps: f32,
}

impl Fused<'_, '_> {
    fn norm(&mut self, scope: &str, x: &str, weight: &str) -> Result<String, BuildError> {
        let attrs = vec![attr_int("axis", -1), attr_float("epsilon", self.eps), attr_int("stash_type", 1)];
        self.g.node(scope, "SimplifiedLayerNormalization", &[x, weight], attrs)
    }

    /// (normed, input + skip) in one op.
    fn skip_norm(
        &mut self,
        scope: &str,
        x: &str,
        skip: &str,
        weight: &str,
        want_sum: bool,
    ) -> Result<(String, String), BuildError> {
        let outputs = self.g.node_multi(
            scope,
            "SkipSimplifiedLayerNormalization",
            &[x, skip, weight],
            &[true, false, false, want_sum],
            vec![attr_float("epsilon", self.eps)],
        )?;
        Ok((outputs[0].clone(), outputs[3].clone()))
    }
}

/// Emits the fused decoder into `g`. Activations are [batch*seq, hidden] between blocks and
/// [batch, seq, heads*head_dim] around attention, as the fused ops want them.
pub fn build_fused_decoder(g: &mut GraphBuilder, spec: &DecoderSpec<'_>) -> Result<(), BuildError> {
    let c = spec.config;
    let (h, kvh, d) = (c.num_attention_heads as i64, c.num_key_value_heads as i64, c.head_dim as i64);
    let io = declare_io(g, c);
    let sizes = dynamic_sizes(g, &io)?;
    let (batch, seq, total, total_scalar) =
        (sizes.batch.clone(), sizes.seq.clone(), sizes.total.clone(), sizes.total_scalar.clone());
    let position_ids = io.position_ids.clone();
    let mut f = Fused { g, spec, eps: c.rms_norm_eps as f32 };
    let names = &spec.profile.tensors;

    // GroupQueryAttention's lengths: every row holds `total` keys (padding is in the bias).
    let scope = "/model/attn_lengths";
    let one_s = f.g.const_i64(&[1], &[]);
    let last = f.g.node(scope, "Sub", &[&total_scalar, &one_s], vec![])?;
    let last = f.g.node(scope, "Expand", &[&last, &batch], vec![])?;
    let seqlens_k = f.g.node(scope, "Cast", &[&last], vec![attr_int("to", 6)])?;
    let total_i32 = f.g.node(scope, "Cast", &[&total_scalar], vec![attr_int("to", 6)])?;

    let mut residual = embed(f.g, spec, &io.input_ids)?;

    // Padding as an additive bias [batch, 1, seq, total]; GroupQueryAttention itself is causal.
    let scope = "/model/attn_mask";
    let real = real_keys(f.g, scope, &io.attention_mask)?;
    let bias = additive_mask(f.g, scope, &real)?;
    let one = f.g.const_i64(&[1], &[1]);
    let bias_shape = f.g.node(scope, "Concat", &[&batch, &one, &seq, &total], vec![attr_int("axis", 0)])?;
    let bias = f.g.node(scope, "Expand", &[&bias, &bias_shape], vec![])?;

    let scope = "/model/shapes";
    let q3_tail = f.g.const_i64(&[h * d], &[1]);
    let kv3_tail = f.g.const_i64(&[kvh * d], &[1]);
    let q3 = f.g.node(scope, "Concat", &[&batch, &seq, &q3_tail], vec![attr_int("axis", 0)])?;
    let kv3 = f.g.node(scope, "Concat", &[&batch, &seq, &kv3_tail], vec![attr_int("axis", 0)])?;
    let per_head = f.g.const_i64(&[-1, d], &[2]);
    let attn_flat = f.g.const_i64(&[-1, h * d], &[2]);

    let tensor = |layer: usize, role: LayerTensor| spec.profile.layer_tensor(layer, role);
    let mut pending: Option<String> = None;
    for layer in 0..c.num_hidden_layers {
        let root = format!("/model/layers.{layer}");
        let required = |role: LayerTensor| layer_weight(spec, layer, role);
        let norm_w = required(LayerTensor::InputNorm)?;
        let scope = format!("{root}/input_layernorm");
        let normed = match pending.take() {
            None => f.norm(&scope, &residual, &norm_w)?,
            Some(out) => {
                let (normed, sum) = f.skip_norm(&scope, &out, &residual, &norm_w, true)?;
                residual = sum;
                normed
            }
        };

        let attn = format!("{root}/attn");
        let project = |f: &mut Fused<'_, '_>,
                       proj: LayerTensor,
                       bias_role: LayerTensor,
                       norm: Option<LayerTensor>,
                       shape3: &str,
                       heads: i64,
                       label: &str|
         -> Result<String, BuildError> {
            let scope = format!("{attn}/{label}");
            let y =
                linear(f.g, f.spec, &scope, &normed, &required(proj)?, tensor(layer, bias_role).as_deref())?;
            let y = match norm.and_then(|n| tensor(layer, n)) {
                Some(w) => {
                    let norm_scope = format!("{attn}/{label}_norm");
                    let per = f.g.node(&norm_scope, "Reshape", &[&y, &per_head], vec![])?;
                    f.norm(&norm_scope, &per, &w)?
                }
                None => y,
            };
            let y = f.g.node(&scope, "Reshape", &[&y, shape3], vec![])?;
            if heads == 0 {
                return Ok(y);
            }
            let rotary = vec![attr_int("interleaved", 0), attr_int("num_heads", heads)];
            f.g.node(
                &format!("{attn}/{label}_rotary"),
                "RotaryEmbedding",
                &[&y, &position_ids, ROPE_COS, ROPE_SIN],
                rotary,
            )
        };
        let q = project(
            &mut f,
            LayerTensor::QProj,
            LayerTensor::QBias,
            Some(LayerTensor::QNorm),
            &q3,
            h,
            "q_proj",
        )?;
        let k = project(
            &mut f,
            LayerTensor::KProj,
            LayerTensor::KBias,
            Some(LayerTensor::KNorm),
            &kv3,
            kvh,
            "k_proj",
        )?;
        let v = project(&mut f, LayerTensor::VProj, LayerTensor::VBias, None, &kv3, 0, "v_proj")?;

        let (past_k, past_v) = (io_name(PAST_KEY, layer), io_name(PAST_VALUE, layer));
        let (present_k, present_v) = (io_name(PRESENT_KEY, layer), io_name(PRESENT_VALUE, layer));
        let context = format!("{attn}/GroupQueryAttention_output_0");
        f.g.node_into(
            &attn,
            "GroupQueryAttention",
            &[&q, &k, &v, &past_k, &past_v, &seqlens_k, &total_i32, "", "", "", &bias],
            &[&context, &present_k, &present_v],
            vec![
                attr_int("num_heads", h),
                attr_int("kv_num_heads", kvh),
                attr_float("scale", 1.0 / (d as f32).sqrt()),
            ],
        )?;
        let context = f.g.node(&attn, "Reshape", &[&context, &attn_flat], vec![])?;
        let out =
            linear(f.g, f.spec, &format!("{attn}/o_proj"), &context, &required(LayerTensor::OProj)?, None)?;

        let scope = format!("{root}/post_attention_layernorm");
        let (normed, sum) =
            f.skip_norm(&scope, &out, &residual, &required(LayerTensor::PostAttentionNorm)?, true)?;
        residual = sum;
        pending = Some(mlp(f.g, spec, &root, layer, &normed)?);
    }

    let normed = match pending {
        Some(out) => f.skip_norm("/model/norm", &out, &residual, names.final_norm, false)?.0,
        None => f.norm("/model/norm", &residual, names.final_norm)?,
    };
    lm_head(f.g, spec, &normed, &sizes)
}
