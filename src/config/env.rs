//! `MODEL_EXPORT_*` environment overrides: one variable per scalar key of the table.

use std::collections::BTreeMap;

use super::schema::Engine;
use super::table::{TableLayer, ValidateLayer};
use crate::error::ConfigError;

pub const PREFIX: &str = "MODEL_EXPORT_";

/// The variables this layer reads, with what they override.
pub const VARIABLES: &[(&str, &str)] = &[
    ("MODEL_EXPORT_BASE", "base"),
    ("MODEL_EXPORT_ADAPTER", "adapter"),
    ("MODEL_EXPORT_OUT_DIR", "out-dir"),
    ("MODEL_EXPORT_PROFILE", "profile"),
    ("MODEL_EXPORT_MAX_MEMORY", "max-memory"),
    ("MODEL_EXPORT_JOBS", "jobs"),
    ("MODEL_EXPORT_ALLOW_NON_FINITE", "allow-non-finite (true/false)"),
    ("MODEL_EXPORT_VALIDATE_PROMPTS", "validate.prompts (a JSON array of strings, or one prompt)"),
    ("MODEL_EXPORT_VALIDATE_ENGINES", "validate.engines (comma-separated)"),
    ("MODEL_EXPORT_VALIDATE_MAX_NEW_TOKENS", "validate.max-new-tokens"),
    ("MODEL_EXPORT_VALIDATE_CHAT_TEMPLATE", "validate.chat-template (true/false)"),
];

/// Variables with our prefix that are not configuration (read elsewhere, e.g. by tests).
const OTHER_VARIABLES: &[&str] = &[
    "MODEL_EXPORT_LOG",
    "MODEL_EXPORT_FAULT",
    "MODEL_EXPORT_FAULT_SIGNAL",
    "MODEL_EXPORT_TEST_FREE_BYTES",
    "MODEL_EXPORT_TEST_EMBEDDED_LIMIT",
];

/// The `MODEL_EXPORT_*` variables of the process environment (empty values count as unset).
pub fn from_process() -> BTreeMap<String, String> {
    std::env::vars().filter(|(k, v)| k.starts_with(PREFIX) && !v.is_empty()).collect()
}

fn invalid(var: &str, message: String, help: String) -> ConfigError {
    ConfigError::Invalid { origin: "the environment".into(), key: var.to_string(), message, help }
}

/// `var` as a whole number, if set.
fn whole_number(
    get: &dyn Fn(&str) -> Option<String>,
    var: &str,
    example: &str,
) -> Result<Option<u32>, ConfigError> {
    get(var)
        .map(|text| {
            text.trim().parse::<u32>().map_err(|_| {
                invalid(
                    var,
                    format!("`{text}` is not a whole number"),
                    format!("give a number such as {example}"),
                )
            })
        })
        .transpose()
}

/// `var` as a boolean (true/1/yes, false/0/no), if set.
fn boolean(get: &dyn Fn(&str) -> Option<String>, var: &str) -> Result<Option<bool>, ConfigError> {
    get(var)
        .map(|text| match text.trim() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            other => Err(invalid(var, format!("`{other}` is not a boolean"), "use true or false".into())),
        })
        .transpose()
}

/// Parses the environment layer; a variable with a bad value is an error naming it.
pub fn parse_env(vars: &BTreeMap<String, String>) -> Result<TableLayer, ConfigError> {
    for name in vars.keys() {
        if !VARIABLES.iter().any(|(v, _)| v == name) && !OTHER_VARIABLES.contains(&name.as_str()) {
            let known: Vec<_> = VARIABLES.iter().map(|(v, _)| *v).collect();
            tracing::warn!("ignoring unknown variable {name}; known: {}", known.join(", "));
        }
    }
    let get = |name: &str| vars.get(name).cloned();
    let prompts = match get("MODEL_EXPORT_VALIDATE_PROMPTS") {
        None => None,
        Some(text) if text.trim_start().starts_with('[') => Some(serde_json::from_str::<Vec<String>>(&text).map_err(|e| {
            invalid(
                "MODEL_EXPORT_VALIDATE_PROMPTS",
                format!("not a JSON array of strings: {e}"),
                r#"write it as '["first prompt", "second prompt"]', or give a single prompt without brackets"#.into(),
            )
        })?),
        Some(text) => Some(vec![text]),
    };
    let engines = get("MODEL_EXPORT_VALIDATE_ENGINES")
        .map(|text| {
            text.split(',').map(|e| e.trim().parse::<Engine>()).collect::<Result<Vec<_>, _>>().map_err(|e| {
                invalid(
                    "MODEL_EXPORT_VALIDATE_ENGINES",
                    e,
                    format!("list engines separated by commas, from: {}", Engine::accepted()),
                )
            })
        })
        .transpose()?;
    let jobs = whole_number(&get, "MODEL_EXPORT_JOBS", "2")?;
    let allow_non_finite = boolean(&get, "MODEL_EXPORT_ALLOW_NON_FINITE")?;
    let max_new_tokens = whole_number(&get, "MODEL_EXPORT_VALIDATE_MAX_NEW_TOKENS", "16")?;
    let chat_template = boolean(&get, "MODEL_EXPORT_VALIDATE_CHAT_TEMPLATE")?;
    let any_validate =
        prompts.is_some() || engines.is_some() || max_new_tokens.is_some() || chat_template.is_some();
    Ok(TableLayer {
        base: get("MODEL_EXPORT_BASE"),
        adapter: get("MODEL_EXPORT_ADAPTER"),
        out_dir: get("MODEL_EXPORT_OUT_DIR"),
        profile: get("MODEL_EXPORT_PROFILE"),
        max_memory: get("MODEL_EXPORT_MAX_MEMORY"),
        jobs,
        allow_non_finite,
        preset: get("MODEL_EXPORT_PRESET"),
        report_template: None,
        validate: any_validate.then_some(ValidateLayer {
            prompts,
            engines,
            max_new_tokens,
            chat_template,
            ..ValidateLayer::default()
        }),
        export: None,
    })
}

/// Whether this is a CI run: `CI=true` exactly (what GitHub Actions, GitLab and others set), the
/// one rule for "every engine and check is required".
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}
