//! `genai_config.json`, the file onnxruntime-genai reads beside a model: architecture sizes,
//! input/output names, eos and pad ids, and search defaults from generation_config.json.

use serde_json::{Value, json};

use crate::model::ModelFolder;
use crate::onnx_io::{PAST_KEY, PAST_VALUE, PRESENT_KEY, PRESENT_VALUE};

pub fn genai_config(base: &ModelFolder, filename: &str) -> Value {
    let c = &base.config;
    let generation: Value = std::fs::read(base.dir.join("generation_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    // generation_config's eos list (Qwen lists several) wins over config.json's single id.
    let eos = match &generation["eos_token_id"] {
        Value::Array(ids) => Value::Array(ids.clone()),
        Value::Number(n) => json!([n]),
        _ => json!(c.eos_token_ids),
    };
    let pad = generation["pad_token_id"]
        .as_u64()
        .or(c.pad_token_id.map(u64::from))
        .or(c.eos_token_ids.first().map(|&e| u64::from(e)))
        .unwrap_or(0);
    let number = |key: &str, default: f64| generation[key].as_f64().unwrap_or(default);
    json!({
        "model": {
            "bos_token_id": c.bos_token_id,
            "context_length": c.max_position_embeddings,
            "decoder": {
                "session_options": { "log_id": "onnxruntime-genai", "provider_options": [] },
                "filename": filename,
                "head_size": c.head_dim,
                "hidden_size": c.hidden_size,
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": PAST_KEY,
                    "past_value_names": PAST_VALUE
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": PRESENT_KEY,
                    "present_value_names": PRESENT_VALUE
                },
                "num_attention_heads": c.num_attention_heads,
                "num_hidden_layers": c.num_hidden_layers,
                "num_key_value_heads": c.num_key_value_heads
            },
            "eos_token_id": eos,
            "pad_token_id": pad,
            "type": base.profile.genai_type,
            "vocab_size": c.vocab_size
        },
        "search": {
            "diversity_penalty": 0.0,
            "do_sample": generation["do_sample"].as_bool().unwrap_or(false),
            "early_stopping": true,
            "length_penalty": 1.0,
            "max_length": c.max_position_embeddings,
            "min_length": 0,
            "no_repeat_ngram_size": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            // The graph concatenates its cache; a shared buffer needs in-place writes.
            "past_present_share_buffer": false,
            "repetition_penalty": number("repetition_penalty", 1.0),
            "temperature": number("temperature", 1.0),
            "top_k": generation["top_k"].as_u64().unwrap_or(1),
            "top_p": number("top_p", 1.0)
        }
    })
}
