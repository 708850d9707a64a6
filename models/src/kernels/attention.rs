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
//! second time with AVX2 enabled and picked at run time. Neither contracts
//! multiplies and adds into FMAs, so both give the same bits.

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
        // SAFETY: AVX2 was detected on this CPU (`avx2`).
        unsafe { head_row_avx2(shape, q, kv, g, pos, scores, out) };
        return;
    }
    head_row_body(shape, q, kv, g, pos, scores, out);
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn head_row_avx2(
    shape: &AttnShape,
    q: &[f32],
    kv: &Kv<'_>,
    g: usize,
    pos: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    head_row_body(shape, q, kv, g, pos, scores, out);
}

#[inline(always)]
fn head_row_body(
    shape: &AttnShape,
    q: &[f32],
    kv: &Kv<'_>,
    g: usize,
    pos: usize,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let first = shape.window.map_or(0, |w| (pos + 1).saturating_sub(w));
    let base = g * kv.cap * hd;
    let keys = &kv.k[base + first * hd..base + (pos + 1) * hd];
    let values = &kv.v[base + first * hd..base + (pos + 1) * hd];
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for k in keys.chunks_exact(hd) {
        let mut s = dot(q, k) * shape.scale;
        if let Some(c) = shape.softcap {
            s = c * (s / c).tanh();
        }
        max = max.max(s);
        scores.push(s);
    }
    super::vexp::exp_below(scores, max);
    let sum: f32 = scores.iter().sum();
    out.fill(0.0);
    for (&e, v) in scores.iter().zip(values.chunks_exact(hd)) {
        for (o, &x) in out.iter_mut().zip(v) {
            *o += e * x;
        }
    }
    let inv = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inv;
    }
}

/// `a · b` in eight lanes (then summed pairwise), so it vectorises: whole
/// chunks of 8 as arrays, so the lanes are one vector register.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, ta) = a.as_chunks::<8>();
    let (cb, tb) = b.as_chunks::<8>();
    let tail: f32 = ta.iter().zip(tb).map(|(x, y)| x * y).sum();
    let mut acc = [0f32; 8];
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
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
