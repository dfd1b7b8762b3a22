//! Matrix products on ggml's block formats, in the blocks: the activations are quantized to
//! 8 bits per row (as ggml does), each weight row is dotted with them by an integer kernel
//! (AVX2 when the CPU has it, detected once; the portable definition otherwise), and the
//! rows are spread over the thread pool. The weights stay where they are: in the GGUF file's
//! memory map or in the loader's buffer, never repacked or copied.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod formats;
pub mod panel;
pub mod pool;
mod scalar;

use std::sync::{Arc, Mutex, OnceLock};

use pool::Pool;

use crate::gguf_constants::type_name;

pub use formats::{Activation, Format};

/// The bytes of a matrix: owned, or a range of a mapped file.
pub enum Storage {
    Owned(Vec<u8>),
    Mapped { map: Arc<memmap2::Mmap>, start: usize, len: usize },
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Owned(v) => v,
            Storage::Mapped { map, start, len } => &map[*start..*start + *len],
        }
    }
}

/// A [rows, cols] matrix in a block format, row-major, each row a whole number of blocks.
pub struct BlockMatrix {
    format: Format,
    rows: usize,
    cols: usize,
    storage: Storage,
}

/// Why bytes cannot be read as a block matrix.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LayoutError(String);

impl BlockMatrix {
    pub fn new(format: Format, rows: usize, cols: usize, storage: Storage) -> Result<Self, LayoutError> {
        if !cols.is_multiple_of(format.block_values()) {
            return Err(LayoutError(format!(
                "rows of {cols} values are not a whole number of {} blocks of {}",
                type_name(format.ggml()),
                format.block_values()
            )));
        }
        let expected = rows * cols / format.block_values() * format.block_bytes();
        let m = BlockMatrix { format, rows, cols, storage };
        if m.storage.bytes().len() != expected {
            return Err(LayoutError(format!(
                "{rows} × {cols} in {} takes {expected} bytes, not {}",
                type_name(format.ggml()),
                m.storage.bytes().len()
            )));
        }
        Ok(m)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn blocks_per_row(&self) -> usize {
        self.cols / self.format.block_values()
    }

    fn row_bytes(&self) -> usize {
        self.blocks_per_row() * self.format.block_bytes()
    }

    /// Row `i` as f32 (an embedding lookup).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        let rb = self.row_bytes();
        formats::dequantize_row(self.format, &self.storage.bytes()[i * rb..(i + 1) * rb], out);
    }

    /// `x @ selfᵀ` for `x` of [n, cols] (row-major): [n, rows].
    pub fn matmul_t(&self, x: &[f32], n: usize) -> Vec<f32> {
        let activation = self.format.activation();
        let xb = self.cols / activation.block_values() * activation.block_bytes();
        let pool = Pool::global();
        let quantized = quantize_rows(activation, x, self.cols, xb, pool);
        let (rb, blocks, kernels) = (self.row_bytes(), self.blocks_per_row(), kernels(self.format));
        let weights = self.storage.bytes();
        // A few tasks per thread: few enough that scheduling costs nothing beside the rows,
        // enough to even out a thread that was preempted.
        let per_task = self.rows.div_ceil(pool.threads() * 4).max(1);
        if n == 1 {
            let mut out = vec![0f32; self.rows];
            let parts: Vec<Mutex<&mut [f32]>> = out.chunks_mut(per_task).map(Mutex::new).collect();
            pool.run(parts.len(), &|t| {
                let mut part = parts[t].lock().unwrap_or_else(|p| p.into_inner());
                kernels.rows(weights, rb, t * per_task, &quantized, blocks, &mut part);
            });
            drop(parts);
            return out;
        }
        // A task's weight rows meet every activation row while they are in cache.
        let mut parts = vec![0f32; self.rows * n];
        let per_task = per_task.min(64);
        let tasks: Vec<Mutex<&mut [f32]>> = parts.chunks_mut(per_task * n).map(Mutex::new).collect();
        let panel = panel_available().then(|| panel::ExpandedActivations::of(activation, &quantized, n));
        pool.run(tasks.len(), &|t| {
            let mut part = tasks[t].lock().unwrap_or_else(|p| p.into_inner());
            let rows = part.len() / n;
            match &panel {
                Some(x) => {
                    let w = panel::ExpandedRows::of(self.format, weights, self.cols, t * per_task, rows);
                    panel_rows(&w, x, &mut part);
                }
                None => {
                    for (j, out) in part.chunks_exact_mut(rows).enumerate() {
                        kernels.rows(
                            weights,
                            rb,
                            t * per_task,
                            &quantized[j * xb..(j + 1) * xb],
                            blocks,
                            out,
                        );
                    }
                }
            }
        });
        drop(tasks);
        // parts: per task, [n, rows of the task]; out: [n, rows].
        let mut out = vec![0f32; n * self.rows];
        for (t, part) in parts.chunks(per_task * n).enumerate() {
            let rows = part.len() / n;
            for (j, values) in part.chunks_exact(rows).enumerate() {
                out[j * self.rows + t * per_task..][..rows].copy_from_slice(values);
            }
        }
        out
    }
}

/// The rows of `x` ([n, cols]) quantized to `activation` (`row_bytes` each), a prompt's rows
/// spread over the pool.
fn quantize_rows(activation: Activation, x: &[f32], cols: usize, row_bytes: usize, pool: &Pool) -> Vec<u8> {
    let n = x.len() / cols.max(1);
    if n < 8 {
        let mut quantized = Vec::with_capacity(n * row_bytes);
        x.chunks_exact(cols).for_each(|row| activation.quantize(row, &mut quantized));
        return quantized;
    }
    let per_task = n.div_ceil(pool.threads() * 2);
    let parts: Vec<Mutex<Vec<u8>>> = (0..n.div_ceil(per_task)).map(|_| Mutex::new(Vec::new())).collect();
    pool.run(parts.len(), &|t| {
        let mut part = parts[t].lock().unwrap_or_else(|p| p.into_inner());
        let rows = &x[t * per_task * cols..((t + 1) * per_task).min(n) * cols];
        rows.chunks_exact(cols).for_each(|row| activation.quantize(row, &mut part));
    });
    parts.into_iter().flat_map(|p| p.into_inner().unwrap_or_else(|p| p.into_inner())).collect()
}

/// Dot products of one activation row with `R` consecutive weight rows (`stride` bytes apart):
/// independent accumulators keep the FMA units busy and the activation block is loaded once.
type DotRows<const R: usize> = fn(&[u8], usize, &[u8], usize) -> [f32; R];

/// The kernels for one format on this CPU: 4 rows at a time, and 1 for the rest.
#[derive(Clone, Copy)]
struct Kernels {
    four: DotRows<4>,
    one: DotRows<1>,
}

/// The kernels for `format` on this CPU.
fn kernels(format: Format) -> Kernels {
    static SIMD: OnceLock<bool> = OnceLock::new();
    #[cfg(target_arch = "x86_64")]
    if *SIMD.get_or_init(simd_available) {
        // Safety: handed out only once `avx2::available()` said yes; every caller passes whole
        // blocks (`BlockMatrix::new` checked the layout).
        macro_rules! simd {
            ($f:ident) => {
                Kernels {
                    four: |w, s, x, b| unsafe { avx2::$f::<4>(w, s, x, b) },
                    one: |w, s, x, b| unsafe { avx2::$f::<1>(w, s, x, b) },
                }
            };
        }
        return match format {
            Format::Q8_0 => simd!(dot_q8_0),
            Format::Q4_0 => simd!(dot_q4_0),
            Format::Q5_0 => simd!(dot_q5_0),
            Format::Q4K => simd!(dot_q4k),
            Format::Q6K => simd!(dot_q6k),
        };
    }
    let _ = &SIMD;
    portable(format)
}

/// The portable definition, row by row.
fn portable(format: Format) -> Kernels {
    macro_rules! rows {
        ($f:path) => {
            Kernels {
                four: |w, s, x, b| std::array::from_fn(|r| $f(&w[r * s..], x, b)),
                one: |w, _, x, b| [$f(w, x, b)],
            }
        };
    }
    match format {
        Format::Q8_0 => rows!(scalar::dot_q8_0),
        Format::Q4_0 => rows!(scalar::dot_q4_0),
        Format::Q5_0 => rows!(scalar::dot_q5_0),
        Format::Q4K => rows!(scalar::dot_q4k),
        Format::Q6K => rows!(scalar::dot_q6k),
    }
}

impl Kernels {
    /// `out[i]` = row `first + i` of `weights` · `x`.
    fn rows(self, weights: &[u8], rb: usize, first: usize, x: &[u8], blocks: usize, out: &mut [f32]) {
        let mut groups = out.chunks_exact_mut(4);
        let mut r = first;
        for group in &mut groups {
            group.copy_from_slice(&(self.four)(&weights[r * rb..], rb, x, blocks));
            r += 4;
        }
        for o in groups.into_remainder() {
            *o = (self.one)(&weights[r * rb..], rb, x, blocks)[0];
            r += 1;
        }
    }
}

/// Whether the panel kernel (AVX-512 VNNI) runs here.
fn panel_available() -> bool {
    static PANEL: OnceLock<bool> = OnceLock::new();
    *PANEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        return simd_available() && avx512::available();
        #[cfg(not(target_arch = "x86_64"))]
        false
    })
}

/// `out` ([activation rows, weight rows]) = every activation row of `x` · every row of `w`,
/// 4 prompt rows at a time (each weight row loaded once for 4: the loads from L2 bound 4 × 2,
/// q4_k 2x, q8_0 1.1x faster on a 3072 × 1024 × 128 product), then 2, then 1.
fn panel_rows(w: &panel::ExpandedRows, x: &panel::ExpandedActivations, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut j = 0;
        while j + 4 <= x.rows {
            panel_columns::<4>(w, x, j, out);
            j += 4;
        }
        if j + 2 <= x.rows {
            panel_columns::<2>(w, x, j, out);
            j += 2;
        }
        if j < x.rows {
            panel_columns::<1>(w, x, j, out);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the panel kernel is only handed out on x86-64: {} {} {}", w.rows, x.rows, out.len());
}

/// Prompt rows `j..j + C` against every row of `w`: 4 weight rows at a time, then 1.
#[cfg(target_arch = "x86_64")]
fn panel_columns<const C: usize>(
    w: &panel::ExpandedRows,
    x: &panel::ExpandedActivations,
    j: usize,
    out: &mut [f32],
) {
    let rows = w.rows;
    let mut r = 0;
    while r + 4 <= rows {
        // Safety: `panel_available` checked the CPU; rows r..r+4 and j..j+C exist.
        let v = unsafe { avx512::panel::<4, C>(w, r, x, j) };
        (0..4).for_each(|i| (0..C).for_each(|k| out[(j + k) * rows + r + i] = v[i][k]));
        r += 4;
    }
    while r < rows {
        let v = unsafe { avx512::panel::<1, C>(w, r, x, j) };
        (0..C).for_each(|k| out[(j + k) * rows + r] = v[0][k]);
        r += 1;
    }
}

/// Whether the SIMD kernels run here (`MODEL_EXPORT_PORTABLE_KERNELS=1` turns them off, to
/// compare).
fn simd_available() -> bool {
    if std::env::var_os("MODEL_EXPORT_PORTABLE_KERNELS").is_some_and(|v| v == "1") {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    return avx2::available();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
mod tests {
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Module, Tensor};

    use super::*;

    const FORMATS: [Format; 5] = [Format::Q8_0, Format::Q4_0, Format::Q5_0, Format::Q4K, Format::Q6K];

    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
            })
            .collect()
    }

    /// Rows quantized by candle (ggml's encoders), as a GGUF file holds them.
    fn blocks(format: Format, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let w = values(rows * cols, seed);
        let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, format.ggml()).unwrap();
        let dequantized = q.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        (q.data().unwrap().into_owned(), dequantized)
    }

    #[test]
    fn rows_dequantize_exactly_as_ggml() {
        for format in FORMATS {
            let (bytes, expected) = blocks(format, 3, 512, 7);
            let m = BlockMatrix::new(format, 3, 512, Storage::Owned(bytes)).unwrap();
            let mut row = vec![0f32; 512];
            for i in 0..3 {
                m.dequantize_row(i, &mut row);
                assert_eq!(row, expected[i * 512..(i + 1) * 512], "{format:?} row {i}");
            }
        }
    }

    #[test]
    fn simd_kernels_equal_the_portable_definition_bit_for_bit() {
        if !simd_available() {
            eprintln!("no SIMD kernels on this CPU: nothing to compare");
            return;
        }
        for format in FORMATS {
            for seed in 0..20 {
                // 5 rows: one group of 4 and one row on its own.
                let (rows, cols) = (5, 512 * (1 + seed as usize % 3));
                let (w, _) = blocks(format, rows, cols, seed);
                let mut x = values(cols, seed + 100);
                // Extremes and zeros the quantizers must handle.
                x[0] = 40.0;
                x[1] = 0.0;
                if seed % 5 == 0 {
                    x.iter_mut().for_each(|v| *v = 0.0);
                }
                let mut q = Vec::new();
                format.activation().quantize(&x, &mut q);
                let (blocks, rb) =
                    (cols / format.block_values(), cols / format.block_values() * format.block_bytes());
                let (mut simd, mut reference) = (vec![0f32; rows], vec![0f32; rows]);
                kernels(format).rows(&w, rb, 0, &q, blocks, &mut simd);
                portable(format).rows(&w, rb, 0, &q, blocks, &mut reference);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&simd),
                    bits(&reference),
                    "{format:?} seed {seed}: {simd:?} vs {reference:?}"
                );
            }
        }
    }

    #[test]
    fn the_panel_kernel_equals_its_definition_bit_for_bit() {
        if !panel_available() {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to compare");
            return;
        }
        // 6 weight rows (4 + 2 at the edge) × 7 activation rows (4 + 2 + 1): every kernel shape.
        let (rows, n, cols) = (6, 7, 768);
        for format in FORMATS {
            let (bytes, _) = blocks(format, rows, cols, 3);
            let mut x = values(n * cols, 9);
            x[5] = -30.0;
            let mut q = Vec::new();
            x.chunks_exact(cols).for_each(|row| format.activation().quantize(row, &mut q));
            let w = panel::ExpandedRows::of(format, &bytes, cols, 0, rows);
            let a = panel::ExpandedActivations::of(format.activation(), &q, n);
            let mut simd = vec![0f32; n * rows];
            panel_rows(&w, &a, &mut simd);
            for j in 0..n {
                for r in 0..rows {
                    let reference = panel::dot(&w, r, &a, j);
                    assert_eq!(simd[j * rows + r].to_bits(), reference.to_bits(), "{format:?} [{j},{r}]");
                }
            }
        }
    }

    #[test]
    fn products_match_candles_kernels_and_the_dequantized_matrix() {
        let (rows, cols, n) = (37, 768, 3);
        for format in FORMATS {
            let (bytes, dequantized) = blocks(format, rows, cols, 11);
            let x = values(n * cols, 5);
            let ours =
                BlockMatrix::new(format, rows, cols, Storage::Owned(bytes.clone())).unwrap().matmul_t(&x, n);
            let t = Tensor::from_vec(x.clone(), (n, cols), &Device::Cpu).unwrap();
            let storage = candle_core::quantized::QStorage::from_data(
                std::borrow::Cow::Owned(bytes),
                &Device::Cpu,
                format.ggml(),
            )
            .unwrap();
            let q = QTensor::new(storage, (rows, cols)).unwrap();
            let candle: Vec<f32> = candle_core::quantized::QMatMul::from_qtensor(q)
                .unwrap()
                .forward(&t)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            // The activations as the kernels see them: 8-bit codes times their block's scale.
            let activation = format.activation();
            let mut codes = Vec::new();
            activation.quantize(&x, &mut codes);
            let seen: Vec<f64> = codes
                .chunks_exact(activation.block_bytes())
                .flat_map(|b| {
                    let (d, q) = match activation {
                        Activation::Q8_0 => (f64::from(formats::half(b)), &b[2..34]),
                        Activation::Q8K => {
                            (f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])), &b[4..260])
                        }
                    };
                    q.iter().map(move |&q| d * f64::from(q as i8)).collect::<Vec<_>>()
                })
                .collect();
            for j in 0..n {
                for r in 0..rows {
                    let terms = (0..cols).map(|c| seen[j * cols + c] * f64::from(dequantized[r * cols + c]));
                    let (exact, magnitude) = terms.fold((0.0, 0.0), |(s, m), t| (s + t, m + t.abs()));
                    let (o, c) = (ours[j * rows + r], candle[j * rows + r]);
                    // Only f32 rounding separates them from the exact product of what they multiply.
                    assert!(
                        (f64::from(o) - exact).abs() <= 1e-5 * magnitude,
                        "{format:?} [{j},{r}]: {o} vs {exact}"
                    );
                    assert!(
                        (o - c).abs() <= 1e-4 * (1.0 + c.abs()),
                        "{format:?} [{j},{r}]: {o} vs candle {c}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_wrong_layout_is_refused() {
        let message =
            |r: Result<BlockMatrix, LayoutError>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            message(BlockMatrix::new(Format::Q4K, 2, 100, Storage::Owned(vec![0; 10]))),
            "rows of 100 values are not a whole number of q4_k blocks of 256"
        );
        assert_eq!(
            message(BlockMatrix::new(Format::Q8_0, 2, 64, Storage::Owned(vec![0; 10]))),
            "2 × 64 in q8_0 takes 136 bytes, not 10"
        );
    }
}
