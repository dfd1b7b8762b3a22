//! How each merged tensor is stored in an ONNX export and the writer that stores it: floats
//! in f32 or f16, matrices quantized (int8 per channel for `DequantizeLinear`, 4/8-bit blocks
//! for `MatMulNBits`). Tensors arrive as blocks of merged f32 rows; codes are written as they
//! come, scales and zero points (a small fraction) follow each tensor. Every tensor's storage
//! error goes into the quantization report.

use rayon::prelude::*;

use super::builder::Elem;
use super::data::{InitializerSink, PlannedInitializer};
use crate::error::{Error, RuntimeError};
use crate::merge::plan::PlannedTensor;
use crate::model::DecoderDesc;
use crate::model::TensorDtype;
use crate::model::dtype::encode_into;
use crate::model::dtype::encode_parallel;
use crate::model::dtype::row_width;
use crate::quant::report::{QuantReportBuilder, TensorGroup};
use crate::quant::{ErrorSums, Quantized, Scheme, quantize_rows};

/// How one merged tensor is stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Storage {
    F32,
    F16,
    Quantized(Scheme),
}

impl Storage {
    pub fn label(self) -> String {
        match self {
            Storage::F32 => "f32".into(),
            Storage::F16 => "f16".into(),
            Storage::Quantized(scheme) => scheme_label(scheme),
        }
    }
}

pub fn scheme_label(scheme: Scheme) -> String {
    match scheme {
        Scheme::Int8PerChannel => "int8-per-channel".into(),
        Scheme::Blocks { bits, block, symmetric } => {
            format!("int{bits}-block{block}-{}", if symmetric { "symmetric" } else { "asymmetric" })
        }
    }
}

/// How the graph reads a weight.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightForm {
    /// A float initializer of the weight's own name, laid out as stored ([out, in]).
    Float(Elem),
    /// A float initializer of the weight's own name, transposed to [in, out] so the projection is
    /// a plain `MatMul`, the form ONNX Runtime's quantizers and fusions look for.
    Transposed(Elem),
    /// `DequantizeLinear(codes, scale, axis 0)`.
    Int8 { codes: String, scale: String },
    /// com.microsoft `MatMulNBits` inputs and attributes.
    Blocks { codes: String, scales: String, zero_points: String, bits: u8, block: usize, n: usize, k: usize },
}

/// The initializers a tensor becomes, in the order they are written. A `transposed` float
/// matrix is stored [in, out] (see [`WeightForm::Transposed`]).
pub fn plan_initializers(
    t: &PlannedTensor,
    storage: Storage,
    transposed: bool,
) -> (Vec<PlannedInitializer>, WeightForm) {
    let dims: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
    let numel: u64 = t.shape.iter().product::<usize>() as u64;
    let float = |elem: Elem, width: u64| {
        let (dims, form) = if transposed {
            (dims.iter().rev().copied().collect(), WeightForm::Transposed(elem))
        } else {
            (dims.clone(), WeightForm::Float(elem))
        };
        (vec![PlannedInitializer { name: t.name.clone(), elem, dims, bytes: numel * width }], form)
    };
    match storage {
        Storage::F32 => float(Elem::F32, 4),
        Storage::F16 => float(Elem::F16, 2),
        Storage::Quantized(scheme) => {
            let (rows, cols) = (t.shape[0], row_width(&t.shape));
            let groups = scheme.groups_per_row(cols);
            match scheme {
                Scheme::Int8PerChannel => {
                    let (codes, scale) = (format!("{}_quantized", t.name), format!("{}_scale", t.name));
                    let planned = vec![
                        PlannedInitializer { name: codes.clone(), elem: Elem::I8, dims, bytes: numel },
                        PlannedInitializer {
                            name: scale.clone(),
                            elem: Elem::F32,
                            dims: vec![rows as i64],
                            bytes: 4 * rows as u64,
                        },
                    ];
                    (planned, WeightForm::Int8 { codes, scale })
                }
                Scheme::Blocks { bits, block, .. } => {
                    let codes = format!("{}_Q{bits}", t.name);
                    let scales = format!("{}_scales", t.name);
                    let blob = scheme.code_bytes_per_row(cols) / groups;
                    let mut planned = vec![
                        PlannedInitializer {
                            name: codes.clone(),
                            elem: Elem::U8,
                            dims: vec![rows as i64, groups as i64, blob as i64],
                            bytes: (rows * groups * blob) as u64,
                        },
                        // Scales and zero points [rows, per row]: the layout MatMulNBits and
                        // GatherBlockQuantized both read, so a tied table serves both.
                        PlannedInitializer {
                            name: scales.clone(),
                            elem: Elem::F32,
                            dims: vec![rows as i64, groups as i64],
                            bytes: (4 * rows * groups) as u64,
                        },
                    ];
                    let zero_points = format!("{}_zero_points", t.name);
                    let per_row = scheme.zero_point_bytes_per_row(cols);
                    planned.push(PlannedInitializer {
                        name: zero_points.clone(),
                        elem: Elem::U8,
                        dims: vec![rows as i64, per_row as i64],
                        bytes: (rows * per_row) as u64,
                    });
                    (
                        planned,
                        WeightForm::Blocks { codes, scales, zero_points, bits, block, n: rows, k: cols },
                    )
                }
            }
        }
    }
}

/// Writes merged rows into the initializer sink in the planned order.
pub struct WeightWriter<'a> {
    sink: &'a mut InitializerSink,
    path: &'a std::path::Path,
    report: QuantReportBuilder,
    decoder: &'a DecoderDesc,
    encoded: Vec<u8>,
    quantized: Quantized,
    sums: ErrorSums,
    bytes: u64,
    /// The tensor being transposed, encoded, [in, out], written once its last row arrives.
    pending: Vec<u8>,
}

/// Encodes `values` as f16 into `out` in parallel, returning the rounding error.
fn encode_f16(values: &[f32], out: &mut Vec<u8>) -> ErrorSums {
    const CHUNK: usize = 1 << 16;
    out.resize(values.len() * 2, 0);
    ErrorSums::in_order(values.par_chunks(CHUNK).zip(out.par_chunks_mut(2 * CHUNK)).map(|(v, bytes)| {
        encode_into(TensorDtype::F16, v, bytes);
        let mut sums = ErrorSums::default();
        for (&w, b) in v.iter().zip(bytes.chunks_exact(2)) {
            sums.push(w, half::f16::from_le_bytes([b[0], b[1]]).to_f32());
        }
        sums
    }))
}

impl<'a> WeightWriter<'a> {
    /// `path` names the file in write errors.
    pub fn new(sink: &'a mut InitializerSink, path: &'a std::path::Path, decoder: &'a DecoderDesc) -> Self {
        Self {
            sink,
            path,
            decoder,
            report: QuantReportBuilder::default(),
            encoded: Vec::new(),
            quantized: Quantized::default(),
            sums: ErrorSums::default(),
            bytes: 0,
            pending: Vec::new(),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.bytes += bytes.len() as u64;
        self.sink.write(bytes).map_err(|e| Error::write(self.path, e))
    }

    /// One block of rows of `t`, starting at `first_row`. `progress` counts bytes written. A
    /// `transposed` tensor is gathered whole, encoded and laid out [in, out], and written when
    /// its last row arrives (so it is held once, in its stored width).
    pub fn rows(
        &mut self,
        t: &PlannedTensor,
        storage: Storage,
        transposed: bool,
        first_row: usize,
        values: &[f32],
        progress: &indicatif::ProgressBar,
    ) -> Result<(), Error> {
        let before = self.bytes;
        let cols = row_width(&t.shape);
        let rows = t.shape.first().copied().unwrap_or(1).max(1);
        let rows_done = first_row + values.len() / cols;
        if transposed {
            let encoded = self.encode_float(storage, values);
            let width = if storage == Storage::F16 { 2 } else { 4 };
            if first_row == 0 {
                self.pending = vec![0; rows * cols * width];
            }
            // Column c of the block lands in row c of the transposed tensor, at `first_row`.
            let block = values.len() / cols;
            self.pending.par_chunks_mut(rows * width).enumerate().for_each(|(c, out_row)| {
                let out = &mut out_row[first_row * width..(first_row + block) * width];
                for (r, dst) in out.chunks_exact_mut(width).enumerate() {
                    let at = (r * cols + c) * width;
                    dst.copy_from_slice(&encoded[at..at + width]);
                }
            });
            self.encoded = encoded;
            if rows_done == rows {
                let pending = std::mem::take(&mut self.pending);
                self.write(&pending)?;
            }
        } else {
            self.encode(t, storage, first_row, values)?;
        }
        progress.inc(self.bytes - before);
        if rows_done == rows || t.shape.len() < 2 {
            self.finish_tensor(t, storage)?;
        }
        Ok(())
    }

    /// `values` encoded as f32 or f16 (rounding errors counted), in the writer's reused buffer.
    fn encode_float(&mut self, storage: Storage, values: &[f32]) -> Vec<u8> {
        let mut encoded = std::mem::take(&mut self.encoded);
        if storage == Storage::F16 {
            self.sums.add(encode_f16(values, &mut encoded));
        } else {
            encode_parallel(TensorDtype::F32, values, &mut encoded);
        }
        encoded
    }

    /// Encodes rows of `t` from `first_row` in `storage` and writes them.
    fn encode(
        &mut self,
        t: &PlannedTensor,
        storage: Storage,
        first_row: usize,
        values: &[f32],
    ) -> Result<(), Error> {
        match storage {
            Storage::F32 | Storage::F16 => {
                let encoded = self.encode_float(storage, values);
                self.write(&encoded)?;
                self.encoded = encoded;
            }
            Storage::Quantized(scheme) => {
                let cols = row_width(&t.shape);
                let sums = quantize_rows(scheme, &t.name, values, cols, first_row, &mut self.quantized)
                    .map_err(|e| RuntimeError::Unsupported { message: e.to_string() })?;
                self.sums.add(sums);
                let codes = std::mem::take(&mut self.quantized.codes);
                self.write(&codes)?;
                self.quantized.codes = codes;
                self.quantized.codes.clear();
            }
        }
        Ok(())
    }

    fn finish_tensor(&mut self, t: &PlannedTensor, storage: Storage) -> Result<(), Error> {
        if let Storage::Quantized(_) = storage {
            let scales: Vec<u8> = self.quantized.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
            let zeros = std::mem::take(&mut self.quantized.zero_points);
            self.write(&scales)?;
            self.write(&zeros)?;
            self.quantized.clear();
        }
        let error = match storage {
            Storage::F32 => None,
            _ => Some(std::mem::take(&mut self.sums)),
        };
        let group = TensorGroup::of(self.decoder.tensor(&t.name).map(|d| d.role));
        self.report.push(&t.name, group, &t.shape, &storage.label(), std::mem::take(&mut self.bytes), error);
        Ok(())
    }

    /// An initializer written as is (the RoPE tables), counted in the report.
    pub fn raw(&mut self, name: &str, shape: &[usize], bytes: &[u8]) -> Result<(), Error> {
        self.write(bytes)?;
        self.report.push(name, TensorGroup::RopeTables, shape, "f32", std::mem::take(&mut self.bytes), None);
        Ok(())
    }

    pub fn into_report(self) -> QuantReportBuilder {
        self.report
    }
}
