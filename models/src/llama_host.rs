//! The transformer on the CPU without candle's per-op dispatch: a step's rows
//! stay in plain `Vec<f32>`s from the embedding lookup to the last layer; RMSNorm,
//! RoPE (in place), the KV append, attention (`kernels::attention`) and SiLU·up
//! are loops here, and the matmuls go straight to `kernels::matmul_many` (q/k/v
//! as one call, gate/up as one). candle's graph ran some thirty small ops per
//! layer per step, each allocating a tensor, which at batch 1 cost about as much
//! as the matmuls themselves.
//!
//! Every step works row by row (each row's values never depend on the other rows
//! of its step), so a prompt prefilled in one pass, in chunks or from a cached
//! prefix, and a sequence decoded alone or in a batch, give the same bits.
//!
//! Serves the plain blocks (llama, qwen2, mistral: no per-head or post norms, no
//! local RoPE, SiLU); other families keep candle's ops with the same attention.

use std::sync::Arc;

use candle_core::{DType, Result, Tensor};

use super::{KvCache, Llama, MAX_SEQ_LEN, RopeLayout};
use crate::kernels::attention::{self, Kv, QLayout};
use crate::linear::Linear;

/// One sequence's keys and values on the CPU, every layer in one buffer on the
/// heap. Not in huge pages as the weights are: a huge page is zeroed whole when
/// first touched, so a new cache paid for its entire capacity at once, before
/// its prompt's first token (on the reference VM, where fresh 2 MiB pages came
/// at a few hundred MB/s, 8-stream TTFT p50 was ~2.5x that of 4 KiB pages, which
/// fault in as positions fill); decode lost ~6 % at 8 streams in the same runs.
/// Layer `l`'s keys are `(heads, cap, dim)` f32s
/// at `2 * l * heads * cap * dim`, its values right after; positions `..lens[l]`
/// are filled. All layers grow together: to the positions the sequence is
/// expected to take ([`HostKv::expect`]) at once, beyond that by doubling.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostKv {
    buf: Vec<f32>,
    lens: Vec<usize>,
    heads: usize,
    dim: usize,
    cap: usize,
    /// Positions to make room for at the first allocation (0: no estimate).
    want: usize,
}

impl HostKv {
    /// An empty cache for `layers` layers.
    pub(crate) fn new(layers: usize) -> HostKv {
        HostKv {
            lens: vec![0; layers],
            ..HostKv::default()
        }
    }

    /// Make room for `positions` when the buffer is first allocated or next
    /// grows, instead of doubling up to it: each growth writes a new buffer,
    /// whose fresh pages the kernel must fault in and zero.
    pub(crate) fn expect(&mut self, positions: usize) {
        self.want = positions.min(MAX_SEQ_LEN);
    }

    /// No layers: the model does not run on the CPU.
    pub(crate) fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Values per layer's keys (or values).
    fn slab(&self) -> usize {
        self.heads * self.cap * self.dim
    }

    fn reserve(&mut self, need: usize, heads: usize, dim: usize) -> Result<()> {
        if self.cap > 0 && (self.heads != heads || self.dim != dim) {
            candle_core::bail!(
                "kv cache of {}x{} written as {heads}x{dim}",
                self.heads,
                self.dim
            );
        }
        if need <= self.cap {
            return Ok(());
        }
        if need > MAX_SEQ_LEN {
            candle_core::bail!("sequence of {need} tokens exceeds {MAX_SEQ_LEN}");
        }
        let cap = match need <= self.want {
            true => self.want,
            false => need.next_power_of_two(),
        };
        (self.heads, self.dim) = (heads, dim);
        *self = self.copy_into(cap.clamp(64, MAX_SEQ_LEN), &self.lens);
        Ok(())
    }

    /// The first `lens[l]` positions of each layer in a new buffer of `cap`
    /// positions per layer.
    fn copy_into(&self, cap: usize, lens: &[usize]) -> HostKv {
        let (heads, dim) = (self.heads, self.dim);
        let layers = self.lens.len();
        let slab = heads * cap * dim;
        let mut buf = vec![0f32; 2 * layers * slab];
        if self.cap > 0 {
            let old = self.slab();
            for (l, &len) in lens.iter().enumerate() {
                for half in 0..2 {
                    for h in 0..heads {
                        let from = (2 * l + half) * old + h * self.cap * dim;
                        let to = (2 * l + half) * slab + h * cap * dim;
                        buf[to..to + len * dim].copy_from_slice(&self.buf[from..from + len * dim]);
                    }
                }
            }
        }
        HostKv {
            buf,
            lens: lens.to_vec(),
            heads,
            dim,
            cap,
            want: self.want,
        }
    }

    /// Store layer `l`'s position `pos`: `k` and `v` hold its `heads` vectors of
    /// `dim`, one every `stride` values.
    pub(crate) fn write(
        &mut self,
        l: usize,
        pos: usize,
        (heads, dim, stride): (usize, usize, usize),
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        if l >= self.lens.len() {
            candle_core::bail!("no host kv cache for layer {l}");
        }
        self.reserve(pos + 1, heads, dim)?;
        let slab = self.slab();
        for h in 0..heads {
            let to = 2 * l * slab + (h * self.cap + pos) * dim;
            let from = h * stride;
            let (Some(ks), Some(vs)) = (k.get(from..from + dim), v.get(from..from + dim)) else {
                candle_core::bail!("key/value row shorter than {heads} heads of {dim}");
            };
            self.buf[to..to + dim].copy_from_slice(ks);
            self.buf[to + slab..to + slab + dim].copy_from_slice(vs);
        }
        self.lens[l] = self.lens[l].max(pos + 1);
        Ok(())
    }

    /// Layer `l`'s keys and values (empty before the first write).
    pub(crate) fn view(&self, l: usize) -> Kv<'_> {
        let slab = self.slab();
        let at = 2 * l * slab;
        match self.buf.get(at..at + 2 * slab) {
            Some(both) => {
                let (k, v) = both.split_at(slab);
                Kv {
                    k,
                    v,
                    cap: self.cap,
                }
            }
            None => Kv {
                k: &[],
                v: &[],
                cap: self.cap,
            },
        }
    }

    /// A copy of the first `len` positions with room for `want` (at least one
    /// more than `len`), which its later growth also takes as its estimate.
    pub(crate) fn prefix(&self, len: usize, want: usize) -> HostKv {
        let mut copy = match len == 0 || self.cap == 0 {
            true => HostKv::new(self.lens.len()),
            false => {
                let lens: Vec<usize> = self.lens.iter().map(|&l| l.min(len)).collect();
                let len = lens.iter().copied().max().unwrap_or(0);
                let cap = match want > len {
                    true => want,
                    false => (len + 1).next_power_of_two(),
                };
                self.copy_into(cap.clamp(64, MAX_SEQ_LEN.max(len)), &lens)
            }
        };
        copy.expect(want);
        copy
    }

    pub(crate) fn bytes(&self) -> usize {
        self.buf.len() * std::mem::size_of::<f32>()
    }
}

/// What the CPU path needs besides the `Linear`s: the norms' scales and the RoPE
/// tables as plain vectors. Built once, when the model qualifies.
#[derive(Debug)]
pub(crate) struct HostPlan {
    /// Per layer: attention and MLP norm scales.
    norms: Vec<[Vec<f32>; 2]>,
    /// Per layer: q, k and v biases (qwen2).
    biases: Vec<Option<[Vec<f32>; 3]>>,
    eps: f32,
    /// `(MAX_SEQ_LEN, head_dim / 2)`.
    cos: Vec<f32>,
    sin: Vec<f32>,
}

fn host_vec(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
}

impl HostPlan {
    /// `None` when some block needs what only candle's path does.
    pub(crate) fn build(m: &Llama) -> Result<Option<HostPlan>> {
        let half = m.cos.dim(1)?;
        let plain = m.device.is_cpu()
            && m.local_rope.is_none()
            && half * 2 == m.head_dim
            && m.arch.activation == crate::arch::Activation::Silu
            && m.layers.iter().all(|l| {
                let e = &l.extra;
                e.q_norm.is_none()
                    && e.k_norm.is_none()
                    && e.post_attn_norm.is_none()
                    && e.post_ffn_norm.is_none()
                    && !e.local_rope
                    && l.gate.out_features() == l.up.out_features()
                    && l.attn_norm.eps == m.norm.eps
                    && l.ffn_norm.eps == m.norm.eps
            });
        if !plain {
            return Ok(None);
        }
        let mut norms = Vec::with_capacity(m.layers.len());
        let mut biases = Vec::with_capacity(m.layers.len());
        for l in &m.layers {
            norms.push([
                host_vec(&l.attn_norm.weight)?,
                host_vec(&l.ffn_norm.weight)?,
            ]);
            biases.push(match &l.qkv_bias {
                Some([q, k, v]) => Some([host_vec(q)?, host_vec(k)?, host_vec(v)?]),
                None => None,
            });
        }
        Ok(Some(HostPlan {
            norms,
            biases,
            eps: m.norm.eps,
            cos: host_vec(&m.cos)?,
            sin: host_vec(&m.sin)?,
        }))
    }
}

/// `x` rows of `scale.len()` values, RMS-normalised and scaled, into `out`.
fn rms_norm(x: &[f32], scale: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.clear();
    let dim = scale.len();
    for row in x.chunks_exact(dim) {
        let sum2: f32 = row.iter().map(|v| v * v).sum();
        let m = (sum2 / dim as f32 + eps).sqrt();
        out.extend(row.iter().zip(scale).map(|(v, s)| v / m * s));
    }
}

impl HostPlan {
    /// Rotate each row's `heads` vectors in place, row `j` at `at[j].1`.
    fn rope(
        &self,
        layout: RopeLayout,
        x: &mut [f32],
        heads: usize,
        dim: usize,
        at: &[(usize, usize)],
    ) {
        let half = dim / 2;
        for (row, &(_, pos)) in x.chunks_exact_mut(heads * dim).zip(at) {
            let (cos, sin) = (
                &self.cos[pos * half..][..half],
                &self.sin[pos * half..][..half],
            );
            for head in row.chunks_exact_mut(dim) {
                match layout {
                    RopeLayout::Interleaved => {
                        for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                            let (a, b) = (pair[0], pair[1]);
                            pair[0] = a * cos[i] - b * sin[i];
                            pair[1] = a * sin[i] + b * cos[i];
                        }
                    }
                    RopeLayout::Halves => {
                        let (lo, hi) = head.split_at_mut(half);
                        for (((l, h), &c), &s) in lo.iter_mut().zip(hi).zip(cos).zip(sin) {
                            let (a, b) = (*l, *h);
                            *l = a * c - b * s;
                            *h = a * s + b * c;
                        }
                    }
                }
            }
        }
    }
}

/// The rows `tokens` (row j of sequence `caches[at[j].0]`, at position `at[j].1`)
/// through every layer, their keys and values appended to the caches; returns
/// the hidden rows before the final norm, `(rows, hidden)`. The caches' `len`
/// is the caller's to advance.
pub(crate) fn forward(
    m: &Llama,
    plan: &HostPlan,
    tokens: &[u32],
    caches: &mut [&mut KvCache],
    at: &[(usize, usize)],
) -> Result<Vec<f32>> {
    let rows = tokens.len();
    let hidden = m.embed.hidden_size();
    let (nh, nkv, hd) = (m.n_head, m.n_kv_head, m.head_dim);
    let mut x = m.embed.rows(tokens)?;
    let mut h = Vec::with_capacity(x.len());
    for (li, layer) in m.layers.iter().enumerate() {
        let [attn_norm, ffn_norm] = &plan.norms[li];
        rms_norm(&x, attn_norm, plan.eps, &mut h);
        let [mut q, mut k, mut v] = three(Linear::forward_host(
            &[&layer.wq, &layer.wk, &layer.wv],
            &h,
            rows,
        )?)?;
        if let Some([bq, bk, bv]) = &plan.biases[li] {
            for (t, b) in [(&mut q, bq), (&mut k, bk), (&mut v, bv)] {
                for row in t.chunks_exact_mut(b.len()) {
                    row.iter_mut().zip(b).for_each(|(x, b)| *x += b);
                }
            }
        }
        plan.rope(m.rope, &mut q, nh, hd, at);
        plan.rope(m.rope, &mut k, nkv, hd, at);
        for (j, &(s, pos)) in at.iter().enumerate() {
            let span = j * nkv * hd..(j + 1) * nkv * hd;
            let Some(c) = caches.get_mut(s) else {
                candle_core::bail!("no host kv cache for sequence {s}");
            };
            c.host
                .write(li, pos, (nkv, hd, hd), &k[span.clone()], &v[span])?;
        }
        let mut att = vec![0f32; q.len()];
        {
            let kvs: Vec<Kv<'_>> = caches.iter().map(|c| c.host.view(li)).collect();
            let shape = m.attn_shape(layer.extra.window);
            attention::attend(&shape, &q, QLayout::RowsFirst, at, &kvs, &mut att)
                .map_err(|e| candle_core::Error::Msg(e.0))?;
        }
        let [o] = one(Linear::forward_host(&[&layer.wo], &att, rows)?)?;
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        rms_norm(&x, ffn_norm, plan.eps, &mut h);
        let [g, mut u] = two(Linear::forward_host(&[&layer.gate, &layer.up], &h, rows)?)?;
        crate::kernels::vexp::silu_mul(&mut u, &g);
        let [d] = one(Linear::forward_host(&[&layer.down], &u, rows)?)?;
        x.iter_mut().zip(&d).for_each(|(x, d)| *x += d);
    }
    debug_assert_eq!(x.len(), rows * hidden);
    Ok(x)
}

fn one(v: Vec<Vec<f32>>) -> Result<[Vec<f32>; 1]> {
    v.try_into()
        .map_err(|_| candle_core::Error::Msg("matmul lost an output".into()))
}

fn two(v: Vec<Vec<f32>>) -> Result<[Vec<f32>; 2]> {
    v.try_into()
        .map_err(|_| candle_core::Error::Msg("matmul lost an output".into()))
}

fn three(v: Vec<Vec<f32>>) -> Result<[Vec<f32>; 3]> {
    v.try_into()
        .map_err(|_| candle_core::Error::Msg("matmul lost an output".into()))
}

/// Shared so the plan is built once per loaded model, not per clone.
pub(crate) type SharedPlan = Arc<std::sync::OnceLock<Option<Arc<HostPlan>>>>;
