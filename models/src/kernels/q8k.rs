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

/// Rows per group of a packed Q4_K weight ([`pack_q4k`]).
pub const GROUP: usize = 8;

/// Bytes of one super-block of a [`GROUP`] of packed Q4_K rows: the 8 rows'
/// 4-bit values (1024), `d` and `dmin` (f16, 16 each), the sub-block scales
/// and the minimums one byte each (64 each): 1184 bytes where the GGUF blocks
/// take 8 * 144 = 1152 (+2.8 %).
pub const PACKED_Q4K: usize = 1184;

/// Byte offsets in a packed super-block ([`PACKED_Q4K`]).
pub const PACKED_D: usize = 1024;
pub const PACKED_DMIN: usize = 1040;
pub const PACKED_SC: usize = 1056;
pub const PACKED_MN: usize = 1120;

/// Whether a `(rows, _)` weight of type `ty` is kept packed ([`pack_q4k`]):
/// Q4_K with at least one [`GROUP`], on a CPU with the kernel that reads it.
pub fn packs(ty: WeightType, rows: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    let has_kernel = super::avx2::available();
    #[cfg(not(target_arch = "x86_64"))]
    let has_kernel = false;
    ty == WeightType::Q4K && rows >= GROUP && has_kernel
}

/// The rows of a `(rows, cols)` Q4_K matrix (GGUF blocks, row after row) that
/// fill whole [`GROUP`]s, repacked for the AVX2 kernel, then the other rows as
/// they were. Each group's super-block `b` ([`PACKED_Q4K`] bytes, the group's
/// super-blocks in order):
/// - bytes `32 * k + 4 * r + j` for `k < 32`, `r < 8`, `j < 4`: row `r`'s value
///   `8k + j` in the low nibble and `8k + j + 4` in the high one, so one 32-byte
///   load holds 8 values of each of the 8 rows (one row per 32-bit lane, as
///   `vpmaddubsw` against a broadcast of 4 activations wants them);
/// - [`PACKED_D`], [`PACKED_DMIN`]: the rows' `d` and `dmin` (f16 bits as stored);
/// - [`PACKED_SC`] `+ 8 * s + r`: row `r`'s 6-bit scale of sub-block `s`;
/// - [`PACKED_MN`] `+ 16 * p + 2 * r + h`: row `r`'s minimum of sub-block `2p + h`.
///
/// The caller checked that `data` is `rows * cols / 256` blocks.
pub fn pack_q4k(rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let nb = cols / QK_K;
    let rb = nb * 144;
    let groups = rows / GROUP;
    let mut out = vec![0u8; groups * nb * PACKED_Q4K + (rows - groups * GROUP) * rb];
    for g in 0..groups {
        for b in 0..nb {
            let dst = &mut out[(g * nb + b) * PACKED_Q4K..][..PACKED_Q4K];
            for r in 0..GROUP {
                let blk = &data[(g * GROUP + r) * rb + b * 144..][..144];
                let v = q4k_values(blk);
                for k in 0..32 {
                    for j in 0..4 {
                        dst[32 * k + 4 * r + j] = v[8 * k + j] | (v[8 * k + j + 4] << 4);
                    }
                }
                dst[PACKED_D + 2 * r..][..2].copy_from_slice(&blk[0..2]);
                dst[PACKED_DMIN + 2 * r..][..2].copy_from_slice(&blk[2..4]);
                for s in 0..8 {
                    let (sc, mn) = k4_scale_min(s, &blk[4..16]);
                    dst[PACKED_SC + 8 * s + r] = sc;
                    dst[PACKED_MN + 16 * (s / 2) + 2 * r + s % 2] = mn;
                }
            }
        }
    }
    let packed = groups * nb * PACKED_Q4K;
    out[packed..].copy_from_slice(&data[groups * GROUP * rb..]);
    out
}

/// Rows `first..first + n` of a Q4_K matrix packed by [`pack_q4k`], as the GGUF
/// blocks they were packed from (the same bytes).
pub fn unpack_q4k_rows(packed: &[u8], rows: usize, cols: usize, first: usize, n: usize) -> Vec<u8> {
    let nb = cols / QK_K;
    let rb = nb * 144;
    let grouped = rows / GROUP * GROUP;
    let mut out = vec![0u8; n * rb];
    for (i, row) in (first..first + n).enumerate() {
        let dst = &mut out[i * rb..][..rb];
        if row >= grouped {
            let at = grouped / GROUP * nb * PACKED_Q4K + (row - grouped) * rb;
            dst.copy_from_slice(&packed[at..at + rb]);
            continue;
        }
        let (g, r) = (row / GROUP, row % GROUP);
        for b in 0..nb {
            let src = &packed[(g * nb + b) * PACKED_Q4K..][..PACKED_Q4K];
            let blk = &mut dst[b * 144..][..144];
            blk[0..2].copy_from_slice(&src[PACKED_D + 2 * r..][..2]);
            blk[2..4].copy_from_slice(&src[PACKED_DMIN + 2 * r..][..2]);
            let sc = |s: usize| src[PACKED_SC + 8 * s + r];
            let mn = |s: usize| src[PACKED_MN + 16 * (s / 2) + 2 * r + s % 2];
            // ggml's 12-byte packing of eight 6-bit scales and minimums (the
            // inverse of `k4_scale_min`).
            for j in 0..4 {
                blk[4 + j] = sc(j) | ((sc(j + 4) >> 4) << 6);
                blk[8 + j] = mn(j) | ((mn(j + 4) >> 4) << 6);
                blk[12 + j] = (sc(j + 4) & 0x0F) | ((mn(j + 4) & 0x0F) << 4);
            }
            let mut v = [0u8; QK_K];
            for k in 0..32 {
                for j in 0..4 {
                    let byte = src[32 * k + 4 * r + j];
                    v[8 * k + j] = byte & 0x0F;
                    v[8 * k + j + 4] = byte >> 4;
                }
            }
            for (l, q) in blk[16..144].iter_mut().enumerate() {
                let (j, l) = (l / 32, l % 32);
                *q = v[64 * j + l] | (v[64 * j + 32 + l] << 4);
            }
        }
    }
    out
}

/// The 256 4-bit values of a Q4_K block, in order.
fn q4k_values(blk: &[u8]) -> [u8; QK_K] {
    let mut v = [0u8; QK_K];
    for (l, &byte) in blk[16..144].iter().enumerate() {
        let (j, l) = (l / 32, l % 32);
        v[64 * j + l] = byte & 0x0F;
        v[64 * j + 32 + l] = byte >> 4;
    }
    v
}

/// Whether `ty` multiplies against [`BlockQ8K`] activations.
pub fn serves(ty: WeightType) -> bool {
    matches!(ty, WeightType::Q4K | WeightType::Q5K | WeightType::Q6K)
}

/// [`super::matmul_many`] for weights that are all K-quants ([`serves`]): the
/// activations are quantized once to [`BlockQ8K`] rows, the weights' rows are
/// split over [`pool`]'s threads in whole groups of [`GROUP`] rows, and each task runs the
/// AVX2 kernels (or [`rows`]). Returns one `(m, rows)` output per weight. The
/// caller checked that every weight has `x.len() / m` columns.
pub(super) fn matmul_many(ws: &[&QWeight], x: &[f32], m: usize, isa: Isa) -> Vec<Vec<f32>> {
    let mut acts = Vec::with_capacity(x.len() / QK_K);
    quantize_rows(x, &mut acts);
    let mut by_row: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.rows * m]).collect();
    if m == 0 {
        return by_row;
    }
    let total: usize = ws.iter().map(|w| w.rows).sum();
    // Whole packed groups per task (GROUP is a multiple of the 4-row tiles).
    let chunk = total
        .div_ceil(pool::threads() * 4)
        .max(GROUP)
        .next_multiple_of(GROUP);
    let mut tasks: Vec<(&QWeight, usize, &mut [f32])> = Vec::new();
    for (w, buf) in ws.iter().zip(by_row.iter_mut()) {
        for (ci, dst) in buf.chunks_mut(chunk * m).enumerate() {
            tasks.push((w, ci * chunk, dst));
        }
    }
    let acts = &acts;
    let work = |(w, first, dst): &mut (&QWeight, usize, &mut [f32])| {
        let rb = w.row_bytes();
        let nb = w.cols / QK_K;
        let (first, end) = (*first, *first + dst.len() / m);
        // Rows first..split are in packed groups (a task starts at a multiple
        // of GROUP), split..end in GGUF blocks after them.
        let grouped = if w.packed { w.rows / GROUP * GROUP } else { 0 };
        let split = end.min(grouped).max(first);
        let (gdst, dst) = dst.split_at_mut((split - first) * m);
        if split > first {
            let wg = &w.data[first / GROUP * nb * PACKED_Q4K..split / GROUP * nb * PACKED_Q4K];
            #[cfg(target_arch = "x86_64")]
            let done = isa == Isa::Best
                && super::kquant_avx2::packed_rows(wg, nb, acts, m, gdst).is_some();
            #[cfg(not(target_arch = "x86_64"))]
            let done = {
                let _ = wg;
                false
            };
            if !done {
                let blocks = unpack_q4k_rows(&w.data, w.rows, w.cols, first, split - first);
                for (wr, o) in blocks.chunks_exact(rb).zip(gdst.chunks_mut(m)) {
                    rows(w.ty, wr, acts, o);
                }
            }
        }
        if end == split {
            return;
        }
        let at = grouped / GROUP * nb * PACKED_Q4K + (split - grouped) * rb;
        let wr = &w.data[at..at + (end - split) * rb];
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Best && super::kquant_avx2::rows(w.ty, wr, rb, acts, m, dst).is_some() {
            return;
        }
        for (wr, o) in wr.chunks_exact(rb).zip(dst.chunks_mut(m)) {
            rows(w.ty, wr, acts, o);
        }
    };
    if total.saturating_mul(x.len()) < 1 << 16 {
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
