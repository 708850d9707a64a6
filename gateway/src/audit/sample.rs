//! A served answer offered for audit, and what of it can be judged: the prompt the
//! provider continued and the answer it served. Plain JSON reading, no I/O.

use bytes::Bytes;
use serde_json::Value;

use crate::providers::entry::ProviderEntry;

/// A served, completed answer, as the request path hands it over (the bodies are
/// reference-counted, so building one copies nothing; a streamed answer's text is
/// the one copy, see [`super::tap`]).
#[derive(Debug, Clone)]
pub struct Sample {
    pub request_id: String,
    pub provider: String,
    /// The provider's endpoint (an auditor at the same address is not asked).
    pub endpoint: String,
    pub model: String,
    /// The weight digest the provider declared for `model`.
    pub weight_sha256: Option<String>,
    /// `/v1/chat/completions` (else `/v1/completions`).
    pub chat: bool,
    /// The client streamed the answer (`response` is then its text in the
    /// non-streamed shape, rebuilt by [`super::tap`]).
    pub streamed: bool,
    /// The request body sent upstream.
    pub request: Bytes,
    /// The provider's whole answer.
    pub response: Bytes,
}

impl Sample {
    pub fn new(
        request_id: &str,
        entry: &ProviderEntry,
        model: &str,
        path: &str,
        request: Bytes,
        response: Bytes,
    ) -> Sample {
        Sample {
            request_id: request_id.to_owned(),
            provider: entry.info.id.clone(),
            endpoint: entry.info.endpoint.clone(),
            model: model.to_owned(),
            weight_sha256: entry
                .info
                .model(model)
                .and_then(|m| m.info.weight_sha256.clone()),
            chat: path.ends_with("/chat/completions"),
            streamed: false,
            request,
            response,
        }
    }
}

/// The prompt as the provider saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    /// A legacy completion's prompt, continued as is.
    Text(String),
    /// Chat messages, rendered by the auditor's own template.
    Chat(Value),
}

/// What an audit scores: the prompt and the answer served to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub prompt: Prompt,
    /// The served answer (cut to the configured bytes at a character boundary).
    pub answer: String,
    /// The request's temperature (OpenAI's default 1 when absent; 0: greedy).
    pub temperature: f64,
}

/// Reads the case out of a sample; `Err` says why it cannot be audited (a skip,
/// never the provider's fault).
pub fn case(s: &Sample, max_request_bytes: usize, max_answer_bytes: usize) -> Result<Case, String> {
    if s.request.len() > max_request_bytes {
        return Err(format!(
            "request of {} bytes (over {max_request_bytes})",
            s.request.len()
        ));
    }
    let req: Value = serde_json::from_slice(&s.request).map_err(|e| format!("request: {e}"))?;
    let resp: Value = serde_json::from_slice(&s.response).map_err(|e| format!("response: {e}"))?;
    sampling_covered(&req)?;
    let choice = resp
        .get("choices")
        .and_then(|c| c.get(0))
        .ok_or("response without choices")?;
    let (prompt, answer) = if s.chat {
        for field in ["tools", "tool_choice", "functions", "response_format"] {
            if req.get(field).is_some_and(|v| !v.is_null()) {
                return Err(format!("chat request with `{field}`"));
            }
        }
        let messages = req
            .get("messages")
            .filter(|m| m.is_array())
            .ok_or("no messages")?;
        let msg = choice.get("message").ok_or("choice without a message")?;
        if msg.get("tool_calls").is_some_and(|v| !v.is_null()) {
            return Err("answer with tool calls".into());
        }
        let text = msg
            .get("content")
            .and_then(Value::as_str)
            .ok_or("no content")?;
        (Prompt::Chat(messages.clone()), text)
    } else {
        for field in ["echo", "suffix", "response_format"] {
            if req
                .get(field)
                .is_some_and(|v| !v.is_null() && v != &Value::Bool(false))
            {
                return Err(format!("completion request with `{field}`"));
            }
        }
        let prompt = match req.get("prompt") {
            Some(Value::String(p)) => p.clone(),
            Some(Value::Array(a)) if a.len() == 1 => {
                a[0].as_str().ok_or("a prompt of token ids")?.to_owned()
            }
            _ => return Err("not a single text prompt".into()),
        };
        let text = choice
            .get("text")
            .and_then(Value::as_str)
            .ok_or("no text")?;
        (Prompt::Text(prompt), text)
    };
    if answer.is_empty() {
        return Err("empty answer".into());
    }
    Ok(Case {
        prompt,
        answer: cut(answer, max_answer_bytes).to_owned(),
        temperature: req
            .get("temperature")
            .and_then(Value::as_f64)
            .unwrap_or(1.0)
            .max(0.0),
    })
}

/// Whether the request's sampling is one the statistic's honest bound covers
/// (temperature at most 1, truncation only); `Err` names what is not.
fn sampling_covered(req: &Value) -> Result<(), String> {
    if let Some(t) = req.get("temperature").and_then(Value::as_f64)
        && t > 1.0
    {
        return Err(format!("temperature {t} above 1"));
    }
    for field in ["frequency_penalty", "presence_penalty"] {
        if req
            .get(field)
            .and_then(Value::as_f64)
            .is_some_and(|v| v != 0.0)
        {
            return Err(format!("`{field}` set"));
        }
    }
    if req
        .get("repetition_penalty")
        .and_then(Value::as_f64)
        .is_some_and(|v| v != 1.0)
    {
        return Err("`repetition_penalty` set".into());
    }
    if req
        .get("logit_bias")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty())
    {
        return Err("`logit_bias` set".into());
    }
    Ok(())
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
