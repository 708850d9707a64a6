//! A weight matrix and its matmul: the one place the transformer code multiplies
//! activations by weights. Architecture code holds `Linear`s and calls
//! [`Linear::forward`]; which kernel runs underneath is decided here, per weight
//! type and device: on the CPU, Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/Q4_K/Q5_K/Q6_K weights run this
//! crate's own kernels (`crate::kernels`); everything else (f32/f16 weights, other
//! types, CUDA) runs candle's `QMatMul`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

use crate::kernels::{self, Isa, QWeight, WeightType};

/// A `(out_features, in_features)` weight, in any GGUF/ggml quantisation or as
/// f32/f16/bf16. `forward` maps `(..., in_features)` activations to
/// `(..., out_features)`.
#[derive(Debug, Clone)]
pub struct Linear {
    kernel: Kernel,
    dtype: GgmlDType,
    out_features: usize,
    in_features: usize,
}

#[derive(Debug, Clone)]
enum Kernel {
    Candle(QMatMul),
    Cpu(Arc<QWeight>),
}

static CHOICE: AtomicU8 = AtomicU8::new(0);

/// Whether weights loaded from now on run this crate's CPU kernels (`true`) or
/// candle's matmul (`false`), overriding `TENZRO_CPU_KERNELS` and the default.
pub fn use_cpu_kernels(on: bool) {
    CHOICE.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Quantized weights loaded from now on on a CPU device are dequantised to f32 at
/// load and run candle's f32 matmul: the reference our kernels' accuracy is
/// checked against (`tests/kernels.rs`), at 4 to 8 times the memory. Ends with
/// the next [`use_cpu_kernels`].
pub fn use_dequantised_f32() {
    CHOICE.store(3, Ordering::Relaxed);
}

/// Whether weights loaded now run this crate's CPU kernels (on a CPU device).
pub fn cpu_kernels_on() -> bool {
    own_kernels()
}

/// Our kernels unless `TENZRO_CPU_KERNELS=candle`. Debug builds default to
/// candle's (they are compiled optimised as a dependency, while this crate's
/// kernels are not in a dev build, which would make every debug test of the
/// engine many times slower); `TENZRO_CPU_KERNELS=ours` or [`use_cpu_kernels`]
/// turns them on there.
fn own_kernels() -> bool {
    match CHOICE.load(Ordering::Relaxed) {
        1 => true,
        2 | 3 => false,
        _ => match std::env::var("TENZRO_CPU_KERNELS").as_deref() {
            Ok("candle") => false,
            Ok("ours") => true,
            _ => !cfg!(debug_assertions),
        },
    }
}

/// Q5_0/Q5_1 weights our fast kernels cannot read as they are, re-quantised to
/// Q8_0 at load: llama.cpp's K-quant mixes (`Q4_K_M`, `Q5_K_M`) store as Q5_0/Q5_1
/// every matrix whose rows are not whole 256-value K-quant blocks (most of a
/// small model's). Where the rows come in whole groups of 8 on an AVX2 CPU they
/// run as they are, interleaved ([`kernels::rows8`]); elsewhere only the portable
/// kernel reads them (candle's matmul for those types has no SIMD path either:
/// about 30x slower per token on the default model's `Q4_K_M` file), so they
/// become Q8_0, which re-rounds each value to within `max|block| / 254` of the
/// 5-bit one (a sixteenth of a Q5_0 step; plus the rounding of its scale to f16)
/// for 1.5x the bytes.
fn requantized_at_load(dtype: GgmlDType, rows: usize) -> bool {
    WeightType::from_ggml(dtype).is_some_and(|ty| {
        matches!(ty, WeightType::Q5_0 | WeightType::Q5_1) && !kernels::rows8::packs(ty, rows)
    })
}

/// `t` dequantised and quantised to Q8_0 for our kernels; `None` when its rows
/// are not whole 32-value blocks.
fn as_q8_0(t: &QTensor, rows: usize, cols: usize) -> Result<Option<QWeight>> {
    if !cols.is_multiple_of(32) {
        return Ok(None);
    }
    let f = t.dequantize(&candle_core::Device::Cpu)?;
    let q = QTensor::quantize(&f, GgmlDType::Q8_0)?;
    Ok(QWeight::from_slice(GgmlDType::Q8_0, rows, cols, &q.data()?).ok())
}

impl Linear {
    /// A quantized (or f16/f32, which are dequantised) weight as read from a GGUF.
    pub fn from_qtensor(t: QTensor) -> Result<Self> {
        Self::from_arc(Arc::new(t))
    }

    pub fn from_arc(t: Arc<QTensor>) -> Result<Self> {
        let (out_features, in_features) = t.shape().dims2()?;
        let dtype = t.dtype();
        if t.device().is_cpu() && CHOICE.load(Ordering::Relaxed) == 3 {
            return Self::from_tensor(t.dequantize(&t.device())?);
        }
        if t.device().is_cpu()
            && own_kernels()
            && requantized_at_load(dtype, out_features)
            && let Some(w) = as_q8_0(&t, out_features, in_features)?
        {
            return Ok(Linear {
                kernel: Kernel::Cpu(Arc::new(w)),
                dtype: GgmlDType::Q8_0,
                out_features,
                in_features,
            });
        }
        let ours = t.device().is_cpu() && own_kernels() && WeightType::from_ggml(dtype).is_some();
        let kernel = match ours {
            true => match QWeight::from_slice(dtype, out_features, in_features, &t.data()?) {
                Ok(w) => Kernel::Cpu(Arc::new(w)),
                Err(_) => Kernel::Candle(QMatMul::from_arc(t)?),
            },
            false => Kernel::Candle(QMatMul::from_arc(t)?),
        };
        Ok(Linear {
            kernel,
            dtype,
            out_features,
            in_features,
        })
    }

    /// A float weight (f32, f16 or bf16), multiplied as is.
    pub fn from_tensor(t: Tensor) -> Result<Self> {
        let (out_features, in_features) = t.dims2()?;
        let dtype = match t.dtype() {
            DType::F16 => GgmlDType::F16,
            DType::BF16 => GgmlDType::BF16,
            _ => GgmlDType::F32,
        };
        Ok(Linear {
            kernel: Kernel::Candle(QMatMul::Tensor(t)),
            dtype,
            out_features,
            in_features,
        })
    }

    /// `x` is `(..., in_features)`; returns `(..., out_features)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.kernel {
            Kernel::Candle(mm) => mm.forward(x),
            Kernel::Cpu(_) => match Self::cpu_many(&[self], x)?.and_then(|mut o| o.pop()) {
                Some(out) => self.output(out, x),
                None => candle_core::bail!("matmul returned nothing"),
            },
        }
    }

    /// Several weights applied to the same activations (q/k/v, or gate and up).
    /// On the CPU kernels the activations are quantized once and one parallel
    /// region runs every weight's rows; otherwise each runs on its own.
    pub fn forward_many(ls: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        match Self::cpu_many(ls, x)? {
            Some(outs) => ls
                .iter()
                .zip(outs)
                .map(|(l, out)| l.output(out, x))
                .collect(),
            None => ls.iter().map(|l| l.forward(x)).collect(),
        }
    }

    /// `silu(x · gateᵀ) * (x · upᵀ)`, the input of a SwiGLU MLP's down projection:
    /// one activation quantisation and one pass for the gating on the CPU kernels.
    pub fn forward_swiglu(gate: &Linear, up: &Linear, x: &Tensor) -> Result<Tensor> {
        let fused = match gate.out_features == up.out_features {
            true => Self::cpu_many(&[gate, up], x)?,
            false => None,
        };
        let Some(mut outs) = fused else {
            let g = candle_nn::ops::silu(&gate.forward(x)?)?;
            return g * up.forward(x)?;
        };
        // Popped last first: up's output, then gate's.
        let (Some(mut h), Some(g)) = (outs.pop(), outs.pop()) else {
            candle_core::bail!("gate/up matmul returned too little");
        };
        crate::kernels::vexp::silu_mul(&mut h, &g);
        gate.output(h, x)
    }

    /// `ls` applied to `rows` rows of `x` (plain f32 on the CPU), one `(rows,
    /// out_features)` output per weight: our kernels when every weight runs on
    /// them (one activation quantisation, one parallel region), else candle's
    /// matmul weight by weight.
    pub fn forward_host(ls: &[&Linear], x: &[f32], rows: usize) -> Result<Vec<Vec<f32>>> {
        let Some(first) = ls.first() else {
            return Ok(Vec::new());
        };
        let k = first.in_features;
        if x.len() != rows * k || ls.iter().any(|l| l.in_features != k) {
            candle_core::bail!(
                "matmul of {} values as {rows} rows by a {}x{k} weight",
                x.len(),
                first.out_features
            );
        }
        let ws: Vec<&QWeight> = ls
            .iter()
            .filter_map(|l| match &l.kernel {
                Kernel::Cpu(w) => Some(w.as_ref()),
                Kernel::Candle(_) => None,
            })
            .collect();
        if ws.len() == ls.len() {
            return kernels::matmul_many(&ws, x, rows, Isa::Best)
                .map_err(|e| candle_core::Error::Msg(e.0));
        }
        let xt = Tensor::from_slice(x, (rows, k), &candle_core::Device::Cpu)?;
        ls.iter()
            .map(|l| {
                l.forward(&xt)?
                    .flatten_all()?
                    .to_dtype(DType::F32)?
                    .to_vec1()
            })
            .collect()
    }

    /// The raw `(rows, out_features)` outputs of `ls` on `x` when every weight runs
    /// on the CPU kernels; `None` otherwise.
    fn cpu_many(ls: &[&Linear], x: &Tensor) -> Result<Option<Vec<Vec<f32>>>> {
        let Some(first) = ls.first() else {
            return Ok(None);
        };
        let k = first.in_features;
        let ws: Vec<&QWeight> = ls
            .iter()
            .filter_map(|l| match &l.kernel {
                Kernel::Cpu(w) if l.in_features == k => Some(w.as_ref()),
                _ => None,
            })
            .collect();
        if ws.len() != ls.len() || !x.device().is_cpu() {
            return Ok(None);
        }
        if x.dims().last() != Some(&k) {
            candle_core::bail!(
                "matmul of {:?} activations by a {}x{k} weight",
                x.dims(),
                first.out_features
            );
        }
        let m = x.elem_count() / k.max(1);
        let xs: Vec<f32> = x.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let outs = kernels::matmul_many(&ws, &xs, m, Isa::Best)
            .map_err(|e| candle_core::Error::Msg(e.0))?;
        Ok(Some(outs))
    }

    /// `out` (rows of `out_features`) shaped like `x` with its last dimension replaced.
    fn output(&self, out: Vec<f32>, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = self.out_features;
        }
        Tensor::from_vec(out, dims, x.device())?.to_dtype(x.dtype())
    }

    pub fn out_features(&self) -> usize {
        self.out_features
    }

    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The blocks our CPU kernels read, when this weight runs on them (a tied
    /// embedding table shares them).
    pub(crate) fn cpu_weight(&self) -> Option<Arc<QWeight>> {
        match &self.kernel {
            Kernel::Cpu(w) => Some(w.clone()),
            Kernel::Candle(_) => None,
        }
    }

    /// Whether this weight runs this crate's CPU kernels (else candle's matmul).
    pub fn on_cpu_kernels(&self) -> bool {
        matches!(self.kernel, Kernel::Cpu(_))
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
