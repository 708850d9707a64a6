//! A chat/completion model loaded from a GGUF file: weights, tokenizer, template.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use crate::gguf::{md_string, md_u32, read_content, tokenizer_from_gguf};
use crate::llama::{KvCache, Llama, MAX_SEQ_LEN};
use crate::template::{ChatTemplate, TemplateMessage};
use crate::{ModelError, digest};

/// What to load and how.
#[derive(Debug, Clone)]
pub struct LlmConfig {
    /// The `.gguf` file.
    pub path: PathBuf,
    /// Expected SHA-256 (hex) of the file; loading refuses a mismatch.
    pub sha256: Option<String>,
    /// A `tokenizer.json` to use instead of the GGUF's own vocabulary.
    pub tokenizer_json: Option<PathBuf>,
    /// Re-quantise Q4_1 tensors to this type at load (see `Requantize`).
    pub requantize: Requantize,
}

/// candle 0.11's Q4_1 matmul is a scalar loop while Q8_0 has SIMD kernels, so
/// re-quantising Q4_1 weights to Q8_0 at load trades ~1.7x the weight memory for
/// several times the speed, with greedy output unchanged on the default model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requantize {
    #[default]
    None,
    Q8_0,
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
    /// SHA-256 of the weight file, hex.
    pub sha256: String,
    pub device: Device,
}

impl Llm {
    pub fn load(cfg: &LlmConfig, device: &Device) -> Result<Self, ModelError> {
        let started = Instant::now();
        let sha256 = digest::verify_file(&cfg.path, cfg.sha256.as_deref())?;
        let (content, mut file) = read_content(&cfg.path)?;
        let arch = md_string(&content, "general.architecture").unwrap_or_default();
        if arch != "llama" {
            return Err(ModelError::format(
                &cfg.path,
                format!("architecture `{arch}` is not supported yet (llama family only)"),
            ));
        }
        let tokenizer = match &cfg.tokenizer_json {
            Some(path) => Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?,
            None => tokenizer_from_gguf(&content)?,
        };
        let token_text = |key: &str| {
            md_u32(&content, key).and_then(|id| tokenizer.id_to_token(id))
        };
        let bos_token = token_text("tokenizer.ggml.bos_token_id").unwrap_or_default();
        let eos_token = token_text("tokenizer.ggml.eos_token_id").unwrap_or_default();
        let mut eos_ids: Vec<u32> = md_u32(&content, "tokenizer.ggml.eos_token_id").into_iter().collect();
        // Chat models end a turn with their template's end marker as well.
        for marker in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>"] {
            if let Some(id) = tokenizer.token_to_id(marker)
                && !eos_ids.contains(&id)
            {
                eos_ids.push(id);
            }
        }
        // The template comes from the GGUF, else from a tokenizer_config.json
        // beside the tokenizer.json when one was given.
        let template_source = md_string(&content, "tokenizer.chat_template").or_else(|| {
            let dir = cfg.tokenizer_json.as_ref()?.parent()?;
            template_from_tokenizer_config(&dir.join("tokenizer_config.json"))
        });
        let template = template_source
            .map(|src| ChatTemplate::new(src, bos_token, eos_token))
            .transpose()?;
        let context_length = md_u32(&content, "llama.context_length")
            .map_or(2048, |c| c as usize)
            .min(MAX_SEQ_LEN);

        let weights = match cfg.requantize {
            Requantize::None => Llama::from_gguf(&content, &mut file, device)?,
            Requantize::Q8_0 => {
                let bytes = requantize_q4_1(&content, &mut file)?;
                let mut cursor = Cursor::new(bytes);
                let content = Content::read(&mut cursor).map_err(|e| ModelError::format(&cfg.path, e))?;
                Llama::from_gguf(&content, &mut cursor, device)?
            }
        };
        tracing::info!(
            path = %cfg.path.display(),
            context_length,
            requantize = ?cfg.requantize,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded model"
        );
        Ok(Llm { model: weights, tokenizer, template, eos_ids, context_length, sha256, device: device.clone() })
    }

    /// Render a conversation with the model's own chat template and open the
    /// assistant's turn.
    pub fn render_chat(&self, messages: &[TemplateMessage]) -> Result<String, ModelError> {
        match &self.template {
            Some(t) => t.render(messages, true),
            None => Err(ModelError::Template("the model has no chat template; use /v1/completions".into())),
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

    /// One decode step for several sequences at once: `tokens[i]` extends
    /// `caches[i]`. Returns each sequence's next-token logits.
    pub fn decode(&self, tokens: &[u32], caches: &mut [&mut KvCache]) -> Result<Vec<Vec<f32>>, ModelError> {
        let logits = self.model.decode(tokens, caches)?;
        Ok(logits.to_dtype(candle_core::DType::F32)?.to_vec2()?)
    }
}

/// Logits of one position as a flat f32 vector.
pub fn logits_vec(logits: &Tensor) -> Result<Vec<f32>, ModelError> {
    Ok(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
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
    let metadata: Vec<(&str, &gguf_file::Value)> =
        content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &metadata, &tensor_refs)?;
    Ok(out.into_inner())
}

/// `chat_template` from a Hugging Face `tokenizer_config.json`: a string, or a
/// list of named templates of which we take `default`.
pub fn template_from_tokenizer_config(path: &Path) -> Option<String> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    match json.get("chat_template")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(list) => list
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
        _ => None,
    }
}

/// The default chat model's file name under a models directory, for tests and tools.
pub fn default_model_path(models_dir: &Path) -> PathBuf {
    models_dir.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}
