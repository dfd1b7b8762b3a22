//! `model-export`: merge LoRA fine-tunes of Qwen models and export proven artifacts.
//!
//! The binary `cargo-model-export` is a thin layer over this library. Modules are layered
//! (`layers::LAYERS`, held by a test): a module imports only from its layer or lower ones.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod gguf_constants;
pub mod hooks;
pub mod init;
pub mod inspect;
pub mod layers;
pub mod loader;
pub mod memory;
pub mod merge;
pub mod model;
pub mod monitor;
pub mod onnx_io;
pub mod pipeline;
pub mod presets;
pub mod profile;
pub mod quant;
pub mod retry;
pub mod runtime;
pub mod size;
pub mod synth;
pub mod validate;

pub use error::{Error, Result};

/// The README's Rust example compiles as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
