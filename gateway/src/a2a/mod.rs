//! A2A (issue 15, whitepaper §11.1): the gateway as an agent other agents call.
//!
//! - `GET /.well-known/agent-card.json` (and `/.well-known/agent.json`): [`card`];
//! - `POST /a2a`: JSON-RPC 2.0, bearer key required; `message/send`,
//!   `message/stream` (SSE), `tasks/get`, `tasks/cancel` (A2A 0.3) and their 1.0
//!   names `SendMessage`, `SendStreamingMessage`, `GetTask`, `CancelTask`, each
//!   answered in its version's shapes ([`wire`]).
//!
//! A task is one chat completion with the caller's key ([`run`]), so its scope,
//! rate limits and balance apply as for any request, and its cost, provider and
//! receipt are on the task (`metadata.tenzro`). Tasks are kept in the SQL store
//! ([`task`]) with a retention limit ([`retention`]); a streamed task sends its
//! answer piece by piece as artifact updates ([`answer`]).

pub mod answer;
pub mod card;
pub mod retention;
pub mod run;
pub mod task;
pub mod wire;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::accounts::KeyEntry;
use crate::http::error::ApiError;
use crate::http::extract::Auth;
use crate::mcp::api::InProcess;
use crate::state::AppState;
use run::{Ctx, Event};
use task::{Limits, TaskError, Tasks};
use wire::Version;

/// The agent card and the JSON-RPC endpoint, for the route table.
pub fn routes(state: &AppState) -> Router<AppState> {
    let cfg = &state.config.a2a;
    let tasks = Tasks::new(
        state.store.clone(),
        state.clock.clone(),
        state.leases.owner.clone(),
        Limits {
            max_running_per_key: cfg.max_running_per_key,
            max_tasks_per_key: cfg.max_tasks_per_key,
        },
    );
    let ctx = Arc::new(Ctx {
        api: InProcess::new(state.clone()),
        tasks: Arc::new(tasks),
        default_model: cfg.default_model.clone(),
    });
    Router::new()
        .route("/.well-known/agent-card.json", get(card::card))
        .route("/.well-known/agent.json", get(card::card))
        .route(
            "/a2a",
            post(
                move |State(state): State<AppState>,
                      Auth(key): Auth,
                      headers: HeaderMap,
                      body: Bytes| {
                    let ctx = ctx.clone();
                    async move { rpc(&ctx, &state, &key, &headers, &body).await }
                },
            ),
        )
}

/// Before serving: marks the tasks this replica left running failed, then sweeps
/// the stored tasks by age and count until `cancel`.
pub async fn start_retention(state: &AppState, cancel: tokio_util::sync::CancellationToken) {
    retention::recover(&state.store, &state.leases.owner, state.clock.unix()).await;
    state.tasks.spawn(retention::sweep(
        state.store.clone(),
        state.clock.clone(),
        state.config.a2a.clone(),
        cancel,
    ));
}

#[derive(Clone, Copy)]
enum Op {
    Send,
    Stream,
    Get,
    Cancel,
}

fn rate_limited(l: crate::ratelimit::Limited) -> Response {
    use crate::ratelimit::Limited;
    ApiError::RateLimited {
        message: "requests-per-minute limit of this key reached; retry after the Retry-After delay"
            .into(),
        retry_after: match l {
            Limited::Requests { retry_after } | Limited::Tokens { retry_after } => retry_after,
            Limited::TooLarge { .. } => std::time::Duration::from_secs(60),
        },
    }
    .into_response()
}

fn json(v: Value) -> Response {
    axum::Json(v).into_response()
}

async fn rpc(
    ctx: &Ctx,
    state: &AppState,
    key: &KeyEntry,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let req: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return json(wire::err(
                &Value::Null,
                -32700,
                format!("parse error: {e}"),
                None,
            ));
        }
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    if !req.is_object() || req.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return json(wire::err(
            &id,
            -32600,
            "invalid request: send one JSON-RPC 2.0 object (batches are not supported)",
            None,
        ));
    }
    let method = req
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (version, op) = match method {
        "message/send" => (Version::V03, Op::Send),
        "message/stream" => (Version::V03, Op::Stream),
        "tasks/get" => (Version::V03, Op::Get),
        "tasks/cancel" => (Version::V03, Op::Cancel),
        "SendMessage" => (Version::V1, Op::Send),
        "SendStreamingMessage" => (Version::V1, Op::Stream),
        "GetTask" => (Version::V1, Op::Get),
        "CancelTask" => (Version::V1, Op::Cancel),
        other => {
            return json(wire::err(
                &id,
                -32601,
                format!(
                    "method not found: `{other}` (supported: message/send, message/stream, tasks/get, tasks/cancel, and their A2A 1.0 names)"
                ),
                None,
            ));
        }
    };
    let params = req.get("params").cloned().unwrap_or(Value::Null);
    let owner = key.record.id.as_str();
    match op {
        Op::Get | Op::Cancel => {
            // Inference is limited by the chat route; these by the key's request rate.
            if let Err(l) = key.limiters.check(0) {
                return rate_limited(l);
            }
            let task_id = match wire::task_id(&params) {
                Ok(t) => t,
                Err(m) => return json(wire::err(&id, -32602, m, None)),
            };
            let r = match op {
                Op::Get => ctx.tasks.get(owner, &task_id).await,
                _ => ctx.tasks.cancel(owner, &task_id).await,
            };
            match r {
                Ok(t) => json(wire::ok(
                    &id,
                    wire::task(&t, version, wire::history_length(&params)),
                )),
                Err(TaskError::NotFound(t)) => {
                    json(wire::err(&id, -32001, format!("task {t} not found"), None))
                }
                Err(TaskError::NotCancelable(t)) => json(wire::err(
                    &id,
                    -32002,
                    format!("task {t} has ended and cannot be canceled"),
                    None,
                )),
                Err(e) => {
                    let r = run::Refused::from(e);
                    json(wire::err(&id, r.code, r.message, None))
                }
            }
        }
        Op::Send | Op::Stream => {
            let Some(bearer) = crate::mcp::bearer(headers) else {
                return ApiError::Unauthorized("missing API key".into()).into_response();
            };
            let inc = match wire::incoming(&params) {
                Ok(i) => i,
                Err(m) => return json(wire::err(&id, -32602, m, None)),
            };
            // The chat route takes the request from the key's limits; a message it
            // would refuse for the rate is refused here, before a task row is
            // stored. Every message also takes one from the key's A2A bucket (its
            // requests per minute), so messages the chat route refuses before its
            // limiter (unknown model, no balance) cannot churn the task table
            // either.
            if let Err(l) = key.limiters.peek() {
                return rate_limited(l);
            }
            if let Err(l) = key.a2a_sends.check(0) {
                return rate_limited(l);
            }
            let history = wire::history_length(&params);
            if matches!(op, Op::Stream) {
                return stream(ctx, state, bearer, owner, inc, version, id).await;
            }
            let blocking = inc.blocking;
            match run::start(ctx, state, bearer, owner, inc, None).await {
                Err(r) => json(wire::err(&id, r.code, r.message, None)),
                Ok((t, handle)) => {
                    let t = if blocking {
                        let _ = handle.await;
                        ctx.tasks.get(owner, &t.id).await.unwrap_or(t)
                    } else {
                        t
                    };
                    json(wire::ok(&id, wire::send_result(&t, version, history)))
                }
            }
        }
    }
}

/// `message/stream`: SSE of JSON-RPC responses: the task, its status updates, the
/// answer as artifact updates while it streams (the first piece makes the
/// artifact, the next ones `append`, the final one is `lastChunk`), and a final
/// status.
async fn stream(
    ctx: &Ctx,
    state: &AppState,
    bearer: &str,
    owner: &str,
    inc: wire::Incoming,
    version: Version,
    id: Value,
) -> Response {
    let (tx, rx) = mpsc::channel(8);
    let (first, _handle) = match run::start(ctx, state, bearer, owner, inc, Some(tx)).await {
        Ok(x) => x,
        Err(r) => return json(wire::err(&id, r.code, r.message, None)),
    };
    let tasks = ctx.tasks.clone();
    let owner = owner.to_owned();
    let (out_tx, out_rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(8);
    let frame = move |v: Value| Ok(Bytes::from(format!("data: {}\n\n", wire::ok(&id, v))));
    state.tasks.spawn(async move {
        let _ = out_tx.send(frame(wire::event_task(&first, version))).await;
        let last = relay(rx, &first, version, |v| {
            let out_tx = out_tx.clone();
            let f = frame.clone();
            async move { out_tx.send(f(v)).await.is_ok() }
        })
        .await;
        // Ended without a final state (canceled): say how it ended.
        if let Some(last) = last
            && !last.state.terminal()
            && let Ok(t) = tasks.get(&owner, &last.id).await
        {
            let _ = out_tx.send(frame(wire::event_status(&t, version))).await;
        }
    });
    let body = Body::from_stream(futures::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// Turns a task's events into stream events for `send` (false: the reader went
/// away). A piece of text is held until the next one arrives, so the last piece
/// can be marked `lastChunk`. Returns the latest task seen, `None` when the
/// reader went away.
async fn relay<F, Fut>(
    mut rx: mpsc::Receiver<Event>,
    first: &task::Task,
    version: Version,
    send: F,
) -> Option<task::Task>
where
    F: Fn(Value) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut last = first.clone();
    let mut held: Option<String> = None;
    let mut sent_any = false;
    while let Some(e) = rx.recv().await {
        let t = match e {
            Event::Text(piece) => {
                if let Some(p) = held.replace(piece) {
                    if !send(wire::event_chunk(&last, &p, sent_any, false, version)).await {
                        return None;
                    }
                    sent_any = true;
                }
                continue;
            }
            Event::Task(t) => *t,
        };
        if t.state == task::State::Completed {
            // The final piece (or the whole answer when nothing streamed).
            let text = match (held.take(), sent_any) {
                (Some(p), _) => p,
                (None, false) => t.answer.clone().unwrap_or_default(),
                (None, true) => String::new(),
            };
            if !send(wire::event_chunk(&t, &text, sent_any, true, version)).await {
                return None;
            }
        }
        if !send(wire::event_status(&t, version)).await {
            return None;
        }
        last = t;
    }
    Some(last)
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use task::{State, Task};

    fn task(state: State, answer: Option<&str>) -> Task {
        Task {
            id: "t".into(),
            context_id: "c".into(),
            state,
            status_message: None,
            updated: 0,
            history: vec![],
            answer: answer.map(str::to_owned),
            metadata: Value::Null,
        }
    }

    /// The (append, lastChunk, text) of each artifact update and the states of the
    /// status updates that `events` become.
    async fn relayed(events: Vec<Event>) -> Vec<Value> {
        let (tx, rx) = mpsc::channel(16);
        for e in events {
            tx.send(e).await.unwrap();
        }
        drop(tx);
        let out = Mutex::new(Vec::new());
        let first = task(State::Submitted, None);
        relay(rx, &first, Version::V03, |v| {
            out.lock().unwrap().push(v);
            async { true }
        })
        .await
        .unwrap();
        out.into_inner()
            .unwrap()
            .into_iter()
            .map(|v| match v["kind"].as_str() {
                Some("artifact-update") => serde_json::json!([
                    v["append"],
                    v["lastChunk"],
                    v["artifact"]["parts"][0]["text"]
                ]),
                _ => v["status"]["state"].clone(),
            })
            .collect()
    }

    #[tokio::test]
    async fn pieces_append_and_the_last_is_marked_before_the_final_status() {
        let got = relayed(vec![
            Event::Task(Box::new(task(State::Working, None))),
            Event::Text("Hel".into()),
            Event::Text("lo".into()),
            Event::Text("!".into()),
            Event::Task(Box::new(task(State::Completed, Some("Hello!")))),
        ])
        .await;
        let want = serde_json::json!([
            "working",
            [false, false, "Hel"],
            [true, false, "lo"],
            [true, true, "!"],
            "completed"
        ]);
        assert_eq!(Value::Array(got), want);
    }

    #[tokio::test]
    async fn an_answer_that_did_not_stream_is_one_last_chunk() {
        let got = relayed(vec![Event::Task(Box::new(task(
            State::Completed,
            Some("whole"),
        )))])
        .await;
        let want = serde_json::json!([[false, true, "whole"], "completed"]);
        assert_eq!(Value::Array(got), want);
        // A failed task sends no artifact.
        let got = relayed(vec![
            Event::Text("par".into()),
            Event::Task(Box::new(task(State::Failed, None))),
        ])
        .await;
        assert_eq!(Value::Array(got), serde_json::json!(["failed"]));
    }
}
