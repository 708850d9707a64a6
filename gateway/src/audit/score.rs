//! Asking the auditor: its rendering of a chat prompt (`/tokenize` with
//! `messages`), and its teacher-forced scoring of prompt + answer (`/v1/completions`
//! with `echo: true, logprobs: k, max_tokens: 0`), read into the statistic's
//! [`ScoredToken`]s. Every call is bounded in time and in the bytes read.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use super::stat::ScoredToken;

/// Most positions an auditor's scoring may report (more is a malformed answer).
pub const MAX_POSITIONS: usize = 65_536;

/// The scoring request for `text` (prompt + answer) on the auditor.
pub fn scoring_body(model: &str, text: &str, k: u32) -> Value {
    json!({
        "model": model,
        "prompt": text,
        "max_tokens": 0,
        "echo": true,
        "logprobs": k,
    })
}

/// The answer's tokens in the auditor's legacy logprobs: those starting at or after
/// character `prompt_chars` (a token straddling the boundary belongs to the prompt).
pub fn scored_tokens(resp: &Value, prompt_chars: usize) -> Result<Vec<ScoredToken>, String> {
    let lp = resp
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("logprobs"))
        .ok_or("the auditor's answer has no choices[0].logprobs")?;
    let list = |name: &str| {
        lp.get(name)
            .and_then(Value::as_array)
            .ok_or_else(|| format!("the auditor's logprobs have no `{name}` list"))
    };
    let (tokens, lps, tops, offsets) = (
        list("tokens")?,
        list("token_logprobs")?,
        list("top_logprobs")?,
        list("text_offset")?,
    );
    let n = tokens.len();
    if n > MAX_POSITIONS || lps.len() != n || tops.len() != n || offsets.len() != n {
        return Err(format!(
            "the auditor's logprobs lists differ in length or are too long ({n} tokens)"
        ));
    }
    let mut out = Vec::new();
    let rows = tokens.iter().zip(lps).zip(tops).zip(offsets);
    for (((token, logprob), top), off) in rows {
        let off = off.as_u64().ok_or("a text_offset is not a number")?;
        if (off as usize) < prompt_chars {
            continue;
        }
        let token = token.as_str().ok_or("a token is not a string")?;
        let logprob = logprob.as_f64().ok_or("an answer token has no logprob")?;
        let top = top
            .as_object()
            .ok_or("an answer token has no top_logprobs")?;
        let top_logprobs: Vec<f64> = top.values().filter_map(Value::as_f64).collect();
        if top_logprobs.is_empty() {
            return Err("an answer token has empty top_logprobs".into());
        }
        out.push(ScoredToken {
            logprob,
            in_top_k: top.contains_key(token),
            top_logprobs,
        });
    }
    Ok(out)
}

/// POSTs `body` to `url` and reads a JSON answer of at most `max_bytes`, all within
/// `timeout`; `Err` describes the failure.
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Value, String> {
    send_json(client.post(url).json(body), url, timeout, max_bytes).await
}

/// Sends `req` (to `url`, named in errors) and reads a JSON answer of at most
/// `max_bytes`, all within `timeout`; `Err` describes the failure.
pub async fn send_json(
    req: reqwest::RequestBuilder,
    url: &str,
    timeout: Duration,
    max_bytes: usize,
) -> Result<Value, String> {
    let call = async {
        let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status();
        let mut stream = resp.bytes_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| format!("{url}: {e}"))?;
            if buf.len() + chunk.len() > max_bytes {
                return Err(format!("{url}: answer larger than {max_bytes} bytes"));
            }
            buf.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&buf);
            return Err(format!(
                "{url}: HTTP {}: {}",
                status.as_u16(),
                super::sample::cut(&text, 300)
            ));
        }
        serde_json::from_slice::<Value>(&buf).map_err(|e| format!("{url}: {e}"))
    };
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| format!("{url}: no answer within {} ms", timeout.as_millis()))?
}
