//! Latency, throughput and memory of each export in each engine that runs it: load time,
//! prefill latency for N tokens, decode milliseconds per token with the KV cache, peak RSS and
//! file size, with warm-up and repetitions (median and spread).

mod llama;

use std::path::Path;
use std::time::Instant;

/// llama.cpp's figures on the same file, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct PeerFigures {
    /// What measured them (llama-bench, or llama-cpp-python and its version).
    pub engine: String,
    pub prefill_ms: Spread,
    pub decode_ms_per_token: Spread,
}

use serde::Serialize;

use crate::config::{Engine, ExportSpec};
use crate::error::{Error, RuntimeError};
use crate::model::ModelFolder;
use crate::runtime::batch::positions_from_mask;
use crate::runtime::ort_engine::{self, OrtEngine};
use crate::runtime::tract_engine::TractEngine;
use crate::runtime::{Batch, DecoderEngine, ReferenceEngine, ReferenceModel};

#[derive(Debug, Clone, Copy)]
pub struct BenchOptions {
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub warmup: usize,
    pub repetitions: usize,
    pub threads: usize,
}

/// Median, min and max of repeated measurements.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let median = if n == 0 {
            0.0
        } else if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        };
        Spread {
            median,
            min: values.first().copied().unwrap_or(0.0),
            max: values.last().copied().unwrap_or(0.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub export: String,
    pub engine: String,
    pub file_bytes: u64,
    pub load_seconds: f64,
    pub prefill_ms: Spread,
    pub prefill_tokens: usize,
    pub decode_ms_per_token: Spread,
    pub decode_tokens_per_second: f64,
    /// Peak resident memory while this engine loaded and ran the export (Linux; else None).
    pub peak_rss_bytes: Option<u64>,
    /// llama.cpp on the same file in the same run (GGUF exports, when llama.cpp is available).
    pub llama_cpp: Option<PeerFigures>,
}

fn measure(
    engine: &mut dyn DecoderEngine,
    vocab: usize,
    options: &BenchOptions,
) -> Result<(Vec<f64>, Vec<f64>), RuntimeError> {
    let prompt: Vec<i64> =
        (0..options.prompt_tokens).map(|i| (i as i64 * 7919 + 13) % vocab as i64).collect();
    let batch = Batch::left_padded(&[prompt], 0);
    let (mut prefill, mut decode) = (Vec::new(), Vec::new());
    for rep in 0..options.warmup + options.repetitions {
        engine.reset();
        let started = Instant::now();
        // As generation runs a prompt: the cache filled, the last position's logits computed.
        engine.step_last(&batch)?;
        let prefill_ms = started.elapsed().as_secs_f64() * 1e3;
        let mut mask = batch.attention_mask.clone();
        let started = Instant::now();
        for i in 0..options.decode_tokens {
            mask[0].push(1);
            let step = Batch {
                input_ids: vec![vec![(i as i64 * 31 + 5) % vocab as i64]],
                position_ids: positions_from_mask(&mask, 1),
                attention_mask: mask.clone(),
            };
            engine.step_last(&step)?;
        }
        let decode_ms = started.elapsed().as_secs_f64() * 1e3 / options.decode_tokens.max(1) as f64;
        if rep >= options.warmup {
            prefill.push(prefill_ms);
            decode.push(decode_ms);
        }
    }
    engine.reset();
    Ok((prefill, decode))
}

/// Benchmarks the export `spec` at `dir` in each of `engines` that runs it.
pub fn bench_export(
    base: &ModelFolder,
    spec: &ExportSpec,
    dir: &Path,
    engines: &[Engine],
    options: &BenchOptions,
) -> Result<Vec<BenchResult>, Error> {
    let c = &base.config;
    let file_bytes: u64 = std::fs::read_dir(dir)
        .map_err(|e| Error::write(dir, e))?
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    let mut results = Vec::new();
    for &engine in spec.format.engines().iter().filter(|e| engines.contains(e)) {
        let target = spec.target.unwrap_or(crate::config::Target::Portable);
        let dtype = spec.dtype.unwrap_or(crate::config::ExportDtype::F32);
        if engine == Engine::Tract
            && let Some(why) = crate::runtime::tract_engine::unsupported_for(
                spec,
                dtype,
                target,
                base.config.decoder.has_experts(),
            )
        {
            tracing::warn!("{} is not benchmarked in tract: {why}", spec.name);
            continue;
        }
        if engine == Engine::Ort && !ort_engine::available() {
            tracing::warn!("ONNX Runtime is not installed: {} is benchmarked in tract only", spec.name);
            continue;
        }
        crate::monitor::reset_peak_rss();
        // Our engines on as many threads as the peers are given.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(options.threads).build().map_err(|e| {
            RuntimeError::Unsupported { message: format!("cannot start {} threads: {e}", options.threads) }
        })?;
        let (load_seconds, prefill, decode) = pool.install(|| {
            let started = Instant::now();
            let model;
            let mut boxed: Box<dyn DecoderEngine + '_> = match engine {
                Engine::Candle if spec.format == crate::config::Format::Gguf => {
                    let path = dir.join(crate::export::gguf::GGUF_FILE);
                    model = crate::runtime::gguf::GgufFile::open(&path)?.load(&candle_core::Device::Cpu)?;
                    Box::new(ReferenceEngine::new(&model))
                }
                Engine::Candle => {
                    model = ReferenceModel::load(&ModelFolder::open(dir, Some(base.profile))?)?;
                    Box::new(ReferenceEngine::new(&model))
                }
                Engine::Tract => Box::new(TractEngine::load_for(
                    target,
                    &dir.join("model.onnx"),
                    c.num_hidden_layers,
                    c.num_key_value_heads,
                    c.head_dim,
                )?),
                Engine::Ort => Box::new(OrtEngine::load(
                    &dir.join("model.onnx"),
                    c.num_hidden_layers,
                    c.num_key_value_heads,
                    c.head_dim,
                    options.threads,
                )?),
            };
            let load_seconds = started.elapsed().as_secs_f64();
            let (prefill, decode) = measure(boxed.as_mut(), c.vocab_size, options)?;
            Ok::<_, Error>((load_seconds, prefill, decode))
        })?;
        let peak_rss_bytes = crate::monitor::peak_rss();
        let llama_cpp = if spec.format == crate::config::Format::Gguf {
            let workload = llama::Workload {
                prompt_tokens: options.prompt_tokens,
                decode_tokens: options.decode_tokens,
                warmup: options.warmup,
                repetitions: options.repetitions,
                threads: options.threads,
            };
            match llama::measure(&dir.join(crate::export::gguf::GGUF_FILE), &workload) {
                Ok(times) => Some(PeerFigures {
                    engine: times.engine,
                    prefill_ms: Spread::of(times.prefill_ms),
                    decode_ms_per_token: Spread::of(times.decode_ms_per_token),
                }),
                Err(why) => {
                    tracing::warn!("{}: {why}", spec.name);
                    None
                }
            }
        } else {
            None
        };
        let decode = Spread::of(decode);
        results.push(BenchResult {
            export: spec.name.clone(),
            engine: engine.to_string(),
            file_bytes,
            load_seconds,
            prefill_ms: Spread::of(prefill),
            prefill_tokens: options.prompt_tokens,
            decode_tokens_per_second: if decode.median > 0.0 { 1e3 / decode.median } else { 0.0 },
            decode_ms_per_token: decode,
            peak_rss_bytes,
            llama_cpp,
        });
    }
    Ok(results)
}

/// The results as a Markdown table; a GGUF row measured beside llama.cpp shows llama.cpp's
/// figures on the same file and our time over its time (below 1: faster than llama.cpp).
pub fn to_markdown(results: &[BenchResult]) -> String {
    let mut md = String::from(
        "| export | engine | size | load | prefill | decode | tokens/s | peak RSS | llama.cpp decode / prefill (ours ÷ theirs) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let peer = r.llama_cpp.as_ref().map_or("-".into(), |p| {
            format!(
                "{:.2} ms/token (×{:.2}) / {:.1} ms (×{:.2})",
                p.decode_ms_per_token.median,
                r.decode_ms_per_token.median / p.decode_ms_per_token.median,
                p.prefill_ms.median,
                r.prefill_ms.median / p.prefill_ms.median,
            )
        });
        md.push_str(&format!(
            "| {} | {} | {} | {:.2} s | {:.1} ms for {} tokens ({:.1}–{:.1}) | {:.2} ms/token ({:.2}–{:.2}) | {:.1} | {} | {} |\n",
            r.export,
            r.engine,
            crate::size::human_bytes(r.file_bytes),
            r.load_seconds,
            r.prefill_ms.median,
            r.prefill_tokens,
            r.prefill_ms.min,
            r.prefill_ms.max,
            r.decode_ms_per_token.median,
            r.decode_ms_per_token.min,
            r.decode_ms_per_token.max,
            r.decode_tokens_per_second,
            r.peak_rss_bytes.map_or("-".into(), crate::size::human_bytes),
            peer,
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    #[test]
    fn spread_is_median_min_max() {
        let s = super::Spread::of(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (2.5, 1.0, 10.0));
    }
}
