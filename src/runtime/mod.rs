//! Running models: the candle reference forward (f32, padded batches, KV cache) and greedy
//! generation. The validator and, later, the loader and `generate` build on these.

pub mod batch;
pub mod generate;
pub mod reference;

pub use batch::Batch;
pub use generate::{GreedyOptions, greedy};
pub use reference::{KvCache, ReferenceModel};
