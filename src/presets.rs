//! Presets: named sets of exports (and validation settings) in `templates/presets/*.toml`,
//! embedded in the binary. A table's `preset = "NAME"` adds the preset's exports; an
//! `[[export]]` of the same name replaces the preset's entry.

use serde::Deserialize;

use crate::config::table::{ExportEntry, ValidateLayer};
use crate::error::ConfigError;

/// Name and text of every preset, in the order `presets` lists them.
const PRESETS: &[(&str, &str)] = &[
    ("hf", include_str!("../templates/presets/hf.toml")),
    ("onnx-cpu", include_str!("../templates/presets/onnx-cpu.toml")),
    ("edge", include_str!("../templates/presets/edge.toml")),
    ("ci-check", include_str!("../templates/presets/ci-check.toml")),
    ("all", include_str!("../templates/presets/all.toml")),
    ("llama-cpp", include_str!("../templates/presets/llama-cpp.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    #[serde(skip)]
    pub name: &'static str,
    /// One line: what the preset is for.
    pub description: String,
    #[serde(default)]
    pub validate: Option<ValidateLayer>,
    pub export: Vec<ExportEntry>,
}

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|(name, _)| *name).collect()
}

/// The preset called `name`; `origin` names the table that asked for it, for the error.
pub fn load(name: &str, origin: &str) -> Result<Preset, ConfigError> {
    let (name, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| ConfigError::Invalid {
        origin: origin.into(),
        key: "preset".into(),
        message: format!("there is no preset `{name}`"),
        help: format!(
            "use one of {} (`cargo model-export presets` shows what each writes)",
            names().join(", ")
        ),
    })?;
    let mut preset: Preset = toml_edit::de::from_str(text).map_err(|e| ConfigError::Invalid {
        origin: format!("the built-in preset {name}"),
        key: "preset".into(),
        message: e.to_string(),
        help: "this is a bug in the preset shipped with this build: please report it".into(),
    })?;
    preset.name = name;
    Ok(preset)
}

/// Every preset, parsed.
pub fn all() -> Result<Vec<Preset>, ConfigError> {
    PRESETS.iter().map(|(name, _)| load(name, "presets")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_file_is_embedded_and_parses() {
        let mut on_disk: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/templates/presets"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".toml").to_string())
                .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = names().iter().map(|n| n.to_string()).collect();
        embedded.sort();
        assert_eq!(on_disk, embedded);
        for preset in all().unwrap() {
            assert!(!preset.export.is_empty(), "{}", preset.name);
        }
        let err = load("gpu", "Cargo.toml").unwrap_err();
        assert!(err.help().contains("hf, onnx-cpu, edge, ci-check, all"), "{}", err.help());
    }
}
