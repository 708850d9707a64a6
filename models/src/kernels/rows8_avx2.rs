//! AVX2 kernel for Q4_0, Q4_1, Q5_0 and Q5_1 weights interleaved in groups of
//! 8 rows ([`super::rows8`]): a 32-byte load holds 4 values of each of the 8
//! rows, one row per 32-bit lane, so `vpmaddubsw` against a broadcast of 4
//! activations gives the 8 rows' partial sums side by side. Eight such steps
//! cover a block; `vpmaddwd` turns the 16-bit sums into the 8 rows' exact block
//! dot products, and one conversion and one FMA by the 8 rows' scales (one
//! `vcvtph2ps`) add them to 8 float accumulators, with no horizontal sum. A
//! block's 8 rows are unpacked once (Q5's fifth bits or'ed in at bit 4) and used
//! for every activation row.
//!
//! A pair's output is `sum_b fma(isum_b, d_w * d_a)` in block order plus
//! `sum_b m_w * s_a` (Q4_0's minimum is `-8 d_w`, Q5_0's `-16 d_w`). For Q4 that
//! is the same operations in the same order as [`super::q32_avx2`], so the
//! interleaved and the GGUF layouts give the same bits, alone or in any batch;
//! for every type a pair's bits do not depend on the batch.
//!
//! The 16-bit sums cannot wrap: a step adds two products of a weight value (at
//! most 15, or 31 for Q5) and an 8-bit activation (at least -128), at most 3,840
//! (7,936) in magnitude; Q4 sums eight steps (at most 30,720) before widening,
//! Q5 four (31,744).

// The tile loops index the accumulators by constant-bounded counters, which
// LLVM unrolls into registers.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::WeightType;
use super::avx2::{call_shape, load32, prefetch, prefetch_tiles};
use super::q8::{BlockQ8, Columns};
use super::rows8::{GROUP, head_bytes};

/// Which block type a kernel is compiled for.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;

/// Activation rows one pass over a group's blocks serves.
const TILE: usize = 8;

/// `out[i * m + t] = dot(weight row i, activation row t)` for the rows of `w`
/// (whole groups of 8 rows, interleaved, `rb` bytes per row) and the `m`
/// activation rows of `acts` (whose scales and sums `columns` holds
/// block-major); `None` for other types, when the CPU lacks AVX2, FMA or F16C,
/// or when the shapes do not fit together.
pub fn rows(
    ty: WeightType,
    w: &[u8],
    rb: usize,
    (acts, columns): (&[BlockQ8], &Columns),
    m: usize,
    out: &mut [f32],
) -> Option<()> {
    let kind = match ty {
        WeightType::Q4_0 => Q4_0,
        WeightType::Q4_1 => Q4_1,
        WeightType::Q5_0 => Q5_0,
        WeightType::Q5_1 => Q5_1,
        _ => return None,
    };
    let (bb, n_rows, kb) = call_shape(ty, w, rb, (acts, columns), m, out.len())?;
    if !n_rows.is_multiple_of(GROUP) {
        return None;
    }
    let s = Shape {
        bb,
        kb,
        m,
        head: head_bytes(ty),
        ahead: prefetch_tiles() * 4 * rb,
    };
    // SAFETY: `call_shape` found AVX2, FMA and F16C on this CPU and checked every
    // length `chunk` reads or writes against `s`, and the rows are whole groups.
    unsafe {
        match kind {
            Q4_0 => chunk::<Q4_0>(w, (acts, columns), out, s),
            Q4_1 => chunk::<Q4_1>(w, (acts, columns), out, s),
            Q5_0 => chunk::<Q5_0>(w, (acts, columns), out, s),
            _ => chunk::<Q5_1>(w, (acts, columns), out, s),
        }
    }
    Some(())
}

/// `kb` blocks of `bb` bytes per weight row and per activation row, `m`
/// activation rows (the output's and the columns' stride).
#[derive(Clone, Copy)]
struct Shape {
    bb: usize,
    kb: usize,
    m: usize,
    /// Bytes before a group block's quants.
    head: usize,
    /// Bytes ahead of a one-activation-row pass to prefetch (0: none).
    ahead: usize,
}

/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` is `out.len() / s.m` rows (whole groups)
/// of `s.kb` blocks of type `T`, interleaved; `acts` is `s.m` rows of `s.kb`
/// blocks and `columns` holds at least `s.kb * s.m` scales and sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk<const T: u8>(
    w: &[u8],
    (acts, columns): (&[BlockQ8], &Columns),
    out: &mut [f32],
    s: Shape,
) {
    let group_bytes = GROUP * s.kb * s.bb;
    // Blocks of activation rows that stay in L1 while every group goes by (a
    // long prompt's rows all at once would be re-read from L2 or L3 per group).
    for (rows, last) in super::act_blocks(s.m) {
        for g in 0..w.len() / group_bytes {
            let mut t = rows;
            while t < last {
                let n = (last - t).min(TILE);
                // SAFETY: group g and activation rows t..t + n <= m exist (the
                // caller's contract); the pass reads columns[b * m + t..b * m + t +
                // n] for blocks b < kb and writes out[(8g + r) * m + t..][..n].
                unsafe {
                    let grp = w.as_ptr().add(g * group_bytes);
                    let a = acts.as_ptr().add(t * s.kb);
                    let cols = (columns.d.as_ptr().add(t), columns.s.as_ptr().add(t));
                    let o = out.as_mut_ptr().add(g * GROUP * s.m + t);
                    match n {
                        8 => group::<T, 8>(grp, a, cols, s, o),
                        7 => group::<T, 7>(grp, a, cols, s, o),
                        6 => group::<T, 6>(grp, a, cols, s, o),
                        5 => group::<T, 5>(grp, a, cols, s, o),
                        4 => group::<T, 4>(grp, a, cols, s, o),
                        3 => group::<T, 3>(grp, a, cols, s, o),
                        2 => group::<T, 2>(grp, a, cols, s, o),
                        _ => group::<T, 1>(grp, a, cols, s, o),
                    }
                }
                t += n;
            }
        }
    }
}

/// Four activations from `p` in every 32-bit lane.
///
/// # Safety
/// `p` points at 4 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn broadcast(p: *const i8) -> __m256i {
    // SAFETY: 4 readable bytes (caller's contract), read unaligned.
    _mm256_set1_epi32(unsafe { std::ptr::read_unaligned(p.cast::<i32>()) })
}

/// A group block's 8 rows of 32 values as bytes for `vpmaddubsw`'s unsigned
/// side: `q[k]` holds values `4k..4k + 4` of each row, one row per 32-bit lane
/// (nibbles; Q5's fifth bits from bit `k` of the bytes before the quants).
///
/// # Safety
/// `blk` points at a whole group block of type `T` whose quants start at `head`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn values<const T: u8>(blk: *const u8, head: usize) -> [__m256i; 8] {
    let nibble = _mm256_set1_epi8(0x0F);
    let mut q = [_mm256_setzero_si256(); 8];
    // SAFETY: the group block's 128 quant bytes at `head`, and for Q5 its 32
    // bytes of fifth bits just before them (caller's contract).
    unsafe {
        for j in 0..4 {
            let raw = load32(blk.add(head + 32 * j));
            q[j] = _mm256_and_si256(raw, nibble);
            q[4 + j] = _mm256_and_si256(_mm256_srli_epi16::<4>(raw), nibble);
        }
        if T == Q5_0 || T == Q5_1 {
            let h = load32(blk.add(head - 32));
            let bit4 = _mm256_set1_epi8(0x10);
            // Bit k of each byte to bit 4: the 16-bit shifts move no bit into
            // bit 4 of another byte (4 - k <= 4 and k - 4 <= 3).
            q[0] = _mm256_or_si256(q[0], _mm256_and_si256(_mm256_slli_epi16::<4>(h), bit4));
            q[1] = _mm256_or_si256(q[1], _mm256_and_si256(_mm256_slli_epi16::<3>(h), bit4));
            q[2] = _mm256_or_si256(q[2], _mm256_and_si256(_mm256_slli_epi16::<2>(h), bit4));
            q[3] = _mm256_or_si256(q[3], _mm256_and_si256(_mm256_slli_epi16::<1>(h), bit4));
            q[4] = _mm256_or_si256(q[4], _mm256_and_si256(h, bit4));
            q[5] = _mm256_or_si256(q[5], _mm256_and_si256(_mm256_srli_epi16::<1>(h), bit4));
            q[6] = _mm256_or_si256(q[6], _mm256_and_si256(_mm256_srli_epi16::<2>(h), bit4));
            q[7] = _mm256_or_si256(q[7], _mm256_and_si256(_mm256_srli_epi16::<3>(h), bit4));
        }
    }
    q
}

/// The 8 rows' exact integer dot products (one per 32-bit lane) of a group
/// block's values `q` with the 32 activations at `x`.
///
/// # Safety
/// `x` points at 32 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot<const T: u8>(q: &[__m256i; 8], x: *const i8) -> __m256i {
    let mut p = [_mm256_setzero_si256(); 8];
    for k in 0..8 {
        // SAFETY: activations 4k..4k + 4 of the 32 at `x` (caller's contract).
        p[k] = _mm256_maddubs_epi16(q[k], unsafe { broadcast(x.add(4 * k)) });
    }
    let ones = _mm256_set1_epi16(1);
    if T == Q5_0 || T == Q5_1 {
        // Four steps at most before widening (see the module's note).
        let lo = _mm256_add_epi16(_mm256_add_epi16(p[0], p[1]), _mm256_add_epi16(p[2], p[3]));
        let hi = _mm256_add_epi16(_mm256_add_epi16(p[4], p[5]), _mm256_add_epi16(p[6], p[7]));
        return _mm256_add_epi32(_mm256_madd_epi16(lo, ones), _mm256_madd_epi16(hi, ones));
    }
    let mut sum = p[0];
    for k in 1..8 {
        sum = _mm256_add_epi16(sum, p[k]);
    }
    _mm256_madd_epi16(sum, ones)
}

/// One group of 8 weight rows (`grp`) by `N` activation rows (`a`, `s.kb` blocks
/// apart; their scales and sums at `d`/`sm` with stride `s.m`): row `r`'s output
/// for activation row `t` at `o[r * s.m + t]`.
///
/// # Safety
/// As [`chunk`], for that pass.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group<const T: u8, const N: usize>(
    grp: *const u8,
    a: *const BlockQ8,
    (d, sm): (*const f32, *const f32),
    s: Shape,
    o: *mut f32,
) {
    let mut acc = [_mm256_setzero_ps(); N];
    let mut mins = [_mm256_setzero_ps(); N];
    let gb = GROUP * s.bb;
    for b in 0..s.kb {
        // SAFETY: block b of the group (gb bytes), of activation rows t < N, and
        // their scales and sums at b * m + t are in bounds (caller's contract).
        unsafe {
            let blk = grp.add(b * gb);
            if N == 1 && s.ahead != 0 {
                prefetch(grp.wrapping_add(s.ahead + b * gb), gb);
            }
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk.cast()));
            let mw = match T {
                Q4_1 | Q5_1 => _mm256_cvtph_ps(_mm_loadu_si128(blk.add(16).cast())),
                Q5_0 => _mm256_mul_ps(dw, _mm256_set1_ps(-16.0)),
                _ => _mm256_mul_ps(dw, _mm256_set1_ps(-8.0)),
            };
            let q = values::<T>(blk, s.head);
            for t in 0..N {
                let x = (*a.add(t * s.kb + b)).qs.as_ptr();
                let isum = dot::<T>(&q, x);
                let sc = _mm256_mul_ps(dw, _mm256_set1_ps(*d.add(b * s.m + t)));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sc, acc[t]);
                let asum = _mm256_set1_ps(*sm.add(b * s.m + t));
                mins[t] = _mm256_add_ps(mins[t], _mm256_mul_ps(mw, asum));
            }
        }
    }
    for t in 0..N {
        let v = _mm256_add_ps(acc[t], mins[t]);
        // SAFETY: outputs o[r * m + t] for r < 8 and t < N are writable (caller's
        // contract); `storeu` has no alignment requirement.
        unsafe {
            if s.m == 1 {
                _mm256_storeu_ps(o, v);
                continue;
            }
            let mut lanes = [0f32; GROUP];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            for (r, &x) in lanes.iter().enumerate() {
                *o.add(r * s.m + t) = x;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::kernels::avx2::available;
    use crate::kernels::{portable, q8, q32_avx2, rows8};

    /// Blocks of `ty` with small finite f16 scales (and minimums) and arbitrary
    /// quants, `(rows, blocks)` of them.
    fn blocks(ty: WeightType, rows: usize, kb: usize, seed: u32) -> Vec<u8> {
        let bb = ty.block_bytes();
        let mut w: Vec<u8> = (0..rows * kb * bb)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect();
        for blk in w.chunks_exact_mut(bb) {
            // f16 exponents 0b01100..0b01110: scales around 0.01-0.5, sign from the seed.
            blk[1] = 0x30 | (blk[1] & 0x87);
            if matches!(ty, WeightType::Q4_1 | WeightType::Q5_1) {
                blk[3] = 0x30 | (blk[3] & 0x87);
            }
        }
        w
    }

    fn activations(m: usize, cols: usize, seed: u32) -> Vec<f32> {
        (0..m * cols)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_246_822_519).wrapping_add(seed);
                (h >> 8) as f32 / (1 << 24) as f32 * 4.0 - 2.0
            })
            .collect()
    }

    #[test]
    fn interleaved_rows_give_the_bits_of_the_gguf_layout_alone_and_in_any_batch() {
        if !available() {
            return;
        }
        for ty in [WeightType::Q4_0, WeightType::Q4_1] {
            for (n_rows, kb) in [(8, 1), (16, 3), (24, 18), (40, 5)] {
                let cols = kb * 32;
                let rb = kb * ty.block_bytes();
                let gguf = blocks(ty, n_rows, kb, n_rows as u32 * 7 + kb as u32);
                let packed = rows8::pack(ty, n_rows, cols, &gguf);
                for m in [1, 2, 3, 7, 8, 9, 17] {
                    let x = activations(m, cols, m as u32);
                    let mut acts = Vec::new();
                    q8::quantize_rows(&x, &mut acts);
                    let columns = Columns::of(&acts, m);
                    let mut want = vec![0f32; n_rows * m];
                    q32_avx2::rows(ty, &gguf, rb, (&acts, &columns), m, &mut want).unwrap();
                    let mut got = vec![0f32; n_rows * m];
                    rows(ty, &packed, rb, (&acts, &columns), m, &mut got).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&want), "{ty:?} {n_rows}x{cols} m={m}");
                }
            }
        }
    }

    /// Q5 (no GGUF-layout kernel to match bits with): within rounding of the
    /// portable kernel on the same blocks, and a row's bits the same alone and
    /// in any batch.
    #[test]
    fn q5_matches_the_portable_kernel_and_a_row_has_the_same_bits_in_any_batch() {
        if !available() {
            return;
        }
        for ty in [WeightType::Q5_0, WeightType::Q5_1] {
            for (n_rows, kb) in [(8, 1), (16, 3), (24, 18), (40, 5)] {
                let (cols, rb) = (kb * 32, kb * ty.block_bytes());
                let gguf = blocks(ty, n_rows, kb, n_rows as u32 * 5 + kb as u32);
                let packed = rows8::pack(ty, n_rows, cols, &gguf);
                for m in [1, 2, 3, 7, 8, 9, 17] {
                    let got = run(ty, &packed, rb, &activations(m, cols, m as u32), m);
                    let x = activations(m, cols, m as u32);
                    let mut acts = Vec::new();
                    q8::quantize_rows(&x, &mut acts);
                    for (i, row) in gguf.chunks_exact(rb).enumerate() {
                        let mut want = vec![0f32; m];
                        portable::rows(ty, row, &acts, &mut want);
                        let mut wf = Vec::new();
                        portable::dequantize(ty, row, &mut wf);
                        for t in 0..m {
                            let xr = &x[t * cols..(t + 1) * cols];
                            let mag: f32 = wf.iter().zip(xr).map(|(a, b)| (a * b).abs()).sum();
                            let g = got[i * m + t];
                            assert!(
                                (g - want[t]).abs() <= 1e-5 * mag + 1e-6,
                                "{ty:?} {n_rows}x{cols} m={m} [{i}, {t}]: {g} vs {}",
                                want[t]
                            );
                            let alone = run(ty, &packed, rb, xr, 1);
                            assert_eq!(alone[i].to_bits(), g.to_bits(), "{ty:?} m={m} [{i}, {t}]");
                        }
                    }
                }
            }
        }
    }

    /// The kernel on interleaved weights and `m` rows of activations `x`.
    fn run(ty: WeightType, packed: &[u8], rb: usize, x: &[f32], m: usize) -> Vec<f32> {
        let mut acts = Vec::new();
        q8::quantize_rows(x, &mut acts);
        let columns = Columns::of(&acts, m);
        let mut out = vec![0f32; packed.len() / rb * m];
        rows(ty, packed, rb, (&acts, &columns), m, &mut out).unwrap();
        out
    }

    /// Every Q5 value 31 against activations of -127 (and +127): the largest
    /// 16-bit sums the Q5 path sees, the exact products.
    #[test]
    fn extreme_q5_blocks_do_not_wrap() {
        if !available() {
            return;
        }
        for ty in [WeightType::Q5_0, WeightType::Q5_1] {
            let mut gguf = blocks(ty, 8, 4, 5);
            let qh = if ty == WeightType::Q5_1 { 4 } else { 2 };
            for blk in gguf.chunks_exact_mut(ty.block_bytes()) {
                blk[qh..].fill(0xFF);
            }
            let packed = rows8::pack(ty, 8, 128, &gguf);
            let rb = 4 * ty.block_bytes();
            for sign in [-1.0f32, 1.0] {
                let got = run(ty, &packed, rb, &vec![sign; 128], 1);
                let mut acts = Vec::new();
                q8::quantize_rows(&vec![sign; 128], &mut acts);
                for (i, row) in gguf.chunks_exact(rb).enumerate() {
                    let mut want = [0f32];
                    portable::rows(ty, row, &acts, &mut want);
                    let mut wf = Vec::new();
                    portable::dequantize(ty, row, &mut wf);
                    let tol = 1e-5 * wf.iter().map(|v| v.abs()).sum::<f32>() + 1e-6;
                    assert!(
                        (got[i] - want[0]).abs() <= tol,
                        "{ty:?} {sign} [{i}]: {} vs {}",
                        got[i],
                        want[0]
                    );
                }
            }
        }
    }

    /// Every nibble 15 against activations of -127 (and +127): the 16-bit
    /// sums' largest magnitudes, still the GGUF layout's exact bits.
    #[test]
    fn extreme_blocks_do_not_wrap() {
        if !available() {
            return;
        }
        for ty in [WeightType::Q4_0, WeightType::Q4_1] {
            let mut gguf = blocks(ty, 8, 4, 3);
            let head = if ty == WeightType::Q4_1 { 4 } else { 2 };
            for blk in gguf.chunks_exact_mut(ty.block_bytes()) {
                blk[head..].fill(0xFF);
            }
            let packed = rows8::pack(ty, 8, 128, &gguf);
            for sign in [-1.0f32, 1.0] {
                let x = vec![sign; 2 * 128];
                let mut acts = Vec::new();
                q8::quantize_rows(&x, &mut acts);
                assert!(
                    acts.iter()
                        .all(|a| a.qs.iter().all(|&q| q == (sign * 127.0) as i8))
                );
                let columns = Columns::of(&acts, 2);
                let rb = 4 * ty.block_bytes();
                let (mut want, mut got) = (vec![0f32; 16], vec![0f32; 16]);
                q32_avx2::rows(ty, &gguf, rb, (&acts, &columns), 2, &mut want).unwrap();
                rows(ty, &packed, rb, (&acts, &columns), 2, &mut got).unwrap();
                assert_eq!(got, want, "{ty:?} {sign}");
            }
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let ty = WeightType::Q4_1;
        let gguf = blocks(ty, 8, 2, 1);
        let packed = rows8::pack(ty, 8, 64, &gguf);
        let mut acts = Vec::new();
        q8::quantize_rows(&activations(1, 64, 1), &mut acts);
        let columns = Columns::of(&acts, 1);
        let rb = 2 * ty.block_bytes();
        let mut out = vec![0f32; 8];
        // Half a group, a short output, a row width the activations lack.
        assert!(
            rows(
                ty,
                &packed[..4 * rb],
                rb,
                (&acts, &columns),
                1,
                &mut out[..4]
            )
            .is_none()
        );
        assert!(rows(ty, &packed, rb, (&acts, &columns), 1, &mut out[..7]).is_none());
        assert!(rows(ty, &packed, rb / 2, (&acts, &columns), 1, &mut out).is_none());
        assert!(
            rows(
                WeightType::Q8_0,
                &packed,
                rb,
                (&acts, &columns),
                1,
                &mut out
            )
            .is_none()
        );
    }
}
