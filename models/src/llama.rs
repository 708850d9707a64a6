//! A llama-family transformer over quantized weights, with per-sequence KV caches
//! so the decode steps of many sequences run as one batch. Built from a GGUF file
//! here, or from a Hugging Face safetensors checkpoint by `hf`.
//!
//! The math follows candle-transformers' `quantized_llama` (same weights, same
//! RoPE convention, same norms); what differs is the shape of the work. Each
//! decode step stacks one token from every active sequence into a `(B, hidden)`
//! matrix, so every weight matrix is read once per step for all B sequences (CPU
//! decode is memory-bandwidth bound: this is where batching pays). Attention is
//! computed per sequence against that sequence's own cache. The quantized matmul
//! treats rows independently, so a sequence's logits do not depend on what else
//! is in the batch, and greedy output is the same alone or beside others.

use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, IndexOp, Result, Tensor};

use crate::linear::Linear;

#[path = "llama_host.rs"]
mod host;
use host::{HostKv, HostPlan};
#[path = "llama_embed.rs"]
mod embed;
pub(crate) use embed::TokenEmbedding;

/// Positions the RoPE tables cover.
pub const MAX_SEQ_LEN: usize = 4096;

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Dimensions (2i, 2i+1) rotate together: llama GGUF files, whose converter
    /// permuted the rows of the q and k weights into this order.
    Interleaved,
    /// Dimensions (i, i + head_dim/2) rotate together (`rotate_half`): Hugging Face
    /// checkpoints, and GGUF files of qwen2-like architectures.
    Halves,
}

/// The shape of the network, wherever its weights come from.
#[derive(Debug, Clone)]
pub struct LlamaShape {
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    /// Dimensions of each head that RoPE rotates (the head dimension, for llama).
    pub rope_dim: usize,
    pub rope_theta: f32,
    pub rope: RopeLayout,
    /// Long-context frequency scaling of the (global) RoPE tables (`arch::rope`).
    pub rope_scaling: Option<crate::arch::RopeScaling>,
}

/// RMS normalisation with a learned scale.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn new(weight: Tensor, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            weight: weight.to_dtype(DType::F32)?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, self.eps)
    }
}

/// One transformer block's weights. The q/k/v biases are qwen2's; llama has none.
#[derive(Debug, Clone)]
pub(crate) struct Layer {
    pub(crate) wq: Linear,
    pub(crate) wk: Linear,
    pub(crate) wv: Linear,
    pub(crate) qkv_bias: Option<[Tensor; 3]>,
    pub(crate) wo: Linear,
    pub(crate) attn_norm: RmsNorm,
    pub(crate) ffn_norm: RmsNorm,
    pub(crate) gate: Linear,
    pub(crate) down: Linear,
    pub(crate) up: Linear,
    /// What other families add to the block (see `arch`).
    pub(crate) extra: crate::arch::LayerExtra,
}

#[derive(Debug, Clone)]
pub struct Llama {
    embed: TokenEmbedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    output: Linear,
    cos: Tensor,
    sin: Tensor,
    n_head: usize,
    n_kv_head: usize,
    head_dim: usize,
    rope: RopeLayout,
    device: Device,
    /// The family's options (`arch`); llama's change nothing.
    arch: crate::arch::Arch,
    /// RoPE tables of the layers with `extra.local_rope` (gemma3's local layers).
    local_rope: Option<(Tensor, Tensor)>,
    /// The CPU path's plan (`host`), built on first use; `None` inside when the
    /// model needs candle's ops.
    host_plan: host::SharedPlan,
}

/// One layer's keys and values for one sequence: buffers of `(kv_heads, capacity,
/// head_dim)` of which the first `len` positions are filled. New positions are
/// written in place; a full buffer is replaced by one twice its size, so appending a
/// token costs O(1) amortised instead of copying the whole cache every step.
#[derive(Debug)]
struct LayerCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl LayerCache {
    fn capacity(&self) -> usize {
        self.k.dim(1).unwrap_or(0)
    }

    /// Appends `(kv_heads, rows, head_dim)` keys and values; returns views of the
    /// filled part.
    fn append(slot: &mut Option<LayerCache>, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let rows = k.dim(1)?;
        let len = slot.as_ref().map(|c| c.len).unwrap_or(0);
        let need = len + rows;
        if slot.as_ref().is_none_or(|c| c.capacity() < need) {
            let cap = need.next_power_of_two().clamp(64, MAX_SEQ_LEN.max(need));
            let (heads, _, dim) = k.dims3()?;
            let nk = Tensor::zeros((heads, cap, dim), k.dtype(), k.device())?;
            let nv = Tensor::zeros((heads, cap, dim), v.dtype(), v.device())?;
            if let Some(old) = slot.as_ref()
                && old.len > 0
            {
                nk.slice_set(&old.k.narrow(1, 0, old.len)?.contiguous()?, 1, 0)?;
                nv.slice_set(&old.v.narrow(1, 0, old.len)?.contiguous()?, 1, 0)?;
            }
            *slot = Some(LayerCache { k: nk, v: nv, len });
        }
        let Some(c) = slot.as_mut() else {
            candle_core::bail!("kv cache slot vanished")
        };
        c.k.slice_set(&k.contiguous()?, 1, len)?;
        c.v.slice_set(&v.contiguous()?, 1, len)?;
        c.len = need;
        Ok((c.k.narrow(1, 0, need)?, c.v.narrow(1, 0, need)?))
    }

    /// A copy that shares no storage (the buffers are written in place).
    fn deep_copy(&self) -> Result<LayerCache> {
        Ok(LayerCache {
            k: self.k.copy()?,
            v: self.v.copy()?,
            len: self.len,
        })
    }
}

/// One sequence's share of [`Llama::prefill_many`].
#[derive(Debug)]
pub struct PrefillPart<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// Whether the logits after `tokens` are wanted (the prompt's last chunk).
    pub logits: bool,
}

/// One sequence's attention state: keys and values per layer.
#[derive(Debug)]
pub struct KvCache {
    /// candle tensors (a GPU's); empty slots on the CPU.
    layers: Vec<Option<LayerCache>>,
    /// Plain buffers of every layer on the CPU (no layers elsewhere).
    host: HostKv,
    len: usize,
}

impl KvCache {
    /// A deep copy (the choices of one prompt share its prefill, then diverge).
    pub fn try_clone(&self) -> Result<KvCache> {
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(LayerCache::deep_copy).transpose())
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            host: self.host.clone(),
            len: self.len,
        })
    }
}

impl KvCache {
    /// Tokens already in the cache (the position of the next one).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl KvCache {
    /// Make room for `positions` at once when the cache is first written or
    /// next grows (the prompt and the tokens a request may add), instead of
    /// doubling up to it; beyond it the cache still grows by doubling.
    pub fn expect(&mut self, positions: usize) {
        self.host.expect(positions);
    }

    /// A copy of the first `len` positions that shares no storage with `self`
    /// (the prefix cache hands these out; each sequence writes its own buffers),
    /// with room for `want` positions ([`KvCache::expect`]).
    pub fn prefix_copy(&self, len: usize, want: usize) -> Result<KvCache> {
        if len > self.len {
            candle_core::bail!("prefix of {len} tokens from a cache of {}", self.len);
        }
        let mut layers = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let copy = match layer {
                Some(l) if len > 0 => {
                    let cap = want
                        .max(len + 1)
                        .next_power_of_two()
                        .clamp(64, MAX_SEQ_LEN.max(len));
                    let (heads, _, dim) = l.k.dims3()?;
                    let k = Tensor::zeros((heads, cap, dim), l.k.dtype(), l.k.device())?;
                    let v = Tensor::zeros((heads, cap, dim), l.v.dtype(), l.v.device())?;
                    k.slice_set(&l.k.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                    v.slice_set(&l.v.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
                    Some(LayerCache { k, v, len })
                }
                _ => None,
            };
            layers.push(copy);
        }
        let host = self.host.prefix(len, want);
        Ok(KvCache { layers, host, len })
    }

    /// Bytes of the key and value buffers (their capacity, not only the filled part).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|l| (l.k.elem_count() + l.v.elem_count()) * l.k.dtype().size_in_bytes())
            .sum::<usize>()
            + self.host.bytes()
    }
}

impl Llama {
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        ct: &Content,
        reader: &mut R,
        device: &Device,
    ) -> Result<Self> {
        let md = |key: &str| {
            ct.metadata
                .get(key)
                .ok_or_else(|| candle_core::Error::Msg(format!("GGUF metadata has no `{key}`")))
        };
        let n_head = md("llama.attention.head_count")?.to_u32()? as usize;
        let n_kv_head = md("llama.attention.head_count_kv")?.to_u32()? as usize;
        let block_count = md("llama.block_count")?.to_u32()? as usize;
        let hidden = md("llama.embedding_length")?.to_u32()? as usize;
        let rope_dim = md("llama.rope.dimension_count")?.to_u32()? as usize;
        let eps = f64::from(md("llama.attention.layer_norm_rms_epsilon")?.to_f32()?);
        let freq_base = md("llama.rope.freq_base")
            .and_then(|v| v.to_f32())
            .unwrap_or(10_000.0);
        if md("llama.expert_count")
            .and_then(|v| v.to_u32())
            .unwrap_or(0)
            > 1
        {
            candle_core::bail!("mixture-of-experts llama models are not supported yet");
        }
        let arch = md("general.architecture")?.to_string()?.clone();
        let rope = match arch.as_str() {
            "qwen2" | "qwen3" | "phi3" | "stablelm" => RopeLayout::Halves,
            _ => RopeLayout::Interleaved,
        };
        let shape = LlamaShape {
            n_head,
            n_kv_head,
            head_dim: hidden / n_head,
            rope_dim,
            rope_theta: freq_base,
            rope,
            rope_scaling: crate::arch::gguf::rope_scaling(ct, reader, "llama", device)?,
        };

        let mut get = |name: &str| ct.tensor(reader, name, device);
        let embed_q = std::sync::Arc::new(get("token_embd.weight")?);
        let norm = RmsNorm::new(get("output_norm.weight")?.dequantize(device)?, eps)?;
        // A tied output projection and the table share one copy of the blocks.
        let (output, shared) = match get("output.weight") {
            Ok(t) => (Linear::from_qtensor(t)?, None),
            Err(_) => {
                let out = Linear::from_arc(embed_q.clone())?;
                let shared = out.cpu_weight();
                (out, shared)
            }
        };
        let embed = TokenEmbedding::from_qtensor(&embed_q, shared, device)?;
        drop(embed_q);
        let mm = |t: QTensor| Linear::from_qtensor(t);
        let mut layers = Vec::with_capacity(block_count);
        for i in 0..block_count {
            let mut layer = |suffix: &str| get(&format!("blk.{i}.{suffix}"));
            let attn_norm = RmsNorm::new(layer("attn_norm.weight")?.dequantize(device)?, eps)?;
            let ffn_norm = RmsNorm::new(layer("ffn_norm.weight")?.dequantize(device)?, eps)?;
            layers.push(Layer {
                attn_norm,
                ffn_norm,
                wq: mm(layer("attn_q.weight")?)?,
                wk: mm(layer("attn_k.weight")?)?,
                wv: mm(layer("attn_v.weight")?)?,
                qkv_bias: None,
                wo: mm(layer("attn_output.weight")?)?,
                gate: mm(layer("ffn_gate.weight")?)?,
                down: mm(layer("ffn_down.weight")?)?,
                up: mm(layer("ffn_up.weight")?)?,
                extra: Default::default(),
            });
        }
        Self::from_parts(&shape, embed, layers, norm, output, device)
    }

    /// Assemble a model from loaded weights: `embed` is `(vocab, hidden)` (a
    /// dense tensor, or a [`TokenEmbedding`]).
    pub(crate) fn from_parts(
        shape: &LlamaShape,
        embed: impl EmbedTable,
        layers: Vec<Layer>,
        norm: RmsNorm,
        output: Linear,
        device: &Device,
    ) -> Result<Self> {
        if shape.n_kv_head == 0 || !shape.n_head.is_multiple_of(shape.n_kv_head) {
            let (q, kv) = (shape.n_head, shape.n_kv_head);
            candle_core::bail!("{q} attention heads do not share {kv} key/value heads evenly");
        }
        let embed = embed.into_table()?;
        let inv_freq = crate::arch::rope::inv_freqs(
            shape.rope_dim,
            shape.rope_theta,
            shape.rope_scaling.as_ref(),
        )
        .map_err(candle_core::Error::Msg)?;
        let (mut cos, mut sin) = rope_tables_from(inv_freq, device)?;
        if let Some(a) = shape
            .rope_scaling
            .as_ref()
            .and_then(|s| s.attention_factor())
        {
            (cos, sin) = ((cos * f64::from(a))?, (sin * f64::from(a))?);
        }
        Ok(Llama {
            embed,
            layers,
            norm,
            output,
            cos,
            sin,
            n_head: shape.n_head,
            n_kv_head: shape.n_kv_head,
            head_dim: shape.head_dim,
            rope: shape.rope,
            device: device.clone(),
            arch: crate::arch::Arch::llama(),
            local_rope: None,
            host_plan: Default::default(),
        })
    }

    /// Apply a family's options: scale the embedding table, mark each layer's
    /// window and RoPE tables, build the local tables.
    pub(crate) fn with_arch(mut self, arch: crate::arch::Arch) -> Result<Self> {
        if let Some(scale) = arch.embed_scale {
            self.embed = self.embed.scaled(scale)?;
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.extra.window = arch.layer_window(i);
            layer.extra.local_rope = arch.layer_local_rope(i);
        }
        if let Some(theta) = arch.local_rope_theta {
            let dim = self.cos.dim(1)? * 2;
            self.local_rope = Some(rope_tables(dim, theta, &self.device)?);
        }
        self.arch = arch;
        self.host_plan = Default::default();
        Ok(self)
    }

    /// The family's options.
    pub fn arch(&self) -> &crate::arch::Arch {
        &self.arch
    }

    /// The prefill mask of windowed layers, when the model has any.
    fn window_mask(&self, rows: usize, start: usize) -> Result<Option<Tensor>> {
        match self.arch.window {
            Some(w) => crate::arch::window_mask(rows, start, w, &self.device),
            None => Ok(None),
        }
    }

    pub fn new_cache(&self) -> KvCache {
        let host = match self.device.is_cpu() {
            true => HostKv::new(self.layers.len()),
            false => HostKv::default(),
        };
        KvCache {
            layers: (0..self.layers.len()).map(|_| None).collect(),
            host,
            len: 0,
        }
    }

    /// The CPU path's plan when this model runs on it.
    fn host_plan(&self) -> Option<std::sync::Arc<HostPlan>> {
        self.host_plan
            .get_or_init(|| match HostPlan::build(self) {
                Ok(p) => p.map(std::sync::Arc::new),
                Err(e) => {
                    tracing::warn!(error = %e, "the CPU path is off for this model");
                    None
                }
            })
            .clone()
    }

    /// The attention shape of a layer with `window`.
    fn attn_shape(&self, window: Option<usize>) -> crate::kernels::attention::AttnShape {
        let scalar = self
            .arch
            .query_pre_attn_scalar
            .unwrap_or(self.head_dim as f64);
        crate::kernels::attention::AttnShape {
            n_head: self.n_head,
            n_kv_head: self.n_kv_head,
            head_dim: self.head_dim,
            scale: (1.0 / scalar.sqrt()) as f32,
            softcap: self.arch.attn_softcap.map(|c| c as f32),
            window,
        }
    }

    /// Run `tokens` of one sequence (a prompt, in one pass); returns the logits
    /// after the last one, `(vocab,)`.
    pub fn prefill(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let x = self.run_prompt(tokens, cache)?;
        let last = x.i(tokens.len() - 1..tokens.len())?;
        self.arch
            .logits(self.output.forward(&self.norm.forward(&last)?)?)?
            .squeeze(0)
    }

    /// Several sequences' next prompt tokens in one pass (each part's tokens
    /// appended to its cache): every weight is read once for all of them, and
    /// the logits after a part's last token come back where `logits` is set
    /// (`None` elsewhere: a chunk of a longer prompt needs none). Each row is
    /// computed on its own, so a part gets the bits [`Llama::prefill`] gives it
    /// alone. One result per part: without the host plan (a GPU, candle's
    /// path), or when the joint pass fails (no cache has moved then), the parts
    /// run one after another and only a part at fault gets an error.
    pub fn prefill_many(&self, parts: &mut [PrefillPart<'_>]) -> Vec<Result<Option<Tensor>>> {
        if parts.len() > 1
            && let Some(plan) = self.host_plan()
        {
            match self.prefill_joint(&plan, parts) {
                Ok(logits) => return logits.into_iter().map(Ok).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "a joint prefill failed; its prompts run alone")
                }
            }
        }
        parts
            .iter_mut()
            .map(|p| match p.logits {
                true => self.prefill(p.tokens, p.cache).map(Some),
                false => self.run_prompt(p.tokens, p.cache).map(|_| None),
            })
            .collect()
    }

    /// [`Llama::prefill_many`]'s one pass on the host plan. The caches' lengths
    /// move only once everything succeeded: keys and values written before a
    /// failure sit past each cache's length, where a retry writes them again.
    fn prefill_joint(
        &self,
        plan: &HostPlan,
        parts: &mut [PrefillPart<'_>],
    ) -> Result<Vec<Option<Tensor>>> {
        let mut tokens = Vec::new();
        let mut at = Vec::new();
        for (s, p) in parts.iter().enumerate() {
            let start = p.cache.len;
            if p.tokens.is_empty() {
                candle_core::bail!("empty prompt");
            }
            if start + p.tokens.len() > MAX_SEQ_LEN {
                candle_core::bail!(
                    "sequence of {} tokens exceeds {MAX_SEQ_LEN}",
                    start + p.tokens.len()
                );
            }
            tokens.extend_from_slice(p.tokens);
            at.extend((start..start + p.tokens.len()).map(|pos| (s, pos)));
        }
        let mut caches: Vec<&mut KvCache> = parts.iter_mut().map(|p| &mut *p.cache).collect();
        let x = host::forward(self, plan, &tokens, &mut caches, &at)?;
        let hidden = self.embed.hidden_size();
        let mut last = Vec::new();
        let mut end = 0;
        for p in parts.iter() {
            end += p.tokens.len();
            if p.logits {
                last.extend_from_slice(&x[(end - 1) * hidden..end * hidden]);
            }
        }
        let mut logits = match last.len() / hidden {
            0 => Vec::new(),
            n => {
                let last = Tensor::from_vec(last, (n, hidden), &self.device)?;
                let l = self
                    .arch
                    .logits(self.output.forward(&self.norm.forward(&last)?)?)?;
                (0..n).map(|i| l.get(i)).collect::<Result<Vec<_>>>()?
            }
        }
        .into_iter();
        for p in parts.iter_mut() {
            p.cache.len += p.tokens.len();
        }
        Ok(parts
            .iter()
            .map(|p| p.logits.then(|| logits.next()).flatten())
            .collect())
    }

    /// Run `tokens` of one sequence like [`Llama::prefill`], but return the
    /// final-norm hidden state of every position, `(t, hidden)`, so a prompt can
    /// be scored token by token (project rows with [`Llama::project`] a few at a
    /// time to bound memory).
    pub fn prefill_hidden(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let x = self.run_prompt(tokens, cache)?;
        self.norm.forward(&x)
    }

    /// The transformer over one sequence's new tokens, appended to its cache:
    /// the hidden states before the final norm, `(t, hidden)`. Never empty.
    fn run_prompt(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Tensor> {
        let t = tokens.len();
        if t == 0 {
            candle_core::bail!("empty prompt");
        }
        let start = cache.len;
        if start + t > MAX_SEQ_LEN {
            candle_core::bail!("sequence of {} tokens exceeds {MAX_SEQ_LEN}", start + t);
        }
        if let Some(plan) = self.host_plan() {
            let at: Vec<(usize, usize)> = (start..start + t).map(|p| (0, p)).collect();
            let x = host::forward(self, &plan, tokens, &mut [cache], &at)?;
            cache.len += t;
            return Tensor::from_vec(x, (t, self.embed.hidden_size()), &self.device);
        }
        let positions: Vec<u32> = (start..start + t).map(|p| p as u32).collect();
        let mask = (t > 1)
            .then(|| causal_mask(t, start, &self.device))
            .transpose()?;
        let window_mask = self.window_mask(t, start)?;
        let mut x = self.embed.forward(tokens)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            let (q, k, v) = self.qkv(layer, &h, &positions)?;
            let (m, w) = match layer.extra.window {
                Some(w) => (window_mask.as_ref(), Some(w)),
                None => (mask.as_ref(), None),
            };
            let att = self.attend(cache, li, &q, &k, &v, m, w)?;
            x = (x + layer.extra.post_attn(layer.wo.forward(&att)?)?)?;
            x = (&x + self.mlp(layer, &x)?)?;
        }
        cache.len += t;
        Ok(x)
    }

    /// Logits of final-norm hidden rows (`(rows, hidden)` to `(rows, vocab)`).
    pub fn project(&self, hidden: &Tensor) -> Result<Tensor> {
        self.arch.logits(self.output.forward(hidden)?)
    }

    /// One token for each sequence, all in one batch; returns `(B, vocab)` logits.
    pub fn decode(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let b = tokens.len();
        if b != caches.len() || b == 0 {
            candle_core::bail!(
                "decode needs one cache per token ({b} tokens, {} caches)",
                caches.len()
            );
        }
        if let Some(c) = caches.iter().find(|c| c.len + 1 > MAX_SEQ_LEN) {
            candle_core::bail!("sequence of {} tokens exceeds {MAX_SEQ_LEN}", c.len + 1);
        }
        if let Some(plan) = self.host_plan() {
            let at: Vec<(usize, usize)> =
                caches.iter().enumerate().map(|(i, c)| (i, c.len)).collect();
            let x = host::forward(self, &plan, tokens, caches, &at)?;
            for c in caches.iter_mut() {
                c.len += 1;
            }
            let x = Tensor::from_vec(x, (b, self.embed.hidden_size()), &self.device)?;
            return self
                .arch
                .logits(self.output.forward(&self.norm.forward(&x)?)?);
        }
        let positions: Vec<u32> = caches.iter().map(|c| c.len as u32).collect();
        let mut x = self.embed.forward(tokens)?;
        for (li, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&x)?;
            // (n_head, B, head_dim): row i of the batch is sequence i's query.
            let (q, k, v) = self.qkv(layer, &h, &positions)?;
            let att = if b == 1 {
                let w = layer.extra.window;
                self.attend(caches[0], li, &q, &k, &v, None, w)?
            } else {
                self.attend_batch(caches, li, &q, &k, &v, layer.extra.window)?
            };
            x = (x + layer.extra.post_attn(layer.wo.forward(&att)?)?)?;
            x = (&x + self.mlp(layer, &x)?)?;
        }
        for c in caches.iter_mut() {
            c.len += 1;
        }
        self.arch
            .logits(self.output.forward(&self.norm.forward(&x)?)?)
    }

    /// Project `h` (rows = tokens) to rotated queries and keys and values, each
    /// `(heads, rows, head_dim)`; row r sits at `positions[r]`.
    fn qkv(
        &self,
        layer: &Layer,
        h: &Tensor,
        positions: &[u32],
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let rows = positions.len();
        let pos = Tensor::new(positions, &self.device)?;
        let (cos, sin) = match (&self.local_rope, layer.extra.local_rope) {
            (Some((cos, sin)), true) => (cos, sin),
            _ => (&self.cos, &self.sin),
        };
        let cos = cos.index_select(&pos, 0)?;
        let sin = sin.index_select(&pos, 0)?;
        let heads = |t: Tensor, n: usize| -> Result<Tensor> {
            t.reshape((rows, n, self.head_dim))?
                .transpose(0, 1)?
                .contiguous()
        };
        let turn = |t: &Tensor| match self.rope {
            RopeLayout::Halves => candle_nn::rotary_emb::rope(t, &cos, &sin),
            RopeLayout::Interleaved => candle_nn::rotary_emb::rope_i(t, &cos, &sin),
        };
        let rotate = |t: Tensor| -> Result<Tensor> {
            // Partial rotary: only the first cos.dim(1) * 2 dimensions turn.
            crate::arch::rotate_partial(t.unsqueeze(0)?, cos.dim(1)? * 2, turn)?.squeeze(0)
        };
        // One activation quantisation and one parallel region for all three.
        let [q, k, v]: [Tensor; 3] = Linear::forward_many(&[&layer.wq, &layer.wk, &layer.wv], h)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("q/k/v matmul lost an output".into()))?;
        let (mut q, mut k, mut v) = (q, k, v);
        if let Some([bq, bk, bv]) = &layer.qkv_bias {
            q = q.broadcast_add(bq)?;
            k = k.broadcast_add(bk)?;
            v = v.broadcast_add(bv)?;
        }
        let q = rotate(layer.extra.norm_q(heads(q, self.n_head)?)?)?;
        let k = rotate(layer.extra.norm_k(heads(k, self.n_kv_head)?)?)?;
        let v = heads(v, self.n_kv_head)?;
        Ok((q, k, v))
    }

    /// Attention of one sequence's new rows against its cache (which it extends);
    /// returns `(rows, n_head * head_dim)`.
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        cache: &mut KvCache,
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let rows = q.dim(1)?;
        if host_attention(q) && !cache.host.is_empty() {
            let at: Vec<(usize, usize)> = (cache.len..cache.len + rows).map(|p| (0, p)).collect();
            return self.attend_host(&mut [cache], li, q, k, v, &at, window);
        }
        // (n_kv, len, head_dim) views of the cache, this step's rows included.
        let (k, v) = LayerCache::append(&mut cache.layers[li], k, v)?;
        // A windowed layer reads only the keys some row's window reaches.
        let (k, v, mask) = crate::arch::clip_window(k, v, mask, rows, window)?;
        // Grouped-query attention without copying the cache: the `rep` query heads
        // that share a key/value head become extra rows of one matmul against it.
        let rep = self.n_head / self.n_kv_head;
        let len = k.dim(1)?;
        let q = q.reshape((self.n_kv_head, rep * rows, self.head_dim))?;
        let scores = self.arch.scores(q.matmul(&k.t()?)?, self.head_dim)?;
        let scores = scores.reshape((self.n_head, rows, len))?;
        let scores = match &mask {
            None => scores,
            Some(m) => scores.broadcast_add(m)?,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let probs = probs.reshape((self.n_kv_head, rep * rows, len))?;
        let out = probs
            .matmul(&v)?
            .reshape((self.n_head, rows, self.head_dim))?;
        out.transpose(0, 1)?
            .reshape((rows, self.n_head * self.head_dim))
    }

    /// Decode-step attention for several sequences in one set of ops: each
    /// sequence's cache is viewed (or zero-padded) to the longest length, keys and
    /// values are stacked to `(B, kv_heads, len, head_dim)`, and a mask hides the
    /// positions past each sequence's own length. Per-sequence attention would cost
    /// a dozen small ops per sequence per layer, which dominated batched decode.
    fn attend_batch(
        &self,
        caches: &mut [&mut KvCache],
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        window: Option<usize>,
    ) -> Result<Tensor> {
        let b = q.dim(1)?;
        if host_attention(q) && caches.iter().all(|c| !c.host.is_empty()) {
            let at: Vec<(usize, usize)> =
                caches.iter().enumerate().map(|(i, c)| (i, c.len)).collect();
            return self.attend_host(caches, li, q, k, v, &at, window);
        }
        let mut lens = Vec::with_capacity(b);
        for (i, cache) in caches.iter_mut().enumerate() {
            let (ki, _) = LayerCache::append(
                &mut cache.layers[li],
                &k.narrow(1, i, 1)?,
                &v.narrow(1, i, 1)?,
            )?;
            lens.push(ki.dim(1)?);
        }
        // A windowed layer reads only each sequence's last `window` keys.
        let firsts: Vec<usize> = lens
            .iter()
            .map(|&l| crate::arch::window_span(l, 1, window).0)
            .collect();
        let lens: Vec<usize> = lens.iter().zip(&firsts).map(|(l, f)| l - f).collect();
        let max = lens.iter().copied().max().unwrap_or(0);
        let mut ks = Vec::with_capacity(b);
        let mut vs = Vec::with_capacity(b);
        for ((cache, &len), &first) in caches.iter().zip(&lens).zip(&firsts) {
            let Some(c) = cache.layers[li].as_ref() else {
                candle_core::bail!("kv cache slot vanished")
            };
            // Positions past `len` in the buffer are zeros (never written) and masked.
            if c.capacity() >= first + max {
                ks.push(c.k.narrow(1, first, max)?);
                vs.push(c.v.narrow(1, first, max)?);
            } else {
                ks.push(c.k.narrow(1, first, len)?.pad_with_zeros(1, 0, max - len)?);
                vs.push(c.v.narrow(1, first, len)?.pad_with_zeros(1, 0, max - len)?);
            }
        }
        let k = Tensor::stack(&ks, 0)?; // (B, n_kv, max, head_dim)
        let v = Tensor::stack(&vs, 0)?;
        let rep = self.n_head / self.n_kv_head;
        let q =
            q.transpose(0, 1)?
                .contiguous()?
                .reshape((b, self.n_kv_head, rep, self.head_dim))?;
        let scores = self.arch.scores(q.matmul(&k.t()?)?, self.head_dim)?; // (B, n_kv, rep, max)
        let scores = if lens.iter().all(|&l| l == max) {
            scores
        } else {
            let mask: Vec<f32> = lens
                .iter()
                .flat_map(|&l| (0..max).map(move |c| if c < l { 0.0 } else { f32::NEG_INFINITY }))
                .collect();
            scores.broadcast_add(&Tensor::from_vec(mask, (b, 1, 1, max), &self.device)?)?
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs.matmul(&v)?.reshape((b, self.n_head * self.head_dim))
    }

    /// Attention on the CPU (`kernels::attention`) for candle's path: `q`, `k`
    /// and `v` are `(heads, R, head_dim)`; row j belongs to `caches[at[j].0]` at
    /// position `at[j].1`. Appends the keys and values to the host buffers.
    #[allow(clippy::too_many_arguments)]
    fn attend_host(
        &self,
        caches: &mut [&mut KvCache],
        li: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        at: &[(usize, usize)],
        window: Option<usize>,
    ) -> Result<Tensor> {
        use crate::kernels::attention::{self, Kv, QLayout};
        let host = |t: &Tensor| -> Result<Vec<f32>> { t.contiguous()?.flatten_all()?.to_vec1() };
        let (qv, kv, vv) = (host(q)?, host(k)?, host(v)?);
        let (rows, hd) = (at.len(), self.head_dim);
        for (j, &(s, pos)) in at.iter().enumerate() {
            let Some(c) = caches.get_mut(s) else {
                candle_core::bail!("no host kv cache for sequence {s}");
            };
            let from = j * hd..;
            c.host.write(
                li,
                pos,
                (self.n_kv_head, hd, rows * hd),
                &kv[from.clone()],
                &vv[from],
            )?;
        }
        let kvs: Vec<Kv<'_>> = caches.iter().map(|c| c.host.view(li)).collect();
        let mut out = vec![0f32; qv.len()];
        let shape = self.attn_shape(window);
        attention::attend(&shape, &qv, QLayout::HeadsFirst, at, &kvs, &mut out)
            .map_err(|e| candle_core::Error::Msg(e.0))?;
        Tensor::from_vec(out, (rows, self.n_head * hd), &self.device)
    }

    fn mlp(&self, layer: &Layer, x: &Tensor) -> Result<Tensor> {
        let h = layer.ffn_norm.forward(x)?;
        let gated = match self.arch.activation {
            // gate and up in one pass, SiLU and the product fused into it.
            crate::arch::Activation::Silu => Linear::forward_swiglu(&layer.gate, &layer.up, &h)?,
            _ => (self.arch.activation.apply(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?,
        };
        let out = layer.down.forward(&gated)?;
        layer.extra.post_ffn(out)
    }
}

/// Whether attention runs on `kernels::attention` (f32 on the CPU; else candle's ops).
fn host_attention(q: &Tensor) -> bool {
    q.device().is_cpu() && q.dtype() == DType::F32
}

/// The f32 values of a whole contiguous CPU buffer (a KV cache's).
fn host_f32<'a>(s: &'a candle_core::Storage, l: &candle_core::Layout) -> Result<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(c) if l.is_contiguous() && l.start_offset() == 0 => {
            c.as_slice::<f32>()
        }
        _ => candle_core::bail!("the kv cache is not a contiguous f32 CPU buffer"),
    }
}

/// `(rows, start + rows)` additive mask: 0 where row r may attend, -inf after it.
fn causal_mask(rows: usize, start: usize, device: &Device) -> Result<Tensor> {
    let cols = start + rows;
    let mask: Vec<f32> = (0..rows)
        .flat_map(|r| {
            (0..cols).map(move |c| {
                if c > start + r {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Tensor::from_vec(mask, (rows, cols), device)
}

fn rope_tables(dim: usize, base: f32, device: &Device) -> Result<(Tensor, Tensor)> {
    let theta = crate::arch::rope::inv_freqs(dim, base, None).map_err(candle_core::Error::Msg)?;
    rope_tables_from(theta, device)
}

/// cos and sin of `position * inv_freq` for every position and frequency.
fn rope_tables_from(theta: Vec<f32>, device: &Device) -> Result<(Tensor, Tensor)> {
    let theta = Tensor::new(theta.as_slice(), device)?;
    let idx = Tensor::arange(0, MAX_SEQ_LEN as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((MAX_SEQ_LEN, 1))?
        .matmul(&theta.reshape((1, ()))?)?;
    Ok((idx.cos()?, idx.sin()?))
}

/// What [`Llama::from_parts`] takes as the embedding table.
pub(crate) trait EmbedTable {
    fn into_table(self) -> Result<TokenEmbedding>;
}

impl EmbedTable for Tensor {
    fn into_table(self) -> Result<TokenEmbedding> {
        TokenEmbedding::dense(&self)
    }
}

impl EmbedTable for TokenEmbedding {
    fn into_table(self) -> Result<TokenEmbedding> {
        Ok(self)
    }
}
