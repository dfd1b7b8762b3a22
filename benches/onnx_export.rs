//! ONNX export benchmark: the Qwen3-0.6B-shaped random model (bf16) with a rank-16 LoRA run is
//! merged and exported to f32 ONNX with external data by the release binary (export only:
//! `--skip-check`), timed with its peak RSS; then the export is loaded in ONNX Runtime and
//! tract and its last-token logits on a 32-token prompt are compared with the candle reference
//! (the same merge in f32).
//!
//! cargo bench --bench onnx_export      (data is cached under target/bench-data)

use std::process::Command;
use std::time::Instant;

use model_export::checkpoint::detect;
use model_export::export::safetensors::{MergeOptions, write_merged_folder};
use model_export::model::{ModelFolder, TensorDtype};
use model_export::runtime::ort_engine::{self, OrtEngine};
use model_export::runtime::tract_engine::TractEngine;
use model_export::runtime::{Batch, DecoderEngine, KvCache, ReferenceModel};

mod support;
use support::measure;

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("ONNX export benchmark: run it with `cargo bench --bench onnx_export`");
        return;
    }
    let data = support::data_dir();
    let (base_dir, run) = support::bench_model(&data, "qwen3-0.6b", None);
    let work = tempfile::tempdir_in(&data).unwrap();
    let project = work.path().join("project");
    std::fs::create_dir_all(project.join("src")).unwrap();
    std::fs::write(project.join("src/lib.rs"), "").unwrap();
    std::fs::write(
        project.join("Cargo.toml"),
        format!(
            "[package]\nname = \"bench\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n\n\
             [package.metadata.model-export]\nbase = {:?}\nadapter = {:?}\nout-dir = \"out\"\n\n\
             [[package.metadata.model-export.export]]\nname = \"onnx-f32\"\nformat = \"onnx\"\ndtype = \"f32\"\n",
            base_dir.display().to_string(),
            run.display().to_string()
        ),
    )
    .unwrap();
    let mut exports = Vec::new();
    for _ in 0..3 {
        let _ = std::fs::remove_dir_all(project.join("out"));
        exports.push(measure(
            Command::new(env!("CARGO_BIN_EXE_cargo-model-export"))
                .args(["run", "-q", "--skip-check", "--manifest-path"])
                .arg(project.join("Cargo.toml"))
                .stdout(std::process::Stdio::null()),
        ));
    }
    exports.sort_by_key(|e| e.wall);
    let wall = exports[1].wall.as_secs_f64();
    let rss = exports.iter().map(|e| e.peak_rss_bytes).max().unwrap_or(0);
    let model = project.join("out/onnx-f32/model.onnx");
    let data_bytes = std::fs::metadata(project.join("out/onnx-f32/model.onnx_data")).unwrap().len();
    println!(
        "Qwen3-0.6B shape (bf16 base + rank-16 LoRA) -> f32 ONNX with external data ({:.0} MiB)",
        data_bytes as f64 / 1048576.0
    );
    println!(
        "  export (merge + write, median of 3): {wall:.2} s, peak RSS {:.0} MiB",
        rss as f64 / 1048576.0
    );

    // Agreement on a 32-token prompt: last-token logits in each engine against candle.
    let base = ModelFolder::open(&base_dir, None).unwrap();
    let c = base.config.clone();
    let prompt: Vec<i64> = (0..32).map(|i| (i * 977 + 13) % 384).collect();
    let batch = Batch::left_padded(&[prompt], 0);
    let merged = work.path().join("merged-f32");
    let detection = detect(&run, Some(&base)).unwrap();
    write_merged_folder(
        &base,
        Some(&detection),
        &MergeOptions { dtype: Some(TensorDtype::F32), max_shard_size: None, allow_non_finite: false },
        &merged,
    )
    .unwrap();
    let reference = ReferenceModel::load(&ModelFolder::open(&merged, None).unwrap()).unwrap();
    let logits = reference.forward(&batch, &mut KvCache::default()).unwrap();
    let candle_last: Vec<f32> = logits.get(0).unwrap().get(31).unwrap().to_vec1().unwrap();
    drop(reference);
    let started = Instant::now();
    let mut tract =
        TractEngine::load(&model, c.num_hidden_layers, c.num_key_value_heads, c.head_dim).unwrap();
    let tract_load = started.elapsed().as_secs_f64();
    let tract_last = tract.step(&batch).unwrap().last(0).to_vec();
    drop(tract);
    println!(
        "  tract: loaded in {tract_load:.1} s; last-token logits vs candle: max abs {:.2e}",
        max_abs(&tract_last, &candle_last)
    );
    if ort_engine::available() {
        let started = Instant::now();
        let mut ort =
            OrtEngine::load(&model, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, 2).unwrap();
        let ort_load = started.elapsed().as_secs_f64();
        let ort_last = ort.step(&batch).unwrap().last(0).to_vec();
        println!(
            "  ort:   loaded in {ort_load:.1} s; last-token logits vs candle: max abs {:.2e}; vs tract: {:.2e}",
            max_abs(&ort_last, &candle_last),
            max_abs(&ort_last, &tract_last)
        );
    } else {
        println!(
            "  ort: not installed (python3 -m pip install --no-deps {})",
            model_export::onnx_io::ORT_WHEEL
        );
    }
}
