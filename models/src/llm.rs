//! A chat/completion model loaded from a GGUF file or a Hugging Face safetensors
//! checkpoint: weights, tokenizer, template.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::gguf::{md_string, md_u32, read_content, tokenizer_from_gguf};
use crate::grammar::{GrammarError, Grammars};
use crate::hf::{self, HfConfig, TokenizerConfig};
use crate::llama::{KvCache, Llama, MAX_SEQ_LEN};
use crate::template::{ChatTemplate, TemplateMessage};
use crate::{ModelError, digest};

/// What to load and how.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// A `.gguf` file, or a directory holding a Hugging Face checkpoint
    /// (`config.json`, `*.safetensors`, `tokenizer.json`, `tokenizer_config.json`).
    pub path: PathBuf,
    /// Expected SHA-256 (hex) of the weights; loading refuses a mismatch. For a
    /// directory it is [`digest::sha256_listing`] of its `*.safetensors` files.
    pub sha256: Option<String>,
    /// A `tokenizer.json` to use instead of the GGUF's own vocabulary or the
    /// checkpoint directory's `tokenizer.json`.
    pub tokenizer_json: Option<PathBuf>,
    /// Quantise weights at load (see `Requantize`).
    pub requantize: Requantize,
}

/// candle 0.11's Q4_1 matmul is a scalar loop while Q8_0 has SIMD kernels, so
/// re-quantising Q4_1 weights to Q8_0 at load trades ~1.7x the weight memory for
/// several times the speed, with greedy output unchanged on the default model.
/// For a safetensors checkpoint, `Q8_0` quantises the float matmul weights
/// (a quarter of their f32 size, and faster on the CPU).
///
/// `Auto` keeps a GGUF's own blocks where this crate's CPU kernels serve them
/// (their Q4_1 matmul is at least as fast as Q8_0's and reads 1/1.48 of the
/// bytes: benches/llama-cpp/README.md) and re-quantises Q4_1 where candle's
/// matmul runs (debug builds, `TENZRO_CPU_KERNELS=candle`, CUDA); for a
/// safetensors checkpoint it is `Q8_0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requantize {
    #[default]
    None,
    Q8_0,
    Auto,
}

impl Requantize {
    /// What `Auto` means for a GGUF on `device`.
    fn for_gguf(self, device: &Device) -> Requantize {
        match self {
            Requantize::Auto if device.is_cpu() && crate::linear::cpu_kernels_on() => {
                Requantize::None
            }
            Requantize::Auto => Requantize::Q8_0,
            other => other,
        }
    }
}

/// A loaded causal language model. The weights are shared; each sequence keeps
/// its own `KvCache`.
pub struct Llm {
    pub model: Llama,
    pub tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    /// Token ids that end generation.
    pub eos_ids: Vec<u32>,
    /// Positions the model can attend over (prompt + completion).
    pub context_length: usize,
    /// SHA-256 of the weights, hex (see `LlmConfig::sha256`).
    pub sha256: String,
    pub device: Device,
    /// The grammar compiler over this model's vocabulary, built on first use.
    grammars: std::sync::OnceLock<Result<Grammars, GrammarError>>,
}

impl Llm {
    /// Load a GGUF file or, when `cfg.path` is a directory, a safetensors checkpoint.
    pub fn load(cfg: &LlmConfig, device: &Device) -> Result<Self, ModelError> {
        let started = Instant::now();
        let llm = if cfg.path.is_dir() {
            Self::load_hf(cfg, device)?
        } else {
            Self::load_gguf(cfg, device)?
        };
        tracing::info!(
            path = %cfg.path.display(),
            context_length = llm.context_length,
            requantize = ?cfg.requantize,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded model"
        );
        Ok(llm)
    }

    fn load_gguf(cfg: &LlmConfig, device: &Device) -> Result<Self, ModelError> {
        let sha256 = digest::verify_file(&cfg.path, cfg.sha256.as_deref())?;
        let (content, mut file) = read_content(&cfg.path)?;
        let arch = md_string(&content, "general.architecture").unwrap_or_default();
        let family = crate::arch::Family::from_gguf_architecture(&arch)
            .map_err(|m| ModelError::format(&cfg.path, m))?;
        // The GGUF tokenizer is built with SmolLM's pre-tokenizer; the other families'
        // splitting rules differ, so they need their tokenizer.json.
        let pre = md_string(&content, "tokenizer.ggml.pre").unwrap_or_default();
        if family != crate::arch::Family::Llama && cfg.tokenizer_json.is_none() && pre != "smollm" {
            return Err(ModelError::format(
                &cfg.path,
                format!(
                    "a `{arch}` GGUF's tokenizer (pre-tokenizer `{pre}`) cannot be built from \
                     its metadata yet; set the model's `tokenizer` to its tokenizer.json"
                ),
            ));
        }
        let tokenizer = match &cfg.tokenizer_json {
            Some(path) => read_tokenizer(path)?,
            None => tokenizer_from_gguf(&content)?,
        };
        let token_text = |key: &str| md_u32(&content, key).and_then(|id| tokenizer.id_to_token(id));
        let bos_token = token_text("tokenizer.ggml.bos_token_id").unwrap_or_default();
        let eos_token = token_text("tokenizer.ggml.eos_token_id").unwrap_or_default();
        let eos_ids = with_turn_markers(
            &tokenizer,
            md_u32(&content, "tokenizer.ggml.eos_token_id").into_iter(),
        );
        // The template comes from the GGUF, else from a tokenizer_config.json
        // beside the tokenizer.json when one was given.
        let template_source = md_string(&content, "tokenizer.chat_template").or_else(|| {
            let dir = cfg.tokenizer_json.as_ref()?.parent()?;
            template_from_tokenizer_config(&dir.join("tokenizer_config.json"))
        });
        let template = template_source
            .map(|src| ChatTemplate::new(src, bos_token, eos_token))
            .transpose()?;
        let context_length = md_u32(&content, &format!("{arch}.context_length"))
            .map_or(2048, |c| c as usize)
            .min(MAX_SEQ_LEN);

        let weights = match cfg.requantize.for_gguf(device) {
            Requantize::None | Requantize::Auto => {
                crate::arch::gguf::load(&content, &mut file, device)?
            }
            Requantize::Q8_0 => {
                let bytes = requantize_q4_1(&content, &mut file)?;
                let mut cursor = Cursor::new(bytes);
                let content =
                    Content::read(&mut cursor).map_err(|e| ModelError::format(&cfg.path, e))?;
                crate::arch::gguf::load(&content, &mut cursor, device)?
            }
        };
        Ok(Llm {
            model: weights,
            tokenizer,
            template,
            eos_ids,
            context_length,
            sha256,
            device: device.clone(),
            grammars: std::sync::OnceLock::new(),
        })
    }

    fn load_hf(cfg: &LlmConfig, device: &Device) -> Result<Self, ModelError> {
        let dir = &cfg.path;
        let files = hf::weight_files(dir)?;
        let sha256 = digest::verify_listing(dir, &files, cfg.sha256.as_deref())?;
        let config = HfConfig::read(&dir.join("config.json"))?;
        let tokenizer_path = cfg
            .tokenizer_json
            .clone()
            .unwrap_or_else(|| dir.join("tokenizer.json"));
        let tokenizer = read_tokenizer(&tokenizer_path)?;
        let tc = TokenizerConfig::read(&dir.join("tokenizer_config.json")).unwrap_or_default();
        let id_text = |ids: &Option<hf::TokenIds>| {
            ids.as_ref()
                .and_then(|ids| ids.ids().first().and_then(|&id| tokenizer.id_to_token(id)))
        };
        let bos_token = tc
            .bos_token
            .clone()
            .or_else(|| id_text(&config.bos_token_id))
            .unwrap_or_default();
        let eos_token = tc
            .eos_token
            .clone()
            .or_else(|| id_text(&config.eos_token_id))
            .unwrap_or_default();
        let configured = config
            .eos_token_id
            .as_ref()
            .map(|ids| ids.ids().to_vec())
            .unwrap_or_default();
        let eos_ids = with_turn_markers(
            &tokenizer,
            configured
                .into_iter()
                .chain(hf::generation_eos_ids(dir))
                .chain(
                    tc.eos_token
                        .as_deref()
                        .and_then(|t| tokenizer.token_to_id(t)),
                ),
        );
        let template = tc
            .chat_template
            .map(|src| ChatTemplate::new(src, bos_token, eos_token))
            .transpose()?;
        let quantize = match cfg.requantize {
            Requantize::None => None,
            Requantize::Q8_0 | Requantize::Auto => Some(GgmlDType::Q8_0),
        };
        let model = hf::load_llama(&config, &files, quantize, device)?;
        Ok(Llm {
            model,
            tokenizer,
            template,
            eos_ids,
            context_length: config.max_position_embeddings.min(MAX_SEQ_LEN),
            sha256,
            device: device.clone(),
            grammars: std::sync::OnceLock::new(),
        })
    }

    /// Render a conversation with the model's own chat template and open the
    /// assistant's turn.
    pub fn render_chat(&self, messages: &[TemplateMessage]) -> Result<String, ModelError> {
        match &self.template {
            Some(t) => t.render(messages, true),
            None => Err(ModelError::Template(
                "the model has no chat template; use /v1/completions".into(),
            )),
        }
    }

    /// Tokenize text; special tokens written in the text (`<|im_start|>`) are
    /// recognised, and nothing is added around it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    /// The grammar compiler for constrained decoding (its token trie is built from
    /// the vocabulary on the first call, tens of milliseconds).
    pub fn grammars(&self) -> Result<&Grammars, GrammarError> {
        self.grammars
            .get_or_init(|| Grammars::new(&self.tokenizer, &self.eos_ids))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// True when the chat template renders `tools` itself.
    pub fn template_supports_tools(&self) -> bool {
        self.template
            .as_ref()
            .is_some_and(ChatTemplate::supports_tools)
    }

    /// Render a conversation given as JSON messages (with `tool_calls` and
    /// `tool_call_id`) and the request's `tools`, for templates that support tools.
    pub fn render_chat_with_tools(
        &self,
        messages: &[serde_json::Value],
        tools: &serde_json::Value,
    ) -> Result<String, ModelError> {
        match &self.template {
            Some(t) => t.render_with_tools(messages, tools, true),
            None => Err(ModelError::Template(
                "the model has no chat template; use /v1/completions".into(),
            )),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Run the prompt in one pass; returns the new sequence's cache and the
    /// logits for the next token.
    pub fn prefill(&self, prompt: &[u32]) -> Result<(KvCache, Vec<f32>), ModelError> {
        let mut cache = self.model.new_cache();
        let logits = self.model.prefill(prompt, &mut cache)?;
        Ok((cache, logits_vec(&logits)?))
    }

    /// Like [`Llm::prefill`], and also score the prompt: for each token after
    /// the first, its logprob given the ones before it and the `top` most likely
    /// tokens at that position (the raw model distribution: no penalties or bias
    /// apply to a prompt). Positions are projected to logits a few rows at a
    /// time, so memory stays at `SCORE_ROWS × vocab` whatever the prompt length.
    pub fn prefill_scored(
        &self,
        prompt: &[u32],
        top: usize,
    ) -> Result<(KvCache, Vec<f32>, Vec<crate::logprobs::Scored>), ModelError> {
        const SCORE_ROWS: usize = 16;
        let mut cache = self.model.new_cache();
        let hidden = self.model.prefill_hidden(prompt, &mut cache)?;
        let t = prompt.len();
        let mut scored = Vec::with_capacity(t.saturating_sub(1));
        let mut last = Vec::new();
        let mut row = 0;
        while row < t {
            let rows = SCORE_ROWS.min(t - row);
            let logits = self.model.project(&hidden.narrow(0, row, rows)?)?;
            let logits: Vec<Vec<f32>> = logits.to_dtype(candle_core::DType::F32)?.to_vec2()?;
            for (i, l) in logits.into_iter().enumerate() {
                match prompt.get(row + i + 1) {
                    Some(&next) => scored.push(crate::logprobs::score(&l, next, top)),
                    None => last = l,
                }
            }
            row += rows;
        }
        Ok((cache, last, scored))
    }

    /// One decode step for several sequences at once: `tokens[i]` extends
    /// `caches[i]`. Returns each sequence's next-token logits.
    pub fn decode(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let logits = self.model.decode(tokens, caches)?;
        Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec2()?)
    }
}

/// Logits of one position as a flat f32 vector.
pub fn logits_vec(logits: &Tensor) -> Result<Vec<f32>, ModelError> {
    Ok(logits
        .flatten_all()?
        .to_dtype(candle_core::DType::F32)?
        .to_vec1()?)
}

/// Write an in-memory GGUF where every Q4_1 tensor became Q8_0 (the bytes of a
/// complete GGUF file).
pub fn requantize_q4_1(content: &Content, file: &mut std::fs::File) -> Result<Vec<u8>, ModelError> {
    let cpu = Device::Cpu;
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(content.tensor_infos.len());
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let qt = content.tensor(file, name, &cpu)?;
        let qt = if qt.dtype() == GgmlDType::Q4_1 {
            QTensor::quantize(&qt.dequantize(&cpu)?, GgmlDType::Q8_0)?
        } else {
            qt
        };
        tensors.push((name.clone(), qt));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensor_refs)?;
    Ok(out.into_inner())
}

/// `chat_template` from a Hugging Face `tokenizer_config.json`: a string, or a
/// list of named templates of which we take `default`.
pub fn template_from_tokenizer_config(path: &Path) -> Option<String> {
    TokenizerConfig::read(path)?.chat_template
}

fn read_tokenizer(path: &Path) -> Result<Tokenizer, ModelError> {
    Tokenizer::from_file(path)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
}

/// The given end-of-sequence ids, deduplicated, plus the chat models' end-of-turn
/// markers the vocabulary has.
fn with_turn_markers(tokenizer: &Tokenizer, ids: impl Iterator<Item = u32>) -> Vec<u32> {
    let markers = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>"];
    let mut out: Vec<u32> = Vec::new();
    for id in ids.chain(markers.iter().filter_map(|m| tokenizer.token_to_id(m))) {
        if !out.contains(&id) {
            out.push(id);
        }
    }
    out
}

/// The default chat model's file name under a models directory, for tests and tools.
pub fn default_model_path(models_dir: &Path) -> PathBuf {
    models_dir.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}
