//! A weight matrix and its matmul: the one place the transformer code multiplies
//! activations by weights. Architecture code holds `Linear`s and calls
//! [`Linear::forward`]; which kernel runs underneath (candle's `QMatMul`, or this
//! crate's own quantized CPU kernels) is decided here, per weight type and device.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Module, Result, Tensor};

/// A `(out_features, in_features)` weight, in any GGUF/ggml quantisation or as
/// f32/f16/bf16. `forward` maps `(..., in_features)` activations to
/// `(..., out_features)`.
#[derive(Debug, Clone)]
pub struct Linear {
    inner: QMatMul,
    dtype: GgmlDType,
    out_features: usize,
    in_features: usize,
}

impl Linear {
    /// A quantized (or f16/f32, which are dequantised) weight as read from a GGUF.
    pub fn from_qtensor(t: QTensor) -> Result<Self> {
        Self::from_arc(Arc::new(t))
    }

    pub fn from_arc(t: Arc<QTensor>) -> Result<Self> {
        let (out_features, in_features) = t.shape().dims2()?;
        let dtype = t.dtype();
        Ok(Linear {
            inner: QMatMul::from_arc(t)?,
            dtype,
            out_features,
            in_features,
        })
    }

    /// A float weight (f32, f16 or bf16), multiplied as is.
    pub fn from_tensor(t: Tensor) -> Result<Self> {
        let (out_features, in_features) = t.dims2()?;
        let dtype = match t.dtype() {
            candle_core::DType::F16 => GgmlDType::F16,
            candle_core::DType::BF16 => GgmlDType::BF16,
            _ => GgmlDType::F32,
        };
        Ok(Linear {
            inner: QMatMul::Tensor(t),
            dtype,
            out_features,
            in_features,
        })
    }

    /// `x` is `(..., in_features)`; returns `(..., out_features)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.forward(x)
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// How the weight is stored.
    pub fn dtype(&self) -> GgmlDType {
        self.dtype
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear::forward(self, x)
    }
}
