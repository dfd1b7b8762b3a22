//! The zero-setup tour: synthesise a model, a training run and a project, then run the tool.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Context;
use super::output::print_json;
use crate::checkpoint::Detection;
use crate::cli::DemoArgs;
use crate::config::{Config, LoadRequest, Overrides};
use crate::error::{ConfigError, Error};
use crate::fsutil::atomic_write;
use crate::inspect::{ModelSummary, summarize_model};
use crate::synth::{AdapterSpec, ModelShape, write_model, write_training_run};

const SEED: u64 = 42;

const MANIFEST: &str = r#"[package]
name = "model-export-demo"
version = "0.1.0"
edition = "2021"
publish = false

# A workspace of its own, so the demo never joins an enclosing one.
[workspace]

[package.metadata.model-export]
base = "models/qwen3-tiny"
adapter = "runs/sft"

[package.metadata.model-export.validate]
prompts = ["Hello, how are you today?", "用一句话解释LoRA"]
max-new-tokens = 12

[[package.metadata.model-export.export]]
name = "hf-f32"
format = "safetensors"
dtype = "f32"

[[package.metadata.model-export.export]]
name = "onnx-f32"
format = "onnx"
dtype = "f32"
target = "portable"
"#;

#[derive(Serialize)]
struct DemoReport<'a> {
    dir: &'a Path,
    config: &'a Config,
    base: &'a ModelSummary,
    detection: &'a Detection,
    exports: &'a [super::run::ExportResult],
    validation: &'a crate::validate::report::ValidationReport,
}

fn demo_dir(args: &DemoArgs, ctx: &Context) -> Result<PathBuf, Error> {
    match &args.dir {
        Some(dir) => {
            let dir = if dir.is_absolute() { dir.clone() } else { ctx.cwd.join(dir) };
            let non_empty = std::fs::read_dir(&dir).map(|mut d| d.next().is_some()).unwrap_or(false);
            if non_empty {
                return Err(ConfigError::Invalid {
                    origin: "the command line".into(),
                    key: "--dir".into(),
                    message: format!("{} exists and is not empty", dir.display()),
                    help: "give a new or empty folder, or leave --dir out to use a fresh temporary one"
                        .into(),
                }
                .into());
            }
            std::fs::create_dir_all(&dir).map_err(|e| Error::write(&dir, e))?;
            Ok(dir)
        }
        None => tempfile::Builder::new()
            .prefix("model-export-demo-")
            .tempdir()
            .map(|d| d.keep())
            .map_err(|e| Error::write(&std::env::temp_dir(), e)),
    }
}

pub fn run(ctx: &Context, args: &DemoArgs) -> Result<(), Error> {
    let dir = demo_dir(args, ctx)?;
    tracing::info!("writing the demo project to {}", dir.display());
    let shape = ModelShape::by_name("qwen3-tiny")
        .ok_or_else(|| Error::write(&dir, std::io::Error::other("qwen3-tiny shape missing")))?;
    let base_config = write_model(shape, &dir.join("models/qwen3-tiny"), SEED, None)?;
    write_training_run(&base_config, &AdapterSpec::default(), &dir.join("runs/sft"), &[2, 4, 6], true, SEED)?;
    std::fs::create_dir_all(dir.join("src")).map_err(|e| Error::write(&dir, e))?;
    atomic_write(&dir.join("src/lib.rs"), b"//! A project that ships a fine-tuned model.\n")?;
    atomic_write(&dir.join("Cargo.toml"), MANIFEST.as_bytes())?;

    let manifest = dir.join("Cargo.toml");
    let config = crate::config::load(&LoadRequest {
        manifest_path: Some(&manifest),
        package: None,
        overrides: &Overrides::default(),
        env: &Default::default(),
        cwd: &dir,
    })?;
    let (base, detection) = super::detect::detect_configured(&config)?;
    let summary = summarize_model(&base);
    let inputs = crate::export::ExportInputs::from_base(&base, Some(&detection));
    let exports = super::run::run_exports(&config, &inputs, false)?;
    let report = super::validate::validate_exports(&config, &inputs)?;
    if ctx.json {
        return print_json(&DemoReport {
            dir: &dir,
            config: &config,
            base: &summary,
            detection: &detection,
            exports: &exports,
            validation: &report,
        });
    }
    println!("demo project written to {}\n", dir.display());
    println!("== cargo model-export config ==\n");
    super::config::print_human(&config);
    println!("\n== cargo model-export detect ==\n");
    super::detect::print_human(&base, &detection);
    println!(
        "\nThe newest checkpoint was truncated on purpose: it is reported and skipped, and the newest valid one is used."
    );
    println!("\n== cargo model-export run ==\n");
    super::run::print_summary(&exports, Some(&report));
    println!(
        "\nEach export was merged with PEFT's semantics, written under a temporary name, verified (for ONNX:\nrun in tract and ONNX Runtime) before it was installed, then compared with the candle reference\n(the base in f32 with the adapter unmerged, as peft runs it) on logits and greedy tokens. Report: {}",
        config.out_dir.value.join("report.md").display()
    );
    println!(
        "\nArtifacts: {}\nTry it yourself:\n  cd {}\n  cargo model-export run\n  cargo model-export inspect target/model-export/hf-f32\n  cargo model-export inspect runs/sft",
        config.out_dir.value.display(),
        dir.display()
    );
    super::validate::verdict(&config, &report, false)
}
