//! The portable kernels: each weight block unpacked once into signed 8-bit values
//! with a scale and a minimum per 16 values, then dotted with every activation row
//! of the tile. Plain Rust the compiler vectorises; the reference the SIMD
//! kernels are tested against, and the path on CPUs without them.

use super::q8::{BlockQ8, QK};
use super::{WeightType, f16_at, k4_scale_min};

/// One weight block: `x[i] = scale[i / 16] * q[i] + min[i / 16]`.
pub struct Unpacked {
    pub q: [i8; 256],
    pub scale: [f32; 16],
    pub min: [f32; 16],
}

impl Unpacked {
    fn new() -> Self {
        Unpacked {
            q: [0; 256],
            scale: [0.0; 16],
            min: [0.0; 16],
        }
    }
}

/// Unpack block `blk` (`ty.block_bytes()` bytes) into `u`.
pub fn unpack(ty: WeightType, blk: &[u8], u: &mut Unpacked) {
    match ty {
        WeightType::Q4_0 | WeightType::Q4_1 => {
            let d = f16_at(blk, 0);
            let (m, qs) = match ty {
                WeightType::Q4_0 => (-8.0 * d, &blk[2..18]),
                _ => (f16_at(blk, 2), &blk[4..20]),
            };
            for (j, &b) in qs.iter().enumerate() {
                u.q[j] = (b & 0x0F) as i8;
                u.q[j + 16] = (b >> 4) as i8;
            }
            u.scale[..2].fill(d);
            u.min[..2].fill(m);
        }
        WeightType::Q5_0 | WeightType::Q5_1 => {
            let d = f16_at(blk, 0);
            let (m, quants) = match ty {
                WeightType::Q5_0 => (-16.0 * d, q5_quants(&blk[2..22])),
                _ => (f16_at(blk, 2), q5_quants(&blk[4..24])),
            };
            for (q, v) in u.q.iter_mut().zip(quants) {
                *q = v as i8;
            }
            u.scale[..2].fill(d);
            u.min[..2].fill(m);
        }
        WeightType::Q8_0 => {
            let d = f16_at(blk, 0);
            for (q, &b) in u.q.iter_mut().zip(&blk[2..34]) {
                *q = b as i8;
            }
            u.scale[..2].fill(d);
            u.min[..2].fill(0.0);
        }
        WeightType::Q4K | WeightType::Q5K => unpack_k45(ty, blk, u),
        WeightType::Q6K => unpack_q6k(blk, u),
    }
}

/// A Q5_0/Q5_1 block's 32 unsigned 5-bit values in order, from its high bits
/// (`qh`, a little-endian u32: bit `v` is value `v`'s fifth bit) and its 16
/// bytes of nibbles (value `j` low, `j + 16` high).
pub(super) fn q5_quants(qh_qs: &[u8]) -> [u8; 32] {
    let qh = u32::from_le_bytes([qh_qs[0], qh_qs[1], qh_qs[2], qh_qs[3]]);
    let mut q = [0u8; 32];
    for (j, &b) in qh_qs[4..20].iter().enumerate() {
        q[j] = (b & 0x0F) | (((qh >> j) & 1) << 4) as u8;
        q[j + 16] = (b >> 4) | (((qh >> (j + 16)) & 1) << 4) as u8;
    }
    q
}

fn unpack_k45(ty: WeightType, blk: &[u8], u: &mut Unpacked) {
    let d = f16_at(blk, 0);
    let dmin = f16_at(blk, 2);
    let scales = &blk[4..16];
    let (qh, qs) = match ty {
        WeightType::Q5K => (Some(&blk[16..48]), &blk[48..176]),
        _ => (None, &blk[16..144]),
    };
    for j in 0..4 {
        for half in 0..2 {
            let s = 2 * j + half;
            let (sc, mn) = k4_scale_min(s, scales);
            u.scale[2 * s..2 * s + 2].fill(d * f32::from(sc));
            u.min[2 * s..2 * s + 2].fill(-dmin * f32::from(mn));
            for l in 0..32 {
                let byte = qs[32 * j + l];
                let mut v = if half == 0 { byte & 0x0F } else { byte >> 4 };
                if let Some(qh) = qh {
                    v |= ((qh[l] >> s) & 1) << 4;
                }
                u.q[64 * j + 32 * half + l] = v as i8;
            }
        }
    }
}

/// A Q6_K block's 256 values (`q - 32`, in order) from its low and high bits.
pub(super) fn q6k_quants(blk: &[u8], q: &mut [i8; 256]) {
    let (ql, qh) = (&blk[0..128], &blk[128..192]);
    for n in 0..2 {
        let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
        for l in 0..32 {
            let v = [
                (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (g, v) in v.into_iter().enumerate() {
                q[128 * n + 32 * g + l] = v as i8 - 32;
            }
        }
    }
}

fn unpack_q6k(blk: &[u8], u: &mut Unpacked) {
    let sc = &blk[192..208];
    let d = f16_at(blk, 208);
    q6k_quants(blk, &mut u.q);
    for (i, &s) in sc.iter().enumerate() {
        // Sub-block i covers values 16i..16i+16 in the order the loop above wrote.
        u.scale[i] = d * f32::from(s as i8);
    }
    u.min.fill(0.0);
}

/// Append the blocks of `w` (whole blocks of `ty`) dequantised to `out`, in
/// candle's arithmetic: `d * q` (Q8_0), `(q - 8) * d` (Q4_0), `q * d + m`
/// (Q4_1), `(q - 16) * d` (Q5_0), `q * d + m` (Q5_1), `(d * sc) * q - dmin * m`
/// (Q4_K, Q5_K) and `(d * sc) * q` (Q6_K).
pub fn dequantize(ty: WeightType, w: &[u8], out: &mut Vec<f32>) {
    let mut u = Unpacked::new();
    for blk in w.chunks_exact(ty.block_bytes()) {
        match ty {
            WeightType::Q8_0 => {
                let d = f16_at(blk, 0);
                out.extend(blk[2..34].iter().map(|&q| d * f32::from(q as i8)));
            }
            WeightType::Q4_0 => {
                let d = f16_at(blk, 0);
                let q = |v: u8| f32::from(v as i8 - 8) * d;
                out.extend(blk[2..18].iter().map(|&b| q(b & 0x0F)));
                out.extend(blk[2..18].iter().map(|&b| q(b >> 4)));
            }
            WeightType::Q4_1 => {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                out.extend(blk[4..20].iter().map(|&b| f32::from(b & 0x0F) * d + m));
                out.extend(blk[4..20].iter().map(|&b| f32::from(b >> 4) * d + m));
            }
            WeightType::Q5_0 => {
                let d = f16_at(blk, 0);
                let q = q5_quants(&blk[2..22]);
                out.extend(q.iter().map(|&v| f32::from(v as i8 - 16) * d));
            }
            WeightType::Q5_1 => {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                let q = q5_quants(&blk[4..24]);
                out.extend(q.iter().map(|&v| f32::from(v) * d + m));
            }
            _ => {
                unpack(ty, blk, &mut u);
                let vals = u.q.iter().take(ty.block_values()).enumerate();
                // Q6_K has no minimum term; Q4_K/Q5_K add it even where it is a
                // zero (`d1 * q - m1` in candle: a signed zero's sign follows it).
                let with_min = ty != WeightType::Q6K;
                out.extend(vals.map(|(i, &q)| {
                    let (s, m) = (u.scale[i / 16], u.min[i / 16]);
                    if with_min {
                        s * f32::from(q) + m
                    } else {
                        s * f32::from(q)
                    }
                }));
            }
        }
    }
}

/// `out[r] = dot(weight row, activation row r)` for the `out.len()` activation
/// rows in `acts` (each `w.len() / block_bytes * block_values / 32` blocks).
pub fn rows(ty: WeightType, w: &[u8], acts: &[BlockQ8], out: &mut [f32]) {
    let bb = ty.block_bytes();
    let per = ty.block_values() / QK;
    let kb = w.len() / bb * per;
    let mut u = Unpacked::new();
    out.fill(0.0);
    for (bi, blk) in w.chunks_exact(bb).enumerate() {
        unpack(ty, blk, &mut u);
        for (r, o) in out.iter_mut().enumerate() {
            let a = &acts[r * kb + bi * per..r * kb + (bi + 1) * per];
            *o += dot_unpacked(&u, a);
        }
    }
}

fn dot_unpacked(u: &Unpacked, acts: &[BlockQ8]) -> f32 {
    let mut sum = 0f32;
    for (j, a) in acts.iter().enumerate() {
        for h in 0..2 {
            let q = &u.q[32 * j + 16 * h..32 * j + 16 * h + 16];
            let aq = &a.qs[16 * h..16 * h + 16];
            let mut dot = 0i32;
            let mut asum = 0i32;
            for (&w, &x) in q.iter().zip(aq) {
                dot += i32::from(w) * i32::from(x);
                asum += i32::from(x);
            }
            let s = 2 * j + h;
            sum += a.d * (u.scale[s] * dot as f32 + u.min[s] * asum as f32);
        }
    }
    sum
}
