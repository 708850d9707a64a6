//! The token embedding table. On the CPU a quantized table stays in its GGUF
//! blocks and only the looked-up rows are dequantised (llama.cpp does the same):
//! the default model's 49152x576 Q8_0 table is 30 MiB as blocks and was 113 MiB
//! as f32. When the output projection is tied to it, both share one copy of the
//! blocks. Other devices, float checkpoints and types without a CPU kernel keep a
//! dense f32 table.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Device, Result, Tensor};

use crate::kernels::{QWeight, WeightType};

#[derive(Debug, Clone)]
pub(crate) struct TokenEmbedding {
    table: Table,
    vocab: usize,
    hidden: usize,
    device: Device,
}

#[derive(Debug, Clone)]
enum Table {
    /// `(vocab, hidden)` f32.
    Dense(Tensor),
    /// Rows dequantised on lookup, then multiplied by `scale` (gemma's
    /// sqrt(hidden)) when there is one.
    Blocks { w: Arc<QWeight>, scale: Option<f64> },
}

impl TokenEmbedding {
    /// A dense `(vocab, hidden)` table, converted to f32.
    pub(crate) fn dense(t: &Tensor) -> Result<Self> {
        let (vocab, hidden) = t.dims2()?;
        Ok(TokenEmbedding {
            table: Table::Dense(t.to_dtype(DType::F32)?),
            vocab,
            hidden,
            device: t.device().clone(),
        })
    }

    /// A table read from a GGUF: kept in its blocks on the CPU when a kernel reads
    /// its type (`shared`: the tied output projection's copy of the same blocks),
    /// else dequantised.
    pub(crate) fn from_qtensor(
        t: &QTensor,
        shared: Option<Arc<QWeight>>,
        device: &Device,
    ) -> Result<Self> {
        let (vocab, hidden) = t.shape().dims2()?;
        let blocks = match shared {
            Some(w) if w.rows() == vocab && w.cols() == hidden => Some(w),
            _ if device.is_cpu() && WeightType::from_ggml(t.dtype()).is_some() => {
                QWeight::from_slice(t.dtype(), vocab, hidden, &t.data()?)
                    .ok()
                    .map(Arc::new)
            }
            _ => None,
        };
        match blocks {
            Some(w) if device.is_cpu() => Ok(TokenEmbedding {
                table: Table::Blocks { w, scale: None },
                vocab,
                hidden,
                device: device.clone(),
            }),
            _ => Self::dense(&t.dequantize(device)?),
        }
    }

    /// Every row multiplied by `scale`.
    pub(crate) fn scaled(self, scale: f64) -> Result<Self> {
        let table = match self.table {
            Table::Dense(t) => Table::Dense((t * scale)?),
            Table::Blocks { w, scale: s } => Table::Blocks {
                w,
                scale: Some(s.unwrap_or(1.0) * scale),
            },
        };
        Ok(TokenEmbedding { table, ..self })
    }

    pub(crate) fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// The rows of `tokens`, `(tokens.len(), hidden)` as plain f32.
    pub(crate) fn rows(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= self.vocab) {
            candle_core::bail!("token {t} is outside the vocabulary of {}", self.vocab);
        }
        let mut x = Vec::with_capacity(tokens.len() * self.hidden);
        match &self.table {
            Table::Dense(table) => {
                let table = table.to_device(&Device::Cpu)?;
                let (storage, layout) = table.storage_and_layout();
                let all = super::host_f32(&storage, layout)?;
                for &t in tokens {
                    let t = t as usize;
                    x.extend_from_slice(&all[t * self.hidden..(t + 1) * self.hidden]);
                }
            }
            Table::Blocks { w, scale } => {
                for &t in tokens {
                    let at = x.len();
                    w.dequantize_row(t as usize, &mut x)
                        .map_err(|e| candle_core::Error::Msg(e.0))?;
                    if let Some(s) = scale {
                        // As candle's `Tensor * f64` on f32: the factor rounded to f32.
                        let s = *s as f32;
                        x[at..].iter_mut().for_each(|v| *v *= s);
                    }
                }
            }
        }
        Ok(x)
    }

    /// The rows of `tokens` as a `(tokens.len(), hidden)` f32 tensor on the model's device.
    pub(crate) fn forward(&self, tokens: &[u32]) -> Result<Tensor> {
        match &self.table {
            Table::Dense(table) => {
                // candle's `Embedding::forward` for one-dimensional ids.
                table.index_select(&Tensor::new(tokens, &self.device)?, 0)
            }
            Table::Blocks { .. } => {
                let x = self.rows(tokens)?;
                Tensor::from_vec(x, (tokens.len(), self.hidden), &self.device)
            }
        }
    }
}
