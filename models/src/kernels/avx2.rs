//! AVX2 + FMA (+ F16C for the scales) kernels for the K-quants (Q4_K, Q5_K,
//! Q6_K) against 32-value activation blocks, where a call mixes them with
//! 32-value weight types (the 32-value types have [`super::q32_avx2`] and
//! [`super::rows8_avx2`]; K-quants alone run [`super::kquant_avx2`]), and the
//! helpers every AVX2 kernel shares. Tiles of `R` weight rows by
//! `N` activation rows: each weight block is loaded and unpacked into registers
//! once and multiplied with the same block of the tile's `N` activation rows,
//! and each activation block is loaded once for the tile's `R` weight rows. The
//! int8 products go through `vpmaddubsw`/`vpmaddwd` as in llama.cpp, and the
//! block's scales are applied in f32.
//!
//! Every (weight row, activation row) pair has one accumulator that sums its
//! blocks in the same order whatever the tile, so an output's bits do not depend
//! on `m` or on which tile computed it (a prompt prefilled in chunks and a batch
//! decoded together give the bits of one pass). The accumulators are fixed-size
//! arrays indexed only by the unrolled tile loops, so they live in registers.

// The tile loops index the accumulators, the minimum sums and the row offsets
// by the same constant-bounded counters, which LLVM unrolls into registers.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::WeightType;
use super::q8::{BlockQ8, Columns, PAD};

/// Whether this CPU runs these kernels (checked once).
pub fn available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// `out[i * m + t] = dot(weight row i, activation row t)` for the rows of `w`
/// (`rb` bytes each) and the `m` activation rows of `acts` (whose scales and
/// sums `columns` holds block-major); `None` for the 32-value types, when the
/// CPU lacks AVX2, FMA or F16C, or when the shapes do not fit together.
pub fn rows(
    ty: WeightType,
    w: &[u8],
    rb: usize,
    (acts, columns): (&[BlockQ8], &Columns),
    m: usize,
    out: &mut [f32],
) -> Option<()> {
    let kind = match ty {
        WeightType::Q4K => Kind::Q4K,
        WeightType::Q5K => Kind::Q5K,
        WeightType::Q6K => Kind::Q6K,
        _ => return None,
    };
    let (bb, _, kb) = call_shape(ty, w, rb, (acts, columns), m, out.len())?;
    let s = Shape {
        rb,
        nb: rb / bb,
        kb,
        m,
    };
    // SAFETY: AVX2, FMA and F16C were detected on this CPU just above, and `fits`
    // checked every length `chunk` reads or writes against `s`.
    unsafe { chunk(kind, w, acts, out, s) };
    Some(())
}

/// The block types these tiles read.
#[derive(Clone, Copy)]
enum Kind {
    Q4K,
    Q5K,
    Q6K,
}

/// `(block bytes, weight rows, activation blocks per row)` of a call on this
/// CPU with AVX2, FMA and F16C, when its lengths fit together: `w` is whole rows
/// of `rb` bytes in whole blocks of `ty`, `acts` is `m` rows as long as a weight
/// row, `columns` holds their scales and sums (and [`PAD`] more), and `out` has
/// one value per (weight row, activation row). `None` otherwise: what every AVX2
/// kernel checks before its `unsafe` block.
pub(super) fn call_shape(
    ty: WeightType,
    w: &[u8],
    rb: usize,
    (acts, columns): (&[BlockQ8], &Columns),
    m: usize,
    out: usize,
) -> Option<(usize, usize, usize)> {
    if !available() || m == 0 || rb == 0 {
        return None;
    }
    let (bb, per) = (ty.block_bytes(), ty.block_values() / 32);
    let n_rows = w.len() / rb;
    let kb = acts.len() / m;
    let fits = rb.is_multiple_of(bb)
        && w.len() == n_rows * rb
        && rb / bb * per == kb
        && acts.len() == kb * m
        && columns.d.len() >= kb * m + PAD
        && columns.s.len() >= kb * m + PAD
        && out == n_rows * m;
    fits.then_some((bb, n_rows, kb))
}

/// The sizes a tile works in: `rb` bytes and `nb` blocks per weight row, `kb`
/// activation blocks per activation row, `m` activation rows (the output's
/// stride).
#[derive(Clone, Copy)]
struct Shape {
    rb: usize,
    nb: usize,
    kb: usize,
    m: usize,
}

/// Four-row tiles ahead that a one-activation-row tile prefetches
/// (`TENZRO_CPU_PREFETCH`, read once, default 4; 0 leaves it to the hardware).
/// A decode step streams every weight once from memory, and the hardware
/// prefetcher alone kept the kernel waiting: 4 tiles ahead took ~40 % off a pass
/// over the default model's weights (benches/llama-cpp/README.md, session 9).
pub(super) fn prefetch_tiles() -> usize {
    static TILES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *TILES.get_or_init(|| {
        std::env::var("TENZRO_CPU_PREFETCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(4)
            .min(64)
    })
}

/// Prefetch the `step` bytes at `p`, one line at a time (`step` <= 192).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn prefetch(p: *const u8, step: usize) {
    let mut at = 0;
    while at < step {
        // A prefetch is a hint that never faults, whatever the address;
        // `wrapping_add` computes it without claiming it is in bounds.
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(at).cast());
        at += 48;
    }
}

/// A tile's inputs: `R` weight rows from `w` (`rb` bytes apart), `N` activation
/// rows from `a` (`kb` blocks apart).
#[derive(Clone, Copy)]
struct Tile {
    w: *const u8,
    a: *const BlockQ8,
}

/// Per (weight row, activation row): the vector accumulator and the scalar sum of
/// the blocks' minimum terms.
type Acc<const R: usize, const N: usize> = ([[__m256; N]; R], [[f32; N]; R]);

/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` is `out.len() / s.m` rows of `s.rb` bytes
/// and `acts` is `s.m` rows of `s.kb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk(ty: Kind, w: &[u8], acts: &[BlockQ8], out: &mut [f32], s: Shape) {
    let n_rows = w.len() / s.rb;
    // One activation row: four weight rows per tile. A batch: two weight rows by
    // up to four activation rows (eight accumulators, the registers' limit).
    let r_step = if s.m == 1 { 4 } else { 2 };
    let mut i = 0;
    while i < n_rows {
        let r = if n_rows - i >= r_step { r_step } else { 1 };
        let mut t = 0;
        while t < s.m {
            let n = (s.m - t).min(if r == 4 { 1 } else { 4 });
            // SAFETY: rows i..i + r < n_rows of `w` and activation rows t..t + n
            // <= m of `acts` exist (the caller's contract); the tile reads only
            // those and writes out[(i + r') * m + t + n'] for r' < r, n' < n.
            unsafe {
                let tile = Tile {
                    w: w.as_ptr().add(i * s.rb),
                    a: acts.as_ptr().add(t * s.kb),
                };
                let o = out.as_mut_ptr().add(i * s.m + t);
                match (r, n) {
                    (4, _) => tile_ty::<4, 1>(ty, tile, s, o),
                    (2, 1) => tile_ty::<2, 1>(ty, tile, s, o),
                    (2, 2) => tile_ty::<2, 2>(ty, tile, s, o),
                    (2, 3) => tile_ty::<2, 3>(ty, tile, s, o),
                    (2, _) => tile_ty::<2, 4>(ty, tile, s, o),
                    (_, 1) => tile_ty::<1, 1>(ty, tile, s, o),
                    (_, 2) => tile_ty::<1, 2>(ty, tile, s, o),
                    (_, 3) => tile_ty::<1, 3>(ty, tile, s, o),
                    _ => tile_ty::<1, 4>(ty, tile, s, o),
                }
            }
            t += n;
        }
        i += r;
    }
}

/// # Safety
/// As [`chunk`], for the `R x N` tile at `t`, writing `o[r * m + n]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_ty<const R: usize, const N: usize>(ty: Kind, t: Tile, s: Shape, o: *mut f32) {
    // SAFETY: forwarded from the caller's contract.
    let (acc, mins) = unsafe {
        match ty {
            Kind::Q4K => k45::<R, N, false>(t, s),
            Kind::Q5K => k45::<R, N, true>(t, s),
            Kind::Q6K => q6k::<R, N>(t, s),
        }
    };
    for r in 0..R {
        for n in 0..N {
            // SAFETY: o[r * m + n] is inside the tile's outputs (caller's contract).
            unsafe { *o.add(r * s.m + n) = hsum(acc[r][n]) + mins[r][n] };
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The f16 at `p` as f32.
///
/// # Safety
/// `p` points at 2 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16(p: *const u8) -> f32 {
    // SAFETY: 2 readable bytes at `p` (caller's contract), read unaligned.
    let bits = unsafe { std::ptr::read_unaligned(p.cast::<u16>()) };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// The two f16s at `p` as f32 (a block's scale and minimum).
///
/// # Safety
/// `p` points at 4 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16x2(p: *const u8) -> (f32, f32) {
    // SAFETY: 4 readable bytes at `p` (caller's contract), read unaligned.
    let bits = unsafe { std::ptr::read_unaligned(p.cast::<i32>()) };
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// # Safety
/// `p` points at 32 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load32(p: *const u8) -> __m256i {
    // SAFETY: 32 readable bytes (caller's contract); `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// `sum(u[i] * a[i])` in eight i32 lanes, with `u` unsigned (0..=255) bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8(u: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fma(acc: __m256, dot: __m256i, scale: f32) -> __m256 {
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(scale), acc)
}

fn zero<const R: usize, const N: usize>() -> Acc<R, N> {
    // SAFETY: `_mm256_setzero_ps` only needs AVX, which every caller has.
    let z = unsafe { _mm256_setzero_ps() };
    ([[z; N]; R], [[0f32; N]; R])
}

/// The 8 sub-block scales and minimums of a Q4_K/Q5_K block's 12 scale bytes,
/// times `d` and `dmin` (ggml's `get_scale_min_k4` for all eight at once).
///
/// # Safety
/// `p` points at 12 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_scales(p: *const u8, d: f32, dmin: f32) -> ([f32; 8], [f32; 8]) {
    // SAFETY: 12 readable bytes at `p` (caller's contract), read unaligned.
    let u: [u32; 3] = unsafe { std::ptr::read_unaligned(p.cast()) };
    let (m1, m2, m3) = (0x3f3f_3f3f_u32, 0x0f0f_0f0f_u32, 0x0303_0303_u32);
    let sc = [u[0] & m1, (u[2] & m2) | (((u[0] >> 6) & m3) << 4)];
    let mn = [u[1] & m1, ((u[2] >> 4) & m2) | (((u[1] >> 6) & m3) << 4)];
    (widen(sc, d), widen(mn, dmin))
}

/// The 8 bytes of `v` as f32, times `k`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn widen(v: [u32; 2], k: f32) -> [f32; 8] {
    let b = _mm_set_epi32(0, 0, v[1] as i32, v[0] as i32);
    let f = _mm256_mul_ps(
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)),
        _mm256_set1_ps(k),
    );
    let mut out = [0f32; 8];
    // SAFETY: `out` is 8 writable f32s; `storeu` has no alignment requirement.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), f) };
    out
}

/// Q4_K and Q5_K (`HIGH`: the fifth bit from `qh`).
///
/// # Safety
/// As [`q8_0`], for Q4_K/Q5_K blocks (8 activation blocks per weight block).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k45<const R: usize, const N: usize, const HIGH: bool>(t: Tile, s: Shape) -> Acc<R, N> {
    let (mut acc, mut mins) = zero::<R, N>();
    let low = _mm256_set1_epi8(0x0F);
    let sixteen = _mm256_set1_epi8(16);
    let bb = if HIGH { 176 } else { 144 };
    for b in 0..s.nb {
        for r in 0..R {
            // SAFETY: block b of weight row r and activation blocks 8b..8b + 8 of
            // rows n < N are in bounds (caller's contract).
            unsafe {
                let blk = t.w.add(r * s.rb + b * bb);
                let (d, dmin) = f16x2(blk);
                let (sc, mn) = k4_scales(blk.add(4), d, dmin);
                let qh = load32(blk.add(16));
                let qs = blk.add(if HIGH { 48 } else { 16 });
                for j in 0..4 {
                    let raw = load32(qs.add(32 * j));
                    let halves = [
                        _mm256_and_si256(raw, low),
                        _mm256_and_si256(_mm256_srli_epi16(raw, 4), low),
                    ];
                    for (h, mut q) in halves.into_iter().enumerate() {
                        let sb = 2 * j + h;
                        if HIGH {
                            let bit = _mm256_set1_epi8(1 << sb);
                            let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                            q = _mm256_or_si256(q, _mm256_and_si256(set, sixteen));
                        }
                        for n in 0..N {
                            let a = &*t.a.add(n * s.kb + 8 * b + sb);
                            let x = load32(a.qs.as_ptr().cast());
                            acc[r][n] = fma(acc[r][n], dot_u8(q, x), sc[sb] * a.d);
                            mins[r][n] -= mn[sb] * a.s;
                        }
                    }
                }
            }
        }
    }
    (acc, mins)
}

/// # Safety
/// As [`q8_0`], for Q6_K blocks (8 activation blocks per weight block).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k<const R: usize, const N: usize>(t: Tile, s: Shape) -> Acc<R, N> {
    let (mut acc, mins) = zero::<R, N>();
    let low = _mm256_set1_epi8(0x0F);
    let three = _mm256_set1_epi8(3);
    let off = _mm256_set1_epi8(32);
    for b in 0..s.nb {
        for r in 0..R {
            // SAFETY: block b of weight row r and activation blocks 8b..8b + 8 of
            // rows n < N are in bounds (caller's contract).
            unsafe {
                let blk = t.w.add(r * s.rb + b * 210);
                let d = f16(blk.add(208));
                let sc: [i8; 16] = std::ptr::read_unaligned(blk.add(192).cast());
                for half in 0..2 {
                    let ql0 = load32(blk.add(64 * half));
                    let ql1 = load32(blk.add(64 * half + 32));
                    let qh = load32(blk.add(128 + 32 * half));
                    let groups = [
                        _mm256_or_si256(_mm256_and_si256(ql0, low), q6_high::<0>(qh, three)),
                        _mm256_or_si256(_mm256_and_si256(ql1, low), q6_high::<2>(qh, three)),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low),
                            q6_high::<4>(qh, three),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
                            q6_high::<6>(qh, three),
                        ),
                    ];
                    for (g, q) in groups.into_iter().enumerate() {
                        let q = _mm256_sub_epi8(q, off);
                        let i = 8 * half + 2 * g;
                        let weights16 = _mm256_set_m128i(
                            _mm_set1_epi16(i16::from(sc[i + 1])),
                            _mm_set1_epi16(i16::from(sc[i])),
                        );
                        let aq = _mm256_sign_epi8(q, q);
                        for n in 0..N {
                            let a = &*t.a.add(n * s.kb + 8 * b + 4 * half + g);
                            let x = _mm256_sign_epi8(load32(a.qs.as_ptr().cast()), q);
                            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, x), weights16);
                            acc[r][n] = fma(acc[r][n], dot, d * a.d);
                        }
                    }
                }
            }
        }
    }
    (acc, mins)
}

/// Bits `SHIFT..SHIFT + 2` of each byte of `qh`, moved to bits 4 and 5.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q6_high<const SHIFT: i32>(qh: __m256i, three: __m256i) -> __m256i {
    let bits = match SHIFT {
        0 => qh,
        2 => _mm256_srli_epi16(qh, 2),
        4 => _mm256_srli_epi16(qh, 4),
        _ => _mm256_srli_epi16(qh, 6),
    };
    _mm256_slli_epi16(_mm256_and_si256(bits, three), 4)
}

/// [`BlockQ8::quantize`] of each 32 values of `x` into `out`, with the same bits:
/// the same `amax / 127` scale and its reciprocal, the same products, and
/// `roundf`'s ties away from zero (`trunc`, then one step where the dropped part
/// is at least a half). A block with a NaN or an infinity takes the scalar path.
/// `false` (and `out` untouched) when the CPU lacks AVX2/FMA/F16C.
pub fn quantize_rows(x: &[f32], out: &mut Vec<BlockQ8>) -> bool {
    if !available() {
        return false;
    }
    out.clear();
    out.reserve(x.len() / 32);
    for b in x.chunks_exact(32) {
        // SAFETY: AVX2 was detected just above; `b` is 32 readable f32s.
        let q = unsafe { quantize_block(b) };
        out.push(q.unwrap_or_else(|| BlockQ8::quantize(b)));
    }
    true
}

/// # Safety
/// The CPU has AVX2; `x` holds at least 32 f32s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block(x: &[f32]) -> Option<BlockQ8> {
    // SAFETY: 32 readable f32s (caller's contract).
    let d = match unsafe { block_step::<4>(x.as_ptr()) }? {
        Step::Zero => return Some(BlockQ8::ZERO),
        Step::D(d) => d,
    };
    let id = _mm256_set1_ps(1.0 / d);
    let mut r = [_mm256_setzero_si256(); 4];
    for (i, ri) in r.iter_mut().enumerate() {
        // SAFETY: as above, i < 4; `loadu` is unaligned.
        *ri = round_scaled(unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * i)) }, id);
    }
    let sum = hsum_i32(_mm256_add_epi32(
        _mm256_add_epi32(r[0], r[1]),
        _mm256_add_epi32(r[2], r[3]),
    ));
    let mut qs = [0i8; 32];
    // SAFETY: `qs` is 32 writable bytes; `storeu` is unaligned.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), pack_i8(r)) };
    Some(BlockQ8 {
        d,
        s: d * sum as f32,
        qs,
    })
}

/// The step of an activation block ([`BlockQ8::quantize`]'s and
/// `BlockQ8K::quantize`'s `max|x| / 127`).
pub(super) enum Step {
    /// Every value is zero.
    Zero,
    D(f32),
}

/// [`Step`] of the `8 * V` values at `x` (the same `max|x|`, then the same
/// division as the scalar quantisers); `None` when one is a NaN or an infinity
/// (the scalar path takes those).
///
/// # Safety
/// The CPU has AVX2; `x` points at `8 * V` readable f32s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn block_step<const V: usize>(x: *const f32) -> Option<Step> {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut amax = _mm256_setzero_ps();
    let mut nan = _mm256_setzero_ps();
    for i in 0..V {
        // SAFETY: i < V (caller's contract); `loadu` is unaligned.
        let v = unsafe { _mm256_loadu_ps(x.add(8 * i)) };
        amax = _mm256_max_ps(amax, _mm256_and_ps(v, abs_mask));
        nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    if _mm256_movemask_ps(nan) != 0 {
        return None;
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
    if amax == 0.0 {
        return Some(Step::Zero);
    }
    amax.is_finite().then_some(Step::D(amax / 127.0))
}

/// `roundf(v * id)` in each lane as i32: `trunc`, then one step away from zero
/// where the dropped part is at least a half (the scalar quantisers'
/// `(v * id).round()`, ties away from zero).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn round_scaled(v: __m256, id: __m256) -> __m256i {
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let sign_mask = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let p = _mm256_mul_ps(v, id);
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(p);
    // |p - trunc(p)| is exact; at least a half rounds away from zero.
    let frac = _mm256_and_ps(_mm256_sub_ps(p, t), abs_mask);
    let up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5), _CMP_GE_OQ);
    let step = _mm256_and_ps(
        up,
        _mm256_or_ps(_mm256_set1_ps(1.0), _mm256_and_ps(p, sign_mask)),
    );
    _mm256_cvttps_epi32(_mm256_add_ps(t, step))
}

/// The 32 i32 lanes of `r` (each within i8) as 32 bytes in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn pack_i8(r: [__m256i; 4]) -> __m256i {
    // packs works within 128-bit lanes: the permute puts the bytes back in order.
    let w01 = _mm256_packs_epi32(r[0], r[1]);
    let w23 = _mm256_packs_epi32(r[2], r[3]);
    let b = _mm256_packs_epi16(w01, w23);
    _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// The sum of the eight i32 lanes of `v`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn hsum_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
    _mm_cvtsi128_si32(s)
}
