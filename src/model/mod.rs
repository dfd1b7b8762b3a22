//! Reading Hugging Face model folders: config.json, safetensors (mmap, sharded), tokenizer files.

pub mod config_json;
pub mod decoder;
pub mod dtype;
pub mod features;
pub mod folder;
pub mod layout;
pub mod rope;
pub mod safetensors;

pub use config_json::HfConfig;
pub use decoder::DecoderDesc;
pub use dtype::TensorDtype;
pub use folder::ModelFolder;
pub use safetensors::{SafetensorsFile, TensorInfo};
