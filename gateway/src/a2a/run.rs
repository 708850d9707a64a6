//! Running an A2A task: one chat completion through the gateway's own API with
//! the caller's key (its scope, limits and balance, as for any request), the
//! answer and its cost kept on the task.

use std::sync::Arc;

use axum::http::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::task::{Msg, Role, State, Task, TaskError, Tasks};
use super::wire::Incoming;
use crate::clock::unix_now;
use crate::mcp::api::{Api, InProcess};

/// What every A2A request shares: the API and the tasks.
pub struct Ctx {
    pub api: InProcess,
    pub tasks: Arc<Tasks>,
}

/// Why a message did not become a task (a JSON-RPC error).
pub struct Refused {
    pub code: i64,
    pub message: String,
}

impl Refused {
    fn params(message: impl Into<String>) -> Self {
        Refused {
            code: -32602,
            message: message.into(),
        }
    }
}

/// The cheapest LLM this key may use now.
async fn default_model(ctx: &Ctx, key: &str) -> Result<String, Refused> {
    let r = ctx
        .api
        .call(Method::GET, "/v1/models", key, None)
        .await
        .map_err(|e| Refused {
            code: -32603,
            message: e,
        })?;
    if !r.ok() {
        return Err(Refused::params(r.error_message()));
    }
    let price = |c: &Value| {
        c.get("min_price_per_token")
            .and_then(Value::as_str)
            .and_then(|p| p.parse::<u128>().ok())
            .unwrap_or(u128::MAX)
    };
    r.body
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("category").and_then(Value::as_str) == Some("LLM"))
        .min_by_key(|c| price(c))
        .and_then(|c| c.get("id").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| {
            Refused::params(
                "no language model is served now; give metadata.model (GET /v1/models lists them)",
            )
        })
}

/// Makes the task and starts its inference; `events` receives the task after
/// each change. Returns the new task and the handle of its run.
pub async fn start(
    ctx: &Ctx,
    state: &crate::state::AppState,
    key: &str,
    owner: &str,
    inc: Incoming,
    events: Option<mpsc::Sender<Task>>,
) -> Result<(Task, tokio::task::JoinHandle<()>), Refused> {
    if let Some(id) = &inc.task_id {
        return Err(match ctx.tasks.get(owner, id) {
            Ok(t) => Refused::params(format!(
                "task {id} takes no more input (each task is one inference; state {:?}); send the message without taskId, in the same contextId to continue the conversation",
                t.state
            )),
            Err(_) => Refused {
                code: -32001,
                message: format!("task {id} not found"),
            },
        });
    }
    let model = match inc.model {
        Some(m) => m,
        None => default_model(ctx, key).await?,
    };
    let context_id = inc
        .context_id
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut messages: Vec<Value> = Vec::new();
    for (q, a) in ctx.tasks.context(owner, &context_id) {
        messages.push(json!({ "role": "user", "content": q }));
        messages.push(json!({ "role": "assistant", "content": a }));
    }
    messages.push(json!({ "role": "user", "content": inc.text }));
    let mut body = json!({ "model": model, "messages": messages, "stream": false });
    if let Some(n) = inc.max_tokens {
        body["max_tokens"] = n.into();
    }
    let now = unix_now();
    let task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        context_id,
        state: State::Submitted,
        status_message: None,
        updated: now,
        history: vec![Msg {
            id: inc.message_id,
            role: Role::User,
            text: inc.text,
        }],
        answer: None,
        metadata: json!({ "tenzro": { "model": model } }),
    };
    ctx.tasks
        .insert(owner, task.clone(), now)
        .map_err(|e| match e {
            TaskError::Busy => Refused {
                code: -32000,
                message: format!(
                    "this key runs {} tasks already; wait for one to end",
                    super::task::MAX_RUNNING_PER_KEY
                ),
            },
            other => Refused {
                code: -32603,
                message: format!("{other:?}"),
            },
        })?;
    let run = run(
        ctx.api.clone(),
        ctx.tasks.clone(),
        key.to_owned(),
        task.id.clone(),
        body,
        events,
    );
    let handle = state.tasks.spawn(run);
    ctx.tasks.set_abort(&task.id, handle.abort_handle());
    Ok((task, handle))
}

async fn emit(events: &Option<mpsc::Sender<Task>>, t: Option<Task>) {
    if let (Some(tx), Some(t)) = (events, t) {
        let _ = tx.send(t).await;
    }
}

async fn run(
    api: InProcess,
    tasks: Arc<Tasks>,
    key: String,
    id: String,
    body: Value,
    events: Option<mpsc::Sender<Task>>,
) {
    let t = tasks.update(&id, unix_now(), |t| t.state = State::Working);
    emit(&events, t).await;
    let reply = api
        .call(Method::POST, "/v1/chat/completions", &key, Some(body))
        .await;
    let agent = |text: String| Msg {
        id: uuid::Uuid::new_v4().to_string(),
        role: Role::Agent,
        text,
    };
    let t = tasks.update(&id, unix_now(), |t| match reply {
        Ok(r) if r.ok() => {
            let b = &r.body;
            let text = b
                .pointer("/choices/0/message/content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            t.metadata["tenzro"] = json!({
                "model": b.get("model"),
                "cost": r.header("cost"),
                "asset": r.header("asset"),
                "provider": r.header("provider"),
                "channel": r.header("channel"),
                "usage": b.get("usage"),
                "receipt": b.pointer("/tenzro/receipt"),
                "finish_reason": b.pointer("/choices/0/finish_reason"),
            });
            t.history.push(agent(text.clone()));
            t.answer = Some(text);
            t.state = State::Completed;
        }
        Ok(r) => {
            // The caller's own limits (scope, balance, model, bad input) reject
            // the task; the network's failures fail it.
            t.state = match r.status {
                400 | 402 | 403 | 404 | 413 | 422 => State::Rejected,
                _ => State::Failed,
            };
            t.metadata["tenzro"]["error"] = r.body.get("error").cloned().unwrap_or(Value::Null);
            t.metadata["tenzro"]["status"] = r.status.into();
            t.status_message = Some(agent(r.error_message()));
        }
        Err(e) => {
            t.state = State::Failed;
            t.status_message = Some(agent(e));
        }
    });
    emit(&events, t).await;
}
