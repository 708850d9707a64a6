//! Activations quantized to 8 bits, once per matmul: blocks of 32 values with an
//! f32 scale and the block's sum (the correction term for weights stored with an
//! offset or a minimum, as llama.cpp's Q8_1).

/// Values per activation block (and per Q4_0/Q4_1/Q8_0 weight block).
pub const QK: usize = 32;

/// 32 activations as `d * qs[i]`; `s` is `d * sum(qs)`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct BlockQ8 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; QK],
}

impl BlockQ8 {
    pub const ZERO: BlockQ8 = BlockQ8 {
        d: 0.0,
        s: 0.0,
        qs: [0; QK],
    };

    /// Round `x` (32 values) to the nearest multiple of `max|x| / 127`.
    pub fn quantize(x: &[f32]) -> BlockQ8 {
        let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 || !amax.is_finite() {
            return BlockQ8::ZERO;
        }
        let d = amax / 127.0;
        let id = 1.0 / d;
        let mut qs = [0i8; QK];
        let mut sum = 0i32;
        for (q, v) in qs.iter_mut().zip(x) {
            // |v * id| <= 127 by the choice of d, so the cast cannot saturate.
            let r = (v * id).round() as i8;
            sum += i32::from(r);
            *q = r;
        }
        BlockQ8 {
            d,
            s: d * sum as f32,
            qs,
        }
    }
}

/// Values of padding after [`Columns`]' arrays.
pub const PAD: usize = 4;

/// The scales and sums of `m` rows of activation blocks, block-major: `d[b * m +
/// t]` and `s[b * m + t]` are block `b` of row `t`'s, followed by [`PAD`] zeros,
/// so a batch tile loads four rows' values of a block with one vector load.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub d: Vec<f32>,
    pub s: Vec<f32>,
}

impl Columns {
    /// Of `acts`, `m` rows of equally many blocks.
    pub fn of(acts: &[BlockQ8], m: usize) -> Columns {
        let kb = acts.len().checked_div(m).unwrap_or(0);
        let mut d = vec![0f32; kb * m + PAD];
        let mut s = vec![0f32; kb * m + PAD];
        if kb > 0 {
            for (t, row) in acts.chunks_exact(kb).enumerate() {
                for (b, a) in row.iter().enumerate() {
                    d[b * m + t] = a.d;
                    s[b * m + t] = a.s;
                }
            }
        }
        Columns { d, s }
    }
}

/// Quantize `m` rows of `k` values (`k` a multiple of 32) into `out`, which must
/// hold `m * k / 32` blocks.
pub fn quantize_rows(x: &[f32], out: &mut Vec<BlockQ8>) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2::quantize_rows(x, out) {
        return;
    }
    quantize_rows_portable(x, out);
}

/// [`quantize_rows`] without SIMD (the reference the AVX2 path is tested against).
pub fn quantize_rows_portable(x: &[f32], out: &mut Vec<BlockQ8>) {
    out.clear();
    out.extend(x.chunks_exact(QK).map(BlockQ8::quantize));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..32).map(|i| (i as f32 - 13.0) * 0.37).collect();
        let b = BlockQ8::quantize(&x);
        for (v, q) in x.iter().zip(b.qs) {
            assert!((v - b.d * f32::from(q)).abs() <= b.d * 0.5 + 1e-6);
        }
        let sum: f32 = b.qs.iter().map(|&q| f32::from(q)).sum();
        assert!((b.s - b.d * sum).abs() < 1e-4);
        assert_eq!(BlockQ8::quantize(&[0.0; 32]), BlockQ8::ZERO);
    }
}
