//! Builds one loaded tensor from the blocks of rows the merge hands over, converting each block
//! at once into the tensor's placement: f16/bf16 values, or quantized blocks (every format's
//! blocks run along a row, and a row is a whole number of blocks, so blocks of rows quantize
//! independently and their bytes concatenate). No f32 copy of a whole tensor is ever held,
//! which keeps the load's peak near the loaded size.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use super::quantization::Placement;
use crate::error::RuntimeError;
use crate::quant::ggml::quantize_ggml_rows;
use crate::runtime::kernels::{BlockMatrix, Format, Storage};
use crate::runtime::reference::Weight;

pub enum Accumulator {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
    Blocks { format: GgmlDType, bytes: Vec<u8> },
}

impl Accumulator {
    /// An empty tensor of `elements` values in `placement`.
    pub fn new(placement: Placement, elements: usize) -> Self {
        match placement {
            Placement::Dense(DType::F16) => Accumulator::F16(Vec::with_capacity(elements)),
            Placement::Dense(DType::BF16) => Accumulator::Bf16(Vec::with_capacity(elements)),
            Placement::Dense(_) => Accumulator::F32(Vec::with_capacity(elements)),
            Placement::Blocks(format) => {
                Accumulator::Blocks { format, bytes: Vec::with_capacity(placement.bytes(elements) as usize) }
            }
        }
    }

    /// Appends whole rows of `width` values.
    pub fn push(&mut self, rows: &[f32], width: usize) -> Result<(), RuntimeError> {
        match self {
            Accumulator::F32(v) => v.extend_from_slice(rows),
            Accumulator::F16(v) => v.extend(rows.iter().map(|&x| f16::from_f32(x))),
            Accumulator::Bf16(v) => v.extend(rows.iter().map(|&x| bf16::from_f32(x))),
            Accumulator::Blocks { format, bytes } => quantize_ggml_rows(*format, rows, width, bytes)?,
        }
        Ok(())
    }

    /// The finished weight of `shape` on `device`.
    pub fn finish(self, shape: &[usize], device: &Device) -> Result<Weight, RuntimeError> {
        let dense = |t: Tensor| -> Result<Weight, RuntimeError> { Ok(Weight::Dense(t.to_device(device)?)) };
        match self {
            Accumulator::F32(v) => dense(Tensor::from_vec(v, shape, &Device::Cpu)?),
            Accumulator::F16(v) => dense(Tensor::from_vec(v, shape, &Device::Cpu)?),
            Accumulator::Bf16(v) => dense(Tensor::from_vec(v, shape, &Device::Cpu)?),
            Accumulator::Blocks { format, bytes } => {
                // On the CPU our kernels multiply the blocks where they are.
                if let (true, Some(kernel_format), [rows, cols]) =
                    (device.is_cpu(), Format::of(format), shape)
                {
                    let matrix = BlockMatrix::new(kernel_format, *rows, *cols, Storage::Owned(bytes))
                        .map_err(|e| RuntimeError::Unsupported { message: e.to_string() })?;
                    return Ok(Weight::Blocks(Arc::new(matrix)));
                }
                let storage = QStorage::from_data(Cow::Owned(bytes), device, format)?;
                let q = QTensor::new(storage, shape)?;
                Ok(Weight::Quantized(QMatMul::from_qtensor(q)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Module;

    #[test]
    fn blocks_of_rows_quantize_to_the_bytes_of_the_whole_tensor() {
        let (rows, width) = (200, 64);
        let values: Vec<f32> = (0..rows * width).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let whole = QTensor::quantize(
            &Tensor::from_slice(&values, (rows, width), &Device::Cpu).unwrap(),
            GgmlDType::Q4_0,
        )
        .unwrap();
        let mut acc = Accumulator::new(Placement::Blocks(GgmlDType::Q4_0), rows * width);
        for block in values.chunks(width * 70) {
            acc.push(block, width).unwrap();
        }
        let Accumulator::Blocks { bytes, .. } = &acc else { unreachable!("a block placement") };
        assert_eq!(bytes.as_slice(), &*whole.data().unwrap());
        let Weight::Blocks(m) = acc.finish(&[rows, width], &Device::Cpu).unwrap() else {
            panic!("blocks our kernels multiply")
        };
        let x = Tensor::ones((1, width), DType::F32, &Device::Cpu).unwrap();
        let expected: Vec<f32> = QMatMul::from_qtensor(whole)
            .unwrap()
            .forward(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let ours = m.matmul_t(&vec![1.0; width], 1);
        for (o, e) in ours.iter().zip(&expected) {
            assert!((o - e).abs() <= 1e-5 * (1.0 + e.abs()), "{o} vs candle's {e}");
        }
    }
}
