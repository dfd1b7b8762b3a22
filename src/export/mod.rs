//! Writers, one per output format.

pub mod destination;
pub mod gguf;
pub mod manifest;
pub mod onnx;
pub mod safetensors;
pub mod staging;
pub mod stream_file;

use std::path::Path;

use crate::checkpoint::{Adapter, Detection};
use crate::model::ModelFolder;

/// What an export is made from. The weights are either the base merged on the fly with the
/// adapter, or a folder merged once beforehand (then `adapter` is `None`); `base` and
/// `detection` give the companion files and the provenance either way.
#[derive(Clone, Copy)]
pub struct ExportInputs<'a> {
    pub weights: &'a ModelFolder,
    pub adapter: Option<&'a Adapter>,
    pub base: &'a ModelFolder,
    pub detection: Option<&'a Detection>,
    /// Where export folders are assembled before being renamed into place (a run's
    /// `.state/tmp`, on the same filesystem); `None`: beside the destination.
    pub temp_root: Option<&'a Path>,
}

impl<'a> ExportInputs<'a> {
    /// Merge on the fly: the base and the detected adapter.
    pub fn from_base(base: &'a ModelFolder, detection: Option<&'a Detection>) -> Self {
        Self { weights: base, adapter: detection.map(|d| &d.adapter), base, detection, temp_root: None }
    }
}
