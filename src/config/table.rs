//! One layer of configuration as written in a manifest table: every key optional, unknown keys
//! refused, errors carrying the full key path (`package.metadata.model-export.export[1].dtype`).

use serde::Deserialize;
use serde_json::Value;

use super::schema::{Engine, ExportDtype, ExportOptions, Format, Target};
use crate::error::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TableLayer {
    pub base: Option<String>,
    pub adapter: Option<String>,
    pub out_dir: Option<String>,
    pub profile: Option<String>,
    pub max_memory: Option<String>,
    pub jobs: Option<u32>,
    pub allow_non_finite: Option<bool>,
    pub preset: Option<String>,
    pub report_template: Option<String>,
    pub validate: Option<ValidateLayer>,
    pub export: Option<Vec<ExportEntry>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ValidateLayer {
    pub prompts: Option<Vec<String>>,
    pub engines: Option<Vec<Engine>>,
    pub max_new_tokens: Option<u32>,
    pub chat_template: Option<bool>,
    pub text: Option<String>,
    pub text_context: Option<u32>,
    pub text_chunks: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExportEntry {
    pub name: String,
    pub format: Format,
    pub dtype: Option<ExportDtype>,
    pub target: Option<Target>,
    #[serde(default)]
    pub options: ExportOptions,
}

/// Parses a table found at `prefix` (e.g. `package.metadata.model-export`) in `origin`.
pub fn parse_table(value: &Value, prefix: &str, origin: &str) -> Result<TableLayer, ConfigError> {
    if !value.is_object() {
        return Err(ConfigError::Invalid {
            origin: origin.to_string(),
            key: prefix.to_string(),
            message: format!("expected a table, found {}", describe(value)),
            help: format!("write it as `[{prefix}]` followed by `key = value` lines"),
        });
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { prefix.to_string() } else { format!("{prefix}.{path}") };
        let message = e.inner().to_string();
        ConfigError::Invalid { origin: origin.to_string(), help: help_for(&message), key, message }
    })
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

/// A suggestion matched to the kind of mistake serde reported.
fn help_for(message: &str) -> String {
    if message.starts_with("unknown field") {
        "remove the key or fix its spelling: the accepted keys are listed above (see docs/config.md)".into()
    } else if message.starts_with("unknown variant") {
        "use one of the accepted values listed above".into()
    } else if message.starts_with("missing field") {
        "add the missing key to the entry".into()
    } else if message.starts_with("invalid type") {
        "change the value to the expected type (strings are quoted, numbers and booleans are not)".into()
    } else {
        "correct the value (see docs/config.md for every key)".into()
    }
}
