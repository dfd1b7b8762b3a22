//! Writers, one per output format.

pub mod manifest;
pub mod safetensors;
