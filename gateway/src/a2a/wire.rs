//! A2A's JSON: the incoming message (the same reading for both protocol versions:
//! text parts are `{"text": ...}` with or without `"kind": "text"`), and tasks and
//! events written in the caller's version: 0.3 (`message/send`, kind-tagged objects,
//! lower-case states) or 1.0 (`SendMessage`, the protobuf JSON: `TASK_STATE_*`,
//! `ROLE_*`, results wrapped in `task` / `statusUpdate` / `artifactUpdate`).

use serde_json::{Map, Value, json};

use super::task::{Msg, Role, State, Task};

/// Most bytes of text one message may carry.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V03,
    V1,
}

/// What `message/send` asks for, read from its params.
#[derive(Debug)]
pub struct Incoming {
    pub message_id: String,
    pub context_id: Option<String>,
    pub task_id: Option<String>,
    pub text: String,
    /// `metadata.model` of the message or of the params.
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
    /// `configuration.blocking` (default true: answer when the task ended).
    pub blocking: bool,
}

fn id_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Reads `message/send` params; the error names the field.
pub fn incoming(params: &Value) -> Result<Incoming, String> {
    let m = params
        .get("message")
        .and_then(Value::as_object)
        .ok_or("`params.message` is required (an A2A Message object)")?;
    let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
    if !matches!(role, "user" | "ROLE_USER") {
        return Err(format!("`message.role` must be user, got `{role}`"));
    }
    let str_field = |name: &str| -> Result<Option<String>, String> {
        match m.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if id_ok(s) => Ok(Some(s.clone())),
            Some(_) => Err(format!(
                "`message.{name}` must be 1 to 128 printable ASCII characters"
            )),
        }
    };
    let message_id = str_field("messageId")?.ok_or("`message.messageId` is required")?;
    let parts = m
        .get("parts")
        .and_then(Value::as_array)
        .ok_or("`message.parts` must be an array")?;
    let mut text = String::new();
    for (i, p) in parts.iter().enumerate() {
        let piece = if let Some(t) = p.get("text").and_then(Value::as_str) {
            t.to_owned()
        } else if let Some(d) = p.get("data") {
            d.to_string()
        } else {
            return Err(format!(
                "`message.parts[{i}]`: only text and data parts are supported"
            ));
        };
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&piece);
        if text.len() > MAX_TEXT_BYTES {
            return Err(format!(
                "`message.parts`: the text is over {MAX_TEXT_BYTES} bytes"
            ));
        }
    }
    if text.trim().is_empty() {
        return Err("`message.parts` carries no text".into());
    }
    let meta = |k: &str| {
        m.get("metadata")
            .and_then(|x| x.get(k))
            .or_else(|| params.get("metadata").and_then(|x| x.get(k)))
    };
    let model = match meta("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
        Some(_) => return Err("`metadata.model` must be a model id (a string)".into()),
    };
    let max_tokens = match meta("max_tokens") {
        None | Some(Value::Null) => None,
        // A protobuf Struct (A2A 1.0) carries every number as a double.
        Some(v) => Some(
            v.as_u64()
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.fract() == 0.0 && (1.0..=1e9).contains(f))
                        .map(|f| f as u64)
                })
                .ok_or("`metadata.max_tokens` must be a positive integer")?,
        ),
    };
    let blocking = params
        .pointer("/configuration/blocking")
        .and_then(Value::as_bool)
        .or_else(|| {
            // 1.0 says it the other way round.
            params
                .pointer("/configuration/returnImmediately")
                .and_then(Value::as_bool)
                .map(|r| !r)
        })
        .unwrap_or(true);
    Ok(Incoming {
        message_id,
        context_id: str_field("contextId")?,
        task_id: str_field("taskId")?,
        text,
        model,
        max_tokens,
        blocking,
    })
}

/// The task id of `tasks/get` / `tasks/cancel` (`id`; 1.0 also `name: tasks/ID`).
pub fn task_id(params: &Value) -> Result<String, String> {
    let id = params
        .get("id")
        .and_then(Value::as_str)
        .or_else(|| {
            params
                .get("name")
                .and_then(Value::as_str)
                .and_then(|n| n.strip_prefix("tasks/"))
        })
        .ok_or("`params.id` (the task id) is required")?;
    if id_ok(id) {
        Ok(id.to_owned())
    } else {
        Err("`params.id` must be 1 to 128 printable ASCII characters".into())
    }
}

/// `historyLength` of `tasks/get` / `message/send`'s configuration.
pub fn history_length(params: &Value) -> Option<usize> {
    params
        .get("historyLength")
        .or_else(|| params.pointer("/configuration/historyLength"))
        .and_then(Value::as_u64)
        .map(|n| n.min(1000) as usize)
}

fn state(s: State, v: Version) -> &'static str {
    match (v, s) {
        (Version::V03, State::Submitted) => "submitted",
        (Version::V03, State::Working) => "working",
        (Version::V03, State::Completed) => "completed",
        (Version::V03, State::Canceled) => "canceled",
        (Version::V03, State::Failed) => "failed",
        (Version::V03, State::Rejected) => "rejected",
        (Version::V1, State::Submitted) => "TASK_STATE_SUBMITTED",
        (Version::V1, State::Working) => "TASK_STATE_WORKING",
        (Version::V1, State::Completed) => "TASK_STATE_COMPLETED",
        (Version::V1, State::Canceled) => "TASK_STATE_CANCELED",
        (Version::V1, State::Failed) => "TASK_STATE_FAILED",
        (Version::V1, State::Rejected) => "TASK_STATE_REJECTED",
    }
}

fn text_part(text: &str, v: Version) -> Value {
    match v {
        Version::V03 => json!({ "kind": "text", "text": text }),
        Version::V1 => json!({ "text": text }),
    }
}

pub fn message(m: &Msg, t: &Task, v: Version) -> Value {
    let role = match (v, m.role) {
        (Version::V03, Role::User) => "user",
        (Version::V03, Role::Agent) => "agent",
        (Version::V1, Role::User) => "ROLE_USER",
        (Version::V1, Role::Agent) => "ROLE_AGENT",
    };
    let mut o = json!({
        "messageId": m.id,
        "role": role,
        "parts": [text_part(&m.text, v)],
        "taskId": t.id,
        "contextId": t.context_id,
    });
    if v == Version::V03 {
        o["kind"] = "message".into();
    }
    o
}

fn status(t: &Task, v: Version) -> Value {
    let mut s = json!({ "state": state(t.state, v), "timestamp": rfc3339(t.updated) });
    if let Some(m) = &t.status_message {
        s["message"] = message(m, t, v);
    }
    s
}

fn artifact(t: &Task, v: Version) -> Option<Value> {
    let text = t.answer.as_ref()?;
    Some(json!({
        "artifactId": format!("{}-answer", t.id),
        "name": "answer",
        "parts": [text_part(text, v)],
    }))
}

/// A task; `history` keeps the last `history_length` messages when given.
pub fn task(t: &Task, v: Version, history_length: Option<usize>) -> Value {
    let skip = history_length.map_or(0, |n| t.history.len().saturating_sub(n));
    let history: Vec<Value> = t
        .history
        .iter()
        .skip(skip)
        .map(|m| message(m, t, v))
        .collect();
    let mut o = json!({
        "id": t.id,
        "contextId": t.context_id,
        "status": status(t, v),
        "history": history,
        "artifacts": artifact(t, v).into_iter().collect::<Vec<_>>(),
        "metadata": t.metadata,
    });
    if v == Version::V03 {
        o["kind"] = "task".into();
    }
    o
}

/// `message/send`'s result (1.0 wraps it: `{"task": ...}`).
pub fn send_result(t: &Task, v: Version, history_length: Option<usize>) -> Value {
    match v {
        Version::V03 => task(t, v, history_length),
        Version::V1 => json!({ "task": task(t, v, history_length) }),
    }
}

/// One streamed event: the task as it starts.
pub fn event_task(t: &Task, v: Version) -> Value {
    send_result(t, v, None)
}

pub fn event_status(t: &Task, v: Version) -> Value {
    match v {
        Version::V03 => json!({
            "kind": "status-update",
            "taskId": t.id,
            "contextId": t.context_id,
            "status": status(t, v),
            "final": t.state.terminal(),
            "metadata": t.metadata,
        }),
        Version::V1 => json!({ "statusUpdate": {
            "taskId": t.id,
            "contextId": t.context_id,
            "status": status(t, v),
            "metadata": t.metadata,
        }}),
    }
}

/// One piece of a streamed answer: the answer artifact's text so far grows by
/// `text` (`append` after the first piece); `last_chunk` on the final piece.
pub fn event_chunk(t: &Task, text: &str, append: bool, last_chunk: bool, v: Version) -> Value {
    let a = json!({
        "artifactId": format!("{}-answer", t.id),
        "name": "answer",
        "parts": [text_part(text, v)],
    });
    let body = json!({
        "taskId": t.id,
        "contextId": t.context_id,
        "artifact": a,
        "append": append,
        "lastChunk": last_chunk,
    });
    match v {
        Version::V03 => {
            let mut o = body;
            o["kind"] = "artifact-update".into();
            o
        }
        Version::V1 => json!({ "artifactUpdate": body }),
    }
}

/// A JSON-RPC 2.0 success.
pub fn ok(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// A JSON-RPC 2.0 error.
pub fn err(id: &Value, code: i64, message: impl Into<String>, data: Option<Value>) -> Value {
    let mut e = Map::new();
    e.insert("code".into(), code.into());
    e.insert("message".into(), message.into().into());
    if let Some(d) = data {
        e.insert("data".into(), d);
    }
    json!({ "jsonrpc": "2.0", "id": id, "error": e })
}

/// Unix seconds as RFC 3339 UTC (`1970-01-01T00:00:00Z`).
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
    }

    #[test]
    fn both_versions_of_a_message_read_the_same() {
        let v03 = json!({"message": {"kind": "message", "messageId": "m1", "role": "user",
            "parts": [{"kind": "text", "text": "hi"}], "metadata": {"model": "x"}}});
        let v1 = json!({"message": {"messageId": "m1", "role": "ROLE_USER",
            "parts": [{"text": "hi"}]}, "metadata": {"model": "x"},
            "configuration": {"returnImmediately": true}});
        let a = incoming(&v03).unwrap();
        let b = incoming(&v1).unwrap();
        assert_eq!(
            (a.text.as_str(), a.model.as_deref(), a.blocking),
            ("hi", Some("x"), true)
        );
        assert_eq!(
            (b.text.as_str(), b.model.as_deref(), b.blocking),
            ("hi", Some("x"), false)
        );
    }

    #[test]
    fn bad_messages_name_the_field() {
        let check = |p: Value, want: &str| {
            let e = incoming(&p).unwrap_err();
            assert!(e.contains(want), "{e}");
        };
        check(json!({}), "params.message");
        check(json!({"message": {"parts": []}}), "messageId");
        check(
            json!({"message": {"messageId": "m", "parts": [{"kind": "file"}]}}),
            "parts[0]",
        );
        check(
            json!({"message": {"messageId": "m", "parts": [{"text": " "}]}}),
            "no text",
        );
        check(
            json!({"message": {"messageId": "m", "role": "agent", "parts": [{"text": "x"}]}}),
            "role",
        );
        let big = "x".repeat(MAX_TEXT_BYTES + 1);
        check(
            json!({"message": {"messageId": "m", "parts": [{"text": big}]}}),
            "over",
        );
    }
}
