//! What the ggml k-quant encoders (q4k, q6k) share: ggml's rounding, and encoding whole blocks
//! in parallel into their fixed-size byte records.

use rayon::prelude::*;

/// ggml's `nearest_int`: round half to even, by adding 1.5 * 2^23 and reading the mantissa
/// (exact for |x| < 2^22, which every use here is; `round_ties_even` is a libm call on x86-64
/// without SSE4.1 and dominated the search).
#[inline(always)]
pub(crate) fn nearest(x: f32) -> i32 {
    let shifted = x + 12_582_912.0;
    (shifted.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// Appends the `block_bytes`-byte records `encode` makes of each `block` values of `values` (a
/// whole number of blocks), 64 blocks per parallel task.
pub(super) fn encode_blocks(
    values: &[f32],
    out: &mut Vec<u8>,
    block: usize,
    block_bytes: usize,
    encode: fn(&[f32], &mut [u8]),
) {
    debug_assert!(values.len().is_multiple_of(block));
    let start = out.len();
    out.resize(start + values.len() / block * block_bytes, 0);
    out[start..].par_chunks_mut(block_bytes * 64).zip(values.par_chunks(block * 64)).for_each(
        |(bytes, x)| {
            for (record, x) in bytes.chunks_exact_mut(block_bytes).zip(x.chunks_exact(block)) {
                encode(x, record);
            }
        },
    );
}
