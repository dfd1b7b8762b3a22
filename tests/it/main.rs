//! Integration tests: the CLI on temporary cargo projects that point at the golden fixtures.
//! One test binary (modules below) so the crate's dependency graph links once.

mod bad_inputs;
mod cli;
mod common;
mod config;
mod demo;
mod destinations;
mod detect;
mod generate;
mod gguf;
mod init;
mod inspect;
mod merge;
mod model;
mod onnx;
mod peft_semantics;
mod perplexity;
mod pipeline;
mod proof;
mod quant;
mod reference;
mod run;
mod validate;
