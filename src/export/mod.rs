//! Writers, one per output format.

pub mod manifest;
pub mod onnx;
pub mod safetensors;
pub mod staging;
pub mod stream_file;
