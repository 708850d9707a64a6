//! Hugging Face checkpoints: a directory with `config.json`, the weights in one or
//! more `*.safetensors` files (f32, f16 or bf16), `tokenizer.json` and, for the
//! chat template and special tokens, `tokenizer_config.json`.
//!
//! The weights become the same [`Llama`] a GGUF file builds. Hugging Face keeps q
//! and k in the layout of its `rotate_half` RoPE, which pairs dimension i of a head
//! with i + head_dim/2, while llama.cpp's converter permutes those rows so that
//! RoPE pairs neighbours. Rather than permute the rows back, the model is told
//! which pairing its weights expect ([`RopeLayout::Halves`] here); the two give the
//! same attention scores, because q and k are permuted alike.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::safetensors::BufferedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::ModelError;
use crate::linear::Linear;
use crate::llama::{Layer, Llama, LlamaShape, RmsNorm, RopeLayout};

/// The fields of `config.json` the loader uses (others are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// One of [`crate::arch::HF_MODEL_TYPES`].
    pub model_type: String,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention; equal to `num_attention_heads` when absent.
    pub num_key_value_heads: Option<usize>,
    /// `hidden_size / num_attention_heads` when absent.
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f32,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// `linear`, `llama3` or `longrope` (see [`crate::arch::rope`]); absent or `null` for none.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// qwen2's sliding-window attention; only `false` is supported.
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    /// The other families' fields (gemma's soft-caps, windows...).
    #[serde(flatten)]
    pub arch: crate::arch::HfArchFields,
}

fn default_rope_theta() -> f32 {
    10_000.0
}

/// A token id field that may be one id or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn ids(&self) -> &[u32] {
        match self {
            TokenIds::One(id) => std::slice::from_ref(id),
            TokenIds::Many(ids) => ids,
        }
    }
}

impl HfConfig {
    /// Read `config.json` and refuse what the model cannot run.
    pub fn read(path: &Path) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        let config: HfConfig =
            serde_json::from_slice(&bytes).map_err(|e| ModelError::format(path, e))?;
        config.check().map_err(|m| ModelError::format(path, m))?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let family = crate::arch::Family::from_model_type(&self.model_type)?;
        self.arch_options()?;
        if self.arch.attention_bias == Some(true) && family != crate::arch::Family::Qwen2 {
            return Err("attention_bias = true is not supported".into());
        }
        self.rope_scaling_options()?;
        if self.use_sliding_window {
            return Err("sliding-window attention is not supported yet".into());
        }
        if self.num_attention_heads == 0
            || (self.head_dim.is_none()
                && !self.hidden_size.is_multiple_of(self.num_attention_heads))
        {
            return Err(format!(
                "hidden_size {} does not split into {} heads",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if let Some(f) = self.arch.partial_rotary_factor {
            let dims = self.rope_dim();
            if !(f > 0.0 && f <= 1.0) || dims == 0 || !dims.is_multiple_of(2) {
                return Err(format!(
                    "partial_rotary_factor {f} must turn an even number of dimensions (of {})",
                    self.head_dim()
                ));
            }
        }
        Ok(())
    }

    /// The family `model_type` names (checked by [`HfConfig::read`]).
    pub fn family(&self) -> crate::arch::Family {
        crate::arch::Family::from_model_type(&self.model_type).unwrap_or(crate::arch::Family::Llama)
    }

    /// The family's forward-pass options from this config.
    pub fn arch_options(&self) -> Result<crate::arch::Arch, String> {
        crate::arch::Arch::from_hf(
            crate::arch::Family::from_model_type(&self.model_type)?,
            &self.arch,
            self.hidden_act.as_deref(),
            self.hidden_size,
            self.num_hidden_layers,
        )
    }

    /// The RoPE scaling `rope_scaling` names; the error names what is refused.
    pub fn rope_scaling_options(&self) -> Result<Option<crate::arch::RopeScaling>, String> {
        let context = crate::arch::rope::Context {
            max_position_embeddings: self.max_position_embeddings,
            original_max_position_embeddings: self.arch.original_max_position_embeddings,
        };
        crate::arch::RopeScaling::from_hf(self.rope_scaling.as_ref(), context)
    }

    fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// The dimensions of each head RoPE turns: `partial_rotary_factor` of them.
    fn rope_dim(&self) -> usize {
        let f = self.arch.partial_rotary_factor.unwrap_or(1.0);
        (self.head_dim() as f64 * f) as usize
    }

    fn n_kv_head(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// The network's shape; its `rope_scaling` is left to the loader, which
    /// reports a refused one ([`HfConfig::rope_scaling_options`]).
    pub fn shape(&self) -> LlamaShape {
        LlamaShape {
            n_head: self.num_attention_heads,
            n_kv_head: self.n_kv_head(),
            head_dim: self.head_dim(),
            rope_dim: self.rope_dim(),
            rope_theta: self.rope_theta,
            rope: RopeLayout::Halves,
            rope_scaling: None,
        }
    }

    /// The shape a tensor of this checkpoint must have, for the names we use.
    fn expected_dims(&self, name: &str) -> Option<Vec<usize>> {
        let (h, f, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_attention_heads * self.head_dim();
        let kv = self.n_kv_head() * self.head_dim();
        let dims = match name {
            "model.embed_tokens.weight" | "lm_head.weight" => vec![v, h],
            "model.norm.weight" => vec![h],
            _ => {
                let rest = name.strip_prefix("model.layers.")?;
                let (_, suffix) = rest.split_once('.')?;
                match suffix {
                    "self_attn.q_proj.weight" => vec![q, h],
                    "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => vec![kv, h],
                    "self_attn.o_proj.weight" => vec![h, q],
                    "self_attn.q_proj.bias" => vec![q],
                    "self_attn.k_proj.bias" | "self_attn.v_proj.bias" => vec![kv],
                    "mlp.gate_proj.weight" | "mlp.up_proj.weight" => vec![f, h],
                    "mlp.down_proj.weight" => vec![h, f],
                    "self_attn.q_norm.weight" | "self_attn.k_norm.weight" => {
                        vec![self.head_dim()]
                    }
                    "pre_feedforward_layernorm.weight" | "post_feedforward_layernorm.weight" => {
                        vec![h]
                    }
                    "self_attn.qkv_proj.weight" => vec![q + 2 * kv, h],
                    "mlp.gate_up_proj.weight" => vec![2 * f, h],
                    "input_layernorm.weight" | "post_attention_layernorm.weight" => vec![h],
                    _ => return None,
                }
            }
        };
        Some(dims)
    }
}

/// The checkpoint's weight files, `*.safetensors` in the directory, sorted by name.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let io = |source| ModelError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "safetensors") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(ModelError::format(dir, "no *.safetensors weight files"));
    }
    Ok(files)
}

/// Build the model from the weight files. With `quantize`, every matmul weight
/// whose rows split into whole blocks is quantized to that type as it is read;
/// otherwise the weights are kept as f32.
pub fn load_llama(
    config: &HfConfig,
    files: &[PathBuf],
    quantize: Option<GgmlDType>,
    device: &Device,
) -> Result<Llama, ModelError> {
    let mut weights = Weights::default();
    for path in files {
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.clone(),
            source,
        })?;
        let st = BufferedSafetensors::new(bytes).map_err(|e| ModelError::format(path, e))?;
        let names: Vec<String> = st.tensors().into_iter().map(|(name, _)| name).collect();
        for name in names {
            let tensor = st.load(&name, device)?.to_dtype(DType::F32)?;
            if let Some(dims) = config.expected_dims(&name)
                && tensor.dims() != dims.as_slice()
            {
                return Err(ModelError::format(
                    path,
                    format!(
                        "tensor `{name}` has shape {:?}, config.json implies {dims:?}",
                        tensor.dims()
                    ),
                ));
            }
            let (q_rows, kv_rows) = (
                config.num_attention_heads * config.head_dim(),
                config.n_kv_head() * config.head_dim(),
            );
            for (name, tensor) in
                crate::arch::hf_tensors(config.family(), name, tensor, q_rows, kv_rows)?
            {
                if name.ends_with("_proj.weight") || name == "lm_head.weight" {
                    weights.matrices.insert(name, matmul(tensor, quantize)?);
                } else {
                    weights.vectors.insert(name, tensor);
                }
            }
        }
    }
    let dir = files
        .first()
        .and_then(|f| f.parent())
        .unwrap_or(Path::new("."));
    let missing =
        |name: &str| ModelError::format(dir, format!("the checkpoint has no tensor `{name}`"));
    let eps = config.rms_norm_eps;
    let embed = weights
        .vectors
        .remove("model.embed_tokens.weight")
        .ok_or_else(|| missing("model.embed_tokens.weight"))?;
    let output = match weights.matrices.remove("lm_head.weight") {
        Some(m) => m,
        None if config.tie_word_embeddings => matmul(embed.clone(), quantize)?,
        None => return Err(missing("lm_head.weight")),
    };
    let norm = RmsNorm::new(
        weights
            .vectors
            .remove("model.norm.weight")
            .ok_or_else(|| missing("model.norm.weight"))?,
        eps,
    )?;
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}.");
        let mut mat = |n: &str| {
            weights
                .matrices
                .remove(&format!("{p}{n}"))
                .ok_or_else(|| missing(&format!("{p}{n}")))
        };
        let (wq, wk, wv, wo) = (
            mat("self_attn.q_proj.weight")?,
            mat("self_attn.k_proj.weight")?,
            mat("self_attn.v_proj.weight")?,
            mat("self_attn.o_proj.weight")?,
        );
        let (gate, up, down) = (
            mat("mlp.gate_proj.weight")?,
            mat("mlp.up_proj.weight")?,
            mat("mlp.down_proj.weight")?,
        );
        let mut vec = |n: &str| {
            weights
                .vectors
                .remove(&format!("{p}{n}"))
                .ok_or_else(|| missing(&format!("{p}{n}")))
        };
        let attn_norm = RmsNorm::new(vec("input_layernorm.weight")?, eps)?;
        let (ffn_norm, extra) = crate::arch::hf_layer_norms(config.family(), eps, &mut vec)?;
        let qkv_bias = if config.model_type == "qwen2" {
            Some([
                vec("self_attn.q_proj.bias")?,
                vec("self_attn.k_proj.bias")?,
                vec("self_attn.v_proj.bias")?,
            ])
        } else {
            None
        };
        layers.push(Layer {
            wq,
            wk,
            wv,
            qkv_bias,
            wo,
            attn_norm,
            ffn_norm,
            gate,
            down,
            up,
            extra,
        });
    }
    let arch = config
        .arch_options()
        .map_err(|m| ModelError::format(dir, m))?;
    let mut shape = config.shape();
    shape.rope_scaling = config
        .rope_scaling_options()
        .map_err(|m| ModelError::format(dir, m))?;
    Ok(Llama::from_parts(&shape, embed, layers, norm, output, device)?.with_arch(arch)?)
}

/// Tensors as read, split by how the model uses them.
#[derive(Default)]
struct Weights {
    /// Projections and the output head.
    matrices: HashMap<String, Linear>,
    /// Embeddings, norms and biases, as f32.
    vectors: HashMap<String, Tensor>,
}

fn matmul(weight: Tensor, quantize: Option<GgmlDType>) -> Result<Linear, ModelError> {
    match quantize {
        Some(dtype)
            if weight
                .dims()
                .last()
                .is_some_and(|&cols| cols.is_multiple_of(dtype.block_size())) =>
        {
            Ok(Linear::from_qtensor(QTensor::quantize(&weight, dtype)?)?)
        }
        _ => Ok(Linear::from_tensor(weight)?),
    }
}

/// What the loader takes from `tokenizer_config.json`.
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl TokenizerConfig {
    /// `None` when the file is missing or is not JSON.
    pub fn read(path: &Path) -> Option<Self> {
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        // A special token is written as its text or as `{"content": text, ...}`.
        let token = |key: &str| match json.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            other => other.get("content")?.as_str().map(str::to_owned),
        };
        // The template is a string, or a list of named templates of which we take `default`.
        let chat_template = match json.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
            _ => None,
        };
        Some(TokenizerConfig {
            chat_template,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
        })
    }
}

/// `eos_token_id` from `generation_config.json`, when there is one.
pub fn generation_eos_ids(dir: &Path) -> Vec<u32> {
    #[derive(Deserialize)]
    struct GenerationConfig {
        eos_token_id: Option<TokenIds>,
    }
    std::fs::read(dir.join("generation_config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<GenerationConfig>(&b).ok())
        .and_then(|g| g.eos_token_id)
        .map(|ids| ids.ids().to_vec())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]
    use super::*;

    const SMALL: &str = r#"{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 100000, "vocab_size": 10,
        "max_position_embeddings": 256, "eos_token_id": [2, 3], "torch_dtype": "bfloat16"}"#;

    fn config(patch: &[(&str, serde_json::Value)]) -> Result<HfConfig, String> {
        let mut json: serde_json::Value = serde_json::from_str(SMALL).unwrap();
        for (k, v) in patch {
            json[*k] = v.clone();
        }
        let c: HfConfig = serde_json::from_value(json).map_err(|e| e.to_string())?;
        c.check().map(|()| c)
    }

    #[test]
    fn config_fields_and_defaults() {
        let c = config(&[]).unwrap();
        let s = c.shape();
        assert_eq!(
            (s.n_head, s.n_kv_head, s.head_dim, s.rope_theta),
            (4, 2, 16, 100_000.0)
        );
        assert_eq!(s.rope, RopeLayout::Halves);
        assert_eq!(c.eos_token_id.as_ref().unwrap().ids(), [2, 3]);
        assert!(!c.tie_word_embeddings);
        assert_eq!(
            c.expected_dims("model.layers.1.self_attn.k_proj.weight"),
            Some(vec![32, 64])
        );
        assert_eq!(
            c.expected_dims("model.layers.0.mlp.down_proj.weight"),
            Some(vec![64, 128])
        );
        assert_eq!(c.expected_dims("model.rotary_emb.inv_freq"), None);
    }

    #[test]
    fn unsupported_configs_are_refused_with_a_reason() {
        let check = |patch: (&str, serde_json::Value), needle: &str| {
            let err = config(&[patch]).unwrap_err();
            assert!(err.contains(needle), "{err}");
        };
        check(("model_type", "gemma".into()), "`gemma` is not supported");
        check(("hidden_act", "gelu".into()), "silu only");
        check(
            (
                "rope_scaling",
                serde_json::json!({"type": "yarn", "factor": 4.0}),
            ),
            "rope_scaling type `yarn` is not supported",
        );
        check(("use_sliding_window", true.into()), "sliding-window");
        check(("num_attention_heads", 5.into()), "does not split");
        assert!(config(&[("rope_scaling", serde_json::Value::Null)]).is_ok());
    }

    #[test]
    fn tokenizer_config_reads_plain_and_object_tokens() {
        let dir = std::env::temp_dir().join(format!("tenzro-hf-tc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer_config.json");
        std::fs::write(
            &path,
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "chat_template": "t"}"#,
        )
        .unwrap();
        let tc = TokenizerConfig::read(&path).unwrap();
        assert_eq!(
            (tc.bos_token.as_deref(), tc.eos_token.as_deref()),
            (Some("<s>"), Some("</s>"))
        );
        assert_eq!(tc.chat_template.as_deref(), Some("t"));
        assert!(TokenizerConfig::read(&dir.join("missing.json")).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
