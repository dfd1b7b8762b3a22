//! AVX2 + FMA (+ F16C for the scales) dot products, bit-identical to `scalar` (the tests hold
//! them to it): the same exact integer lanes, the same fused accumulation per block and the
//! same final tree. Blocks are read as fixed-size arrays, so the loops carry no bounds checks.

#![allow(unsafe_op_in_unsafe_fn)]
// Index loops over the register arrays: they unroll into registers; closures and iterators
// over arrays of vectors made the compiler spill them (measured: 2x slower).
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::formats::{Q4_0_BYTES, Q4K_BYTES, Q5_0_BYTES, Q6K_BYTES, Q8_0_BYTES, Q8K_BYTES};

pub fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// The blocks of `bytes` as fixed-size records (the caller passed whole blocks).
#[inline(always)]
fn records<const N: usize>(bytes: &[u8], blocks: usize) -> &[[u8; N]] {
    let (records, _) = bytes[..blocks * N].as_chunks::<N>();
    records
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn half(bytes: &[u8]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le_bytes([bytes[0], bytes[1]])))))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum8(acc: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load(bytes: &[u8]) -> __m256i {
    debug_assert!(bytes.len() >= 32);
    _mm256_loadu_si256(bytes.as_ptr().cast())
}

/// `R` rows of `blocks` records each, `stride` bytes apart.
#[inline(always)]
fn row_records<const N: usize, const R: usize>(w: &[u8], stride: usize, blocks: usize) -> [&[[u8; N]]; R] {
    let mut rows: [&[[u8; N]]; R] = [&[]; R];
    for (r, row) in rows.iter_mut().enumerate() {
        *row = records(&w[r * stride..], blocks);
    }
    rows
}

/// Each row's accumulator summed across its lanes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn sums<const R: usize>(acc: [__m256; R]) -> [f32; R] {
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum8(acc[r]);
    }
    out
}

/// Asks for the bytes `ahead` past `block` (the same block of the next group of rows): this
/// machine's hardware prefetcher does not follow the kernels' strides, and with the request
/// made a group ahead a core reads ~2.5x the bytes per second (20 vs 7 GB/s here, q8_0).
#[inline(always)]
fn prefetch_next<const N: usize>(block: &[u8; N], ahead: usize) {
    // Every cache line of a block that spans several (q4_K: 144 bytes, q6_K: 210).
    let mut offset = 0;
    while offset < N {
        // Safety: a prefetch is a hint; it never faults, whatever the address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(block.as_ptr().wrapping_add(ahead + offset).cast()) }
        offset += 64;
    }
}

/// The exact sum of 8 i32 lanes.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
}

/// Signed 32 × i8 · 32 × i8 into 8 lanes of 4 products each.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_i8(w: __m256i, x: __m256i) -> __m256i {
    let products = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w));
    _mm256_madd_epi16(products, _mm256_set1_epi16(1))
}

/// 16 bytes of nibbles as 32 bytes: low nibbles first, then high ones.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles(bytes: &[u8]) -> __m256i {
    debug_assert!(bytes.len() >= 16);
    let packed = _mm_loadu_si128(bytes.as_ptr().cast());
    let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
    _mm256_and_si256(both, _mm256_set1_epi8(0xF))
}

/// q8_0 · q8_0.
///
/// # Safety
/// AVX2, FMA and F16C must be available; `w` and `x` must hold `blocks` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q8_0<const R: usize>(w: &[u8], stride: usize, x: &[u8], blocks: usize) -> [f32; R] {
    let rows = row_records::<Q8_0_BYTES, R>(w, stride, blocks);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, xb) in records::<Q8_0_BYTES>(x, blocks).iter().enumerate() {
        let (xq, dx) = (load(&xb[2..]), half(xb));
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_next(wb, R * stride);
            let lanes = dot_i8(load(&wb[2..]), xq);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(half(wb) * dx), _mm256_cvtepi32_ps(lanes), acc[r]);
        }
    }
    sums(acc)
}

/// q4_0 · q8_0.
///
/// # Safety
/// As [`dot_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4_0<const R: usize>(w: &[u8], stride: usize, x: &[u8], blocks: usize) -> [f32; R] {
    let rows = row_records::<Q4_0_BYTES, R>(w, stride, blocks);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, xb) in records::<Q8_0_BYTES>(x, blocks).iter().enumerate() {
        let (xq, dx) = (load(&xb[2..]), half(xb));
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_next(wb, R * stride);
            let codes = _mm256_sub_epi8(nibbles(&wb[2..]), _mm256_set1_epi8(8));
            let lanes = dot_i8(codes, xq);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(half(wb) * dx), _mm256_cvtepi32_ps(lanes), acc[r]);
        }
    }
    sums(acc)
}

/// The 32 bits of `bits` as 32 bytes of 0xFF (set) or 0 (clear), bit j in byte j.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
    );
    let with_others = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    _mm256_cmpeq_epi8(with_others, _mm256_set1_epi64x(-1))
}

/// q5_0 · q8_0.
///
/// # Safety
/// As [`dot_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q5_0<const R: usize>(w: &[u8], stride: usize, x: &[u8], blocks: usize) -> [f32; R] {
    let rows = row_records::<Q5_0_BYTES, R>(w, stride, blocks);
    let mut acc = [_mm256_setzero_ps(); R];
    for (b, xb) in records::<Q8_0_BYTES>(x, blocks).iter().enumerate() {
        let (xq, dx) = (load(&xb[2..]), half(xb));
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_next(wb, R * stride);
            let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
            // A clear fifth bit makes the nibble n read as the signed byte n - 16 (n | 0xF0).
            let minus16 = _mm256_andnot_si256(bytes_from_bits(qh), _mm256_set1_epi8(0xF0u8 as i8));
            let codes = _mm256_or_si256(nibbles(&wb[6..]), minus16);
            let lanes = dot_i8(codes, xq);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(half(wb) * dx), _mm256_cvtepi32_ps(lanes), acc[r]);
        }
    }
    sums(acc)
}

/// q4_K's 12 packed bytes as 16 words: the 8 scales, then the 8 mins (ggml's `utmp` shuffle).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_mins(packed: &[u8]) -> __m256i {
    const LOW6: u32 = 0x3f3f_3f3f;
    const LOW4: u32 = 0x0f0f_0f0f;
    const LOW2: u32 = 0x0303_0303;
    let word = |i: usize| {
        u32::from_le_bytes([packed[4 * i], packed[4 * i + 1], packed[4 * i + 2], packed[4 * i + 3]])
    };
    let (u0, u1, u2) = (word(0), word(1), word(2));
    let scales_low = u0 & LOW6;
    let scales_high = (u2 & LOW4) | (((u0 >> 6) & LOW2) << 4);
    let mins_low = u1 & LOW6;
    let mins_high = ((u2 >> 4) & LOW4) | (((u1 >> 6) & LOW2) << 4);
    _mm256_cvtepu8_epi16(_mm_setr_epi32(
        scales_low as i32,
        scales_high as i32,
        mins_low as i32,
        mins_high as i32,
    ))
}

/// Shuffle masks that spread word k of a 128-bit lane over all 8 words of each lane.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn word_spreads() -> [__m256i; 8] {
    let mut masks = [_mm256_setzero_si256(); 8];
    for (k, mask) in masks.iter_mut().enumerate() {
        let (a, b) = (2 * k as i8, 2 * k as i8 + 1);
        *mask = _mm256_setr_epi8(
            a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b, a, b,
        );
    }
    masks
}

/// q4_K · q8_K.
///
/// # Safety
/// As [`dot_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q4k<const R: usize>(w: &[u8], stride: usize, x: &[u8], blocks: usize) -> [f32; R] {
    let rows = row_records::<Q4K_BYTES, R>(w, stride, blocks);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc_min = [0f32; R];
    let low = _mm256_set1_epi8(0xF);
    let spreads = word_spreads();
    for (b, xb) in records::<Q8K_BYTES>(x, blocks).iter().enumerate() {
        let dx = f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]]);
        // The activations' sums per 32 (sub-block), as 8 words: |sum| <= 32 · 127 fits.
        let bsums = load(&xb[260..]);
        let sub_sums = _mm_hadd_epi16(_mm256_castsi256_si128(bsums), _mm256_extracti128_si256::<1>(bsums));
        let xq = &xb[4..];
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_next(wb, R * stride);
            let (d, dmin) = (dx * half(wb), dx * half(&wb[2..]));
            let words = scales_mins(&wb[4..16]);
            let min_sum = {
                let p = _mm_madd_epi16(_mm256_extracti128_si256::<1>(words), sub_sums);
                let p = _mm_add_epi32(p, _mm_shuffle_epi32::<0b01_00_11_10>(p));
                _mm_cvtsi128_si32(_mm_add_epi32(p, _mm_shuffle_epi32::<0b10_11_00_01>(p)))
            };
            let scales = _mm256_broadcastsi128_si256(_mm256_castsi256_si128(words));
            let qs = &wb[16..];
            let mut lanes = _mm256_setzero_si256();
            for chunk in 0..4 {
                let bits = load(&qs[32 * chunk..]);
                let q_low = _mm256_and_si256(bits, low);
                let q_high = _mm256_and_si256(_mm256_srli_epi16(bits, 4), low);
                let p_low = _mm256_maddubs_epi16(q_low, load(&xq[64 * chunk..]));
                let p_high = _mm256_maddubs_epi16(q_high, load(&xq[64 * chunk + 32..]));
                let p_low = _mm256_madd_epi16(p_low, _mm256_shuffle_epi8(scales, spreads[2 * chunk]));
                let p_high = _mm256_madd_epi16(p_high, _mm256_shuffle_epi8(scales, spreads[2 * chunk + 1]));
                lanes = _mm256_add_epi32(lanes, _mm256_add_epi32(p_low, p_high));
            }
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc[r]);
            acc_min[r] = dmin.mul_add(min_sum as f32, acc_min[r]);
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum8(acc[r]) - acc_min[r];
    }
    out
}

/// q6_K · q8_K.
///
/// # Safety
/// As [`dot_q8_0`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q6k<const R: usize>(w: &[u8], stride: usize, x: &[u8], blocks: usize) -> [f32; R] {
    let rows = row_records::<Q6K_BYTES, R>(w, stride, blocks);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc_offset = [0f32; R];
    let (low4, bits45) = (_mm256_set1_epi8(0xF), _mm256_set1_epi8(0x30));
    // Word 2k of a 128-bit lane to every word of the low lane, word 2k + 1 to the high one.
    let pick = |k: i8| {
        let (a, b) = (4 * k, 4 * k + 2);
        _mm256_setr_epi8(
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1,
            a,
            a + 1, //
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
            b,
            b + 1,
        )
    };
    let picks = [pick(0), pick(1), pick(2), pick(3)];
    for (b, xb) in records::<Q8K_BYTES>(x, blocks).iter().enumerate() {
        let dx = f32::from_le_bytes([xb[0], xb[1], xb[2], xb[3]]);
        let bsums = load(&xb[260..]);
        for r in 0..R {
            let wb = &rows[r][b];
            prefetch_next(wb, R * stride);
            let d = dx * half(&wb[208..]);
            let scales16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wb[192..].as_ptr().cast()));
            let mut lanes = _mm256_setzero_si256();
            for half_block in 0..2 {
                let ql1 = load(&wb[64 * half_block..]);
                let ql2 = load(&wb[64 * half_block + 32..]);
                let qh = load(&wb[128 + 32 * half_block..]);
                let pair = if half_block == 0 {
                    _mm256_permute2x128_si256::<0x00>(scales16, scales16)
                } else {
                    _mm256_permute2x128_si256::<0x11>(scales16, scales16)
                };
                let xq = &xb[4 + 128 * half_block..];
                let codes = [
                    _mm256_or_si256(
                        _mm256_and_si256(ql1, low4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 4), bits45),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(ql2, low4),
                        _mm256_and_si256(_mm256_slli_epi16(qh, 2), bits45),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low4),
                        _mm256_and_si256(qh, bits45),
                    ),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16(ql2, 4), low4),
                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), bits45),
                    ),
                ];
                for k in 0..4 {
                    let products = _mm256_maddubs_epi16(codes[k], load(&xq[32 * k..]));
                    let scale = _mm256_shuffle_epi8(pair, picks[k]);
                    lanes = _mm256_add_epi32(lanes, _mm256_madd_epi16(products, scale));
                }
            }
            let offset = hsum_i32(_mm256_madd_epi16(scales16, bsums));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(lanes), acc[r]);
            acc_offset[r] = d.mul_add((32 * offset) as f32, acc_offset[r]);
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum8(acc[r]) - acc_offset[r];
    }
    out
}
