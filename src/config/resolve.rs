//! Precedence: flag > `MODEL_EXPORT_*` > package table > workspace table > built-in default;
//! then the checks that need the merged result (paths exist, export entries are coherent).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::registry::or_list;
use super::schema::{
    EmbeddingsMode, Engine, ExportDtype, ExportSpec, Format, INT4_BLOCK_SIZES, ONNX_OPSETS, Target,
};
use super::source::{Source, Sourced};
use super::table::{ExportEntry, TableLayer};
use crate::error::ConfigError;
use crate::profile::Profile;
use crate::size::ByteSize;

pub const DEFAULT_PROMPTS: &[&str] = &["Hello", "用一句话解释LoRA"];
pub const DEFAULT_MAX_NEW_TOKENS: u32 = 16;
/// Tokens per chunk of the evaluation text (llama-perplexity's default context); a model's
/// own length would be far beyond what attention over one chunk can hold for most models.
pub const DEFAULT_TEXT_CONTEXT: u32 = 512;

/// `auto` (pick by config.json `model_type`) or a named profile.
#[derive(Debug, Clone, Copy)]
pub enum ProfileChoice {
    Auto,
    Named(&'static Profile),
}

impl ProfileChoice {
    pub fn name(&self) -> &'static str {
        match self {
            ProfileChoice::Auto => "auto",
            ProfileChoice::Named(p) => p.name,
        }
    }

    pub fn profile(&self) -> Option<&'static Profile> {
        match self {
            ProfileChoice::Auto => None,
            ProfileChoice::Named(p) => Some(p),
        }
    }
}

impl Serialize for ProfileChoice {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ValidateConfig {
    pub prompts: Sourced<Vec<String>>,
    pub engines: Sourced<Vec<Engine>>,
    pub max_new_tokens: Sourced<u32>,
    pub chat_template: Sourced<bool>,
    /// The evaluation text scored for perplexity and KL divergence.
    pub text: Sourced<Option<PathBuf>>,
    /// Tokens per chunk of the text (capped by the model's length).
    pub text_context: Sourced<u32>,
    /// Chunks scored at most (`None`: every whole chunk of the text).
    pub text_chunks: Sourced<Option<u32>>,
}

/// The effective configuration, every value with its source.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub package: Option<String>,
    pub manifest: Option<PathBuf>,
    pub base: Sourced<PathBuf>,
    pub adapter: Sourced<Option<PathBuf>>,
    pub out_dir: Sourced<PathBuf>,
    pub profile: Sourced<ProfileChoice>,
    /// Peak memory the plan may use (`None`: the RAM available when the run starts).
    pub max_memory: Sourced<Option<ByteSize>>,
    /// Exports written at once.
    pub jobs: Sourced<u32>,
    /// Let NaN and Inf weights through instead of refusing them.
    pub allow_non_finite: Sourced<bool>,
    pub validate: ValidateConfig,
    /// The preset whose exports were added (`None`: no preset).
    pub preset: Sourced<Option<String>>,
    /// The template report.md is rendered from (`None`: the built-in one).
    pub report_template: Sourced<Option<PathBuf>>,
    pub exports: Vec<Sourced<ExportSpec>>,
}

impl Config {
    /// Where the table came from, for messages: the manifest, or the command line without one.
    pub fn origin(&self) -> String {
        self.manifest.as_ref().map_or("the command line".into(), |m| m.display().to_string())
    }
}

/// Where a layer was written; decides how its keys are named and where values came from.
#[derive(Debug, Clone)]
pub enum LayerKind {
    Flags,
    Env,
    Package(PathBuf),
    Workspace(PathBuf),
    /// A built-in preset's exports and validation settings, below every table.
    Preset(String),
}

/// One layer of configuration with what it needs to resolve paths and name itself.
#[derive(Debug)]
pub struct Layer {
    pub table: TableLayer,
    /// Relative paths in this layer resolve against this folder.
    pub root: PathBuf,
    pub kind: LayerKind,
}

impl Layer {
    /// How the user wrote `key` in this layer (`--out-dir`, `MODEL_EXPORT_OUT_DIR`, the table path).
    pub fn key(&self, key: &str) -> String {
        match &self.kind {
            LayerKind::Flags => format!("--{}", key.rsplit('.').next().unwrap_or(key)),
            LayerKind::Env => {
                format!("{}{}", super::env::PREFIX, key.to_ascii_uppercase().replace(['.', '-'], "_"))
            }
            LayerKind::Package(_) => format!("package.metadata.{}.{key}", super::manifest::TABLE),
            LayerKind::Workspace(_) => {
                format!("workspace.metadata.{}.{key}", super::manifest::TABLE)
            }
            LayerKind::Preset(name) => format!("preset {name}: {key}"),
        }
    }

    pub fn origin(&self) -> String {
        match &self.kind {
            LayerKind::Flags => "the command line".into(),
            LayerKind::Env => "the environment".into(),
            LayerKind::Package(m) | LayerKind::Workspace(m) => m.display().to_string(),
            LayerKind::Preset(name) => format!("the built-in preset {name}"),
        }
    }

    pub fn source(&self, key: &str) -> Source {
        match &self.kind {
            LayerKind::Flags => Source::Flag { flag: self.key(key) },
            LayerKind::Env => Source::Env { var: self.key(key) },
            LayerKind::Package(m) => Source::Package { manifest: m.clone() },
            LayerKind::Workspace(m) => Source::Workspace { manifest: m.clone() },
            LayerKind::Preset(name) => Source::Preset { name: name.clone() },
        }
    }
}

/// Layers in precedence order, highest first.
pub fn resolve(
    layers: &[Layer],
    default_out_dir: PathBuf,
    package: Option<String>,
    manifest: Option<PathBuf>,
) -> Result<Config, ConfigError> {
    let pick = |get: &dyn Fn(&TableLayer) -> Option<&String>| {
        layers.iter().find_map(|l| get(&l.table).map(|v| (v, l)))
    };

    let (base_text, base_layer) = pick(&|t| t.base.as_ref()).ok_or_else(|| ConfigError::MissingBase {
        origin: layers.iter().find(|l| matches!(l.kind, LayerKind::Package(_))).map_or_else(
            || "the command line, the environment and any Cargo.toml (none found)".to_string(),
            Layer::origin,
        ),
    })?;
    let base = resolve_path(base_layer, base_text);
    check_base(base_layer, &base)?;

    let adapter = match pick(&|t| t.adapter.as_ref()) {
        Some((text, layer)) => {
            let path = resolve_path(layer, text);
            if !path.exists() {
                return Err(invalid(layer, "adapter", missing_path(&path),
                    "point `adapter` at a PEFT adapter folder or a training output folder with checkpoint-N folders".into()));
            }
            Sourced::new(Some(path), layer.source("adapter"))
        }
        None => Sourced::new(None, Source::Default),
    };

    let out_dir = match pick(&|t| t.out_dir.as_ref()) {
        Some((text, layer)) => {
            let path = resolve_path(layer, text);
            if path.starts_with(&base) {
                return Err(invalid(
                    layer,
                    "out-dir",
                    format!("`{}` is inside the base model folder", path.display()),
                    "write exports outside the model they are made from, e.g. target/model-export".into(),
                ));
            }
            Sourced::new(path, layer.source("out-dir"))
        }
        None => Sourced::new(default_out_dir, Source::Default),
    };

    let profile = match pick(&|t| t.profile.as_ref()) {
        Some((name, layer)) => {
            let choice = if name == "auto" {
                ProfileChoice::Auto
            } else {
                ProfileChoice::Named(
                    Profile::by_name(name).map_err(|e| invalid(layer, "profile", e.to_string(), e.help()))?,
                )
            };
            Sourced::new(choice, layer.source("profile"))
        }
        None => Sourced::new(ProfileChoice::Auto, Source::Default),
    };

    let max_memory = match pick(&|t| t.max_memory.as_ref()) {
        Some((text, layer)) => {
            let size = text.parse::<ByteSize>().map_err(|e| {
                invalid(layer, "max-memory", e, "write a size like \"8GiB\" or \"500MB\"".into())
            })?;
            Sourced::new(Some(size), layer.source("max-memory"))
        }
        None => Sourced::new(None, Source::Default),
    };

    let jobs = match layers.iter().find_map(|l| l.table.jobs.map(|j| (j, l))) {
        Some((0, layer)) => {
            return Err(invalid(
                layer,
                "jobs",
                "must be at least 1".into(),
                "use 1 for one export at a time".into(),
            ));
        }
        Some((n, layer)) => Sourced::new(n, layer.source("jobs")),
        None => Sourced::new(1, Source::Default),
    };

    let allow_non_finite = match layers.iter().find_map(|l| l.table.allow_non_finite.map(|v| (v, l))) {
        Some((value, layer)) => Sourced::new(value, layer.source("allow-non-finite")),
        None => Sourced::new(false, Source::Default),
    };

    let validate_value = |get: &dyn Fn(&super::table::ValidateLayer) -> bool| {
        layers.iter().find(|l| l.table.validate.as_ref().is_some_and(get))
    };
    // A `validate.*` whole number below `min` is refused with `message` and `help`; else it
    // comes with the layer that set it.
    let whole = |key: &str,
                 get: fn(&super::table::ValidateLayer) -> Option<u32>,
                 min: u32,
                 message: &str,
                 help: &str|
     -> Result<Option<Sourced<u32>>, ConfigError> {
        let Some(l) = validate_value(&|v| get(v).is_some()) else { return Ok(None) };
        let n = l.table.validate.as_ref().and_then(get).unwrap_or_default();
        let key = format!("validate.{key}");
        if n < min {
            return Err(invalid(l, &key, message.into(), help.into()));
        }
        Ok(Some(Sourced::new(n, l.source(&key))))
    };
    let prompts = match validate_value(&|v| v.prompts.is_some()) {
        Some(l) => {
            let prompts = l.table.validate.as_ref().and_then(|v| v.prompts.clone()).unwrap_or_default();
            if prompts.is_empty() || prompts.iter().any(|p| p.is_empty()) {
                return Err(invalid(
                    l,
                    "validate.prompts",
                    "needs at least one prompt, and no empty prompt".into(),
                    "list prompts like `prompts = [\"Hello\"]`".into(),
                ));
            }
            Sourced::new(prompts, l.source("validate.prompts"))
        }
        None => Sourced::new(DEFAULT_PROMPTS.iter().map(|s| s.to_string()).collect(), Source::Default),
    };
    let engines = match validate_value(&|v| v.engines.is_some()) {
        Some(l) => {
            let mut engines = l.table.validate.as_ref().and_then(|v| v.engines.clone()).unwrap_or_default();
            if engines.is_empty() {
                return Err(invalid(
                    l,
                    "validate.engines",
                    "needs at least one engine".into(),
                    format!("list engines from: {}", Engine::accepted()),
                ));
            }
            engines.dedup();
            Sourced::new(engines, l.source("validate.engines"))
        }
        None => Sourced::new(Engine::ALL.to_vec(), Source::Default),
    };
    let max_new_tokens =
        whole("max-new-tokens", |v| v.max_new_tokens, 1, "must be at least 1", "use e.g. 16")?
            .unwrap_or_else(|| Sourced::new(DEFAULT_MAX_NEW_TOKENS, Source::Default));
    let chat_template = match validate_value(&|v| v.chat_template.is_some()) {
        Some(l) => Sourced::new(
            l.table.validate.as_ref().and_then(|v| v.chat_template).unwrap_or_default(),
            l.source("validate.chat-template"),
        ),
        None => Sourced::new(false, Source::Default),
    };
    let text = match validate_value(&|v| v.text.is_some()) {
        Some(l) => {
            let path = resolve_path(
                l,
                l.table.validate.as_ref().and_then(|v| v.text.as_deref()).unwrap_or_default(),
            );
            if !path.is_file() {
                return Err(invalid(
                    l,
                    "validate.text",
                    missing_path(&path),
                    "point `text` at a UTF-8 text file to score (held-out text of the fine-tune's domain)"
                        .into(),
                ));
            }
            Sourced::new(Some(path), l.source("validate.text"))
        }
        None => Sourced::new(None, Source::Default),
    };
    let text_context =
        whole("text-context", |v| v.text_context, 2, "must be at least 2 tokens", "use e.g. 512")?
            .unwrap_or_else(|| Sourced::new(DEFAULT_TEXT_CONTEXT, Source::Default));
    let text_chunks = match whole(
        "text-chunks",
        |v| v.text_chunks,
        1,
        "must be at least 1",
        "use e.g. 64, or remove the key to score every chunk",
    )? {
        Some(n) => Sourced::new(Some(n.value), n.source),
        None => Sourced::new(None, Source::Default),
    };

    let is_preset = |l: &Layer| matches!(l.kind, LayerKind::Preset(_));
    let mut exports = match layers.iter().find(|l| l.table.export.is_some() && !is_preset(l)) {
        Some(layer) => resolve_exports(layer, layer.table.export.as_deref().unwrap_or_default())?,
        None => Vec::new(),
    };
    let preset = match layers.iter().find(|l| is_preset(l)) {
        Some(layer) => {
            // The preset's entries in its order, each replaced by the table's entry of the same
            // name; the table's other entries follow.
            let mut merged = Vec::new();
            for entry in resolve_exports(layer, layer.table.export.as_deref().unwrap_or_default())? {
                match exports.iter().position(|e| e.value.name == entry.value.name) {
                    Some(at) => merged.push(exports.remove(at)),
                    None => merged.push(entry),
                }
            }
            merged.append(&mut exports);
            exports = merged;
            let (name, named_by) = pick(&|t| t.preset.as_ref())
                .map_or((None, Source::Default), |(n, l)| (Some(n.clone()), l.source("preset")));
            Sourced::new(name, named_by)
        }
        None => Sourced::new(None, Source::Default),
    };
    let report_template = match pick(&|t| t.report_template.as_ref()) {
        Some((text, layer)) => {
            let path = resolve_path(layer, text);
            if !path.is_file() {
                return Err(invalid(
                    layer,
                    "report-template",
                    missing_path(&path),
                    "point `report-template` at a minijinja template file, or remove the key to use the built-in one".into(),
                ));
            }
            Sourced::new(Some(path), layer.source("report-template"))
        }
        None => Sourced::new(None, Source::Default),
    };

    Ok(Config {
        package,
        manifest,
        base: Sourced::new(base, base_layer.source("base")),
        adapter,
        out_dir,
        profile,
        max_memory,
        jobs,
        allow_non_finite,
        validate: ValidateConfig {
            prompts,
            engines,
            max_new_tokens,
            chat_template,
            text,
            text_context,
            text_chunks,
        },
        preset,
        report_template,
        exports,
    })
}

fn invalid(layer: &Layer, key: &str, message: String, help: String) -> ConfigError {
    ConfigError::Invalid { origin: layer.origin(), key: layer.key(key), message, help }
}

fn resolve_path(layer: &Layer, text: &str) -> PathBuf {
    let path = Path::new(text);
    if path.is_absolute() { path.to_path_buf() } else { layer.root.join(path) }
}

fn check_base(layer: &Layer, base: &Path) -> Result<(), ConfigError> {
    let problem = if !base.exists() {
        Some(missing_path(base))
    } else if !base.is_dir() {
        Some(format!("`{}` is a file, not a model folder", base.display()))
    } else if !base.join("config.json").is_file() {
        Some(format!("`{}` has no config.json", base.display()))
    } else {
        None
    };
    match problem {
        Some(message) => Err(invalid(
            layer,
            "base",
            message,
            "point `base` at a Hugging Face model folder (config.json + *.safetensors); relative paths start at the manifest's folder".into(),
        )),
        None => Ok(()),
    }
}

/// Whether `name` can be an export's folder name.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn resolve_exports(layer: &Layer, entries: &[ExportEntry]) -> Result<Vec<Sourced<ExportSpec>>, ConfigError> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut specs = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let key = |k: &str| format!("export[{i}].{k}");
        let fail = |k: &str, message: String, help: &str| invalid(layer, &key(k), message, help.to_string());
        if !is_valid_name(&entry.name) {
            return Err(fail(
                "name",
                format!("`{}` cannot be a folder name", entry.name),
                "use letters, digits, `-`, `_` and `.`, not starting with `.`",
            ));
        }
        if let Some(first) = seen.insert(&entry.name, i) {
            return Err(ConfigError::DuplicateExport {
                origin: layer.origin(),
                name: entry.name.clone(),
                first,
                second: i,
            });
        }
        let options = &entry.options;
        if entry.format != Format::Gguf
            && let Some(dtype) = entry.dtype.filter(|d| d.is_ggml_block())
        {
            return Err(fail(
                "dtype",
                format!("`{dtype}` is one of llama.cpp's block formats, written as GGUF only"),
                "set format = \"gguf\" for llama.cpp, or use int8/int4 for ONNX",
            ));
        }
        match entry.format {
            Format::Gguf => {
                if let Some(dtype) = entry.dtype.filter(|d| d.is_quantized()) {
                    let instead = if dtype == ExportDtype::Int8 { "q8_0" } else { "q4_k (or q4_0)" };
                    return Err(fail(
                        "dtype",
                        format!("`{dtype}` is an ONNX quantization; GGUF uses llama.cpp's block formats"),
                        &format!(
                            "use dtype = \"{instead}\"; GGUF takes {}",
                            or_list(Format::Gguf.info().dtypes)
                        ),
                    ));
                }
                let onnx_only = [
                    (entry.target.is_some(), "target"),
                    (options.opset.is_some(), "options.opset"),
                    (options.external_data.is_some(), "options.external-data"),
                    (options.max_shard_size.is_some(), "options.max-shard-size"),
                ];
                if let Some((_, which)) = onnx_only.iter().find(|(set, _)| *set) {
                    return Err(fail(
                        which,
                        "does not apply to gguf exports (one self-contained .gguf file)".into(),
                        "remove it from this gguf entry",
                    ));
                }
            }
            Format::Safetensors => {
                if let Some(dtype) = entry.dtype.filter(|d| d.is_quantized()) {
                    return Err(fail(
                        "dtype",
                        format!("`{dtype}` safetensors is not a format transformers loads"),
                        &format!(
                            "use {} for safetensors; for int8/int4 use format = \"onnx\"",
                            or_list(Format::Safetensors.info().dtypes)
                        ),
                    ));
                }
                if entry.target.is_some() {
                    return Err(fail(
                        "target",
                        "`target` applies to onnx exports only".into(),
                        "remove `target` from this entry",
                    ));
                }
                if options.opset.is_some() || options.external_data.is_some() {
                    let which =
                        if options.opset.is_some() { "options.opset" } else { "options.external-data" };
                    return Err(fail(
                        which,
                        "applies to onnx exports only".into(),
                        "remove it from this safetensors entry",
                    ));
                }
            }
            Format::Onnx => {
                if options.max_shard_size.is_some() {
                    return Err(fail(
                        "options.max-shard-size",
                        "applies to safetensors exports only".into(),
                        "remove it; large ONNX models use `external-data = true` instead",
                    ));
                }
                if let Some(opset) = options.opset.filter(|o| !ONNX_OPSETS.contains(o)) {
                    return Err(fail(
                        "options.opset",
                        format!("opset {opset} is not supported"),
                        &format!("use an opset from {} to {}", ONNX_OPSETS.start(), ONNX_OPSETS.end()),
                    ));
                }
            }
        }
        if let Some(dtype) = entry.dtype.filter(|d| !entry.format.writes(*d)) {
            let info = entry.format.info();
            let (reason, help) = match info.refused.iter().find(|(d, _, _)| *d == dtype) {
                Some((_, reason, help)) => (reason.to_string(), help.to_string()),
                None => (
                    format!("{} exports do not take `{dtype}`", entry.format),
                    format!("use {}", or_list(info.dtypes)),
                ),
            };
            let message = format!("export `{}`: {reason}", entry.name);
            return Err(fail("dtype", message, &help));
        }
        let blocks = entry.dtype == Some(ExportDtype::Int4)
            || (entry.dtype == Some(ExportDtype::Int8) && entry.target == Some(Target::Ort));
        for (set, name) in
            [(options.block_size.is_some(), "block-size"), (options.symmetric.is_some(), "symmetric")]
        {
            if set && !blocks {
                return Err(fail(
                    &format!("options.{name}"),
                    "applies to block-quantized exports only (int4, or int8 with target = \"ort\")".into(),
                    "remove it, or set dtype = \"int4\"; portable int8 is always symmetric per output channel",
                ));
            }
        }
        if let Some(block) = options.block_size
            && !INT4_BLOCK_SIZES.contains(&block)
        {
            return Err(fail(
                "options.block-size",
                format!("{block} is not a supported block size"),
                "use 16, 32, 64 or 128",
            ));
        }
        let quantized = entry.dtype.is_some_and(|d| d.is_quantized());
        if options.embeddings.is_some() && !quantized {
            return Err(fail(
                "options.embeddings",
                "applies to int8 and int4 exports only".into(),
                "remove it, or set dtype = \"int8\" or \"int4\"",
            ));
        }
        if options.embeddings == Some(EmbeddingsMode::Int8) && entry.target != Some(Target::Ort) {
            return Err(fail(
                "options.embeddings",
                "\"int8\" keeps the embedding table in 8-bit blocks, which only ONNX Runtime can look up"
                    .into(),
                "set target = \"ort\", or use embeddings = \"quantized\" (an int8/int4 head, the table in f16)",
            ));
        }
        if let Some(level) = options.accuracy_level {
            if !(quantized && entry.target == Some(Target::Ort)) {
                return Err(fail(
                    "options.accuracy-level",
                    "applies to int8/int4 exports with target = \"ort\" only".into(),
                    "remove it, or set target = \"ort\"",
                ));
            }
            if level > 4 {
                return Err(fail(
                    "options.accuracy-level",
                    format!("{level} is not an accuracy level"),
                    "use 0 (f32 activations, exact) to 4 (int8 activations, fastest)",
                ));
            }
        }
        for (key, value, low, high) in [
            ("options.max-abs-error", options.max_abs_error, f64::MIN_POSITIVE, f64::INFINITY),
            ("options.max-relative-error", options.max_relative_error, f64::MIN_POSITIVE, f64::INFINITY),
            ("options.min-cosine", options.min_cosine, -1.0, 1.0),
            ("options.min-top1", options.min_top1, 0.0, 1.0),
            ("options.max-mean-kl", options.max_mean_kl, f64::MIN_POSITIVE, f64::INFINITY),
            ("options.min-text-top1", options.min_text_top1, 0.0, 1.0),
        ] {
            if let Some(v) = value.filter(|v| !(*v >= low && *v <= high)) {
                return Err(fail(
                    key,
                    format!("{v} is out of range"),
                    "max-abs-error, max-relative-error and max-mean-kl must be positive; min-cosine, min-top1 and min-text-top1 are between 0 and 1",
                ));
            }
        }
        let dtype = match entry.format {
            // ONNX has no "storage dtype" to inherit: f32 is the exact, runs-everywhere default.
            Format::Onnx => Some(entry.dtype.unwrap_or(ExportDtype::F32)),
            // Like llama.cpp's converter (`--outtype auto`): the base's storage dtype.
            Format::Safetensors | Format::Gguf => entry.dtype,
        };
        let target = match entry.format {
            Format::Onnx => Some(entry.target.unwrap_or(super::schema::Target::Portable)),
            Format::Safetensors | Format::Gguf => None,
        };
        specs.push(Sourced::new(
            ExportSpec {
                name: entry.name.clone(),
                format: entry.format,
                dtype,
                target,
                options: options.clone(),
            },
            layer.source(&key("name")),
        ));
    }
    Ok(specs)
}

/// Why `path` cannot be used although it was named: missing, or a link that resolves nowhere.
fn missing_path(path: &Path) -> String {
    if std::fs::symlink_metadata(path).is_ok() {
        format!("`{}` is a symbolic link that leads nowhere (a loop, or its target is gone)", path.display())
    } else {
        format!("`{}` does not exist", path.display())
    }
}
