//! The one ONNX emitter: the layer loop every target shares, walking the decoder's
//! description, with the blocks that differ between targets supplied by the target's variant
//! (`decoder::Portable`: standard ops; `fused::Fused`: ONNX Runtime's fused operators). The
//! inputs, embedding, MLP and experts, and head are the same code for both.

use super::builder::{BuildError, GraphBuilder};
use super::decoder::{Blocks, DecoderSpec, Portable, declare_io, dynamic_sizes, lm_head, swiglu_of};
use super::fused::Fused;
use crate::config::Target;
use crate::model::decoder::MlpDesc;

/// Emits the whole decoder of `spec.config.decoder` into `g` with `blocks`' ops; weights are
/// referenced by their Hugging Face names.
pub fn build_decoder(g: &mut GraphBuilder, spec: &DecoderSpec<'_>, target: Target) -> Result<(), BuildError> {
    let mut blocks: Box<dyn Blocks> = match target {
        Target::Portable => Box::new(Portable::new(&spec.config.decoder)),
        Target::Ort => Box::new(Fused::new()),
    };
    let io = declare_io(g, &spec.config.decoder);
    let sizes = dynamic_sizes(g, &io)?;
    blocks.prelude(g, spec, &io, &sizes)?;
    let decoder = &spec.config.decoder;
    for layer in &decoder.layers {
        let root = format!("/model/layers.{}", layer.index);
        let normed = blocks.input_norm(g, &root, layer)?;
        let normed = blocks.attention(g, spec, &root, layer, &normed)?;
        let out = match &layer.mlp {
            MlpDesc::SwiGlu(m) => swiglu_of(g, spec, &format!("{root}/mlp"), m, &normed)?,
            MlpDesc::Moe(moe) => blocks.moe(g, spec, &root, moe, &normed)?,
        };
        blocks.mlp_residual(g, &root, out)?;
    }
    let normed = blocks.final_norm(g, &decoder.final_norm)?;
    lm_head(g, spec, &normed, &sizes)
}
