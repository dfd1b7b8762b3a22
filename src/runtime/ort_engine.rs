//! ONNX Runtime through the `ort` crate, loaded dynamically: the shared library comes from
//! `ORT_DYLIB_PATH`, else from where the `onnxruntime` wheel installs it, else from the system.
//! Nothing links against it, so the tool runs (without this engine) where it is absent.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::Tensor;

use super::batch::Batch;
use super::engine::{DecoderEngine, Logits};
use crate::error::RuntimeError;
use crate::onnx_io::{
    ATTENTION_MASK, INPUT_IDS, LOGITS, PAST_KEY, PAST_VALUE, POSITION_IDS, PRESENT_KEY, PRESENT_VALUE,
    io_name,
};

fn wheel_site_packages() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(venv) = std::env::var("VIRTUAL_ENV") {
        dirs.push(PathBuf::from(venv).join("lib"));
    }
    // Ask the Python that pip uses where it puts packages.
    for python in ["python3", "python"] {
        let out = std::process::Command::new(python)
            .args(["-c", "import site,sysconfig;print(sysconfig.get_paths()['purelib']);print(site.getusersitepackages())"])
            .output();
        if let Ok(out) = out
            && out.status.success()
        {
            dirs.extend(String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from));
            break;
        }
    }
    dirs
}

fn find_in(dir: &Path) -> Option<PathBuf> {
    let capi = if dir.ends_with("lib") {
        // A virtualenv's lib/: look one level down (lib/pythonX.Y/site-packages).
        let entries = std::fs::read_dir(dir).ok()?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path().join("site-packages/onnxruntime/capi"))
            .find(|p| p.is_dir())?
    } else {
        dir.join("onnxruntime/capi")
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so")))
        .collect();
    found.sort();
    found.pop()
}

/// Where the ONNX Runtime shared library is, if anywhere.
pub fn find_onnxruntime() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from) {
        return path.is_file().then_some(path);
    }
    if let Some(found) = wheel_site_packages().iter().find_map(|d| find_in(d)) {
        return Some(found);
    }
    ["/usr/lib", "/usr/local/lib", "/usr/lib/x86_64-linux-gnu"]
        .iter()
        .map(|d| Path::new(d).join("libonnxruntime.so"))
        .find(|p| p.is_file())
}

fn environment() -> Result<&'static ort::environment::Environment, RuntimeError> {
    static ENV: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path =
            find_onnxruntime().ok_or_else(|| "the ONNX Runtime shared library was not found".to_string())?;
        tracing::debug!("loading ONNX Runtime from {}", path.display());
        ort::init_from(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .with_name("model-export")
            .build()
            .map_err(|e| format!("{}: {e}", path.display()))
    })
    .as_ref()
    .map_err(|message| RuntimeError::OrtUnavailable { message: message.clone() })
}

/// Whether ONNX Runtime can be used on this machine.
pub fn available() -> bool {
    environment().is_ok()
}

pub struct OrtEngine {
    session: Session,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    /// Per layer: key and value, as ONNX Runtime returned them (fed back without a copy).
    past: Vec<[ort::value::DynValue; 2]>,
}

fn ort_error(context: &str) -> impl Fn(ort::Error) -> RuntimeError + '_ {
    move |e| RuntimeError::Engine { engine: "ort", message: format!("{context}: {e}") }
}

impl OrtEngine {
    /// Loads an exported decoder; ORT's basic optimisations only (they keep numerics as written).
    pub fn load(
        model: &Path,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        threads: usize,
    ) -> Result<Self, RuntimeError> {
        Self::load_with(model, layers, kv_heads, head_dim, threads, true)
    }

    /// [`OrtEngine::load`] for a few tiny batches: without prepacking, float matrices stay in
    /// the mapped file instead of being copied into ORT's packed layout (0.6B f32: 0.6 s and
    /// 43 MiB of private memory instead of 4.3 s and 2.3 GiB). Quantized graphs keep it:
    /// MatMulNBits unpacked dequantizes on every call (2.5x slower there).
    pub fn load_for_check(
        model: &Path,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        threads: usize,
        quantized: bool,
    ) -> Result<Self, RuntimeError> {
        Self::load_with(model, layers, kv_heads, head_dim, threads, quantized)
    }

    fn load_with(
        model: &Path,
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        threads: usize,
        prepacking: bool,
    ) -> Result<Self, RuntimeError> {
        let env = environment()?;
        let context = model.display().to_string();
        let builder_error = |e: ort::Error<ort::session::builder::SessionBuilder>| RuntimeError::EngineLoad {
            engine: "ort",
            message: format!("{context}: {e}"),
        };
        let session = Session::builder(env)
            .map_err(ort_error(&context))?
            .with_optimization_level(GraphOptimizationLevel::Level1)
            .map_err(builder_error)?
            .with_intra_threads(threads)
            .map_err(builder_error)?
            .with_prepacking(prepacking)
            .map_err(builder_error)?
            .commit_from_file(model)
            .map_err(|e| RuntimeError::EngineLoad { engine: "ort", message: format!("{context}: {e}") })?;
        Ok(Self { session, layers, kv_heads, head_dim, past: Vec::new() })
    }
}

fn i64_tensor(rows: &[Vec<i64>]) -> Result<ort::value::DynValue, ort::Error> {
    let shape = vec![rows.len() as i64, rows.first().map_or(0, Vec::len) as i64];
    Ok(Tensor::from_array((shape, rows.concat()))?.upcast().into_dyn())
}

impl DecoderEngine for OrtEngine {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn step(&mut self, batch: &Batch) -> Result<Logits, RuntimeError> {
        let (b, s) = batch.dims();
        let err = ort_error("run");
        if self.past.is_empty() {
            let empty = || -> Result<ort::value::DynValue, ort::Error> {
                let shape = vec![b as i64, self.kv_heads as i64, 0, self.head_dim as i64];
                Ok(Tensor::from_array((shape, Vec::<f32>::new()))?.upcast().into_dyn())
            };
            for _ in 0..self.layers {
                self.past.push([empty().map_err(&err)?, empty().map_err(&err)?]);
            }
        }
        let mut inputs: Vec<(String, ort::value::DynValue)> = vec![
            (INPUT_IDS.into(), i64_tensor(&batch.input_ids).map_err(&err)?),
            (ATTENTION_MASK.into(), i64_tensor(&batch.attention_mask).map_err(&err)?),
            (POSITION_IDS.into(), i64_tensor(&batch.position_ids).map_err(&err)?),
        ];
        for (layer, [key, value]) in self.past.drain(..).enumerate() {
            inputs.push((io_name(PAST_KEY, layer), key));
            inputs.push((io_name(PAST_VALUE, layer), value));
        }
        let mut outputs = self.session.run(inputs).map_err(&err)?;
        let (shape, logits) = outputs[LOGITS].try_extract_tensor::<f32>().map_err(&err)?;
        let vocab = shape.last().copied().unwrap_or(0) as usize;
        let logits = Logits { values: logits.to_vec(), batch: b, seq: s, vocab };
        let mut past = Vec::with_capacity(self.layers);
        for layer in 0..self.layers {
            let mut take = |pattern: &str| {
                let name = io_name(pattern, layer);
                outputs.remove(&name).ok_or_else(|| RuntimeError::Engine {
                    engine: "ort",
                    message: format!("the model has no output {name}"),
                })
            };
            past.push([take(PRESENT_KEY)?, take(PRESENT_VALUE)?]);
        }
        self.past = past;
        Ok(logits)
    }

    fn reset(&mut self) {
        self.past.clear();
    }
}
