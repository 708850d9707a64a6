//! The three inference routes as one generic handler over [`Forward`]: parse,
//! refuse what the provider would refuse, bound the prompt, then [`proxy::run`].

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tenzro_models::api::{
    ChatCompletionRequest, ChatMessage, CompletionRequest, ContentPart, EmbeddingInput,
    EmbeddingRequest, MessageContent, Prompt, StreamOptions,
};

use crate::accounts::Operation;
use crate::http::error::ApiError;
use crate::http::extract::{Auth, RawBody, parse_json};
use crate::http::observe::RequestId;
use crate::proxy::{self, Inference, RequestExt};
use crate::state::AppState;

/// A wire request the gateway forwards to a provider.
pub trait Forward: DeserializeOwned + serde::Serialize + Send + 'static {
    const OP: Operation;
    /// The upstream path, also the metrics label.
    const PATH: &'static str;
    /// False for embeddings (no completion tokens).
    const GENERATES: bool = true;
    /// The model-free refusals the provider would make (400s before routing).
    fn check(&self) -> Result<(), ApiError>;
    fn model(&self) -> &str;
    /// An upper bound on prompt tokens.
    fn prompt_estimate(&self) -> u64;
    /// Choices asked for: `n` × prompts, bounded by [`MAX_CHOICES`].
    fn choices(&self) -> Result<u64, ApiError>;
    fn max_tokens(&self) -> Option<u32>;
    /// Whether it streams; a stream is forced to carry usage (metering needs it).
    /// Returns (stream, whether the caller asked for usage).
    fn force_usage(&mut self) -> (bool, bool);
    /// The body to forward: the request as parsed (with usage forced), by default.
    fn forwarded(&self, _received: Bytes) -> Result<Bytes, ApiError> {
        serde_json::to_vec(self)
            .map(Bytes::from)
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
    /// Our `tenzro` extension object, as parsed with the request (`None` where the
    /// route takes none).
    fn tenzro(&self) -> Option<&serde_json::Value>;
}

/// `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings`.
pub async fn forward<F: Forward>(
    State(state): State<AppState>,
    Auth(key): Auth,
    RequestId(rid): RequestId,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let mut req: F = parse_json(&body)?;
    req.check()?;
    let prompt_estimate = req.prompt_estimate();
    let choices = req.choices()?;
    let (stream, include_usage) = req.force_usage();
    let ext = ext(req.tenzro())?;
    let inf = Inference {
        op: F::OP,
        path: F::PATH,
        max_tokens: req.max_tokens(),
        model: req.model().to_owned(),
        ext,
        body: req.forwarded(body)?,
        stream,
        include_usage,
        prompt_estimate,
        generates: F::GENERATES,
        choices,
    };
    proxy::run(&state, &key, inf, &rid, started).await
}

impl Forward for ChatCompletionRequest {
    const OP: Operation = Operation::Chat;
    const PATH: &'static str = "/v1/chat/completions";

    fn check(&self) -> Result<(), ApiError> {
        self.check_fields().map_err(field_error)?;
        require_model(&self.model)?;
        if self.messages.is_empty() {
            return Err(ApiError::BadRequest {
                message: "`messages` must not be empty".into(),
                param: Some("messages".into()),
            });
        }
        // The same rules the provider applies (`response_format`, `tools`...).
        tenzro_models::api::structured(self).map_err(field_error)?;
        Ok(())
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn prompt_estimate(&self) -> u64 {
        self.messages.iter().map(|m| text_len(m) + 16).sum::<u64>() + 16 + tools_estimate(self)
    }

    fn choices(&self) -> Result<u64, ApiError> {
        choices(self.n, 1)
    }

    fn max_tokens(&self) -> Option<u32> {
        self.max_new_tokens()
    }

    fn force_usage(&mut self) -> (bool, bool) {
        let (stream, asked) = (self.is_stream(), self.include_usage());
        ask_usage(&mut self.stream_options, stream, asked)
    }

    fn tenzro(&self) -> Option<&serde_json::Value> {
        self.tenzro.as_ref()
    }
}

impl Forward for CompletionRequest {
    const OP: Operation = Operation::Completions;
    const PATH: &'static str = "/v1/completions";

    fn check(&self) -> Result<(), ApiError> {
        self.check_fields().map_err(field_error)?;
        require_model(&self.model)
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn prompt_estimate(&self) -> u64 {
        let prompt: u64 = match &self.prompt {
            Prompt::Text(s) => estimate_text(s),
            Prompt::Texts(v) => v.iter().map(|s| estimate_text(s)).sum(),
            Prompt::Tokens(t) => t.len() as u64,
            Prompt::TokenLists(l) => l.iter().map(|t| t.len() as u64).sum(),
        };
        prompt + 16
    }

    fn choices(&self) -> Result<u64, ApiError> {
        let prompts = match &self.prompt {
            Prompt::Texts(v) => v.len() as u64,
            Prompt::TokenLists(l) => l.len() as u64,
            Prompt::Text(_) | Prompt::Tokens(_) => 1,
        };
        choices(self.n, prompts)
    }

    fn max_tokens(&self) -> Option<u32> {
        Some(
            self.max_tokens
                .unwrap_or(CompletionRequest::DEFAULT_MAX_TOKENS),
        )
    }

    fn force_usage(&mut self) -> (bool, bool) {
        let (stream, asked) = (self.is_stream(), self.include_usage());
        ask_usage(&mut self.stream_options, stream, asked)
    }

    fn tenzro(&self) -> Option<&serde_json::Value> {
        self.tenzro.as_ref()
    }
}

impl Forward for EmbeddingRequest {
    const OP: Operation = Operation::Embeddings;
    const PATH: &'static str = "/v1/embeddings";
    const GENERATES: bool = false;

    fn check(&self) -> Result<(), ApiError> {
        self.check_fields().map_err(field_error)?;
        require_model(&self.model)
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn prompt_estimate(&self) -> u64 {
        match &self.input {
            EmbeddingInput::Text(s) => estimate_text(s) + 2,
            EmbeddingInput::Texts(v) => v.iter().map(|s| estimate_text(s) + 2).sum(),
            EmbeddingInput::Tokens(t) => t.len() as u64,
            EmbeddingInput::TokenLists(l) => l.iter().map(|t| t.len() as u64).sum(),
        }
    }

    fn choices(&self) -> Result<u64, ApiError> {
        Ok(1)
    }

    fn max_tokens(&self) -> Option<u32> {
        None
    }

    fn force_usage(&mut self) -> (bool, bool) {
        (false, false)
    }

    /// Forwarded as received: nothing to force for embeddings.
    fn forwarded(&self, received: Bytes) -> Result<Bytes, ApiError> {
        Ok(received)
    }

    /// Embeddings are routed without our extension.
    fn tenzro(&self) -> Option<&serde_json::Value> {
        None
    }
}

/// Our extension from the request's `tenzro` value (already parsed with the
/// request: the body is not read twice).
fn ext(value: Option<&serde_json::Value>) -> Result<RequestExt, ApiError> {
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return Ok(RequestExt::default());
    };
    RequestExt::deserialize(v).map_err(|e| ApiError::BadRequest {
        message: format!("invalid `tenzro` extension: {e}"),
        param: Some("tenzro".into()),
    })
}

/// The provider's model-free 400s (unknown fields, logprobs, `logit_bias`...),
/// answered before routing.
fn field_error(e: tenzro_models::api::FieldError) -> ApiError {
    ApiError::BadRequest {
        message: e.message,
        param: Some(e.param),
    }
}

/// A streamed request asks its provider for the usage chunk whatever the client
/// asked (`asked`): metering needs it. Returns (streamed, asked), the client's own
/// choice kept apart.
fn ask_usage(
    stream_options: &mut Option<StreamOptions>,
    stream: bool,
    asked: bool,
) -> (bool, bool) {
    if stream {
        *stream_options = Some(StreamOptions {
            include_usage: Some(true),
        });
    }
    (stream, asked)
}

fn require_model(model: &str) -> Result<(), ApiError> {
    if model.is_empty() {
        return Err(ApiError::BadRequest {
            message: "`model` must not be empty".into(),
            param: Some("model".into()),
        });
    }
    Ok(())
}

/// Most choices one request may ask for (`n` × prompts): each is metered, held
/// and, when its receipt is checked, kept in full until the response ends.
pub const MAX_CHOICES: u64 = 128;

/// `n` × `prompts`, refused 400 naming `n` above [`MAX_CHOICES`].
fn choices(n: Option<u32>, prompts: u64) -> Result<u64, ApiError> {
    let choices = prompts
        .max(1)
        .saturating_mul(u64::from(n.unwrap_or(1).max(1)));
    if choices > MAX_CHOICES {
        return Err(ApiError::BadRequest {
            message: format!(
                "`n` × prompts asks for {choices} choices; at most {MAX_CHOICES} per request"
            ),
            param: Some("n".into()),
        });
    }
    Ok(choices)
}

/// The byte length of a message's text (what [`ChatMessage::text`] joins), without
/// building it.
fn text_len(m: &ChatMessage) -> u64 {
    match &m.content {
        None => 0,
        Some(MessageContent::Text(s)) => estimate_text(s),
        Some(MessageContent::Parts(parts)) => parts
            .iter()
            .map(|p| match p {
                ContentPart::Text { text } => estimate_text(text),
                ContentPart::Other => 0,
            })
            .sum(),
    }
}

/// An upper bound on prompt tokens: one per byte (byte-level BPE never does worse)
/// plus the chat template's framing.
fn estimate_text(s: &str) -> u64 {
    s.len() as u64
}

/// Prompt tokens the tools add: their JSON (the provider lists them in the prompt),
/// past calls' names and arguments, and the framing of the tools block.
fn tools_estimate(req: &ChatCompletionRequest) -> u64 {
    let tools = req.tools.as_ref().map_or(0, |t| {
        serde_json::to_vec(t).map_or(0, |v| v.len() as u64 + 256)
    });
    let calls: u64 = req
        .messages
        .iter()
        .flat_map(|m| m.tool_calls.iter().flatten())
        .map(|c| (c.function.name.len() + c.function.arguments.len()) as u64 + 32)
        .sum();
    tools + calls
}

#[cfg(test)]
mod tests {
    #![expect(clippy::panic, reason = "tests")]
    use super::*;

    fn chat(body: &str) -> ChatCompletionRequest {
        match parse_json(body.as_bytes()) {
            Ok(r) => r,
            Err(e) => panic!("{body}: {e:?}"),
        }
    }

    #[test]
    fn text_len_is_the_joined_text_length() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"héllo"},
            {"role":"user","content":[{"type":"text","text":"ab"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"cde"}]},
            {"role":"assistant","content":null}]}"#,
        );
        for m in &r.messages {
            assert_eq!(text_len(m), m.text().len() as u64);
        }
        assert_eq!(r.prompt_estimate(), 6 + 5 + 3 * 16 + 16);
    }

    #[test]
    fn the_extension_is_read_from_the_parsed_request() {
        let r = chat(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}],"tenzro":{"tee":true,"weights":[1,0,0]}}"#,
        );
        let e = match ext(r.tenzro()) {
            Ok(e) => e,
            Err(e) => panic!("{e:?}"),
        };
        assert!(e.tee);
        assert_eq!(e.weights, Some([1.0, 0.0, 0.0]));
        let r = chat(r#"{"model":"m","messages":[],"tenzro":null}"#);
        assert!(matches!(ext(r.tenzro()), Ok(RequestExt { tee: false, .. })));
        let r = chat(r#"{"model":"m","messages":[],"tenzro":{"tee":"yes"}}"#);
        match ext(r.tenzro()) {
            Err(ApiError::BadRequest { message, param }) => {
                assert!(message.contains("invalid `tenzro` extension"), "{message}");
                assert_eq!(param.as_deref(), Some("tenzro"));
            }
            other => panic!("{other:?}"),
        }
    }
}
