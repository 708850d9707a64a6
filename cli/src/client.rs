//! The HTTP side: the models list and one streamed chat completion, against any
//! OpenAI-compatible base URL.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

/// Largest non-streamed body read (the models list, an error).
const MAX_BODY_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The server's own error message (OpenAI's shape), with the status.
    #[error("{status}: {message}")]
    Server { status: u16, message: String },
    #[error("reading the answer failed: {0}")]
    Read(#[from] reqwest::Error),
    #[error("the server's answer was not what an OpenAI-compatible server sends: {0}")]
    Shape(String),
    #[error("the server's answer is larger than {} bytes", MAX_BODY_BYTES)]
    TooLarge,
}

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

/// One model of the list: its id and, from a Tenzro gateway, its lowest price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    pub id: String,
    pub price: Option<String>,
    /// The registry's category (`LLM`, `Embedding`...), when the server says.
    pub category: Option<String>,
}

impl ModelEntry {
    /// Whether it may chat: an `LLM`, or a server that does not say.
    pub fn chats(&self) -> bool {
        self.category.as_deref().is_none_or(|c| c == "LLM")
    }
}

/// A chat message as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub role: &'static str,
    pub content: String,
}

/// What a chat request asks for besides the messages.
#[derive(Debug, Clone)]
pub struct Options {
    pub model: String,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

/// A streaming answer: its headers' facts and the body.
pub struct Answer {
    pub provider: Option<String>,
    pub asset: Option<String>,
    pub body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
}

impl Client {
    pub fn new(base: &str, key: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_owned(),
            key,
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => r.bearer_auth(k),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = r.send().await.map_err(|source| ClientError::Connect {
            url: self.base.clone(),
            source,
        })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let body = read_bounded(resp).await?;
        Err(ClientError::Server {
            status,
            message: error_message(&body),
        })
    }

    /// `GET /models`, ids sorted.
    pub async fn models(&self) -> Result<Vec<ModelEntry>, ClientError> {
        let r = self
            .request(reqwest::Method::GET, "/models")
            .timeout(Duration::from_secs(30));
        let body = read_bounded(self.send(r).await?).await?;
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| ClientError::Shape(e.to_string()))?;
        let data = v
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| ClientError::Shape("no `data` list in /models".into()))?;
        let mut out: Vec<ModelEntry> = data
            .iter()
            .filter_map(|m| {
                Some(ModelEntry {
                    id: m.get("id")?.as_str()?.to_owned(),
                    price: m
                        .get("min_price_per_token")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    category: m.get("category").and_then(Value::as_str).map(str::to_owned),
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// `POST /chat/completions` with `stream: true` (and the usage chunk).
    pub async fn chat(&self, opts: &Options, messages: &[Message]) -> Result<Answer, ClientError> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| json!({ "role": m.role, "content": m.content }))
            .collect();
        let mut body = json!({
            "model": opts.model,
            "messages": messages,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        if let Some(n) = opts.max_tokens {
            body["max_tokens"] = n.into();
        }
        if let Some(t) = opts.temperature {
            body["temperature"] = t.into();
        }
        let r = self
            .request(reqwest::Method::POST, "/chat/completions")
            .json(&body);
        let resp = self.send(r).await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        Ok(Answer {
            provider: header("x-tenzro-provider"),
            asset: header("x-tenzro-asset"),
            body: resp.bytes_stream().boxed(),
        })
    }
}

async fn read_bounded(resp: reqwest::Response) -> Result<Vec<u8>, ClientError> {
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(ClientError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// OpenAI's `{"error":{"message":...}}`, else the body's first line.
fn error_message(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            let line = text.lines().next().unwrap_or("").trim();
            if line.is_empty() {
                "(no message)".to_owned()
            } else {
                line.chars().take(300).collect()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages() {
        let cases: [(&[u8], &str); 3] = [
            (
                br#"{"error":{"message":"`model` must not be empty","type":"invalid_request_error"}}"#,
                "`model` must not be empty",
            ),
            (b"Bad Gateway\nmore", "Bad Gateway"),
            (b"", "(no message)"),
        ];
        for (body, want) in cases {
            assert_eq!(error_message(body), want);
        }
    }
}
