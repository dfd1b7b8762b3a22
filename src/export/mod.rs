//! Writers, one per output format.

pub mod safetensors;
