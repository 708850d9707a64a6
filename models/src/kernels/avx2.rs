//! AVX2 + FMA (+ F16C for the scales) kernels. Each weight block is loaded and unpacked into registers
//! once and multiplied with the same block of every activation row of the tile
//! (`N` rows, 1..=4): the int8 products go through `vpmaddubsw`/`vpmaddwd` as in
//! llama.cpp, and the block's scales are applied in f32.

use std::arch::x86_64::*;

use super::q8::BlockQ8;
use super::{WeightType, k4_scale_min};

/// The little-endian f16 at `at` of a block, as f32 (F16C).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at_x86(blk: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([blk[at], blk[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

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
/// (`rb` bytes each) and the `m` activation rows of `acts`; `None` when the CPU
/// lacks AVX2, FMA or F16C.
pub fn rows(
    ty: WeightType,
    w: &[u8],
    rb: usize,
    acts: &[BlockQ8],
    m: usize,
    out: &mut [f32],
) -> Option<()> {
    if !available() {
        return None;
    }
    // SAFETY: AVX2, FMA and F16C were detected on this CPU just above.
    unsafe { chunk(ty, w, rb, acts, m, out) };
    Some(())
}

#[target_feature(enable = "avx2,fma,f16c")]
fn chunk(ty: WeightType, w: &[u8], rb: usize, acts: &[BlockQ8], m: usize, out: &mut [f32]) {
    let kb = acts.len() / m.max(1);
    for (wr, o) in w.chunks_exact(rb).zip(out.chunks_mut(m)) {
        let mut t0 = 0;
        while t0 < m {
            let n = (m - t0).min(4);
            let (a, o) = (&acts[t0 * kb..(t0 + n) * kb], &mut o[t0..t0 + n]);
            match n {
                1 => tile::<1>(ty, wr, a, o),
                2 => tile::<2>(ty, wr, a, o),
                3 => tile::<3>(ty, wr, a, o),
                _ => tile::<4>(ty, wr, a, o),
            }
            t0 += n;
        }
    }
}

/// One weight row against `N` activation rows. Two accumulators per row
/// (even and odd blocks) keep the FMA chains short when `N` is small.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const N: usize>(ty: WeightType, w: &[u8], acts: &[BlockQ8], out: &mut [f32]) {
    let kb = w.len() / ty.block_bytes() * (ty.block_values() / 32);
    let rows: [&[BlockQ8]; N] = std::array::from_fn(|r| &acts[r * kb..(r + 1) * kb]);
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut mins = [[0f32; 2]; N];
    match ty {
        WeightType::Q8_0 => q8_0(w, &rows, &mut acc),
        WeightType::Q4_0 | WeightType::Q4_1 => q4(ty, w, &rows, &mut acc, &mut mins),
        WeightType::Q4K | WeightType::Q5K => k45(ty, w, &rows, &mut acc, &mut mins),
        WeightType::Q6K => q6k(w, &rows, &mut acc),
    }
    for r in 0..N.min(out.len()) {
        out[r] = hsum(_mm256_add_ps(acc[r][0], acc[r][1])) + mins[r][0] + mins[r][1];
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(b: &[u8]) -> __m256i {
    let b: &[u8; 32] = b.first_chunk().unwrap_or(&[0; 32]);
    // SAFETY: `b` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load16(b: &[u8]) -> __m128i {
    let b: &[u8; 16] = b.first_chunk().unwrap_or(&[0; 16]);
    // SAFETY: `b` is 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_act(a: &BlockQ8) -> __m256i {
    // SAFETY: `qs` is 32 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(a.qs.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `sum(u[i] * a[i])` in eight i32 lanes, with `u` unsigned (0..=255) bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_u8(u: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, a), _mm256_set1_epi16(1))
}

/// `sum(w[i] * a[i])` with both signed, through `|w|` and `a` carrying `w`'s sign.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_i8(w: __m256i, a: __m256i, weights16: __m256i) -> __m256i {
    let p = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w));
    _mm256_madd_epi16(p, weights16)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fma(acc: __m256, dot: __m256i, scale: f32) -> __m256 {
    _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(scale), acc)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0<const N: usize>(w: &[u8], rows: &[&[BlockQ8]; N], acc: &mut [[__m256; 2]; N]) {
    let ones = _mm256_set1_epi16(1);
    for (b, blk) in w.chunks_exact(34).enumerate() {
        let d = f16_at_x86(blk, 0);
        let q = load32(&blk[2..]);
        for r in 0..N {
            let a = &rows[r][b];
            acc[r][b & 1] = fma(acc[r][b & 1], dot_i8(q, load_act(a), ones), d * a.d);
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q4<const N: usize>(
    ty: WeightType,
    w: &[u8],
    rows: &[&[BlockQ8]; N],
    acc: &mut [[__m256; 2]; N],
    mins: &mut [[f32; 2]; N],
) {
    let low = _mm_set1_epi8(0x0F);
    let bb = ty.block_bytes();
    for (b, blk) in w.chunks_exact(bb).enumerate() {
        let d = f16_at_x86(blk, 0);
        let (m, qs) = match ty {
            WeightType::Q4_0 => (-8.0 * d, &blk[2..]),
            _ => (f16_at_x86(blk, 2), &blk[4..]),
        };
        let raw = load16(qs);
        let lo = _mm_and_si128(raw, low);
        let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), low);
        let q = _mm256_set_m128i(hi, lo);
        for r in 0..N {
            let a = &rows[r][b];
            acc[r][b & 1] = fma(acc[r][b & 1], dot_u8(q, load_act(a)), d * a.d);
            mins[r][b & 1] += m * a.s;
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn k45<const N: usize>(
    ty: WeightType,
    w: &[u8],
    rows: &[&[BlockQ8]; N],
    acc: &mut [[__m256; 2]; N],
    mins: &mut [[f32; 2]; N],
) {
    let low = _mm256_set1_epi8(0x0F);
    let sixteen = _mm256_set1_epi8(16);
    for (b, blk) in w.chunks_exact(ty.block_bytes()).enumerate() {
        let d = f16_at_x86(blk, 0);
        let dmin = f16_at_x86(blk, 2);
        let scales = &blk[4..16];
        let (qh, qs) = match ty {
            WeightType::Q5K => (Some(load32(&blk[16..])), &blk[48..]),
            _ => (None, &blk[16..]),
        };
        for j in 0..4 {
            let raw = load32(&qs[32 * j..]);
            let halves = [
                _mm256_and_si256(raw, low),
                _mm256_and_si256(_mm256_srli_epi16(raw, 4), low),
            ];
            for (h, mut q) in halves.into_iter().enumerate() {
                let s = 2 * j + h;
                if let Some(qh) = qh {
                    let bit = _mm256_set1_epi8(1 << s);
                    let set = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit);
                    q = _mm256_or_si256(q, _mm256_and_si256(set, sixteen));
                }
                let (sc, mn) = k4_scale_min(s, scales);
                let (sc, mn) = (d * f32::from(sc), dmin * f32::from(mn));
                for r in 0..N {
                    let a = &rows[r][8 * b + s];
                    acc[r][h] = fma(acc[r][h], dot_u8(q, load_act(a)), sc * a.d);
                    mins[r][h] -= mn * a.s;
                }
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn q6k<const N: usize>(w: &[u8], rows: &[&[BlockQ8]; N], acc: &mut [[__m256; 2]; N]) {
    let low = _mm256_set1_epi8(0x0F);
    let three = _mm256_set1_epi8(3);
    let off = _mm256_set1_epi8(32);
    for (b, blk) in w.chunks_exact(210).enumerate() {
        let d = f16_at_x86(blk, 208);
        let sc = &blk[192..208];
        for n in 0..2 {
            let ql0 = load32(&blk[64 * n..]);
            let ql1 = load32(&blk[64 * n + 32..]);
            let qh = load32(&blk[128 + 32 * n..]);
            let groups = [
                _mm256_or_si256(_mm256_and_si256(ql0, low), q6_high(qh, 0, three)),
                _mm256_or_si256(_mm256_and_si256(ql1, low), q6_high(qh, 2, three)),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), low),
                    q6_high(qh, 4, three),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), low),
                    q6_high(qh, 6, three),
                ),
            ];
            for (g, q) in groups.into_iter().enumerate() {
                let q = _mm256_sub_epi8(q, off);
                let i = 8 * n + 2 * g;
                let weights16 = _mm256_set_m128i(
                    _mm_set1_epi16(i16::from(sc[i + 1] as i8)),
                    _mm_set1_epi16(i16::from(sc[i] as i8)),
                );
                for r in 0..N {
                    let a = &rows[r][8 * b + 4 * n + g];
                    acc[r][g & 1] = fma(acc[r][g & 1], dot_i8(q, load_act(a), weights16), d * a.d);
                }
            }
        }
    }
}

/// Bits `shift..shift + 2` of each byte of `qh`, moved to bits 4 and 5.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_high(qh: __m256i, shift: u8, three: __m256i) -> __m256i {
    let bits = match shift {
        0 => qh,
        2 => _mm256_srli_epi16(qh, 2),
        4 => _mm256_srli_epi16(qh, 4),
        _ => _mm256_srli_epi16(qh, 6),
    };
    _mm256_slli_epi16(_mm256_and_si256(bits, three), 4)
}
