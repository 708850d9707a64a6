//! Q4_0 and Q4_1 weights interleaved in groups of 8 rows, so that one 32-byte
//! load holds 4 values of each of the 8 rows, one row per 32-bit lane: against
//! a broadcast of 4 activations, `vpmaddubsw` then computes 8 rows' partial dot
//! products at once, with no horizontal sum per block (`q4x8_avx2`). Lossless:
//! the same bytes, moved within each group (a group's `8 * row_bytes` bytes stay
//! where the group's rows were), so rows `first..first + n` of whole groups are
//! still the bytes `first * row_bytes..(first + n) * row_bytes`.
//!
//! Block `b` of group `g` (`8 * block_bytes` bytes at `(g * kb + b) * 8 *
//! block_bytes`):
//! - bytes `2r..2r + 2`: row `r`'s scale `d` (f16 bits as stored);
//! - Q4_1 only, `16 + 2r..`: row `r`'s minimum `m`;
//! - then 4 chunks of 32 bytes: byte `32j + 4r + i` of chunk `j` is row `r`'s
//!   quant byte `4j + i` (value `4j + i` in the low nibble, `16 + 4j + i` in the
//!   high one).

use super::WeightType;

/// Rows per group.
pub const GROUP: usize = 8;

/// Whether a `(rows, _)` weight of type `ty` is kept interleaved: Q4_0 or Q4_1
/// in whole groups, on a CPU with the kernel that reads it.
pub fn packs(ty: WeightType, rows: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    let has_kernel = super::avx2::available();
    #[cfg(not(target_arch = "x86_64"))]
    let has_kernel = false;
    matches!(ty, WeightType::Q4_0 | WeightType::Q4_1)
        && rows > 0
        && rows.is_multiple_of(GROUP)
        && has_kernel
}

/// Bytes before a block group's quants: the 8 scales, and Q4_1's 8 minimums.
pub fn head_bytes(ty: WeightType) -> usize {
    match ty {
        WeightType::Q4_1 => 32,
        _ => 16,
    }
}

/// Where row `r`'s block bytes go in its group's block: `(from, to, len)`
/// pieces, offsets within the GGUF block and within the group's block.
fn pieces(ty: WeightType, r: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let head = head_bytes(ty);
    // The GGUF block: d at 0, Q4_1's m at 2, then 16 quant bytes.
    let q4_1 = ty == WeightType::Q4_1;
    let quants = if q4_1 { 4 } else { 2 };
    let heads = [(0, 2 * r, 2), (2, 16 + 2 * r, 2)];
    let qs = (0..4).map(move |j| (quants + 4 * j, head + 32 * j + 4 * r, 4));
    heads.into_iter().take(if q4_1 { 2 } else { 1 }).chain(qs)
}

/// A `(rows, cols)` matrix of GGUF blocks (row after row), interleaved; the
/// caller checked [`packs`] and that `data` is whole blocks of those rows.
pub fn pack(ty: WeightType, rows: usize, cols: usize, data: &[u8]) -> Vec<u8> {
    let (bb, kb) = (ty.block_bytes(), cols / ty.block_values());
    let rb = kb * bb;
    let mut out = vec![0u8; data.len()];
    for g in 0..rows / GROUP {
        for b in 0..kb {
            let dst = &mut out[(g * kb + b) * GROUP * bb..][..GROUP * bb];
            for r in 0..GROUP {
                let src = &data[(g * GROUP + r) * rb + b * bb..][..bb];
                for (from, to, len) in pieces(ty, r) {
                    dst[to..to + len].copy_from_slice(&src[from..from + len]);
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
    let rb = kb * bb;
    let mut out = vec![0u8; n * rb];
    for (i, row) in (first..first + n).enumerate() {
        let (g, r) = (row / GROUP, row % GROUP);
        for b in 0..kb {
            let src = &packed[(g * kb + b) * GROUP * bb..][..GROUP * bb];
            let dst = &mut out[i * rb + b * bb..][..bb];
            for (from, to, len) in pieces(ty, r) {
                dst[from..from + len].copy_from_slice(&src[to..to + len]);
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
    fn packing_moves_every_byte_and_unpacking_puts_it_back() {
        for ty in [WeightType::Q4_0, WeightType::Q4_1] {
            for (rows, cols) in [(8, 32), (16, 96), (24, 64)] {
                let len = rows * cols / 32 * ty.block_bytes();
                let data: Vec<u8> = (0..len)
                    .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8 ^ (i >> 8) as u8)
                    .collect();
                let packed = pack(ty, rows, cols, &data);
                let mut sorted = (data.clone(), packed.clone());
                sorted.0.sort_unstable();
                sorted.1.sort_unstable();
                assert_eq!(sorted.0, sorted.1, "{ty:?}: the same bytes");
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
