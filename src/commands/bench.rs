use super::Context;
use super::output::print_json;
use crate::bench::{BenchOptions, bench_export, to_markdown};
use crate::cli::BenchArgs;
use crate::error::Error;

pub fn run(ctx: &Context, args: &BenchArgs) -> Result<(), Error> {
    let config = ctx.load_config(&(&args.overrides).into())?;
    let base = crate::model::ModelFolder::open(&config.base.value, config.profile.value.profile())?;
    let options = BenchOptions {
        prompt_tokens: args.prompt_tokens,
        decode_tokens: args.decode_tokens,
        warmup: args.warmup,
        repetitions: args.repetitions.max(1),
        threads: args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    let mut results = Vec::new();
    for export in
        config.exports.iter().filter(|e| args.export.is_empty() || args.export.contains(&e.value.name))
    {
        let dir = super::validate::finished_export_dir(&config, &export.value.name)?;
        tracing::info!("benchmarking {}", export.value.name);
        results.extend(bench_export(&base, &export.value, &dir, &config.validate.engines.value, &options)?);
    }
    if ctx.json {
        return print_json(&results);
    }
    print!("{}", to_markdown(&results));
    Ok(())
}
