//! Activations for the K-quant weights (Q4_K, Q5_K, Q6_K), quantized to 8 bits
//! once per matmul in blocks of 256 (one weight super-block) with ONE f32 scale,
//! as llama.cpp's Q8_K: a super-block's eight (or sixteen) sub-blocks are then
//! multiplied and scaled in integers and converted to float once. `bsums` (the
//! sums of each 16 values) turn the weights' minimums (Q4_K, Q5_K) and offset
//! (Q6_K) into one integer dot per super-block.
//!
//! [`rows`] is the portable kernel over these blocks: the reference the AVX2
//! kernels (`kquant_avx2`) are tested against, and the path on other CPUs.

use super::{Isa, QWeight, WeightType, f16_at, k4_scale_min, pool};

/// Values per activation block (one K-quant super-block).
pub const QK_K: usize = 256;

/// 256 activations as `d * qs[i]`; `bsums[j]` is `sum(qs[16j..16j + 16])` and
/// `sums32[j]` is `sum(qs[32j..32j + 32])` (Q4_K/Q5_K's sub-blocks).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8K {
    pub d: f32,
    pub qs: [i8; QK_K],
    pub bsums: [i16; 16],
    pub sums32: [i16; 8],
}

impl BlockQ8K {
    pub const ZERO: BlockQ8K = BlockQ8K {
        d: 0.0,
        qs: [0; QK_K],
        bsums: [0; 16],
        sums32: [0; 8],
    };

    /// Round `x` (256 values) to the nearest multiple of `max|x| / 127`
    /// (`roundf`: ties away from zero); all zeros when `x` has no finite maximum.
    pub fn quantize(x: &[f32]) -> BlockQ8K {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 || !amax.is_finite() {
            return BlockQ8K::ZERO;
        }
        let d = amax / 127.0;
        let id = 1.0 / d;
        let mut b = BlockQ8K {
            d,
            ..BlockQ8K::ZERO
        };
        for (q, v) in b.qs.iter_mut().zip(x) {
            // |v * id| <= 127 by the choice of d, so the cast cannot saturate.
            *q = (v * id).round() as i8;
        }
        b.fill_sums();
        b
    }

    /// `bsums` and `sums32` from `qs` (each at most 32 * 127 in magnitude).
    pub fn fill_sums(&mut self) {
        for (s, q) in self.bsums.iter_mut().zip(self.qs.chunks_exact(16)) {
            *s = q.iter().map(|&v| i16::from(v)).sum();
        }
        for (j, s) in self.sums32.iter_mut().enumerate() {
            *s = self.bsums[2 * j] + self.bsums[2 * j + 1];
        }
    }
}

/// Quantize `m` rows of `k` values (`k` a multiple of 256) into `out`.
pub fn quantize_rows(x: &[f32], out: &mut Vec<BlockQ8K>) {
    #[cfg(target_arch = "x86_64")]
    if super::kquant_avx2::quantize_rows(x, out) {
        return;
    }
    quantize_rows_portable(x, out);
}

/// [`quantize_rows`] without SIMD (the reference the AVX2 path is tested against).
pub fn quantize_rows_portable(x: &[f32], out: &mut Vec<BlockQ8K>) {
    out.clear();
    out.extend(x.chunks_exact(QK_K).map(BlockQ8K::quantize));
}

/// Whether `ty` multiplies against [`BlockQ8K`] activations.
pub fn serves(ty: WeightType) -> bool {
    matches!(ty, WeightType::Q4K | WeightType::Q5K | WeightType::Q6K)
}

/// [`super::matmul_many`] for weights that are all K-quants ([`serves`]): the
/// activations are quantized once to [`BlockQ8K`] rows, the weights' rows are
/// split over [`pool`]'s threads in whole 4-row tiles, and each task runs the
/// AVX2 kernels (or [`rows`]). Returns one `(m, rows)` output per weight. The
/// caller checked that every weight has `x.len() / m` columns.
pub(super) fn matmul_many(ws: &[&QWeight], x: &[f32], m: usize, isa: Isa) -> Vec<Vec<f32>> {
    let cols = ws.first().map_or(0, |w| w.cols);
    let mut acts = Vec::with_capacity(x.len() / QK_K);
    quantize_rows(x, &mut acts);
    let mut by_row: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.rows * m]).collect();
    if m == 0 {
        return by_row;
    }
    let total: usize = ws.iter().map(|w| w.rows).sum();
    let chunk = total
        .div_ceil(pool::threads() * 4)
        .max(4)
        .next_multiple_of(4);
    let mut tasks: Vec<(&QWeight, usize, &mut [f32])> = Vec::new();
    for (w, buf) in ws.iter().zip(by_row.iter_mut()) {
        for (ci, dst) in buf.chunks_mut(chunk * m).enumerate() {
            tasks.push((w, ci * chunk, dst));
        }
    }
    let acts = &acts;
    let work = |(w, first, dst): &mut (&QWeight, usize, &mut [f32])| {
        let rb = w.row_bytes();
        let n = dst.len() / m;
        let wr = &w.data[*first * rb..(*first + n) * rb];
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Best && super::kquant_avx2::rows(w.ty, wr, rb, acts, m, dst).is_some() {
            return;
        }
        for (wr, o) in wr.chunks_exact(rb).zip(dst.chunks_mut(m)) {
            rows(w.ty, wr, acts, o);
        }
    };
    if total * cols * m < 1 << 16 {
        tasks.iter_mut().for_each(work);
    } else {
        pool::for_each_mut(&mut tasks, &work);
    }
    super::by_activation_row(ws, by_row, m)
}

/// `out[r] = dot(weight row w, activation row r)` for the `out.len()` rows of
/// `acts` (each `w.len() / block_bytes` blocks); `ty` one of [`serves`]'s.
pub fn rows(ty: WeightType, w: &[u8], acts: &[BlockQ8K], out: &mut [f32]) {
    let bb = ty.block_bytes();
    let nb = w.len() / bb;
    out.fill(0.0);
    for (bi, blk) in w.chunks_exact(bb).enumerate() {
        let (q, sc, mn, d, dmin) = unpack(ty, blk);
        for (r, o) in out.iter_mut().enumerate() {
            let Some(a) = acts.get(r * nb + bi) else {
                continue;
            };
            // Integer sums per 16 values, then one scale per super-block.
            let (mut sumi, mut summ) = (0i32, 0i32);
            for j in 0..16 {
                let dot: i32 = q[16 * j..16 * j + 16]
                    .iter()
                    .zip(&a.qs[16 * j..16 * j + 16])
                    .map(|(&w, &x)| i32::from(w) * i32::from(x))
                    .sum();
                sumi += i32::from(sc[j]) * dot;
                summ += i32::from(mn[j]) * i32::from(a.bsums[j]);
            }
            *o += d * a.d * sumi as f32 - dmin * a.d * summ as f32;
        }
    }
}

/// A block's 256 values as `d * sc[i / 16] * q[i] - dmin * mn[i / 16]`.
type Block = ([i8; QK_K], [i8; 16], [u8; 16], f32, f32);

fn unpack(ty: WeightType, blk: &[u8]) -> Block {
    let mut q = [0i8; QK_K];
    let (mut sc, mut mn) = ([0i8; 16], [0u8; 16]);
    if ty == WeightType::Q6K {
        super::portable::q6k_quants(blk, &mut q);
        for (s, &b) in sc.iter_mut().zip(&blk[192..208]) {
            *s = b as i8;
        }
        return (q, sc, mn, f16_at(blk, 208), 0.0);
    }
    let (qh, qs) = match ty {
        WeightType::Q5K => (Some(&blk[16..48]), &blk[48..176]),
        _ => (None, &blk[16..144]),
    };
    for s in 0..8 {
        let (j, half) = (s / 2, s % 2);
        let (a, b) = k4_scale_min(s, &blk[4..16]);
        // 6-bit scales: 0..=63 fits an i8.
        sc[2 * s..2 * s + 2].fill(a as i8);
        mn[2 * s..2 * s + 2].fill(b);
        for l in 0..32 {
            let byte = qs[32 * j + l];
            let mut v = if half == 0 { byte & 0x0F } else { byte >> 4 };
            if let Some(qh) = qh {
                v |= ((qh[l] >> s) & 1) << 4;
            }
            q[32 * s + l] = v as i8;
        }
    }
    (q, sc, mn, f16_at(blk, 0), f16_at(blk, 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trips_within_half_a_step_and_sums() {
        let x: Vec<f32> = (0..256).map(|i| (i as f32 - 113.0) * 0.37).collect();
        let b = BlockQ8K::quantize(&x);
        for (v, q) in x.iter().zip(b.qs) {
            assert!((v - b.d * f32::from(q)).abs() <= b.d * 0.5 + 1e-6);
        }
        for j in 0..16 {
            let s: i32 = b.qs[16 * j..16 * j + 16]
                .iter()
                .map(|&q| i32::from(q))
                .sum();
            assert_eq!(i32::from(b.bsums[j]), s);
        }
        for j in 0..8 {
            let s: i32 = b.qs[32 * j..32 * j + 32]
                .iter()
                .map(|&q| i32::from(q))
                .sum();
            assert_eq!(i32::from(b.sums32[j]), s);
        }
        assert_eq!(BlockQ8K::quantize(&[0.0; 256]), BlockQ8K::ZERO);
        let mut inf = vec![1.0f32; 256];
        inf[7] = f32::INFINITY;
        assert_eq!(BlockQ8K::quantize(&inf), BlockQ8K::ZERO);
    }
}
