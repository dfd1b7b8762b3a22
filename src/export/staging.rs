//! The parts every export folder shares: it is built under a temporary name (in a run's
//! `.state/tmp`, or beside its destination), gets the model's companion files (config.json, generation_config.json, tokenizer
//! files with the chat template), a manifest written last, and is renamed into place only when
//! complete. Dropping an unfinished `Staging` removes everything it wrote.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::checkpoint::Detection;
use crate::error::Error;
use crate::export::manifest::{
    Check, FileEntry, InputFile, MANIFEST, Manifest, Provenance, hash_folder, sha256_hex, verify,
};
use crate::fsutil::{atomic_write, write_json};
use crate::model::folder::TOKENIZER_FILES;
use crate::model::{ModelFolder, SafetensorsFile, TensorDtype};

pub struct Staging {
    temp: tempfile::TempDir,
    name: String,
    /// Where the temporaries live (the replaced export goes there too before it is removed).
    root: PathBuf,
}

impl Staging {
    /// Starts a folder that will become `out`, assembled under `temp_root` (which must be on
    /// the same filesystem as `out`) or, without one, beside `out`.
    pub fn new(out: &Path, temp_root: Option<&Path>) -> Result<Self, Error> {
        let name =
            out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "export".into());
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::write(parent, e))?;
        let root = temp_root.unwrap_or(parent).to_path_buf();
        std::fs::create_dir_all(&root).map_err(|e| Error::write(&root, e))?;
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}.partial-"))
            .tempdir_in(&root)
            .map_err(|e| Error::write(&root, e))?;
        Ok(Self { temp, name, root })
    }

    pub fn dir(&self) -> &Path {
        self.temp.path()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// config.json (when given), generation_config.json and the tokenizer files; returns where
    /// the tokenizer came from. A checkpoint's tokenizer (which may carry the chat template training used)
    /// wins; a checkpoint without one takes the base's.
    pub fn write_companions(
        &self,
        base: &ModelFolder,
        detection: Option<&Detection>,
        config: Option<&Value>,
    ) -> Result<PathBuf, Error> {
        let dir = self.dir();
        if let Some(config) = config {
            write_json(&dir.join("config.json"), config)?;
        }
        let generation = base.dir.join("generation_config.json");
        if generation.is_file() {
            let bytes = crate::retry::read(&generation).map_err(|e| Error::write(&generation, e))?;
            atomic_write(&dir.join("generation_config.json"), &bytes)?;
        }
        let tokenizer_from = detection
            .map(|d| d.chosen.clone())
            .filter(|d| d.join("tokenizer.json").is_file() || d.join("tokenizer_config.json").is_file())
            .unwrap_or_else(|| base.dir.clone());
        for file in TOKENIZER_FILES {
            let src = tokenizer_from.join(file);
            if src.is_file() {
                let bytes = crate::retry::read(&src).map_err(|e| Error::write(&src, e))?;
                atomic_write(&dir.join(file), &bytes)?;
            }
        }
        Ok(tokenizer_from)
    }

    /// Writes manifest.json over every file (`known`: hashed while written), checks it, and
    /// renames the folder into place, replacing an older export of the same name.
    pub fn finish(
        self,
        format: &str,
        provenance: Provenance,
        known: &[FileEntry],
        out: &Path,
    ) -> Result<Manifest, Error> {
        let dir = self.dir().to_path_buf();
        let manifest = Manifest {
            tool: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            format: format.into(),
            provenance,
            files: hash_folder(&dir, known)?,
        };
        write_json(&dir.join(MANIFEST), &manifest)?;
        verify(&dir, Check::Sizes)?;
        crate::fsutil::make_folder_shareable(&dir).map_err(|e| Error::write(&dir, e))?;
        let temp = self.temp.keep();
        if out.exists() {
            let old = tempfile::Builder::new()
                .prefix(".old-")
                .tempdir_in(&self.root)
                .map_err(|e| Error::write(&self.root, e))?;
            std::fs::rename(out, old.path().join("previous")).map_err(|e| Error::write(out, e))?;
            std::fs::rename(&temp, out).map_err(|e| Error::write(out, e))?;
        } else {
            std::fs::rename(&temp, out).map_err(|e| Error::write(out, e))?;
        }
        Ok(manifest)
    }
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

/// Where an export came from: base and adapter file identities, checkpoint, and `options`.
pub fn provenance(base: &ModelFolder, detection: Option<&Detection>, options: Value) -> Provenance {
    Provenance {
        base: base.dir.clone(),
        base_files: input_files(base.shard_files()),
        adapter: detection.map(|d| d.chosen.clone()),
        adapter_files: detection.map(|d| input_files(std::iter::once(&d.adapter.file))).unwrap_or_default(),
        checkpoint: detection.and_then(|d| d.chosen.file_name()).map(|n| n.to_string_lossy().into_owned()),
        global_step: detection.and_then(|d| d.trainer_state.as_ref()).map(|s| s.global_step),
        options,
    }
}

/// config.json of the exported model: the base's, with the dtype (and tying) it now has.
pub fn exported_config(base: &ModelFolder, dtype: TensorDtype, untied: bool) -> Value {
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

/// A written file as the manifest lists it.
pub fn file_entry(written: &crate::export::stream_file::WrittenFile) -> FileEntry {
    FileEntry {
        path: written.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        size: written.size,
        sha256: written.sha256.clone(),
    }
}
