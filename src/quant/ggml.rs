//! Rows quantized to ggml's block formats, for GGUF files and for loading: llama-quantize's
//! scale searches for q4_k and q6_k (see `q4k`, `q6k`), candle's quantizers for the others.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rayon::prelude::*;

use crate::error::RuntimeError;

/// Whether candle's kernels multiply rows of `width` values in `format`: its q4_1, q5_0 and
/// q5_1 dot products take an even number of 32-value blocks per row (llama.cpp's take any);
/// a tensor that fails this is multiplied dequantized instead.
pub fn candle_multiplies(format: GgmlDType, width: usize) -> bool {
    let paired = matches!(format, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1);
    !paired || (width / format.block_size()).is_multiple_of(2)
}

/// Rows quantized per task: enough work to amortise a task, small enough to spread.
const ROWS_PER_TASK: usize = 64;

/// Appends whole rows of `width` values quantized to `format` (ggml blocks run along a row), the
/// rows spread over the thread pool.
pub fn quantize_ggml_rows(
    format: GgmlDType,
    rows: &[f32],
    width: usize,
    out: &mut Vec<u8>,
) -> Result<(), RuntimeError> {
    // llama-quantize's scale searches rather than candle's older ones (see quant::q4k, q6k).
    if format == GgmlDType::Q4K {
        super::q4k::quantize(rows, out);
        return Ok(());
    }
    if format == GgmlDType::Q6K {
        super::q6k::quantize(rows, out);
        return Ok(());
    }
    let parts: Vec<Vec<u8>> = rows
        .par_chunks(width * ROWS_PER_TASK)
        .map(|chunk| -> Result<Vec<u8>, RuntimeError> {
            let t = Tensor::from_slice(chunk, (chunk.len() / width, width), &Device::Cpu)?;
            Ok(QTensor::quantize(&t, format)?.data()?.into_owned())
        })
        .collect::<Result<_, _>>()?;
    parts.iter().for_each(|p| out.extend_from_slice(p));
    Ok(())
}
