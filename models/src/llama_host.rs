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

/// One layer's keys and values of one sequence on the CPU: `(heads, cap, dim)`
/// f32 buffers of which positions `..len` are filled. Grows by doubling.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostKv {
    k: Vec<f32>,
    v: Vec<f32>,
    heads: usize,
    dim: usize,
    cap: usize,
    len: usize,
}

impl HostKv {
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
        let cap = need.next_power_of_two().clamp(64, MAX_SEQ_LEN);
        *self = self.copy_into(cap, self.len, heads, dim);
        Ok(())
    }

    /// The first `len` positions in new buffers of `cap` positions.
    fn copy_into(&self, cap: usize, len: usize, heads: usize, dim: usize) -> HostKv {
        let mut k = vec![0f32; heads * cap * dim];
        let mut v = vec![0f32; heads * cap * dim];
        for h in 0..heads.min(self.heads) {
            let (from, to) = (h * self.cap * dim, h * cap * dim);
            k[to..to + len * dim].copy_from_slice(&self.k[from..from + len * dim]);
            v[to..to + len * dim].copy_from_slice(&self.v[from..from + len * dim]);
        }
        HostKv {
            k,
            v,
            heads,
            dim,
            cap,
            len,
        }
    }

    /// Store position `pos`: `k` and `v` hold its `heads` vectors of `dim`, one
    /// every `stride` values.
    pub(crate) fn write(
        &mut self,
        pos: usize,
        (heads, dim, stride): (usize, usize, usize),
        k: &[f32],
        v: &[f32],
    ) -> Result<()> {
        self.reserve(pos + 1, heads, dim)?;
        for h in 0..heads {
            let to = (h * self.cap + pos) * dim;
            let from = h * stride;
            let (Some(ks), Some(vs)) = (k.get(from..from + dim), v.get(from..from + dim)) else {
                candle_core::bail!("key/value row shorter than {heads} heads of {dim}");
            };
            self.k[to..to + dim].copy_from_slice(ks);
            self.v[to..to + dim].copy_from_slice(vs);
        }
        self.len = self.len.max(pos + 1);
        Ok(())
    }

    pub(crate) fn view(&self) -> Kv<'_> {
        Kv {
            k: &self.k,
            v: &self.v,
            cap: self.cap,
        }
    }

    /// A copy of the first `len` positions with room for more.
    pub(crate) fn prefix(&self, len: usize) -> HostKv {
        if len == 0 || self.cap == 0 {
            return HostKv::default();
        }
        let len = len.min(self.len);
        let cap = (len + 1)
            .next_power_of_two()
            .clamp(64, MAX_SEQ_LEN.max(len));
        self.copy_into(cap, len, self.heads, self.dim)
    }

    pub(crate) fn bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * std::mem::size_of::<f32>()
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
            let Some(slot) = caches.get_mut(s).and_then(|c| c.host.get_mut(li)) else {
                candle_core::bail!("no host kv cache for layer {li} of sequence {s}");
            };
            slot.write(pos, (nkv, hd, hd), &k[span.clone()], &v[span])?;
        }
        let mut att = vec![0f32; q.len()];
        {
            let kvs: Vec<Kv<'_>> = caches.iter().map(|c| c.host[li].view()).collect();
            let shape = m.attn_shape(layer.extra.window);
            attention::attend(&shape, &q, QLayout::RowsFirst, at, &kvs, &mut att)
                .map_err(|e| candle_core::Error::Msg(e.0))?;
        }
        let [o] = one(Linear::forward_host(&[&layer.wo], &att, rows)?)?;
        x.iter_mut().zip(&o).for_each(|(x, o)| *x += o);
        rms_norm(&x, ffn_norm, plan.eps, &mut h);
        let [g, mut u] = two(Linear::forward_host(&[&layer.gate, &layer.up], &h, rows)?)?;
        for (u, &g) in u.iter_mut().zip(&g) {
            *u *= g / (1.0 + (-g).exp());
        }
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
