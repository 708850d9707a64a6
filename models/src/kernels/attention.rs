//! Attention of query rows against their sequences' KV caches on the CPU, one
//! (row, head) at a time over exactly the keys that row sees (positions
//! `first..=pos`). Every (row, head) runs the same code in the same order whatever
//! else is computed beside it, so a row's output does not depend on how many rows
//! came with it: a prompt prefilled in one pass, in chunks, or from a cached
//! prefix, and a sequence decoded alone or in a batch, give bit-for-bit the same
//! values (the matmuls around it are per-row too, ours and candle's quantized
//! ones). A batched f32 GEMM over a masked, padded score matrix does not have this
//! property: its reduction order follows the shapes, and the 8-bit activation
//! quantisation of the next matmul turns those last-bit differences into visibly
//! different logits.
//!
//! Plain Rust, vectorised by the compiler; on x86-64 the same code is compiled a
//! second time with AVX2 and FMA enabled and picked at run time. Both multiply
//! and add through `mul_add` (one rounding, as an FMA instruction does; a libm
//! call where the CPU has none) in the same order, so both give the same bits.

/// What every (row, head) of one call shares.
#[derive(Debug, Clone, Copy)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Scores are `(q · k) * scale`.
    pub scale: f32,
    /// Scores become `c * tanh(s / c)` (gemma2's soft-capping).
    pub softcap: Option<f32>,
    /// Keys per query of a windowed layer: a row at `pos` sees `pos + 1 - window..=pos`.
    pub window: Option<usize>,
}

/// One sequence's cache: `(n_kv_head, cap, head_dim)` keys and values, row-major.
#[derive(Debug, Clone, Copy)]
pub struct Kv<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub cap: usize,
}

/// How the query rows are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QLayout {
    /// `(n_head, R, head_dim)`: candle's heads-major tensors.
    HeadsFirst,
    /// `(R, n_head, head_dim)`: rows as a matmul writes them.
    RowsFirst,
}

/// Why a call was refused (shapes that do not fit; the caller reports it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadShape(pub String);

/// Multiply-adds below which one thread does the whole call.
const PARALLEL_MIN: usize = 1 << 15;

/// `q` holds R query rows laid out as `layout` says; row `j` belongs to sequence `rows[j].0` (an index
/// into `kvs`) at position `rows[j].1`, whose key and value are already in that
/// cache. Writes `out`, `(R, n_head * head_dim)`.
pub fn attend(
    shape: &AttnShape,
    q: &[f32],
    layout: QLayout,
    rows: &[(usize, usize)],
    kvs: &[Kv<'_>],
    out: &mut [f32],
) -> Result<(), BadShape> {
    check(shape, q, rows, kvs, out)?;
    let hd = shape.head_dim;
    let work: usize = rows.iter().map(|&(_, p)| (p + 1) * hd * shape.n_head).sum();
    let job = |(i, o): (usize, &mut [f32]), scores: &mut Vec<f32>| {
        let (j, h) = (i / shape.n_head, i % shape.n_head);
        let (s, pos) = rows[j];
        let at = match layout {
            QLayout::HeadsFirst => h * rows.len() + j,
            QLayout::RowsFirst => j * shape.n_head + h,
        };
        let qr = &q[at * hd..][..hd];
        let g = h / (shape.n_head / shape.n_kv_head);
        head_row(shape, qr, &kvs[s], g, pos, scores, o);
    };
    if work < PARALLEL_MIN {
        let mut scores = Vec::new();
        out.chunks_mut(hd)
            .enumerate()
            .for_each(|x| job(x, &mut scores));
    } else {
        // Contiguous runs of (row, head) outputs, a few per thread.
        let pairs = out.len() / hd;
        let per = pairs.div_ceil(super::pool::threads() * 4).max(1);
        let mut runs: Vec<(usize, &mut [f32])> = out.chunks_mut(per * hd).enumerate().collect();
        super::pool::for_each_mut(&mut runs, &|(r, run)| {
            let mut scores = Vec::new();
            for (k, o) in run.chunks_mut(hd).enumerate() {
                job((*r * per + k, o), &mut scores);
            }
        });
    }
    Ok(())
}

fn check(
    shape: &AttnShape,
    q: &[f32],
    rows: &[(usize, usize)],
    kvs: &[Kv<'_>],
    out: &mut [f32],
) -> Result<(), BadShape> {
    let (nh, nkv, hd) = (shape.n_head, shape.n_kv_head, shape.head_dim);
    if nh == 0 || nkv == 0 || hd == 0 || !nh.is_multiple_of(nkv) {
        return Err(BadShape(format!(
            "{nh} heads over {nkv} key/value heads of {hd}"
        )));
    }
    let r = rows.len();
    if q.len() != nh * r * hd || out.len() != q.len() {
        return Err(BadShape(format!(
            "{} query and {} output values for {r} rows of {nh}x{hd}",
            q.len(),
            out.len()
        )));
    }
    for &(s, pos) in rows {
        let kv = kvs
            .get(s)
            .ok_or_else(|| BadShape(format!("row of sequence {s} of {}", kvs.len())))?;
        let need = nkv * kv.cap * hd;
        if pos >= kv.cap || kv.k.len() < need || kv.v.len() < need {
            return Err(BadShape(format!(
                "position {pos} in a cache of {} positions",
                kv.cap
            )));
        }
    }
    Ok(())
}

/// One (row, head): softmax of the scaled scores of `q` against keys
/// `first..=pos` of kv head `g`, times their values, into `out` (`head_dim`).
fn head_row(
    shape: &AttnShape,
    q: &[f32],
    kv: &Kv<'_>,
    g: usize,
    pos: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: AVX2 and FMA were detected on this CPU (`avx2`).
        unsafe { head_row_avx2(shape, q, kv, g, pos, scores, out) };
        return;
    }
    head_row_body(shape, q, kv, g, pos, scores, out, dots);
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn head_row_avx2(
    shape: &AttnShape,
    q: &[f32],
    kv: &Kv<'_>,
    g: usize,
    pos: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    head_row_body(
        shape,
        q,
        kv,
        g,
        pos,
        scores,
        out,
        |qc, qt, keys, hd, scores| {
            // SAFETY: AVX2 and FMA are enabled in this function, whose callers
            // detected them.
            unsafe { dots_avx2(qc, qt, keys, hd, scores) }
        },
    );
}

/// One (row, head) with `dots` pushing `q · k` for every key as [`dots`] does.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn head_row_body(
    shape: &AttnShape,
    q: &[f32],
    kv: &Kv<'_>,
    g: usize,
    pos: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
    dots: impl Fn(&[[f32; 8]], &[f32], &[f32], usize, &mut Vec<f32>),
) {
    let hd = shape.head_dim;
    let first = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let base = g * kv.cap * hd;
    let keys = &kv.k[base + first * hd..base + (pos + 1) * hd];
    let values = &kv.v[base + first * hd..base + (pos + 1) * hd];
    scores.clear();
    // Plain loops, not iterator adapters: an adapter's closure can be compiled
    // out of line, without this function's target features (its `mul_add`
    // then a libm call per value).
    let (qc, qt) = q.as_chunks::<8>();
    dots(qc, qt, keys, hd, scores);
    let mut max = f32::NEG_INFINITY;
    for s in scores.iter_mut() {
        *s *= shape.scale;
        if let Some(c) = shape.softcap {
            *s = c * (*s / c).tanh();
        }
        max = max.max(*s);
    }
    super::vexp::exp_below(scores, max);
    let inv = 1.0 / sum(scores);
    // The weighted sum of the values, in blocks of dimensions whose sums stay
    // in registers while every key goes by.
    let mut d = 0;
    while d < hd {
        let left = hd - d;
        d += match left {
            64.. => weigh::<8>(scores, values, hd, d, out),
            32.. => weigh::<4>(scores, values, hd, d, out),
            16.. => weigh::<2>(scores, values, hd, d, out),
            8.. => weigh::<1>(scores, values, hd, d, out),
            _ => weigh_tail(scores, values, hd, d, out),
        };
    }
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// `out[d..d + 8C] = sum_k e[k] * v_k[d..d + 8C]`, one FMA per key and value in
/// key order; returns the dimensions done (`8C`).
#[inline(always)]
fn weigh<const C: usize>(e: &[f32], values: &[f32], hd: usize, d: usize, out: &mut [f32]) -> usize {
    let mut acc = [[0f32; 8]; C];
    for (&w, v) in e.iter().zip(values.chunks_exact(hd)) {
        let (vc, _) = v[d..d + 8 * C].as_chunks::<8>();
        for (a, x) in acc.iter_mut().zip(vc) {
            for i in 0..8 {
                a[i] = w.mul_add(x[i], a[i]);
            }
        }
    }
    for (o, a) in out[d..d + 8 * C].chunks_exact_mut(8).zip(&acc) {
        o.copy_from_slice(a);
    }
    8 * C
}

/// [`weigh`] for the last `hd - d` (< 8) dimensions.
#[inline(always)]
fn weigh_tail(e: &[f32], values: &[f32], hd: usize, d: usize, out: &mut [f32]) -> usize {
    let o = &mut out[d..hd];
    o.fill(0.0);
    for (&w, v) in e.iter().zip(values.chunks_exact(hd)) {
        for (o, &x) in o.iter_mut().zip(&v[d..hd]) {
            *o = w.mul_add(x, *o);
        }
    }
    hd - d
}

/// [`dot`] of `q` with every key of `keys` (`hd` values each), pushed in order.
#[inline(always)]
fn dots(qc: &[[f32; 8]], qt: &[f32], keys: &[f32], hd: usize, out: &mut Vec<f32>) {
    for k in keys.chunks_exact(hd) {
        out.push(dot(qc, qt, k));
    }
}

/// `q · k` in eight lanes of FMAs (then summed pairwise), so it vectorises:
/// `q` as whole chunks of 8 (`qc`) and the rest (`qt`).
#[inline(always)]
fn dot(qc: &[[f32; 8]], qt: &[f32], k: &[f32]) -> f32 {
    let (kc, kt) = k.as_chunks::<8>();
    let mut tail = 0f32;
    for (x, y) in qt.iter().zip(kt) {
        tail = x.mul_add(*y, tail);
    }
    let mut acc = [0f32; 8];
    for (x, y) in qc.iter().zip(kc) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// [`dot`] in AVX2 registers: the same FMAs lane by lane and the same sums
/// (the lanes' halves added, then pairs, then the two pairs), so the same bits.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(qc: &[[f32; 8]], qt: &[f32], k: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let (kc, kt) = k.as_chunks::<8>();
    let mut tail = 0f32;
    for (x, y) in qt.iter().zip(kt) {
        tail = x.mul_add(*y, tail);
    }
    let mut acc = _mm256_setzero_ps();
    for (x, y) in qc.iter().zip(kc) {
        // SAFETY: each chunk is 8 readable f32s; `loadu` is unaligned.
        let (x, y) = unsafe { (_mm256_loadu_ps(x.as_ptr()), _mm256_loadu_ps(y.as_ptr())) };
        acc = _mm256_fmadd_ps(x, y, acc);
    }
    // [a0 + a4, a1 + a5, a2 + a6, a3 + a7], then (s0 + s1) and (s2 + s3).
    let s4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
    let s2 = _mm_add_ps(s4, _mm_movehdup_ps(s4));
    let hi = _mm_movehl_ps(s2, s2);
    (_mm_cvtss_f32(s2) + _mm_cvtss_f32(hi)) + tail
}

/// [`dots`] in AVX2 registers, four keys at a time: a key's eight lanes take
/// the same FMAs in the same order as in [`dot_avx2`], but four keys' chains
/// run side by side (one key's chain alone waits out each FMA's latency), and
/// `vhaddps` sums the four keys' lanes in [`dot`]'s order (halves, then pairs,
/// then the two pairs), so the same bits.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dots_avx2(qc: &[[f32; 8]], qt: &[f32], keys: &[f32], hd: usize, out: &mut Vec<f32>) {
    use std::arch::x86_64::*;
    let mut four = keys.chunks_exact(4 * hd);
    for k4 in four.by_ref() {
        let k: [&[f32]; 4] = std::array::from_fn(|i| &k4[i * hd..(i + 1) * hd]);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (c, x) in qc.iter().enumerate() {
            // SAFETY: `x` and each key's chunk `c` (hd >= 8 * qc.len()) are 8
            // readable f32s; `loadu` is unaligned.
            unsafe {
                let x = _mm256_loadu_ps(x.as_ptr());
                for i in 0..4 {
                    let y = _mm256_loadu_ps(k[i][8 * c..8 * c + 8].as_ptr());
                    acc[i] = _mm256_fmadd_ps(x, y, acc[i]);
                }
            }
        }
        let mut half = [_mm_setzero_ps(); 4];
        for i in 0..4 {
            half[i] = _mm_add_ps(
                _mm256_castps256_ps128(acc[i]),
                _mm256_extractf128_ps::<1>(acc[i]),
            );
        }
        let pairs = (_mm_hadd_ps(half[0], half[1]), _mm_hadd_ps(half[2], half[3]));
        let mut sums = [0f32; 4];
        // SAFETY: four writable f32s; `storeu` is unaligned.
        unsafe { _mm_storeu_ps(sums.as_mut_ptr(), _mm_hadd_ps(pairs.0, pairs.1)) };
        for (s, k) in sums.iter().zip(k) {
            let mut tail = 0f32;
            for (x, y) in qt.iter().zip(&k[8 * qc.len()..]) {
                tail = x.mul_add(*y, tail);
            }
            out.push(s + tail);
        }
    }
    for k in four.remainder().chunks_exact(hd) {
        // SAFETY: AVX2 and FMA (this function's contract).
        out.push(unsafe { dot_avx2(qc, qt, k) });
    }
}

/// The sum of `xs` in eight lanes, then pairwise (vectorises; a fixed order).
#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let (c, t) = xs.as_chunks::<8>();
    let mut acc = [0f32; 8];
    for x in c {
        for i in 0..8 {
            acc[i] += x[i];
        }
    }
    let mut tail = 0f32;
    for x in t {
        tail += x;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use proptest::prelude::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32)
                    .wrapping_mul(2654435761)
                    .wrapping_add(seed.wrapping_mul(40503));
                ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    /// f64 softmax attention of one (row, head), the reference.
    fn reference(shape: &AttnShape, q: &[f32], kv: &Kv<'_>, g: usize, pos: usize) -> Vec<f64> {
        let hd = shape.head_dim;
        let first = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
        let base = g * kv.cap * hd;
        let s: Vec<f64> = (first..=pos)
            .map(|p| {
                let k = &kv.k[base + p * hd..][..hd];
                let d: f64 = q
                    .iter()
                    .zip(k)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                let s = d * f64::from(shape.scale);
                match shape.softcap {
                    Some(c) => f64::from(c) * (s / f64::from(c)).tanh(),
                    None => s,
                }
            })
            .collect();
        let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        (0..hd)
            .map(|d| {
                (first..=pos)
                    .zip(&e)
                    .map(|(p, w)| w * f64::from(kv.v[base + p * hd + d]))
                    .sum::<f64>()
                    / sum
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Odd head sizes, grouped heads, windows and soft-caps against f64; and
        /// every row alone gives the bits it gives among the others.
        #[test]
        fn rows_match_f64_and_do_not_depend_on_their_company(
            n_kv in 1usize..4, rep in 1usize..4, hd in 1usize..40, len in 1usize..50,
            extra in 0usize..5, window in proptest::option::of(1usize..20),
            softcap in proptest::option::of(1f32..30.0), seed in 0u32..1000,
        ) {
            let shape = AttnShape {
                n_head: n_kv * rep, n_kv_head: n_kv, head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(), softcap, window,
            };
            let cap = len + extra;
            let (k, v) = (values(n_kv * cap * hd, seed), values(n_kv * cap * hd, seed + 1));
            let kv = Kv { k: &k, v: &v, cap };
            // Every position of one sequence as one call (a prompt in one pass).
            let rows: Vec<(usize, usize)> = (0..len).map(|p| (0, p)).collect();
            let nh = shape.n_head;
            let q = values(nh * len * hd, seed + 2);
            let mut all = vec![0f32; q.len()];
            attend(&shape, &q, QLayout::HeadsFirst, &rows, &[kv], &mut all).unwrap();
            for p in 0..len {
                let q1: Vec<f32> = (0..nh).flat_map(|h| q[(h * len + p) * hd..][..hd].to_vec()).collect();
                let mut one = vec![0f32; nh * hd];
                attend(&shape, &q1, QLayout::RowsFirst, &[(0, p)], &[kv], &mut one).unwrap();
                prop_assert_eq!(&one[..], &all[p * nh * hd..(p + 1) * nh * hd]);
                for h in 0..nh {
                    let want = reference(&shape, &q1[h * hd..(h + 1) * hd], &kv, h / rep, p);
                    for (d, w) in want.iter().enumerate() {
                        let got = f64::from(one[h * hd + d]);
                        prop_assert!((got - w).abs() < 1e-5, "{got} vs {w}");
                    }
                }
            }
        }
    }

    /// The AVX2 compilation and the plain one give the same bits (head sizes
    /// around the value blocks of 64, 32, 16 and 8 dimensions).
    #[test]
    fn both_compilations_give_the_same_bits() {
        for (hd, len, softcap) in [
            (64, 93, None),
            (80, 40, None),
            (7, 9, Some(5.0)),
            (130, 17, None),
        ] {
            let shape = AttnShape {
                n_head: 2,
                n_kv_head: 1,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
                softcap,
                window: None,
            };
            let (k, v) = (values(len * hd, 3), values(len * hd, 4));
            let kv = Kv {
                k: &k,
                v: &v,
                cap: len,
            };
            let q = values(hd, 5);
            let (mut a, mut b) = (vec![0f32; hd], vec![0f32; hd]);
            let mut scores = Vec::new();
            head_row(&shape, &q, &kv, 0, len - 1, &mut scores, &mut a);
            head_row_body(&shape, &q, &kv, 0, len - 1, &mut scores, &mut b, dots);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "head size {hd}");
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let shape = AttnShape {
            n_head: 4,
            n_kv_head: 2,
            head_dim: 8,
            scale: 1.0,
            softcap: None,
            window: None,
        };
        let (k, v) = (vec![0f32; 2 * 4 * 8], vec![0f32; 2 * 4 * 8]);
        let kv = Kv {
            k: &k,
            v: &v,
            cap: 4,
        };
        let q = vec![0f32; 32];
        let mut out = vec![0f32; 32];
        assert!(attend(&shape, &q, QLayout::RowsFirst, &[(0, 4)], &[kv], &mut out).is_err());
        assert!(attend(&shape, &q, QLayout::RowsFirst, &[(1, 0)], &[kv], &mut out).is_err());
        assert!(
            attend(
                &shape,
                &q[..8],
                QLayout::RowsFirst,
                &[(0, 0)],
                &[kv],
                &mut out
            )
            .is_err()
        );
        assert!(attend(&shape, &q, QLayout::RowsFirst, &[(0, 3)], &[kv], &mut out).is_ok());
    }
}
