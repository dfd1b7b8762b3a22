//! Streaming safetensors writer: the header (offsets) is computed from names, dtypes and shapes
//! before any data, then tensor bytes are streamed in declaration order. Memory stays flat
//! whatever the model size; the file appears under its final name only when complete.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::export::stream_file::StreamingFile;
pub use crate::export::stream_file::WrittenFile;

pub use crate::model::safetensors::TensorEntry;

/// The header bytes (length prefix included) for `entries`, padded to 8 bytes as safetensors does.
pub fn header_bytes(entries: &[TensorEntry], metadata: &[(String, String)]) -> Vec<u8> {
    let mut header = Map::new();
    if !metadata.is_empty() {
        let meta: Map<String, Value> =
            metadata.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        header.insert("__metadata__".into(), Value::Object(meta));
    }
    let mut offset = 0u64;
    for entry in entries {
        let end = offset + entry.byte_len();
        header.insert(
            entry.name.clone(),
            json!({ "dtype": entry.dtype.safetensors_name(), "shape": entry.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut text = serde_json::to_string(&Value::Object(header)).unwrap_or_default().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out
}

pub struct SafetensorsWriter {
    path: PathBuf,
    out: StreamingFile,
    remaining: u64,
}

impl SafetensorsWriter {
    /// Starts `path` (under a temporary name in the same folder) and writes the header.
    pub fn create(
        path: &Path,
        entries: &[TensorEntry],
        metadata: &[(String, String)],
    ) -> std::io::Result<Self> {
        let mut out = StreamingFile::create(path)?;
        out.write_all(&header_bytes(entries, metadata))?;
        Ok(Self { path: path.to_path_buf(), out, remaining: entries.iter().map(TensorEntry::byte_len).sum() })
    }

    /// Bytes of declared tensor data not yet written.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Appends tensor data; the caller streams tensors in the order they were declared.
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.len() as u64 > self.remaining {
            return Err(std::io::Error::other(format!(
                "{}: more tensor data than the header declares",
                self.path.display()
            )));
        }
        self.remaining -= bytes.len() as u64;
        self.out.write_all(bytes)
    }

    /// Checks every declared byte arrived, syncs, and renames into place.
    pub fn finish(self) -> std::io::Result<WrittenFile> {
        if self.remaining != 0 {
            return Err(std::io::Error::other(format!(
                "{}: {} bytes of declared tensor data were never written",
                self.path.display(),
                self.remaining
            )));
        }
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SafetensorsFile, TensorDtype};

    #[test]
    fn written_file_reads_back_with_the_same_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let entries = vec![
            TensorEntry::new("b", TensorDtype::F32, vec![2]),
            TensorEntry::new("a", TensorDtype::BF16, vec![3, 1]),
        ];
        let mut w = SafetensorsWriter::create(&path, &entries, &[("format".into(), "pt".into())]).unwrap();
        w.write(&[1.0f32, 2.0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()).unwrap();
        w.write(&[0u8; 6]).unwrap();
        let written = w.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(written.size, bytes.len() as u64);
        assert_eq!(written.sha256, crate::export::manifest::sha256_hex(&bytes));
        let file = SafetensorsFile::open(&path).unwrap();
        assert_eq!(file.tensors()[0].name, "b");
        let mut values = Vec::new();
        file.read_f32(file.get("b").unwrap(), &mut values).unwrap();
        assert_eq!(values, vec![1.0, 2.0]);
        assert_eq!(file.get("a").unwrap().shape, vec![3, 1]);
        assert_eq!(file.metadata()[0].1, "pt");
    }

    #[test]
    fn incomplete_data_never_appears_under_the_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let entries = vec![TensorEntry::new("w", TensorDtype::F32, vec![4])];
        let mut w = SafetensorsWriter::create(&path, &entries, &[]).unwrap();
        w.write(&[0u8; 8]).unwrap();
        assert!(w.finish().is_err());
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the temporary file is removed");
    }
}
