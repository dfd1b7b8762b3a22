//! Writes a synthetic model (and optionally a LoRA training run) with the project's generator:
//! the inputs of the benchmarks, at real Qwen shapes with random weights.
//!
//! cargo run --release --example synth -- qwen3-0.6b /tmp/qwen3-0.6b [--run /tmp/run] [--shard-size 5GB]

use std::path::PathBuf;

use model_export::config::ByteSize;
use model_export::synth::{AdapterSpec, ModelShape, SHAPES, write_model, write_training_run};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        let shapes: Vec<_> = SHAPES.iter().map(|s| s.name).collect();
        format!(
            "usage: synth SHAPE OUT_DIR [--run RUN_DIR] [--rank R] [--shard-size SIZE]\nshapes: {}",
            shapes.join(", ")
        )
    };
    let (Some(shape), Some(out)) = (args.first(), args.get(1)) else { return Err(usage().into()) };
    let shape = ModelShape::by_name(shape).ok_or_else(usage)?;
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let shard = flag("--shard-size").map(|s| s.parse::<ByteSize>()).transpose()?.map(|s| s.0);
    let started = std::time::Instant::now();
    let config = write_model(shape, &PathBuf::from(out), 42, shard)?;
    println!("model {} written to {out} in {:.1} s", shape.name, started.elapsed().as_secs_f64());
    if let Some(run) = flag("--run") {
        let r = flag("--rank").map(|r| r.parse()).transpose()?.unwrap_or(16);
        let spec = AdapterSpec { r, alpha: 2.0 * r as f64, dtype: shape.dtype, ..Default::default() };
        write_training_run(&config, &spec, &PathBuf::from(run), &[100, 200], false, 42)?;
        println!("training run (rank {r}, all seven projections) written to {run}");
    }
    Ok(())
}
