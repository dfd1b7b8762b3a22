//! Merge benchmark (issue: streaming merge): a Qwen3-0.6B-shaped random bf16 model and a rank-16
//! all-linear LoRA run, both from the project's generator, merged by the release binary, beside
//! a plain copy of the same files in the same run. Prints wall time, throughput and peak RSS.
//!
//! cargo bench --bench merge            (data is cached under target/bench-data)
//! cargo bench --bench merge -- 7b      (Qwen2.5-7B shape, 15.2 GB in 4 shards; needs 40 GB free)

use std::path::Path;
use std::process::Command;
use std::time::Duration;

mod support;
use support::{Measured, measure};

fn folder_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("merge benchmark: run it with `cargo bench --bench merge`");
        return;
    }
    let data = support::data_dir();
    // `cargo bench --bench merge -- 7b`: the Qwen2.5-7B shape in 4 shards instead of Qwen3-0.6B.
    let seven = std::env::args().any(|a| a == "7b");
    let (shape_name, label, shard, repetitions) = if seven {
        ("qwen2.5-7b", "Qwen2.5-7B shape", Some(4_000_000_000), 3)
    } else {
        ("qwen3-0.6b", "Qwen3-0.6B shape", None, 5)
    };
    std::fs::create_dir_all(&data).unwrap();
    if seven {
        // The model (15.2 GB), one merged copy at a time and room to spare.
        let free =
            model_export::pipeline::preflight::free_bytes(&data).expect("free space of the bench folder");
        if free < 40_000_000_000 {
            println!(
                "skipped: the 7B benchmark needs 40 GB free under {}, it has {:.1} GB",
                data.display(),
                free as f64 / 1e9
            );
            return;
        }
    }
    let (base, run) = support::bench_model(&data, shape_name, shard);
    let work = tempfile::tempdir_in(&data).unwrap();
    let input_bytes = folder_bytes(&base);

    // Interleaved, so that the disk's moods hit both alike.
    let mut merges = Vec::new();
    let mut copies = Vec::new();
    for i in 0..repetitions {
        let out = work.path().join(format!("merged-{i}"));
        merges.push(measure(
            Command::new(env!("CARGO_BIN_EXE_cargo-model-export"))
                .args(["merge", "-q", "--base"])
                .arg(&base)
                .arg("--adapter")
                .arg(&run)
                .arg("--out")
                .arg(&out)
                .stdout(std::process::Stdio::null()),
        ));
        std::fs::remove_dir_all(&out).unwrap();
        let out = work.path().join(format!("copy-{i}"));
        // cp + sync: the merge fsyncs what it writes, so the copy must too to compare like with like.
        copies.push(measure(Command::new("sh").arg("-c").arg(format!(
            "cp -r '{}' '{}' && sync -f '{}/config.json'",
            base.display(),
            out.display(),
            out.display()
        ))));
        std::fs::remove_dir_all(&out).unwrap();
    }
    let median = |m: &mut Vec<Measured>| {
        m.sort_by_key(|x| x.wall);
        (m[m.len() / 2].wall, m.iter().map(|x| x.peak_rss_bytes).max().unwrap_or(0))
    };
    let (merge_wall, merge_rss) = median(&mut merges);
    let (copy_wall, _) = median(&mut copies);
    let gb_s = |wall: Duration| input_bytes as f64 / wall.as_secs_f64() / 1e9;
    println!("{label}, bf16, {:.0} MiB of weights; rank-16 LoRA on all 7 projections", mib(input_bytes));
    println!("median of {repetitions} runs:");
    println!(
        "  merge + write (cargo model-export merge): {:6.2} s  {:5.2} GB/s  peak RSS {:.0} MiB ({:.1}% of the model)",
        merge_wall.as_secs_f64(),
        gb_s(merge_wall),
        mib(merge_rss),
        100.0 * merge_rss as f64 / input_bytes as f64
    );
    println!(
        "  cp -r + sync of the same folder:           {:6.2} s  {:5.2} GB/s",
        copy_wall.as_secs_f64(),
        gb_s(copy_wall)
    );
    println!(
        "  merge throughput / copy throughput:         {:.2}",
        copy_wall.as_secs_f64() / merge_wall.as_secs_f64()
    );
}
