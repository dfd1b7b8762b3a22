//! Grouped-query attention on the CPU over a key/value cache in plain buffers: each step
//! writes only its own tokens' keys and values, and every query head reads its kv head's rows
//! in place (no repeated heads, no transposed copies, no gemm call for a [rep, d] × [d, past]
//! product). The heads are spread over the kernels' thread pool.
//!
//! `softmax(q kᵀ · scale + mask) v` per head, as transformers' eager attention computes it:
//! the scores in f32, the row's maximum subtracted before `exp`. A quantized model keeps its
//! keys and values in f16, as llama.cpp does (half the cache's memory); others in f32.

use std::sync::Mutex;

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::kernels::pool::Pool;

/// Cached values in f32 or f16.
enum Buffer {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl Default for Buffer {
    fn default() -> Self {
        Buffer::F32(Vec::new())
    }
}

impl Buffer {
    fn zeros(half: bool, len: usize) -> Self {
        if half { Buffer::F16(vec![f16::ZERO; len]) } else { Buffer::F32(vec![0.0; len]) }
    }

    /// `len` values at `from` of `self` copied to `to` of `into` (the same kind).
    fn copy_to(&self, from: usize, into: &mut Buffer, to: usize, len: usize) {
        match (self, into) {
            (Buffer::F32(a), Buffer::F32(b)) => b[to..to + len].copy_from_slice(&a[from..from + len]),
            (Buffer::F16(a), Buffer::F16(b)) => b[to..to + len].copy_from_slice(&a[from..from + len]),
            // Both are made by `zeros` with the cache's one precision.
            _ => unreachable!("a cache keeps one precision"),
        }
    }

    fn write(&mut self, at: usize, values: &[f32]) {
        match self {
            Buffer::F32(b) => b[at..at + values.len()].copy_from_slice(values),
            Buffer::F16(b) => b[at..at + values.len()].convert_from_f32_slice(values),
        }
    }

    /// `len` values at `at` in f32: borrowed, or converted into `scratch`.
    fn read<'a>(&'a self, at: usize, len: usize, scratch: &'a mut Vec<f32>) -> &'a [f32] {
        match self {
            Buffer::F32(b) => &b[at..at + len],
            Buffer::F16(b) => {
                scratch.resize(len, 0.0);
                b[at..at + len].convert_to_f32_slice(scratch);
                scratch
            }
        }
    }
}

/// The positions a cache of `current` grows to when it must hold `needed`: a quarter more, in
/// steps of 64 positions (amortised copies, at most ~25% unused; doubling left a 160-token
/// conversation a 256-token cache).
pub fn capacity_for(current: usize, needed: usize) -> usize {
    needed.max(current + current / 4).next_multiple_of(64)
}

/// One layer's keys and values, [batch, kv_heads, capacity, head_dim] each.
#[derive(Default)]
pub struct LayerCache {
    keys: Buffer,
    values: Buffer,
    capacity: usize,
}

/// The attention's shape.
#[derive(Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl LayerCache {
    /// Writes `new` tokens' keys and values ([batch, kv_heads, new, head_dim]) after `past`,
    /// in f16 when `half` (fixed by the first write).
    pub fn store(&mut self, shape: Shape, past: usize, keys: &[f32], values: &[f32], half: bool) {
        let Shape { batch, kv_heads, head_dim: d, .. } = shape;
        let new = keys.len() / (batch * kv_heads * d).max(1);
        let needed = past + new;
        if self.capacity < needed {
            let capacity = capacity_for(self.capacity, needed);
            let half = if self.capacity == 0 { half } else { matches!(self.keys, Buffer::F16(_)) };
            let grow = |old: &Buffer| {
                let mut grown = Buffer::zeros(half, batch * kv_heads * capacity * d);
                if past > 0 {
                    for head in 0..batch * kv_heads {
                        old.copy_to(head * self.capacity * d, &mut grown, head * capacity * d, past * d);
                    }
                }
                grown
            };
            self.keys = grow(&self.keys);
            self.values = grow(&self.values);
            self.capacity = capacity;
        }
        for head in 0..batch * kv_heads {
            let at = (head * self.capacity + past) * d;
            self.keys.write(at, &keys[head * new * d..(head + 1) * new * d]);
            self.values.write(at, &values[head * new * d..(head + 1) * new * d]);
        }
    }

    /// Attention of `queries` ([batch, heads, seq, head_dim]) over the first `total` cached
    /// positions, with the additive `mask` ([batch, seq, total]): [batch, seq, heads, head_dim].
    pub fn attend(&self, shape: Shape, total: usize, queries: &[f32], mask: &[f32], scale: f32) -> Vec<f32> {
        let Shape { batch, heads, kv_heads, head_dim: d } = shape;
        let seq = queries.len() / (batch * heads * d).max(1);
        let rep = heads / kv_heads.max(1);
        let mut out = vec![0f32; batch * seq * heads * d];
        // One task per (batch row, kv head): its keys and values read (converted from f16) once
        // for the `rep` query heads that share them; out[b, i, n, :] for each such head n.
        let rows: Vec<Mutex<Vec<f32>>> =
            (0..batch * heads).map(|_| Mutex::new(vec![0f32; seq * d])).collect();
        Pool::global().run(batch * kv_heads, &|task| {
            let (b, g) = (task / kv_heads, task % kv_heads);
            let kv = (b * kv_heads + g) * self.capacity * d;
            let (mut key_scratch, mut value_scratch) = (Vec::new(), Vec::new());
            let keys = self.keys.read(kv, total * d, &mut key_scratch);
            let values = self.values.read(kv, total * d, &mut value_scratch);
            let mut scores = vec![0f32; total];
            for n in g * rep..(g + 1) * rep {
                let mut result = rows[b * heads + n].lock().unwrap_or_else(|p| p.into_inner());
                for i in 0..seq {
                    let q = &queries[((b * heads + n) * seq + i) * d..][..d];
                    let row_mask = &mask[(b * seq + i) * total..][..total];
                    for ((score, key), &m) in scores.iter_mut().zip(keys.chunks_exact(d)).zip(row_mask) {
                        // A masked key's score is the fill itself (a product is far below its
                        // ulp): the dot product is skipped, and so is the key's zero weight below.
                        *score = if m == f32::MIN { f32::MIN } else { dot(q, key) * scale + m };
                    }
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = 0f32;
                    for score in &mut scores {
                        *score = (*score - max).exp();
                        sum += *score;
                    }
                    let weighted = &mut result[i * d..(i + 1) * d];
                    weighted.fill(0.0);
                    for (&p, value) in scores.iter().zip(values.chunks_exact(d)) {
                        if p == 0.0 {
                            continue;
                        }
                        let p = p / sum;
                        for (w, &v) in weighted.iter_mut().zip(value) {
                            *w += p * v;
                        }
                    }
                }
            }
        });
        for (task, row) in rows.into_iter().enumerate() {
            let (b, n) = (task / heads, task % heads);
            let row = row.into_inner().unwrap_or_else(|p| p.into_inner());
            for (i, values) in row.chunks_exact(d).enumerate() {
                out[((b * seq + i) * heads + n) * d..][..d].copy_from_slice(values);
            }
        }
        out
    }
}

/// A dot product in 8 independent partial sums, which the compiler turns into SIMD lanes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut partial = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for k in 0..8 {
            partial[k] += x[k] * y[k];
        }
    }
    partial.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook computation, head by head, in f64.
    fn naive(shape: Shape, keys: &[f32], values: &[f32], q: &[f32], mask: &[f32], scale: f32) -> Vec<f64> {
        let Shape { batch, heads, kv_heads, head_dim: d } = shape;
        let total = keys.len() / (batch * kv_heads * d);
        let seq = q.len() / (batch * heads * d);
        let mut out = vec![0f64; batch * seq * heads * d];
        for b in 0..batch {
            for n in 0..heads {
                let g = n / (heads / kv_heads);
                for i in 0..seq {
                    let scores: Vec<f64> = (0..total)
                        .map(|j| {
                            let s: f64 = (0..d)
                                .map(|c| {
                                    f64::from(q[((b * heads + n) * seq + i) * d + c])
                                        * f64::from(keys[((b * kv_heads + g) * total + j) * d + c])
                                })
                                .sum();
                            s * f64::from(scale) + f64::from(mask[(b * seq + i) * total + j])
                        })
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for c in 0..d {
                        out[((b * seq + i) * heads + n) * d + c] = (0..total)
                            .map(|j| e[j] / sum * f64::from(values[((b * kv_heads + g) * total + j) * d + c]))
                            .sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn cached_grouped_attention_equals_the_textbook_one() {
        let shape = Shape { batch: 2, heads: 4, kv_heads: 2, head_dim: 16 };
        let value = |i: usize| ((i * 7919 % 997) as f32 / 997.0 - 0.5) * 2.0;
        let (first, second) = (5, 3);
        let total = first + second;
        let per_token = |tokens: usize, offset: usize| -> Vec<f32> {
            (0..shape.batch * shape.kv_heads * tokens * shape.head_dim).map(|i| value(i + offset)).collect()
        };
        // Two steps into one cache (the second grows nothing, the first allocates).
        let (k1, v1, k2, v2) =
            (per_token(first, 0), per_token(first, 1000), per_token(second, 2000), per_token(second, 3000));
        let mut cache = LayerCache::default();
        cache.store(shape, 0, &k1, &v1, false);
        cache.store(shape, first, &k2, &v2, false);
        // The same keys laid out [batch, kv_heads, total, d] for the textbook version.
        let joined = |a: &[f32], b: &[f32]| -> Vec<f32> {
            let d = shape.head_dim;
            let mut all = Vec::new();
            for head in 0..shape.batch * shape.kv_heads {
                all.extend_from_slice(&a[head * first * d..(head + 1) * first * d]);
                all.extend_from_slice(&b[head * second * d..(head + 1) * second * d]);
            }
            all
        };
        let (keys, values) = (joined(&k1, &k2), joined(&v1, &v2));
        let seq = 2;
        let q: Vec<f32> =
            (0..shape.batch * shape.heads * seq * shape.head_dim).map(|i| value(i + 5000)).collect();
        // Row 1's first position is padding; queries see keys up to their own position.
        let mask: Vec<f32> = (0..shape.batch * seq * total)
            .map(|i| {
                let (b, i, j) = (i / (seq * total), i / total % seq, i % total);
                if (b == 1 && j == 0) || j > first + i { f32::MIN } else { 0.0 }
            })
            .collect();
        let ours = cache.attend(shape, total, &q, &mask, 0.25);
        let expected = naive(shape, &keys, &values, &q, &mask, 0.25);
        for (o, e) in ours.iter().zip(&expected) {
            assert!((f64::from(*o) - e).abs() < 1e-6, "{o} vs {e}");
        }
        // In f16, the same attention of the keys and values rounded to f16.
        let mut half = LayerCache::default();
        half.store(shape, 0, &k1, &v1, true);
        half.store(shape, first, &k2, &v2, true);
        let round = |v: &[f32]| -> Vec<f32> { v.iter().map(|&x| f16::from_f32(x).to_f32()).collect() };
        let expected = naive(shape, &round(&keys), &round(&values), &q, &mask, 0.25);
        for (o, e) in half.attend(shape, total, &q, &mask, 0.25).iter().zip(&expected) {
            assert!((f64::from(*o) - e).abs() < 1e-6, "f16: {o} vs {e}");
        }
    }
}
