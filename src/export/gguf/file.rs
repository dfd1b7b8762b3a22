//! The GGUF v3 container, written in one pass: header, metadata, tensor descriptions with
//! their data offsets, then the tensor data, each tensor starting on the alignment. Every
//! tensor's type and shape is known before its data is produced, so the offsets are computed
//! up front and the data streams straight from the merge.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;

use crate::gguf_constants::{block_bytes, ggml_type_id};

/// What llama.cpp and the `gguf` package assume when `general.alignment` is absent.
pub use crate::gguf_constants::ALIGNMENT;
const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;

/// One tensor as the file describes it. `shape` is row-major (PyTorch order); GGUF stores the
/// dimensions innermost first.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorEntry {
    pub fn bytes(&self) -> u64 {
        block_bytes(self.dtype, self.shape.iter().product())
    }
}

/// Zero bytes that bring `len` to the next multiple of the alignment.
pub fn padding(len: u64) -> usize {
    ((ALIGNMENT - len % ALIGNMENT) % ALIGNMENT) as usize
}

fn value_type(value: &Value) -> u32 {
    match value {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::U8(v) => out.push(*v),
        Value::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        Value::Bool(v) => out.push(u8::from(*v)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array still needs an element type; any will do.
            let element = items.first().map_or(value_type(&Value::U8(0)), value_type);
            out.extend_from_slice(&element.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|item| put_value(out, item));
        }
    }
}

/// Everything before the tensor data: header, metadata, tensor descriptions (data in the
/// order given, each aligned), padded so the data section starts aligned.
pub fn encode_header(metadata: &[(String, Value)], tensors: &[TensorEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        put_string(&mut out, key);
        out.extend_from_slice(&value_type(value).to_le_bytes());
        put_value(&mut out, value);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_string(&mut out, &t.name);
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for &dim in t.shape.iter().rev() {
            out.extend_from_slice(&(dim as u64).to_le_bytes());
        }
        out.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += t.bytes();
        offset += padding(offset) as u64;
    }
    out.resize(out.len() + padding(out.len() as u64), 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;

    #[test]
    fn candle_reads_back_what_is_written() {
        let metadata = vec![
            ("general.architecture".to_string(), Value::String("qwen3".into())),
            ("qwen3.block_count".to_string(), Value::U32(2)),
            ("qwen3.rope.freq_base".to_string(), Value::F32(1e6)),
            (
                "tokenizer.ggml.tokens".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
            ),
            ("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(false)),
        ];
        let tensors = vec![
            TensorEntry { name: "a".into(), shape: vec![3], dtype: GgmlDType::F32 },
            TensorEntry { name: "b".into(), shape: vec![2, 32], dtype: GgmlDType::Q8_0 },
        ];
        let mut bytes = encode_header(&metadata, &tensors);
        assert_eq!(bytes.len() % ALIGNMENT as usize, 0);
        let data_start = bytes.len();
        bytes.extend(1f32.to_le_bytes().iter().chain(&2f32.to_le_bytes()).chain(&3f32.to_le_bytes()));
        bytes.resize(bytes.len() + padding(12), 0);
        bytes.extend(std::iter::repeat_n(0u8, tensors[1].bytes() as usize));
        let content = Content::read(&mut std::io::Cursor::new(&bytes)).unwrap();
        assert_eq!(content.tensor_data_offset as usize, data_start);
        assert_eq!(content.metadata["qwen3.block_count"].to_u32().unwrap(), 2);
        assert_eq!(content.metadata["tokenizer.ggml.tokens"].to_vec().unwrap().len(), 2);
        let b = &content.tensor_infos["b"];
        assert_eq!((b.shape.dims(), b.ggml_dtype, b.offset), (&[2usize, 32][..], GgmlDType::Q8_0, 32));
        let a = content.tensor(&mut std::io::Cursor::new(&bytes), "a", &candle_core::Device::Cpu).unwrap();
        let values = a.dequantize(&candle_core::Device::Cpu).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(values, [1.0, 2.0, 3.0]);
    }
}
