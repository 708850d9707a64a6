//! A task's answer from the chat route: the whole JSON answer of a sent message,
//! or the SSE of a streamed one read as it comes (each piece of text handed on at
//! once, the usage, receipt and cost collected for the task's `metadata.tenzro`).

use axum::body::Body;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::mcp::api::Reply;

/// Longest SSE line read (a chunk with its receipt is far smaller).
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// How the chat request ended.
pub enum Outcome {
    /// The answer's text and `metadata.tenzro`.
    Answer { text: String, meta: Value },
    /// The API refused or failed it: its status, error body and message.
    Refused {
        status: u16,
        error: Value,
        message: String,
    },
    /// The request broke (transport, or the stream was cut).
    Broken(String),
}

/// The outcome of a whole (non-streamed) answer.
pub fn of_reply(r: Reply) -> Outcome {
    if !r.ok() {
        return Outcome::Refused {
            status: r.status,
            message: r.error_message(),
            error: r.body.get("error").cloned().unwrap_or(Value::Null),
        };
    }
    let b = &r.body;
    let text = b
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let meta = json!({
        "model": b.get("model"),
        "cost": r.header("cost"),
        "asset": r.header("asset"),
        "provider": r.header("provider"),
        "channel": r.header("channel"),
        "usage": b.get("usage"),
        "receipt": b.pointer("/tenzro/receipt"),
        "finish_reason": b.pointer("/choices/0/finish_reason"),
    });
    Outcome::Answer { text, meta }
}

/// What a stream said so far.
#[derive(Default)]
struct Collected {
    text: String,
    model: Option<Value>,
    usage: Option<Value>,
    receipt: Option<Value>,
    finish_reason: Option<Value>,
    cost: Option<String>,
    asset: Option<String>,
    done: bool,
}

impl Collected {
    /// One SSE line; `Err` is the stream's error event. Text goes to `pieces`.
    fn line(&mut self, line: &str, pieces: &mut Vec<String>) -> Result<(), String> {
        let line = line.trim_end_matches('\r');
        if let Some(comment) = line.strip_prefix(':') {
            for kv in comment.split_whitespace() {
                match kv.split_once('=') {
                    Some(("x-tenzro-cost", v)) => self.cost = Some(v.to_owned()),
                    Some(("x-tenzro-asset", v)) => self.asset = Some(v.to_owned()),
                    _ => {}
                }
            }
            return Ok(());
        }
        let Some(data) = line.strip_prefix("data:").map(str::trim_start) else {
            return Ok(());
        };
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return Ok(());
        };
        if let Some(e) = v.get("error") {
            let m = e.get("message").and_then(Value::as_str).unwrap_or("error");
            return Err(m.to_owned());
        }
        if let Some(t) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            self.text.push_str(t);
            pieces.push(t.to_owned());
        }
        if let Some(f) = v
            .pointer("/choices/0/finish_reason")
            .filter(|f| !f.is_null())
        {
            self.finish_reason = Some(f.clone());
        }
        if let Some(m) = v.get("model") {
            self.model = Some(m.clone());
        }
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            self.usage = Some(u.clone());
        }
        if let Some(r) = v.pointer("/tenzro/receipt") {
            self.receipt = Some(r.clone());
        }
        Ok(())
    }
}

/// Reads a streamed chat answer, sending each piece of text to `pieces` as it
/// arrives; `tenzro` are the answer's `x-tenzro-*` headers.
pub async fn of_stream(
    body: Body,
    tenzro: &[(String, String)],
    pieces: &mpsc::Sender<String>,
) -> Outcome {
    let header = |name: &str| crate::mcp::api::Streamed::header(tenzro, name).map(str::to_owned);
    let mut c = Collected::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(b) => b,
            Err(e) => return Outcome::Broken(format!("the answer's stream broke: {e}")),
        };
        buf.extend_from_slice(&chunk);
        let mut out = Vec::new();
        while let Some(at) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=at).collect();
            let line = String::from_utf8_lossy(&line[..at]);
            if let Err(m) = c.line(&line, &mut out) {
                return Outcome::Broken(m);
            }
        }
        if buf.len() > MAX_LINE_BYTES {
            return Outcome::Broken(format!(
                "an event of the answer's stream is over {MAX_LINE_BYTES} bytes"
            ));
        }
        for piece in out {
            // The reader went away (a closed stream): the task still completes.
            let _ = pieces.send(piece).await;
        }
    }
    if !c.done {
        return Outcome::Broken("the answer's stream ended before [DONE]".into());
    }
    let cost = c.cost.or_else(|| {
        c.usage
            .as_ref()
            .and_then(|u| u.get("cost"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    let meta = json!({
        "model": c.model,
        "cost": cost,
        "asset": c.asset.or_else(|| header("asset")),
        "provider": header("provider"),
        "channel": header("channel"),
        "usage": c.usage,
        "receipt": c.receipt,
        "finish_reason": c.finish_reason,
    });
    Outcome::Answer { text: c.text, meta }
}

#[cfg(test)]
#[expect(clippy::panic, reason = "tests")]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stream_gives_its_pieces_as_they_come_and_its_cost() {
        let sse = concat!(
            "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
            "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\r\n\r\n",
            "data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"cost\":\"9\"},\"tenzro\":{\"receipt\":{\"model\":\"m\"}}}\n\n",
            ": x-tenzro-cost=10 x-tenzro-asset=TNZO\n\n",
            "data: [DONE]\n\n",
        );
        let (tx, mut rx) = mpsc::channel(16);
        let headers = vec![("x-tenzro-provider".to_owned(), "p".to_owned())];
        let out = of_stream(Body::from(sse), &headers, &tx).await;
        drop(tx);
        let mut pieces = Vec::new();
        while let Some(p) = rx.recv().await {
            pieces.push(p);
        }
        assert_eq!(pieces, ["Hel", "lo"]);
        let Outcome::Answer { text, meta } = out else {
            panic!("not an answer")
        };
        assert_eq!(text, "Hello");
        assert_eq!(meta["cost"], "10");
        assert_eq!(meta["provider"], "p");
        assert_eq!(meta["finish_reason"], "stop");
        assert_eq!(meta["usage"]["completion_tokens"], 2);
        assert_eq!(meta["receipt"]["model"], "m");
    }

    #[tokio::test]
    async fn an_error_event_or_a_cut_stream_breaks_the_task() {
        let (tx, _rx) = mpsc::channel(16);
        let cut = "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n";
        assert!(matches!(
            of_stream(Body::from(cut), &[], &tx).await,
            Outcome::Broken(m) if m.contains("[DONE]")
        ));
        let err = "data: {\"error\":{\"message\":\"the provider's stream broke\"}}\n\n";
        assert!(matches!(
            of_stream(Body::from(err), &[], &tx).await,
            Outcome::Broken(m) if m.contains("stream broke")
        ));
    }
}
