//! Every kernel against candle's dequantisation and an f64 matmul, on random
//! blocks (any bit pattern, sane scales), odd row counts and batches of 1..=17.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::borrow::Cow;

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use proptest::prelude::*;

use super::q8::{BlockQ8, QK};
use super::q8k::{BlockQ8K, QK_K};
use super::{Isa, QWeight, WeightType};

const TYPES: [GgmlDType; 8] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q8_0,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
];

/// Offsets of the f16 scales in a block of each type.
fn f16_fields(ty: WeightType) -> &'static [usize] {
    match ty {
        WeightType::Q4_0 | WeightType::Q5_0 | WeightType::Q8_0 => &[0],
        WeightType::Q4_1 | WeightType::Q5_1 | WeightType::Q4K | WeightType::Q5K => &[0, 2],
        WeightType::Q6K => &[208],
    }
}

/// Random blocks: every quant byte random, each f16 scale in +-[2^-10, 2^-2].
fn random_blocks(ty: WeightType, blocks: usize, seed: &[u8]) -> Vec<u8> {
    let bb = ty.block_bytes();
    let mut data: Vec<u8> = (0..blocks * bb)
        .map(|i| {
            seed[i % seed.len()]
                .wrapping_mul(31)
                .wrapping_add((i * 7 + i / 13) as u8)
        })
        .collect();
    for (b, blk) in data.chunks_exact_mut(bb).enumerate() {
        for (j, &at) in f16_fields(ty).iter().enumerate() {
            let s = seed[(b + j) % seed.len()];
            let v = (1.0 + f32::from(s % 16) / 16.0) * 2f32.powi(-2 - i32::from(s % 9));
            let v = if s & 0x80 != 0 { -v } else { v };
            blk[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_bits().to_le_bytes());
        }
    }
    data
}

/// `x · Wᵀ` in f64 from candle's dequantised weights, and a bound on the error
/// that quantizing the activations to 8 bits may add.
fn reference(
    dtype: GgmlDType,
    data: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    m: usize,
) -> (Vec<f64>, Vec<f64>) {
    let storage = QStorage::from_data(Cow::Borrowed(data), &Device::Cpu, dtype).unwrap();
    let qt = QTensor::new(storage, (rows, cols)).unwrap();
    let w: Vec<f32> = qt
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut out = vec![0f64; m * rows];
    let mut bound = vec![0f64; m * rows];
    for t in 0..m {
        let xr = &x[t * cols..(t + 1) * cols];
        // K-quant weights take activations in blocks of 256 (Q8_K), the others 32.
        let ak = if dtype.block_size() == QK_K { QK_K } else { QK };
        let steps: Vec<f64> = xr
            .chunks(ak)
            .map(|b| match ak {
                QK_K => f64::from(BlockQ8K::quantize(b).d),
                _ => f64::from(BlockQ8::quantize(b).d),
            })
            .collect();
        for r in 0..rows {
            let wr = &w[r * cols..(r + 1) * cols];
            let (mut s, mut e, mut mag) = (0f64, 0f64, 0f64);
            for (i, (&a, &b)) in wr.iter().zip(xr).enumerate() {
                s += f64::from(a) * f64::from(b);
                e += f64::from(a).abs() * steps[i / ak] * 0.5;
                mag += (f64::from(a) * f64::from(b)).abs();
            }
            out[t * rows + r] = s;
            bound[t * rows + r] = e * 1.001 + mag * 1e-5 + 1e-6;
        }
    }
    (out, bound)
}

fn check(dtype: GgmlDType, rows: usize, blocks_per_row: usize, m: usize, seed: &[u8], xs: &[f32]) {
    let ty = WeightType::from_ggml(dtype).unwrap();
    let cols = blocks_per_row * ty.block_values();
    let data = random_blocks(ty, rows * blocks_per_row, seed);
    let x: Vec<f32> = (0..m * cols)
        .map(|i| xs[i % xs.len()] * (1.0 + (i % 5) as f32))
        .collect();
    let (want, bound) = reference(dtype, &data, rows, cols, &x, m);
    let w = QWeight::new(dtype, rows, cols, data).unwrap();
    let best = w.matmul(&x, m, Isa::Best).unwrap();
    let portable = w.matmul(&x, m, Isa::Portable).unwrap();
    for i in 0..m * rows {
        for (name, got) in [("best", best[i]), ("portable", portable[i])] {
            let err = (f64::from(got) - want[i]).abs();
            assert!(
                err <= bound[i],
                "{dtype:?} {name} {rows}x{cols} m={m} [{i}]: {got} vs {} (bound {})",
                want[i],
                bound[i]
            );
        }
        let tol = 1e-4 * (f64::from(portable[i]).abs() + bound[i]) + 1e-5;
        assert!((f64::from(best[i]) - f64::from(portable[i])).abs() <= tol);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn kernels_match_dequantised_reference(
        ty in 0..TYPES.len(),
        rows in 1usize..40,
        blocks in 1usize..5,
        m in 1usize..18,
        seed in proptest::collection::vec(any::<u8>(), 1..64),
        xs in proptest::collection::vec(-4.0f32..4.0, 1..97),
    ) {
        let dtype = TYPES[ty];
        let blocks = if WeightType::from_ggml(dtype).unwrap().block_values() == 32 { blocks * 3 } else { blocks };
        check(dtype, rows, blocks, m, &seed, &xs);
    }
}

#[test]
fn every_type_at_fixed_shapes() {
    let seed: Vec<u8> = (0..61).map(|i| (i * 37 + 11) as u8).collect();
    let xs: Vec<f32> = (0..89)
        .map(|i| ((i * 29 % 89) as f32 - 44.0) / 11.0)
        .collect();
    for dtype in TYPES {
        for (rows, m) in [(1, 1), (7, 3), (33, 17), (64, 8)] {
            check(dtype, rows, 2, m, &seed, &xs);
        }
    }
}

#[test]
fn extreme_q8_weights_do_not_overflow() {
    // -128 weights against +-127 activations: the largest pair sums vpmaddubsw sees.
    let mut blk = vec![0u8; 34];
    blk[..2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
    for (i, b) in blk[2..].iter_mut().enumerate() {
        *b = if i % 3 == 0 { 0x80 } else { 0x7F };
    }
    let x: Vec<f32> = (0..32)
        .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
        .collect();
    let (want, bound) = reference(GgmlDType::Q8_0, &blk, 1, 32, &x, 1);
    let w = QWeight::new(GgmlDType::Q8_0, 1, 32, blk).unwrap();
    for isa in [Isa::Best, Isa::Portable] {
        let got = w.matmul(&x, 1, isa).unwrap();
        assert!(
            (f64::from(got[0]) - want[0]).abs() <= bound[0],
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn refuses_shapes_it_cannot_serve() {
    assert!(QWeight::new(GgmlDType::Q4K, 1, 32, vec![0; 144]).is_err());
    assert!(QWeight::new(GgmlDType::Q8_0, 2, 32, vec![0; 34]).is_err());
    assert!(QWeight::new(GgmlDType::F32, 1, 32, vec![0; 128]).is_err());
    let w = QWeight::new(GgmlDType::Q8_0, 1, 32, vec![0; 34]).unwrap();
    assert!(w.matmul(&[0.0; 31], 1, Isa::Best).is_err());
}

/// Bit for bit: a row's output does not depend on the batch it is in or on the
/// tile that computed it (chunked prefill and batched decode rely on this).
#[test]
fn a_row_gets_the_same_bits_alone_and_in_any_batch() {
    let seed: Vec<u8> = (0..53).map(|i| (i * 41 + 7) as u8).collect();
    for dtype in TYPES {
        let ty = WeightType::from_ggml(dtype).unwrap();
        // 13 rows: the GGUF layout; 16: whole groups, interleaved where the type is.
        for rows in [13, 16] {
            let cols = 2 * ty.block_values().max(96);
            let data = random_blocks(ty, rows * cols / ty.block_values(), &seed);
            let w = QWeight::new(dtype, rows, cols, data).unwrap();
            for m in [2, 3, 5, 8, 9] {
                let x: Vec<f32> = (0..m * cols)
                    .map(|i| ((i * 29 % 89) as f32 - 44.0) / 9.0)
                    .collect();
                let all = w.matmul(&x, m, Isa::Best).unwrap();
                for t in 0..m {
                    let one = w
                        .matmul(&x[t * cols..(t + 1) * cols], 1, Isa::Best)
                        .unwrap();
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&all[t * rows..(t + 1) * rows]),
                        bits(&one),
                        "{dtype:?} {rows} rows m={m} row {t}"
                    );
                }
            }
        }
    }
}

/// The SIMD kernels (not the portable fallback) serve every type where the CPU
/// has them, so the reference tests above do test them: the 32-value types in
/// the GGUF layout (the eight-pair kernel; Q5 only interleaved) and interleaved
/// in groups of 8 rows, the K-quants against 32-value activation blocks.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_avx2_kernels_take_every_type_and_shape() {
    use super::{q32_avx2, rows8, rows8_avx2};
    if !super::avx2::available() {
        return;
    }
    for dtype in TYPES {
        let ty = WeightType::from_ggml(dtype).unwrap();
        for (rows, m) in [(1, 1), (5, 1), (7, 3), (8, 1), (9, 8), (16, 3)] {
            let cols = 2 * ty.block_values();
            let rb = cols / ty.block_values() * ty.block_bytes();
            let w = vec![0u8; rows * rb];
            let mut acts = Vec::new();
            super::q8::quantize_rows(&vec![0.5f32; m * cols], &mut acts);
            let columns = super::q8::Columns::of(&acts, m);
            let mut out = vec![0f32; rows * m];
            let call = (acts.as_slice(), &columns);
            let served = match ty {
                WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => {
                    super::avx2::rows(ty, &w, rb, call, m, &mut out).is_some()
                }
                WeightType::Q5_0 | WeightType::Q5_1 if !rows8::packs(ty, rows) => continue,
                _ if rows8::packs(ty, rows) => {
                    let packed = rows8::pack(ty, rows, cols, &w);
                    rows8_avx2::rows(ty, &packed, rb, call, m, &mut out).is_some()
                }
                _ => q32_avx2::rows(ty, &w, rb, call, m, &mut out).is_some(),
            };
            assert!(served, "{dtype:?} {rows}x{cols} m={m}");
        }
    }
}

/// Activation blocks from the SIMD quantisation have the scalar one's bits: on
/// random values, on exact halves of a step (`roundf` ties away from zero), and
/// on zeros, NaNs and infinities.
fn same_quantisation(x: &[f32]) {
    let mut simd = Vec::new();
    let mut scalar = Vec::new();
    super::q8::quantize_rows(x, &mut simd);
    super::q8::quantize_rows_portable(x, &mut scalar);
    assert_eq!(simd.len(), scalar.len());
    for (a, b) in simd.iter().zip(&scalar) {
        assert_eq!(a.d.to_bits(), b.d.to_bits(), "{x:?}");
        assert_eq!(a.s.to_bits(), b.s.to_bits(), "{x:?}");
        assert_eq!(a.qs, b.qs, "{x:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn simd_activation_quantisation_matches_scalar(
        xs in proptest::collection::vec(-1e4f32..1e4, 32..=160),
        scale in -20i32..20,
    ) {
        let k = xs.len() / 32 * 32;
        let x: Vec<f32> = xs[..k].iter().map(|v| v * 2f32.powi(scale)).collect();
        same_quantisation(&x);
    }

    #[test]
    fn simd_activation_quantisation_rounds_ties_like_roundf(
        steps in proptest::collection::vec(-254i32..=254, 31),
        amax in 0.01f32..100.0,
    ) {
        // Values at (integer + 1/2) steps of d = amax / 127, and amax itself.
        let d = amax / 127.0;
        let mut x: Vec<f32> = steps.iter().map(|&s| s as f32 * 0.5 * d).collect();
        x.push(amax);
        same_quantisation(&x);
    }
}

#[test]
fn simd_activation_quantisation_handles_zeros_nans_and_infinities() {
    let mut x = vec![0f32; 32 * 4];
    x[33] = f32::NAN;
    x[70] = f32::INFINITY;
    x[71] = 3.0;
    x[100] = -f32::INFINITY;
    x[101] = f32::NAN;
    same_quantisation(&x);
    let ramp: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) / 2.0).collect();
    same_quantisation(&ramp);
}

const K_TYPES: [GgmlDType; 3] = [GgmlDType::Q4K, GgmlDType::Q5K, GgmlDType::Q6K];

/// `sum(|w| * |x|)` over the terms of `dot(w, x)` as the K-quant kernels see
/// them (scale times value and minimum apart), with `x` as quantized: the size
/// float rounding is relative to.
fn k_magnitude(ty: WeightType, w: &[u8], acts: &[BlockQ8K]) -> f64 {
    let mut u = super::portable::Unpacked {
        q: [0; 256],
        scale: [0.0; 16],
        min: [0.0; 16],
    };
    let mut mag = 0f64;
    for (blk, a) in w.chunks_exact(ty.block_bytes()).zip(acts) {
        super::portable::unpack(ty, blk, &mut u);
        for i in 0..256 {
            let wv = f64::from(u.scale[i / 16] * f32::from(u.q[i])).abs()
                + f64::from(u.min[i / 16]).abs();
            mag += wv * f64::from(a.d * f32::from(a.qs[i])).abs();
        }
    }
    mag
}

#[cfg(target_arch = "x86_64")]
proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The AVX2 K-quant kernels against the portable one on the same Q8_K
    /// activations, every tile shape (odd row counts, batches of 1..=17).
    #[test]
    fn kquant_avx2_matches_the_portable_kernel(
        ty in 0..K_TYPES.len(),
        rows in 1usize..23,
        blocks in 1usize..5,
        m in 1usize..18,
        seed in proptest::collection::vec(any::<u8>(), 1..64),
        xs in proptest::collection::vec(-4.0f32..4.0, 1..97),
    ) {
        if !super::avx2::available() {
            return Ok(());
        }
        let wt = WeightType::from_ggml(K_TYPES[ty]).unwrap();
        let data = random_blocks(wt, rows * blocks, &seed);
        let x: Vec<f32> = (0..m * blocks * QK_K)
            .map(|i| xs[i % xs.len()] * (1.0 + (i % 7) as f32))
            .collect();
        let mut acts = Vec::new();
        super::q8k::quantize_rows(&x, &mut acts);
        let rb = blocks * wt.block_bytes();
        let mut simd = vec![0f32; rows * m];
        prop_assert!(super::kquant_avx2::rows(wt, &data, rb, &acts, m, &mut simd).is_some());
        for (i, wr) in data.chunks_exact(rb).enumerate() {
            let mut want = vec![0f32; m];
            super::q8k::rows(wt, wr, &acts, &mut want);
            for t in 0..m {
                let a = &acts[t * blocks..(t + 1) * blocks];
                let tol = 1e-5 * k_magnitude(wt, wr, a) + 1e-6;
                let (got, want) = (f64::from(simd[i * m + t]), f64::from(want[t]));
                prop_assert!((got - want).abs() <= tol, "{wt:?} row {i} act {t}: {got} vs {want} (tol {tol})");
            }
        }
    }

    #[test]
    fn simd_k_activation_quantisation_matches_scalar(
        xs in proptest::collection::vec(-1e4f32..1e4, 256..=600),
        scale in -20i32..20,
    ) {
        let k = xs.len() / QK_K * QK_K;
        let x: Vec<f32> = xs[..k].iter().map(|v| v * 2f32.powi(scale)).collect();
        same_k_quantisation(&x);
    }
}

/// Q8_K blocks from the SIMD quantisation have the scalar one's bits.
fn same_k_quantisation(x: &[f32]) {
    let mut simd = Vec::new();
    let mut scalar = Vec::new();
    super::q8k::quantize_rows(x, &mut simd);
    super::q8k::quantize_rows_portable(x, &mut scalar);
    assert_eq!(simd.len(), scalar.len());
    for (a, b) in simd.iter().zip(&scalar) {
        assert_eq!(a.d.to_bits(), b.d.to_bits());
        assert_eq!(a.qs, b.qs);
        assert_eq!(a.bsums, b.bsums);
        assert_eq!(a.sums32, b.sums32);
    }
}

#[test]
fn simd_k_activation_quantisation_handles_ties_zeros_nans_and_infinities() {
    // Exact half steps of d = 100 / 127 (ties away from zero), and the maximum.
    let d = 100.0f32 / 127.0;
    let mut x: Vec<f32> = (0..255)
        .map(|i| (i % 254) as f32 * 0.5 * d - 63.5 * d)
        .collect();
    x.push(100.0);
    same_k_quantisation(&x);
    let mut x = vec![0f32; 256 * 3];
    x[300] = f32::NAN;
    x[600] = f32::INFINITY;
    x[601] = -2.0;
    same_k_quantisation(&x);
}

/// The largest values each K-quant kernel can meet: every quant bit set (or
/// clear), the largest sub-scales (Q6_K's -128), activations at +-127.
#[test]
fn extreme_k_quant_blocks_do_not_overflow() {
    for dtype in K_TYPES {
        let ty = WeightType::from_ggml(dtype).unwrap();
        for (fill, scale_byte) in [(0xFFu8, 0xFFu8), (0x00, 0x80), (0xFF, 0x7F)] {
            let mut blk = vec![fill; 2 * ty.block_bytes()];
            for b in blk.chunks_exact_mut(ty.block_bytes()) {
                match ty {
                    WeightType::Q6K => {
                        b[192..208].fill(scale_byte);
                        b[208..210]
                            .copy_from_slice(&half::f16::from_f32(0.25).to_bits().to_le_bytes());
                    }
                    _ => {
                        b[4..16].fill(scale_byte);
                        b[0..2].copy_from_slice(&half::f16::from_f32(0.25).to_bits().to_le_bytes());
                        b[2..4].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
                    }
                }
            }
            for m in [1, 5] {
                let x: Vec<f32> = (0..m * 512)
                    .map(|i| if (i / 3) % 2 == 0 { 1.0 } else { -1.0 })
                    .collect();
                let (want, bound) = reference(dtype, &blk, 1, 512, &x, m);
                let w = QWeight::new(dtype, 1, 512, blk.clone()).unwrap();
                for isa in [Isa::Best, Isa::Portable] {
                    let got = w.matmul(&x, m, isa).unwrap();
                    for t in 0..m {
                        let err = (f64::from(got[t]) - want[t]).abs();
                        assert!(
                            err <= bound[t],
                            "{dtype:?} {isa:?} {fill:#x}/{scale_byte:#x}: {got:?} vs {want:?}"
                        );
                    }
                }
            }
        }
    }
}

/// The Q8_K kernels serve every K-quant type and tile shape on this CPU.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_kquant_avx2_kernels_take_every_type_and_shape() {
    if !super::avx2::available() {
        return;
    }
    for dtype in K_TYPES {
        let ty = WeightType::from_ggml(dtype).unwrap();
        for (rows, m) in [(1, 1), (5, 1), (7, 3), (9, 8), (4, 17)] {
            let rb = 2 * ty.block_bytes();
            let w = vec![0u8; rows * rb];
            let mut acts = Vec::new();
            super::q8k::quantize_rows(&vec![0.5f32; m * 512], &mut acts);
            let mut out = vec![0f32; rows * m];
            assert!(
                super::kquant_avx2::rows(ty, &w, rb, &acts, m, &mut out).is_some(),
                "{dtype:?} {rows} rows m={m}"
            );
        }
    }
}

/// Packed Q4_K ([`super::q8k::pack_q4k`]) gives back the GGUF blocks it was
/// packed from, byte for byte, for any row range, and a packed weight's
/// dequantised rows are the GGUF rows'.
#[test]
fn packed_q4k_unpacks_to_the_same_blocks() {
    let ty = WeightType::Q4K;
    for (rows, blocks) in [(8, 1), (13, 2), (16, 3), (21, 1)] {
        let seed: Vec<u8> = (0..47).map(|i| (i * 13 + rows) as u8).collect();
        let data = random_blocks(ty, rows * blocks, &seed);
        let cols = blocks * QK_K;
        let rb = blocks * ty.block_bytes();
        let packed = super::q8k::pack_q4k(rows, cols, &data);
        assert!(packed.len() <= data.len() + data.len() * 3 / 100);
        for first in 0..rows {
            for n in [1, rows - first] {
                let got = super::q8k::unpack_q4k_rows(&packed, rows, cols, first, n);
                assert_eq!(
                    got,
                    &data[first * rb..(first + n) * rb],
                    "{rows} {first} {n}"
                );
            }
        }
        let w = QWeight::new(GgmlDType::Q4K, rows, cols, data.clone()).unwrap();
        assert_eq!(w.packed, super::q8k::packs(ty, rows));
        for r in 0..rows {
            let (mut got, mut want) = (Vec::new(), Vec::new());
            w.dequantize_row(r, &mut got).unwrap();
            super::portable::dequantize(ty, &data[r * rb..(r + 1) * rb], &mut want);
            assert_eq!(
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

/// A looked-up row (an embedding table kept in its blocks) has the bits of
/// candle's dequantisation of the whole matrix, for every type, in the GGUF
/// layout (13 rows) and interleaved or packed (16).
#[test]
fn dequantised_rows_have_candles_bits() {
    let seed: Vec<u8> = (0..59).map(|i| (i * 23 + 5) as u8).collect();
    for dtype in TYPES {
        let ty = WeightType::from_ggml(dtype).unwrap();
        for rows in [13, 16] {
            let cols = 2 * ty.block_values();
            let data = random_blocks(ty, rows * 2, &seed);
            let storage = QStorage::from_data(Cow::Borrowed(&data), &Device::Cpu, dtype).unwrap();
            let want: Vec<f32> = QTensor::new(storage, (rows, cols))
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let w = QWeight::new(dtype, rows, cols, data).unwrap();
            for r in 0..rows {
                let mut got = Vec::new();
                w.dequantize_row(r, &mut got).unwrap();
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&got),
                    bits(&want[r * cols..(r + 1) * cols]),
                    "{dtype:?} {rows} rows, row {r}"
                );
            }
        }
    }
}

/// The packed Q4_K kernel against the portable one on the GGUF blocks, on the
/// same Q8_K activations: whole groups and the rows after them, batches of
/// 1..=17; the portable path on a packed weight is the portable kernel's bits.
fn packed_q4k_check(rows: usize, blocks: usize, m: usize, data: &[u8], x: &[f32]) {
    let ty = WeightType::Q4K;
    let cols = blocks * QK_K;
    let rb = blocks * ty.block_bytes();
    let w = QWeight::new(GgmlDType::Q4K, rows, cols, data.to_vec()).unwrap();
    let best = w.matmul(x, m, Isa::Best).unwrap();
    let portable = w.matmul(x, m, Isa::Portable).unwrap();
    let mut acts = Vec::new();
    super::q8k::quantize_rows(x, &mut acts);
    for (i, wr) in data.chunks_exact(rb).enumerate() {
        let mut want = vec![0f32; m];
        super::q8k::rows(ty, wr, &acts, &mut want);
        for t in 0..m {
            let a = &acts[t * blocks..(t + 1) * blocks];
            let tol = 1e-5 * k_magnitude(ty, wr, a) + 1e-6;
            let got = f64::from(best[t * rows + i]);
            assert!(
                (got - f64::from(want[t])).abs() <= tol,
                "{rows}x{cols} m={m} row {i} act {t}: {got} vs {} (tol {tol})",
                want[t]
            );
            assert_eq!(portable[t * rows + i].to_bits(), want[t].to_bits());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn packed_q4k_matches_the_portable_kernel(
        rows in 1usize..42,
        blocks in 1usize..5,
        m in 1usize..18,
        seed in proptest::collection::vec(any::<u8>(), 1..64),
        xs in proptest::collection::vec(-4.0f32..4.0, 1..97),
    ) {
        let data = random_blocks(WeightType::Q4K, rows * blocks, &seed);
        let x: Vec<f32> = (0..m * blocks * QK_K)
            .map(|i| xs[i % xs.len()] * (1.0 + (i % 7) as f32))
            .collect();
        packed_q4k_check(rows, blocks, m, &data, &x);
    }
}

/// The largest sums the packed kernel's 16-bit sub-block sums meet: every
/// value 15 against activations all +127 (or -127), and the extreme scales.
#[test]
fn extreme_packed_q4k_blocks_do_not_overflow() {
    for (fill, scale_byte) in [(0xFFu8, 0xFFu8), (0x00, 0x80), (0xFF, 0x7F), (0xFF, 0x00)] {
        let (rows, blocks) = (9, 2);
        let mut data = vec![fill; rows * blocks * 144];
        for b in data.chunks_exact_mut(144) {
            b[4..16].fill(scale_byte);
            b[0..2].copy_from_slice(&half::f16::from_f32(0.25).to_bits().to_le_bytes());
            b[2..4].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
        }
        for m in [1, 5] {
            for sign in [1.0f32, -1.0] {
                let x = vec![sign; m * blocks * QK_K];
                packed_q4k_check(rows, blocks, m, &data, &x);
                let (want, bound) = reference(GgmlDType::Q4K, &data, rows, blocks * QK_K, &x, m);
                let w = QWeight::new(GgmlDType::Q4K, rows, blocks * QK_K, data.clone()).unwrap();
                let got = w.matmul(&x, m, Isa::Best).unwrap();
                for (i, g) in got.iter().enumerate() {
                    let err = (f64::from(*g) - want[i]).abs();
                    assert!(
                        err <= bound[i],
                        "{fill:#x}/{scale_byte:#x} [{i}]: {g} vs {}",
                        want[i]
                    );
                }
            }
        }
    }
}

/// A call that mixes packed Q4_K with another type gives each weight the bits
/// it gets alone.
#[test]
fn a_call_mixing_packed_q4k_and_q8_0_gives_the_bits_of_separate_calls() {
    let seed: Vec<u8> = (0..29).map(|i| (i * 53 + 3) as u8).collect();
    let cols = 512;
    let k = QWeight::new(
        GgmlDType::Q4K,
        16,
        cols,
        random_blocks(WeightType::Q4K, 16 * 2, &seed),
    )
    .unwrap();
    let q8 = QWeight::new(
        GgmlDType::Q8_0,
        5,
        cols,
        random_blocks(WeightType::Q8_0, 5 * 16, &seed),
    )
    .unwrap();
    for m in [1, 3] {
        let x: Vec<f32> = (0..m * cols)
            .map(|i| ((i * 31 % 97) as f32 - 48.0) / 7.0)
            .collect();
        let both = super::matmul_many(&[&q8, &k, &q8], &x, m, Isa::Best).unwrap();
        let alone = [&q8, &k, &q8].map(|w| w.matmul(&x, m, Isa::Best).unwrap());
        assert_eq!(both.len(), 3);
        for (b, a) in both.iter().zip(&alone) {
            assert_eq!(
                b.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                a.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
        }
    }
}

/// A hostile GGUF's dims: sizes whose products do not fit are errors (no
/// overflow panic, no wrapped size), and so is a batch whose size does not.
#[test]
fn dims_whose_products_overflow_are_refused() {
    let huge = usize::MAX / 256 * 256;
    assert!(QWeight::new(GgmlDType::Q4K, usize::MAX, 256, vec![0; 144]).is_err());
    assert!(QWeight::new(GgmlDType::Q4K, 1 << 40, 1 << 40, vec![0; 144]).is_err());
    assert!(QWeight::new(GgmlDType::Q8_0, 0, usize::MAX / 32 * 32, Vec::new()).is_err());
    assert!(QWeight::from_slice(GgmlDType::Q6K, 2, huge, &[0; 210]).is_err());
    // (1 << 61) * 144 wraps to 0 bytes in 64 bits: still refused.
    assert!(QWeight::new(GgmlDType::Q4K, 1 << 61, 256, Vec::new()).is_err());
    let w = QWeight::new(GgmlDType::Q4K, 1, 256, vec![0; 144]).unwrap();
    assert!(w.matmul(&[0.0; 256], usize::MAX, Isa::Best).is_err());
    assert!(w.matmul(&[], 1 << 56, Isa::Best).is_err());
}
