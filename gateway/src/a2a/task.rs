//! A2A tasks as the gateway keeps them: one inference each, owned by the key that
//! asked, kept in memory for `RETENTION_S` and at most `MAX_TASKS` at once (the
//! oldest go first). The store is being reorganised (issue 14), so tasks are not
//! in the SQL store yet: a restart forgets them, not their cost (the cost is
//! charged and recorded by the chat route like any request).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde_json::Value;
use tokio::task::AbortHandle;

/// How long a task is kept after it was created.
pub const RETENTION_S: u64 = 3600;
/// Most tasks kept at once (all keys).
pub const MAX_TASKS: usize = 10_000;
/// Most tasks of one key running at once.
pub const MAX_RUNNING_PER_KEY: usize = 16;
/// Most earlier turns of a context given to a new task.
pub const MAX_CONTEXT_TURNS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Submitted,
    Working,
    Completed,
    Canceled,
    Failed,
    Rejected,
}

impl State {
    pub fn terminal(self) -> bool {
        matches!(
            self,
            State::Completed | State::Canceled | State::Failed | State::Rejected
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Agent,
}

#[derive(Debug, Clone)]
pub struct Msg {
    pub id: String,
    pub role: Role,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub context_id: String,
    pub state: State,
    /// The agent's status message (an error's text when it failed).
    pub status_message: Option<Msg>,
    /// Unix seconds of the latest state change.
    pub updated: u64,
    pub history: Vec<Msg>,
    /// The answer's text, once completed.
    pub answer: Option<String>,
    /// `{"tenzro": {model, cost, asset, provider, usage, receipt}}`, or the error.
    pub metadata: Value,
}

struct Entry {
    owner: String,
    created: u64,
    task: Task,
    abort: Option<AbortHandle>,
}

#[derive(Default)]
pub struct Tasks {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    order: VecDeque<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TaskError {
    NotFound(String),
    NotCancelable(String),
    Busy,
}

impl Inner {
    fn expire(&mut self, now: u64) {
        while let Some(id) = self.order.front() {
            let old = self
                .map
                .get(id)
                .is_none_or(|e| e.created + RETENTION_S <= now);
            if !old && self.map.len() < MAX_TASKS {
                break;
            }
            if let Some(id) = self.order.pop_front()
                && let Some(e) = self.map.remove(&id)
                && let Some(a) = e.abort
            {
                a.abort();
            }
        }
    }
}

impl Tasks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a new task of `owner`; refused when the key runs too many.
    pub fn insert(&self, owner: &str, task: Task, now: u64) -> Result<(), TaskError> {
        let mut g = self.lock();
        g.expire(now);
        let running = g
            .map
            .values()
            .filter(|e| e.owner == owner && !e.task.state.terminal())
            .count();
        if running >= MAX_RUNNING_PER_KEY {
            return Err(TaskError::Busy);
        }
        g.order.push_back(task.id.clone());
        g.map.insert(
            task.id.clone(),
            Entry {
                owner: owner.to_owned(),
                created: now,
                task,
                abort: None,
            },
        );
        Ok(())
    }

    pub fn set_abort(&self, id: &str, abort: AbortHandle) {
        if let Some(e) = self.lock().map.get_mut(id) {
            e.abort = Some(abort);
        }
    }

    /// `owner`'s task (another key's is not found).
    pub fn get(&self, owner: &str, id: &str) -> Result<Task, TaskError> {
        self.lock()
            .map
            .get(id)
            .filter(|e| e.owner == owner)
            .map(|e| e.task.clone())
            .ok_or_else(|| TaskError::NotFound(id.to_owned()))
    }

    /// Changes a task unless it already ended (a canceled task stays canceled).
    pub fn update(&self, id: &str, now: u64, f: impl FnOnce(&mut Task)) -> Option<Task> {
        let mut g = self.lock();
        let e = g.map.get_mut(id)?;
        if e.task.state.terminal() {
            return Some(e.task.clone());
        }
        f(&mut e.task);
        e.task.updated = now;
        if e.task.state.terminal() {
            e.abort = None;
        }
        Some(e.task.clone())
    }

    /// Cancels `owner`'s running task: its inference is dropped (the caller pays
    /// for what was generated until then, as for any client that goes away).
    pub fn cancel(&self, owner: &str, id: &str, now: u64) -> Result<Task, TaskError> {
        let mut g = self.lock();
        let e = g
            .map
            .get_mut(id)
            .filter(|e| e.owner == owner)
            .ok_or_else(|| TaskError::NotFound(id.to_owned()))?;
        if e.task.state.terminal() {
            return Err(TaskError::NotCancelable(id.to_owned()));
        }
        if let Some(a) = e.abort.take() {
            a.abort();
        }
        e.task.state = State::Canceled;
        e.task.updated = now;
        Ok(e.task.clone())
    }

    /// The earlier completed turns of `owner`'s context, oldest first.
    pub fn context(&self, owner: &str, context_id: &str) -> Vec<(String, String)> {
        let g = self.lock();
        let mut turns: Vec<(u64, String, String)> = g
            .map
            .values()
            .filter(|e| e.owner == owner && e.task.context_id == context_id)
            .filter(|e| e.task.state == State::Completed)
            .filter_map(|e| {
                let question = e.task.history.iter().find(|m| m.role == Role::User)?;
                Some((e.created, question.text.clone(), e.task.answer.clone()?))
            })
            .collect();
        turns.sort_by_key(|t| t.0);
        let skip = turns.len().saturating_sub(MAX_CONTEXT_TURNS);
        turns
            .into_iter()
            .skip(skip)
            .map(|(_, q, a)| (q, a))
            .collect()
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn task(id: &str) -> Task {
        Task {
            id: id.into(),
            context_id: "c".into(),
            state: State::Working,
            status_message: None,
            updated: 0,
            history: vec![],
            answer: None,
            metadata: Value::Null,
        }
    }

    #[test]
    fn tasks_are_their_owners_and_expire() {
        let t = Tasks::default();
        t.insert("k1", task("a"), 100).unwrap();
        assert!(t.get("k1", "a").is_ok());
        assert_eq!(
            t.get("k2", "a").unwrap_err(),
            TaskError::NotFound("a".into())
        );
        assert_eq!(
            t.cancel("k2", "a", 101).unwrap_err(),
            TaskError::NotFound("a".into())
        );
        t.insert("k1", task("b"), 100 + RETENTION_S).unwrap();
        assert!(t.get("k1", "a").is_err(), "expired");
        assert!(t.get("k1", "b").is_ok());
    }

    #[test]
    fn a_canceled_task_stays_canceled() {
        let t = Tasks::default();
        t.insert("k", task("a"), 1).unwrap();
        assert_eq!(t.cancel("k", "a", 2).unwrap().state, State::Canceled);
        let after = t.update("a", 3, |x| x.state = State::Completed).unwrap();
        assert_eq!(after.state, State::Canceled);
        assert_eq!(
            t.cancel("k", "a", 4).unwrap_err(),
            TaskError::NotCancelable("a".into())
        );
    }

    #[test]
    fn running_tasks_per_key_are_bounded() {
        let t = Tasks::default();
        for i in 0..MAX_RUNNING_PER_KEY {
            t.insert("k", task(&i.to_string()), 1).unwrap();
        }
        assert_eq!(t.insert("k", task("x"), 1).unwrap_err(), TaskError::Busy);
        assert!(t.insert("other", task("y"), 1).is_ok());
    }
}
