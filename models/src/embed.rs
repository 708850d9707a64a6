//! Sentence embeddings with candle's BERT: mean pooling over real tokens, then
//! L2 normalisation (what sentence-transformers does for all-MiniLM-L6-v2).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer};

use crate::{ModelError, digest};

#[derive(Debug, Clone)]
pub struct EmbedderConfig {
    /// Directory with `model.safetensors`, `config.json`, `tokenizer.json`.
    pub dir: PathBuf,
    /// Expected SHA-256 of `model.safetensors`.
    pub sha256: Option<String>,
}

pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    /// Longest input in tokens (the model's position table).
    pub max_tokens: usize,
    pub dimensions: usize,
    pub sha256: String,
    device: Device,
}

/// An input that does not fit.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("input {index} has {tokens} tokens; this model takes at most {max}")]
    TooLong {
        index: usize,
        tokens: usize,
        max: usize,
    },
    #[error("input {index} has token id {id}, outside the vocabulary of {vocab}")]
    BadToken { index: usize, id: u32, vocab: usize },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// What to embed: texts, or token ids already tokenized by the caller.
pub enum EmbedInput {
    Texts(Vec<String>),
    Tokens(Vec<Vec<u32>>),
}

impl Embedder {
    pub fn load(cfg: &EmbedderConfig, device: &Device) -> Result<Self, ModelError> {
        let weights = cfg.dir.join("model.safetensors");
        let sha256 = digest::verify_file(&weights, cfg.sha256.as_deref())?;
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| ModelError::Io {
                path: p.to_owned(),
                source,
            })
        };
        let config_path = cfg.dir.join("config.json");
        let config: Config = serde_json::from_slice(&read(&config_path)?)
            .map_err(|e| ModelError::format(&config_path, e))?;
        let tok_path = cfg.dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        tokenizer.with_padding(Some(PaddingParams::default()));
        tokenizer
            .with_truncation(None)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let vb = VarBuilder::from_buffered_safetensors(read(&weights)?, DType::F32, device)?;
        let model = BertModel::load(vb, &config)?;
        Ok(Embedder {
            model,
            tokenizer,
            max_tokens: config.max_position_embeddings,
            dimensions: config.hidden_size,
            sha256,
            device: device.clone(),
        })
    }

    /// Token ids of each text, with the model's special tokens.
    pub fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>, ModelError> {
        let mut out = Vec::with_capacity(texts.len());
        for t in texts {
            let enc = self
                .tokenizer
                .encode(t.as_str(), true)
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            out.push(enc.get_ids().to_vec());
        }
        Ok(out)
    }

    /// Embed each input; returns unit vectors and the number of tokens used.
    pub fn embed(&self, input: EmbedInput) -> Result<(Vec<Vec<f32>>, usize), EmbedError> {
        let ids = match input {
            EmbedInput::Texts(texts) => self.tokenize(&texts)?,
            EmbedInput::Tokens(ids) => ids,
        };
        let vocab = self.tokenizer.get_vocab_size(true);
        for (index, seq) in ids.iter().enumerate() {
            if seq.len() > self.max_tokens {
                return Err(EmbedError::TooLong {
                    index,
                    tokens: seq.len(),
                    max: self.max_tokens,
                });
            }
            if let Some(&id) = seq.iter().find(|&&id| id as usize >= vocab) {
                return Err(EmbedError::BadToken { index, id, vocab });
            }
        }
        let used = ids.iter().map(Vec::len).sum();
        let mut out = Vec::with_capacity(ids.len());
        // Small batches keep padding waste and peak memory low.
        for chunk in ids.chunks(16) {
            out.extend(self.embed_batch(chunk).map_err(EmbedError::Model)?);
        }
        Ok((out, used))
    }

    fn embed_batch(&self, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, ModelError> {
        let width = ids.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let mut flat = Vec::with_capacity(ids.len() * width);
        let mut mask = Vec::with_capacity(ids.len() * width);
        for seq in ids {
            flat.extend(
                seq.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, width - seq.len())),
            );
            mask.extend((0..width).map(|i| u32::from(i < seq.len())));
        }
        let shape = (ids.len(), width);
        let input = Tensor::from_vec(flat, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = input.zeros_like()?;
        let hidden = self.model.forward(&input, &types, Some(&mask))?;
        // Mean over real tokens only.
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2()?)
    }
}
