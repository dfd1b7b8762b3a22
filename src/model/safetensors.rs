//! A memory-mapped safetensors file whose header has been checked byte for byte: every tensor's
//! dtype, shape and byte range agree, ranges do not overlap, and the data is all present.
//! Only the header is read eagerly; tensor bytes are paged in when used.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::dtype::{TensorDtype, decode_f32};
use crate::error::ModelError;

/// Headers beyond this size are refused rather than parsed (safetensors uses the same bound).
pub const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// A tensor as a safetensors header declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: TensorDtype,
    pub shape: Vec<usize>,
}

impl TensorEntry {
    pub fn new(name: impl Into<String>, dtype: TensorDtype, shape: Vec<usize>) -> Self {
        Self { name: name.into(), dtype, shape }
    }

    pub fn byte_len(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size_in_bytes() as u64
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: TensorDtype,
    pub shape: Vec<usize>,
    /// Byte range inside the data section (after the 8-byte length and the header).
    #[serde(skip)]
    pub data_offsets: (usize, usize),
}

impl TensorInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn byte_len(&self) -> usize {
        self.data_offsets.1 - self.data_offsets.0
    }
}

pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    /// In header order.
    tensors: Vec<TensorInfo>,
    metadata: Vec<(String, String)>,
}

impl fmt::Debug for SafetensorsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsFile")
            .field("path", &self.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let io = |source| ModelError::Io { path: path.to_path_buf(), source };
        let (file_len, mmap) = crate::retry::io(path, || {
            let file = File::open(path)?;
            let len = file.metadata()?.len();
            // SAFETY: the map is read-only; a file changed underneath us is a documented hazard
            // of every mmap-based reader, and sizes were checked against the header before any read.
            Ok((len, unsafe { Mmap::map(&file) }?))
        })
        .map_err(io)?;
        let (data_start, tensors, metadata) = parse_header(path, &mmap, file_len)?;
        Ok(Self { path: path.to_path_buf(), mmap, data_start, tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn metadata(&self) -> &[(String, String)] {
        &self.metadata
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw little-endian bytes of a tensor of this file.
    pub fn bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[self.data_start + info.data_offsets.0..self.data_start + info.data_offsets.1]
    }

    /// The header as stored (length prefix included): identifies the file's layout cheaply.
    pub fn header_bytes(&self) -> &[u8] {
        &self.mmap[..self.data_start]
    }

    /// Drops the pages of `len` bytes at `offset` inside `info`'s data from this process's
    /// resident memory (they stay in the page cache). Streaming readers call it after use so
    /// that reading a 15 GB model does not show 15 GB of RSS.
    pub fn release(&self, info: &TensorInfo, offset: usize, len: usize) {
        let start = self.data_start + info.data_offsets.0 + offset;
        // SAFETY: the map is a read-only, file-backed private mapping: after MADV_DONTNEED the
        // next access re-reads the same file bytes, so no reference can observe a change.
        let result =
            unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
        if let Err(e) = result {
            tracing::debug!("madvise on {} failed: {e}", self.path.display());
        }
    }

    /// Like [`SafetensorsFile::read_f32`], releasing the mapped pages block by block as they are
    /// decoded: the resident peak is the f32 copy plus one block, not plus the whole tensor's bytes.
    pub fn read_f32_released(&self, info: &TensorInfo, out: &mut Vec<f32>) -> Result<(), ModelError> {
        const BLOCK_ELEMENTS: usize = 4 << 20;
        let width = info.dtype.size_in_bytes();
        if !matches!(info.dtype, TensorDtype::F32 | TensorDtype::F16 | TensorDtype::BF16) {
            return self.read_f32(info, out);
        }
        let bytes = self.bytes(info);
        out.clear();
        out.resize(bytes.len() / width, 0.0);
        for (i, (dst, src)) in
            out.chunks_mut(BLOCK_ELEMENTS).zip(bytes.chunks(BLOCK_ELEMENTS * width)).enumerate()
        {
            use rayon::prelude::*;
            dst.par_chunks_mut(1 << 16).zip(src.par_chunks(width << 16)).for_each(|(d, s)| {
                crate::model::dtype::decode_into(info.dtype, s, d);
            });
            self.release(info, i * BLOCK_ELEMENTS * width, src.len());
        }
        Ok(())
    }

    /// The tensor's values widened to f32; refuses non-float tensors with the tensor named.
    pub fn read_f32(&self, info: &TensorInfo, out: &mut Vec<f32>) -> Result<(), ModelError> {
        // Large tensors are decoded on every core: a streamed 7B model upcasts all its weights
        // on each forward pass.
        const PARALLEL_FROM: usize = 1 << 20;
        let bytes = self.bytes(info);
        let width = info.dtype.size_in_bytes();
        let float = matches!(info.dtype, TensorDtype::F32 | TensorDtype::F16 | TensorDtype::BF16);
        if float && bytes.len() / width >= PARALLEL_FROM {
            use rayon::prelude::*;
            out.clear();
            out.resize(bytes.len() / width, 0.0);
            out.par_chunks_mut(1 << 16).zip(bytes.par_chunks(width << 16)).for_each(|(dst, src)| {
                crate::model::dtype::decode_into(info.dtype, src, dst);
            });
            return Ok(());
        }
        if decode_f32(info.dtype, bytes, out) {
            Ok(())
        } else {
            Err(ModelError::Tensor {
                path: self.path.clone(),
                tensor: info.name.clone(),
                message: format!("dtype {} is not a float type (expected f32, f16 or bf16)", info.dtype),
            })
        }
    }
}

/// The header's entries in file order, keeping duplicates so they can be refused.
struct RawEntries(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for RawEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = RawEntries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object mapping tensor names to {dtype, shape, data_offsets}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    entries.push(entry);
                }
                Ok(RawEntries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTensor {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

type ParsedHeader = (usize, Vec<TensorInfo>, Vec<(String, String)>);

fn parse_header(path: &Path, bytes: &[u8], file_len: u64) -> Result<ParsedHeader, ModelError> {
    let bad = |message: String| ModelError::Safetensors { path: path.to_path_buf(), message };
    if file_len < 8 {
        return Err(bad(format!("file is {file_len} bytes, too short to hold the 8-byte header length")));
    }
    let mut len_bytes = [0u8; 8];
    len_bytes.copy_from_slice(&bytes[..8]);
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES {
        return Err(bad(format!("header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit")));
    }
    if header_len > file_len - 8 {
        return Err(bad(format!(
            "header length {header_len} runs past the end of the file ({file_len} bytes): the file is truncated or not safetensors"
        )));
    }
    let header_end = 8 + header_len as usize;
    let header =
        std::str::from_utf8(&bytes[8..header_end]).map_err(|e| bad(format!("header is not UTF-8: {e}")))?;
    let RawEntries(entries) =
        serde_json::from_str(header).map_err(|e| bad(format!("header is not a valid JSON object: {e}")))?;

    let data_len = (file_len - header_end as u64) as usize;
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(entries.len());
    let mut metadata = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, value) in entries {
        if name == "__metadata__" {
            let map: std::collections::BTreeMap<String, String> = serde_json::from_value(value)
                .map_err(|e| bad(format!("`__metadata__` must map strings to strings: {e}")))?;
            metadata.extend(map);
            continue;
        }
        let tensor_err =
            |message: String| ModelError::Tensor { path: path.to_path_buf(), tensor: name.clone(), message };
        if !seen.insert(name.clone()) {
            return Err(tensor_err("appears twice in the header".into()));
        }
        let raw: RawTensor =
            serde_json::from_value(value).map_err(|e| tensor_err(format!("malformed header entry: {e}")))?;
        let dtype = TensorDtype::from_safetensors_name(&raw.dtype)
            .ok_or_else(|| tensor_err(format!("unknown dtype `{}`", raw.dtype)))?;
        let (begin, end) = raw.data_offsets;
        if begin > end {
            return Err(tensor_err(format!("data_offsets [{begin}, {end}] end before they begin")));
        }
        let numel = raw.shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let expected = numel.and_then(|n| n.checked_mul(dtype.size_in_bytes() as u64));
        match expected {
            Some(bytes) if bytes == end - begin => {}
            Some(bytes) => {
                return Err(tensor_err(format!(
                    "shape {:?} in {dtype} needs {bytes} bytes but data_offsets [{begin}, {end}] hold {}",
                    raw.shape,
                    end - begin
                )));
            }
            None => return Err(tensor_err(format!("shape {:?} overflows", raw.shape))),
        }
        if end > data_len as u64 {
            return Err(tensor_err(format!(
                "truncated tensor data: needs bytes up to {end} of the data section, but the file holds only {data_len} (file is {file_len} bytes, expected {})",
                header_end as u64 + end
            )));
        }
        tensors.push(TensorInfo {
            name,
            dtype,
            shape: raw.shape.iter().map(|&d| d as usize).collect(),
            data_offsets: (begin as usize, end as usize),
        });
    }

    // The data section must be covered exactly once, without gaps or overlaps.
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.data_offsets);
    let mut covered = 0usize;
    for t in by_offset {
        if t.data_offsets.0 < covered {
            return Err(ModelError::Tensor {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                message: format!(
                    "data_offsets {:?} overlap the previous tensor (which ends at {covered})",
                    t.data_offsets
                ),
            });
        }
        if t.data_offsets.0 > covered {
            return Err(ModelError::Tensor {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                message: format!(
                    "gap in the data section: bytes {covered}..{} belong to no tensor",
                    t.data_offsets.0
                ),
            });
        }
        covered = t.data_offsets.1;
    }
    if covered != data_len {
        return Err(bad(format!(
            "{} trailing bytes after the last tensor: the data section holds {data_len} bytes, tensors cover {covered}",
            data_len - covered
        )));
    }
    Ok((header_end, tensors, metadata))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(header: &str, data: &[u8]) -> Vec<u8> {
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn parse(bytes: &[u8]) -> Result<ParsedHeader, String> {
        parse_header(Path::new("t.safetensors"), bytes, bytes.len() as u64).map_err(|e| e.to_string())
    }

    #[test]
    fn accepts_a_well_formed_file() {
        let bytes = file_with(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"format":"pt"}}"#,
            &[0; 8],
        );
        let (start, tensors, meta) = parse(&bytes).unwrap();
        assert_eq!(start, bytes.len() - 8);
        assert_eq!(tensors[0].shape, vec![2]);
        assert_eq!(meta, vec![("format".to_string(), "pt".to_string())]);
    }

    #[test]
    fn refuses_truncated_data_naming_the_tensor() {
        let bytes = file_with(r#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, &[0; 8]);
        let err = parse(&bytes).unwrap_err();
        assert!(err.contains("tensor `w`: truncated tensor data"), "{err}");
    }

    #[test]
    fn refuses_duplicates_overlaps_gaps_and_mismatched_lengths() {
        let dup = file_with(
            r#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            &[0; 8],
        );
        assert!(parse(&dup).unwrap_err().contains("appears twice"));
        let overlap = file_with(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            &[0; 8],
        );
        assert!(parse(&overlap).unwrap_err().contains("overlap"));
        let gap = file_with(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, &[0; 8]);
        assert!(parse(&gap).unwrap_err().contains("gap"));
        let wrong = file_with(r#"{"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,4]}}"#, &[0; 4]);
        assert!(parse(&wrong).unwrap_err().contains("needs 8 bytes"));
    }

    #[test]
    fn refuses_header_past_end_and_non_json() {
        let mut past = 1000u64.to_le_bytes().to_vec();
        past.extend_from_slice(b"{}");
        assert!(parse(&past).unwrap_err().contains("runs past the end"));
        assert!(parse(&file_with("not json", &[])).unwrap_err().contains("not a valid JSON"));
        assert!(parse(&[1, 2]).unwrap_err().contains("too short"));
    }

    // Fuzzing in the stable suite: whatever the bytes, parsing returns, never panics, and
    // never allocates beyond the header it was given.
    mod fuzz {
        use proptest::prelude::*;

        use super::{file_with, parse};

        const VALID: &str = r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"__metadata__":{"format":"pt"}}"#;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let _ = parse(&bytes);
            }

            #[test]
            fn mutated_valid_files_never_panic(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                cut in any::<prop::sample::Index>(),
            ) {
                let mut bytes = file_with(VALID, &[7; 22]);
                for (at, value) in edits {
                    let i = at.index(bytes.len());
                    bytes[i] = value;
                }
                let keep = cut.index(bytes.len() + 1);
                let _ = parse(&bytes[..keep]);
            }

            #[test]
            fn hostile_headers_are_refused_not_trusted(
                dims in proptest::collection::vec(any::<u64>(), 0..5),
                begin in any::<u64>(),
                end in any::<u64>(),
                dtype in prop::sample::select(vec!["F32", "BF16", "I8", "BOOL", "F8_E4M3", "X"]),
            ) {
                let header = format!(
                    r#"{{"t":{{"dtype":"{dtype}","shape":{dims:?},"data_offsets":[{begin},{end}]}}}}"#
                );
                let bytes = file_with(&header, &[0; 16]);
                if let Ok((_, tensors, _)) = parse(&bytes) {
                    // Accepted only when it describes exactly the 16 data bytes.
                    prop_assert_eq!(tensors[0].data_offsets, (0, 16));
                }
            }
        }
    }
}
