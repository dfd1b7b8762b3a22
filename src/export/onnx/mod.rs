//! ONNX export written directly from the weights: the graph builder, the Qwen decoder graph,
//! streamed (external) initializer data, RoPE tables and the companion files.

pub mod builder;
pub mod data;
pub mod decoder;
pub mod emitter;
pub mod folder;
pub mod fused;
pub mod genai;
pub mod weights;

pub use folder::{OnnxOptions, OnnxPrecision, OnnxReport, write_onnx_folder};
