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

use super::builder::{BuildError, Elem, GraphBuilder, attr_float, attr_int, attr_string};
use super::decoder::{
    Blocks, DecoderSpec, Io, ROPE_COS, ROPE_SIN, Sizes, additive_mask, embed, linear, moe_mlp, real_keys,
};
use super::weights::WeightForm;
use crate::model::decoder::{LayerDesc, LinearDesc, MoeDesc, NormDesc};
use crate::onnx_io::{PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE, io_name};

/// The `ort` target's blocks. Activations are [batch*seq, hidden] between blocks and
/// [batch, seq, heads*head_dim] around attention, as the fused ops want them.
pub(super) struct Fused {
    /// The residual stream, and the block output not yet added to it (the next norm adds it).
    residual: String,
    pending: Option<String>,
    position_ids: String,
    seqlens_k: String,
    total_i32: String,
    bias: String,
    q3: String,
    kv3: String,
    per_head: String,
    attn_flat: String,
}

impl Fused {
    pub(super) fn new() -> Self {
        Fused {
            residual: String::new(),
            pending: None,
            position_ids: String::new(),
            seqlens_k: String::new(),
            total_i32: String::new(),
            bias: String::new(),
            q3: String::new(),
            kv3: String::new(),
            per_head: String::new(),
            attn_flat: String::new(),
        }
    }

    fn norm(
        &self,
        g: &mut GraphBuilder,
        scope: &str,
        x: &str,
        norm: &NormDesc,
    ) -> Result<String, BuildError> {
        let eps = attr_float("epsilon", norm.eps as f32);
        let attrs = vec![attr_int("axis", -1), eps, attr_int("stash_type", 1)];
        g.node(scope, "SimplifiedLayerNormalization", &[x, &norm.weight.name], attrs)
    }

    /// (normed, input + skip) in one op.
    fn skip_norm(
        &self,
        g: &mut GraphBuilder,
        scope: &str,
        x: &str,
        skip: &str,
        norm: &NormDesc,
        want_sum: bool,
    ) -> Result<(String, String), BuildError> {
        let outputs = g.node_multi(
            scope,
            "SkipSimplifiedLayerNormalization",
            &[x, skip, &norm.weight.name],
            &[true, false, false, want_sum],
            vec![attr_float("epsilon", norm.eps as f32)],
        )?;
        Ok((outputs[0].clone(), outputs[3].clone()))
    }

    /// The normed input: the pending block output is added to the residual stream first.
    fn fold(&mut self, g: &mut GraphBuilder, scope: &str, norm: &NormDesc) -> Result<String, BuildError> {
        match self.pending.take() {
            None => self.norm(g, scope, &self.residual, norm),
            Some(out) => {
                let (normed, sum) = self.skip_norm(g, scope, &out, &self.residual, norm, true)?;
                self.residual = sum;
                Ok(normed)
            }
        }
    }
}

impl Blocks for Fused {
    fn prelude(
        &mut self,
        g: &mut GraphBuilder,
        spec: &DecoderSpec<'_>,
        io: &Io,
        sizes: &Sizes,
    ) -> Result<(), BuildError> {
        let c = &spec.config.decoder;
        let (h, kvh, d) = (c.heads as i64, c.kv_heads as i64, c.head_dim as i64);
        let (batch, seq, total) = (&sizes.batch, &sizes.seq, &sizes.total);
        self.position_ids = io.position_ids.clone();

        // GroupQueryAttention's lengths: every row holds `total` keys (padding is in the bias).
        let scope = "/model/attn_lengths";
        let one_s = g.const_i64(&[1], &[]);
        let last = g.node(scope, "Sub", &[&sizes.total_scalar, &one_s], vec![])?;
        let last = g.node(scope, "Expand", &[&last, batch], vec![])?;
        self.seqlens_k = g.node(scope, "Cast", &[&last], vec![attr_int("to", 6)])?;
        self.total_i32 = g.node(scope, "Cast", &[&sizes.total_scalar], vec![attr_int("to", 6)])?;

        self.residual = embed(g, spec, &io.input_ids)?;

        // Padding as an additive bias [batch, 1, seq, total]; GroupQueryAttention itself is causal.
        let scope = "/model/attn_mask";
        let real = real_keys(g, scope, &io.attention_mask)?;
        let bias = additive_mask(g, scope, &real)?;
        let one = g.const_i64(&[1], &[1]);
        let bias_shape = g.node(scope, "Concat", &[batch, &one, seq, total], vec![attr_int("axis", 0)])?;
        self.bias = g.node(scope, "Expand", &[&bias, &bias_shape], vec![])?;

        let scope = "/model/shapes";
        let q3_tail = g.const_i64(&[h * d], &[1]);
        let kv3_tail = g.const_i64(&[kvh * d], &[1]);
        self.q3 = g.node(scope, "Concat", &[batch, seq, &q3_tail], vec![attr_int("axis", 0)])?;
        self.kv3 = g.node(scope, "Concat", &[batch, seq, &kv3_tail], vec![attr_int("axis", 0)])?;
        self.per_head = g.const_i64(&[-1, d], &[2]);
        self.attn_flat = g.const_i64(&[-1, h * d], &[2]);
        Ok(())
    }

    fn input_norm(
        &mut self,
        g: &mut GraphBuilder,
        root: &str,
        layer: &LayerDesc,
    ) -> Result<String, BuildError> {
        self.fold(g, &format!("{root}/input_layernorm"), &layer.input_norm)
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
        let (h, kvh, d) = (a.heads as i64, a.kv_heads as i64, a.head_dim as i64);
        let attn = format!("{root}/attn");
        let project = |f: &Self,
                       g: &mut GraphBuilder,
                       proj: &LinearDesc,
                       norm: Option<&NormDesc>,
                       shape3: &str,
                       heads: i64,
                       label: &str|
         -> Result<String, BuildError> {
            let scope = format!("{attn}/{label}");
            let bias = proj.bias.as_ref().map(|b| b.name.as_str());
            let y = linear(g, spec, &scope, normed, &proj.weight.name, bias)?;
            let y = match norm {
                Some(n) => {
                    let norm_scope = format!("{attn}/{label}_norm");
                    let per = g.node(&norm_scope, "Reshape", &[&y, &f.per_head], vec![])?;
                    f.norm(g, &norm_scope, &per, n)?
                }
                None => y,
            };
            let y = g.node(&scope, "Reshape", &[&y, shape3], vec![])?;
            if heads == 0 {
                return Ok(y);
            }
            let rotary = vec![attr_int("interleaved", 0), attr_int("num_heads", heads)];
            g.node(
                &format!("{attn}/{label}_rotary"),
                "RotaryEmbedding",
                &[&y, &f.position_ids, ROPE_COS, ROPE_SIN],
                rotary,
            )
        };
        let q = project(self, g, &a.q, a.q_norm.as_ref(), &self.q3, h, "q_proj")?;
        let k = project(self, g, &a.k, a.k_norm.as_ref(), &self.kv3, kvh, "k_proj")?;
        let v = project(self, g, &a.v, None, &self.kv3, 0, "v_proj")?;

        let i = layer.index;
        let (past_k, past_v) = (io_name(PAST_KEY, i), io_name(PAST_VALUE, i));
        let (present_k, present_v) = (io_name(PRESENT_KEY, i), io_name(PRESENT_VALUE, i));
        let context = format!("{attn}/GroupQueryAttention_output_0");
        g.node_into(
            &attn,
            "GroupQueryAttention",
            &[&q, &k, &v, &past_k, &past_v, &self.seqlens_k, &self.total_i32, "", "", "", &self.bias],
            &[&context, &present_k, &present_v],
            vec![
                attr_int("num_heads", h),
                attr_int("kv_num_heads", kvh),
                attr_float("scale", 1.0 / (d as f32).sqrt()),
            ],
        )?;
        let context = g.node(&attn, "Reshape", &[&context, &self.attn_flat], vec![])?;
        let out = linear(g, spec, &format!("{attn}/o_proj"), &context, &a.o.weight.name, None)?;
        self.pending = Some(out);
        self.fold(g, &format!("{root}/post_attention_layernorm"), &layer.post_attention_norm)
    }

    /// ONNX Runtime's `MoE` op (its CPU kernel: SwiGLU experts with gate and up interleaved row
    /// by row in fc1, [experts, 2 * intermediate, hidden], and down in fc2; measured equal to
    /// transformers' block within f32 rounding, docs/onnx.md) when the experts are float;
    /// quantized experts are standard ops, as in the portable graph.
    fn moe(
        &mut self,
        g: &mut GraphBuilder,
        spec: &DecoderSpec<'_>,
        root: &str,
        moe: &MoeDesc,
        normed: &str,
    ) -> Result<String, BuildError> {
        let float = |name: &str| match (spec.weight)(name) {
            WeightForm::Float(elem) => Some(elem),
            _ => None,
        };
        let all_float = moe
            .experts
            .iter()
            .all(|e| [&e.gate, &e.up, &e.down].iter().all(|l| float(&l.weight.name).is_some()));
        if !all_float {
            return moe_mlp(g, spec, root, moe, normed);
        }
        let scope = format!("{root}/mlp");
        let logits = linear(g, spec, &format!("{scope}/gate"), normed, &moe.router.weight.name, None)?;
        let experts_scope = format!("{scope}/experts");
        let as_f32 = |g: &mut GraphBuilder, name: &str| -> Result<String, BuildError> {
            match float(name) {
                Some(Elem::F16) => g.node(&experts_scope, "Cast", &[name], vec![attr_int("to", 1)]),
                _ => Ok(name.to_string()),
            }
        };
        let (axis0, axis1) = (g.const_i64(&[0], &[1]), g.const_i64(&[1], &[1]));
        let inter = moe.experts.first().map_or(0, |e| e.intermediate) as i64;
        let hidden = spec.config.decoder.hidden as i64;
        let pair_shape = g.const_i64(&[2 * inter, hidden], &[2]);
        let (mut fc1, mut fc2) = (Vec::new(), Vec::new());
        for expert in &moe.experts {
            let gate = as_f32(g, &expert.gate.weight.name)?;
            let up = as_f32(g, &expert.up.weight.name)?;
            let gate = g.node(&experts_scope, "Unsqueeze", &[&gate, &axis1], vec![])?;
            let up = g.node(&experts_scope, "Unsqueeze", &[&up, &axis1], vec![])?;
            let pairs = g.node(&experts_scope, "Concat", &[&gate, &up], vec![attr_int("axis", 1)])?;
            let interleaved = g.node(&experts_scope, "Reshape", &[&pairs, &pair_shape], vec![])?;
            fc1.push(g.node(&experts_scope, "Unsqueeze", &[&interleaved, &axis0], vec![])?);
            let down = as_f32(g, &expert.down.weight.name)?;
            fc2.push(g.node(&experts_scope, "Unsqueeze", &[&down, &axis0], vec![])?);
        }
        let (fc1, fc2): (Vec<&str>, Vec<&str>) =
            (fc1.iter().map(String::as_str).collect(), fc2.iter().map(String::as_str).collect());
        let fc1 = g.node(&experts_scope, "Concat", &fc1, vec![attr_int("axis", 0)])?;
        let fc2 = g.node(&experts_scope, "Concat", &fc2, vec![attr_int("axis", 0)])?;
        let attributes = vec![
            attr_int("k", moe.top_k as i64),
            attr_string("activation_type", "swiglu"),
            attr_int("swiglu_fusion", 1),
            attr_float("activation_alpha", 1.0),
            attr_float("activation_beta", 0.0),
            attr_int("normalize_routing_weights", i64::from(moe.norm_topk_prob)),
        ];
        g.node(&scope, "MoE", &[normed, &logits, &fc1, "", &fc2], attributes)
    }

    fn mlp_residual(&mut self, _: &mut GraphBuilder, _: &str, out: String) -> Result<(), BuildError> {
        self.pending = Some(out);
        Ok(())
    }

    fn final_norm(&mut self, g: &mut GraphBuilder, norm: &NormDesc) -> Result<String, BuildError> {
        match self.pending.take() {
            Some(out) => Ok(self.skip_norm(g, "/model/norm", &out, &self.residual, norm, false)?.0),
            None => self.norm(g, "/model/norm", &self.residual, norm),
        }
    }
}
