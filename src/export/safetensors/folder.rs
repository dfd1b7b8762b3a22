//! A merged Hugging Face folder that `AutoModelForCausalLM.from_pretrained` loads unchanged:
//! weights (sharded like transformers when asked), config.json with `torch_dtype` updated,
//! generation_config.json and the tokenizer files, then `manifest.json` last. The folder is
//! built under a temporary name beside its destination and renamed into place only after a
//! verification pass, so a failed or killed run leaves nothing that looks finished.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::sharded::ShardedWriter;
use crate::checkpoint::Detection;
use crate::error::Error;
use crate::export::manifest::{
    Check, FileEntry, InputFile, MANIFEST, Manifest, Provenance, hash_folder, sha256_hex, verify,
};
use crate::fsutil::{atomic_write, write_json};
use crate::merge::{MergeInputs, execute, output_entries, plan_merge};
use crate::model::folder::TOKENIZER_FILES;
use crate::model::layout::check_layout;
use crate::model::{ModelFolder, SafetensorsFile, TensorDtype};
use crate::monitor;

#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// Output dtype; default: the base's storage dtype.
    pub dtype: Option<TensorDtype>,
    pub max_shard_size: Option<u64>,
}

#[derive(Debug)]
pub struct MergeReport {
    pub dir: PathBuf,
    pub dtype: TensorDtype,
    pub manifest: Manifest,
    pub parameters: u64,
    pub untied: bool,
    pub tokenizer_from: PathBuf,
}

fn input_files<'a>(files: impl Iterator<Item = &'a SafetensorsFile>) -> Vec<InputFile> {
    files
        .map(|f| InputFile {
            path: f.path().to_path_buf(),
            size: std::fs::metadata(f.path()).map(|m| m.len()).unwrap_or(0),
            header_sha256: sha256_hex(f.header_bytes()),
        })
        .collect()
}

/// config.json of the merged model: the base's, with the dtype (and tying) it now has.
fn merged_config(base: &ModelFolder, dtype: TensorDtype, untied: bool) -> Value {
    let mut raw = base.config.raw.clone();
    let torch = Value::String(dtype.torch_name().unwrap_or("float32").to_string());
    let mut wrote_dtype = false;
    for key in ["torch_dtype", "dtype"] {
        if raw.contains_key(key) {
            raw.insert(key.to_string(), torch.clone());
            wrote_dtype = true;
        }
    }
    if !wrote_dtype {
        raw.insert("torch_dtype".into(), torch);
    }
    if untied {
        raw.insert("tie_word_embeddings".into(), Value::Bool(false));
    }
    // Settings of the training run, not of the model.
    for key in ["quantization_config", "_name_or_path"] {
        raw.remove(key);
    }
    Value::Object(raw)
}

/// Moves a finished folder into place, replacing an older export of the same name.
fn install(temp: tempfile::TempDir, out: &Path) -> Result<(), Error> {
    crate::fsutil::make_folder_shareable(temp.path()).map_err(|e| Error::write(temp.path(), e))?;
    let temp = temp.keep();
    if out.exists() {
        let parent = out.parent().unwrap_or(Path::new("."));
        let old = tempfile::Builder::new()
            .prefix(".old-")
            .tempdir_in(parent)
            .map_err(|e| Error::write(parent, e))?;
        let old_path = old.path().join("previous");
        std::fs::rename(out, &old_path).map_err(|e| Error::write(out, e))?;
        std::fs::rename(&temp, out).map_err(|e| Error::write(out, e))?;
        drop(old);
    } else {
        std::fs::rename(&temp, out).map_err(|e| Error::write(out, e))?;
    }
    Ok(())
}

/// Merges the detected adapter (or none) into `base` and writes the folder `out`.
pub fn write_merged_folder(
    base: &ModelFolder,
    detection: Option<&Detection>,
    options: &MergeOptions,
    out: &Path,
) -> Result<MergeReport, Error> {
    let adapter = detection.map(|d| &d.adapter);
    let plan = plan_merge(base, adapter)?;
    let dtype = options.dtype.unwrap_or_else(|| base.storage_dtype());

    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "merged".into());
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::write(parent, e))?;
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempdir_in(parent)
        .map_err(|e| Error::write(parent, e))?;
    let dir = temp.path();

    let entries = output_entries(&plan, dtype);
    let total: u64 = entries.iter().map(|e| e.byte_len()).sum();
    let mut writer =
        ShardedWriter::create(dir, &entries, options.max_shard_size, &[("format".into(), "pt".into())])
            .map_err(|e| Error::write(dir, e))?;
    let progress = monitor::bytes_bar(total, format!("merging into {name}"));
    let inputs = MergeInputs { base, adapter };
    let started = std::time::Instant::now();
    execute(
        &plan,
        &inputs,
        dtype,
        &mut |bytes| writer.write(bytes).map_err(|e| Error::write(dir, e)),
        &progress,
    )?;
    let weights: Vec<FileEntry> = writer
        .finish()
        .map_err(|e| Error::write(dir, e))?
        .into_iter()
        .map(|w| FileEntry {
            path: w.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            size: w.size,
            sha256: w.sha256,
        })
        .collect();
    progress.finish_and_clear();
    tracing::info!("merged and wrote {total} bytes in {:.2} s", started.elapsed().as_secs_f64());

    write_json(&dir.join("config.json"), &merged_config(base, dtype, plan.untied))?;
    let generation = base.dir.join("generation_config.json");
    if generation.is_file() {
        let bytes = std::fs::read(&generation).map_err(|e| Error::write(&generation, e))?;
        atomic_write(&dir.join("generation_config.json"), &bytes)?;
    }
    // A checkpoint's tokenizer (which may carry the chat template training used) wins; a
    // checkpoint without one takes the base's.
    let tokenizer_from = detection
        .map(|d| d.chosen.clone())
        .filter(|d| d.join("tokenizer.json").is_file() || d.join("tokenizer_config.json").is_file())
        .unwrap_or_else(|| base.dir.clone());
    for file in TOKENIZER_FILES {
        let src = tokenizer_from.join(file);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| Error::write(&src, e))?;
            atomic_write(&dir.join(file), &bytes)?;
        }
    }

    let manifest = Manifest {
        tool: env!("CARGO_PKG_NAME").into(),
        version: env!("CARGO_PKG_VERSION").into(),
        format: "safetensors".into(),
        provenance: Provenance {
            base: base.dir.clone(),
            base_files: input_files(base.shard_files()),
            adapter: detection.map(|d| d.chosen.clone()),
            adapter_files: adapter.map(|a| input_files(std::iter::once(&a.file))).unwrap_or_default(),
            checkpoint: detection
                .and_then(|d| d.chosen.file_name())
                .map(|n| n.to_string_lossy().into_owned()),
            global_step: detection.and_then(|d| d.trainer_state.as_ref()).map(|s| s.global_step),
            options: serde_json::json!({
                "dtype": dtype.to_string(),
                "max_shard_size": options.max_shard_size,
                "untied_embeddings": plan.untied,
            }),
        },
        files: hash_folder(dir, &weights)?,
    };
    tracing::info!("hashed the folder at {:.2} s", started.elapsed().as_secs_f64());
    write_json(&dir.join(MANIFEST), &manifest)?;

    // Verification: every header re-read and the layout checked, then the manifest.
    let written = ModelFolder::open(dir, Some(base.profile))?;
    check_layout(&written)?;
    verify(dir, Check::Sizes)?;
    drop(written);
    tracing::info!("verified at {:.2} s", started.elapsed().as_secs_f64());

    install(temp, out)?;
    Ok(MergeReport {
        dir: out.to_path_buf(),
        dtype,
        manifest,
        parameters: plan.parameter_count(),
        untied: plan.untied,
        tokenizer_from,
    })
}
