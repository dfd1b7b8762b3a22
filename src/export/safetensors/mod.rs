//! safetensors output.

pub mod folder;
pub mod sharded;
pub mod writer;

pub use folder::{MergeOptions, MergeReport, write_merged_folder, write_safetensors_folder};
pub use sharded::ShardedWriter;
pub use writer::{SafetensorsWriter, TensorEntry};
