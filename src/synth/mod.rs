//! Deterministic synthetic models, adapters and training runs: the demo's data, test inputs,
//! and benchmark models with the exact shapes of real Qwen checkpoints (random weights).
//! The same seed always writes the same bytes.

mod shapes;

use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde_json::{Value, json};

use crate::error::Error;
use crate::export::safetensors::{SafetensorsWriter, ShardedWriter, TensorEntry};
use crate::fsutil::{atomic_write, write_json};
use crate::model::layout::expected_tensors;
use crate::model::{HfConfig, TensorDtype};
use crate::monitor;

pub use shapes::{ModelShape, SHAPES};

const TOKENIZER_FILES: &[(&str, &[u8])] = &[
    ("tokenizer.json", include_bytes!("../../assets/demo-tokenizer/tokenizer.json")),
    ("tokenizer_config.json", include_bytes!("../../assets/demo-tokenizer/tokenizer_config.json")),
    ("special_tokens_map.json", include_bytes!("../../assets/demo-tokenizer/special_tokens_map.json")),
];
/// Token ids of the embedded tokenizer.
const BOS: u32 = 381;
const PAD: u32 = 381;
const EOS: u32 = 383;

/// Values per random chunk: large tensors are generated and written piece by piece.
const CHUNK: usize = 1 << 20;

/// What the adapter of a synthetic run looks like.
#[derive(Debug, Clone)]
pub struct AdapterSpec {
    pub r: usize,
    pub alpha: f64,
    /// Module suffixes (`q_proj`...); all seven projections when empty.
    pub targets: Vec<String>,
    pub use_rslora: bool,
    pub dtype: TensorDtype,
}

impl Default for AdapterSpec {
    fn default() -> Self {
        Self { r: 8, alpha: 16.0, targets: Vec::new(), use_rslora: false, dtype: TensorDtype::F32 }
    }
}

const ALL_PROJECTIONS: &[&str] =
    &["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::write(path, e)
}

/// FNV-1a, to give every tensor its own random stream whatever the write order.
fn stream_seed(seed: u64, name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// Uniform values in `[center - half_width, center + half_width)`, streamed in chunks.
fn write_random(
    sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    path: &Path,
    entry: &TensorEntry,
    seed: u64,
    center: f32,
    half_width: f32,
    progress: &indicatif::ProgressBar,
) -> Result<(), Error> {
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(seed, &entry.name));
    let mut remaining: usize = entry.shape.iter().product();
    let mut values = Vec::with_capacity(CHUNK.min(remaining));
    let mut bytes = Vec::new();
    while remaining > 0 {
        let n = CHUNK.min(remaining);
        values.clear();
        values.extend((0..n).map(|_| {
            let unit = (rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32;
            center + half_width * (2.0 * unit - 1.0)
        }));
        crate::model::dtype::encode_f32(entry.dtype, &values, &mut bytes);
        sink(&bytes).map_err(io(path))?;
        progress.inc(bytes.len() as u64);
        remaining -= n;
    }
    Ok(())
}

fn write_tokenizer(dir: &Path) -> Result<(), Error> {
    for (name, bytes) in TOKENIZER_FILES {
        atomic_write(&dir.join(name), bytes)?;
    }
    Ok(())
}

/// Writes a complete Hugging Face model folder for `shape` into `dir` (created if needed).
/// With `max_shard_size`, weights are split into shards with an index, as transformers does.
pub fn write_model(
    shape: &ModelShape,
    dir: &Path,
    seed: u64,
    max_shard_size: Option<u64>,
) -> Result<HfConfig, Error> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config_path = dir.join("config.json");
    let config_json = shape.config_json(BOS, EOS, PAD);
    write_json(&config_path, &config_json)?;
    let (config, _) = HfConfig::parse(&config_path, &config_json.to_string(), None).map_err(|e| {
        Error::write(&config_path, std::io::Error::other(format!("synthetic config does not parse: {e}")))
    })?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({
            "bos_token_id": BOS, "do_sample": true, "eos_token_id": [EOS, PAD], "pad_token_id": PAD,
            "temperature": 0.7, "top_k": 20, "top_p": 0.8
        }),
    )?;
    write_tokenizer(dir)?;

    let entries: Vec<TensorEntry> = expected_tensors(&config)
        .into_iter()
        .map(|(name, dims)| TensorEntry::new(name, shape.dtype, dims))
        .collect();
    let total = entries.iter().map(TensorEntry::byte_len).sum();
    let progress = monitor::bytes_bar(total, format!("writing {}", shape.name));
    let mut writer = ShardedWriter::create(dir, &entries, max_shard_size, &[("format".into(), "pt".into())])
        .map_err(io(dir))?;
    for entry in &entries {
        // Norm weights near 1 (as trained models have), everything else around 0.
        let is_norm = entry.shape.len() == 1 && entry.name.ends_with("norm.weight");
        let (center, half_width) = if is_norm { (1.0, 0.1) } else { (0.0, shape.init_range * 3f32.sqrt()) };
        write_random(&mut |b| writer.write(b), dir, entry, seed, center, half_width, &progress)?;
    }
    writer.finish().map_err(io(dir))?;
    progress.finish_and_clear();
    Ok(config)
}

/// Writes a PEFT adapter folder (adapter_config.json + adapter_model.safetensors) for `base`.
pub fn write_adapter(
    base: &HfConfig,
    spec: &AdapterSpec,
    dir: &Path,
    base_name: &str,
    seed: u64,
) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let targets: Vec<String> = if spec.targets.is_empty() {
        ALL_PROJECTIONS.iter().map(|s| s.to_string()).collect()
    } else {
        spec.targets.clone()
    };
    let q_out = base.num_attention_heads * base.head_dim;
    let kv_out = base.num_key_value_heads * base.head_dim;
    let mut entries = Vec::new();
    for layer in 0..base.num_hidden_layers {
        for target in &targets {
            let (group, out, inp) = match target.as_str() {
                "q_proj" => ("self_attn", q_out, base.hidden_size),
                "k_proj" | "v_proj" => ("self_attn", kv_out, base.hidden_size),
                "o_proj" => ("self_attn", base.hidden_size, q_out),
                "gate_proj" | "up_proj" => ("mlp", base.intermediate_size, base.hidden_size),
                "down_proj" => ("mlp", base.hidden_size, base.intermediate_size),
                other => {
                    return Err(Error::write(
                        dir,
                        std::io::Error::other(format!("unknown synthetic target `{other}`")),
                    ));
                }
            };
            let module = format!("base_model.model.model.layers.{layer}.{group}.{target}");
            entries.push(TensorEntry::new(format!("{module}.lora_A.weight"), spec.dtype, vec![spec.r, inp]));
            entries.push(TensorEntry::new(format!("{module}.lora_B.weight"), spec.dtype, vec![out, spec.r]));
        }
    }
    let weights = dir.join("adapter_model.safetensors");
    let mut writer = SafetensorsWriter::create(&weights, &entries, &[("format".into(), "pt".into())])
        .map_err(io(&weights))?;
    let hidden = indicatif::ProgressBar::hidden();
    for entry in &entries {
        // Like `init_lora_weights=False` after some training: B is not zero, so the merge matters.
        let fan_in = entry.shape[1] as f32;
        write_random(&mut |b| writer.write(b), &weights, entry, seed, 0.0, 1.0 / fan_in.sqrt(), &hidden)?;
    }
    writer.finish().map_err(io(&weights))?;
    let config: Value = json!({
        "alpha_pattern": {},
        "base_model_name_or_path": base_name,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": false,
        "lora_alpha": spec.alpha,
        "lora_dropout": 0.0,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": spec.r,
        "rank_pattern": {},
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": spec.use_rslora,
    });
    write_json(&dir.join("adapter_config.json"), &config)?;
    write_tokenizer(dir)
}

/// A Trainer-style output folder: `checkpoint-N` for each step, each with an adapter, the
/// tokenizer, trainer_state.json and placeholder optimizer/scheduler/RNG files (which the tool
/// must never read). With `break_newest`, the newest adapter's weights are cut to half length.
pub fn write_training_run(
    base: &HfConfig,
    spec: &AdapterSpec,
    run: &Path,
    steps: &[u64],
    break_newest: bool,
    seed: u64,
) -> Result<Vec<PathBuf>, Error> {
    let max_steps = steps.iter().copied().max().unwrap_or(0);
    let mut written = Vec::new();
    for &step in steps {
        let dir = run.join(format!("checkpoint-{step}"));
        write_adapter(base, spec, &dir, "base", seed.wrapping_add(step))?;
        let log_history: Vec<Value> = (1..=step)
            .map(|s| json!({"epoch": s as f64 / max_steps as f64, "loss": 6.0 - 0.25 * s as f64, "step": s}))
            .collect();
        write_json(
            &dir.join("trainer_state.json"),
            &json!({
                "best_metric": null, "best_model_checkpoint": null, "epoch": step as f64 / max_steps as f64,
                "global_step": step, "log_history": log_history, "max_steps": max_steps, "save_steps": steps[0],
            }),
        )?;
        for name in ["optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"] {
            atomic_write(&dir.join(name), b"synthetic training state: never read by model-export\n")?;
        }
        written.push(dir);
    }
    if break_newest && let Some(newest) = steps.iter().max() {
        let weights = run.join(format!("checkpoint-{newest}")).join("adapter_model.safetensors");
        let len = std::fs::metadata(&weights).map_err(io(&weights))?.len();
        let file = std::fs::OpenOptions::new().write(true).open(&weights).map_err(io(&weights))?;
        file.set_len(len / 2).map_err(io(&weights))?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::detect;
    use crate::model::ModelFolder;
    use crate::model::layout::check_layout;

    #[test]
    fn qwen3_0_6b_shape_has_the_real_parameter_count() {
        let shape = ModelShape::by_name("qwen3-0.6b").unwrap();
        let config_json = shape.config_json(BOS, EOS, PAD).to_string();
        let (config, _) = HfConfig::parse(Path::new("config.json"), &config_json, None).unwrap();
        let params: usize = expected_tensors(&config).iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        // Qwen/Qwen3-0.6B: 596,049,920 parameters, 440,467,456 without the (tied) embedding.
        assert_eq!(params, 596_049_920);
        let shape = ModelShape::by_name("qwen2.5-7b").unwrap();
        let (config, _) =
            HfConfig::parse(Path::new("c"), &shape.config_json(BOS, EOS, PAD).to_string(), None).unwrap();
        let params: usize = expected_tensors(&config).iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        // Qwen/Qwen2.5-7B: 7,615,616,512 parameters.
        assert_eq!(params, 7_615_616_512);
    }

    #[test]
    fn sharded_and_single_file_models_hold_the_same_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let shape = ModelShape::by_name("qwen2-tiny").unwrap().with_dtype(TensorDtype::BF16);
        write_model(&shape, &dir.path().join("one"), 3, None).unwrap();
        write_model(&shape, &dir.path().join("many"), 3, Some(40_000)).unwrap();
        let one = ModelFolder::open(&dir.path().join("one"), None).unwrap();
        let many = ModelFolder::open(&dir.path().join("many"), None).unwrap();
        check_layout(&many).unwrap();
        assert!(!one.sharded && many.sharded);
        assert!(many.shard_files().count() > 2, "40 kB shards of a 250 kB model");
        assert_eq!(one.parameter_count(), many.parameter_count());
        assert_eq!(one.dtypes().into_iter().collect::<Vec<_>>(), vec![TensorDtype::BF16]);
        for (file, info) in one.tensors() {
            let (other_file, other) = many.tensor(&info.name).unwrap();
            assert_eq!(file.bytes(info), other_file.bytes(other), "{}", info.name);
        }
    }

    #[test]
    fn generated_run_fits_its_base_and_skips_the_broken_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let shape = ModelShape::by_name("qwen3-tiny").unwrap();
        let config = write_model(shape, &dir.path().join("base"), 1, None).unwrap();
        let spec = AdapterSpec {
            r: 4,
            alpha: 8.0,
            targets: vec!["q_proj".into(), "down_proj".into()],
            ..Default::default()
        };
        write_training_run(&config, &spec, &dir.path().join("run"), &[10, 20, 30], true, 1).unwrap();
        let base = ModelFolder::open(&dir.path().join("base"), None).unwrap();
        check_layout(&base).unwrap();
        let detection = detect(&dir.path().join("run"), Some(&base)).unwrap();
        assert!(detection.chosen.ends_with("checkpoint-20"));
        assert_eq!(detection.adapter.modules.len(), 4);
        assert_eq!(detection.trainer_state.unwrap().global_step, 20);
    }
}
