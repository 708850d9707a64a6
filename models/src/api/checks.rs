//! Request rules that need no model: the ones both servers apply before any
//! work (the gateway before routing, the provider before validation against the
//! model). Each failure names the field, as OpenAI's 400s do.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;

use super::{ChatCompletionRequest, CompletionRequest, EmbeddingRequest};

/// The fields of a request we do not implement, by name.
pub type Unknown = BTreeMap<String, IgnoredAny>;

/// Most alternatives per token (`top_logprobs`, legacy `logprobs`), as OpenAI's chat.
pub const MAX_TOP_LOGPROBS: u32 = 20;
/// Most `logit_bias` entries per request.
pub const MAX_LOGIT_BIAS: usize = 1024;
/// `logit_bias` values lie in `-LOGIT_BIAS_RANGE..=LOGIT_BIAS_RANGE`.
pub const LOGIT_BIAS_RANGE: f32 = 100.0;

/// A refused field: `param` names it, `message` says what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub param: String,
    pub message: String,
}

impl FieldError {
    pub fn new(param: &str, message: impl Into<String>) -> Self {
        FieldError {
            param: param.to_owned(),
            message: message.into(),
        }
    }
}

/// The first field we do not implement, as OpenAI words it.
pub fn check_unknown(unknown: &Unknown) -> Result<(), FieldError> {
    match unknown.keys().next() {
        None => Ok(()),
        Some(name) => Err(FieldError::new(
            name,
            format!("Unrecognized request argument supplied: {name}"),
        )),
    }
}

/// `logit_bias` as `(token id, bias)` pairs: keys must be token ids written as
/// decimal strings, values in -100..=100, at most [`MAX_LOGIT_BIAS`] entries.
/// Whether an id is in the vocabulary is the provider's check ([`check_vocab`]).
pub fn logit_bias(map: Option<&BTreeMap<String, f32>>) -> Result<Vec<(u32, f32)>, FieldError> {
    let Some(map) = map else {
        return Ok(Vec::new());
    };
    if map.len() > MAX_LOGIT_BIAS {
        return Err(FieldError::new(
            "logit_bias",
            format!(
                "`logit_bias` may have at most {MAX_LOGIT_BIAS} entries, got {}",
                map.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(map.len());
    for (key, &bias) in map {
        let id = key
            .parse::<u32>()
            .ok()
            .filter(|_| key.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                FieldError::new(
                    "logit_bias",
                    format!("`logit_bias` keys must be token ids (like \"50256\"), got {key:?}"),
                )
            })?;
        if !bias.is_finite() || bias.abs() > LOGIT_BIAS_RANGE {
            return Err(FieldError::new(
                "logit_bias",
                format!(
                    "`logit_bias` values must be between -100 and 100, got {bias} for token {id}"
                ),
            ));
        }
        out.push((id, bias));
    }
    Ok(out)
}

/// Every biased token must be in the model's vocabulary.
pub fn check_vocab(bias: &[(u32, f32)], vocab: usize) -> Result<(), FieldError> {
    match bias.iter().find(|(id, _)| *id as usize >= vocab) {
        None => Ok(()),
        Some((id, _)) => Err(FieldError::new(
            "logit_bias",
            format!("`logit_bias` names token {id}, outside this model's vocabulary of {vocab}"),
        )),
    }
}

fn top_count(param: &str, k: Option<u32>) -> Result<(), FieldError> {
    match k {
        Some(k) if k > MAX_TOP_LOGPROBS => Err(FieldError::new(
            param,
            format!("`{param}` must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        )),
        _ => Ok(()),
    }
}

impl ChatCompletionRequest {
    /// The rules of [`checks`](self) for chat: unknown fields, `store`,
    /// `logprobs`/`top_logprobs`, `logit_bias`.
    pub fn check_fields(&self) -> Result<(), FieldError> {
        check_unknown(&self.unknown)?;
        if self.store == Some(true) {
            return Err(FieldError::new(
                "store",
                "`store: true` is not supported: completions are not stored",
            ));
        }
        top_count("top_logprobs", self.top_logprobs)?;
        if self.top_logprobs.is_some() && self.logprobs != Some(true) {
            return Err(FieldError::new(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        logit_bias(self.logit_bias.as_ref()).map(|_| ())
    }

    /// Alternatives per token when logprobs were asked for.
    pub fn logprobs_top(&self) -> Option<usize> {
        (self.logprobs == Some(true)).then(|| self.top_logprobs.unwrap_or(0) as usize)
    }
}

impl CompletionRequest {
    /// Unknown fields, `logprobs`, `best_of`, `logit_bias`.
    pub fn check_fields(&self) -> Result<(), FieldError> {
        check_unknown(&self.unknown)?;
        top_count("logprobs", self.logprobs)?;
        let n = self.n.unwrap_or(1);
        if let Some(b) = self.best_of
            && b != n
        {
            return Err(FieldError::new(
                "best_of",
                format!("`best_of` is not supported other than equal to `n` ({n}), got {b}"),
            ));
        }
        logit_bias(self.logit_bias.as_ref()).map(|_| ())
    }
}

impl EmbeddingRequest {
    /// Unknown fields.
    pub fn check_fields(&self) -> Result<(), FieldError> {
        check_unknown(&self.unknown)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn chat(json: &str) -> Result<(), FieldError> {
        serde_json::from_str::<ChatCompletionRequest>(json)
            .unwrap()
            .check_fields()
    }

    fn check(json: &str, expect: Option<(&str, &str)>) {
        let got = chat(json).err();
        match (got, expect) {
            (None, None) => {}
            (Some(e), Some((param, needle))) => {
                assert_eq!(e.param, param, "{json}");
                assert!(e.message.contains(needle), "{json}: {}", e.message);
            }
            (got, expect) => panic!("{json}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn chat_rules() {
        let base = r#"{"model":"m","messages":[]"#;
        let with = |rest: &str| format!("{base}{rest}}}");
        check(&with(""), None);
        check(
            &with(r#","frobnicate":1"#),
            Some((
                "frobnicate",
                "Unrecognized request argument supplied: frobnicate",
            )),
        );
        check(
            &with(r#","user":"u","metadata":{"a":"b"},"store":false"#),
            None,
        );
        check(&with(r#","tenzro":{"x":1}"#), None);
        check(&with(r#","store":true"#), Some(("store", "not stored")));
        check(&with(r#","logprobs":true,"top_logprobs":20"#), None);
        check(
            &with(r#","logprobs":true,"top_logprobs":21"#),
            Some(("top_logprobs", "between 0 and 20")),
        );
        check(
            &with(r#","top_logprobs":2"#),
            Some(("top_logprobs", "logprobs: true")),
        );
        check(
            &with(r#","logprobs":false,"top_logprobs":2"#),
            Some(("top_logprobs", "logprobs: true")),
        );
        check(&with(r#","logit_bias":{"12":-100,"7":100}"#), None);
        check(
            &with(r#","logit_bias":{"12":-101}"#),
            Some(("logit_bias", "between -100 and 100")),
        );
        check(
            &with(r#","logit_bias":{"hello":1}"#),
            Some(("logit_bias", "token ids")),
        );
        check(
            &with(r#","logit_bias":{"-3":1}"#),
            Some(("logit_bias", "token ids")),
        );
        check(
            &with(r#","logit_bias":{"+3":1}"#),
            Some(("logit_bias", "token ids")),
        );
    }

    #[test]
    fn too_many_bias_entries_are_refused() {
        let map: BTreeMap<String, f32> =
            (0..=MAX_LOGIT_BIAS).map(|i| (i.to_string(), 1.0)).collect();
        let e = logit_bias(Some(&map)).unwrap_err();
        assert!(e.message.contains("at most 1024"), "{e:?}");
        let ok: BTreeMap<String, f32> = (0..MAX_LOGIT_BIAS).map(|i| (i.to_string(), 1.0)).collect();
        assert_eq!(logit_bias(Some(&ok)).unwrap().len(), MAX_LOGIT_BIAS);
        assert!(check_vocab(&[(5, 1.0)], 6).is_ok());
        assert_eq!(check_vocab(&[(6, 1.0)], 6).unwrap_err().param, "logit_bias");
    }

    #[test]
    fn completion_and_embedding_rules() {
        let c = |json: &str| {
            serde_json::from_str::<CompletionRequest>(json)
                .unwrap()
                .check_fields()
                .err()
                .map(|e| e.param)
        };
        assert_eq!(
            c(r#"{"model":"m","prompt":"x","logprobs":5,"echo":true}"#),
            None
        );
        assert_eq!(
            c(r#"{"model":"m","prompt":"x","logprobs":21}"#).as_deref(),
            Some("logprobs")
        );
        assert_eq!(c(r#"{"model":"m","prompt":"x","n":2,"best_of":2}"#), None);
        assert_eq!(
            c(r#"{"model":"m","prompt":"x","best_of":3}"#).as_deref(),
            Some("best_of")
        );
        assert_eq!(
            c(r#"{"model":"m","prompt":"x","suffix":"y"}"#).as_deref(),
            Some("suffix")
        );
        let e = serde_json::from_str::<EmbeddingRequest>(
            r#"{"model":"m","input":"x","truncate":true}"#,
        )
        .unwrap()
        .check_fields()
        .unwrap_err();
        assert_eq!(e.param, "truncate");
    }

    #[test]
    fn unknown_and_extension_fields_are_not_forwarded() {
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[],"tenzro":{"a":1},"x":2,"logprobs":true}"#,
        )
        .unwrap();
        let out = serde_json::to_value(&r).unwrap();
        assert!(
            out.get("tenzro").is_none() && out.get("x").is_none(),
            "{out}"
        );
        assert_eq!(out["logprobs"], true);
    }
}
