//! LoRA / rsLoRA / DoRA merge with PEFT's semantics, streaming tensor by tensor.

pub mod execute;
pub mod kernel;
pub mod plan;
pub mod targets;

pub use execute::{MergeInputs, execute, execute_rows, output_entries};
pub use plan::{MergePlan, plan_merge};
