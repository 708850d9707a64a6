//! A chat/completion model loaded from a GGUF file: weights, tokenizer, template.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use tokenizers::Tokenizer;

use crate::gguf::{md_string, md_u32, read_content, tokenizer_from_gguf};
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

/// A loaded causal language model. `weights` carries no sequence state until
/// cloned into a sequence (the KV cache lives in the clone).
pub struct Llm {
    pub weights: ModelWeights,
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
            if let Some(id) = tokenizer.token_to_id(marker) {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        let template = md_string(&content, "tokenizer.chat_template")
            .map(|src| ChatTemplate::new(src, bos_token, eos_token))
            .transpose()?;
        let context_length = md_u32(&content, "llama.context_length")
            .map_or(2048, |c| c as usize)
            .min(MAX_SEQ_LEN);

        let weights = match cfg.requantize {
            Requantize::None => ModelWeights::from_gguf(content, &mut file, device)?,
            Requantize::Q8_0 => {
                let bytes = requantize_q4_1(&content, &mut file)?;
                let mut cursor = Cursor::new(bytes);
                let content = Content::read(&mut cursor).map_err(|e| ModelError::format(&cfg.path, e))?;
                ModelWeights::from_gguf(content, &mut cursor, device)?
            }
        };
        tracing::info!(
            path = %cfg.path.display(),
            context_length,
            requantize = ?cfg.requantize,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "loaded model"
        );
        Ok(Llm { weights, tokenizer, template, eos_ids, context_length, sha256, device: device.clone() })
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

    /// Run the prompt through a fresh copy of the weights; returns the sequence
    /// (weights + its KV cache) and the logits for the next token.
    pub fn prefill(&self, prompt: &[u32]) -> Result<(ModelWeights, Vec<f32>), ModelError> {
        let mut seq = self.weights.clone();
        seq.clear_kv_cache();
        let input = Tensor::new(prompt, &self.device)?.unsqueeze(0)?;
        let logits = seq.forward(&input, 0)?;
        Ok((seq, logits_vec(&logits)?))
    }
}

/// Logits of one position as a flat f32 vector.
pub fn logits_vec(logits: &Tensor) -> Result<Vec<f32>, ModelError> {
    Ok(logits.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()?)
}

/// Decode one token with a sequence's cached state.
pub fn decode_step(seq: &mut ModelWeights, token: u32, pos: usize, device: &Device) -> Result<Vec<f32>, ModelError> {
    let input = Tensor::new(&[token], device)?.unsqueeze(0)?;
    let logits = seq.forward(&input, pos)?;
    logits_vec(&logits)
}

/// Write an in-memory GGUF where every Q4_1 tensor became Q8_0.
fn requantize_q4_1(content: &Content, file: &mut std::fs::File) -> Result<Vec<u8>, ModelError> {
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

/// The default chat model's file name under a models directory, for tests and tools.
pub fn default_model_path(models_dir: &Path) -> PathBuf {
    models_dir.join("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}
