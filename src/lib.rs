//! `model-export`: merge LoRA fine-tunes of Qwen models and export proven artifacts.
//!
//! The binary `cargo-model-export` is a thin layer over this library. Data flows one way:
//! config -> checkpoint -> model -> (merge -> export -> validate, in later layers).

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod config;
pub mod error;
pub mod export;
pub mod fsutil;
pub mod init;
pub mod inspect;
pub mod loader;
pub mod merge;
pub mod model;
pub mod monitor;
pub mod pipeline;
pub mod presets;
pub mod profile;
pub mod quant;
pub mod retry;
pub mod runtime;
pub mod synth;
pub mod validate;

pub use error::{Error, Result};

/// The README's Rust example compiles as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
