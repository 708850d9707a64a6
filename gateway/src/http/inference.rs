//! The three inference routes as one generic handler over [`Forward`]: parse,
//! refuse what the provider would refuse, bound the prompt, then [`proxy::run`].

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tenzro_models::api::{
    ChatCompletionRequest, CompletionRequest, EmbeddingInput, EmbeddingRequest, Prompt,
    StreamOptions,
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
    /// Our `tenzro` extension object.
    fn extension(received: &[u8]) -> Result<RequestExt, ApiError> {
        ext(received)
    }
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
    let inf = Inference {
        op: F::OP,
        path: F::PATH,
        max_tokens: req.max_tokens(),
        model: req.model().to_owned(),
        ext: F::extension(&body)?,
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
        self.messages
            .iter()
            .map(|m| estimate_text(&m.text()) + 16)
            .sum::<u64>()
            + 16
            + tools_estimate(self)
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

    fn extension(_: &[u8]) -> Result<RequestExt, ApiError> {
        Ok(RequestExt::default())
    }
}

#[derive(Deserialize, Default)]
struct ExtPeek {
    #[serde(default)]
    tenzro: Option<RequestExt>,
}

fn ext(body: &[u8]) -> Result<RequestExt, ApiError> {
    serde_json::from_slice::<ExtPeek>(body)
        .map(|p| p.tenzro.unwrap_or_default())
        .map_err(|e| ApiError::BadRequest {
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
