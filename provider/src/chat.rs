//! `/v1/chat/completions` and `/v1/completions`: validate, submit, then either
//! collect the events into one response or relay them as SSE chunks. Either way the
//! response carries the provider's signed receipt (see `receipt`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt, stream};
use tenzro_models::api::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatCompletionRequest,
    ChunkChoice, Completion, CompletionChoice, CompletionRequest, Delta, ErrorBody, FinishReason,
    FunctionCall, FunctionCallDelta, Role, TenzroExt, ToolCall, ToolCallDelta, Usage,
};
use tenzro_models::engine::Event;
use tenzro_models::logprobs::TokenLogprob;

use crate::attestation::Identity;
use crate::channels::Meter;
use crate::error::{ApiError, HashedJson};
use crate::generate::{self, EventStream};
use crate::logprob_wire::{Logprobs, Wire};
use crate::receipt::{self, Served};
use crate::state::AppState;
use crate::validate::{self, ValidGeneration};

pub async fn chat_completions(
    State(state): State<AppState>,
    meter: Meter,
    HashedJson { value: req, sha256 }: HashedJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let model = state.chat_model(&req.model)?;
    let valid = validate::chat(&req, model.engine.llm(), &state.config.server)?;
    respond(&state, Kind::Chat, &req.model, valid, sha256, meter).await
}

pub async fn completions(
    State(state): State<AppState>,
    meter: Meter,
    HashedJson { value: req, sha256 }: HashedJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let model = state.chat_model(&req.model)?;
    let valid = validate::completion(&req, model.engine.llm(), &state.config.server)?;
    respond(&state, Kind::Text, &req.model, valid, sha256, meter).await
}

/// Submit the validated jobs and answer: SSE when asked to stream, else one body.
async fn respond(
    state: &AppState,
    kind: Kind,
    model_id: &str,
    valid: ValidGeneration,
    request_sha256: [u8; 32],
    meter: Meter,
) -> Result<Response, ApiError> {
    let model = state.chat_model(model_id)?;
    let seal = Seal {
        identity: state.identity.clone(),
        request_sha256,
    };
    let shape = Shape::new(kind, model_id, &valid, seal, meter);
    let mut events = generate::submit(&model.engine, valid.jobs, state.metrics.clone())?;
    if valid.tool_calls {
        events = crate::toolcalls::split(events, shape.choices);
    }
    if valid.stream {
        Ok(sse(shape, events).into_response())
    } else {
        collect(shape, events).await
    }
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
    seal: Seal,
    /// Counts the tokens served against the request's payment channel, if any.
    meter: Meter,
    /// The shape of the logprobs, when the request asked for them.
    logprobs: Option<Wire>,
}

/// What a receipt needs besides the response: the signer and the request's digest.
struct Seal {
    identity: Arc<Identity>,
    request_sha256: [u8; 32],
}

/// A choice's finishing chunk, held back until the next event: when that is the
/// end of the stream, it carries the receipt.
struct Finish {
    choice: u32,
    reason: FinishReason,
    text: String,
    tokens: u32,
    logprobs: Option<serde_json::Value>,
}

impl Shape {
    fn new(kind: Kind, model: &str, valid: &ValidGeneration, seal: Seal, meter: Meter) -> Self {
        let prefix = if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        };
        let mut echo = Vec::new();
        for (job, e) in valid.jobs.iter().zip(&valid.echo) {
            echo.extend(std::iter::repeat_n(e.clone(), job.params.n as usize));
        }
        Shape {
            kind,
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
            choices: echo.len() as u32,
            include_usage: valid.include_usage,
            echo,
            seal,
            meter,
            logprobs: valid
                .jobs
                .first()
                .and_then(|j| j.params.sampling.logprobs)
                .map(|_| match kind {
                    Kind::Chat => Wire::Chat,
                    Kind::Text => Wire::Legacy,
                }),
        }
    }

    /// Per-choice logprob state for one response, when asked for.
    fn logprob_state(&self) -> Option<Logprobs> {
        self.logprobs
            .map(|w| Logprobs::new(w, self.choices as usize))
    }

    /// Each choice's text as the client assembles it (the echo included), empty.
    fn texts(&self) -> Vec<String> {
        self.echo
            .iter()
            .map(|e| e.clone().unwrap_or_default())
            .collect()
    }

    /// The signed receipt for a response whose choices' whole texts are `texts`.
    fn receipt(&self, texts: &[String], prompt_tokens: u32, completion_tokens: u32) -> TenzroExt {
        let served = Served {
            model: self.model.clone(),
            request_sha256: self.seal.request_sha256,
            response_sha256: receipt::texts_digest(texts),
            prompt_tokens: u64::from(prompt_tokens),
            completion_tokens: u64::from(completion_tokens),
        };
        receipt::sign(&self.seal.identity, served)
    }

    fn finish_chunk(&self, f: Finish, receipt: Option<TenzroExt>) -> String {
        let content = (!f.text.is_empty() || self.kind == Kind::Text).then_some(f.text);
        let tenzro = TenzroExt {
            tokens: Some(u64::from(f.tokens)),
            ..receipt.unwrap_or_default()
        };
        self.chunk_with(
            f.choice,
            content,
            None,
            Some(f.reason),
            Some(tenzro),
            f.logprobs,
        )
    }

    fn chunk(
        &self,
        index: u32,
        content: Option<String>,
        role: Option<Role>,
        finish: Option<FinishReason>,
        tenzro: Option<TenzroExt>,
    ) -> String {
        self.chunk_with(index, content, role, finish, tenzro, None)
    }

    /// [`Shape::chunk`] carrying the logprobs of the tokens it reports.
    fn chunk_with(
        &self,
        index: u32,
        content: Option<String>,
        role: Option<Role>,
        finish: Option<FinishReason>,
        tenzro: Option<TenzroExt>,
        logprobs: Option<serde_json::Value>,
    ) -> String {
        let json = match self.kind {
            Kind::Chat => serde_json::to_string(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChunkChoice {
                    index,
                    delta: Delta {
                        role,
                        content,
                        tool_calls: None,
                    },
                    finish_reason: finish,
                    logprobs,
                }],
                usage: None,
                system_fingerprint: None,
                tenzro,
            }),
            Kind::Text => serde_json::to_string(&Completion {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![CompletionChoice {
                    index,
                    text: content.unwrap_or_default(),
                    finish_reason: finish,
                    logprobs,
                }],
                usage: None,
                system_fingerprint: None,
                tenzro,
            }),
        };
        json.unwrap_or_default()
    }

    /// A whole tool call as the SDKs assemble it: a first piece with its id, type
    /// and name, then one with its arguments (carrying the call's tokens).
    fn tool_chunks(
        &self,
        index: u32,
        call: u32,
        name: String,
        arguments: String,
        tokens: u32,
    ) -> Vec<String> {
        let piece = |delta: ToolCallDelta, tenzro: Option<TenzroExt>| {
            serde_json::to_string(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![ChunkChoice {
                    index,
                    delta: Delta {
                        tool_calls: Some(vec![delta]),
                        ..Delta::default()
                    },
                    finish_reason: None,
                    logprobs: None,
                }],
                usage: None,
                system_fingerprint: None,
                tenzro,
            })
            .unwrap_or_default()
        };
        let head = ToolCallDelta {
            index: call,
            id: Some(call_id()),
            kind: Some("function".into()),
            function: Some(FunctionCallDelta {
                name: Some(name),
                arguments: Some(String::new()),
            }),
        };
        let args = ToolCallDelta {
            index: call,
            id: None,
            kind: None,
            function: Some(FunctionCallDelta {
                name: None,
                arguments: Some(arguments),
            }),
        };
        vec![
            piece(head, Some(TenzroExt::tokens(0))),
            piece(args, Some(TenzroExt::tokens(u64::from(tokens)))),
        ]
    }

    /// A chunk without choices: the usage (when asked for) and/or the receipt.
    fn final_chunk(&self, usage: Option<Usage>, tenzro: Option<TenzroExt>) -> String {
        let json = match self.kind {
            Kind::Chat => serde_json::to_string(&ChatCompletionChunk {
                id: self.id.clone(),
                object: "chat.completion.chunk".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![],
                usage,
                system_fingerprint: None,
                tenzro,
            }),
            Kind::Text => serde_json::to_string(&Completion {
                id: self.id.clone(),
                object: "text_completion".into(),
                created: self.created,
                model: self.model.clone(),
                choices: vec![],
                usage,
                system_fingerprint: None,
                tenzro,
            }),
        };
        json.unwrap_or_default()
    }
}

/// Engine events to SSE: an opening chunk per choice, a chunk per piece of text
/// (with the tokens it carries), a closing chunk per choice, the usage chunk when
/// asked for, then `[DONE]`. The last data chunk before `[DONE]` carries the
/// receipt: the usage chunk when asked for, otherwise the chunk that finishes the
/// last choice (so every chunk still has a choice, as OpenAI's do without usage).
/// An engine failure ends the stream with an error event and no receipt.
fn sse(shape: Shape, events: EventStream) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let opening: Vec<String> = (0..shape.choices)
        .map(|i| match shape.kind {
            Kind::Chat => shape.chunk(i, Some(String::new()), Some(Role::Assistant), None, None),
            Kind::Text => shape.chunk(i, shape.echo[i as usize].clone(), None, None, None),
        })
        .collect();
    let mut texts = shape.texts();
    let mut held: Option<Finish> = None;
    let mut lp = shape.logprob_state();
    let mut lp_pending: Vec<Vec<TokenLogprob>> = vec![Vec::new(); shape.choices as usize];
    // Completion tokens streamed so far: what is owed if the stream breaks.
    let mut streamed: u64 = 0;
    let body = events.flat_map(move |event| {
        if let Event::Text { tokens, .. }
        | Event::Finished { tokens, .. }
        | Event::ToolCall { tokens, .. } = &event
        {
            streamed += u64::from(*tokens);
        }
        if let Event::Text { choice, text, .. } | Event::Finished { choice, text, .. } = &event
            && let Some(whole) = texts.get_mut(*choice as usize)
        {
            whole.push_str(text);
        }
        let mut out = Vec::new();
        match event {
            Event::ToolCall {
                choice,
                index,
                name,
                arguments,
                tokens,
            } => {
                out.extend(held.take().map(|f| shape.finish_chunk(f, None)));
                if let Some(whole) = texts.get_mut(choice as usize) {
                    whole.push_str(&name);
                    whole.push_str(&arguments);
                }
                out.extend(shape.tool_chunks(choice, index, name, arguments, tokens));
            }
            Event::Text {
                choice,
                text,
                tokens,
            } => {
                out.extend(held.take().map(|f| shape.finish_chunk(f, None)));
                out.push(shape.chunk_with(
                    choice,
                    Some(text),
                    None,
                    None,
                    Some(TenzroExt::tokens(u64::from(tokens))),
                    drain_logprobs(&mut lp, &mut lp_pending, choice),
                ));
            }
            Event::Logprobs { choice, entries } => {
                if let Some(p) = lp_pending.get_mut(choice as usize) {
                    p.extend(entries);
                }
            }
            Event::Finished {
                choice,
                reason,
                text,
                tokens,
            } => {
                out.extend(held.take().map(|f| shape.finish_chunk(f, None)));
                held = Some(Finish {
                    choice,
                    reason,
                    text,
                    tokens,
                    logprobs: drain_logprobs(&mut lp, &mut lp_pending, choice),
                });
            }
            Event::Done {
                prompt_tokens,
                completion_tokens,
            } => {
                shape
                    .meter
                    .record(u64::from(prompt_tokens) + u64::from(completion_tokens));
                let receipt = shape.receipt(&texts, prompt_tokens, completion_tokens);
                match (shape.include_usage, held.take()) {
                    (false, Some(last)) => out.push(shape.finish_chunk(last, Some(receipt))),
                    (false, None) => out.push(shape.final_chunk(None, Some(receipt))),
                    (true, last) => {
                        out.extend(last.map(|f| shape.finish_chunk(f, None)));
                        let usage =
                            Usage::new(u64::from(prompt_tokens), u64::from(completion_tokens));
                        out.push(shape.final_chunk(Some(usage), Some(receipt)));
                    }
                }
                out.push("[DONE]".to_owned());
            }
            Event::Error(e) => {
                out.extend(held.take().map(|f| shape.finish_chunk(f, None)));
                shape.meter.record(streamed);
                tracing::error!(error = %e, "generation failed mid-stream");
                let body = ErrorBody::new(
                    "server_error",
                    "The model failed while generating; the stream is incomplete",
                );
                out.push(serde_json::to_string(&body).unwrap_or_default());
            }
        }
        stream::iter(out)
    });
    let all = stream::iter(opening)
        .chain(body)
        .map(|data| Ok(SseEvent::default().data(data)));
    Sse::new(all)
}

/// A tool call's id, as OpenAI writes them.
fn call_id() -> String {
    format!("call_{}", &uuid::Uuid::new_v4().simple().to_string()[..24])
}

/// Each choice's text as the receipt signs it: its content, then each tool call's
/// name and arguments (README "Identity, attestation and receipts").
fn receipt_texts(texts: &[String], calls: &[Vec<ToolCall>]) -> Vec<String> {
    texts
        .iter()
        .zip(calls)
        .map(|(t, cs)| {
            let mut whole = t.clone();
            for c in cs {
                whole.push_str(&c.function.name);
                whole.push_str(&c.function.arguments);
            }
            whole
        })
        .collect()
}

/// The logprobs of `choice`'s tokens not yet sent, for its next chunk.
fn drain_logprobs(
    lp: &mut Option<Logprobs>,
    pending: &mut [Vec<TokenLogprob>],
    choice: u32,
) -> Option<serde_json::Value> {
    let entries = std::mem::take(pending.get_mut(choice as usize)?);
    lp.as_mut()?.convert(choice, &entries)
}

/// Engine events to one response body.
async fn collect(shape: Shape, mut events: EventStream) -> Result<Response, ApiError> {
    let n = shape.choices as usize;
    let mut texts = shape.texts();
    let mut reasons: Vec<Option<FinishReason>> = vec![None; n];
    let mut calls: Vec<Vec<ToolCall>> = vec![Vec::new(); n];
    let mut usage = Usage::default();
    let mut tokens = (0, 0);
    let mut entries: Vec<Vec<TokenLogprob>> = vec![Vec::new(); n];
    while let Some(event) = events.next().await {
        match event {
            Event::Logprobs { choice, entries: e } => {
                if let Some(all) = entries.get_mut(choice as usize) {
                    all.extend(e);
                }
            }
            Event::Text { choice, text, .. } => texts[choice as usize].push_str(&text),
            Event::Finished {
                choice,
                reason,
                text,
                ..
            } => {
                texts[choice as usize].push_str(&text);
                reasons[choice as usize] = Some(reason);
            }
            Event::Done {
                prompt_tokens,
                completion_tokens,
            } => {
                shape
                    .meter
                    .record(u64::from(prompt_tokens) + u64::from(completion_tokens));
                usage = Usage::new(u64::from(prompt_tokens), u64::from(completion_tokens));
                tokens = (prompt_tokens, completion_tokens);
            }
            Event::Error(e) => return Err(ApiError::Internal(e)),
            Event::ToolCall {
                choice,
                name,
                arguments,
                ..
            } => {
                if let Some(c) = calls.get_mut(choice as usize) {
                    c.push(ToolCall {
                        id: call_id(),
                        kind: "function".into(),
                        function: FunctionCall { name, arguments },
                    });
                }
            }
        }
    }
    let tenzro = Some(shape.receipt(&receipt_texts(&texts, &calls), tokens.0, tokens.1));
    let mut lp = shape.logprob_state();
    let mut logprobs: Vec<Option<serde_json::Value>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| lp.as_mut().and_then(|lp| lp.whole(i as u32, e)))
        .collect();
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
                    message: {
                        let tool_calls = calls
                            .get_mut(i)
                            .map(std::mem::take)
                            .filter(|c| !c.is_empty());
                        AssistantMessage {
                            role: Role::Assistant,
                            content: (tool_calls.is_none() || !text.is_empty()).then_some(text),
                            tool_calls,
                        }
                    },
                    finish_reason,
                    logprobs: logprobs.get_mut(i).and_then(Option::take),
                })
                .collect(),
            usage,
            system_fingerprint: None,
            tenzro,
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
                .map(|(i, (text, finish_reason))| CompletionChoice {
                    index: i as u32,
                    text,
                    finish_reason,
                    logprobs: logprobs.get_mut(i).and_then(Option::take),
                })
                .collect(),
            usage: Some(usage),
            system_fingerprint: None,
            tenzro,
        }),
    };
    let body = body.map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(axum::Json(body).into_response())
}
