//! Typed errors, one enum per layer. Every error names what went wrong and where (file, key,
//! tensor), and `help()` says what to do about it. Only `main.rs` turns them into exit codes.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Exit code for bad usage or configuration (the user must change a flag, variable or table).
pub const EXIT_USAGE: i32 = 2;
/// Exit code for a failed job: an input that cannot be used, an export that fails validation.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Profile(#[from] ProfileError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Runtime(RuntimeError),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("validation failed for {}", failed.join(", "))]
    ValidationFailed { failed: Vec<String>, report: PathBuf },
    #[error("unverified: no engine measured {}", exports.join("; "))]
    Unverified { exports: Vec<String>, report: PathBuf },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

impl Error {
    pub fn help(&self) -> String {
        match self {
            Error::Config(e) => e.help(),
            Error::Profile(e) => e.help(),
            Error::Model(e) => e.help(),
            Error::Checkpoint(e) => e.help(),
            Error::Runtime(e) => e.help(),
            Error::Pipeline(e) => e.help(),
            Error::Load(e) => e.help(),
            Error::Write { source, .. } => io_help(source),
            Error::Unverified { .. } => {
                "add an engine that runs the export to validate.engines (safetensors and gguf: candle; onnx: ort, tract), install ONNX Runtime (python3 -m pip install --no-deps onnxruntime), or pass --allow-unverified to accept exports nobody measured".into()
            }
            Error::ValidationFailed { report, .. } => format!(
                "{} names the engine, the measure and the first diverging token; loosen a tolerance per export (options.max-abs-error, min-cosine, min-top1) only if the difference is expected",
                report.display()
            ),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Profile(_) => EXIT_USAGE,
            Error::Model(e)
            | Error::Checkpoint(CheckpointError::Model(e))
            | Error::Runtime(RuntimeError::Model(e))
                if e.is_usage() =>
            {
                EXIT_USAGE
            }
            Error::Pipeline(e) => e.exit_code(),
            Error::Load(e) => e.exit_code(),
            Error::Model(_)
            | Error::Checkpoint(_)
            | Error::Runtime(_)
            | Error::Write { .. }
            | Error::ValidationFailed { .. }
            | Error::Unverified { .. } => EXIT_FAILURE,
        }
    }

    pub fn write(path: &Path, source: std::io::Error) -> Self {
        Error::Write { path: path.to_path_buf(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_help(source: &std::io::Error) -> String {
    match source.kind() {
        std::io::ErrorKind::NotFound => "check that the path exists and is spelled as intended".into(),
        std::io::ErrorKind::PermissionDenied => {
            "check the file's permissions, or point the tool at a folder you own".into()
        }
        std::io::ErrorKind::StorageFull => "free disk space or point `out-dir` at a larger filesystem".into(),
        std::io::ErrorKind::NotADirectory => {
            "a part of this path is a file, not a folder: point `out-dir` (or the path named) at a folder"
                .into()
        }
        std::io::ErrorKind::IsADirectory => {
            "this path is a folder where a file is expected: remove or rename it".into()
        }
        _ => "check the path and the filesystem, then run the command again".into(),
    }
}

/// Problems in the `[package.metadata.model-export]` table, environment variables or flags.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("`cargo metadata` failed for {}: {message}", manifest.display())]
    Metadata { manifest: PathBuf, message: String },
    #[error("package `{name}` is not in the workspace of {}", manifest.display())]
    UnknownPackage { name: String, manifest: PathBuf, available: Vec<String> },
    #[error("{} is a workspace with several packages and none was chosen", manifest.display())]
    AmbiguousPackage { manifest: PathBuf, candidates: Vec<String> },
    #[error("invalid `{key}` in {origin}: {message}")]
    Invalid { origin: String, key: String, message: String, help: String },
    #[error("no base model configured: `base` is missing from {origin}")]
    MissingBase { origin: String },
    #[error("duplicate export name `{name}` in {origin}: entries {first} and {second} both use it")]
    DuplicateExport { origin: String, name: String, first: usize, second: usize },
}

impl ConfigError {
    pub fn help(&self) -> String {
        match self {
            ConfigError::Metadata { .. } => {
                "fix the manifest so that `cargo metadata` accepts it, or point --manifest-path at another Cargo.toml".into()
            }
            ConfigError::UnknownPackage { available, .. } => {
                format!("pass -p with one of: {}", available.join(", "))
            }
            ConfigError::AmbiguousPackage { candidates, .. } => {
                format!("pass -p/--package with one of: {}", candidates.join(", "))
            }
            ConfigError::Invalid { help, .. } => help.clone(),
            ConfigError::MissingBase { .. } => {
                "add `base = \"path/to/model\"` (a Hugging Face folder with config.json and *.safetensors) to [package.metadata.model-export], or pass --base / set MODEL_EXPORT_BASE".into()
            }
            ConfigError::DuplicateExport { .. } => {
                "give every [[package.metadata.model-export.export]] entry its own `name`: it is the output folder's name".into()
            }
        }
    }
}

#[derive(Debug, Error)]
pub enum ProfileError {
    #[error("unknown profile `{name}`")]
    Unknown { name: String, known: String },
    #[error("{}model_type `{model_type}`, which no profile handles", config.as_ref().map_or("config.json has ".to_string(), |p| format!("{} has ", p.display())))]
    UnknownModelType { model_type: String, known: String, config: Option<PathBuf> },
    #[error("the {profile} profile has no {role} tensor, which every decoder layer needs")]
    MissingTensor { profile: &'static str, role: String },
}

impl ProfileError {
    pub fn help(&self) -> String {
        match self {
            ProfileError::Unknown { known, .. } => {
                format!("use `auto` or one of the known profiles: {known}")
            }
            ProfileError::UnknownModelType { known, .. } => format!(
                "known profiles: {known}; `cargo model-export profiles` lists what each covers. Set `profile` explicitly only if the model really is one of them"
            ),
            ProfileError::MissingTensor { .. } => {
                "name the tensor in the profile's [tensors.layer] table (model-profiles/*.toml)".into()
            }
        }
    }
}

/// Problems reading a Hugging Face model folder or a safetensors file.
#[derive(Debug, Error)]
pub enum ModelError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} is not a Hugging Face model folder: {reason}", path.display())]
    NotAModel { path: PathBuf, reason: String },
    #[error("{}: {message}", path.display())]
    Json { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    ConfigField { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Safetensors { path: PathBuf, message: String },
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    Tensor { path: PathBuf, tensor: String, message: String },
    #[error("{}: shard `{shard}` named by the index is missing", index.display())]
    MissingShard { index: PathBuf, shard: String },
    #[error("{}: tensor `{tensor}` does not fit the {profile} architecture: {message}", path.display())]
    Layout { path: PathBuf, profile: &'static str, tensor: String, message: String },
    #[error("{}: tensor `{tensor}` holds {value} at index {position:?}", path.display())]
    NonFinite { path: PathBuf, tensor: String, position: Vec<usize>, value: f32 },
    #[error("{}: `{key}` = {value} is not supported", path.display())]
    UnsupportedConfig { path: PathBuf, key: String, value: String, supported: String },
    #[error(transparent)]
    Profile(#[from] ProfileError),
}

impl ModelError {
    /// A model the tool refuses as configured (exit 2), rather than a damaged input.
    pub fn is_usage(&self) -> bool {
        matches!(self, ModelError::UnsupportedConfig { .. })
    }

    pub fn help(&self) -> String {
        match self {
            ModelError::Io { source, .. } => io_help(source),
            ModelError::NotAModel { .. } => {
                "point at the folder that holds config.json and model*.safetensors (as saved by `save_pretrained`)".into()
            }
            ModelError::Json { .. } => "the file is not valid JSON: re-save it, or restore it from the original download".into(),
            ModelError::ConfigField { .. } => {
                "config.json must carry the fields transformers wrote for this architecture; restore it from the original model".into()
            }
            ModelError::Safetensors { .. } | ModelError::Tensor { .. } => {
                "the file is damaged or incomplete (an interrupted copy or download?): copy it again from its source".into()
            }
            ModelError::MissingShard { .. } => "copy every shard listed in model.safetensors.index.json into the folder".into(),
            ModelError::Layout { .. } => {
                "check that config.json belongs to these weights, and that `profile` names the right architecture".into()
            }
            ModelError::NonFinite { .. } => "NaN or Inf weights come from a diverged training run or a damaged file: export an earlier checkpoint or copy the file again; set `allow-non-finite = true` to export them as they are".into(),
            ModelError::UnsupportedConfig { supported, .. } => format!(
                "supported: {supported}. The tool refuses what it cannot compute exactly as transformers does (docs/config-features.md lists every key)"
            ),
            ModelError::Profile(e) => e.help(),
        }
    }
}

/// Problems with an adapter, a checkpoint or a training run.
#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{} holds no adapter: no adapter_config.json and no checkpoint-N folders", path.display())]
    NoAdapter { path: PathBuf },
    #[error("{} is a file; `adapter` must be the adapter folder that holds it, or a training output folder", path.display())]
    AdapterIsAFile { path: PathBuf },
    #[error("{}: {message}", path.display())]
    AdapterConfig { path: PathBuf, message: String },
    #[error("{}: tensor `{tensor}`: {message}", path.display())]
    AdapterTensor { path: PathBuf, tensor: String, message: String },
    #[error("no valid checkpoint in {}: {}", run.display(), describe_skipped(skipped))]
    NoValidCheckpoint { run: PathBuf, skipped: Vec<(String, String)> },
    #[error("{}: {message}", path.display())]
    TrainerState { path: PathBuf, message: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

fn describe_skipped(skipped: &[(String, String)]) -> String {
    skipped.iter().map(|(name, reason)| format!("{name} ({reason})")).collect::<Vec<_>>().join("; ")
}

impl CheckpointError {
    pub fn help(&self) -> String {
        match self {
            CheckpointError::Io { source, .. } => io_help(source),
            CheckpointError::AdapterIsAFile { path } => format!(
                "set `adapter` to {}",
                path.parent().map_or_else(|| "its folder".to_string(), |p| format!("`{}`", p.display()))
            ),
            CheckpointError::NoAdapter { .. } => {
                "point `adapter` at a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) or at a Trainer output folder with checkpoint-N folders".into()
            }
            CheckpointError::AdapterConfig { .. } => {
                "adapter_config.json must be what PEFT's save_pretrained wrote; restore it from the training run".into()
            }
            CheckpointError::AdapterTensor { .. } => {
                "check that the adapter was trained on this base model (same architecture and size), and that the file was copied completely".into()
            }
            CheckpointError::NoValidCheckpoint { .. } => {
                "every checkpoint is damaged or does not fit the base: copy the run again, or point `adapter` at a specific adapter folder".into()
            }
            CheckpointError::TrainerState { .. } => "trainer_state.json is damaged: restore it, or delete it to use the adapter without training metadata".into(),
            CheckpointError::Model(e) => e.help(),
        }
    }
}

/// Problems running a model in an engine.
#[derive(Debug, Error)]
pub enum RuntimeError {
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{}: tensor `{tensor}` is missing", path.display())]
    MissingTensor { path: PathBuf, tensor: String },
    #[error("bad model input: {message}")]
    Input { message: String },
    #[error("{message}")]
    Unsupported { message: String },
    /// A streamed model's weight source failed (reading the adapter, merging, a stop request):
    /// the source's own error, handed back whole.
    #[error(transparent)]
    Source(Box<Error>),
    #[error("ONNX Runtime is not available: {message}")]
    OrtUnavailable { message: String },
    #[error("{engine}: {message}")]
    Engine { engine: &'static str, message: String },
    /// The engine refused the model while loading it (parsing, typing, op registry), before
    /// running anything: the case the opset fallback applies to.
    #[error("{engine} could not load the model: {message}")]
    EngineLoad { engine: &'static str, message: String },
}

impl RuntimeError {
    pub fn help(&self) -> String {
        match self {
            RuntimeError::Candle(_) => {
                "this is a bug in the engine code: please report it with the model's config.json".into()
            }
            RuntimeError::Model(e) => e.help(),
            RuntimeError::Source(e) => e.help(),
            RuntimeError::MissingTensor { .. } => {
                "the folder does not hold a complete model: export or merge it again".into()
            }
            RuntimeError::Input { .. } => {
                "check the prompts and the tokenizer: token ids must fit the model's vocabulary".into()
            }
            RuntimeError::Unsupported { .. } => {
                "use a model whose architecture has a profile (`cargo model-export profiles`)".into()
            }
            RuntimeError::OrtUnavailable { .. } => format!(
                "install the ONNX Runtime wheel (`python3 -m pip install --no-deps {}`) or point ORT_DYLIB_PATH at libonnxruntime.so",
                crate::onnx_io::ORT_WHEEL
            ),
            RuntimeError::EngineLoad { .. } => {
                "the engine does not accept this graph: export at opset 17 (`options.opset = 17`), which both engines are tested with, or let the export's fallbacks do it (no --no-fallback)".into()
            }
            RuntimeError::Engine { .. } => {
                "the engine rejected the model; the message names the node. Please report it with the export's config.json".into()
            }
        }
    }
}

impl From<RuntimeError> for Error {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Source(inner) => *inner,
            other => Error::Runtime(other),
        }
    }
}

/// Exit code after SIGINT/SIGTERM, as shells report a process stopped by SIGINT.
pub const EXIT_INTERRUPTED: i32 = 130;

/// The run as a whole: another run holds the out-dir, the plan does not fit, the user stopped it.
#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("another run holds this out-dir's lock ({}): {holder}", lock.display())]
    Locked { lock: PathBuf, holder: String },
    #[error(
        "not enough disk space in {}: the plan writes about {} there, {} is free",
        dir.display(),
        crate::size::human_bytes(*needed),
        crate::size::human_bytes(*free)
    )]
    DiskSpace { dir: PathBuf, needed: u64, free: u64, largest: Vec<(String, u64)> },
    #[error(
        "stage `{stage}` needs about {} of memory, more than max-memory ({})",
        crate::size::human_bytes(*needed),
        crate::size::human_bytes(*limit)
    )]
    Memory { stage: String, needed: u64, limit: u64, suggestion: String },
    #[error("stopped by {signal} during `{stage}`{}; its partial outputs were removed", at.as_ref().map_or(String::new(), |t| format!(" before tensor `{t}`")))]
    Interrupted { signal: &'static str, stage: String, at: Option<String> },
    #[error("refusing to replace {}: it {message}", dir.display())]
    Destination { dir: PathBuf, message: String, help: String },
}

impl PipelineError {
    pub fn help(&self) -> String {
        match self {
            PipelineError::Locked { .. } => {
                "wait for that run to finish, or use another out-dir (the lock is the operating system's: it is released the moment that process ends)".into()
            }
            PipelineError::DiskSpace { largest, .. } => {
                let names: Vec<_> = largest
                    .iter()
                    .map(|(name, bytes)| format!("{name} ({})", crate::size::human_bytes(*bytes)))
                    .collect();
                format!(
                    "free space, point `out-dir` (or --out-dir) at a larger filesystem, or drop the largest stages: {}",
                    names.join(", ")
                )
            }
            PipelineError::Memory { suggestion, .. } => suggestion.clone(),
            PipelineError::Interrupted { .. } => {
                "run the same command again: finished stages are kept and skipped".into()
            }
            PipelineError::Destination { help, .. } => help.clone(),
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            PipelineError::Interrupted { .. } => EXIT_INTERRUPTED,
            _ => EXIT_USAGE,
        }
    }
}

/// Loading a model for generation: the budget, the device, option combinations, the source.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error(
        "{what} needs about {} in {mode}, more than the memory budget ({})",
        crate::size::human_bytes(*needed),
        crate::size::human_bytes(*budget)
    )]
    Budget { what: String, mode: String, needed: u64, budget: u64, suggestion: String },
    #[error("device `{device}` is not available: {reason}")]
    Device { device: String, reason: String, help: String },
    #[error("{what}: {reason}")]
    Incompatible { what: String, reason: String, help: String },
    #[error("{}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
}

impl LoadError {
    pub fn help(&self) -> String {
        match self {
            LoadError::Budget { suggestion, .. } => suggestion.clone(),
            LoadError::Device { help, .. } | LoadError::Incompatible { help, .. } => help.clone(),
            LoadError::Source { .. } => {
                "give a Hugging Face model folder (config.json + *.safetensors), an ONNX export folder (model.onnx), or a base with --adapter".into()
            }
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            LoadError::Source { .. } => EXIT_FAILURE,
            _ => EXIT_USAGE,
        }
    }
}
