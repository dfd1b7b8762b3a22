//! criterion bench of the weight quantizers on one Qwen3-0.6B-sized projection (1024 x 3072,
//! gaussian like trained weights): the scale search is most of a quantized export's time.
//!
//! cargo bench --bench quantize

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use model_export::quant::{Quantized, Scheme, quantize_rows};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

const ROWS: usize = 1024;
const COLS: usize = 3072;

/// Sum of four uniforms: close enough to a gaussian for the search's work per block.
fn weights() -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    (0..ROWS * COLS)
        .map(|_| (0..4).map(|_| (rng.next_u32() as f32 / u32::MAX as f32) - 0.5).sum::<f32>() * 0.05)
        .collect()
}

fn quantizers(c: &mut Criterion) {
    let values = weights();
    let mut group = c.benchmark_group("quantize 1024x3072");
    group.throughput(Throughput::Elements((ROWS * COLS) as u64));
    group.sample_size(10);
    let schemes = [
        ("int8 per channel", Scheme::Int8PerChannel),
        ("int4 block 32 asymmetric", Scheme::Blocks { bits: 4, block: 32, symmetric: false }),
        ("int4 block 32 symmetric", Scheme::Blocks { bits: 4, block: 32, symmetric: true }),
    ];
    for (name, scheme) in schemes {
        let mut out = Quantized::default();
        group.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                quantize_rows(scheme, "bench", &values, COLS, 0, &mut out).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, quantizers);
criterion_main!(benches);
