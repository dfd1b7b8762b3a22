//! Loading a model for generation inside a Rust service: from a Hugging Face folder, from a base
//! plus a PEFT adapter or training run (merged in memory, nothing written), or from one of the
//! tool's ONNX exports (through ONNX Runtime); with the linear weights quantized while loading
//! (`q8_0`, `q4_0`, `q4_k` as candle `QMatMul`s), tensor by tensor from the memory map, so
//! memory stays near the quantized size; within a memory budget checked before anything is
//! allocated; on the device asked for or the best one present.
//!
//! ```
//! # fn main() -> Result<(), model_export::Error> {
//! use model_export::loader::{LoadOptions, Model, Quantization};
//! use model_export::runtime::generation::GenerateOptions;
//! # let dir = tempfile::tempdir().unwrap();
//! # let shape = model_export::synth::ModelShape::by_name("qwen3-tiny").unwrap();
//! # model_export::synth::write_model(shape, dir.path(), 1, None)?;
//! # let model_dir = dir.path();
//! // A model folder (config.json + safetensors), its linear layers quantized to q8_0 on load.
//! let model = Model::load(&LoadOptions::new(model_dir).quantization(Quantization::Q8_0))?;
//! assert_eq!(model.info().quantization, Quantization::Q8_0);
//!
//! // Greedy decoding of two prompts as one batch; the same call streams with `generate_stream`.
//! let results = model.generate(&["Hello", "How are you?"], &GenerateOptions::greedy().max_new_tokens(4))?;
//! assert!(results.iter().all(|r| r.token_ids.len() <= 4));
//! # Ok(())
//! # }
//! ```

pub(crate) mod accumulate;
pub mod budget;
pub mod device;
pub mod quantization;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use candle_core::DType;
use serde::Serialize;
use tokenizers::Tokenizer;

use accumulate::Accumulator;
pub use budget::{Estimate, LoadPlan, PlannedWeight};
pub use device::{ChosenDevice, DeviceChoice};
pub use quantization::{FormatFallback, Placement, Quantization, Role};

use crate::checkpoint::{Detection, detect};
use crate::error::{Error, LoadError, ModelError, RuntimeError};
use crate::export::gguf::GGUF_FILE;
use crate::export::onnx::folder::{DATA_FILE, MODEL_FILE};
use crate::merge::{MergeInputs, execute_rows, plan_merge};
use crate::model::decoder::Role as DecoderRole;
use crate::model::dtype::row_width;
use crate::model::{HfConfig, ModelFolder};
use crate::runtime::chat::{ChatTemplate, Message};
use crate::runtime::engine::DecoderEngine;
use crate::runtime::generation::{
    GenerateOptions, Generation, GenerationDefaults, StreamEvent, generate_batch,
};
use crate::runtime::gguf::GgufFile;
use crate::runtime::ort_engine::OrtEngine;
use crate::runtime::reference::{ReferenceEngine, ReferenceModel, Weight};

/// What to load.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A Hugging Face model folder (a base or a merged model), or an ONNX export folder.
    Folder(PathBuf),
    /// A base model and a PEFT adapter folder or training run (its newest valid checkpoint),
    /// merged in memory.
    WithAdapter { base: PathBuf, adapter: PathBuf },
}

/// How to load it.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub source: Source,
    pub device: DeviceChoice,
    /// Dense weights' dtype (f32, f16 or bf16): the weights quantization leaves dense too.
    pub dtype: DType,
    pub quantization: Quantization,
    /// Refuse a load whose estimate passes this many bytes (default: the available RAM).
    pub max_memory: Option<u64>,
    /// Further tries after a transient failure (an I/O error, a file still being written).
    pub retries: u32,
    /// CPU threads (default: all cores).
    pub threads: Option<usize>,
}

impl LoadOptions {
    /// A model or ONNX export folder, f32, no quantization, `auto` device.
    pub fn new(folder: impl Into<PathBuf>) -> Self {
        Self {
            source: Source::Folder(folder.into()),
            device: DeviceChoice::Auto,
            dtype: DType::F32,
            quantization: Quantization::None,
            max_memory: None,
            retries: 3,
            threads: None,
        }
    }

    /// A base and an adapter folder or training run, merged in memory.
    pub fn with_adapter(base: impl Into<PathBuf>, adapter: impl Into<PathBuf>) -> Self {
        Self { source: Source::WithAdapter { base: base.into(), adapter: adapter.into() }, ..Self::new("") }
    }

    pub fn quantization(mut self, quantization: Quantization) -> Self {
        self.quantization = quantization;
        self
    }

    pub fn device(mut self, device: DeviceChoice) -> Self {
        self.device = device;
        self
    }

    pub fn dtype(mut self, dtype: DType) -> Self {
        self.dtype = dtype;
        self
    }

    pub fn max_memory(mut self, bytes: u64) -> Self {
        self.max_memory = Some(bytes);
        self
    }

    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }
}

/// Bytes a group of tensors holds, and in which formats.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupInfo {
    pub group: String,
    pub tensors: usize,
    pub parameters: u64,
    pub bytes: u64,
    /// Format -> number of tensors in it.
    pub formats: BTreeMap<String, usize>,
}

/// What was loaded, where, and what it costs.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// config.json's `model_type` (`qwen3`, `qwen2`).
    pub architecture: String,
    pub parameters: u64,
    /// `candle` or `onnxruntime`.
    pub engine: String,
    pub device: ChosenDevice,
    pub dtype: String,
    pub quantization: Quantization,
    pub groups: Vec<GroupInfo>,
    pub resident_bytes: u64,
    /// Tensors that did not get the mode's format (rows not a multiple of its block).
    pub fallbacks: Vec<FormatFallback>,
    /// The folder the weights came from, and the adapter merged into them.
    pub source: PathBuf,
    pub adapter: Option<PathBuf>,
}

enum Backend {
    Candle(ReferenceModel),
    Onnx(Mutex<OrtEngine>),
}

/// A loaded model. Dropping it frees everything it holds.
pub struct Model {
    backend: Backend,
    info: ModelInfo,
    tokenizer: Tokenizer,
    /// The chat template, or why there is none (reported when chat mode is asked for).
    template: Result<ChatTemplate, ModelError>,
    defaults: GenerationDefaults,
    pool: rayon::ThreadPool,
}

/// The tensors of a model as the loader places them.
/// `lookup_blocks`: the embedding is looked up from blocks (the CPU, see [`Role::LookupBlocks`]).
fn planned_weights(
    folder: &ModelFolder,
    shapes: impl Iterator<Item = (String, Vec<usize>)>,
    lookup_blocks: bool,
) -> Vec<PlannedWeight> {
    let decoder = &folder.config.decoder;
    shapes
        .map(|(name, shape)| {
            let described = decoder.tensor(&name).map(|t| t.role);
            let role = match described {
                Some(DecoderRole::Embedding) if lookup_blocks => Role::LookupBlocks,
                Some(DecoderRole::Embedding) => Role::Embedding,
                Some(DecoderRole::Head) => Role::Head,
                // The router stays f32, as in ONNX and GGUF exports: it picks the experts.
                Some(DecoderRole::Router { .. }) => Role::Vector,
                _ if shape.len() < 2 => Role::Vector,
                _ => Role::Linear,
            };
            let group = match described {
                Some(DecoderRole::Embedding) => "embeddings",
                Some(DecoderRole::Head) => "head",
                Some(DecoderRole::Projection { kind, .. }) if kind.in_attention() => "attention",
                Some(
                    DecoderRole::Projection { .. } | DecoderRole::Expert { .. } | DecoderRole::Router { .. },
                ) => "mlp",
                Some(DecoderRole::Norm | DecoderRole::Bias { .. }) => "norms and biases",
                None if shape.len() < 2 => "norms and biases",
                None => "mlp",
            };
            PlannedWeight { name, shape, role, group }
        })
        .collect()
}

/// Size and modification time of every file in `dirs`, to see whether one is being written.
fn snapshot(dirs: &[&Path]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files = Vec::new();
    // The folders given and their subfolders (a run's checkpoint-N folders).
    let mut folders: Vec<PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    for dir in dirs {
        folders.extend(
            std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()),
        );
    }
    for dir in &folders {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Ok(meta) = entry.metadata()
                && meta.is_file()
            {
                files.push((entry.path(), meta.len(), meta.modified().ok()));
            }
        }
    }
    files.sort();
    files
}

fn is_transient(error: &Error) -> bool {
    let io = match error {
        Error::Model(ModelError::Io { source, .. }) => Some(source),
        Error::Checkpoint(crate::error::CheckpointError::Io { source, .. }) => Some(source),
        _ => None,
    };
    io.is_some_and(crate::retry::is_transient)
}

/// Runs `load` again after a transient failure: an I/O error that may pass, or any failure
/// while a file under `dirs` is still changing (being written or copied). A failure on files
/// that stay as they are is permanent and returned at once.
fn with_retries<T>(retries: u32, dirs: &[&Path], load: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    with_retries_waiting(retries, dirs, &mut std::thread::sleep, load)
}

/// [`with_retries`] with the wait between attempts given (tests drive it instead of a clock).
fn with_retries_waiting<T>(
    retries: u32,
    dirs: &[&Path],
    wait: &mut dyn FnMut(Duration),
    mut load: impl FnMut() -> Result<T, Error>,
) -> Result<T, Error> {
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0;
    loop {
        let before = snapshot(dirs);
        let error = match load() {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if attempt >= retries {
            return Err(error);
        }
        let transient = is_transient(&error);
        // A file that changes while we wait is being written: worth another try.
        wait(delay);
        let changing = snapshot(dirs) != before;
        if !(changing || transient) {
            return Err(error);
        }
        let why = if changing { "a file is still being written" } else { "transient I/O error" };
        tracing::warn!("load failed ({why}): {error}; retrying ({}/{retries})", attempt + 1);
        delay *= 2;
        attempt += 1;
    }
}

fn memory_budget(options: &LoadOptions) -> u64 {
    options.max_memory.or_else(crate::monitor::available_memory).unwrap_or(u64::MAX)
}

/// Refuses an export above the budget: it loads in the types it was written in, so `needed`
/// is fixed and `suggestion` says what to load instead.
fn check_fixed_size(
    what: &Path,
    mode: &str,
    needed: u64,
    options: &LoadOptions,
    suggestion: &str,
) -> Result<(), LoadError> {
    let budget = memory_budget(options);
    if needed > budget {
        return Err(LoadError::Budget {
            what: what.display().to_string(),
            mode: mode.into(),
            needed,
            budget,
            suggestion: suggestion.into(),
        });
    }
    Ok(())
}

fn mode_label(options: &LoadOptions) -> String {
    match options.quantization {
        Quantization::None => options.dtype.as_str().to_string(),
        q => q.to_string(),
    }
}

/// Refuses option combinations that cannot work, with what to use instead.
fn check_compatible(options: &LoadOptions, onnx: bool, device: &ChosenDevice) -> Result<(), LoadError> {
    let refuse = |what: &str, reason: &str, help: &str| {
        Err(LoadError::Incompatible { what: what.into(), reason: reason.into(), help: help.into() })
    };
    if !matches!(options.dtype, DType::F32 | DType::F16 | DType::BF16) {
        return refuse(
            &format!("dtype {}", options.dtype.as_str()),
            "weights load as f32, f16 or bf16",
            "use dtype = \"f32\", \"f16\" or \"bf16\"",
        );
    }
    if options.dtype == DType::BF16 && !device.bf16 {
        return refuse(
            &format!("bf16 on {}", device.name),
            "this device has no bf16 arithmetic",
            "use dtype = \"f16\" or \"f32\", or quantization = \"q8_0\"",
        );
    }
    if onnx {
        if options.quantization != Quantization::None {
            return refuse(
                &format!("quantization {} of an ONNX export", options.quantization),
                "an ONNX export's weights were quantized when it was written",
                "load it with quantization = \"none\" (export with dtype = \"int4\" for a 4-bit ONNX model), or load the safetensors folder with this quantization",
            );
        }
        if options.dtype != DType::F32 {
            return refuse(
                &format!("dtype {} of an ONNX export", options.dtype.as_str()),
                "an ONNX export runs in the dtype it was written in",
                "leave dtype at f32, or export the dtype you want",
            );
        }
        if device.name != "cpu" {
            return refuse(
                &format!("an ONNX export on {}", device.name),
                "ONNX exports run through ONNX Runtime's CPU provider here",
                "use device = \"cpu\", or load the merged safetensors folder to run on the GPU",
            );
        }
    }
    Ok(())
}

fn thread_count(options: &LoadOptions) -> usize {
    options.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

fn thread_pool(options: &LoadOptions) -> Result<rayon::ThreadPool, Error> {
    let threads = thread_count(options);
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| RuntimeError::Unsupported { message: format!("cannot start {threads} threads: {e}") })?)
}

/// The GGUF file `path` names: a `.gguf` file, or an export folder holding `model.gguf`.
fn gguf_file(path: &Path) -> Option<PathBuf> {
    if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return Some(path.to_path_buf());
    }
    let inside = path.join(GGUF_FILE);
    inside.is_file().then_some(inside)
}

/// A GGUF file runs in the types it was written in.
fn check_gguf_compatible(options: &LoadOptions) -> Result<(), LoadError> {
    let refuse = |what: String, reason: &str, help: &str| {
        Err(LoadError::Incompatible { what, reason: reason.into(), help: help.into() })
    };
    if options.quantization != Quantization::None {
        return refuse(
            format!("quantization {} of a GGUF file", options.quantization),
            "a GGUF file's weights were quantized when it was written",
            "load it with quantization = \"none\" (export with dtype = \"q4_k\" for a 4-bit file), or load the safetensors folder with this quantization",
        );
    }
    if options.dtype != DType::F32 {
        return refuse(
            format!("dtype {} of a GGUF file", options.dtype.as_str()),
            "a GGUF file's tensors keep the types they were written in",
            "leave dtype at f32, or export the dtype you want",
        );
    }
    Ok(())
}

impl Model {
    /// Loads a model as `options` say; see the module documentation.
    pub fn load(options: &LoadOptions) -> Result<Self, Error> {
        if let Source::Folder(path) = &options.source
            && let Some(file) = gguf_file(path)
        {
            let device = device::resolve(options.device)?;
            tracing::info!("device {}: {}", device.name, device.reason);
            check_gguf_compatible(options)?;
            let pool = thread_pool(options)?;
            let dirs = [file.parent().unwrap_or(Path::new("."))];
            return pool
                .install(|| with_retries(options.retries, &dirs, || Self::load_gguf(&file, options, &device)))
                .map(|parts| parts.with_pool(pool));
        }
        let onnx = matches!(&options.source, Source::Folder(dir) if dir.join(MODEL_FILE).is_file());
        let device = if onnx && options.device == DeviceChoice::Auto {
            ChosenDevice {
                reason: "auto: ONNX exports run on ONNX Runtime's CPU provider".into(),
                ..device::resolve(DeviceChoice::Cpu)?
            }
        } else {
            device::resolve(options.device)?
        };
        tracing::info!("device {}: {}", device.name, device.reason);
        let threads = thread_count(options);
        let pool = thread_pool(options)?;
        match &options.source {
            Source::Folder(dir) if dir.join(MODEL_FILE).is_file() => {
                check_compatible(options, true, &device)?;
                let dirs = [dir.as_path()];
                with_retries(options.retries, &dirs, || Self::load_onnx(dir, options, &device, threads))
                    .map(|parts| parts.with_pool(pool))
            }
            Source::Folder(dir) => {
                check_compatible(options, false, &device)?;
                if !crate::model::folder::looks_like_model(dir) {
                    return Err(LoadError::Source {
                        path: dir.clone(),
                        reason: "not a model folder (no config.json with *.safetensors) and not an ONNX export (no model.onnx)".into(),
                    }
                    .into());
                }
                let dirs = [dir.as_path()];
                pool.install(|| {
                    with_retries(options.retries, &dirs, || Self::load_candle(dir, None, options, &device))
                })
                .map(|parts| parts.with_pool(pool))
            }
            Source::WithAdapter { base, adapter } => {
                check_compatible(options, false, &device)?;
                let dirs = [base.as_path(), adapter.as_path()];
                pool.install(|| {
                    with_retries(options.retries, &dirs, || {
                        Self::load_candle(base, Some(adapter), options, &device)
                    })
                })
                .map(|parts| parts.with_pool(pool))
            }
        }
    }

    fn load_candle(
        dir: &Path,
        adapter_source: Option<&Path>,
        options: &LoadOptions,
        device: &ChosenDevice,
    ) -> Result<Parts, Error> {
        let folder = ModelFolder::open(dir, None)?;
        let detection: Option<Detection> = adapter_source.map(|a| detect(a, Some(&folder))).transpose()?;
        let adapter = detection.as_ref().map(|d| &d.adapter);
        let merge_plan = plan_merge(&folder, adapter)?;
        let names = &folder.profile.tensors;
        let tied =
            !merge_plan.tensors.iter().any(|t| t.name == names.lm_head) && folder.config.tie_word_embeddings;
        // On the CPU a quantized table is looked up from its blocks and a tied head multiplies
        // them; elsewhere a quantized tied head is a quantized copy beside the f16 table.
        let lookup_blocks = device.device.is_cpu();
        let tied_copy = tied && options.quantization != Quantization::None && !lookup_blocks;
        let plan_for = |quantization: Quantization| {
            let mut shapes: Vec<(String, Vec<usize>)> =
                merge_plan.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
            if tied
                && !lookup_blocks
                && quantization != Quantization::None
                && let Some((_, shape)) = shapes.iter().find(|(n, _)| n == names.embed).cloned()
            {
                shapes.push((names.lm_head.to_string(), shape));
            }
            LoadPlan::new(
                &planned_weights(&folder, shapes.into_iter(), lookup_blocks),
                quantization,
                options.dtype,
            )
        };
        let plan = plan_for(options.quantization);
        let alternatives: Vec<Estimate> = [Quantization::Q8_0, Quantization::Q4K, Quantization::Q4_0]
            .into_iter()
            .filter(|q| *q != options.quantization)
            .map(|q| Estimate { mode: q.to_string(), bytes: plan_for(q).peak })
            .collect();
        budget::check(
            &dir.display().to_string(),
            &mode_label(options),
            &plan,
            memory_budget(options),
            &alternatives,
        )?;

        let placements: HashMap<&str, Placement> =
            plan.weights.iter().map(|(w, p)| (w.name.as_str(), *p)).collect();
        let place = |name: &str| placements.get(name).copied().unwrap_or(Placement::Dense(DType::F32));
        let mut loaded: HashMap<String, Weight> = HashMap::new();
        // The tensor being received, with the quantized copy of a tied head beside the table.
        let mut building: Vec<(String, Accumulator)> = Vec::new();
        let mut received = 0;
        let merge_inputs = MergeInputs { base: &folder, adapter, allow_non_finite: false };
        execute_rows(&merge_plan, &merge_inputs, &mut |t, first, values| {
            let elements: usize = t.shape.iter().product();
            if first == 0 {
                building.push((t.name.clone(), Accumulator::new(place(&t.name), elements)));
                if tied_copy && t.name == names.embed {
                    building
                        .push((names.lm_head.to_string(), Accumulator::new(place(names.lm_head), elements)));
                }
                received = 0;
            }
            let width = row_width(&t.shape);
            for (_, acc) in &mut building {
                acc.push(values, width)?;
            }
            received += values.len();
            if received == elements {
                for (name, acc) in building.drain(..) {
                    loaded.insert(name, acc.finish(&t.shape, &device.device)?);
                }
            }
            Ok(())
        })?;
        let model = ReferenceModel::assemble(&folder, &device.device, &mut |name| Ok(loaded.remove(name)))?;

        let tokenizer_dir = crate::checkpoint::detect::tokenizer_dir(detection.as_ref(), &folder.dir);
        let groups = group_info(&plan);
        let info = ModelInfo {
            architecture: folder.config.model_type.clone(),
            parameters: merge_plan.parameter_count(),
            engine: "candle".into(),
            device: device.clone(),
            dtype: options.dtype.as_str().into(),
            quantization: options.quantization,
            resident_bytes: plan.resident,
            groups,
            fallbacks: plan.fallbacks.clone(),
            source: folder.dir.clone(),
            adapter: detection.as_ref().map(|d| d.chosen.clone()),
        };
        Parts::new(Backend::Candle(model), info, &tokenizer_dir, &folder.dir, &folder.config)
    }

    fn load_gguf(path: &Path, options: &LoadOptions, device: &ChosenDevice) -> Result<Parts, Error> {
        let file = GgufFile::open(path)?;
        let bytes = file.resident_bytes();
        check_fixed_size(
            path,
            "its GGUF types",
            bytes,
            options,
            "export a smaller type (dtype = \"q4_k\"), or load the safetensors folder with quantization = \"q4_k\"",
        )?;
        let model = file.load(&device.device)?;
        let parameters: u64 = file.content.tensor_infos.values().map(|t| t.shape.elem_count() as u64).sum();
        let dir = path.parent().unwrap_or(Path::new("."));
        let info = ModelInfo {
            architecture: file.config.model_type.clone(),
            parameters,
            engine: "candle (gguf)".into(),
            device: device.clone(),
            dtype: "as exported".into(),
            quantization: Quantization::None,
            groups: vec![GroupInfo {
                group: "gguf tensors".into(),
                tensors: file.content.tensor_infos.len(),
                parameters,
                bytes: file.tensor_bytes(),
                formats: file.type_counts(),
            }],
            resident_bytes: bytes,
            fallbacks: Vec::new(),
            source: path.to_path_buf(),
            adapter: None,
        };
        Parts::new(Backend::Candle(model), info, dir, dir, &file.config)
    }

    fn load_onnx(
        dir: &Path,
        options: &LoadOptions,
        device: &ChosenDevice,
        threads: usize,
    ) -> Result<Parts, Error> {
        let (config, _) = HfConfig::read(&dir.join("config.json"), None)?;
        let shapes = crate::model::layout::expected_tensors(&config);
        let parameters = shapes.iter().map(|(_, s)| s.iter().product::<usize>() as u64).sum();
        let files: u64 = [MODEL_FILE, DATA_FILE]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
            .map(|m| m.len())
            .sum();
        check_fixed_size(
            dir,
            "its exported dtype",
            files,
            options,
            "load a smaller export (dtype = \"int4\"), or the safetensors folder with quantization = \"q4_k\"",
        )?;
        let engine = OrtEngine::load(
            &dir.join(MODEL_FILE),
            config.num_hidden_layers,
            config.num_key_value_heads,
            config.head_dim,
            threads,
        )?;
        let info = ModelInfo {
            architecture: config.model_type.clone(),
            parameters,
            engine: "onnxruntime".into(),
            device: device.clone(),
            dtype: "as exported".into(),
            quantization: Quantization::None,
            groups: vec![GroupInfo {
                group: "onnx files".into(),
                tensors: shapes.len(),
                parameters,
                bytes: files,
                formats: BTreeMap::new(),
            }],
            resident_bytes: files,
            fallbacks: Vec::new(),
            source: dir.to_path_buf(),
            adapter: None,
        };
        Parts::new(Backend::Onnx(Mutex::new(engine)), info, dir, dir, &config)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The generation defaults read from generation_config.json.
    pub fn defaults(&self) -> &GenerationDefaults {
        &self.defaults
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `prompt` as a user message (after an optional system message) in the model's chat
    /// template, with the generation prompt added, as `apply_chat_template` renders it.
    pub fn render_chat(&self, prompt: &str, system: Option<&str>) -> Result<String, Error> {
        let template = self.template.as_ref().map_err(|e| ModelError::Json {
            path: match e {
                ModelError::Json { path, .. }
                | ModelError::Io { path, .. }
                | ModelError::NotAModel { path, .. } => path.clone(),
                _ => self.info.source.clone(),
            },
            message: format!("chat mode needs the model's chat template: {e}"),
        })?;
        let mut messages = Vec::new();
        if let Some(system) = system {
            messages.push(Message { role: "system".into(), content: system.into() });
        }
        messages.push(Message { role: "user".into(), content: prompt.into() });
        Ok(template.render(&messages, true)?)
    }

    /// Token ids of `text` as the tokenizer encodes it (special tokens added as configured).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, Error> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| RuntimeError::Input { message: format!("cannot tokenize {text:?}: {e}") })?;
        Ok(encoding.get_ids().iter().map(|&t| i64::from(t)).collect())
    }

    /// The logits of every position of `batch` ([batch, seq, vocab]) from an empty cache: for
    /// scoring, and for measuring a quantization against f32.
    pub fn logits(&self, batch: &crate::runtime::Batch) -> Result<crate::runtime::Logits, Error> {
        let logits = self.pool.install(|| match &self.backend {
            Backend::Candle(model) => ReferenceEngine::new(model).step(batch),
            Backend::Onnx(engine) => {
                let mut engine = engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                engine.reset();
                let logits = engine.step(batch);
                engine.reset();
                logits
            }
        })?;
        Ok(logits)
    }

    /// Generates for every prompt, as one left-padded batch.
    pub fn generate<S: AsRef<str>>(
        &self,
        prompts: &[S],
        options: &GenerateOptions,
    ) -> Result<Vec<Generation>, Error> {
        self.generate_stream(prompts, options, |_| {})
    }

    /// Like [`Model::generate`], calling `on_token` with each new token and the text it
    /// completed, as they come.
    pub fn generate_stream<S: AsRef<str>>(
        &self,
        prompts: &[S],
        options: &GenerateOptions,
        mut on_token: impl FnMut(StreamEvent<'_>) + Send,
    ) -> Result<Vec<Generation>, Error> {
        let texts: Vec<String> = prompts
            .iter()
            .map(|p| {
                if options.chat {
                    self.render_chat(p.as_ref(), options.system.as_deref())
                } else {
                    Ok(p.as_ref().to_string())
                }
            })
            .collect::<Result<_, _>>()?;
        let ids: Vec<Vec<i64>> = texts.iter().map(|t| self.encode(t)).collect::<Result<_, _>>()?;
        let settings = options.resolve(&self.defaults)?;
        let outputs = self.pool.install(|| -> Result<_, RuntimeError> {
            match &self.backend {
                Backend::Candle(model) => {
                    let mut engine = ReferenceEngine::new(model);
                    generate_batch(&mut engine, Some(&self.tokenizer), &ids, &settings, &mut on_token)
                }
                Backend::Onnx(engine) => {
                    let mut engine = engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    generate_batch(
                        &mut *engine as &mut dyn DecoderEngine,
                        Some(&self.tokenizer),
                        &ids,
                        &settings,
                        &mut on_token,
                    )
                }
            }
        })?;
        Ok(texts
            .into_iter()
            .zip(ids)
            .zip(outputs)
            .map(|((prompt, prompt_ids), (token_ids, text, finish))| Generation {
                prompt,
                prompt_ids,
                token_ids,
                text,
                finish,
            })
            .collect())
    }
}

/// A loaded model before it gets its thread pool.
struct Parts {
    backend: Backend,
    info: ModelInfo,
    tokenizer: Tokenizer,
    template: Result<ChatTemplate, ModelError>,
    defaults: GenerationDefaults,
}

impl Parts {
    fn new(
        backend: Backend,
        info: ModelInfo,
        tokenizer_dir: &Path,
        model_dir: &Path,
        config: &HfConfig,
    ) -> Result<Self, Error> {
        let path = tokenizer_dir.join("tokenizer.json");
        let tokenizer = Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Json { path: path.clone(), message: format!("not a tokenizer: {e}") })?;
        let template = ChatTemplate::from_dir(tokenizer_dir);
        let defaults = GenerationDefaults::read(model_dir, config);
        Ok(Self { backend, info, tokenizer, template, defaults })
    }

    fn with_pool(self, pool: rayon::ThreadPool) -> Model {
        Model {
            backend: self.backend,
            info: self.info,
            tokenizer: self.tokenizer,
            template: self.template,
            defaults: self.defaults,
            pool,
        }
    }
}

fn group_info(plan: &LoadPlan) -> Vec<GroupInfo> {
    let mut groups: Vec<GroupInfo> = Vec::new();
    for (w, p) in &plan.weights {
        let at = match groups.iter().position(|g| g.group == w.group()) {
            Some(at) => at,
            None => {
                groups.push(GroupInfo {
                    group: w.group().into(),
                    tensors: 0,
                    parameters: 0,
                    bytes: 0,
                    formats: BTreeMap::new(),
                });
                groups.len() - 1
            }
        };
        let g = &mut groups[at];
        g.tensors += 1;
        g.parameters += w.elements() as u64;
        g.bytes += p.bytes(w.elements());
        *g.formats.entry(p.label()).or_default() += 1;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incomplete(path: &Path) -> Error {
        Error::Model(ModelError::Safetensors { path: path.to_path_buf(), message: "incomplete".into() })
    }

    #[test]
    fn a_file_that_grows_between_attempts_is_retried_and_one_that_stays_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        std::fs::write(&file, b"half").unwrap();
        let load = || {
            let len = std::fs::metadata(&file).map_or(0, |m| m.len());
            if len >= 7 { Ok(len) } else { Err(incomplete(&file)) }
        };
        // The "copy in progress" adds a byte during each wait: no clock, no race.
        let mut waits = Vec::new();
        let mut grow = |d: Duration| {
            waits.push(d);
            let mut bytes = std::fs::read(&file).unwrap();
            bytes.push(b'+');
            std::fs::write(&file, bytes).unwrap();
        };
        assert_eq!(with_retries_waiting(6, &[dir.path()], &mut grow, load).ok(), Some(7));
        assert_eq!(waits, [100, 200, 400].map(Duration::from_millis));

        // A file cut short that nobody writes: one look for change, then the error, never retried.
        std::fs::write(&file, b"cut").unwrap();
        let mut looked = 0;
        let err = with_retries_waiting(6, &[dir.path()], &mut |_| looked += 1, load).err().unwrap();
        assert_eq!(looked, 1);
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}
