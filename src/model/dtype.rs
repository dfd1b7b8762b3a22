//! Element types as safetensors names them.

use std::fmt;

use rayon::prelude::*;
use serde::{Serialize, Serializer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorDtype {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl TensorDtype {
    const ALL: [TensorDtype; 15] = [
        TensorDtype::Bool,
        TensorDtype::U8,
        TensorDtype::I8,
        TensorDtype::F8E5M2,
        TensorDtype::F8E4M3,
        TensorDtype::I16,
        TensorDtype::U16,
        TensorDtype::F16,
        TensorDtype::BF16,
        TensorDtype::I32,
        TensorDtype::U32,
        TensorDtype::F32,
        TensorDtype::F64,
        TensorDtype::I64,
        TensorDtype::U64,
    ];

    /// The name used in safetensors headers (`"F32"`, `"BF16"`...).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            TensorDtype::Bool => "BOOL",
            TensorDtype::U8 => "U8",
            TensorDtype::I8 => "I8",
            TensorDtype::F8E5M2 => "F8_E5M2",
            TensorDtype::F8E4M3 => "F8_E4M3",
            TensorDtype::I16 => "I16",
            TensorDtype::U16 => "U16",
            TensorDtype::F16 => "F16",
            TensorDtype::BF16 => "BF16",
            TensorDtype::I32 => "I32",
            TensorDtype::U32 => "U32",
            TensorDtype::F32 => "F32",
            TensorDtype::F64 => "F64",
            TensorDtype::I64 => "I64",
            TensorDtype::U64 => "U64",
        }
    }

    pub fn from_safetensors_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.safetensors_name() == name)
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            TensorDtype::Bool
            | TensorDtype::U8
            | TensorDtype::I8
            | TensorDtype::F8E5M2
            | TensorDtype::F8E4M3 => 1,
            TensorDtype::I16 | TensorDtype::U16 | TensorDtype::F16 | TensorDtype::BF16 => 2,
            TensorDtype::I32 | TensorDtype::U32 | TensorDtype::F32 => 4,
            TensorDtype::F64 | TensorDtype::I64 | TensorDtype::U64 => 8,
        }
    }

    /// Floating-point types model weights may be stored in.
    pub fn is_weight_float(self) -> bool {
        matches!(self, TensorDtype::F32 | TensorDtype::F16 | TensorDtype::BF16)
    }

    /// Index of the first NaN or Inf in `bytes` of this dtype (an all-ones exponent), without
    /// decoding; `None` for integer types.
    pub fn first_non_finite(self, bytes: &[u8]) -> Option<usize> {
        match self {
            TensorDtype::F32 => bytes
                .chunks_exact(4)
                .position(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7F80_0000 == 0x7F80_0000),
            TensorDtype::BF16 => {
                bytes.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7F80 == 0x7F80)
            }
            TensorDtype::F16 => {
                bytes.chunks_exact(2).position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7C00 == 0x7C00)
            }
            _ => None,
        }
    }

    /// The `torch_dtype` string transformers writes into config.json.
    pub fn torch_name(self) -> Option<&'static str> {
        match self {
            TensorDtype::F32 => Some("float32"),
            TensorDtype::F16 => Some("float16"),
            TensorDtype::BF16 => Some("bfloat16"),
            _ => None,
        }
    }
}

impl fmt::Display for TensorDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.safetensors_name().to_ascii_lowercase())
    }
}

impl Serialize for TensorDtype {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Decodes little-endian f32/f16/bf16 bytes into f32 values (the merge computes in f32).
pub fn decode_f32(dtype: TensorDtype, bytes: &[u8], out: &mut Vec<f32>) -> bool {
    out.clear();
    match dtype {
        TensorDtype::F32 => {
            out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
        }
        TensorDtype::F16 => {
            out.extend(bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()))
        }
        TensorDtype::BF16 => {
            out.extend(bytes.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()))
        }
        _ => return false,
    }
    true
}

/// Decodes little-endian f32/f16/bf16 bytes into `out` (of exactly the matching length);
/// the tight loops vectorise, which matters when gigabytes stream through.
pub fn decode_into(dtype: TensorDtype, bytes: &[u8], out: &mut [f32]) -> bool {
    match dtype {
        TensorDtype::F32 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            }
        }
        TensorDtype::BF16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16);
            }
        }
        TensorDtype::F16 => {
            for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        _ => return false,
    }
    true
}

/// f32 -> bf16 bits, rounding to nearest even (as torch and `half` do); NaN stays NaN.
/// Branch-free so that the encoding loop vectorises.
fn bf16_bits(v: f32) -> u16 {
    let bits = v.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) | 0x0040) as u16;
    if v.is_nan() { quiet_nan } else { rounded }
}

/// Encodes f32 values into `out` (of exactly the matching length) as little-endian `dtype`.
pub fn encode_into(dtype: TensorDtype, values: &[f32], out: &mut [u8]) -> bool {
    match dtype {
        TensorDtype::F32 => {
            for (c, v) in out.chunks_exact_mut(4).zip(values) {
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        TensorDtype::BF16 => {
            for (c, v) in out.chunks_exact_mut(2).zip(values) {
                c.copy_from_slice(&bf16_bits(*v).to_le_bytes());
            }
        }
        TensorDtype::F16 => {
            for (c, v) in out.chunks_exact_mut(2).zip(values) {
                c.copy_from_slice(&half::f16::from_f32(*v).to_le_bytes());
            }
        }
        _ => return false,
    }
    true
}

/// Encodes f32 values as little-endian bytes of a float dtype (round to nearest even).
pub fn encode_f32(dtype: TensorDtype, values: &[f32], out: &mut Vec<u8>) -> bool {
    out.clear();
    match dtype {
        TensorDtype::F32 => out.extend(values.iter().flat_map(|v| v.to_le_bytes())),
        TensorDtype::F16 => out.extend(values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes())),
        TensorDtype::BF16 => out.extend(values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())),
        _ => return false,
    }
    true
}

/// Decodes `bytes` of `dtype` into `out` in parallel.
pub fn decode_parallel(dtype: TensorDtype, bytes: &[u8], out: &mut Vec<f32>) {
    let width = dtype.size_in_bytes();
    out.resize(bytes.len() / width, 0.0);
    out.par_chunks_mut(1 << 16).zip(bytes.par_chunks(width << 16)).for_each(|(dst, src)| {
        decode_into(dtype, src, dst);
    });
}

pub fn encode_parallel(dtype: TensorDtype, values: &[f32], out: &mut Vec<u8>) {
    let width = dtype.size_in_bytes();
    out.resize(values.len() * width, 0);
    out.par_chunks_mut(width << 16).zip(values.par_chunks(1 << 16)).for_each(|(dst, src)| {
        encode_into(dtype, src, dst);
    });
}

/// Columns of a tensor seen as rows: the first axis is rows; a vector is one row.
pub fn row_width(shape: &[usize]) -> usize {
    let cols: usize = if shape.len() >= 2 { shape[1..].iter().product() } else { shape.iter().product() };
    cols.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in TensorDtype::ALL {
            assert_eq!(TensorDtype::from_safetensors_name(d.safetensors_name()), Some(d));
        }
        assert_eq!(TensorDtype::from_safetensors_name("F4"), None);
    }

    #[test]
    fn fast_paths_agree_with_half() {
        let values = [
            1.0f32,
            -2.5,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 512.0,
            3.0e38,
            -0.0,
            f32::INFINITY,
            1.0e-40,
            f32::NAN,
            -f32::NAN,
        ];
        for dtype in [TensorDtype::BF16, TensorDtype::F16, TensorDtype::F32] {
            let mut slow = Vec::new();
            encode_f32(dtype, &values, &mut slow);
            let mut fast = vec![0u8; slow.len()];
            assert!(encode_into(dtype, &values, &mut fast));
            assert_eq!(fast, slow, "{dtype}");
            let mut back_slow = Vec::new();
            decode_f32(dtype, &slow, &mut back_slow);
            let mut back_fast = vec![0.0f32; values.len()];
            assert!(decode_into(dtype, &fast, &mut back_fast));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&back_fast), bits(&back_slow), "{dtype}");
        }
    }

    #[test]
    fn bf16_round_trip_is_exact_for_representable_values() {
        let values = [1.0f32, -2.5, 0.0078125, 3.0e38];
        let mut bytes = Vec::new();
        assert!(encode_f32(TensorDtype::BF16, &values, &mut bytes));
        let mut back = Vec::new();
        assert!(decode_f32(TensorDtype::BF16, &bytes, &mut back));
        assert_eq!(&back[..3], &values[..3]);
        assert!((back[3] - 3.0e38).abs() / 3.0e38 < 1e-2);
    }
}
