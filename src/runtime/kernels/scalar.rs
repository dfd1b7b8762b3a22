//! The portable dot products, and the definition every SIMD kernel must reproduce bit for bit.
//! Each block's integer products are summed exactly into 8 lanes (lane m holds values
//! 4m..4m+3 of each 32-value group, as `maddubs` + `madd` leave them in a 256-bit register),
//! each lane is accumulated in f32 by a fused multiply-add with the block's scale, and the 8
//! lanes are summed in the tree a 256-bit horizontal add takes. k-quants' min terms are one
//! exact integer per block, accumulated in a separate f32.

use super::formats::{
    Q4_0_BYTES, Q4K_BYTES, Q5_0_BYTES, Q6K_BYTES, Q8_0_BYTES, Q8K_BYTES, half, scale_min_k4,
};

pub(super) fn hsum8(a: &[f32; 8]) -> f32 {
    ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]))
}

fn accumulate(acc: &mut [f32; 8], d: f32, lanes: &[i32; 8]) {
    for (a, &l) in acc.iter_mut().zip(lanes) {
        *a = d.mul_add(l as f32, *a);
    }
}

/// Lanes of one 32-value group: `w[e] * x[e]` summed over e = 4m..4m+3 into lane m.
fn group_lanes(w: impl Fn(usize) -> i32, x: &[u8], scale: impl Fn(usize) -> i32, lanes: &mut [i32; 8]) {
    for (m, lane) in lanes.iter_mut().enumerate() {
        let s: i32 = (4 * m..4 * m + 4).map(|e| w(e) * i32::from(x[e] as i8)).sum();
        *lane += scale(m) * s;
    }
}

/// A 32-value format's weights (`block_bytes` per block, `code(block, e)` the signed code of
/// value e, the f16 scale first) · q8_0 activations.
fn dot_32(w: &[u8], x: &[u8], blocks: usize, block_bytes: usize, code: impl Fn(&[u8], usize) -> i32) -> f32 {
    let mut acc = [0f32; 8];
    for b in 0..blocks {
        let (wb, xb) = (&w[b * block_bytes..], &x[b * Q8_0_BYTES..]);
        let mut lanes = [0i32; 8];
        group_lanes(|e| code(wb, e), &xb[2..], |_| 1, &mut lanes);
        accumulate(&mut acc, half(wb) * half(xb), &lanes);
    }
    hsum8(&acc)
}

/// q8_0 weights · q8_0 activations.
pub fn dot_q8_0(w: &[u8], x: &[u8], blocks: usize) -> f32 {
    dot_32(w, x, blocks, Q8_0_BYTES, |wb, e| i32::from(wb[2 + e] as i8))
}

/// q4_0 weights · q8_0 activations.
pub fn dot_q4_0(w: &[u8], x: &[u8], blocks: usize) -> f32 {
    dot_32(w, x, blocks, Q4_0_BYTES, |wb, e| {
        let q = wb[2 + e % 16];
        i32::from(if e < 16 { q & 0xF } else { q >> 4 }) - 8
    })
}

/// q5_0 weights · q8_0 activations.
pub fn dot_q5_0(w: &[u8], x: &[u8], blocks: usize) -> f32 {
    dot_32(w, x, blocks, Q5_0_BYTES, |wb, e| {
        let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
        let q = wb[6 + e % 16];
        let low = if e < 16 { q & 0xF } else { q >> 4 };
        (i32::from(low) | (((qh >> e) & 1) << 4) as i32) - 16
    })
}

fn q8k_scale(x: &[u8]) -> f32 {
    f32::from_le_bytes([x[0], x[1], x[2], x[3]])
}

/// The sum of q8_K values `16g..16g+15`.
fn q8k_bsum(x: &[u8], g: usize) -> i32 {
    i32::from(i16::from_le_bytes([x[260 + 2 * g], x[261 + 2 * g]]))
}

/// q4_K weights · q8_K activations.
pub fn dot_q4k(w: &[u8], x: &[u8], blocks: usize) -> f32 {
    let (mut acc, mut acc_min) = ([0f32; 8], 0f32);
    for b in 0..blocks {
        let (wb, xb) = (&w[b * Q4K_BYTES..], &x[b * Q8K_BYTES..]);
        let dx = q8k_scale(xb);
        let (d, dmin) = (dx * half(wb), dx * half(&wb[2..]));
        let (scales, qs, xq) = (&wb[4..16], &wb[16..144], &xb[4..260]);
        let mut lanes = [0i32; 8];
        let mut mins = 0i32;
        for sub in 0..8 {
            let (sc, m) = scale_min_k4(sub, scales);
            let (chunk, high) = (sub / 2, sub % 2 == 1);
            let code = |e: usize| {
                let q = qs[32 * chunk + e];
                i32::from(if high { q >> 4 } else { q & 0xF })
            };
            group_lanes(code, &xq[32 * sub..], |_| i32::from(sc), &mut lanes);
            mins += i32::from(m) * (q8k_bsum(xb, 2 * sub) + q8k_bsum(xb, 2 * sub + 1));
        }
        accumulate(&mut acc, d, &lanes);
        acc_min = dmin.mul_add(mins as f32, acc_min);
    }
    hsum8(&acc) - acc_min
}

/// q6_K weights · q8_K activations. Codes are taken unsigned (0..63) in the lanes; their
/// offset of 32 is one exact integer per block, 32 · Σ scale · (sum of its 16 activations).
pub fn dot_q6k(w: &[u8], x: &[u8], blocks: usize) -> f32 {
    let (mut acc, mut acc_offset) = ([0f32; 8], 0f32);
    for b in 0..blocks {
        let (wb, xb) = (&w[b * Q6K_BYTES..], &x[b * Q8K_BYTES..]);
        let d = q8k_scale(xb) * half(&wb[208..]);
        let mut lanes = [0i32; 8];
        for half_block in 0..2 {
            let ql = &wb[64 * half_block..];
            let qh = &wb[128 + 32 * half_block..];
            let sc = &wb[192 + 8 * half_block..];
            let xq = &xb[4 + 128 * half_block..];
            for k in 0..4 {
                let code = |l: usize| {
                    let low = if k < 2 { ql[l + 32 * k] & 0xF } else { ql[l + 32 * (k - 2)] >> 4 };
                    i32::from(low) | (i32::from((qh[l] >> (2 * k)) & 3) << 4)
                };
                let scale = |m: usize| i32::from(sc[2 * k + m / 4] as i8);
                group_lanes(code, &xq[32 * k..], scale, &mut lanes);
            }
        }
        let offset: i32 = (0..16).map(|g| i32::from(wb[192 + g] as i8) * q8k_bsum(xb, g)).sum();
        accumulate(&mut acc, d, &lanes);
        acc_offset = d.mul_add((32 * offset) as f32, acc_offset);
    }
    hsum8(&acc) - acc_offset
}
