//! The model's GGUF metadata: `general.*` and the architecture's hyperparameters under the
//! keys llama.cpp reads for `qwen2` / `qwen3` (`<arch>.context_length`, ...).

use candle_core::quantized::gguf_file::Value;

use crate::error::{Error, ModelError};
use crate::gguf_constants::{
    ALIGNMENT, GENERAL_ALIGNMENT, GENERAL_ARCHITECTURE, GENERAL_FILE_TYPE, GENERAL_NAME,
    GENERAL_QUANTIZATION_VERSION, GENERAL_TYPE, QUANTIZATION_VERSION, arch, arch_key,
};
use crate::model::HfConfig;
use crate::model::rope::RopeScaling;
use crate::profile::Profile;

/// `rows`: the embedding's rows (llama.cpp's vocabulary size).
pub fn metadata(
    profile: &Profile,
    config: &HfConfig,
    rows: usize,
    name: &str,
    file_type: u32,
) -> Result<Vec<(String, Value)>, Error> {
    let arch = profile.gguf.architecture;
    let key = |k: &str| arch_key(arch, k);
    let u32_of = |field: &str, v: usize| -> Result<Value, Error> {
        u32::try_from(v).map(Value::U32).map_err(|_| {
            ModelError::Json {
                path: config.path.clone(),
                message: format!("{field} = {v} does not fit GGUF's 32-bit field"),
            }
            .into()
        })
    };
    let mut out = vec![
        (GENERAL_ARCHITECTURE.to_string(), Value::String(arch.into())),
        (GENERAL_TYPE.to_string(), Value::String("model".into())),
        (GENERAL_NAME.to_string(), Value::String(name.into())),
        (GENERAL_FILE_TYPE.to_string(), Value::U32(file_type)),
        (GENERAL_QUANTIZATION_VERSION.to_string(), Value::U32(QUANTIZATION_VERSION)),
        (GENERAL_ALIGNMENT.to_string(), Value::U32(ALIGNMENT as u32)),
        (key(arch::VOCAB_SIZE), u32_of("vocab_size", rows)?),
        (key(arch::CONTEXT_LENGTH), u32_of("max_position_embeddings", config.max_position_embeddings)?),
        (key(arch::EMBEDDING_LENGTH), u32_of("hidden_size", config.hidden_size)?),
        (key(arch::BLOCK_COUNT), u32_of("num_hidden_layers", config.num_hidden_layers)?),
        (key(arch::FEED_FORWARD_LENGTH), u32_of("intermediate_size", config.intermediate_size)?),
        (key(arch::HEAD_COUNT), u32_of("num_attention_heads", config.num_attention_heads)?),
        (key(arch::HEAD_COUNT_KV), u32_of("num_key_value_heads", config.num_key_value_heads)?),
        (key(arch::KEY_LENGTH), u32_of("head_dim", config.head_dim)?),
        (key(arch::VALUE_LENGTH), u32_of("head_dim", config.head_dim)?),
        // The whole head rotates; older llama.cpp builds guess hidden/heads without this key,
        // which is wrong for Qwen3 (head_dim 128 with 1024/16 = 64).
        (key(arch::ROPE_DIMENSION_COUNT), u32_of("head_dim", config.head_dim)?),
        (key(arch::ROPE_FREQ_BASE), Value::F32(config.rope_theta as f32)),
        (key(arch::RMS_NORM_EPS), Value::F32(config.rms_norm_eps as f32)),
    ];
    if let Some(moe) = config.decoder.moe_layers().next() {
        let width = moe.experts.first().map_or(0, |e| e.intermediate);
        out.push((key(arch::EXPERT_COUNT), u32_of("num_experts", moe.experts.len())?));
        out.push((key(arch::EXPERT_USED_COUNT), u32_of("num_experts_per_tok", moe.top_k)?));
        out.push((key(arch::EXPERT_FEED_FORWARD_LENGTH), u32_of("moe_intermediate_size", width)?));
    }
    // rope_scaling (YaRN or linear context extension), as the converter writes it. llama.cpp's
    // metadata holds YaRN's factor and original context only: other YaRN settings are refused.
    match &config.rope_scaling {
        RopeScaling::Default => {}
        RopeScaling::Linear { factor } => {
            out.push((key(arch::ROPE_SCALING_TYPE), Value::String("linear".into())));
            out.push((key(arch::ROPE_SCALING_FACTOR), Value::F32(*factor as f32)));
        }
        yarn @ RopeScaling::Yarn {
            original_max_position_embeddings,
            attention_factor,
            beta_fast,
            beta_slow,
            mscale,
            mscale_all_dim,
            truncate,
            ..
        } => {
            let set = [
                ("attention_factor", attention_factor.is_some()),
                ("beta_fast", beta_fast.is_some_and(|b| b != 32.0)),
                ("beta_slow", beta_slow.is_some_and(|b| b != 1.0)),
                ("mscale", mscale.is_some()),
                ("mscale_all_dim", mscale_all_dim.is_some()),
                ("truncate", *truncate == Some(false)),
            ];
            if let Some((name, _)) = set.iter().find(|(_, given)| *given) {
                return Err(ModelError::UnsupportedConfig {
                    path: config.path.clone(),
                    key: format!("rope_scaling.{name}"),
                    value: "set".into(),
                    supported: "for GGUF: YaRN with factor and original_max_position_embeddings only (llama.cpp's rope.scaling keys); export safetensors or ONNX for this model".into(),
                }
                .into());
            }
            let factor = yarn.yarn_effective_factor(config.max_position_embeddings).unwrap_or(1.0);
            out.push((key(arch::ROPE_SCALING_TYPE), Value::String("yarn".into())));
            out.push((key(arch::ROPE_SCALING_FACTOR), Value::F32(factor as f32)));
            let original = original_max_position_embeddings.unwrap_or(config.max_position_embeddings);
            out.push((
                key(arch::ROPE_SCALING_ORIGINAL_CONTEXT),
                u32_of("original_max_position_embeddings", original)?,
            ));
        }
    }
    Ok(out)
}
