//! safetensors output.

pub mod writer;

pub use writer::{SafetensorsWriter, TensorEntry};
