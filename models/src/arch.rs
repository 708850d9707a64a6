//! The architectures the batched transformer in [`crate::llama`] runs, and what
//! each changes in its forward pass. Every family keeps llama's shape (token
//! embedding, pre-norm blocks of attention and a gated MLP, final norm, output
//! head) and the engine's batched decode and per-sequence KV caches; the
//! differences are options read from `config.json` or GGUF metadata:
//!
//! | family | `model_type` / GGUF | differences from llama |
//! |---|---|---|
//! | llama | `llama` / `llama` | none (Mistral GGUFs say `llama` too) |
//! | qwen2 | `qwen2` / `qwen2` | q, k and v biases |
//! | qwen3 | `qwen3` / `qwen3` | an RMSNorm on every head of q and k, before RoPE |
//! | mistral | `mistral` / (`llama`) | sliding-window attention on every layer |
//! | gemma2 | `gemma2` / `gemma2` | GeGLU (tanh GELU), embeddings times sqrt(hidden), norms that scale by 1 + w, a norm after attention and after the MLP, attention and final logit soft-capping, a window on even layers, query scale 1/sqrt(query_pre_attn_scalar) |
//! | gemma3 | `gemma3_text` / `gemma3` | gemma2's, plus q/k norms, windowed layers by `layer_types` (five local per global one), whose RoPE base is `rope_local_base_freq` |
//! | phi3 | `phi3` / `phi3` | fused qkv and gate_up projections (split into q, k, v and gate, up at load), a window on every layer |
//!
//! A sliding window of W means the query at position p attends the keys at
//! p - W + 1 ..= p (W keys, itself included), as Hugging Face's eager attention
//! and llama.cpp do. The KV cache keeps every position; a windowed layer reads only
//! its window of it, so prefix caching and chunked prefill see one cache layout.
//!
//! Every family may scale RoPE's frequencies for long contexts (`rope_scaling`:
//! llama3, linear, longrope; see [`rope`]) and turn only part of each head
//! (`partial_rotary_factor`, GGUF's `rope.dimension_count` below the head
//! dimension; see [`rotate_partial`]).

use candle_core::{Device, Result, Tensor};
use serde::Deserialize;

use crate::llama::RmsNorm;
pub use rope::RopeScaling;

pub mod gguf;
pub mod rope;
#[cfg(test)]
mod tests;

/// A model family the engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Llama,
    Qwen2,
    Qwen3,
    Mistral,
    Gemma2,
    Gemma3,
    Phi3,
}

/// `config.json`'s `model_type` values served, and their family.
pub const HF_MODEL_TYPES: &[(&str, Family)] = &[
    ("llama", Family::Llama),
    ("qwen2", Family::Qwen2),
    ("qwen3", Family::Qwen3),
    ("mistral", Family::Mistral),
    ("gemma2", Family::Gemma2),
    ("gemma3_text", Family::Gemma3),
    ("phi3", Family::Phi3),
];

/// GGUF `general.architecture` values served, and their family.
pub const GGUF_ARCHITECTURES: &[(&str, Family)] = &[
    ("llama", Family::Llama),
    ("qwen2", Family::Qwen2),
    ("qwen3", Family::Qwen3),
    ("gemma2", Family::Gemma2),
    ("gemma3", Family::Gemma3),
    ("phi3", Family::Phi3),
];

fn lookup(table: &[(&str, Family)], name: &str, what: &str) -> std::result::Result<Family, String> {
    match table.iter().find(|(n, _)| *n == name) {
        Some((_, family)) => Ok(*family),
        None => {
            let names: Vec<&str> = table.iter().map(|(n, _)| *n).collect();
            Err(format!(
                "{what} `{name}` is not supported (supported: {})",
                names.join(", ")
            ))
        }
    }
}

impl Family {
    /// The family of a `config.json` `model_type`; the error names it and the list.
    pub fn from_model_type(model_type: &str) -> std::result::Result<Family, String> {
        lookup(HF_MODEL_TYPES, model_type, "model_type")
    }

    /// The family of a GGUF `general.architecture`; the error names it and the list.
    pub fn from_gguf_architecture(arch: &str) -> std::result::Result<Family, String> {
        lookup(GGUF_ARCHITECTURES, arch, "GGUF architecture")
    }

    /// The family's name (`/v1/models` can list it): its Hugging Face `model_type`.
    pub fn name(self) -> &'static str {
        HF_MODEL_TYPES
            .iter()
            .find(|(_, f)| *f == self)
            .map_or("llama", |(n, _)| *n)
    }

    /// Gemma's norms scale by 1 + w (llama.cpp's converter stores w + 1).
    pub fn is_gemma(self) -> bool {
        matches!(self, Family::Gemma2 | Family::Gemma3)
    }

    /// Whether sliding-window attention applies (to some layers) when configured.
    fn has_window(self) -> bool {
        matches!(
            self,
            Family::Mistral | Family::Gemma2 | Family::Gemma3 | Family::Phi3
        )
    }
}

/// The MLP's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    Silu,
    /// GELU, tanh approximation (`gelu_pytorch_tanh`).
    GeluTanh,
    /// GELU, exact (`gelu`).
    Gelu,
}

impl Activation {
    fn parse(name: &str) -> Option<Activation> {
        match name {
            "silu" | "swish" => Some(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" => Some(Activation::GeluTanh),
            "gelu" => Some(Activation::Gelu),
            _ => None,
        }
    }

    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Silu => candle_nn::ops::silu(x),
            Activation::GeluTanh => x.gelu(),
            Activation::Gelu => x.gelu_erf(),
        }
    }
}

/// Model-wide options of the forward pass; [`Arch::llama`] changes nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    pub family: Family,
    pub activation: Activation,
    /// Embeddings are multiplied by this (gemma: sqrt(hidden)).
    pub embed_scale: Option<f64>,
    /// Attention scores are divided by sqrt(this) instead of sqrt(head_dim).
    pub query_pre_attn_scalar: Option<f64>,
    /// Attention scores become `c * tanh(s / c)` before the mask.
    pub attn_softcap: Option<f64>,
    /// Logits become `c * tanh(l / c)`.
    pub final_softcap: Option<f64>,
    /// The sliding window (keys per query) of the layers marked windowed.
    pub window: Option<usize>,
    /// Per layer: whether the window applies; empty means no layer.
    pub windowed: Vec<bool>,
    /// RoPE base of the windowed layers when it differs (gemma3's local layers).
    pub local_rope_theta: Option<f32>,
}

impl Arch {
    pub fn llama() -> Arch {
        Arch::plain(Family::Llama)
    }

    fn plain(family: Family) -> Arch {
        Arch {
            family,
            activation: Activation::Silu,
            embed_scale: None,
            query_pre_attn_scalar: None,
            attn_softcap: None,
            final_softcap: None,
            window: None,
            windowed: Vec::new(),
            local_rope_theta: None,
        }
    }

    /// The window of layer `layer`, if it has one.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        self.window
            .filter(|_| self.windowed.get(layer).copied().unwrap_or(false))
    }

    /// Whether layer `layer` uses the local RoPE tables.
    pub fn layer_local_rope(&self, layer: usize) -> bool {
        self.local_rope_theta.is_some() && self.layer_window(layer).is_some()
    }

    /// Divide raw `q k^T` scores by the query scale and soft-cap them.
    pub fn scores(&self, qk: Tensor, head_dim: usize) -> Result<Tensor> {
        let scalar = self.query_pre_attn_scalar.unwrap_or(head_dim as f64);
        let s = (qk / scalar.sqrt())?;
        soft_cap(s, self.attn_softcap)
    }

    /// Soft-cap the output logits.
    pub fn logits(&self, logits: Tensor) -> Result<Tensor> {
        soft_cap(logits, self.final_softcap)
    }

    /// Options from a checkpoint's `config.json`.
    pub fn from_hf(
        family: Family,
        fields: &HfArchFields,
        hidden_act: Option<&str>,
        hidden_size: usize,
        num_layers: usize,
    ) -> std::result::Result<Arch, String> {
        let mut arch = Arch::plain(family);
        let act = if family.is_gemma() {
            fields.hidden_activation.as_deref().or(hidden_act)
        } else {
            hidden_act
        };
        if let Some(name) = act {
            arch.activation = Activation::parse(name)
                .filter(|a| family.is_gemma() || *a == Activation::Silu)
                .ok_or_else(|| {
                    let allowed = if family.is_gemma() {
                        "gelu_pytorch_tanh or gelu"
                    } else {
                        "silu only"
                    };
                    format!("hidden_act `{name}` is not supported ({allowed})")
                })?;
        } else if family.is_gemma() {
            arch.activation = Activation::GeluTanh;
        }
        if family.is_gemma() {
            arch.embed_scale = Some((hidden_size as f64).sqrt());
            arch.query_pre_attn_scalar = fields.query_pre_attn_scalar;
            arch.attn_softcap = fields.attn_logit_softcapping;
            arch.final_softcap = fields.final_logit_softcapping;
        }
        if family == Family::Gemma3 {
            arch.local_rope_theta = Some(fields.rope_local_base_freq.unwrap_or(10_000.0));
        }
        if family.has_window()
            && let Some(w) = fields.sliding_window
        {
            if w == 0 {
                return Err("sliding_window must be at least 1".into());
            }
            arch.window = Some(w);
            arch.windowed = windowed_layers(family, fields, num_layers)?;
        }
        Ok(arch)
    }
}

/// Which layers attend through the window: `layer_types` when the config lists
/// them, else the family's pattern (gemma2: even layers; gemma3: all but every
/// `sliding_window_pattern`-th; mistral and phi3: all).
fn windowed_layers(
    family: Family,
    fields: &HfArchFields,
    n: usize,
) -> std::result::Result<Vec<bool>, String> {
    if let Some(types) = &fields.layer_types {
        if types.len() != n {
            return Err(format!(
                "layer_types lists {} layers, num_hidden_layers is {n}",
                types.len()
            ));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                "sliding_attention" => Ok(true),
                "full_attention" => Ok(false),
                other => Err(format!("layer_types has unknown `{other}`")),
            })
            .collect();
    }
    Ok(match family {
        Family::Gemma2 => (0..n).map(|i| i % 2 == 0).collect(),
        Family::Gemma3 => {
            let pattern = fields.sliding_window_pattern.unwrap_or(6).max(1);
            (0..n).map(|i| (i + 1) % pattern != 0).collect()
        }
        _ => vec![true; n],
    })
}

fn soft_cap(x: Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(c) => (x / c)?.tanh()? * c,
        None => Ok(x),
    }
}

/// The `config.json` fields of the non-llama families (flattened into
/// [`crate::hf::HfConfig`]); absent ones are `None`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HfArchFields {
    /// Gemma's name for the MLP activation.
    #[serde(default)]
    pub hidden_activation: Option<String>,
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    /// Per layer, `sliding_attention` or `full_attention` (newer configs).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub rope_local_base_freq: Option<f32>,
    /// Biases on q, k, v and o (qwen3, gemma); only `false` is supported.
    #[serde(default)]
    pub attention_bias: Option<bool>,
    /// The fraction of each head RoPE rotates (phi3 family).
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    /// The context pretrained on, before longrope extended it (phi3 family).
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// What a block adds to llama's: per-head q/k norms, norms on the attention and
/// MLP outputs (gemma), its attention window and RoPE tables.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerExtra {
    pub(crate) q_norm: Option<RmsNorm>,
    pub(crate) k_norm: Option<RmsNorm>,
    pub(crate) post_attn_norm: Option<RmsNorm>,
    pub(crate) post_ffn_norm: Option<RmsNorm>,
    /// Keys per query when this layer attends through a sliding window.
    pub(crate) window: Option<usize>,
    /// RoPE with the model's local tables (gemma3's windowed layers).
    pub(crate) local_rope: bool,
}

impl LayerExtra {
    /// `(heads, rows, head_dim)` queries or keys through the per-head norm.
    pub(crate) fn norm_q(&self, q: Tensor) -> Result<Tensor> {
        apply(&self.q_norm, q)
    }

    pub(crate) fn norm_k(&self, k: Tensor) -> Result<Tensor> {
        apply(&self.k_norm, k)
    }

    /// The attention block's output, normed when the family does.
    pub(crate) fn post_attn(&self, x: Tensor) -> Result<Tensor> {
        apply(&self.post_attn_norm, x)
    }

    pub(crate) fn post_ffn(&self, x: Tensor) -> Result<Tensor> {
        apply(&self.post_ffn_norm, x)
    }
}

fn apply(norm: &Option<RmsNorm>, x: Tensor) -> Result<Tensor> {
    match norm {
        Some(n) => n.forward(&x),
        None => Ok(x),
    }
}

/// The keys a window of `window` leaves to `rows` new queries at the end of a
/// cache of `len` positions: `(first, count)`. Keys before the first query's
/// window are never attended, so they are not read at all.
pub(crate) fn window_span(len: usize, rows: usize, window: Option<usize>) -> (usize, usize) {
    let first = match window {
        Some(w) => (len + 1).saturating_sub(rows + w),
        None => 0,
    };
    (first, len - first)
}

/// Narrow `(heads, len, dim)` keys and values (and a `(rows, len)` mask) to a
/// windowed layer's span.
pub(crate) fn clip_window(
    k: Tensor,
    v: Tensor,
    mask: Option<&Tensor>,
    rows: usize,
    window: Option<usize>,
) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let len = k.dim(1)?;
    let (first, count) = window_span(len, rows, window);
    if first == 0 {
        return Ok((k, v, mask.cloned()));
    }
    let mask = mask.map(|m| m.narrow(1, first, count)).transpose()?;
    Ok((k.narrow(1, first, count)?, v.narrow(1, first, count)?, mask))
}

/// `(rows, start + rows)` additive mask for `rows` new positions from `start`:
/// 0 where row r may attend column c (causal, and within `window` keys of it),
/// -inf elsewhere. `None` for one row, whose window [`clip_window`] cuts.
pub(crate) fn window_mask(
    rows: usize,
    start: usize,
    window: usize,
    device: &Device,
) -> Result<Option<Tensor>> {
    if rows <= 1 {
        return Ok(None);
    }
    let cols = start + rows;
    let mask: Vec<f32> = (0..rows)
        .flat_map(|r| {
            let p = start + r;
            (0..cols).map(move |c| {
                if c > p || c + window <= p {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
        })
        .collect();
    Ok(Some(Tensor::from_vec(mask, (rows, cols), device)?))
}

/// RoPE (`rope`) on the first `rope_dim` dimensions of each head of a
/// `(1, heads, rows, head_dim)` tensor, the others passed through unturned
/// (`partial_rotary_factor`, and GGUF's `rope.dimension_count` below the head
/// dimension). All of them when `rope_dim` is the head dimension.
pub(crate) fn rotate_partial(
    t: Tensor,
    rope_dim: usize,
    rope: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let head_dim = t.dim(3)?;
    if rope_dim >= head_dim {
        return rope(&t);
    }
    let turned = rope(&t.narrow(3, 0, rope_dim)?.contiguous()?)?;
    let kept = t.narrow(3, rope_dim, head_dim - rope_dim)?;
    Tensor::cat(&[&turned, &kept], 3)?.contiguous()
}

/// A checkpoint tensor as the loader files it: phi3's fused `qkv_proj` and
/// `gate_up_proj` become the separate projections (their rows are q, k, v and
/// gate, up), and gemma's norm weights w become 1 + w so that every norm is a
/// plain RMSNorm (as llama.cpp's converter stores them).
pub fn hf_tensors(
    family: Family,
    name: String,
    tensor: Tensor,
    q_rows: usize,
    kv_rows: usize,
) -> Result<Vec<(String, Tensor)>> {
    // Row blocks are copied out: quantizing reads a tensor's storage from its start.
    let rows = |t: &Tensor, start: usize, len: usize| t.narrow(0, start, len)?.force_contiguous();
    if family == Family::Phi3 {
        if let Some(prefix) = name.strip_suffix("self_attn.qkv_proj.weight") {
            return Ok(vec![
                (
                    format!("{prefix}self_attn.q_proj.weight"),
                    rows(&tensor, 0, q_rows)?,
                ),
                (
                    format!("{prefix}self_attn.k_proj.weight"),
                    rows(&tensor, q_rows, kv_rows)?,
                ),
                (
                    format!("{prefix}self_attn.v_proj.weight"),
                    rows(&tensor, q_rows + kv_rows, kv_rows)?,
                ),
            ]);
        }
        if let Some(prefix) = name.strip_suffix("mlp.gate_up_proj.weight") {
            let half = tensor.dim(0)? / 2;
            return Ok(vec![
                (
                    format!("{prefix}mlp.gate_proj.weight"),
                    rows(&tensor, 0, half)?,
                ),
                (
                    format!("{prefix}mlp.up_proj.weight"),
                    rows(&tensor, half, half)?,
                ),
            ]);
        }
    }
    if family.is_gemma() && name.ends_with("norm.weight") {
        return Ok(vec![(name, (tensor + 1.0)?)]);
    }
    Ok(vec![(name, tensor)])
}

/// The norm weights of block `prefix` (`model.layers.N.`) beyond llama's
/// input norm: the MLP's input norm and the family's extras. `take` removes a
/// named vector from the loaded weights.
pub(crate) fn hf_layer_norms<E>(
    family: Family,
    eps: f64,
    take: &mut dyn FnMut(&str) -> std::result::Result<Tensor, E>,
) -> std::result::Result<(RmsNorm, LayerExtra), E>
where
    E: From<candle_core::Error>,
{
    let mut norm =
        |name: &str| -> std::result::Result<RmsNorm, E> { Ok(RmsNorm::new(take(name)?, eps)?) };
    let mut extra = LayerExtra::default();
    let ffn_norm = if family.is_gemma() {
        extra.post_attn_norm = Some(norm("post_attention_layernorm.weight")?);
        extra.post_ffn_norm = Some(norm("post_feedforward_layernorm.weight")?);
        norm("pre_feedforward_layernorm.weight")?
    } else {
        norm("post_attention_layernorm.weight")?
    };
    if matches!(family, Family::Qwen3 | Family::Gemma3) {
        extra.q_norm = Some(norm("self_attn.q_norm.weight")?);
        extra.k_norm = Some(norm("self_attn.k_norm.weight")?);
    }
    Ok((ffn_norm, extra))
}
