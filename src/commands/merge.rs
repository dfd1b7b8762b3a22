use serde::Serialize;

use super::Context;
use super::output::{facts, print_json, thousands};
use crate::cli::MergeArgs;
use crate::error::Error;
use crate::export::safetensors::{MergeOptions, MergeReport, write_merged_folder};
use crate::size::human_bytes;

#[derive(Serialize)]
pub struct MergeSummary<'a> {
    pub dir: &'a std::path::Path,
    pub dtype: String,
    pub parameters: u64,
    pub bytes: u64,
    pub untied_embeddings: bool,
    pub tokenizer_from: &'a std::path::Path,
    pub checkpoint: Option<&'a str>,
    pub files: &'a [crate::export::manifest::FileEntry],
}

pub fn summary(report: &MergeReport) -> MergeSummary<'_> {
    MergeSummary {
        dir: &report.dir,
        dtype: report.dtype.to_string(),
        parameters: report.parameters,
        bytes: report.manifest.files.iter().map(|f| f.size).sum(),
        untied_embeddings: report.untied,
        tokenizer_from: &report.tokenizer_from,
        checkpoint: report.manifest.provenance.checkpoint.as_deref(),
        files: &report.manifest.files,
    }
}

pub fn run(ctx: &Context, args: &MergeArgs) -> Result<(), Error> {
    let config = ctx.load_config(&(&args.overrides).into())?;
    let (base, detection) = super::detect::open_inputs(&config)?;
    let out = match &args.out {
        Some(out) if out.is_absolute() => out.clone(),
        Some(out) => ctx.cwd.join(out),
        None => config.out_dir.value.join("merged"),
    };
    let options = MergeOptions {
        dtype: args.dtype.map(Into::into),
        max_shard_size: args.max_shard_size.map(|s| s.0),
        allow_non_finite: config.allow_non_finite.value,
    };
    let protected = crate::export::destination::protected_inputs(&base.dir, detection.as_ref());
    crate::export::destination::check_destination(&out, &protected, args.force)?;
    let report = write_merged_folder(&base, detection.as_ref(), &options, &out)?;
    let summary = summary(&report);
    if ctx.json {
        return print_json(&summary);
    }
    let mut t = facts();
    t.add_row(["merged".to_string(), summary.dir.display().to_string()]);
    t.add_row(["checkpoint".to_string(), summary.checkpoint.unwrap_or("(no adapter)").to_string()]);
    t.add_row(["dtype".to_string(), summary.dtype.clone()]);
    t.add_row(["parameters".to_string(), thousands(summary.parameters)]);
    t.add_row(["size".to_string(), human_bytes(summary.bytes)]);
    t.add_row([
        "files".to_string(),
        summary.files.iter().map(|f| f.path.as_str()).collect::<Vec<_>>().join(", "),
    ]);
    if summary.untied_embeddings {
        t.add_row([
            "note".to_string(),
            "training changed the tied embedding/head: both are saved, tie_word_embeddings = false".into(),
        ]);
    }
    println!("{t}");
    Ok(())
}
