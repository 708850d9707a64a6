//! Running an A2A task: one chat completion through the gateway's own API with
//! the caller's key (its scope, limits and balance, as for any request), the
//! answer and its cost kept on the task. A streamed task (`message/stream`) asks
//! for a streamed completion and hands each piece of text on as it arrives.

use std::sync::Arc;

use axum::http::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::answer::{self, Outcome};
use super::task::{Msg, Role, State, Task, TaskError, Tasks, bounded};
use super::wire::Incoming;
use crate::mcp::api::{Api, InProcess, Streamed};

/// What every A2A request shares: the API, the tasks and `[a2a] default_model`.
pub struct Ctx {
    pub api: InProcess,
    pub tasks: Arc<Tasks>,
    /// `[a2a] default_model` (empty: the cheapest LLM the key may use).
    pub default_model: String,
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

    fn internal(message: impl Into<String>) -> Self {
        Refused {
            code: -32603,
            message: message.into(),
        }
    }
}

impl From<TaskError> for Refused {
    fn from(e: TaskError) -> Self {
        match e {
            TaskError::NotFound(id) => Refused {
                code: -32001,
                message: format!("task {id} not found"),
            },
            TaskError::Busy => Refused {
                code: -32000,
                message: "this key runs as many tasks as it may at once; wait for one to end"
                    .into(),
            },
            TaskError::NotCancelable(id) => Refused::params(format!("task {id} has ended")),
            TaskError::Store(m) => Refused::internal(m),
        }
    }
}

/// What a streamed task's reader receives: the task after each change, and the
/// answer's text piece by piece.
pub enum Event {
    Task(Box<Task>),
    Text(String),
}

/// The model of a message that names none: `[a2a] default_model` when set (and
/// this key may use it now), else the cheapest LLM this key may use now.
async fn default_model(ctx: &Ctx, key: &str) -> Result<String, Refused> {
    let r = ctx
        .api
        .call(Method::GET, "/v1/models", key, None)
        .await
        .map_err(Refused::internal)?;
    if !r.ok() {
        return Err(Refused::params(r.error_message()));
    }
    let cards = r
        .body
        .get("data")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    if !ctx.default_model.is_empty() {
        let listed = cards
            .iter()
            .any(|c| c.get("id").and_then(Value::as_str) == Some(ctx.default_model.as_str()));
        return if listed {
            Ok(ctx.default_model.clone())
        } else {
            Err(Refused::params(format!(
                "this gateway's default model (`[a2a] default_model` = `{}`) is not served to this key now; give metadata.model (GET /v1/models lists the models it may use)",
                ctx.default_model
            )))
        };
    }
    let price = |c: &Value| {
        c.get("min_price_per_token")
            .and_then(Value::as_str)
            .and_then(|p| p.parse::<u128>().ok())
            .unwrap_or(u128::MAX)
    };
    cards
        .iter()
        .filter(|c| c.get("category").and_then(Value::as_str) == Some("LLM"))
        .min_by_key(|c| price(c))
        .and_then(|c| c.get("id").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| {
            Refused::params(
                "no language model is served now; give metadata.model (GET /v1/models lists them)",
            )
        })
}

/// The chat request of a new task in `context_id`: the context's earlier turns,
/// then the message.
async fn chat_body(
    ctx: &Ctx,
    owner: &str,
    context_id: &str,
    model: &str,
    inc: &Incoming,
) -> Result<Value, Refused> {
    let mut messages: Vec<Value> = Vec::new();
    for (q, a) in ctx.tasks.context(owner, context_id).await? {
        messages.push(json!({ "role": "user", "content": q }));
        messages.push(json!({ "role": "assistant", "content": a }));
    }
    messages.push(json!({ "role": "user", "content": inc.text }));
    let mut body = json!({ "model": model, "messages": messages, "stream": false });
    if let Some(n) = inc.max_tokens {
        body["max_tokens"] = n.into();
    }
    Ok(body)
}

/// Makes the task and starts its inference; `events` receives the task after
/// each change and the answer as it streams. Returns the new task and the handle
/// of its run.
pub async fn start(
    ctx: &Ctx,
    state: &crate::state::AppState,
    key: &str,
    owner: &str,
    inc: Incoming,
    events: Option<mpsc::Sender<Event>>,
) -> Result<(Task, tokio::task::JoinHandle<()>), Refused> {
    if let Some(id) = &inc.task_id {
        let t = ctx.tasks.get(owner, id).await?;
        return Err(Refused::params(format!(
            "task {id} takes no more input (each task is one inference; state {}); send the message without taskId, in the same contextId to continue the conversation",
            t.state.name()
        )));
    }
    let model = match &inc.model {
        Some(m) => m.clone(),
        None => default_model(ctx, key).await?,
    };
    let context_id = inc
        .context_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let body = chat_body(ctx, owner, &context_id, &model, &inc).await?;
    let task = Task {
        id: uuid::Uuid::new_v4().to_string(),
        context_id,
        state: State::Submitted,
        status_message: None,
        updated: ctx.tasks.now(),
        history: vec![Msg {
            id: inc.message_id,
            role: Role::User,
            text: inc.text,
        }],
        answer: None,
        metadata: json!({ "tenzro": { "model": model } }),
    };
    ctx.tasks.insert(owner, task.clone()).await?;
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

async fn emit(events: &Option<mpsc::Sender<Event>>, t: Option<Task>) {
    if let (Some(tx), Some(t)) = (events, t) {
        let _ = tx.send(Event::Task(Box::new(t))).await;
    }
}

/// The chat completion: streamed (pieces of text to `events` as they come) when
/// the task has a reader, else whole.
async fn ask(
    api: &InProcess,
    key: &str,
    mut body: Value,
    events: &Option<mpsc::Sender<Event>>,
) -> Outcome {
    let Some(tx) = events else {
        return match api
            .call(Method::POST, "/v1/chat/completions", key, Some(body))
            .await
        {
            Ok(r) => answer::of_reply(r),
            Err(e) => Outcome::Broken(e),
        };
    };
    body["stream"] = true.into();
    body["stream_options"] = json!({ "include_usage": true });
    match api
        .call_streamed(Method::POST, "/v1/chat/completions", key, body)
        .await
    {
        Err(e) => Outcome::Broken(e),
        Ok(Streamed::Done(r)) => answer::of_reply(r),
        Ok(Streamed::Body { tenzro, body }) => {
            let (ptx, mut prx) = mpsc::channel::<String>(8);
            let fwd = async {
                while let Some(p) = prx.recv().await {
                    let _ = tx.send(Event::Text(p)).await;
                }
            };
            let read = async move { answer::of_stream(body, &tenzro, &ptx).await };
            let (out, ()) = tokio::join!(read, fwd);
            out
        }
    }
}

/// The task as the outcome leaves it.
fn finish(t: &mut Task, outcome: Outcome) {
    let agent = |text: String| Msg {
        id: uuid::Uuid::new_v4().to_string(),
        role: Role::Agent,
        text,
    };
    match outcome {
        Outcome::Answer { text, meta } => {
            let (kept, cut) = bounded(&text);
            t.metadata["tenzro"] = meta;
            if cut {
                t.metadata["tenzro"]["answer_truncated"] = true.into();
            }
            t.history.push(agent(kept.to_owned()));
            t.answer = Some(kept.to_owned());
            t.state = State::Completed;
        }
        Outcome::Refused {
            status,
            error,
            message,
        } => {
            // The caller's own limits (scope, balance, model, bad input) reject
            // the task; the network's failures fail it.
            t.state = match status {
                400 | 402 | 403 | 404 | 413 | 422 => State::Rejected,
                _ => State::Failed,
            };
            t.metadata["tenzro"]["error"] = error;
            t.metadata["tenzro"]["status"] = status.into();
            t.status_message = Some(agent(message));
        }
        Outcome::Broken(e) => {
            t.state = State::Failed;
            t.status_message = Some(agent(e));
        }
    }
}

async fn run(
    api: InProcess,
    tasks: Arc<Tasks>,
    key: String,
    id: String,
    body: Value,
    events: Option<mpsc::Sender<Event>>,
) {
    let t = tasks.update(&id, |t| t.state = State::Working).await;
    emit(&events, t).await;
    let outcome = ask(&api, &key, body, &events).await;
    let t = tasks.update(&id, |t| finish(t, outcome)).await;
    emit(&events, t).await;
}
