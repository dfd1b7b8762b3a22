//! `generate`: load a model through the library's loader and generate from prompts; one prompt
//! streams its text to stdout as it comes.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::DType;

use super::Context;
use super::output::print_json;
use crate::cli::GenerateArgs;
use crate::config::Overrides;
use crate::error::{Error, LoadError};
use crate::loader::{LoadOptions, Model, ModelInfo, Source};
use crate::runtime::generation::GenerateOptions;
use crate::size::human_bytes;

fn parse_dtype(text: &str) -> Result<DType, LoadError> {
    match text {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(LoadError::Incompatible {
            what: format!("dtype {other}"),
            reason: "weights load as f32, f16 or bf16".into(),
            help: "use --dtype f32, f16 or bf16 (or --quantization for 8 and 4 bits)".into(),
        }),
    }
}

/// What to load: MODEL (with --adapter), --export NAME, or the project's base + adapter.
fn source(ctx: &Context, args: &GenerateArgs) -> Result<Source, Error> {
    if let Some(model) = args.base.as_ref().or(args.model.as_ref()) {
        return Ok(match &args.adapter {
            Some(adapter) => Source::WithAdapter { base: model.clone(), adapter: adapter.clone() },
            None => Source::Folder(model.clone()),
        });
    }
    let overrides = Overrides { adapter: args.adapter.clone(), ..Overrides::default() };
    let config = ctx.load_config(&overrides)?;
    if let Some(name) = &args.export {
        let dir: PathBuf = config.out_dir.value.join(name);
        if !dir.is_dir() {
            return Err(LoadError::Source {
                path: dir,
                reason: format!("export `{name}` has not been written: run `cargo model-export run` first"),
            }
            .into());
        }
        return Ok(Source::Folder(dir));
    }
    Ok(match &config.adapter.value {
        Some(adapter) => Source::WithAdapter { base: config.base.value.clone(), adapter: adapter.clone() },
        None => Source::Folder(config.base.value.clone()),
    })
}

fn print_info(info: &ModelInfo) {
    eprintln!(
        "{} · {} parameters · {} on {} ({}) · {} · {} resident",
        info.architecture,
        info.parameters,
        info.engine,
        info.device.name,
        info.device.reason,
        if info.quantization == crate::loader::Quantization::None {
            info.dtype.clone()
        } else {
            info.quantization.to_string()
        },
        human_bytes(info.resident_bytes)
    );
    for g in &info.groups {
        let formats: Vec<String> = g.formats.iter().map(|(f, n)| format!("{n}×{f}")).collect();
        eprintln!(
            "  {:<18} {:>4} tensors  {:>12}  {}",
            g.group,
            g.tensors,
            human_bytes(g.bytes),
            formats.join(", ")
        );
    }
    for f in &info.fallbacks {
        eprintln!("  fallback: {} {} → {} ({})", f.tensor, f.wanted, f.used, f.reason);
    }
}

pub fn run(ctx: &Context, args: &GenerateArgs) -> Result<(), Error> {
    let options = LoadOptions {
        source: source(ctx, args)?,
        device: args.device,
        dtype: parse_dtype(&args.dtype)?,
        quantization: args.quantization,
        max_memory: args.max_memory.map(|b| b.0),
        retries: args.retries,
        threads: args.threads,
    };
    let started = Instant::now();
    let model = Model::load(&options)?;
    let load_seconds = started.elapsed().as_secs_f64();
    if args.info && !ctx.json {
        print_info(model.info());
    }
    let generate = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        do_sample: if args.greedy {
            Some(false)
        } else if args.sample {
            Some(true)
        } else {
            None
        },
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        stop: args.stop.clone(),
        eos_token_ids: None,
        chat: args.chat,
        system: args.system.clone(),
    };
    let stream = args.prompts.len() == 1 && !ctx.json;
    let started = Instant::now();
    let results = model.generate_stream(&args.prompts, &generate, |event| {
        if stream && !event.text.is_empty() {
            let mut out = std::io::stdout().lock();
            // A closed pipe only ends the stream early; the result is still returned.
            let _ = out.write_all(event.text.as_bytes()).and_then(|()| out.flush());
        }
    })?;
    let seconds = started.elapsed().as_secs_f64();
    let tokens: usize = results.iter().map(|r| r.token_ids.len()).sum();
    if ctx.json {
        return print_json(&serde_json::json!({
            "info": model.info(),
            "settings": generate.resolve(model.defaults())?,
            "load_seconds": load_seconds,
            "generate_seconds": seconds,
            "results": results,
        }));
    }
    if stream {
        println!();
    } else {
        for (i, r) in results.iter().enumerate() {
            println!("[{}] {}\n{}\n", i + 1, r.prompt.trim_end(), r.text);
        }
    }
    let finishes: Vec<&str> = results.iter().map(|r| r.finish.label()).collect();
    eprintln!(
        "{tokens} new tokens in {seconds:.2} s ({:.1} tokens/s; load {load_seconds:.2} s); finished by {}",
        tokens as f64 / seconds.max(1e-9),
        finishes.join(", ")
    );
    Ok(())
}
