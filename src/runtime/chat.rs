//! Hugging Face chat templates, rendered with minijinja as Rust LLM servers do: Python string
//! methods through minijinja-contrib's pycompat, `raise_exception`, and the special tokens of
//! tokenizer_config.json in the context. The template comes from `chat_template.jinja` (what
//! current transformers writes) or from tokenizer_config.json's `chat_template`.

use std::path::Path;

use minijinja::{Environment, Error as JinjaError, ErrorKind, context};
use serde::Serialize;
use serde_json::Value;

use crate::error::ModelError;

#[derive(Debug, Clone, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

pub struct ChatTemplate {
    source: String,
    origin: std::path::PathBuf,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

fn special_token(config: &Value, key: &str) -> Option<String> {
    match &config[key] {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl ChatTemplate {
    /// The chat template of a model, checkpoint or export folder.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = match std::fs::read(&config_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| ModelError::Json { path: config_path.clone(), message: e.to_string() })?,
            Err(_) => Value::Null,
        };
        let jinja = dir.join("chat_template.jinja");
        let (source, origin) = if jinja.is_file() {
            let text = std::fs::read_to_string(&jinja)
                .map_err(|source| ModelError::Io { path: jinja.clone(), source })?;
            (text, jinja)
        } else {
            let source = match &config["chat_template"] {
                Value::String(s) => Some(s.clone()),
                // A list of named templates: the default one.
                Value::Array(items) => items
                    .iter()
                    .find(|t| t["name"] == "default")
                    .and_then(|t| t["template"].as_str())
                    .map(str::to_string),
                _ => None,
            };
            let source = source.ok_or_else(|| ModelError::NotAModel {
                path: dir.to_path_buf(),
                reason:
                    "it has no chat template (chat_template.jinja or tokenizer_config.json's chat_template)"
                        .into(),
            })?;
            (source, config_path)
        };
        Ok(Self {
            source,
            origin,
            bos_token: special_token(&config, "bos_token"),
            eos_token: special_token(&config, "eos_token"),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The prompt text for `messages`, as transformers' `apply_chat_template(tokenize=False)`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, ModelError> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, message))
        });
        let error = |e: JinjaError| ModelError::Json {
            path: self.origin.clone(),
            message: format!(
                "chat template: {e}{}",
                e.line().map(|l| format!(" (line {l})")).unwrap_or_default()
            ),
        };
        env.add_template("chat", &self.source).map_err(error)?;
        let template = env.get_template("chat").map_err(error)?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(error)
    }
}
