//! Streams a merge plan into a writer: one tensor at a time, in blocks of rows, computing in f32
//! and writing the requested dtype. Tensors that need no change and no conversion are copied
//! byte for byte. Pages of the memory-mapped inputs are released after use, so resident memory
//! stays at a few blocks whatever the model size.

use super::kernel::{RowDelta, transpose};
use super::plan::{MergePlan, Origin, PlannedTensor};
use crate::checkpoint::Adapter;
use crate::error::{CheckpointError, Error, ModelError};
use crate::model::dtype::{decode_parallel, encode_parallel, row_width};
use crate::model::safetensors::TensorEntry;
use crate::model::{ModelFolder, SafetensorsFile, TensorDtype, TensorInfo};

/// Elements per block: 16 MiB of f32.
pub const BLOCK_ELEMENTS: usize = 4 << 20;

pub struct MergeInputs<'a> {
    pub base: &'a ModelFolder,
    pub adapter: Option<&'a Adapter>,
    /// Let NaN and Inf through instead of refusing the tensor that holds them.
    pub allow_non_finite: bool,
}

impl MergeInputs<'_> {
    fn source(&self, origin: &Origin) -> (&SafetensorsFile, &TensorInfo) {
        match origin {
            Origin::Base(name) => self.base.tensor(name).expect("planned from the base's own tensors"),
            Origin::Adapter(name) => {
                let adapter = self.adapter.expect("adapter tensors are planned only with an adapter");
                (&adapter.file, adapter.file.get(name).expect("planned from the adapter's own tensors"))
            }
        }
    }

    fn adapter_f32(&self, name: &str) -> Result<(Vec<f32>, Vec<usize>), Error> {
        let adapter = self.adapter.expect("adapter tensors are planned only with an adapter");
        let info = adapter.file.get(name).expect("planned from the adapter's own tensors");
        let mut values = Vec::new();
        adapter.file.read_f32(info, &mut values).map_err(CheckpointError::from)?;
        self.check_finite(&adapter.file, name, &info.shape, 0, &values)?;
        Ok((values, info.shape.clone()))
    }

    /// Refuses the first NaN/Inf of `values` (elements of `tensor` from flat index `offset`).
    fn check_finite(
        &self,
        file: &SafetensorsFile,
        tensor: &str,
        shape: &[usize],
        offset: usize,
        values: &[f32],
    ) -> Result<(), Error> {
        if self.allow_non_finite {
            return Ok(());
        }
        match values.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(i) => Err(ModelError::NonFinite {
                path: file.path().to_path_buf(),
                tensor: tensor.to_string(),
                position: unravel(offset + i, shape),
                value: values[i],
            }
            .into()),
        }
    }
}

/// Chooses the stored dtype of each output tensor.
pub type DtypeFor<'a> = &'a dyn Fn(&PlannedTensor) -> TensorDtype;

/// The header entries of the merged tensors, each in the dtype `dtype_for` gives it.
pub fn output_entries(plan: &MergePlan, dtype_for: DtypeFor<'_>) -> Vec<TensorEntry> {
    plan.tensors.iter().map(|t| TensorEntry::new(t.name.clone(), dtype_for(t), t.shape.clone())).collect()
}

fn row_delta(inputs: &MergeInputs<'_>, t: &PlannedTensor) -> Result<Option<RowDelta>, Error> {
    let Some(lora) = &t.lora else { return Ok(None) };
    let (a, a_shape) = inputs.adapter_f32(&lora.lora_a)?;
    let (b, b_shape) = inputs.adapter_f32(&lora.lora_b)?;
    let rank = a_shape[0];
    let (coef, basis, cols) = if lora.transposed {
        // delta = (B @ A)^T: row i of the weight is sum_k A[k, i] * B[:, k].
        (transpose(&a, rank, a_shape[1]), transpose(&b, b_shape[0], rank), b_shape[0])
    } else {
        (b, a, a_shape[1])
    };
    let magnitude = match &lora.magnitude {
        Some(name) => Some(inputs.adapter_f32(name)?.0),
        None => None,
    };
    Ok(Some(RowDelta { rank, cols, coef, basis, scale: lora.scale, magnitude }))
}

/// The merged values of one tensor, handed over in blocks of whole rows (first row, values).
pub type RowsFn<'a> = &'a mut dyn FnMut(&PlannedTensor, usize, &[f32]) -> Result<(), Error>;

/// One tensor's merged rows: (first row, values).
type BlockFn<'a> = &'a mut dyn FnMut(usize, &[f32]) -> Result<(), Error>;

/// Merges `t` block by block in f32 and hands each block of rows to `rows`.
fn merged_rows(
    inputs: &MergeInputs<'_>,
    t: &PlannedTensor,
    values: &mut Vec<f32>,
    rows: BlockFn<'_>,
) -> Result<(), Error> {
    let (file, info) = inputs.source(&t.origin);
    let bytes = file.bytes(info);
    let delta = row_delta(inputs, t)?;
    let bias = match &t.bias {
        Some((name, scale)) => Some((inputs.adapter_f32(name)?.0, *scale)),
        None => None,
    };
    let cols = row_width(&t.shape);
    let rows_per_block = (BLOCK_ELEMENTS / cols).max(1);
    let width = info.dtype.size_in_bytes();
    let total_rows = info.numel() / cols;
    let mut row = 0;
    while row < total_rows {
        let n = rows_per_block.min(total_rows - row);
        let start = row * cols * width;
        let block = &bytes[start..start + n * cols * width];
        decode_parallel(info.dtype, block, values);
        inputs.check_finite(file, &info.name, &info.shape, row * cols, values)?;
        if let Some(delta) = &delta {
            delta.apply(values, row);
        }
        if let Some((lora_bias, scale)) = &bias {
            for (v, b) in values.iter_mut().zip(&lora_bias[row * cols..]) {
                *v += *b * scale;
            }
        }
        rows(row, values)?;
        file.release(info, start, block.len());
        row += n;
    }
    Ok(())
}

/// Streams every planned tensor, in plan order, through `rows` as merged f32 rows.
pub fn execute_rows(plan: &MergePlan, inputs: &MergeInputs<'_>, rows: RowsFn<'_>) -> Result<(), Error> {
    let mut values = Vec::new();
    for t in &plan.tensors {
        crate::hooks::check_stop(Some(&t.name))?;
        crate::hooks::point("export-tensor");
        merged_rows(inputs, t, &mut values, &mut |first, v| rows(t, first, v))?;
    }
    Ok(())
}

/// Streams every planned tensor, in plan order, through `write`.
pub fn execute(
    plan: &MergePlan,
    inputs: &MergeInputs<'_>,
    dtype_for: DtypeFor<'_>,
    write: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    progress: &indicatif::ProgressBar,
) -> Result<(), Error> {
    let mut values = Vec::new();
    let mut encoded = Vec::new();
    for t in &plan.tensors {
        crate::hooks::check_stop(Some(&t.name))?;
        crate::hooks::point("merge-tensor");
        let dtype = dtype_for(t);
        let (file, info) = inputs.source(&t.origin);
        if t.lora.is_none() && t.bias.is_none() && info.dtype == dtype {
            let bytes = file.bytes(info);
            for (i, block) in bytes.chunks(BLOCK_ELEMENTS * dtype.size_in_bytes()).enumerate() {
                if !inputs.allow_non_finite && dtype.first_non_finite(block).is_some() {
                    decode_parallel(dtype, block, &mut values);
                    inputs.check_finite(file, &info.name, &info.shape, i * BLOCK_ELEMENTS, &values)?;
                }
                write(block)?;
                file.release(info, i * BLOCK_ELEMENTS * dtype.size_in_bytes(), block.len());
                progress.inc(block.len() as u64);
            }
            continue;
        }
        merged_rows(inputs, t, &mut values, &mut |_, v| {
            encode_parallel(dtype, v, &mut encoded);
            write(&encoded)?;
            progress.inc(encoded.len() as u64);
            Ok(())
        })?;
    }
    Ok(())
}

/// The multi-index of flat element `index` in a row-major `shape`.
fn unravel(mut index: usize, shape: &[usize]) -> Vec<usize> {
    let mut position = vec![0; shape.len()];
    for (p, &dim) in position.iter_mut().zip(shape).rev() {
        *p = index % dim.max(1);
        index /= dim.max(1);
    }
    position
}
