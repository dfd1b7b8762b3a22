//! Where initializer bytes go while the merge streams them: into one `model.onnx_data` file
//! (external data, written as it arrives, so memory stays flat) or into memory for a model
//! small enough to live inside the protobuf.

use std::path::Path;

use super::builder::{Data, Elem};
use crate::export::stream_file::{StreamingFile, WrittenFile};

/// Large tensors start on a page boundary, so ONNX Runtime can map them instead of copying.
const PAGE: u64 = 4096;
const SMALL_ALIGN: u64 = 64;

pub struct PlannedInitializer {
    pub name: String,
    pub elem: Elem,
    pub dims: Vec<i64>,
    pub bytes: u64,
}

/// Every initializer with where its data lives, and the external data file if any.
pub type Placed = (Vec<(PlannedInitializer, Data)>, Option<WrittenFile>);

enum Store {
    External { file: Box<StreamingFile>, offsets: Vec<u64> },
    Embedded { buffers: Vec<Vec<u8>> },
}

pub struct InitializerSink {
    planned: Vec<PlannedInitializer>,
    current: usize,
    filled: u64,
    store: Store,
}

impl InitializerSink {
    /// With `external`, bytes go to that file; otherwise they are kept in memory.
    pub fn new(planned: Vec<PlannedInitializer>, external: Option<&Path>) -> std::io::Result<Self> {
        let store = match external {
            Some(path) => {
                Store::External { file: Box::new(StreamingFile::create(path)?), offsets: Vec::new() }
            }
            None => Store::Embedded { buffers: Vec::new() },
        };
        Ok(Self { planned, current: 0, filled: 0, store })
    }

    fn begin_tensor(&mut self) -> std::io::Result<()> {
        let bytes = self.planned[self.current].bytes;
        match &mut self.store {
            Store::External { file, offsets } => {
                let align = if bytes >= 64 * 1024 { PAGE } else { SMALL_ALIGN };
                let padding = (align - file.position() % align) % align;
                file.write_all(&vec![0u8; padding as usize])?;
                offsets.push(file.position());
            }
            Store::Embedded { buffers } => buffers.push(Vec::with_capacity(bytes as usize)),
        }
        Ok(())
    }

    /// Appends data in planned order; a chunk may span tensors.
    pub fn write(&mut self, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            let planned_bytes = self
                .planned
                .get(self.current)
                .ok_or_else(|| std::io::Error::other("more initializer data than planned"))?
                .bytes;
            if self.filled == 0 {
                self.begin_tensor()?;
            }
            let take = ((planned_bytes - self.filled) as usize).min(bytes.len());
            match &mut self.store {
                Store::External { file, .. } => file.write_all(&bytes[..take])?,
                Store::Embedded { buffers } => {
                    buffers.last_mut().expect("begun").extend_from_slice(&bytes[..take])
                }
            }
            self.filled += take as u64;
            bytes = &bytes[take..];
            if self.filled == planned_bytes {
                self.current += 1;
                self.filled = 0;
            }
        }
        Ok(())
    }

    /// Every initializer with where its data lives, and the data file when external.
    pub fn finish(mut self) -> std::io::Result<Placed> {
        // Empty tensors never receive a byte: place them now.
        while self.current < self.planned.len() && self.planned[self.current].bytes == 0 {
            self.begin_tensor()?;
            self.current += 1;
        }
        if self.current != self.planned.len() || self.filled != 0 {
            return Err(std::io::Error::other("initializer data ended early"));
        }
        match self.store {
            Store::External { file, offsets } => {
                let written = file.finish()?;
                let placed = self
                    .planned
                    .into_iter()
                    .zip(offsets)
                    .map(|(p, offset)| {
                        let length = p.bytes;
                        (p, Data::External { offset, length })
                    })
                    .collect();
                Ok((placed, Some(written)))
            }
            Store::Embedded { buffers } => {
                Ok((self.planned.into_iter().zip(buffers).map(|(p, b)| (p, Data::Raw(b))).collect(), None))
            }
        }
    }
}
