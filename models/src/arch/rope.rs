//! RoPE frequency scaling for contexts longer than a model was pretrained on.
//!
//! RoPE rotates pair i of a head by `position * inv_freq[i]`, with
//! `inv_freq[i] = 1 / base^(2i / rope_dim)`. A scaling rewrites those frequencies
//! once, when the model's tables are built:
//!
//! - `linear` (Gemma 3 4B and up, older long-context llamas): every frequency is
//!   divided by `factor` (positions are interpolated).
//! - `llama3` (every Llama 3.1, 3.2 and 3.3 config): wavelengths shorter than
//!   `original_max_position_embeddings / high_freq_factor` are kept, those longer
//!   than `original_max_position_embeddings / low_freq_factor` are divided by
//!   `factor`, and those between are blended smoothly (Hugging Face's
//!   `_compute_llama3_parameters`, candle-transformers' llama).
//! - per-frequency divisors: llama.cpp's converter writes the llama3 scaling as a
//!   `rope_freqs.weight` tensor of `rope_dim / 2` factors, frequency i divided by
//!   factor i.
//! - `longrope` (Phi-3 128k, Phi-3.5, Phi-4-mini): frequency i divided by
//!   `short_factor[i]`, and cos and sin multiplied by the attention factor
//!   (`attention_factor`, else sqrt(1 + ln(s) / ln(original)) with s =
//!   `max_position_embeddings / original_max_position_embeddings`). Hugging Face
//!   switches to `long_factor` once a sequence outgrows
//!   `original_max_position_embeddings`; the engine's tables stop at
//!   [`crate::llama::MAX_SEQ_LEN`] positions, so a model whose original context is
//!   at least that never switches, and one whose is shorter is refused. In GGUF
//!   files: the `rope_factors_short.weight` tensor and
//!   `{arch}.rope.scaling.attn_factor`.
//!
//! In `config.json` the scaling is `rope_scaling: {"rope_type": ..., ...}` (older
//! configs say `type`); `default` means none. In GGUF files it is
//! `{arch}.rope.scaling.type` with `{arch}.rope.scaling.factor`, and the
//! `rope_freqs.weight` tensor. Others (`yarn`, `dynamic`) are refused by name. Gemma 3's local (windowed) layers are never scaled: their tables come
//! from `rope_local_base_freq` alone, as in Hugging Face and llama.cpp.

use serde_json::Value;

/// How RoPE's frequencies are rescaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// Every frequency divided by `factor`.
    Linear { factor: f32 },
    /// Llama 3.1's: long wavelengths divided by `factor`, short ones kept, those
    /// between blended.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: f32,
    },
    /// Frequency i divided by entry i (llama.cpp's `rope_freqs` tensor).
    Divisors(Vec<f32>),
    /// Longrope within the original context: frequency i divided by
    /// `short_factor[i]`, cos and sin times `attention_factor`.
    LongRope {
        short_factor: Vec<f32>,
        attention_factor: f32,
    },
}

/// The `rope_scaling` types served (for error messages).
pub const SUPPORTED: &str = "default, linear, llama3, longrope";

/// The `config.json` fields besides `rope_scaling` that longrope reads.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    pub max_position_embeddings: usize,
    pub original_max_position_embeddings: Option<usize>,
}

impl RopeScaling {
    /// A `config.json` `rope_scaling` value; `None` for absent, `null` or
    /// `default`. The error names the type or field at fault.
    pub fn from_hf(value: Option<&Value>, context: Context) -> Result<Option<RopeScaling>, String> {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let obj = value
            .as_object()
            .ok_or("rope_scaling must be an object or null")?;
        let kind = obj
            .get("rope_type")
            .or_else(|| obj.get("type"))
            .and_then(Value::as_str)
            .ok_or("rope_scaling has no `rope_type`")?;
        let positive = |key: &str| -> Result<f32, String> {
            obj.get(key)
                .and_then(Value::as_f64)
                .filter(|x| x.is_finite() && *x > 0.0 && *x < 1e9)
                .map(|x| x as f32)
                .ok_or_else(|| format!("rope_scaling.{key} must be a positive number"))
        };
        match kind {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear {
                factor: positive("factor")?,
            })),
            "llama3" => {
                let (low, high) = (positive("low_freq_factor")?, positive("high_freq_factor")?);
                if high <= low {
                    return Err(format!(
                        "rope_scaling.high_freq_factor ({high}) must exceed low_freq_factor ({low})"
                    ));
                }
                Ok(Some(RopeScaling::Llama3 {
                    factor: positive("factor")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: positive("original_max_position_embeddings")?,
                }))
            }
            "longrope" | "su" => long_rope(obj, context).map(Some),
            other => Err(format!(
                "rope_scaling type `{other}` is not supported (supported: {SUPPORTED})"
            )),
        }
    }

    /// What cos and sin are multiplied by (longrope's attention factor), if not 1.
    pub fn attention_factor(&self) -> Option<f32> {
        match self {
            RopeScaling::LongRope {
                attention_factor, ..
            } if *attention_factor != 1.0 => Some(*attention_factor),
            _ => None,
        }
    }

    /// Rescale `inv_freq` (one entry per rotated pair) in place.
    pub fn apply(&self, inv_freq: &mut [f32]) -> Result<(), String> {
        match self {
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: original,
            } => {
                let low_freq_wavelen = original / low_freq_factor;
                let high_freq_wavelen = original / high_freq_factor;
                for freq in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *freq;
                    if wavelen < high_freq_wavelen {
                        continue;
                    }
                    if wavelen > low_freq_wavelen {
                        *freq /= factor;
                    } else {
                        let smooth = (original / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        *freq = (1.0 - smooth) * *freq / factor + smooth * *freq;
                    }
                }
            }
            RopeScaling::Divisors(divisors) => {
                if divisors.len() != inv_freq.len() {
                    return Err(format!(
                        "rope_freqs has {} factors, RoPE rotates {} pairs",
                        divisors.len(),
                        inv_freq.len()
                    ));
                }
                if let Some(bad) = divisors.iter().find(|d| !(d.is_finite() && **d > 0.0)) {
                    return Err(format!("rope_freqs has a factor {bad} (must be positive)"));
                }
                inv_freq.iter_mut().zip(divisors).for_each(|(f, d)| *f /= d);
            }
            RopeScaling::LongRope { short_factor, .. } => {
                RopeScaling::Divisors(short_factor.clone()).apply(inv_freq)?;
            }
        }
        Ok(())
    }
}

/// Hugging Face's `_compute_longrope_parameters`, for sequences within the
/// original context (see the top).
fn long_rope(
    obj: &serde_json::Map<String, Value>,
    context: Context,
) -> Result<RopeScaling, String> {
    let short_factor: Vec<f32> = obj
        .get("short_factor")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().map(|v| v.as_f64().map(|x| x as f32)).collect())
        .ok_or("rope_scaling.short_factor must be a list of numbers")?;
    let max = context.max_position_embeddings;
    let (original, factor) = match context.original_max_position_embeddings {
        Some(original) if original > 0 => (original, max as f64 / original as f64),
        Some(_) => return Err("original_max_position_embeddings must be positive".into()),
        None => (
            max,
            obj.get("factor").and_then(Value::as_f64).unwrap_or(1.0),
        ),
    };
    let limit = crate::llama::MAX_SEQ_LEN.min(max);
    if original < limit {
        return Err(format!(
            "rope_scaling longrope switches to long_factor past original_max_position_embeddings \
             ({original}), within the {limit} positions served: not supported"
        ));
    }
    let attention_factor = match obj.get("attention_factor").filter(|v| !v.is_null()) {
        Some(v) => v
            .as_f64()
            .filter(|a| a.is_finite() && *a > 0.0)
            .ok_or("rope_scaling.attention_factor must be a positive number")?,
        None if factor > 1.0 => (1.0 + factor.ln() / (original as f64).ln()).sqrt(),
        None => 1.0,
    };
    Ok(RopeScaling::LongRope {
        short_factor,
        attention_factor: attention_factor as f32,
    })
}

/// RoPE's inverse frequencies for `dim` rotated dimensions with base `base`,
/// rescaled by `scaling`.
pub fn inv_freqs(dim: usize, base: f32, scaling: Option<&RopeScaling>) -> Result<Vec<f32>, String> {
    let mut inv: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / dim as f32))
        .collect();
    if let Some(s) = scaling {
        s.apply(&mut inv)?;
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use serde_json::json;

    const CONTEXT: Context = Context {
        max_position_embeddings: 131_072,
        original_max_position_embeddings: None,
    };

    fn parse(v: Value) -> Result<Option<RopeScaling>, String> {
        RopeScaling::from_hf(Some(&v), CONTEXT)
    }

    #[test]
    fn configs_parse_and_others_are_refused_by_name() {
        assert_eq!(RopeScaling::from_hf(None, CONTEXT), Ok(None));
        assert_eq!(parse(Value::Null), Ok(None));
        assert_eq!(parse(json!({"rope_type": "default"})), Ok(None));
        assert_eq!(
            parse(json!({"type": "linear", "factor": 8.0})),
            Ok(Some(RopeScaling::Linear { factor: 8.0 }))
        );
        // Llama-3.2-1B-Instruct's config.
        let llama32 = json!({"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"});
        assert!(matches!(
            parse(llama32),
            Ok(Some(RopeScaling::Llama3 { factor: 32.0, .. }))
        ));
        let err = parse(json!({"type": "yarn", "factor": 4.0})).unwrap_err();
        assert!(
            err.contains("`yarn` is not supported") && err.contains("llama3"),
            "{err}"
        );
        let err = parse(json!({"rope_type": "linear"})).unwrap_err();
        assert!(err.contains("rope_scaling.factor"), "{err}");
        let err = parse(
            json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
        )
        .unwrap_err();
        assert!(err.contains("high_freq_factor"), "{err}");
        assert!(parse(json!(["linear"])).is_err());
    }

    /// Llama 3.1's scaling, by hand: head_dim 128, base 500 000, factor 8,
    /// low 1, high 4, original context 8192 (what every Llama 3.1 config says).
    #[test]
    fn llama3_keeps_short_wavelengths_divides_long_ones_and_blends_between() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let plain = inv_freqs(128, 500_000.0, None).unwrap();
        let scaled = inv_freqs(128, 500_000.0, Some(&s)).unwrap();
        let mut kinds = [0; 3];
        for (p, q) in plain.iter().zip(&scaled) {
            let wavelen = 2.0 * std::f32::consts::PI / p;
            if wavelen < 2048.0 {
                assert_eq!(p, q);
                kinds[0] += 1;
            } else if wavelen > 8192.0 {
                assert!((q - p / 8.0).abs() <= 1e-7 * p, "{p} {q}");
                kinds[2] += 1;
            } else {
                assert!(*q < *p && *q > p / 8.0, "{p} {q}");
                kinds[1] += 1;
            }
        }
        assert!(kinds.iter().all(|&k| k > 0), "{kinds:?}");
    }

    /// Phi-3.5-mini's numbers: 131 072 positions over an original 4096, so the
    /// attention factor is sqrt(1 + ln 32 / ln 4096).
    #[test]
    fn longrope_uses_short_factors_and_the_attention_factor() {
        let phi35 = Context {
            max_position_embeddings: 131_072,
            original_max_position_embeddings: Some(4096),
        };
        let value = json!({"type": "longrope", "short_factor": [1.0, 1.5, 2.0, 4.0],
                           "long_factor": [1.0, 8.0, 16.0, 32.0]});
        let s = RopeScaling::from_hf(Some(&value), phi35).unwrap().unwrap();
        let a = s.attention_factor().unwrap();
        assert!(
            (a - (1.0 + 32f32.ln() / 4096f32.ln()).sqrt()).abs() < 1e-6,
            "{a}"
        );
        let plain = inv_freqs(8, 10_000.0, None).unwrap();
        let scaled = inv_freqs(8, 10_000.0, Some(&s)).unwrap();
        for (i, d) in [1.0, 1.5, 2.0, 4.0].iter().enumerate() {
            assert_eq!(scaled[i], plain[i] / d);
        }
        // An explicit attention factor wins; none when the context is not extended.
        let explicit = json!({"type": "longrope", "short_factor": [1.0], "attention_factor": 1.25});
        let s = RopeScaling::from_hf(Some(&explicit), phi35)
            .unwrap()
            .unwrap();
        assert_eq!(s.attention_factor(), Some(1.25));
        let same = Context {
            max_position_embeddings: 4096,
            original_max_position_embeddings: Some(4096),
        };
        let s = RopeScaling::from_hf(Some(&value), same).unwrap().unwrap();
        assert_eq!(s.attention_factor(), None);
        // An original context shorter than the positions served would switch factors.
        let short = Context {
            max_position_embeddings: 131_072,
            original_max_position_embeddings: Some(2048),
        };
        let err = RopeScaling::from_hf(Some(&value), short).unwrap_err();
        assert!(err.contains("long_factor"), "{err}");
        let err = RopeScaling::from_hf(Some(&json!({"type": "longrope"})), phi35).unwrap_err();
        assert!(err.contains("short_factor"), "{err}");
    }

    #[test]
    fn linear_and_divisors_divide() {
        let plain = inv_freqs(8, 10_000.0, None).unwrap();
        let linear = inv_freqs(8, 10_000.0, Some(&RopeScaling::Linear { factor: 4.0 })).unwrap();
        let divisors = RopeScaling::Divisors(vec![1.0, 2.0, 4.0, 8.0]);
        let divided = inv_freqs(8, 10_000.0, Some(&divisors)).unwrap();
        for i in 0..4 {
            assert_eq!(linear[i], plain[i] / 4.0);
            assert_eq!(divided[i], plain[i] / (1 << i) as f32);
        }
        let short = RopeScaling::Divisors(vec![1.0; 3]);
        assert!(inv_freqs(8, 10_000.0, Some(&short)).is_err());
        let zero = RopeScaling::Divisors(vec![1.0, 0.0, 1.0, 1.0]);
        assert!(inv_freqs(8, 10_000.0, Some(&zero)).is_err());
    }
}
