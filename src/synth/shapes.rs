//! Model shapes the generator knows: the fixtures' tiny ones and real Qwen sizes.

use serde_json::{Value, json};

use crate::model::TensorDtype;

#[derive(Debug, Clone)]
pub struct ModelShape {
    pub name: &'static str,
    pub model_type: &'static str,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub dtype: TensorDtype,
    /// Standard deviation of the random weights.
    pub init_range: f32,
}

pub const SHAPES: &[ModelShape] = &[
    ModelShape {
        name: "qwen3-tiny",
        model_type: "qwen3",
        vocab_size: 384,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        max_position_embeddings: 256,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: true,
        dtype: TensorDtype::F32,
        init_range: 0.1,
    },
    ModelShape {
        name: "qwen2-tiny",
        model_type: "qwen2",
        vocab_size: 384,
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        max_position_embeddings: 256,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: false,
        dtype: TensorDtype::F32,
        init_range: 0.1,
    },
    // Rows of 256 and 512 values, so llama.cpp's k-quant blocks fit (the tiny ones' 64 do not),
    // and an embedding larger than the tokenizer, like Qwen's.
    ModelShape {
        name: "qwen3-small",
        model_type: "qwen3",
        vocab_size: 448,
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 64,
        max_position_embeddings: 512,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: true,
        dtype: TensorDtype::F32,
        init_range: 0.05,
    },
    // Deep and wide enough that f32 rounding differs measurably between engines (logits of
    // magnitude ~10-30): what the scale-relative f32 tolerance is measured on.
    ModelShape {
        name: "qwen3-12x512",
        model_type: "qwen3",
        vocab_size: 448,
        hidden_size: 512,
        intermediate_size: 1536,
        num_hidden_layers: 12,
        num_attention_heads: 8,
        num_key_value_heads: 4,
        head_dim: 64,
        max_position_embeddings: 256,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: true,
        dtype: TensorDtype::F32,
        init_range: 0.1,
    },
    ModelShape {
        name: "qwen3-0.6b",
        model_type: "qwen3",
        vocab_size: 151_936,
        hidden_size: 1024,
        intermediate_size: 3072,
        num_hidden_layers: 28,
        num_attention_heads: 16,
        num_key_value_heads: 8,
        head_dim: 128,
        max_position_embeddings: 40_960,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: true,
        dtype: TensorDtype::BF16,
        init_range: 0.02,
    },
    ModelShape {
        name: "qwen2.5-7b",
        model_type: "qwen2",
        vocab_size: 152_064,
        hidden_size: 3584,
        intermediate_size: 18_944,
        num_hidden_layers: 28,
        num_attention_heads: 28,
        num_key_value_heads: 4,
        head_dim: 128,
        max_position_embeddings: 32_768,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: false,
        dtype: TensorDtype::BF16,
        init_range: 0.02,
    },
];

impl ModelShape {
    pub fn by_name(name: &str) -> Option<&'static ModelShape> {
        SHAPES.iter().find(|s| s.name == name)
    }

    /// The same shape stored in another dtype.
    pub fn with_dtype(&self, dtype: TensorDtype) -> ModelShape {
        ModelShape { dtype, ..self.clone() }
    }

    /// config.json as transformers writes it for this architecture.
    pub fn config_json(&self, bos: u32, eos: u32, pad: u32) -> Value {
        let architecture = if self.model_type == "qwen3" { "Qwen3ForCausalLM" } else { "Qwen2ForCausalLM" };
        let mut config = json!({
            "architectures": [architecture],
            "attention_dropout": 0.0,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initializer_range": self.init_range,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "max_window_layers": self.num_hidden_layers,
            "model_type": self.model_type,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "pad_token_id": pad,
            "rms_norm_eps": 1e-6,
            "rope_scaling": null,
            "rope_theta": self.rope_theta,
            "sliding_window": null,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": self.dtype.torch_name().unwrap_or("float32"),
            "use_cache": true,
            "use_sliding_window": false,
            "vocab_size": self.vocab_size,
        });
        if self.model_type == "qwen3" {
            config["head_dim"] = json!(self.head_dim);
            config["attention_bias"] = json!(false);
        }
        config
    }
}
