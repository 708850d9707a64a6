//! `/v1/chat/completions` and `/v1/completions`: validate, submit, then either
//! collect the events into one response or relay them as SSE chunks.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, stream};
use tenzro_models::api::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest, ChunkChoice,
    Completion, CompletionChoice, CompletionRequest, Delta, ErrorBody, FinishReason, Role, TenzroExt, Usage,
};
use tenzro_models::engine::Event;

use crate::error::{ApiError, ApiJson};
use crate::generate::{self, EventStream};
use crate::state::AppState;
use crate::validate::{self, ValidGeneration};

pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let model = state.chat_model(&req.model)?;
    let valid = validate::chat(&req, model.engine.llm(), &state.config.server)?;
    let shape = Shape::new(Kind::Chat, &req.model, &valid);
    let events = generate::submit(&model.engine, valid.jobs, state.metrics.clone())?;
    if valid.stream { Ok(sse(shape, events).into_response()) } else { collect(shape, events).await }
}

pub async fn completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let model = state.chat_model(&req.model)?;
    let valid = validate::completion(&req, model.engine.llm(), &state.config.server)?;
    let shape = Shape::new(Kind::Text, &req.model, &valid);
    let events = generate::submit(&model.engine, valid.jobs, state.metrics.clone())?;
    if valid.stream { Ok(sse(shape, events).into_response()) } else { collect(shape, events).await }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Text,
}

/// What every chunk or response of one request shares.
struct Shape {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    choices: u32,
    include_usage: bool,
    /// Per global choice: the prompt text to echo (completions only).
    echo: Vec<Option<String>>,
}

impl Shape {
    fn new(kind: Kind, model: &str, valid: &ValidGeneration) -> Self {
        let prefix = if kind == Kind::Chat { "chatcmpl" } else { "cmpl" };
        let mut echo = Vec::new();
        for (job, e) in valid.jobs.iter().zip(&valid.echo) {
            echo.extend(std::iter::repeat_n(e.clone(), job.params.n as usize));
        }
        Shape {
            kind,
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
            choices: echo.len() as u32,
            include_usage: valid.include_usage,
            echo,
        }
    }

    fn chunk(&self, index: u32, content: Option<String>, role: Option<Role>, finish: Option<FinishReason>, tokens: Option<u64>) -> String {
        let tenzro = tokens.map(TenzroExt::tokens);
        let json = match self.kind {
            Kind::Chat => serde_json::to_string(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChunkChoice { index, delta: Delta { role, content }, finish_reason: finish, logprobs: None }],
                usage: None,
                system_fingerprint: None,
                tenzro,
            }),
            Kind::Text => serde_json::to_string(&Completion {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice { index, text: content.unwrap_or_default(), finish_reason: finish, logprobs: None }],
                usage: None,
                system_fingerprint: None,
                tenzro,
            }),
        };
        json.unwrap_or_default()
    }

    fn usage_chunk(&self, usage: Usage) -> String {
        let json = match self.kind {
            Kind::Chat => serde_json::to_string(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![],
                usage: Some(usage),
                system_fingerprint: None,
                tenzro: None,
            }),
            Kind::Text => serde_json::to_string(&Completion {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![],
                usage: Some(usage),
                system_fingerprint: None,
                tenzro: None,
            }),
        };
        json.unwrap_or_default()
    }
}

/// Engine events to SSE: an opening chunk per choice, a chunk per piece of text
/// (with the tokens it carries), a closing chunk per choice, the usage chunk when
/// asked for, then `[DONE]`. An engine failure ends the stream with an error event.
fn sse(shape: Shape, events: EventStream) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let opening: Vec<String> = (0..shape.choices)
        .map(|i| match shape.kind {
            Kind::Chat => shape.chunk(i, Some(String::new()), Some(Role::Assistant), None, None),
            Kind::Text => shape.chunk(i, shape.echo[i as usize].clone(), None, None, None),
        })
        .collect();
    let body = events.flat_map(move |event| {
        let out: Vec<String> = match event {
            Event::Text { choice, text, tokens } => vec![shape.chunk(choice, Some(text), None, None, Some(u64::from(tokens)))],
            Event::Finished { choice, reason, text, tokens } => {
                let content = (!text.is_empty() || shape.kind == Kind::Text).then_some(text);
                vec![shape.chunk(choice, content, None, Some(reason), Some(u64::from(tokens)))]
            }
            Event::Done { prompt_tokens, completion_tokens } => {
                let mut out = Vec::new();
                if shape.include_usage {
                    out.push(shape.usage_chunk(Usage::new(u64::from(prompt_tokens), u64::from(completion_tokens))));
                }
                out.push("[DONE]".to_owned());
                out
            }
            Event::Error(e) => {
                tracing::error!(error = %e, "generation failed mid-stream");
                let body = ErrorBody::new("server_error", "The model failed while generating; the stream is incomplete");
                vec![serde_json::to_string(&body).unwrap_or_default()]
            }
        };
        stream::iter(out)
    });
    let all = stream::iter(opening).chain(body).map(|data| Ok(SseEvent::default().data(data)));
    Sse::new(all)
}

/// Engine events to one response body.
async fn collect(shape: Shape, mut events: EventStream) -> Result<Response, ApiError> {
    let n = shape.choices as usize;
    let mut texts: Vec<String> = shape.echo.iter().map(|e| e.clone().unwrap_or_default()).collect();
    let mut reasons: Vec<Option<FinishReason>> = vec![None; n];
    let mut usage = Usage::default();
    while let Some(event) = events.next().await {
        match event {
            Event::Text { choice, text, .. } => texts[choice as usize].push_str(&text),
            Event::Finished { choice, reason, text, .. } => {
                texts[choice as usize].push_str(&text);
                reasons[choice as usize] = Some(reason);
            }
            Event::Done { prompt_tokens, completion_tokens } => {
                usage = Usage::new(u64::from(prompt_tokens), u64::from(completion_tokens));
            }
            Event::Error(e) => return Err(ApiError::Internal(e)),
        }
    }
    let body = match shape.kind {
        Kind::Chat => serde_json::to_value(ChatCompletion {
            id: shape.id,
            object: "chat.completion".into(),
            created: shape.created,
            model: shape.model,
            choices: texts
                .into_iter()
                .zip(reasons)
                .enumerate()
                .map(|(i, (text, finish_reason))| ChatChoice {
                    index: i as u32,
                    message: AssistantMessage { role: Role::Assistant, content: Some(text) },
                    finish_reason,
                    logprobs: None,
                })
                .collect(),
            usage,
            system_fingerprint: None,
            tenzro: None,
        }),
        Kind::Text => serde_json::to_value(Completion {
            id: shape.id,
            object: "text_completion".into(),
            created: shape.created,
            model: shape.model,
            choices: texts
                .into_iter()
                .zip(reasons)
                .enumerate()
                .map(|(i, (text, finish_reason))| CompletionChoice { index: i as u32, text, finish_reason, logprobs: None })
                .collect(),
            usage: Some(usage),
            system_fingerprint: None,
            tenzro: None,
        }),
    };
    let body = body.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(axum::Json(body).into_response())
}
