//! The panel kernel (see `panel`) with AVX-512 VNNI: `R` weight rows × `C` activation rows per
//! call, every pair's 16 integer lanes summed by `vpdpwssd`, bit-identical to `panel::dot`.

#![allow(unsafe_op_in_unsafe_fn)]
// Index loops over the register arrays: they unroll into registers; closures and iterators
// over arrays of vectors made the compiler spill them (measured: 2x slower).
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::panel::{ExpandedActivations, ExpandedRows};

pub fn available() -> bool {
    super::avx2::available()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vnni")
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vnni")]
unsafe fn hsum16(a: __m512) -> f32 {
    let s = _mm256_add_ps(_mm512_castps512_ps256(a), _mm512_extractf32x8_ps::<1>(a));
    let s4 = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
    let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)))
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vnni")]
unsafe fn hsum4(a: __m128) -> f32 {
    let s = _mm_add_ps(a, _mm_movehl_ps(a, a));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// `out[i][k]` = weight row `r + i` · activation row `j + k`.
///
/// # Safety
/// [`available`] must hold; rows `r..r + R` and `j..j + C` must exist.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vnni")]
pub unsafe fn panel<const R: usize, const C: usize>(
    w: &ExpandedRows,
    r: usize,
    x: &ExpandedActivations,
    j: usize,
) -> [[f32; C]; R] {
    let (cols, block) = (w.cols, w.block);
    let blocks = cols / block;
    let with_mins = !w.mins.is_empty();
    debug_assert!(w.values.len() >= (r + R) * cols && x.values.len() >= (j + C) * cols);
    let (wp, xp) = (w.values.as_ptr(), x.values.as_ptr());
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    let mut acc_min = [[_mm_setzero_ps(); C]; R];
    for b in 0..blocks {
        let mut lanes = [[_mm512_setzero_si512(); C]; R];
        let mut offset = b * block;
        while offset < (b + 1) * block {
            let mut xs = [_mm512_setzero_si512(); C];
            for k in 0..C {
                xs[k] = _mm512_loadu_si512(xp.add((j + k) * cols + offset).cast());
            }
            for i in 0..R {
                let wv = _mm512_loadu_si512(wp.add((r + i) * cols + offset).cast());
                for k in 0..C {
                    lanes[i][k] = _mm512_dpwssd_epi32(lanes[i][k], wv, xs[k]);
                }
            }
            offset += 32;
        }
        for i in 0..R {
            let dw = w.scales[(r + i) * blocks + b];
            for k in 0..C {
                let d = dw * x.scales[(j + k) * blocks + b];
                acc[i][k] = _mm512_fmadd_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(lanes[i][k]), acc[i][k]);
            }
        }
        if with_mins {
            for i in 0..R {
                let m = _mm_loadu_si128(w.mins.as_ptr().add(((r + i) * blocks + b) * 8).cast());
                let dmin = w.min_scales[(r + i) * blocks + b];
                for k in 0..C {
                    let s = _mm_loadu_si128(x.sums.as_ptr().add(((j + k) * blocks + b) * 8).cast());
                    let d = dmin * x.scales[(j + k) * blocks + b];
                    acc_min[i][k] =
                        _mm_fmadd_ps(_mm_set1_ps(d), _mm_cvtepi32_ps(_mm_madd_epi16(m, s)), acc_min[i][k]);
                }
            }
        }
    }
    let mut out = [[0f32; C]; R];
    for i in 0..R {
        for k in 0..C {
            out[i][k] = hsum16(acc[i][k]) - hsum4(acc_min[i][k]);
        }
    }
    out
}
