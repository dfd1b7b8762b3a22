//! Command-line definitions (clap). `main.rs` parses them and hands them to `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Overrides;

#[derive(Debug, Parser)]
#[command(
    name = "cargo-model-export",
    bin_name = "cargo model-export",
    version,
    about = "Merge LoRA fine-tunes of Qwen models and export proven artifacts",
    long_about = "Merge LoRA fine-tunes of Qwen models (Qwen3, Qwen2/2.5) and export proven artifacts.\n\n\
        Exports are declared in the [package.metadata.model-export] table of Cargo.toml; \
        flags and MODEL_EXPORT_* environment variables override it.",
    after_help = "Examples:\n  \
        cargo model-export                      run every export declared in Cargo.toml and validate it\n  \
        cargo model-export demo                 build a tiny model and run, and run the pipeline on them\n  \
        cargo model-export config               the effective configuration and where each value came from\n  \
        cargo model-export detect               the checkpoint that will be merged, and the skipped ones\n  \
        cargo model-export inspect models/base  summarise a model, adapter, checkpoint or training run"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    /// Without a subcommand, `run`: every declared export, validated.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Path to Cargo.toml (default: the nearest one from the current folder)
    #[arg(long, global = true, value_name = "PATH")]
    pub manifest_path: Option<PathBuf>,
    /// Package whose [package.metadata.model-export] table to use
    #[arg(short = 'p', long, global = true, value_name = "SPEC")]
    pub package: Option<String>,
    /// Output format of results and messages
    #[arg(long, global = true, value_enum, default_value_t = MessageFormat::Human)]
    pub message_format: MessageFormat,
    /// More log output (-vv for debug)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less output (-q hides warnings and progress)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    /// Colouring of output
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MessageFormat {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// Flags that override the table's top-level keys.
#[derive(Debug, Clone, Default, Args)]
pub struct OverrideArgs {
    /// Base model folder (overrides `base`)
    #[arg(long, value_name = "DIR")]
    pub base: Option<PathBuf>,
    /// Adapter folder or training run (overrides `adapter`)
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Output folder (overrides `out-dir`)
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Architecture profile: auto or a name from `profiles` (overrides `profile`)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
}

impl From<&OverrideArgs> for Overrides {
    fn from(args: &OverrideArgs) -> Self {
        Overrides {
            base: args.base.clone(),
            adapter: args.adapter.clone(),
            out_dir: args.out_dir.clone(),
            profile: args.profile.clone(),
            max_memory: None,
            jobs: None,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the effective configuration and where each value came from
    #[command(
        long_about = "Show the effective configuration: every key of [package.metadata.model-export] after \
            flags, MODEL_EXPORT_* variables, the package table, the workspace table and the built-in \
            defaults are merged (in that order of precedence), each with its source.",
        after_help = "Examples:\n  cargo model-export config\n  MODEL_EXPORT_OUT_DIR=/tmp/out cargo model-export config --message-format json"
    )]
    Config(OverrideArgs),
    /// Find the adapter to merge: the newest valid checkpoint of a training run
    #[command(
        long_about = "Find the adapter that will be merged. A training output folder's checkpoint-N folders \
            are checked newest first: adapter_config.json must parse, adapter_model.safetensors must be \
            complete, and every LoRA pair must fit the base model's shapes. Broken ones are listed with \
            the reason and skipped. Optimizer, scheduler and RNG files are never read.",
        after_help = "Examples:\n  cargo model-export detect\n  cargo model-export detect --adapter runs/sft --message-format json"
    )]
    Detect(OverrideArgs),
    /// Summarise a model folder, adapter, checkpoint or training run
    #[command(
        long_about = "Summarise a folder: for a model, its architecture, parameter count, dtypes, bytes and \
            tensor count (and any tensor that does not fit its profile); for an adapter or checkpoint, \
            the LoRA rank, alpha and targets; for a training run, every checkpoint and which one is used.",
        after_help = "Examples:\n  cargo model-export inspect models/Qwen3-0.6B\n  cargo model-export inspect runs/sft/checkpoint-400 --message-format json"
    )]
    Inspect(InspectArgs),
    /// Merge the adapter into the base model and write a Hugging Face folder
    #[command(
        long_about = "Merge the newest valid checkpoint (or the adapter folder) into the base model with PEFT's \
            semantics (LoRA, rsLoRA, DoRA, rank/alpha patterns, modules_to_save, embedding LoRA), computing \
            in f32 and streaming tensor by tensor, and write a folder that transformers' \
            AutoModelForCausalLM.from_pretrained loads unchanged: weights (sharded on request), config.json, \
            generation_config.json, tokenizer files and manifest.json (SHA-256 of every file). The folder \
            appears only when complete and verified.",
        after_help = "Examples:\n  cargo model-export merge\n  cargo model-export merge --dtype bf16 --max-shard-size 5GB --out merged/\n  cargo model-export merge --base models/Qwen3-0.6B --adapter runs/sft --out /tmp/merged"
    )]
    Merge(MergeArgs),
    /// Run every export declared in [package.metadata.model-export]
    #[command(
        long_about = "Run every [[package.metadata.model-export.export]] entry as a pipeline of stages: merge the \
            newest valid checkpoint once (f32, <out-dir>/.state/merged), write each export to <out-dir>/<name>/ \
            (safetensors f32/f16/bf16; ONNX f32/f16/int8/int4 with KV cache, portable or ort target, loaded back \
            in tract and ONNX Runtime before it is installed), validate each against the candle reference, and \
            write report.md. Disk space and memory are checked before anything is written. Finished stages are \
            recorded under <out-dir>/.state: a re-run skips what is unchanged and redoes what changed, also \
            after a kill; Ctrl-C stops at a safe point. One run per out-dir at a time.",
        after_help = "Examples:\n  cargo model-export run\n  cargo model-export run --dry-run\n  cargo model-export run --force --max-memory 8GiB\n  cargo model-export run --out-dir /tmp/exports --message-format json"
    )]
    Run(RunArgs),
    /// Check every written export against the candle reference in each engine that runs it
    #[command(
        long_about = "Validate the exports in <out-dir>: the reference is candle running the merged weights in f32; \
            each export runs in every engine that supports it (safetensors: candle; ONNX: ONNX Runtime and \
            tract) on the configured prompts as one padded batch, and is compared on logits (max and mean \
            absolute error, cosine, top-1 agreement) and on greedy tokens with the KV cache. Tolerances \
            depend on the dtype and can be set per export. Writes validation.json/.md into each export \
            and report.json/.md into out-dir; exits 1 if any export misses its tolerance.",
        after_help = "Examples:\n  cargo model-export validate\n  MODEL_EXPORT_VALIDATE_ENGINES=tract cargo model-export validate --message-format json"
    )]
    Validate(OverrideArgs),
    /// Measure load time, prefill and decode speed and peak memory of each export in each engine
    #[command(
        long_about = "Benchmark the exports in <out-dir> in every engine that runs them (safetensors: candle; \
            ONNX: ONNX Runtime and tract): load time, prefill latency for --prompt-tokens tokens, decode \
            milliseconds per token with the KV cache over --decode-tokens steps, tokens per second, peak RSS \
            and file size, after warm-up runs, as the median (and min-max) of the repetitions. Prints a \
            Markdown table, or JSON with --message-format json. Measure release builds.",
        after_help = "Examples:\n  cargo model-export bench\n  cargo model-export bench --export onnx-f32 --prompt-tokens 128 --decode-tokens 32 --threads 2"
    )]
    Bench(BenchArgs),
    /// List the architecture profiles compiled into this binary
    #[command(
        after_help = "Examples:\n  cargo model-export profiles\n  cargo model-export profiles --message-format json"
    )]
    Profiles,
    /// Build a tiny Qwen3 model, a LoRA training run and a project, and run the exports on them
    #[command(
        long_about = "The zero-setup tour: writes a tiny random Qwen3 model, a Trainer-style LoRA run \
            (whose newest checkpoint is deliberately truncated) and a Cargo project whose \
            [package.metadata.model-export] table points at them, then runs the pipeline on it: the \
            configuration, the detected checkpoint, and a safetensors and an ONNX export, each verified \
            (the ONNX one run in tract and ONNX Runtime) before it is installed.",
        after_help = "Examples:\n  cargo model-export demo\n  cargo model-export demo --dir /tmp/me-demo"
    )]
    Demo(DemoArgs),
    /// Remove the run state and partial outputs of out-dir (finished exports only with --exports)
    #[command(
        long_about = "Remove what `run` keeps between runs in <out-dir>: .state/ (the f32 merge, stage records, \
            the lock of a dead run), temporaries left by a killed run, and run.json. Finished exports stay \
            unless --exports is given, which also removes every declared export folder and report.json/.md. \
            Refused while a run holds the out-dir. The next `run` redoes every stage.",
        after_help = "Examples:\n  cargo model-export clean\n  cargo model-export clean --exports --out-dir /tmp/exports"
    )]
    Clean(CleanArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Only these exports (default: every declared one)
    #[arg(long, value_name = "NAME")]
    pub export: Vec<String>,
    /// Tokens in the prefill prompt
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Decode steps measured after the prefill
    #[arg(long, default_value_t = 32)]
    pub decode_tokens: usize,
    /// Unmeasured runs first
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Measured runs
    #[arg(long, default_value_t = 3)]
    pub repetitions: usize,
    /// Threads for ONNX Runtime (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Do not load ONNX exports back into tract and ONNX Runtime before installing them
    /// (faster for very large models; `validate` checks them anyway)
    #[arg(long)]
    pub skip_check: bool,
    /// Write the exports without validating them against the reference (for timing the
    /// export alone; `validate` runs it later)
    #[arg(long)]
    pub no_validate: bool,
    /// Print the plan (stages, what each reads and writes, estimated bytes and memory, and
    /// whether it runs or is skipped) and write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Redo every stage, even those whose inputs are unchanged
    #[arg(long)]
    pub force: bool,
    /// Peak memory the plan may need (overrides `max-memory`; default: the available RAM)
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
    /// Exports written at once (overrides `jobs`; default 1). All read the one merge; the
    /// bytes are the same as a sequential run's
    #[arg(short = 'j', long, value_name = "N")]
    pub jobs: Option<u32>,
    /// Fail instead of taking a documented fallback (external data for a protobuf past 2 GiB,
    /// opset 17 when an engine cannot load the chosen opset, the `portable` target when ONNX
    /// Runtime rejects an `ort`-target graph)
    #[arg(long)]
    pub no_fallback: bool,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Folder to write (default: <out-dir>/merged)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Weight dtype of the merged folder (default: the base's storage dtype)
    #[arg(long, value_enum)]
    pub dtype: Option<FloatDtype>,
    /// Split the weights into shards no larger than this, e.g. 5GB or 512MiB
    #[arg(long, value_name = "SIZE")]
    pub max_shard_size: Option<crate::config::ByteSize>,
}

/// Dtypes a safetensors folder can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FloatDtype {
    F32,
    F16,
    Bf16,
}

impl From<FloatDtype> for crate::model::TensorDtype {
    fn from(d: FloatDtype) -> Self {
        match d {
            FloatDtype::F32 => crate::model::TensorDtype::F32,
            FloatDtype::F16 => crate::model::TensorDtype::F16,
            FloatDtype::Bf16 => crate::model::TensorDtype::BF16,
        }
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A model folder, adapter folder, checkpoint-N folder or training output folder
    pub path: PathBuf,
    /// Profile to read a model folder with (default: by config.json model_type)
    #[arg(long, value_name = "NAME")]
    pub profile: Option<String>,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// Also remove the finished exports declared in the configuration, and report.json/.md
    #[arg(long)]
    pub exports: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write the demo project (default: a new folder under the system's temp dir)
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Drops the extra `model-export` argument cargo passes when run as `cargo model-export`.
pub fn normalize_args(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if args.get(1).is_some_and(|a| a == "model-export") {
        args.remove(1);
    }
    args
}
