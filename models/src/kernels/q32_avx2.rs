//! AVX2 kernels for the 32-value block types (Q4_0, Q4_1, Q8_0) that reduce
//! eight (weight row, activation row) pairs at once: each pair's products over a
//! block are summed exactly in integers (`vpmaddubsw`, `vpmaddwd`), the eight
//! pairs' integer lanes are folded into one vector of eight sums (`vphaddd`),
//! and one conversion and one FMA by the eight pairs' scales add them to eight
//! float accumulators. The older tiles (`avx2`) converted and scaled every
//! pair's eight lanes on their own and summed the lanes at the end: twice the
//! vector work per pair, which at batch 8 was most of a decode step.
//!
//! A batch runs one weight row by up to eight activation rows (a lane per
//! activation row); one activation row runs eight weight rows (a lane per
//! weight row). Either way a pair's output is
//! `sum_b fma(isum_b, d_w * d_a)` in block order plus `sum_b m_w * s_a`, the same
//! operations in the same order, so its bits do not depend on the batch, the
//! tile or the lane (the engine's prefill/decode/batch equality relies on it).

// The tile loops index the pair vectors and the scales by constant-bounded
// counters, which LLVM unrolls into registers.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::WeightType;
use super::avx2::{call_shape, f16, f16x2, load32, prefetch, prefetch_tiles};
use super::q8::{BlockQ8, Columns};

/// Which block type a kernel is compiled for.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// Pairs one tile reduces together.
const LANES: usize = 8;

/// `out[i * m + t] = dot(weight row i, activation row t)` for the rows of `w`
/// (`rb` bytes each) and the `m` activation rows of `acts` (whose scales and
/// sums `columns` holds block-major); `None` for other types, when the CPU
/// lacks AVX2, FMA or F16C, or when the shapes do not fit together.
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
        WeightType::Q8_0 => Q8_0,
        _ => return None,
    };
    let (bb, _, kb) = call_shape(ty, w, rb, (acts, columns), m, out.len())?;
    let s = Shape {
        rb,
        bb,
        kb,
        m,
        ahead: prefetch_tiles() * 4 * rb,
    };
    // SAFETY: `call_shape` found AVX2, FMA and F16C on this CPU and checked every
    // length `chunk` reads or writes against `s`.
    unsafe {
        match kind {
            Q4_0 => chunk::<Q4_0>(w, (acts, columns), out, s),
            Q4_1 => chunk::<Q4_1>(w, (acts, columns), out, s),
            _ => chunk::<Q8_0>(w, (acts, columns), out, s),
        }
    }
    Some(())
}

/// `rb` bytes and `kb` blocks of `bb` bytes per weight row, `kb` blocks per
/// activation row, `m` activation rows (the output's and the columns' stride).
#[derive(Clone, Copy)]
struct Shape {
    rb: usize,
    bb: usize,
    kb: usize,
    m: usize,
    /// Bytes ahead of a one-activation-row tile's weights to prefetch (0: none).
    ahead: usize,
}

/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` is `out.len() / s.m` rows of `s.rb` bytes
/// of type `T`, `acts` is `s.m` rows of `s.kb` blocks and `columns` holds at
/// least `s.kb * s.m` scales and sums.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk<const T: u8>(
    w: &[u8],
    (acts, columns): (&[BlockQ8], &Columns),
    out: &mut [f32],
    s: Shape,
) {
    let n_rows = w.len() / s.rb;
    if s.m == 1 {
        let mut i = 0;
        while i < n_rows {
            let r = (n_rows - i).min(LANES);
            // SAFETY: weight rows i..i + r < n_rows and the one activation row
            // exist (the caller's contract); the tile writes out[i..i + r].
            unsafe {
                let wr = w.as_ptr().add(i * s.rb);
                let o = out.as_mut_ptr().add(i);
                match r {
                    8 => gemv::<T, 8>(wr, acts.as_ptr(), s, o),
                    7 => gemv::<T, 7>(wr, acts.as_ptr(), s, o),
                    6 => gemv::<T, 6>(wr, acts.as_ptr(), s, o),
                    5 => gemv::<T, 5>(wr, acts.as_ptr(), s, o),
                    4 => gemv::<T, 4>(wr, acts.as_ptr(), s, o),
                    3 => gemv::<T, 3>(wr, acts.as_ptr(), s, o),
                    2 => gemv::<T, 2>(wr, acts.as_ptr(), s, o),
                    _ => gemv::<T, 1>(wr, acts.as_ptr(), s, o),
                }
            }
            i += r;
        }
        return;
    }
    // Blocks of activation rows that stay in L1 while every weight row goes by.
    for (rows, last) in super::act_blocks(s.m) {
        for i in 0..n_rows {
            let mut t = rows;
            while t < last {
                let n = (last - t).min(LANES);
                // SAFETY: weight row i < n_rows and activation rows t..t + n <= m
                // exist (the caller's contract); the tile reads columns[b * m + t..
                // b * m + t + n] for blocks b < kb (inside kb * m) and writes
                // out[i * m + t..i * m + t + n].
                unsafe {
                    let wr = w.as_ptr().add(i * s.rb);
                    let a = acts.as_ptr().add(t * s.kb);
                    let (d, sm) = (columns.d.as_ptr().add(t), columns.s.as_ptr().add(t));
                    let o = out.as_mut_ptr().add(i * s.m + t);
                    match n {
                        8 => batch::<T, 8>(wr, a, (d, sm), s, o),
                        7 => batch::<T, 7>(wr, a, (d, sm), s, o),
                        6 => batch::<T, 6>(wr, a, (d, sm), s, o),
                        5 => batch::<T, 5>(wr, a, (d, sm), s, o),
                        4 => batch::<T, 4>(wr, a, (d, sm), s, o),
                        3 => batch::<T, 3>(wr, a, (d, sm), s, o),
                        2 => batch::<T, 2>(wr, a, (d, sm), s, o),
                        _ => batch::<T, 1>(wr, a, (d, sm), s, o),
                    }
                }
                t += n;
            }
        }
    }
}

/// A weight block's 32 values as bytes for `vpmaddubsw`'s unsigned side (Q4:
/// the nibbles in order; Q8_0: their magnitudes, the signs go to the
/// activations in [`dot`]) and the raw block values Q8_0's signs come from.
///
/// # Safety
/// `blk` points at a whole block of type `T`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weights<const T: u8>(blk: *const u8) -> (__m256i, __m256i) {
    // SAFETY: the block's quants: 16 bytes at 2 (Q4_0) or 4 (Q4_1), 32 at 2 (Q8_0).
    unsafe {
        if T == Q8_0 {
            let q = load32(blk.add(2));
            return (_mm256_sign_epi8(q, q), q);
        }
        let raw = _mm_loadu_si128(blk.add(if T == Q4_0 { 2 } else { 4 }).cast());
        let q = _mm256_and_si256(
            _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw),
            _mm256_set1_epi8(0x0F),
        );
        (q, q)
    }
}

/// The eight i32 lanes whose sum is the block's integer dot product with the
/// activation block `a`.
///
/// # Safety
/// `a` points at a readable [`BlockQ8`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot<const T: u8>((u, q): (__m256i, __m256i), a: *const BlockQ8) -> __m256i {
    // SAFETY: a whole block at `a` (caller's contract); its 32 quants at `qs`.
    let x = unsafe { load32((*a).qs.as_ptr().cast()) };
    let x = if T == Q8_0 { _mm256_sign_epi8(x, q) } else { x };
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
}

/// Lane `k` of the result is the sum of `p[k]`'s eight lanes (exact: integers).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn reduce(p: [__m256i; LANES]) -> __m256i {
    let h01 = _mm256_hadd_epi32(p[0], p[1]);
    let h23 = _mm256_hadd_epi32(p[2], p[3]);
    let h45 = _mm256_hadd_epi32(p[4], p[5]);
    let h67 = _mm256_hadd_epi32(p[6], p[7]);
    // Per 128-bit half: the four vectors' partial sums of that half.
    let a = _mm256_hadd_epi32(h01, h23);
    let b = _mm256_hadd_epi32(h45, h67);
    let own = _mm256_blend_epi32::<0xF0>(a, b);
    let other = _mm256_permute2x128_si256::<0x21>(a, b);
    _mm256_add_epi32(own, other)
}

/// A block's scale and minimum (`d * q + m`; Q4_0's is `-8 d`, Q8_0 has none).
///
/// # Safety
/// `blk` points at a whole block of type `T`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scale_min<const T: u8>(blk: *const u8) -> (f32, f32) {
    // SAFETY: every block type starts with its f16 scale; Q4_1's minimum follows.
    unsafe {
        match T {
            Q4_1 => f16x2(blk),
            Q4_0 => {
                let d = f16(blk);
                (d, -8.0 * d)
            }
            _ => (f16(blk), 0.0),
        }
    }
}

/// The scales (and minimums) of `R` weight rows' block as lanes: the f16s at
/// the start of each row's block, `rb` bytes apart, through one conversion.
///
/// # Safety
/// `blk` points at `R` whole blocks of type `T`, `rb` bytes apart.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scales_min<const T: u8, const R: usize>(blk: *const u8, rb: usize) -> (__m256, __m256) {
    let mut head = [0i32; LANES];
    for r in 0..R {
        // SAFETY: every block has at least 4 bytes (caller's contract).
        head[r] = unsafe { std::ptr::read_unaligned(blk.add(r * rb).cast::<i32>()) };
    }
    // SAFETY: `head` is 8 readable i32s; `loadu` has no alignment requirement.
    let v = unsafe { _mm256_loadu_si256(head.as_ptr().cast()) };
    let d = halves(_mm256_and_si256(v, _mm256_set1_epi32(0xFFFF)));
    let m = match T {
        Q4_1 => halves(_mm256_srli_epi32::<16>(v)),
        Q4_0 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
        _ => _mm256_setzero_ps(),
    };
    (d, m)
}

/// Eight f16s, one in the low half of each i32 lane of `h` (the other half
/// zero), as f32s in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn halves(h: __m256i) -> __m256 {
    // packus works within 128-bit halves: the permute puts the two halves' four
    // values next to each other.
    let p = _mm256_packus_epi32(h, _mm256_setzero_si256());
    let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(p);
    _mm256_cvtph_ps(_mm256_castsi256_si128(p))
}

/// Store the first `N` lanes of `v` at `o`.
///
/// # Safety
/// `o` points at `N <= 8` writable f32s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn store<const N: usize>(v: __m256, o: *mut f32) {
    let mut lanes = [0f32; LANES];
    // SAFETY: `lanes` is 8 writable f32s; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    // SAFETY: N writable f32s at `o` (caller's contract).
    unsafe { std::ptr::copy_nonoverlapping(lanes.as_ptr(), o, N) };
}

/// The first `N` of the eight f32s at `p` (the rest zero).
///
/// # Safety
/// `p` points at `N <= 8` readable f32s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load<const N: usize>(p: *const f32) -> __m256 {
    // SAFETY: 8 (N == 8) readable f32s; `loadu` has no alignment requirement.
    if N == LANES {
        return unsafe { _mm256_loadu_ps(p) };
    }
    let mut lanes = [0f32; LANES];
    // SAFETY: N readable f32s at `p` (caller's contract).
    unsafe { std::ptr::copy_nonoverlapping(p, lanes.as_mut_ptr(), N) };
    // SAFETY: `lanes` is 8 readable f32s.
    unsafe { _mm256_loadu_ps(lanes.as_ptr()) }
}

/// One weight row (`w`) by `N` activation rows (`a`, `s.kb` blocks apart; their
/// scales and sums at `d`/`sm` with stride `s.m`), written to `o[..N]`.
///
/// # Safety
/// As [`chunk`], for that tile.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn batch<const T: u8, const N: usize>(
    w: *const u8,
    a: *const BlockQ8,
    (d, sm): (*const f32, *const f32),
    s: Shape,
    o: *mut f32,
) {
    let mut acc = _mm256_setzero_ps();
    let mut mins = _mm256_setzero_ps();
    for b in 0..s.kb {
        // SAFETY: block b of the weight row, of activation rows n < N, and their
        // N scales and sums at b * m are in bounds (caller's contract).
        unsafe {
            let blk = w.add(b * s.bb);
            let (dw, mw) = scale_min::<T>(blk);
            let q = weights::<T>(blk);
            let mut p = [_mm256_setzero_si256(); LANES];
            for n in 0..N {
                p[n] = dot::<T>(q, a.add(n * s.kb + b));
            }
            let sc = _mm256_mul_ps(_mm256_set1_ps(dw), load::<N>(d.add(b * s.m)));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce(p)), sc, acc);
            if T != Q8_0 {
                let asum = load::<N>(sm.add(b * s.m));
                mins = _mm256_add_ps(mins, _mm256_mul_ps(_mm256_set1_ps(mw), asum));
            }
        }
    }
    // SAFETY: N writable outputs at `o` (caller's contract).
    unsafe { store::<N>(_mm256_add_ps(acc, mins), o) };
}

/// `R` weight rows (`w`, `s.rb` bytes apart) by the one activation row `a`,
/// written to `o[..R]`.
///
/// # Safety
/// As [`chunk`], for that tile.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv<const T: u8, const R: usize>(
    w: *const u8,
    a: *const BlockQ8,
    s: Shape,
    o: *mut f32,
) {
    let mut acc = _mm256_setzero_ps();
    let mut mins = _mm256_setzero_ps();
    for b in 0..s.kb {
        // SAFETY: block b of weight rows r < R and of the activation row are in
        // bounds (caller's contract).
        unsafe {
            let blk = w.add(b * s.bb);
            if R == LANES && s.ahead != 0 {
                // The tile `ahead` bytes on: 8 rows of kb blocks, 8 blocks' bytes
                // per block step.
                prefetch(w.wrapping_add(s.ahead + b * LANES * s.bb), LANES * s.bb);
            }
            let ab = a.add(b);
            let mut p = [_mm256_setzero_si256(); LANES];
            for r in 0..R {
                p[r] = dot::<T>(weights::<T>(blk.add(r * s.rb)), ab);
            }
            let (dw, mw) = scales_min::<T, R>(blk, s.rb);
            let sc = _mm256_mul_ps(dw, _mm256_set1_ps((*ab).d));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce(p)), sc, acc);
            if T != Q8_0 {
                mins = _mm256_add_ps(mins, _mm256_mul_ps(mw, _mm256_set1_ps((*ab).s)));
            }
        }
    }
    // SAFETY: R writable outputs at `o` (caller's contract).
    unsafe { store::<R>(_mm256_add_ps(acc, mins), o) };
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::kernels::avx2::available;
    use crate::kernels::{f16_at, portable, q8};

    /// Blocks of `ty` with small finite f16 scales (and minimums) and arbitrary
    /// quants, `(rows, blocks)` of them.
    fn blocks(ty: WeightType, rows: usize, kb: usize, seed: u32) -> Vec<u8> {
        let bb = ty.block_bytes();
        let mut w: Vec<u8> = (0..rows * kb * bb)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect();
        let heads = if ty == WeightType::Q4_1 { 2 } else { 1 };
        for (i, blk) in w.chunks_exact_mut(bb).enumerate() {
            for h in 0..heads {
                let v = ((i * 7 + h * 3 + seed as usize) % 23) as f32 / 64.0 - 0.17;
                blk[2 * h..2 * h + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        w
    }

    /// Every type, odd row counts and batches 1 to 17: within rounding of the
    /// portable kernel, and each activation row's bits the same alone as in
    /// any batch (the eight-weight-row tile against the eight-activation-row one).
    #[test]
    fn matches_portable_and_a_row_has_the_same_bits_in_any_batch() {
        if !available() {
            return;
        }
        for ty in [WeightType::Q4_0, WeightType::Q4_1, WeightType::Q8_0] {
            for (rows, kb) in [(1, 1), (5, 3), (9, 2), (17, 4), (24, 18)] {
                let w = blocks(ty, rows, kb, rows as u32 * 31 + kb as u32);
                let rb = kb * ty.block_bytes();
                let cols = kb * q8::QK;
                for m in [1, 2, 3, 7, 8, 9, 16, 17] {
                    let x: Vec<f32> = (0..m * cols)
                        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 13.0)
                        .collect();
                    let mut acts = Vec::new();
                    q8::quantize_rows(&x, &mut acts);
                    let columns = q8::Columns::of(&acts, m);
                    let mut out = vec![0f32; rows * m];
                    assert!(rows_ok(ty, &w, rb, (&acts, &columns), m, &mut out));
                    for i in 0..rows {
                        let wr = &w[i * rb..(i + 1) * rb];
                        let mut want = vec![0f32; m];
                        portable::rows(ty, wr, &acts, &mut want);
                        for t in 0..m {
                            let got = out[i * m + t];
                            let tol = 1e-6 * magnitude(ty, wr, &acts[t * kb..(t + 1) * kb]) + 1e-6;
                            assert!(
                                (got - want[t]).abs() <= tol,
                                "{ty:?} {rows}x{cols} m={m} row {i} act {t}: {got} vs {}",
                                want[t]
                            );
                        }
                    }
                    for t in 0..m {
                        let one = &acts[t * kb..(t + 1) * kb];
                        let mut alone = vec![0f32; rows];
                        let c1 = q8::Columns::of(one, 1);
                        assert!(rows_ok(ty, &w, rb, (one, &c1), 1, &mut alone));
                        for i in 0..rows {
                            assert_eq!(
                                alone[i].to_bits(),
                                out[i * m + t].to_bits(),
                                "{ty:?} {rows}x{cols} m={m} row {i} act {t}"
                            );
                        }
                    }
                }
            }
        }
    }

    /// A bound on the sum of the magnitudes of a dot product's block terms
    /// (the float rounding of two summation orders differs by a few ulps of it).
    fn magnitude(ty: WeightType, w: &[u8], acts: &[BlockQ8]) -> f32 {
        w.chunks_exact(ty.block_bytes())
            .zip(acts)
            .map(|(blk, a)| {
                let d = f16_at(blk, 0).abs();
                let m = match ty {
                    WeightType::Q4_1 => f16_at(blk, 2).abs(),
                    WeightType::Q4_0 => 8.0 * d,
                    _ => 0.0,
                };
                d * a.d.abs() * 32.0 * 127.0 * 127.0 + m * a.s.abs()
            })
            .sum()
    }

    fn rows_ok(
        ty: WeightType,
        w: &[u8],
        rb: usize,
        a: (&[BlockQ8], &Columns),
        m: usize,
        out: &mut [f32],
    ) -> bool {
        rows(ty, w, rb, a, m, out).is_some()
    }

    #[test]
    fn other_types_and_shapes_that_do_not_fit_are_refused() {
        let acts = [BlockQ8::ZERO; 2];
        let columns = Columns::of(&acts, 1);
        let mut out = [0f32; 1];
        let w = [0u8; 144];
        assert!(rows(WeightType::Q4K, &w, 144, (&acts, &columns), 1, &mut out).is_none());
        // Two activation blocks against one Q8_0 block per row.
        assert!(
            rows(
                WeightType::Q8_0,
                &w[..34],
                34,
                (&acts, &columns),
                1,
                &mut out
            )
            .is_none()
        );
    }
}
