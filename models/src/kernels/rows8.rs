//! Q4_0, Q4_1, Q5_0 and Q5_1 weights interleaved in groups of 8 rows, so that
//! one 32-byte load holds 4 values of each of the 8 rows, one row per 32-bit
//! lane: against a broadcast of 4 activations, `vpmaddubsw` then computes 8
//! rows' partial dot products at once, with no horizontal sum per block
//! (`rows8_avx2`). Lossless: the same bits, moved within each group (a group's
//! `8 * row_bytes` bytes stay where the group's rows were), so whole groups of
//! rows `first..first + n` are still the bytes from `first * row_bytes` to
//! `(first + n) * row_bytes`.
//!
//! Block `b` of group `g` (`8 * block_bytes` bytes at `(g * kb + b) * 8 *
//! block_bytes`):
//! - bytes `2r..2r + 2`: row `r`'s scale `d` (f16 bits as stored);
//! - Q4_1 and Q5_1, `16 + 2r..`: row `r`'s minimum `m`;
//! - Q5_0 and Q5_1, then 32 bytes of fifth bits: bit `k` of byte `4r + i` is the
//!   fifth bit of row `r`'s value `4k + i` (so step `k` of the kernel finds its
//!   32 values' fifth bits at bit `k` of the byte that holds each value);
//! - then 4 chunks of 32 bytes: byte `32j + 4r + i` of chunk `j` is row `r`'s
//!   quant byte `4j + i` (value `4j + i` in the low nibble, `16 + 4j + i` in the
//!   high one).

use super::WeightType;

/// Rows per group.
pub const GROUP: usize = 8;

/// Whether a `(rows, _)` weight of type `ty` is kept interleaved: Q4_0, Q4_1,
/// Q5_0 or Q5_1 in whole groups, on a CPU with the kernel that reads it.
pub fn packs(ty: WeightType, rows: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    let has_kernel = super::avx2::available();
    #[cfg(not(target_arch = "x86_64"))]
    let has_kernel = false;
    matches!(
        ty,
        WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_0 | WeightType::Q5_1
    ) && rows > 0
        && rows.is_multiple_of(GROUP)
        && has_kernel
}

/// Where a block type's fields are, in a GGUF block and in a group's block.
struct Layout {
    /// The minimum's offset in the GGUF block (Q4_1, Q5_1).
    m: Option<usize>,
    /// The fifth bits' offset in the GGUF block (Q5_0, Q5_1).
    qh: Option<usize>,
    /// The 16 quant bytes' offset in the GGUF block.
    qs: usize,
}

fn layout(ty: WeightType) -> Layout {
    match ty {
        WeightType::Q4_1 => Layout {
            m: Some(2),
            qh: None,
            qs: 4,
        },
        WeightType::Q5_0 => Layout {
            m: None,
            qh: Some(2),
            qs: 6,
        },
        WeightType::Q5_1 => Layout {
            m: Some(2),
            qh: Some(4),
            qs: 8,
        },
        _ => Layout {
            m: None,
            qh: None,
            qs: 2,
        },
    }
}

/// Bytes before a block group's quants: the 8 scales, the 8 minimums where the
/// type has them, and the 32 bytes of fifth bits where it has them.
pub fn head_bytes(ty: WeightType) -> usize {
    let l = layout(ty);
    16 + if l.m.is_some() { 16 } else { 0 } + if l.qh.is_some() { 32 } else { 0 }
}

/// Where row `r`'s block bytes go in its group's block: `(from, to, len)`
/// pieces, offsets within the GGUF block and within the group's block (the
/// fifth bits are spread bit by bit, [`spread_high_bits`]).
fn pieces(ty: WeightType, r: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let (l, head) = (layout(ty), head_bytes(ty));
    let heads = [Some((0, 2 * r, 2)), l.m.map(|m| (m, 16 + 2 * r, 2))];
    let qs = (0..4).map(move |j| (l.qs + 4 * j, head + 32 * j + 4 * r, 4));
    heads.into_iter().flatten().chain(qs)
}

/// Row `r`'s fifth bits (`qh`, value `v` at bit `v`) into the group block's
/// 32 bytes of them (`dst`, zero for this row before).
fn spread_high_bits(qh: u32, r: usize, dst: &mut [u8]) {
    for v in (0..32).filter(|v| qh >> v & 1 == 1) {
        dst[4 * r + v % 4] |= 1 << (v / 4);
    }
}

/// Row `r`'s fifth bits gathered back from the group block's 32 bytes of them.
fn gather_high_bits(src: &[u8], r: usize) -> u32 {
    (0..32).fold(0, |qh, v| {
        qh | (u32::from(src[4 * r + v % 4] >> (v / 4) & 1) << v)
    })
}

/// A `(rows, cols)` matrix of GGUF blocks (row after row), interleaved; the
/// caller checked [`packs`] and that `data` is whole blocks of those rows.
pub fn pack(ty: WeightType, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let (bb, kb) = (ty.block_bytes(), cols / ty.block_values());
    let (rb, qh, high_at) = (kb * bb, layout(ty).qh, head_bytes(ty).saturating_sub(32));
    let mut out = vec![0u8; data.len()];
    for g in 0..rows / GROUP {
        for b in 0..kb {
            let dst = &mut out[(g * kb + b) * GROUP * bb..][..GROUP * bb];
            for r in 0..GROUP {
                let src = &data[(g * GROUP + r) * rb + b * bb..][..bb];
                for (from, to, len) in pieces(ty, r) {
                    dst[to..to + len].copy_from_slice(&src[from..from + len]);
                }
                if let Some(at) = qh {
                    let bits = u32::from_le_bytes([src[at], src[at + 1], src[at + 2], src[at + 3]]);
                    spread_high_bits(bits, r, &mut dst[high_at..high_at + 32]);
                }
            }
        }
    }
    out
}

/// Rows `first..first + n` of a matrix [`pack`]ed from GGUF blocks, as those
/// blocks.
pub fn unpack_rows(ty: WeightType, cols: usize, packed: &[u8], first: usize, n: usize) -> Vec<u8> {
    let (bb, kb) = (ty.block_bytes(), cols / ty.block_values());
    let (rb, qh, high_at) = (kb * bb, layout(ty).qh, head_bytes(ty).saturating_sub(32));
    let mut out = vec![0u8; n * rb];
    for (i, row) in (first..first + n).enumerate() {
        let (g, r) = (row / GROUP, row % GROUP);
        for b in 0..kb {
            let src = &packed[(g * kb + b) * GROUP * bb..][..GROUP * bb];
            let dst = &mut out[i * rb + b * bb..][..bb];
            for (from, to, len) in pieces(ty, r) {
                dst[from..from + len].copy_from_slice(&src[to..to + len]);
            }
            if let Some(at) = qh {
                let bits = gather_high_bits(&src[high_at..high_at + 32], r);
                dst[at..at + 4].copy_from_slice(&bits.to_le_bytes());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn packing_moves_every_bit_and_unpacking_puts_it_back() {
        for ty in [
            WeightType::Q4_0,
            WeightType::Q4_1,
            WeightType::Q5_0,
            WeightType::Q5_1,
        ] {
            for (rows, cols) in [(8, 32), (16, 96), (24, 64)] {
                let len = rows * cols / 32 * ty.block_bytes();
                let data: Vec<u8> = (0..len)
                    .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8 ^ (i >> 8) as u8)
                    .collect();
                let packed = pack(ty, rows, cols, &data);
                let ones = |v: &[u8]| v.iter().map(|b| b.count_ones()).sum::<u32>();
                assert_eq!(ones(&packed), ones(&data), "{ty:?}: the same bits set");
                if layout(ty).qh.is_none() {
                    let mut sorted = (data.clone(), packed.clone());
                    sorted.0.sort_unstable();
                    sorted.1.sort_unstable();
                    assert_eq!(sorted.0, sorted.1, "{ty:?}: the same bytes");
                }
                assert_eq!(unpack_rows(ty, cols, &packed, 0, rows), data);
                let rb = len / rows;
                for first in [1, 7, 8, rows - 1] {
                    let n = (rows - first).min(3);
                    assert_eq!(
                        unpack_rows(ty, cols, &packed, first, n),
                        data[first * rb..(first + n) * rb],
                        "{ty:?} rows {first}+{n}"
                    );
                }
            }
        }
    }
}
