//! safetensors output.

pub mod sharded;
pub mod writer;

pub use sharded::ShardedWriter;
pub use writer::{SafetensorsWriter, TensorEntry};
