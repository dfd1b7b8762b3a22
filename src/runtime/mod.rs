//! Running models: the candle reference forward (f32, padded batches, KV cache) and greedy
//! generation. The validator and, later, the loader and `generate` build on these.

pub mod attention;
pub mod batch;
pub mod chat;
pub mod engine;
pub mod generate;
pub mod generation;
pub mod gguf;
pub mod kernels;
pub mod linear;
pub mod moe;
pub mod ort_engine;
pub mod reference;
pub mod sampler;
pub mod tract_engine;

pub use batch::Batch;
pub use engine::{DecoderEngine, Logits};
pub use generate::{GreedyOptions, greedy};
pub use reference::{KvCache, ReferenceEngine, ReferenceModel, StreamedModel};
