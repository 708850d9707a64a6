//! Reading a streamed chat answer: server-sent event lines, and what each event says.
//!
//! The gateway ends a stream's cost in an SSE comment `: x-tenzro-cost=N
//! x-tenzro-asset=A` just before `data: [DONE]` (the stream's headers leave before
//! the cost is known), and in `usage.cost` of the usage chunk.

use serde_json::Value;

/// Longest SSE line kept; a longer one ends the stream with an error.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Splits a byte stream into lines (`\n` or `\r\n`), across reads.
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the server sent an SSE line longer than {} bytes", MAX_LINE_BYTES)]
pub struct LineTooLong;

impl Lines {
    /// Appends `bytes` and returns the lines they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, LineTooLong> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                out.push(String::from_utf8_lossy(&line).into_owned());
            } else if self.buf.len() >= MAX_LINE_BYTES {
                return Err(LineTooLong);
            } else {
                self.buf.push(b);
            }
        }
        Ok(out)
    }
}

/// What one SSE line means to the chat.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Answer text to print.
    Text(String),
    /// The usage chunk: token counts, and the cost when the server prices.
    Usage {
        prompt: u64,
        completion: u64,
        cost: Option<u128>,
        asset: Option<String>,
    },
    /// The trailing cost comment.
    Cost {
        cost: u128,
        asset: String,
    },
    /// The provider's signed receipt (kept, not printed).
    Receipt(Value),
    /// An `error` event: the stream was cut.
    Error(String),
    Done,
}

/// The events of one line (a chunk may carry text, a receipt and usage at once).
pub fn events(line: &str) -> Vec<Event> {
    if let Some(comment) = line.strip_prefix(':') {
        return cost_comment(comment).into_iter().collect();
    }
    let Some(data) = line
        .strip_prefix("data:")
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
    else {
        return Vec::new();
    };
    if data.trim() == "[DONE]" {
        return vec![Event::Done];
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return Vec::new();
    };
    chunk_events(&v)
}

fn chunk_events(v: &Value) -> Vec<Event> {
    let mut out = Vec::new();
    if let Some(e) = v.get("error") {
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| e.to_string(), str::to_owned);
        out.push(Event::Error(message));
        return out;
    }
    let text = v
        .pointer("/choices/0/delta/content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty());
    if let Some(t) = text {
        out.push(Event::Text(t.to_owned()));
    }
    if let Some(r) = v.pointer("/tenzro/receipt").filter(|r| !r.is_null()) {
        out.push(Event::Receipt(r.clone()));
    }
    if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
        let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
        out.push(Event::Usage {
            prompt: n("prompt_tokens"),
            completion: n("completion_tokens"),
            cost: u.get("cost").and_then(decimal),
            asset: u.get("asset").and_then(Value::as_str).map(str::to_owned),
        });
    }
    out
}

/// A base-unit amount: a decimal string (the gateway's) or a JSON integer.
fn decimal(v: &Value) -> Option<u128> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64().map(u128::from),
        _ => None,
    }
}

/// `x-tenzro-cost=N x-tenzro-asset=A`.
fn cost_comment(comment: &str) -> Option<Event> {
    let mut cost = None;
    let mut asset = None;
    for field in comment.split_whitespace() {
        match field.split_once('=') {
            Some(("x-tenzro-cost", v)) => cost = v.parse().ok(),
            Some(("x-tenzro-asset", v)) => asset = Some(v.to_owned()),
            _ => {}
        }
    }
    Some(Event::Cost {
        cost: cost?,
        asset: asset.unwrap_or_default(),
    })
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_reads_and_line_endings() {
        let mut l = Lines::default();
        assert_eq!(l.push(b"data: a").unwrap(), Vec::<String>::new());
        assert_eq!(
            l.push(b"b\r\n\ndata: c\n").unwrap(),
            ["data: ab", "", "data: c"]
        );
        let mut l = Lines::default();
        assert_eq!(l.push(&vec![b'x'; MAX_LINE_BYTES + 1]), Err(LineTooLong));
    }

    fn check(line: &str, want: Vec<Event>) {
        assert_eq!(events(line), want, "{line}");
    }

    #[test]
    fn events_of_each_line() {
        check(
            r#"data: {"choices":[{"delta":{"content":"Hi"}}],"tenzro":{"tokens":1}}"#,
            vec![Event::Text("Hi".into())],
        );
        check(
            r#"data: {"choices":[{"delta":{"role":"assistant"}}]}"#,
            vec![],
        );
        check(
            r#"data: {"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"cost":"120","asset":"TNZO"},"tenzro":{"receipt":{"model":"m"}}}"#,
            vec![
                Event::Receipt(serde_json::json!({"model":"m"})),
                Event::Usage {
                    prompt: 5,
                    completion: 2,
                    cost: Some(120),
                    asset: Some("TNZO".into()),
                },
            ],
        );
        check(
            ": x-tenzro-cost=340282366920938463463374607431768211455 x-tenzro-asset=USDC",
            vec![Event::Cost {
                cost: u128::MAX,
                asset: "USDC".into(),
            }],
        );
        check(": keep-alive", vec![]);
        check(": x-tenzro-cost=-1", vec![]);
        check("data: [DONE]", vec![Event::Done]);
        check(
            r#"data: {"error":{"message":"provider went away","type":"server_error"}}"#,
            vec![Event::Error("provider went away".into())],
        );
        check("data: not json", vec![]);
        check("event: ping", vec![]);
    }
}
