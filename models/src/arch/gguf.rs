//! GGUF files of the families llama.cpp writes under their own architecture name
//! (`qwen2`, `qwen3`, `gemma2`, `gemma3`, `phi3`; `llama` stays with
//! [`Llama::from_gguf`]). Metadata keys are `{arch}.…` as llama.cpp names them;
//! tensors are `blk.N.…`. What differs from llama:
//!
//! - RoPE pairs dimension i with i + rope_dim/2 (llama.cpp's NEOX kind): the
//!   converter does not permute q and k for these families.
//! - qwen2: `attn_{q,k,v}.bias`. qwen3, gemma3: `attn_{q,k}_norm`.
//! - gemma2/3: `post_attention_norm` and `post_ffw_norm`, `ffn_norm` before the MLP;
//!   the converter already stored every norm weight as w + 1. The query scale is
//!   1/sqrt(key_length), or 1/sqrt(hidden / heads) for the 27B models (as llama.cpp
//!   decides, by their layer count); local layers' RoPE base is 10 000 for gemma3.
//! - phi3: `attn_qkv` (q, k, v rows) and `ffn_up` (gate rows, then up rows) are
//!   fused; their rows are split here, byte for byte, whatever the quantisation.
//!
//! RoPE scaling (every family, llama included): see [`rope_scaling`].

use std::borrow::Cow;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{QStorage, QTensor};
use candle_core::{Device, Result};

use super::{Activation, Arch, Family, LayerExtra, RopeScaling};
use crate::linear::Linear;
use crate::llama::{Layer, Llama, LlamaShape, RmsNorm, RopeLayout};

/// Load any supported GGUF architecture; the error for another names it and the
/// supported list.
pub fn load<R: Seek + Read>(ct: &Content, reader: &mut R, device: &Device) -> Result<Llama> {
    let name = ct
        .metadata
        .get("general.architecture")
        .ok_or_else(|| {
            candle_core::Error::Msg("GGUF metadata has no `general.architecture`".into())
        })?
        .to_string()?
        .clone();
    let family = Family::from_gguf_architecture(&name).map_err(candle_core::Error::Msg)?;
    if family == Family::Llama {
        return Llama::from_gguf(ct, reader, device);
    }
    let md = Metadata { ct, arch: &name };
    let mut shape = md.shape()?;
    if md.u32("expert_count").unwrap_or(0) > 1 {
        candle_core::bail!("mixture-of-experts {name} models are not supported yet");
    }
    shape.rope_scaling = rope_scaling(ct, reader, &name, device)?;
    let blocks = md.req_u32("block_count")?;
    let arch = md.arch(family, &shape, blocks)?;
    let eps = f64::from(md.req_f32("attention.layer_norm_rms_epsilon")?);

    let mut get = |n: &str| ct.tensor(reader, n, device);
    let embed_q = std::sync::Arc::new(get("token_embd.weight")?);
    let norm = RmsNorm::new(get("output_norm.weight")?.dequantize(device)?, eps)?;
    // A tied output projection and the table share one copy of the blocks.
    let output = match get("output.weight") {
        Ok(t) => Linear::from_qtensor(t)?,
        Err(_) => Linear::from_arc(embed_q.clone())?,
    };
    let shared = output
        .cpu_weight()
        .filter(|_| !ct.tensor_infos.contains_key("output.weight"));
    let embed = crate::llama::TokenEmbedding::from_qtensor(&embed_q, shared, device)?;
    drop(embed_q);
    let mut layers = Vec::with_capacity(blocks);
    for i in 0..blocks {
        layers.push(layer(ct, reader, device, family, &shape, eps, i)?);
    }
    Llama::from_parts(&shape, embed, layers, norm, output, device)?.with_arch(arch)
}

/// The RoPE scaling of a GGUF file, as llama.cpp reads it: `{arch}.rope.scaling.type`
/// `linear` with `{arch}.rope.scaling.factor` (or the older `{arch}.rope.scale_linear`),
/// and the `rope_freqs.weight` tensor of per-frequency divisors (how its converter
/// stores llama3 scaling); both together multiply. Other types (yarn, longrope)
/// are refused by name.
pub(crate) fn rope_scaling<R: Seek + Read>(
    ct: &Content,
    reader: &mut R,
    arch: &str,
    device: &Device,
) -> Result<Option<RopeScaling>> {
    let md = Metadata { ct, arch };
    let linear = match md.string("rope.scaling.type").as_deref() {
        None | Some("none") => md.f32("rope.scale_linear").filter(|&f| f != 1.0),
        Some("linear") => Some(
            md.f32("rope.scaling.factor")
                .ok_or_else(|| md.missing("rope.scaling.factor"))?,
        ),
        Some(other) => candle_core::bail!(
            "{arch}: RoPE scaling `{other}` is not supported (supported: none, linear, and llama3's rope_freqs)"
        ),
    };
    if let Some(f) = linear
        && !(f.is_finite() && f > 0.0)
    {
        candle_core::bail!("{arch}: RoPE scaling factor {f} must be positive");
    }
    if ct.tensor_infos.contains_key("rope_factors_short.weight") {
        return long_rope(ct, reader, &md, device).map(Some);
    }
    if !ct.tensor_infos.contains_key("rope_freqs.weight") {
        return Ok(linear.map(|factor| RopeScaling::Linear { factor }));
    }
    let factors = ct
        .tensor(reader, "rope_freqs.weight", device)?
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let f = linear.unwrap_or(1.0);
    Ok(Some(RopeScaling::Divisors(
        factors.into_iter().map(|d| d * f).collect(),
    )))
}

/// Phi-3's longrope as llama.cpp's converter writes it: `rope_factors_short` and
/// `rope_factors_long` tensors, `{arch}.rope.scaling.attn_factor`, the original
/// context in `{arch}.rope.scaling.original_context_length`. llama.cpp uses the
/// long factors when its context exceeds the original one; within
/// [`crate::llama::MAX_SEQ_LEN`] that is never, else the file is refused.
fn long_rope<R: Seek + Read>(
    ct: &Content,
    reader: &mut R,
    md: &Metadata<'_>,
    device: &Device,
) -> Result<RopeScaling> {
    let context = md
        .u32("context_length")
        .unwrap_or(crate::llama::MAX_SEQ_LEN);
    let original = md
        .u32("rope.scaling.original_context_length")
        .unwrap_or(context);
    let limit = crate::llama::MAX_SEQ_LEN.min(context);
    if original < limit {
        candle_core::bail!(
            "{}: longrope switches to its long factors past the original context ({original}), within the {limit} positions served: not supported",
            md.arch
        );
    }
    let short_factor = ct
        .tensor(reader, "rope_factors_short.weight", device)?
        .dequantize(&Device::Cpu)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let attention_factor = md.f32("rope.scaling.attn_factor").unwrap_or(1.0);
    if !(attention_factor.is_finite() && attention_factor > 0.0) {
        candle_core::bail!(
            "{}: rope.scaling.attn_factor {attention_factor} must be positive",
            md.arch
        );
    }
    Ok(RopeScaling::LongRope {
        short_factor,
        attention_factor,
    })
}

/// One block's weights, `blk.{i}.…`.
fn layer<R: Seek + Read>(
    ct: &Content,
    reader: &mut R,
    device: &Device,
    family: Family,
    shape: &LlamaShape,
    eps: f64,
    i: usize,
) -> Result<Layer> {
    let mut get = |suffix: &str, dev: &Device| ct.tensor(reader, &format!("blk.{i}.{suffix}"), dev);
    let mut norm = |suffix: &str| -> Result<RmsNorm> {
        RmsNorm::new(get(suffix, device)?.dequantize(device)?, eps)
    };
    let attn_norm = norm("attn_norm.weight")?;
    let ffn_norm = norm("ffn_norm.weight")?;
    let mut extra = LayerExtra::default();
    if matches!(family, Family::Qwen3 | Family::Gemma3) {
        extra.q_norm = Some(norm("attn_q_norm.weight")?);
        extra.k_norm = Some(norm("attn_k_norm.weight")?);
    }
    if family.is_gemma() {
        extra.post_attn_norm = Some(norm("post_attention_norm.weight")?);
        extra.post_ffn_norm = Some(norm("post_ffw_norm.weight")?);
    }
    let qkv_bias = if family == Family::Qwen2 {
        let mut bias = |s: &str| get(s, device)?.dequantize(device);
        Some([
            bias("attn_q.bias")?,
            bias("attn_k.bias")?,
            bias("attn_v.bias")?,
        ])
    } else {
        None
    };
    let mm = Linear::from_qtensor;
    let (wq, wk, wv, gate, up) = if family == Family::Phi3 {
        let q = shape.n_head * shape.head_dim;
        let kv = shape.n_kv_head * shape.head_dim;
        let [wq, wk, wv] =
            split_rows::<3>(get("attn_qkv.weight", &Device::Cpu)?, [q, kv, kv], device)?;
        let fused = get("ffn_up.weight", &Device::Cpu)?;
        let half = fused.shape().dims2()?.0 / 2;
        let [gate, up] = split_rows::<2>(fused, [half, half], device)?;
        (mm(wq)?, mm(wk)?, mm(wv)?, mm(gate)?, mm(up)?)
    } else {
        (
            mm(get("attn_q.weight", device)?)?,
            mm(get("attn_k.weight", device)?)?,
            mm(get("attn_v.weight", device)?)?,
            mm(get("ffn_gate.weight", device)?)?,
            mm(get("ffn_up.weight", device)?)?,
        )
    };
    Ok(Layer {
        wq,
        wk,
        wv,
        qkv_bias,
        wo: mm(get("attn_output.weight", device)?)?,
        attn_norm,
        ffn_norm,
        gate,
        down: mm(get("ffn_down.weight", device)?)?,
        up,
        extra,
    })
}

/// Split a `(rows, cols)` quantized tensor into consecutive row blocks of the
/// given sizes, copying their bytes (a row is whole quantisation blocks).
fn split_rows<const N: usize>(
    t: QTensor,
    sizes: [usize; N],
    device: &Device,
) -> Result<[QTensor; N]> {
    let (rows, cols) = t.shape().dims2()?;
    if sizes.iter().sum::<usize>() != rows {
        candle_core::bail!("a fused tensor of {rows} rows does not split into {sizes:?}");
    }
    let dtype = t.dtype();
    if !cols.is_multiple_of(dtype.block_size()) {
        candle_core::bail!("{cols} columns are not whole {dtype:?} blocks");
    }
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = t.data()?;
    let mut at = 0;
    let mut out = Vec::with_capacity(N);
    for n in sizes {
        let bytes = data
            .get(at * row_bytes..(at + n) * row_bytes)
            .ok_or_else(|| candle_core::Error::Msg("fused tensor data is short".into()))?;
        let storage = QStorage::from_data(Cow::Owned(bytes.to_vec()), device, dtype)?;
        out.push(QTensor::new(storage, (n, cols))?);
        at += n;
    }
    out.try_into()
        .map_err(|_| candle_core::Error::Msg("split count".into()))
}

/// `{arch}.…` metadata.
struct Metadata<'a> {
    ct: &'a Content,
    arch: &'a str,
}

impl Metadata<'_> {
    fn get(&self, key: &str) -> Option<&candle_core::quantized::gguf_file::Value> {
        self.ct.metadata.get(&format!("{}.{key}", self.arch))
    }

    fn u32(&self, key: &str) -> Option<usize> {
        self.get(key)?.to_u32().ok().map(|v| v as usize)
    }

    fn f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.to_f32().ok()
    }

    fn string(&self, key: &str) -> Option<String> {
        self.get(key)?.to_string().ok().cloned()
    }

    fn missing(&self, key: &str) -> candle_core::Error {
        candle_core::Error::Msg(format!("GGUF metadata has no `{}.{key}`", self.arch))
    }

    fn req_u32(&self, key: &str) -> Result<usize> {
        self.u32(key).ok_or_else(|| self.missing(key))
    }

    fn req_f32(&self, key: &str) -> Result<f32> {
        self.f32(key).ok_or_else(|| self.missing(key))
    }

    fn shape(&self) -> Result<LlamaShape> {
        let n_head = self.req_u32("attention.head_count")?;
        let n_kv_head = self.req_u32("attention.head_count_kv")?;
        let hidden = self.req_u32("embedding_length")?;
        if n_head == 0 {
            candle_core::bail!("GGUF metadata says 0 attention heads");
        }
        let head_dim = self.u32("attention.key_length").unwrap_or(hidden / n_head);
        Ok(LlamaShape {
            n_head,
            n_kv_head,
            head_dim,
            rope_dim: self.u32("rope.dimension_count").unwrap_or(head_dim),
            rope_theta: self.f32("rope.freq_base").unwrap_or(10_000.0),
            rope: RopeLayout::Halves,
            rope_scaling: None,
        })
    }

    fn arch(&self, family: Family, shape: &LlamaShape, blocks: usize) -> Result<Arch> {
        let mut arch = Arch::plain(family);
        let window = self.u32("attention.sliding_window").filter(|&w| w > 0);
        if family.is_gemma() {
            let hidden = self.req_u32("embedding_length")?;
            arch.activation = Activation::GeluTanh;
            arch.embed_scale = Some((hidden as f64).sqrt());
            arch.attn_softcap = self.f32("attn_logit_softcapping").map(f64::from);
            arch.final_softcap = self.f32("final_logit_softcapping").map(f64::from);
            // llama.cpp: the 27B models (46 and 62 layers) scale queries by the
            // hidden size per head, the others by the head dimension.
            let big = (family == Family::Gemma2 && blocks == 46)
                || (family == Family::Gemma3 && blocks == 62);
            let scalar = if big {
                hidden / shape.n_head
            } else {
                shape.head_dim
            };
            arch.query_pre_attn_scalar = Some(scalar as f64);
        }
        if family == Family::Gemma3 {
            arch.local_rope_theta = Some(10_000.0);
        }
        if let Some(w) = window
            && family.has_window()
        {
            arch.window = Some(w);
            arch.windowed = match family {
                Family::Gemma2 => (0..blocks).map(|i| i % 2 == 0).collect(),
                Family::Gemma3 => (0..blocks).map(|i| (i + 1) % 6 != 0).collect(),
                _ => vec![true; blocks],
            };
        }
        Ok(arch)
    }
}
