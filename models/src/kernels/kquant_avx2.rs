//! AVX2 kernels for Q4_K, Q5_K and Q6_K weights against [`BlockQ8K`]
//! activations (one f32 scale per 256 values), as llama.cpp's
//! `ggml_vec_dot_q*_K_q8_K`: each 32-value sub-block goes through
//! `vpmaddubsw`, its integer sub-scale through `vpmaddwd`, the sub-blocks sum in
//! i32 lanes, and the super-block converts to float once (one FMA by `d * a.d`).
//! The minimums (Q4_K, Q5_K) and Q6_K's offset of 32 are one integer dot of the
//! block's (sub-)scales with the activations' 16-value sums.
//!
//! Tiles of one weight row by up to four activation rows: each weight block is
//! unpacked once for the tile's activation rows (more weight rows per tile
//! measured slower: their accumulators left the registers). Every (weight row, activation row) pair has one float accumulator that
//! takes the blocks in order with the same operations whatever the tile (the
//! integer sums are exact), so an output's bits do not depend on the batch.

// The tile loops index the accumulators by constant-bounded counters, which LLVM
// unrolls into registers.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::WeightType;
use super::avx2::{
    Step, available, block_step, f16, f16x2, hsum, hsum_i32, load32, pack_i8, q6_high, round_scaled,
};
use super::q8k::{
    BlockQ8K, GROUP, PACKED_D, PACKED_DMIN, PACKED_MN, PACKED_Q4K, PACKED_SC, QK_K, serves,
};

/// `out[i * m + t] = dot(weight row i, activation row t)` for the rows of `w`
/// (`rb` bytes each) and the `m` activation rows of `acts`; `None` when the CPU
/// lacks AVX2, FMA or F16C, `ty` is not a K-quant or the shapes do not fit.
pub fn rows(
    ty: WeightType,
    w: &[u8],
    rb: usize,
    acts: &[BlockQ8K],
    m: usize,
    out: &mut [f32],
) -> Option<()> {
    if !available() || !serves(ty) || m == 0 || rb == 0 {
        return None;
    }
    let bb = ty.block_bytes();
    let n_rows = w.len() / rb;
    let nb = rb / bb;
    let fits = rb.is_multiple_of(bb)
        && w.len() == n_rows * rb
        && acts.len() == nb * m
        && out.len() == n_rows * m;
    if !fits {
        return None;
    }
    // SAFETY: AVX2, FMA and F16C were detected just above, and `fits` checked
    // every length `chunk` reads or writes.
    unsafe { chunk(ty, w, acts, out, Shape { rb, nb, m }) };
    Some(())
}

/// `rb` bytes and `nb` blocks per weight row (and activation row); `m`
/// activation rows (the output's stride).
#[derive(Clone, Copy)]
struct Shape {
    rb: usize,
    nb: usize,
    m: usize,
}

/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` is `out.len() / s.m` rows of `s.rb`
/// bytes of `ty`'s blocks and `acts` is `s.m` rows of `s.nb` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk(ty: WeightType, w: &[u8], acts: &[BlockQ8K], out: &mut [f32], s: Shape) {
    let n_rows = w.len() / s.rb;
    // Blocks of activation rows that stay in L1 while every weight row goes by.
    for (rows, last) in super::act_blocks(s.m) {
        for i in 0..n_rows {
            let mut t = rows;
            while t < last {
                let n = (last - t).min(4);
                // SAFETY: weight row i < n_rows and activation rows t..t + n <= m
                // exist (the caller's contract); the tile reads only those and writes
                // out[i * m + t + n'] for n' < n.
                unsafe {
                    let wp = w.as_ptr().add(i * s.rb);
                    let ap = acts.as_ptr().add(t * s.nb);
                    let o = out.as_mut_ptr().add(i * s.m + t);
                    match n {
                        1 => tile::<1, 1>(ty, wp, ap, s, o),
                        2 => tile::<1, 2>(ty, wp, ap, s, o),
                        3 => tile::<1, 3>(ty, wp, ap, s, o),
                        _ => tile::<1, 4>(ty, wp, ap, s, o),
                    }
                }
                t += n;
            }
        }
    }
}

/// The `R x N` tile of weight rows at `w` (`s.rb` bytes apart) and activation
/// rows at `a` (`s.nb` blocks apart), writing `o[r * m + n]`.
///
/// # Safety
/// As [`chunk`], for the tile's rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile<const R: usize, const N: usize>(
    ty: WeightType,
    w: *const u8,
    a: *const BlockQ8K,
    s: Shape,
    o: *mut f32,
) {
    // SAFETY: forwarded from the caller's contract.
    let acc = unsafe {
        match ty {
            WeightType::Q5K => rows_k::<R, N, 1>(w, a, s),
            WeightType::Q6K => rows_k::<R, N, 2>(w, a, s),
            _ => rows_k::<R, N, 0>(w, a, s),
        }
    };
    for r in 0..R {
        for n in 0..N {
            // SAFETY: o[r * m + n] is inside the tile's outputs (caller's contract).
            unsafe { *o.add(r * s.m + n) = hsum(acc[r][n]) };
        }
    }
}

/// The tile's accumulators over every block; `KIND` 0: Q4_K, 1: Q5_K, 2: Q6_K.
///
/// # Safety
/// As [`tile`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_k<const R: usize, const N: usize, const KIND: u8>(
    w: *const u8,
    a: *const BlockQ8K,
    s: Shape,
) -> [[__m256; N]; R] {
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    let bb = match KIND {
        0 => 144,
        1 => 176,
        _ => 210,
    };
    for b in 0..s.nb {
        let mut ab = [std::ptr::null::<BlockQ8K>(); N];
        for n in 0..N {
            // SAFETY: block b of activation row n < N (caller's contract).
            ab[n] = unsafe { a.add(n * s.nb + b) };
        }
        for r in 0..R {
            // SAFETY: block b of weight row r (caller's contract) and the
            // activation blocks above.
            unsafe {
                let blk = w.add(r * s.rb + b * bb);
                match KIND {
                    2 => q6k_block::<N>(blk, ab, &mut acc[r]),
                    1 => k45_block::<N, true>(blk, ab, &mut acc[r]),
                    _ => k45_block::<N, false>(blk, ab, &mut acc[r]),
                }
            }
        }
    }
    acc
}

/// One Q4_K/Q5_K block (`HIGH`: Q5_K's fifth bit) against `N` activation
/// blocks, into `acc[n] += d * a.d * sumi - dmin * a.d * summ`.
///
/// # Safety
/// `blk` is a readable Q4_K (144 bytes) or Q5_K (176 bytes) block; each `a[n]`
/// a readable block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k45_block<const N: usize, const HIGH: bool>(
    blk: *const u8,
    a: [*const BlockQ8K; N],
    acc: &mut [__m256; N],
) {
    // SAFETY: the block's bytes and the activation blocks are readable (caller's
    // contract); every load is unaligned.
    unsafe {
        let (d, dmin) = f16x2(blk);
        let (sc, mn) = k4_scales(blk.add(4));
        // The eight scales as i16 in both 128-bit lanes; the minimums as i16,
        // each twice (one per 16-value sum).
        let sc = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
        let mn = _mm_cvtepu8_epi16(_mm_cvtsi64_si128(mn as i64));
        let low = _mm256_set1_epi8(0x0F);
        let mut sumi = [_mm256_setzero_si256(); N];
        let qs = blk.add(if HIGH { 48 } else { 16 });
        let mut hbits = if HIGH {
            load32(blk.add(16))
        } else {
            _mm256_setzero_si256()
        };
        for j in 0..4 {
            let raw = load32(qs.add(32 * j));
            let mut q0 = _mm256_and_si256(raw, low);
            let mut q1 = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
            if HIGH {
                let one = _mm256_set1_epi8(1);
                q0 = _mm256_or_si256(q0, _mm256_slli_epi16(_mm256_and_si256(hbits, one), 4));
                hbits = _mm256_srli_epi16(hbits, 1);
                q1 = _mm256_or_si256(q1, _mm256_slli_epi16(_mm256_and_si256(hbits, one), 4));
                hbits = _mm256_srli_epi16(hbits, 1);
            }
            let s0 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(shuf(2 * j)));
            let s1 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16(shuf(2 * j + 1)));
            for n in 0..N {
                let x = (*a[n]).qs.as_ptr().add(64 * j).cast::<u8>();
                let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, load32(x)), s0);
                let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, load32(x.add(32))), s1);
                sumi[n] = _mm256_add_epi32(sumi[n], _mm256_add_epi32(p0, p1));
            }
        }
        for n in 0..N {
            let ad = (*a[n]).d;
            // The minimums' dot in the low four lanes, zeros above.
            let sums = _mm_loadu_si128((*a[n]).sums32.as_ptr().cast());
            let summ = _mm256_zextps128_ps256(_mm_cvtepi32_ps(_mm_madd_epi16(sums, mn)));
            let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[n]), _mm256_set1_ps(d * ad), acc[n]);
            acc[n] = _mm256_fmadd_ps(summ, _mm256_set1_ps(-(dmin * ad)), v);
        }
    }
}

/// The `vpshufb` control that broadcasts i16 element `e` of a 128-bit lane.
const fn shuf(e: usize) -> i16 {
    (2 * e as i16) | ((2 * e as i16 + 1) << 8)
}

/// One Q6_K block against `N` activation blocks: the 6-bit values unsigned
/// (0..=63) through `vpmaddubsw`, the offset of 32 taken back as `32 *
/// sum(sc[i] * bsums[i])`, into `acc[n] += d * a.d * sumi`.
///
/// # Safety
/// `blk` is a readable Q6_K block (210 bytes); each `a[n]` a readable block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q6k_block<const N: usize>(
    blk: *const u8,
    a: [*const BlockQ8K; N],
    acc: &mut [__m256; N],
) {
    // SAFETY: the block's bytes and the activation blocks are readable (caller's
    // contract); every load is unaligned.
    unsafe {
        let d = f16(blk.add(208));
        let sc8 = _mm_loadu_si128(blk.add(192).cast());
        let sc16 = _mm256_cvtepi8_epi16(sc8);
        let low = _mm256_set1_epi8(0x0F);
        let three = _mm256_set1_epi8(3);
        let mut sumi = [_mm256_setzero_si256(); N];
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
            // Scales 8 * half .. 8 * half + 8 as i16 in both 128-bit lanes.
            let sh = if half == 0 {
                _mm256_permute2x128_si256(sc16, sc16, 0x00)
            } else {
                _mm256_permute2x128_si256(sc16, sc16, 0x11)
            };
            for (g, q) in groups.into_iter().enumerate() {
                // Sub-scale 2g for the first 16 values, 2g + 1 for the next 16.
                let k =
                    _mm256_set_m128i(_mm_set1_epi16(shuf(2 * g + 1)), _mm_set1_epi16(shuf(2 * g)));
                let scale = _mm256_shuffle_epi8(sh, k);
                for n in 0..N {
                    let x = (*a[n]).qs.as_ptr().add(128 * half + 32 * g).cast::<u8>();
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, load32(x)), scale);
                    sumi[n] = _mm256_add_epi32(sumi[n], p);
                }
            }
        }
        for n in 0..N {
            let bs = load32((*a[n]).bsums.as_ptr().cast());
            let off = _mm256_slli_epi32(_mm256_madd_epi16(bs, sc16), 5);
            let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[n], off));
            acc[n] = _mm256_fmadd_ps(v, _mm256_set1_ps(d * (*a[n]).d), acc[n]);
        }
    }
}

/// `out[i * m + t] = dot(weight row i, activation row t)` for the rows of `w`:
/// whole groups of 8 Q4_K rows packed by [`super::q8k::pack_q4k`] (`nb`
/// super-blocks each); `None` when the CPU lacks AVX2, FMA or F16C or the
/// shapes do not fit.
pub fn packed_rows(
    w: &[u8],
    nb: usize,
    acts: &[BlockQ8K],
    m: usize,
    out: &mut [f32],
) -> Option<()> {
    let gb = nb * PACKED_Q4K;
    if !available() || m == 0 || gb == 0 || !w.len().is_multiple_of(gb) {
        return None;
    }
    let groups = w.len() / gb;
    if acts.len() != nb * m || out.len() != groups * GROUP * m {
        return None;
    }
    for (rows, last) in super::act_blocks(m) {
        for g in 0..groups {
            let mut t = rows;
            while t < last {
                let n = (last - t).min(4);
                let mut res = [[0f32; GROUP]; 4];
                // SAFETY: AVX2, FMA and F16C were detected above; group g's `gb`
                // bytes and activation rows t..t + n (`nb` blocks each) exist, as
                // checked above.
                unsafe {
                    let wp = w.as_ptr().add(g * gb);
                    let ap = acts.as_ptr().add(t * nb);
                    match n {
                        1 => packed_tile::<1>(wp, ap, nb, &mut res),
                        2 => packed_tile::<2>(wp, ap, nb, &mut res),
                        3 => packed_tile::<3>(wp, ap, nb, &mut res),
                        _ => packed_tile::<4>(wp, ap, nb, &mut res),
                    }
                }
                for r in 0..GROUP {
                    let o = &mut out[(g * GROUP + r) * m + t..][..n];
                    for (k, v) in o.iter_mut().enumerate() {
                        *v = res[k][r];
                    }
                }
                t += n;
            }
        }
    }
    Some(())
}

/// Eight packed Q4_K rows (one per f32 lane) by `N` activation rows, into
/// `res[n][r]`. Per sub-block, the 8 values' products of each row sum in i16
/// (16 products of at most 15 * 127: at most 30480) and go through one
/// `vpmaddwd` with the rows' scales; the minimums are four `vpmaddwd`s of the
/// rows' (minimum, minimum) pairs with the activations' 32-value sums.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `w` points at `nb` packed super-blocks and
/// `a` at `N` activation rows of `nb` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn packed_tile<const N: usize>(
    w: *const u8,
    a: *const BlockQ8K,
    nb: usize,
    res: &mut [[f32; GROUP]; 4],
) {
    let low = _mm256_set1_epi8(0x0F);
    // Row r's scale byte (of 8 at the broadcast's start) as both i16 of lane r.
    let spread = _mm256_setr_epi8(
        0, -1, 0, -1, 1, -1, 1, -1, 2, -1, 2, -1, 3, -1, 3, -1, //
        4, -1, 4, -1, 5, -1, 5, -1, 6, -1, 6, -1, 7, -1, 7, -1,
    );
    let mut acc = [_mm256_setzero_ps(); N];
    for b in 0..nb {
        // SAFETY: super-block b of the group and block b of each activation row
        // are readable (caller's contract); every load is unaligned.
        unsafe {
            let blk = w.add(b * PACKED_Q4K);
            let mut ab = [std::ptr::null::<BlockQ8K>(); N];
            for n in 0..N {
                ab[n] = a.add(n * nb + b);
            }
            let mut sumi = [_mm256_setzero_si256(); N];
            for s in 0..8 {
                let sc = _mm256_set1_epi64x(std::ptr::read_unaligned(
                    blk.add(PACKED_SC + 8 * s).cast::<i64>(),
                ));
                let sc = _mm256_shuffle_epi8(sc, spread);
                let mut t = [_mm256_setzero_si256(); N];
                for k in 0..4 {
                    let raw = load32(blk.add(32 * (4 * s + k)));
                    let lo = _mm256_and_si256(raw, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
                    for n in 0..N {
                        let x = (*ab[n]).qs.as_ptr().add(32 * s + 8 * k);
                        let x0 = _mm256_set1_epi32(std::ptr::read_unaligned(x.cast::<i32>()));
                        let x1 =
                            _mm256_set1_epi32(std::ptr::read_unaligned(x.add(4).cast::<i32>()));
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(lo, x0),
                            _mm256_maddubs_epi16(hi, x1),
                        );
                        t[n] = _mm256_add_epi16(t[n], p);
                    }
                }
                for n in 0..N {
                    sumi[n] = _mm256_add_epi32(sumi[n], _mm256_madd_epi16(t[n], sc));
                }
            }
            let mut mn = [_mm256_setzero_si256(); 4];
            for (p, v) in mn.iter_mut().enumerate() {
                *v = _mm256_cvtepu8_epi16(_mm_loadu_si128(blk.add(PACKED_MN + 16 * p).cast()));
            }
            let d = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(PACKED_D).cast()));
            let dmin = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(PACKED_DMIN).cast()));
            for n in 0..N {
                let sums = (*ab[n]).sums32.as_ptr().cast::<i32>();
                let mut summ = _mm256_setzero_si256();
                for (p, &v) in mn.iter().enumerate() {
                    let pair = _mm256_set1_epi32(std::ptr::read_unaligned(sums.add(p)));
                    summ = _mm256_add_epi32(summ, _mm256_madd_epi16(v, pair));
                }
                let ad = _mm256_set1_ps((*ab[n]).d);
                let v = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[n]), _mm256_mul_ps(d, ad), acc[n]);
                acc[n] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(summ), _mm256_mul_ps(dmin, ad), v);
            }
        }
    }
    for n in 0..N {
        // SAFETY: `res[n]` is 8 writable f32s; `storeu` is unaligned.
        unsafe { _mm256_storeu_ps(res[n].as_mut_ptr(), acc[n]) };
    }
}

/// The 8 sub-block scales and the 8 minimums of a Q4_K/Q5_K block's 12 scale
/// bytes, one per byte (ggml's `get_scale_min_k4` for all eight at once).
///
/// # Safety
/// `p` points at 12 readable bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn k4_scales(p: *const u8) -> (u64, u64) {
    // SAFETY: 12 readable bytes at `p` (caller's contract), read unaligned.
    let u: [u32; 3] = unsafe { std::ptr::read_unaligned(p.cast()) };
    let (m1, m2, m3) = (0x3f3f_3f3f_u32, 0x0f0f_0f0f_u32, 0x0303_0303_u32);
    let sc = [u[0] & m1, (u[2] & m2) | (((u[0] >> 6) & m3) << 4)];
    let mn = [u[1] & m1, ((u[2] >> 4) & m2) | (((u[1] >> 6) & m3) << 4)];
    let join = |v: [u32; 2]| u64::from(v[0]) | (u64::from(v[1]) << 32);
    (join(sc), join(mn))
}

/// [`BlockQ8K::quantize`] of each 256 values of `x` into `out`, with the same
/// bits (the same scale and reciprocal, the same products, `roundf`'s ties away
/// from zero). A block with a NaN or an infinity takes the scalar path. `false`
/// (and `out` untouched) when the CPU lacks AVX2/FMA/F16C.
pub fn quantize_rows(x: &[f32], out: &mut Vec<BlockQ8K>) -> bool {
    if !available() {
        return false;
    }
    out.clear();
    out.reserve(x.len() / QK_K);
    for b in x.chunks_exact(QK_K) {
        // SAFETY: AVX2 was detected just above; `b` is 256 readable f32s.
        let q = unsafe { quantize_block(b) };
        out.push(q.unwrap_or_else(|| BlockQ8K::quantize(b)));
    }
    true
}

/// # Safety
/// The CPU has AVX2; `x` holds at least 256 f32s.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_block(x: &[f32]) -> Option<BlockQ8K> {
    // SAFETY: 256 readable f32s (caller's contract).
    let d = match unsafe { block_step::<{ QK_K / 8 }>(x.as_ptr()) }? {
        Step::Zero => return Some(BlockQ8K::ZERO),
        Step::D(d) => d,
    };
    let id = _mm256_set1_ps(1.0 / d);
    let mut out = BlockQ8K {
        d,
        ..BlockQ8K::ZERO
    };
    for c in 0..QK_K / 32 {
        let mut r = [_mm256_setzero_si256(); 4];
        for (k, ri) in r.iter_mut().enumerate() {
            // SAFETY: 256 readable f32s, 4c + k < 32; `loadu` is unaligned.
            *ri = round_scaled(
                unsafe { _mm256_loadu_ps(x.as_ptr().add(8 * (4 * c + k))) },
                id,
            );
        }
        let (lo, hi) = (
            hsum_i32(_mm256_add_epi32(r[0], r[1])),
            hsum_i32(_mm256_add_epi32(r[2], r[3])),
        );
        out.bsums[2 * c] = lo as i16;
        out.bsums[2 * c + 1] = hi as i16;
        out.sums32[c] = (lo + hi) as i16;
        // SAFETY: qs[32c..32c + 32] is in the block (c < 8); `storeu` is unaligned.
        unsafe { _mm256_storeu_si256(out.qs.as_mut_ptr().add(32 * c).cast(), pack_i8(r)) };
    }
    Some(out)
}
