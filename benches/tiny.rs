//! criterion benches on the tiny fixtures: the ONNX graph builder (emit + encode the Qwen3 decoder
//! graph) and the streaming merge (plan + merge + write a merged folder).
//!
//! cargo bench --bench tiny

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use model_export::checkpoint::detect;
use model_export::export::onnx::builder::{Data, Elem, GraphBuilder};
use model_export::export::onnx::decoder::{DecoderSpec, ROPE_COS, ROPE_SIN};
use model_export::export::onnx::emitter::build_decoder;
use model_export::export::onnx::weights::WeightForm;
use model_export::export::safetensors::{MergeOptions, write_merged_folder};
use model_export::model::ModelFolder;
use prost::Message;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn graph_builder(c: &mut Criterion) {
    let base = ModelFolder::open(&fixture("qwen3-tiny"), None).unwrap();
    let config = &base.config;
    c.bench_function("onnx graph: emit + encode qwen3-tiny decoder", |b| {
        b.iter(|| {
            let mut g = GraphBuilder::new(17, "model.onnx_data");
            for (_, info) in base.tensors() {
                let dims: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
                g.initializer(&info.name, Elem::F32, &dims, Data::External { offset: 0, length: 0 });
            }
            for name in [ROPE_COS, ROPE_SIN] {
                g.initializer(
                    name,
                    Elem::F32,
                    &[config.max_position_embeddings as i64, config.head_dim as i64],
                    Data::External { offset: 0, length: 0 },
                );
            }
            let spec = DecoderSpec {
                config,
                head: config.decoder.embedding.name.clone(),
                weight: &|_| WeightForm::Float(Elem::F32),
                accuracy_level: 0,
            };
            build_decoder(&mut g, &spec, model_export::config::Target::Portable).unwrap();
            g.finish("main_graph", &[]).encode_to_vec().len()
        })
    });
}

fn merge(c: &mut Criterion) {
    let base = ModelFolder::open(&fixture("qwen3-tiny"), None).unwrap();
    let detection = detect(&fixture("qwen3-tiny-run"), Some(&base)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("merged");
    c.bench_function("merge: qwen3-tiny + checkpoint-4 into a folder", |b| {
        b.iter(|| {
            write_merged_folder(&base, Some(&detection), &MergeOptions::default(), &out).unwrap().parameters
        })
    });
}

criterion_group!(benches, graph_builder, merge);
criterion_main!(benches);
