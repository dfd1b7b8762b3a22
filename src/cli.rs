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
            text: None,
            text_context: None,
            text_chunks: None,
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
        long_about = "Run every [[package.metadata.model-export.export]] entry as a pipeline of stages: write each \
            export to <out-dir>/<name>/ straight from the base with the newest valid checkpoint merged block by \
            block (no merged copy on disk; safetensors f32/f16/bf16; ONNX f32/f16/int8/int4 with KV cache, \
            portable or ort target, loaded back in tract and ONNX Runtime (the ort target: ONNX Runtime) before it is \
            installed; GGUF), \
            validate each against the candle reference (streamed layer by layer, computed once and cached in \
            <out-dir>/.state), one engine at a time, and write report.md. Disk space and memory are checked before anything is written. Finished stages are \
            recorded under <out-dir>/.state: a re-run skips what is unchanged and redoes what changed, also \
            after a kill; Ctrl-C stops at a safe point. One run per out-dir at a time.",
        after_help = "Examples:\n  cargo model-export run\n  cargo model-export run --dry-run\n  cargo model-export run --force --max-memory 8GiB\n  cargo model-export run --out-dir /tmp/exports --message-format json"
    )]
    Run(RunArgs),
    /// Check every written export against the candle reference in each engine that runs it
    #[command(
        long_about = "Validate the exports in <out-dir>: the reference is candle running the base weights in f32 with \
            the adapter applied unmerged, as peft's forward does (it shares no code with the merge); the merged \
            model is measured against it too (merged vs unmerged); each export runs in every engine that supports it (safetensors: candle; ONNX: ONNX Runtime and \
            tract) on the configured prompts as one padded batch, and is compared on logits (max and mean \
            absolute error, cosine, top-1 agreement, KL divergence) and on greedy tokens with the KV cache. \
            With --text (or validate.text), a held-out text is scored too, in chunks of --text-context \
            tokens: perplexity and its change, mean and 99th-percentile KL divergence and top-1 agreement \
            against the reference, as llama-perplexity --kl-divergence reports them. Tolerances \
            depend on the dtype and can be set per export. Writes validation.json/.md into each export \
            and report.json/.md into out-dir; exits 1 if any export misses its tolerance, or if no engine \
            measured an export (verdict `unverified`) unless --allow-unverified.",
        after_help = "Examples:\n  cargo model-export validate\n  cargo model-export validate --text eval/held-out.txt --text-context 128\n  MODEL_EXPORT_VALIDATE_ENGINES=tract cargo model-export validate --message-format json"
    )]
    Validate(ValidateArgs),
    /// Load a model (quantized on request) and generate text from prompts
    #[command(
        long_about = "Load a model and generate: a Hugging Face folder (a base or a merged export), a base with \
            --adapter (a PEFT adapter folder or a training run, merged in memory: nothing is written), an \
            ONNX export (run through ONNX Runtime), or a GGUF export or .gguf file (its blocks run in candle). Without MODEL, the project's configured base and adapter \
            are used; --export NAME loads <out-dir>/NAME. --quantization q8_0|q4_0|q4_k quantizes the linear \
            layers while loading, tensor by tensor, so memory stays near the quantized size; the estimate is \
            checked against --max-memory (default: available RAM) before anything is allocated. Prompts run \
            as one left-padded batch with the KV cache; the defaults (sampling, eos ids) come from \
            generation_config.json. With one prompt, text streams as it is generated.",
        after_help = "Examples:\n  cargo model-export generate --prompt \"Hello\" --greedy\n  cargo model-export generate exports/merged --chat --prompt \"What is LoRA?\" --quantization q4_k\n  cargo model-export generate --base models/Qwen3-0.6B --adapter runs/sft --prompt \"Hi\" --seed 7 --stop \"\\n\\n\"\n  cargo model-export generate --export onnx-int4 --prompt \"Hi\" --max-new-tokens 32 --message-format json\n  cargo model-export generate exports/gguf-q4_k --chat --prompt \"Hi\""
    )]
    Generate(GenerateArgs),
    /// Measure load time, prefill and decode speed and peak memory of each export in each engine
    #[command(
        long_about = "Benchmark the exports in <out-dir> in every engine that runs them (safetensors and GGUF: \
            candle with our block kernels; ONNX: ONNX Runtime and tract): load time, prefill latency for \
            --prompt-tokens tokens (the prompt run as generation runs it: the cache filled, the last \
            position's logits computed), decode milliseconds per token with the KV cache over \
            --decode-tokens steps, tokens per second, peak RSS and file size, after warm-up runs, as the \
            median (and min-max) of the repetitions, every engine on --threads threads. Beside each GGUF \
            row it measures llama.cpp on the same file with the same tokens and threads, and prints our \
            time over its time: LLAMA_BENCH=path/to/llama-bench runs llama.cpp's benchmark; otherwise a \
            Python with llama-cpp-python (LLAMA_CPP_PYTHON, else target/compat-venv, else python3). Prints a \
            Markdown table, or JSON with --message-format json. Measure release builds.",
        after_help = "Examples:\n  cargo model-export bench\n  cargo model-export bench --export onnx-f32 --prompt-tokens 128 --decode-tokens 32 --threads 2\n  LLAMA_CPP_PYTHON=venv/bin/python cargo model-export bench --export gguf-q4k"
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
    /// Write a [package.metadata.model-export] table: a wizard, or flags for scripts
    #[command(
        long_about = "Write the [package.metadata.model-export] table of this package. In a terminal, a wizard \
            looks for model folders and training runs under the project (and the folders given), shows what \
            each is, and asks for the base, the adapter or run, a preset or exports one by one, and the \
            validation prompts, checking each answer (the folder exists, its architecture has a profile, \
            the adapter fits the base, the exports fit on disk). It shows the change as a diff and writes \
            only after confirmation, with toml_edit, keeping every comment and other table. For scripts and \
            CI: --preset NAME --base PATH [--adapter PATH] --yes. An existing table is replaced only with --force.",
        after_help = "Examples:\n  cargo model-export init\n  cargo model-export init ~/models ~/runs\n  cargo model-export init --preset onnx-cpu --base models/Qwen3-0.6B --adapter runs/sft --yes"
    )]
    Init(InitArgs),
    /// Print the documentation of a [package.metadata.model-export] key
    #[command(
        long_about = "Print what a key of [package.metadata.model-export] means: its type, default, accepted \
            values and an example, from the same key list the configuration parser is checked against. \
            Give the key's path (export.options.opset) or a name that is unique (opset); without a key, \
            every key is listed.",
        after_help = "Examples:\n  cargo model-export explain\n  cargo model-export explain dtype\n  cargo model-export explain export.options.block-size"
    )]
    Explain(ExplainArgs),
    /// List the built-in presets and the exports each adds
    #[command(
        long_about = "List the presets a table can name with `preset = \"NAME\"` (or `init --preset NAME`): \
            each one's purpose and exports. An [[export]] entry with the same name as a preset's replaces it; \
            `config` shows which values came from the preset.",
        after_help = "Examples:\n  cargo model-export presets\n  cargo model-export presets --message-format json"
    )]
    Presets,
    /// Print a shell completion script
    #[command(
        long_about = "Print the completion script of a shell to stdout, generated from this binary's own \
            command-line definition.",
        after_help = "Examples:\n  cargo model-export completions bash > ~/.local/share/bash-completion/completions/cargo-model-export\n  cargo model-export completions zsh > ~/.zfunc/_cargo-model-export"
    )]
    Completions(CompletionsArgs),
    /// Print the man page (roff)
    #[command(
        long_about = "Print the man page of cargo-model-export in roff to stdout, generated from the \
            command-line definition (every subcommand and flag).",
        after_help = "Examples:\n  cargo model-export man > cargo-model-export.1 && man ./cargo-model-export.1"
    )]
    Man,
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
pub struct InitArgs {
    /// More folders to look for models and training runs in
    #[arg(value_name = "DIR")]
    pub paths: Vec<PathBuf>,
    /// A preset (`cargo model-export presets`)
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// The base model folder
    #[arg(long, value_name = "DIR")]
    pub base: Option<PathBuf>,
    /// The adapter folder or training run
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// A validation prompt (repeatable; default: the built-in two)
    #[arg(long = "prompt", value_name = "TEXT")]
    pub prompts: Vec<String>,
    /// Do not ask: take the flags' answers and write
    #[arg(short, long)]
    pub yes: bool,
    /// Replace an existing [package.metadata.model-export] table
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A key's path (export.options.opset) or unique name (opset); none: list every key
    #[arg(value_name = "KEY")]
    pub key: Option<String>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, elvish, fish, powershell or zsh
    #[arg(value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The model to load: a model folder, merged export, ONNX or GGUF export, or .gguf file
    /// (default: the project's base + adapter). The same as the positional MODEL
    #[arg(long, value_name = "DIR", conflicts_with = "model")]
    pub base: Option<PathBuf>,
    /// The same as --base (kept as a positional argument)
    #[arg(value_name = "MODEL")]
    pub model: Option<PathBuf>,
    /// Merge this adapter folder or training run into --base (or the configured base) in memory
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Load <out-dir>/NAME, an export declared in the project
    #[arg(long, value_name = "NAME", conflicts_with_all = ["base", "model", "adapter"])]
    pub export: Option<String>,
    /// A prompt (repeat for a batch)
    #[arg(long = "prompt", value_name = "TEXT", required = true)]
    pub prompts: Vec<String>,
    /// Wrap each prompt as a user message in the model's chat template
    #[arg(long)]
    pub chat: bool,
    /// A system message before the user's (with --chat)
    #[arg(long, value_name = "TEXT", requires = "chat")]
    pub system: Option<String>,
    /// New tokens at most (default: generation_config.json's max_new_tokens, else 128)
    #[arg(long, value_name = "N")]
    pub max_new_tokens: Option<usize>,
    /// Argmax decoding (do_sample = false)
    #[arg(long, conflicts_with = "sample")]
    pub greedy: bool,
    /// Sample even if generation_config.json says do_sample = false
    #[arg(long)]
    pub sample: bool,
    #[arg(long, value_name = "T")]
    pub temperature: Option<f32>,
    #[arg(long, value_name = "K")]
    pub top_k: Option<usize>,
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    #[arg(long, value_name = "P")]
    pub min_p: Option<f32>,
    #[arg(long, value_name = "R")]
    pub repetition_penalty: Option<f32>,
    /// Random seed of sampling: the same seed gives the same text
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Stop a prompt's generation at this text (repeatable; the text is cut before it)
    #[arg(long = "stop", value_name = "TEXT")]
    pub stop: Vec<String>,
    /// Quantize the linear layers while loading: none, q8_0, q4_0 or q4_k
    #[arg(long, value_name = "MODE", default_value = "none")]
    pub quantization: crate::loader::Quantization,
    /// Dense weights' dtype: f32, f16 or bf16
    #[arg(long, value_name = "DTYPE", default_value = "f32")]
    pub dtype: String,
    /// auto, cpu, cuda, cuda:N or metal
    #[arg(long, value_name = "DEVICE", default_value = "auto")]
    pub device: crate::loader::DeviceChoice,
    /// Refuse to load beyond this (e.g. 8GB, 512MiB; default: available RAM)
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<crate::config::ByteSize>,
    /// CPU threads (default: all cores)
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Further load attempts after a transient failure
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    /// Print what was loaded (tensor groups, formats, bytes, device) before generating
    #[arg(long)]
    pub info: bool,
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
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    #[command(flatten)]
    pub text: TextArgs,
    /// Do not load ONNX exports back into tract and ONNX Runtime before installing them
    /// (faster for very large models; `validate` checks them anyway)
    #[arg(long)]
    pub skip_check: bool,
    /// Write the exports without validating them against the reference (for timing the
    /// export alone; `validate` runs it later)
    #[arg(long)]
    pub no_validate: bool,
    /// Exit 0 even when an export is `unverified` (no engine measured it, e.g. ONNX Runtime
    /// is not installed or validate.engines leaves out every engine that runs it)
    #[arg(long)]
    pub allow_unverified: bool,
    /// Print the plan (stages, what each reads and writes, estimated bytes and memory, and
    /// whether it runs or is skipped) and write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Re-hash every output of the stages that would be skipped (normally a file is re-hashed
    /// only when its size or modification time changed); one whose bytes changed is redone
    #[arg(long)]
    pub verify: bool,
    /// Redo every stage, even those whose inputs are unchanged, and replace an export folder
    /// this tool did not write (never the base or the adapter)
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

/// The evaluation text (the same flags on `run` and `validate`).
#[derive(Debug, Args)]
pub struct TextArgs {
    /// Score this text file too: perplexity, KL divergence and top-1 agreement of every export
    /// against the reference (overrides validate.text)
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Tokens per chunk of --text (overrides validate.text-context; default 512)
    #[arg(long, value_name = "TOKENS")]
    pub text_context: Option<u32>,
    /// Score only the first N chunks of --text (overrides validate.text-chunks)
    #[arg(long, value_name = "N")]
    pub text_chunks: Option<u32>,
}

impl TextArgs {
    /// `overrides` with these flags added.
    pub fn apply(&self, overrides: Overrides) -> Overrides {
        Overrides {
            text: self.text.clone(),
            text_context: self.text_context,
            text_chunks: self.text_chunks,
            ..overrides
        }
    }
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub overrides: OverrideArgs,
    #[command(flatten)]
    pub text: TextArgs,
    /// Exit 0 even when an export is `unverified` (no engine measured it, e.g. ONNX Runtime
    /// is not installed or validate.engines leaves out every engine that runs it)
    #[arg(long)]
    pub allow_unverified: bool,
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
    /// Replace --out even if this tool did not write it (its contents are deleted); the base
    /// and the adapter are never replaced
    #[arg(long)]
    pub force: bool,
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
    /// With --exports: remove a declared export's folder even if this tool did not write it
    #[arg(long)]
    pub force: bool,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use clap::CommandFactory;

    use super::Cli;

    /// Spellings of a concept that has one name here (`--base`, `--adapter`, `--out-dir`,
    /// `--out`, `--threads`, `--prompt`): none may appear as a flag of any subcommand.
    const SYNONYMS: &[(&str, &str)] = &[
        ("model", "base"),
        ("base-model", "base"),
        ("model-dir", "base"),
        ("lora", "adapter"),
        ("adapter-dir", "adapter"),
        ("run-dir", "adapter"),
        ("output", "out"),
        ("output-dir", "out-dir"),
        ("outdir", "out-dir"),
        ("num-threads", "threads"),
        ("n-threads", "threads"),
        ("prompts", "prompt"),
    ];

    #[test]
    fn every_subcommand_names_the_same_concept_the_same_way() {
        let cli = Cli::command();
        // flag -> (value name, takes a value) per subcommand: one meaning per flag everywhere.
        let mut seen: BTreeMap<String, (String, Option<String>, bool)> = BTreeMap::new();
        for sub in cli.get_subcommands() {
            let name = sub.get_name().to_string();
            let flags: Vec<String> =
                sub.get_arguments().filter_map(|a| a.get_long().map(str::to_string)).collect();
            for arg in sub.get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if let Some((_, better)) = SYNONYMS.iter().find(|(s, _)| *s == long) {
                    panic!("`{name} --{long}`: this tool calls it --{better}");
                }
                let value = arg
                    .get_value_names()
                    .map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "));
                let takes = arg.get_num_args().is_some_and(|n| n.takes_values());
                match seen.get(long) {
                    Some((first, v, t)) => assert!(
                        (v, *t) == (&value, takes),
                        "--{long} means different things in `{first}` ({v:?}) and `{name}` ({value:?})"
                    ),
                    None => {
                        seen.insert(long.to_string(), (name.clone(), value, takes));
                    }
                }
            }
            // A subcommand that reads a base + adapter takes both as --base and --adapter.
            if flags.iter().any(|f| f == "adapter") {
                assert!(flags.iter().any(|f| f == "base"), "`{name}` takes --adapter but not --base");
            }
        }
        for needed in ["merge", "run", "validate", "bench", "generate", "detect", "clean", "export"] {
            let Some(sub) = cli.find_subcommand(needed) else { continue };
            let has = |flag: &str| sub.get_arguments().any(|a| a.get_long() == Some(flag));
            assert!(has("base") && has("adapter"), "`{needed}` must take --base and --adapter");
        }
    }
}
