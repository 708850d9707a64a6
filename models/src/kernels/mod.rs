//! Quantized matmul on the CPU: weights kept in their GGUF blocks (Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K; nothing re-quantised; Q4_K, and Q4_0 to
//! Q5_1, rearranged losslessly in groups of 8 rows where the AVX2 kernels read
//! them, [`q8k::pack_q4k`] and [`rows8`]),
//! activations quantized once per call to 8-bit blocks of 32 ([`q8`]) or 256
//! ([`q8k`], the K-quants), and int8 dot products over both.
//!
//! [`QWeight::matmul`] is a GEMM over `m` activation rows: output rows are split
//! over [`pool`]'s threads (the caller and spinning helpers, as many as rayon's
//! pool has), and within a task each weight block is unpacked once and multiplied
//! with up to eight activation rows while it sits in registers, so a batch reads
//! the weights once. `m == 1` is the GEMV.
//!
//! The only module of the workspace allowed `unsafe`: the SIMD intrinsics of
//! [`avx2`], each block with a `// SAFETY:` note, behind safe functions that check
//! the CPU's features at run time. [`portable`] is the plain-Rust path for other
//! CPUs and the reference the SIMD kernels are tested against.
#![allow(unsafe_code)]

pub mod arena;
pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod kquant_avx2;
pub mod pool;
pub mod portable;
#[cfg(target_arch = "x86_64")]
mod q32_avx2;
pub mod q8;
pub mod q8k;
pub mod rows8;
#[cfg(target_arch = "x86_64")]
mod rows8_avx2;
pub mod vexp;

use candle_core::quantized::GgmlDType;
use q8::{BlockQ8, QK};

/// Weight types with kernels here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum WeightType {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

impl WeightType {
    pub fn from_ggml(dtype: GgmlDType) -> Option<Self> {
        Some(match dtype {
            GgmlDType::Q4_0 => Self::Q4_0,
            GgmlDType::Q4_1 => Self::Q4_1,
            GgmlDType::Q5_0 => Self::Q5_0,
            GgmlDType::Q5_1 => Self::Q5_1,
            GgmlDType::Q8_0 => Self::Q8_0,
            GgmlDType::Q4K => Self::Q4K,
            GgmlDType::Q5K => Self::Q5K,
            GgmlDType::Q6K => Self::Q6K,
            _ => return None,
        })
    }

    /// Values per block.
    pub fn block_values(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }

    /// Bytes per block (ggml's layout).
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }
}

/// The little-endian f16 at `at` of a block, as f32.
#[inline]
pub(crate) fn f16_at(blk: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([blk[at], blk[at + 1]]);
    half::f16::from_bits(bits).to_f32()
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K block (ggml's
/// `get_scale_min_k4`).
#[inline]
pub(crate) fn k4_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Which kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX2 + FMA where the CPU has them, else portable.
    Best,
    /// The portable kernels only (tests compare the two).
    Portable,
}

/// A `(rows, cols)` weight matrix in its GGUF blocks, row after row.
#[derive(Debug, Clone)]
pub struct QWeight {
    ty: WeightType,
    rows: usize,
    cols: usize,
    /// In huge pages where they can be had ([`arena`]).
    data: arena::Bytes,
    /// `data` is Q4_K packed in groups of 8 rows ([`q8k::pack_q4k`]).
    packed: bool,
    /// `data` is Q4_0/Q4_1 interleaved in groups of 8 rows ([`rows8::pack`]).
    rows8: bool,
}

/// Why a weight cannot use these kernels (the caller keeps candle's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

impl QWeight {
    /// Take the raw blocks of a `(rows, cols)` matrix of type `dtype`.
    pub fn new(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        data: Vec<u8>,
    ) -> Result<Self, Unsupported> {
        let ty = Self::check(dtype, rows, cols, data.len())?;
        if q8k::packs(ty, rows) {
            let packed = q8k::pack_q4k(rows, cols, &data);
            return Self::with_bytes(dtype, rows, cols, arena::Bytes::heap(packed));
        }
        if rows8::packs(ty, rows) {
            let packed = rows8::pack(ty, rows, cols, &data);
            return Self::with_bytes(dtype, rows, cols, arena::Bytes::heap(packed));
        }
        Self::with_bytes(dtype, rows, cols, arena::Bytes::heap(data))
    }

    /// A copy of the raw blocks of a `(rows, cols)` matrix, in huge-page memory
    /// where it can be had ([`arena`]): how a model's weights are loaded.
    pub fn from_slice(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self, Unsupported> {
        let ty = Self::check(dtype, rows, cols, data.len())?;
        if q8k::packs(ty, rows) {
            let packed = q8k::pack_q4k(rows, cols, data);
            return Self::with_bytes(dtype, rows, cols, arena::Bytes::copy_of(&packed));
        }
        if rows8::packs(ty, rows) {
            let packed = rows8::pack(ty, rows, cols, data);
            return Self::with_bytes(dtype, rows, cols, arena::Bytes::copy_of(&packed));
        }
        Self::with_bytes(dtype, rows, cols, arena::Bytes::copy_of(data))
    }

    /// `data`: the blocks as [`Self::check`] accepted them, packed where
    /// [`q8k::packs`] or [`rows8::packs`] says.
    fn with_bytes(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        data: arena::Bytes,
    ) -> Result<Self, Unsupported> {
        let ty = WeightType::from_ggml(dtype)
            .ok_or_else(|| Unsupported(format!("no CPU kernel for {dtype:?}")))?;
        Ok(QWeight {
            ty,
            rows,
            cols,
            data,
            packed: q8k::packs(ty, rows),
            rows8: rows8::packs(ty, rows),
        })
    }

    /// The weight type, when `bytes` are whole blocks of a `(rows, cols)` matrix.
    fn check(
        dtype: GgmlDType,
        rows: usize,
        cols: usize,
        bytes: usize,
    ) -> Result<WeightType, Unsupported> {
        let ty = WeightType::from_ggml(dtype)
            .ok_or_else(|| Unsupported(format!("no CPU kernel for {dtype:?}")))?;
        if cols == 0 || !cols.is_multiple_of(ty.block_values()) {
            return Err(Unsupported(format!(
                "{cols} columns are not whole {dtype:?} blocks"
            )));
        }
        // A GGUF's dims are the file's word: a product that does not fit is an
        // error, not a wrapped size.
        let want = (cols / ty.block_values())
            .checked_mul(ty.block_bytes())
            .and_then(|row_bytes| row_bytes.checked_mul(rows))
            .ok_or_else(|| Unsupported(format!("a {rows}x{cols} {dtype:?} matrix is too large")))?;
        if bytes != want {
            return Err(Unsupported(format!(
                "{bytes} bytes for a {rows}x{cols} {dtype:?} matrix (want {want})"
            )));
        }
        Ok(ty)
    }

    /// Whether the blocks sit in huge-page memory.
    pub fn in_huge_pages(&self) -> bool {
        self.data.in_huge_pages()
    }

    pub fn weight_type(&self) -> WeightType {
        self.ty
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_values() * self.ty.block_bytes()
    }

    /// Append row `row` dequantised to f32 to `out`, with the same arithmetic as
    /// candle's `dequantize` (so a looked-up embedding row has the same bits as
    /// the dense table had).
    pub fn dequantize_row(&self, row: usize, out: &mut Vec<f32>) -> Result<(), Unsupported> {
        if row >= self.rows {
            return Err(Unsupported(format!("row {row} of {}", self.rows)));
        }
        portable::dequantize(self.ty, &self.gguf_rows(row, 1), out);
        Ok(())
    }

    /// Rows `first..first + n` as GGUF blocks (unpacked again where `data` is
    /// packed).
    fn gguf_rows(&self, first: usize, n: usize) -> std::borrow::Cow<'_, [u8]> {
        if self.packed {
            let blocks = q8k::unpack_q4k_rows(&self.data, self.rows, self.cols, first, n);
            return std::borrow::Cow::Owned(blocks);
        }
        if self.rows8 {
            let blocks = rows8::unpack_rows(self.ty, self.cols, &self.data, first, n);
            return std::borrow::Cow::Owned(blocks);
        }
        let rb = self.row_bytes();
        std::borrow::Cow::Borrowed(&self.data[first * rb..(first + n) * rb])
    }

    /// `x` is `(m, cols)` row-major; returns `(m, rows)` = `x · Wᵀ`.
    pub fn matmul(&self, x: &[f32], m: usize, isa: Isa) -> Result<Vec<f32>, Unsupported> {
        let mut outs = matmul_many(&[self], x, m, isa)?;
        outs.pop().ok_or_else(|| Unsupported("no output".into()))
    }
}

/// Several weights with the same `cols` applied to the same activations (the
/// q/k/v projections, or gate and up): the activations are quantized once and all
/// the weights' rows share one parallel region. Returns one `(m, rows)` output per
/// weight.
pub fn matmul_many(
    ws: &[&QWeight],
    x: &[f32],
    m: usize,
    isa: Isa,
) -> Result<Vec<Vec<f32>>, Unsupported> {
    let Some(cols) = ws.first().map(|w| w.cols) else {
        return Ok(Vec::new());
    };
    if ws.iter().any(|w| w.cols != cols) || m.checked_mul(cols) != Some(x.len()) {
        return Err(Unsupported(format!(
            "activations of {} values are not {m} rows of {cols} for every weight",
            x.len()
        )));
    }
    // K-quant weights take activations in blocks of 256 with one scale (Q8_K).
    if ws.iter().all(|w| q8k::serves(w.ty)) {
        return Ok(q8k::matmul_many(ws, x, m, isa));
    }
    // Packed Q4_K reads only Q8_K activations: a call that mixes it with
    // other types runs the K-quants and the others apart.
    if ws.iter().any(|w| w.packed) {
        let (k, rest): (Vec<&QWeight>, Vec<&QWeight>) =
            ws.iter().copied().partition(|w| q8k::serves(w.ty));
        let mut k = q8k::matmul_many(&k, x, m, isa).into_iter();
        let mut rest = matmul_many(&rest, x, m, isa)?.into_iter();
        let outs = ws.iter().map(|w| match q8k::serves(w.ty) {
            true => k.next(),
            false => rest.next(),
        });
        return outs
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| Unsupported("missing output".into()));
    }
    let mut acts = Vec::with_capacity(x.len() / QK);
    q8::quantize_rows(x, &mut acts);
    let columns = q8::Columns::of(&acts, m);
    let mut by_row: Vec<Vec<f32>> = ws.iter().map(|w| vec![0f32; w.rows * m]).collect();
    if m == 0 {
        return Ok(by_row);
    }
    let total: usize = ws.iter().map(|w| w.rows).sum();
    let threads = pool::threads();
    // Enough tasks to balance, few enough that each amortises its dispatch.
    // Whole tiles of 8 weight rows (the AVX2 kernels' single-row tile, and the
    // groups of interleaved weights).
    let chunk = total.div_ceil(threads * 4).max(8).next_multiple_of(8);
    let mut tasks: Vec<(&QWeight, usize, &mut [f32])> = Vec::new();
    for (w, buf) in ws.iter().zip(by_row.iter_mut()) {
        for (ci, dst) in buf.chunks_mut(chunk * m).enumerate() {
            tasks.push((w, ci * chunk, dst));
        }
    }
    let (acts, columns) = (&acts, &columns);
    let work = |(w, first, dst): &mut (&QWeight, usize, &mut [f32])| {
        let (rb, n) = (w.row_bytes(), dst.len() / m);
        #[cfg(target_arch = "x86_64")]
        if w.rows8
            && isa == Isa::Best
            && rows8_avx2::rows(
                w.ty,
                &w.data[*first * rb..(*first + n) * rb],
                rb,
                (acts, columns),
                m,
                dst,
            )
            .is_some()
        {
            return;
        }
        let wr = w.gguf_rows(*first, n);
        rows_chunk(w.ty, &wr, rb, (acts, columns), m, dst, isa);
    };
    if total.saturating_mul(x.len()) < 1 << 16 {
        tasks.iter_mut().for_each(work);
    } else {
        pool::for_each_mut(&mut tasks, &work);
    }
    Ok(by_activation_row(ws, by_row, m))
}

/// Each weight's outputs, computed weight row by weight row (`by_row[w][r * m +
/// t]`), as `(m, rows)` activation row by activation row.
fn by_activation_row(ws: &[&QWeight], by_row: Vec<Vec<f32>>, m: usize) -> Vec<Vec<f32>> {
    if m == 1 {
        return by_row;
    }
    ws.iter()
        .zip(by_row)
        .map(|(w, by_row)| {
            let n = w.rows;
            let mut out = vec![0f32; m * n];
            if n == 0 {
                return out;
            }
            // Each activation row gathers its column of `by_row`; a large
            // output (the vocabulary's) spreads its rows over the pool.
            let gather = |(t, row): &mut (usize, &mut [f32])| {
                for (o, vals) in row.iter_mut().zip(by_row.chunks_exact(m)) {
                    *o = vals[*t];
                }
            };
            let mut rows: Vec<(usize, &mut [f32])> = out.chunks_mut(n).enumerate().collect();
            if m * n < 1 << 15 {
                rows.iter_mut().for_each(gather);
            } else {
                pool::for_each_mut(&mut rows, &gather);
            }
            out
        })
        .collect()
}

/// Activation rows the batch kernels take through a chunk of weight rows
/// before the next ones: 32 rows of 1,536 values quantized are ~36 KiB.
const ACT_BLOCK: usize = 32;

/// `m` activation rows as `(first, end)` blocks of [`ACT_BLOCK`], in order.
fn act_blocks(m: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..m)
        .step_by(ACT_BLOCK)
        .map(move |first| (first, (first + ACT_BLOCK).min(m)))
}

/// `out[i * m + t] = dot(weight row i of w, activation row t)`.
fn rows_chunk(
    ty: WeightType,
    w: &[u8],
    rb: usize,
    (acts, columns): (&[BlockQ8], &q8::Columns),
    m: usize,
    out: &mut [f32],
    isa: Isa,
) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Best && q32_avx2::rows(ty, w, rb, (acts, columns), m, out).is_some() {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Best && avx2::rows(ty, w, rb, (acts, columns), m, out).is_some() {
        return;
    }
    let _ = (isa, columns);
    for (wr, o) in w.chunks_exact(rb).zip(out.chunks_mut(m)) {
        portable::rows(ty, wr, acts, o);
    }
}

#[cfg(test)]
mod tests;
