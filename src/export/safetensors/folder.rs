//! A merged Hugging Face folder that `AutoModelForCausalLM.from_pretrained` loads unchanged:
//! weights (sharded like transformers when asked), config.json with `torch_dtype` updated,
//! generation_config.json and the tokenizer files, then `manifest.json` last. The folder is
//! built under a temporary name beside its destination and renamed into place only after a
//! verification pass, so a failed or killed run leaves nothing that looks finished.

use std::path::{Path, PathBuf};

use super::sharded::ShardedWriter;
use crate::checkpoint::Detection;
use crate::error::Error;
use crate::export::ExportInputs;
use crate::export::manifest::{FileEntry, Manifest};
use crate::export::staging::{Staging, exported_config, file_entry, provenance};
use crate::merge::{MergeInputs, execute, output_entries, plan_merge};
use crate::model::layout::check_layout;
use crate::model::{ModelFolder, TensorDtype};
use crate::monitor;

#[derive(Debug, Clone, Default)]
pub struct MergeOptions {
    /// Output dtype; default: the base's storage dtype.
    pub dtype: Option<TensorDtype>,
    pub max_shard_size: Option<u64>,
    /// Let NaN and Inf weights through (`allow-non-finite`).
    pub allow_non_finite: bool,
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

/// Merges the detected adapter (or none) into `base` and writes the folder `out`.
pub fn write_merged_folder(
    base: &ModelFolder,
    detection: Option<&Detection>,
    options: &MergeOptions,
    out: &Path,
) -> Result<MergeReport, Error> {
    write_safetensors_folder(&ExportInputs::from_base(base, detection), options, out)
}

/// Writes a Hugging Face folder at `out` from `inputs` (merging on the fly if they say so).
pub fn write_safetensors_folder(
    inputs: &ExportInputs<'_>,
    options: &MergeOptions,
    out: &Path,
) -> Result<MergeReport, Error> {
    let (base, detection, weights, adapter) = (inputs.base, inputs.detection, inputs.weights, inputs.adapter);
    let plan = plan_merge(weights, adapter)?;
    // Default: the storage dtype of the model the user gave, not of an intermediate merge.
    let dtype = options.dtype.unwrap_or_else(|| base.storage_dtype());
    let staging = Staging::new(out, inputs.temp_root)?;
    let dir = staging.dir().to_path_buf();

    let entries = output_entries(&plan, &|_| dtype);
    let total: u64 = entries.iter().map(|e| e.byte_len()).sum();
    let mut writer =
        ShardedWriter::create(&dir, &entries, options.max_shard_size, &[("format".into(), "pt".into())])
            .map_err(|e| Error::write(&dir, e))?;
    let progress = monitor::bytes_bar(total, format!("merging into {}", staging.name()));
    let merge_inputs = MergeInputs { base: weights, adapter, allow_non_finite: options.allow_non_finite };
    let started = std::time::Instant::now();
    execute(
        &plan,
        &merge_inputs,
        &|_| dtype,
        &mut |bytes| writer.write(bytes).map_err(|e| Error::write(&dir, e)),
        &progress,
    )?;
    let weight_files: Vec<FileEntry> =
        writer.finish().map_err(|e| Error::write(&dir, e))?.iter().map(file_entry).collect();
    progress.finish_and_clear();
    tracing::info!("merged and wrote {total} bytes in {:.2} s", started.elapsed().as_secs_f64());

    let tokenizer_from =
        staging.write_companions(base, detection, Some(&exported_config(base, dtype, plan.untied)))?;
    // Verification: every header re-read and the layout checked, before the manifest.
    let written = ModelFolder::open(&dir, Some(weights.profile))?;
    check_layout(&written)?;
    drop(written);
    let options_json = serde_json::json!({
        "dtype": dtype.to_string(),
        "max_shard_size": options.max_shard_size,
        "untied_embeddings": plan.untied,
    });
    let manifest =
        staging.finish("safetensors", provenance(base, detection, options_json), &weight_files, out)?;
    tracing::info!("verified and installed at {:.2} s", started.elapsed().as_secs_f64());
    Ok(MergeReport {
        dir: out.to_path_buf(),
        dtype,
        manifest,
        parameters: plan.parameter_count(),
        untied: plan.untied,
        tokenizer_from,
    })
}
