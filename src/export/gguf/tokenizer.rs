//! The tokenizer as llama.cpp reads it from a GGUF file: a `gpt2` (byte-level BPE) model with
//! `tokenizer.ggml.pre = "qwen2"` (which selects llama.cpp's Qwen2 pre-tokenizer regex), the
//! tokens by id with their types, the merges, the special token ids, `add_bos_token` and the
//! chat template. Ids the tokenizer does not use up to the model's vocabulary size (Qwen's
//! embedding has 151936 rows for 151669 tokens) become `[PAD<id>]` tokens of type UNUSED, as
//! llama.cpp's converter writes them.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use crate::error::{Error, ModelError};
use crate::gguf_constants::{
    TOKENIZER_ADD_BOS, TOKENIZER_BOS_ID, TOKENIZER_CHAT_TEMPLATE, TOKENIZER_EOS_ID, TOKENIZER_MERGES,
    TOKENIZER_MODEL, TOKENIZER_PAD_ID, TOKENIZER_PRE, TOKENIZER_TOKEN_TYPE, TOKENIZER_TOKENS,
};
use crate::model::HfConfig;
use crate::runtime::chat::ChatTemplate;

/// llama.cpp's token types (`enum llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

fn read_json(path: &Path) -> Result<Option<Json>, Error> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = crate::retry::read_to_string(path)
        .map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map(Some).map_err(|e| {
        ModelError::Json { path: path.to_path_buf(), message: format!("not valid JSON: {e}") }.into()
    })
}

/// A special token of tokenizer_config.json: a string or `{"content": ...}`.
fn special_content(config: &Json, key: &str) -> Option<String> {
    match &config[key] {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(Json::as_str).map(str::to_string),
        _ => None,
    }
}

/// `<|...|>`-style names are control tokens even when not flagged special (llama.cpp does the same).
fn looks_special(token: &str) -> bool {
    (token.starts_with("<|") && token.ends_with("|>")) || (token.starts_with("<｜") && token.ends_with("｜>"))
}

/// The tokenizer metadata for a model whose tokenizer files are in `dir` and whose embedding
/// has `rows` rows (one token each: llama.cpp refuses a vocabulary of another size).
pub fn metadata(dir: &Path, config: &HfConfig, rows: usize) -> Result<Vec<(String, Value)>, Error> {
    let path = dir.join("tokenizer.json");
    let invalid = |message: String| -> Error { ModelError::Json { path: path.clone(), message }.into() };
    let tokenizer = read_json(&path)?.ok_or_else(|| {
        Error::from(ModelError::NotAModel {
            path: dir.to_path_buf(),
            reason: "a GGUF export needs tokenizer.json (llama.cpp reads the vocabulary from the file)"
                .into(),
        })
    })?;
    let model = &tokenizer["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(invalid(format!(
            "model.type is {}, but llama.cpp's `gpt2` tokenizer needs a byte-level BPE model",
            model["type"]
        )));
    }
    let vocab = model["vocab"].as_object().ok_or_else(|| invalid("model.vocab is not an object".into()))?;
    let mut by_id: HashMap<u32, (String, i32)> = HashMap::new();
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| invalid(format!("vocab id of {token:?} is not a token id")))?;
        by_id.insert(id, (token.clone(), NORMAL));
    }
    for added in tokenizer["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(invalid(format!("added token {added} has no id or content")));
        };
        let special = added["special"].as_bool().unwrap_or(false) || looks_special(content);
        let id = u32::try_from(id).map_err(|_| invalid(format!("added token {content:?} has id {id}")))?;
        by_id.insert(id, (content.to_string(), if special { CONTROL } else { USER_DEFINED }));
    }
    if let Some(&largest) = by_id.keys().max()
        && largest as usize >= rows
    {
        let (token, _) = &by_id[&largest];
        return Err(invalid(format!(
            "token {token:?} has id {largest}, but the embedding has {rows} rows; llama.cpp would refuse the file (resize the embedding to the tokenizer, or drop the token)"
        )));
    }
    let size = rows;
    let (mut tokens, mut types) = (Vec::with_capacity(size), Vec::with_capacity(size));
    for id in 0..size as u32 {
        let (token, kind) = by_id.remove(&id).unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED));
        tokens.push(Value::String(token));
        types.push(Value::I32(kind));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            // Newer tokenizers write merges as pairs.
            Json::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => Ok(Value::String(format!("{a} {b}"))),
                _ => Err(invalid(format!("merge {m} is not a pair of strings"))),
            },
            other => Err(invalid(format!("merge {other} is not a string or a pair"))),
        })
        .collect::<Result<_, _>>()?;

    let config_json = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let id_of = |content: Option<String>| -> Option<u32> {
        let content = content?;
        tokens.iter().position(|t| matches!(t, Value::String(s) if *s == content)).map(|i| i as u32)
    };
    // tokenizer_config.json's token first, config.json's id otherwise (as gguf-py's SpecialVocab).
    let bos = id_of(special_content(&config_json, "bos_token")).or(config.bos_token_id);
    let eos = id_of(special_content(&config_json, "eos_token")).or(config.eos_token_ids.first().copied());
    let pad = id_of(special_content(&config_json, "pad_token")).or(config.pad_token_id);
    let mut out = vec![
        (TOKENIZER_MODEL.to_string(), Value::String("gpt2".into())),
        (TOKENIZER_PRE.to_string(), Value::String("qwen2".into())),
        (TOKENIZER_TOKENS.to_string(), Value::Array(tokens)),
        (TOKENIZER_TOKEN_TYPE.to_string(), Value::Array(types)),
        (TOKENIZER_MERGES.to_string(), Value::Array(merges)),
    ];
    for (key, id) in [(TOKENIZER_BOS_ID, bos), (TOKENIZER_EOS_ID, eos), (TOKENIZER_PAD_ID, pad)] {
        if let Some(id) = id {
            out.push((key.to_string(), Value::U32(id)));
        }
    }
    let add_bos = config_json["add_bos_token"].as_bool().unwrap_or(false);
    out.push((TOKENIZER_ADD_BOS.to_string(), Value::Bool(add_bos)));
    match ChatTemplate::from_dir(dir) {
        Ok(template) => {
            out.push((TOKENIZER_CHAT_TEMPLATE.to_string(), Value::String(template.source().to_string())))
        }
        Err(e) => tracing::warn!("the GGUF file gets no chat template: {e}"),
    }
    Ok(out)
}
