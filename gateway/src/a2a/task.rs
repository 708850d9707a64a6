//! A2A tasks as the gateway keeps them: one inference each, owned by the key that
//! asked, in the SQL store (`store::a2a`: one row per task, written when it is made
//! and at each change of state), so a restart keeps them and every replica sees
//! them. Kept for `[a2a] retention_s` and at most `[a2a] max_tasks` rows, enforced
//! by [`super::retention`]'s sweep. The tasks running on this replica are also kept
//! in memory, for their abort handles and the per-key limit of running tasks.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::task::AbortHandle;

use crate::clock::SharedClock;
use crate::store::Store;
use crate::store::a2a::TaskRow;

/// Most earlier turns of a context given to a new task.
pub const MAX_CONTEXT_TURNS: usize = 16;
/// Most bytes of an answer kept on a task (longer ones are cut, and
/// `metadata.tenzro.answer_truncated` says so); with the 64 KiB question this
/// bounds a stored task to a few hundred KiB.
pub const MAX_ANSWER_BYTES: usize = 96 * 1024;
/// The status message of a task whose replica stopped while it ran.
pub const INTERRUPTED: &str =
    "interrupted: the gateway restarted while this task ran; send the message again";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

    /// The stored name (A2A 0.3's).
    pub fn name(self) -> &'static str {
        match self {
            State::Submitted => "submitted",
            State::Working => "working",
            State::Completed => "completed",
            State::Canceled => "canceled",
            State::Failed => "failed",
            State::Rejected => "rejected",
        }
    }

    fn parse(s: &str) -> Option<State> {
        serde_json::from_value(Value::String(s.to_owned())).ok()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Agent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Msg {
    pub id: String,
    pub role: Role,
    pub text: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub context_id: String,
    pub state: State,
    /// The agent's status message (an error's text when it failed).
    pub status_message: Option<Msg>,
    /// Unix seconds of the latest state change (the gateway's clock).
    pub updated: u64,
    pub history: Vec<Msg>,
    /// The answer's text, once completed.
    pub answer: Option<String>,
    /// `{"tenzro": {model, cost, asset, provider, usage, receipt}}`, or the error.
    pub metadata: Value,
}

/// `text` cut to at most [`MAX_ANSWER_BYTES`] on a character boundary, and
/// whether it was cut.
pub fn bounded(text: &str) -> (&str, bool) {
    if text.len() <= MAX_ANSWER_BYTES {
        return (text, false);
    }
    let mut end = MAX_ANSWER_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], true)
}

/// Limits of the tasks (`[a2a]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most tasks of one key running at once on this replica.
    pub max_running_per_key: usize,
    /// Most ended tasks of one key kept in the store; its oldest beyond go when
    /// it makes a new one.
    pub max_tasks_per_key: u64,
}

/// A task running on this replica.
struct Live {
    owner: String,
    task: Task,
    abort: Option<AbortHandle>,
}

pub struct Tasks {
    store: Store,
    clock: SharedClock,
    /// This replica's id, written on the rows of the tasks it runs.
    runner: String,
    limits: Limits,
    running: Mutex<HashMap<String, Live>>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum TaskError {
    NotFound(String),
    NotCancelable(String),
    Busy,
    /// The store failed (the message is for the log and the caller).
    Store(String),
}

fn stored(e: impl std::fmt::Display) -> TaskError {
    TaskError::Store(format!("the task store failed: {e}"))
}

/// The row of `owner`'s task.
fn row_of(owner: &str, t: &Task, runner: &str, created: u64) -> Result<TaskRow, TaskError> {
    Ok(TaskRow {
        id: t.id.clone(),
        owner: owner.to_owned(),
        context_id: t.context_id.clone(),
        state: t.state.name().to_owned(),
        runner: runner.to_owned(),
        body: serde_json::to_string(t).map_err(stored)?,
        created,
        updated: t.updated,
    })
}

/// The task of a row: its body, with the row's state and time (a replica that
/// restarted changes those).
pub fn task_of(row: &TaskRow) -> Result<Task, TaskError> {
    let mut t: Task = serde_json::from_str(&row.body)
        .map_err(|e| stored(format!("task {}: unreadable body: {e}", row.id)))?;
    t.state = State::parse(&row.state)
        .ok_or_else(|| stored(format!("task {}: unknown state {:?}", row.id, row.state)))?;
    t.updated = row.updated;
    if t.state == State::Failed && t.status_message.is_none() {
        t.status_message = Some(Msg {
            id: format!("{}-interrupted", t.id),
            role: Role::Agent,
            text: INTERRUPTED.into(),
        });
    }
    Ok(t)
}

impl Tasks {
    pub fn new(store: Store, clock: SharedClock, runner: String, limits: Limits) -> Self {
        Tasks {
            store,
            clock,
            runner,
            limits,
            running: Mutex::default(),
        }
    }

    pub fn now(&self) -> u64 {
        self.clock.unix()
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Live>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a new task of `owner`; refused when the key runs too many here.
    pub async fn insert(&self, owner: &str, task: Task) -> Result<(), TaskError> {
        let now = self.now();
        let row = row_of(owner, &task, &self.runner, now)?;
        {
            let mut g = self.lock();
            let running = g.values().filter(|l| l.owner == owner).count();
            if running >= self.limits.max_running_per_key {
                return Err(TaskError::Busy);
            }
            g.insert(
                task.id.clone(),
                Live {
                    owner: owner.to_owned(),
                    task,
                    abort: None,
                },
            );
        }
        if let Err(e) = self.store.insert_a2a_task(&row).await {
            self.lock().remove(&row.id);
            return Err(stored(e));
        }
        if let Err(e) = self
            .store
            .trim_a2a_tasks_of(owner, self.limits.max_tasks_per_key)
            .await
        {
            tracing::warn!(error = %e, "could not trim a key's stored A2A tasks; the sweep will");
        }
        Ok(())
    }

    pub fn set_abort(&self, id: &str, abort: AbortHandle) {
        if let Some(l) = self.lock().get_mut(id) {
            l.abort = Some(abort);
        }
    }

    /// `owner`'s task (another key's is not found).
    pub async fn get(&self, owner: &str, id: &str) -> Result<Task, TaskError> {
        let live = self
            .lock()
            .get(id)
            .filter(|l| l.owner == owner)
            .map(|l| l.task.clone());
        if let Some(t) = live {
            return Ok(t);
        }
        match self.store.a2a_task(owner, id).await.map_err(stored)? {
            Some(row) => task_of(&row),
            None => Err(TaskError::NotFound(id.to_owned())),
        }
    }

    /// Changes a task running here unless it already ended; `None` when it is not
    /// running here. A task that ended in the store meanwhile (canceled through
    /// another replica) stays as it ended, and its run here is aborted.
    pub async fn update(&self, id: &str, f: impl FnOnce(&mut Task)) -> Option<Task> {
        let now = self.now();
        let (owner, t) = {
            let mut g = self.lock();
            let l = g.get_mut(id)?;
            f(&mut l.task);
            l.task.updated = now;
            let out = (l.owner.clone(), l.task.clone());
            if l.task.state.terminal() {
                g.remove(id);
            }
            out
        };
        let body = match serde_json::to_string(&t) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(task = id, error = %e, "serialising an A2A task");
                return Some(t);
            }
        };
        match self
            .store
            .update_a2a_task(id, None, t.state.name(), &body, now)
            .await
        {
            Ok(true) => Some(t),
            Ok(false) => {
                let ended = self.lock().remove(id);
                let stored = self.store.a2a_task(&owner, id).await.ok().flatten();
                if let Some(a) = ended.and_then(|l| l.abort) {
                    a.abort();
                }
                stored.and_then(|r| task_of(&r).ok()).or(Some(t))
            }
            Err(e) => {
                tracing::error!(task = id, error = %e, "writing an A2A task");
                Some(t)
            }
        }
    }

    /// Cancels `owner`'s running task: its inference is dropped when it runs here
    /// (the caller pays for what was generated until then, as for any client that
    /// goes away); one running on another replica ends there at its next change.
    pub async fn cancel(&self, owner: &str, id: &str) -> Result<Task, TaskError> {
        let live = {
            let mut g = self.lock();
            match g.get(id) {
                Some(l) if l.owner == owner => g.remove(id),
                _ => None,
            }
        };
        let mut t = match live {
            Some(l) => {
                if let Some(a) = l.abort {
                    a.abort();
                }
                l.task
            }
            None => self.get(owner, id).await?,
        };
        if t.state.terminal() {
            return Err(TaskError::NotCancelable(id.to_owned()));
        }
        t.state = State::Canceled;
        t.updated = self.now();
        let body = serde_json::to_string(&t).map_err(stored)?;
        match self
            .store
            .update_a2a_task(id, Some(owner), t.state.name(), &body, t.updated)
            .await
            .map_err(stored)?
        {
            true => Ok(t),
            false => Err(TaskError::NotCancelable(id.to_owned())),
        }
    }

    /// The earlier completed turns of `owner`'s context, oldest first.
    pub async fn context(
        &self,
        owner: &str,
        context_id: &str,
    ) -> Result<Vec<(String, String)>, TaskError> {
        let rows = self
            .store
            .a2a_context(owner, context_id, MAX_CONTEXT_TURNS)
            .await
            .map_err(stored)?;
        let mut turns = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            let t = task_of(row)?;
            if let (Some(q), Some(a)) = (t.history.iter().find(|m| m.role == Role::User), t.answer)
            {
                turns.push((q.text.clone(), a));
            }
        }
        Ok(turns)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::{Clock, ManualClock};

    fn task(id: &str) -> Task {
        Task {
            id: id.into(),
            context_id: "c".into(),
            state: State::Working,
            status_message: None,
            updated: 0,
            history: vec![Msg {
                id: format!("{id}-q"),
                role: Role::User,
                text: format!("question {id}"),
            }],
            answer: None,
            metadata: Value::Null,
        }
    }

    async fn tasks(max: usize) -> (Tasks, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Store::open(&url).await.unwrap();
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::default());
        let limits = Limits {
            max_running_per_key: max,
            max_tasks_per_key: 3,
        };
        (Tasks::new(store, clock, "r1".into(), limits), dir)
    }

    #[tokio::test]
    async fn tasks_are_their_owners_and_outlive_the_process() {
        let (t, _dir) = tasks(16).await;
        t.insert("k1", task("a")).await.unwrap();
        assert!(t.get("k1", "a").await.is_ok());
        assert_eq!(
            t.get("k2", "a").await.unwrap_err(),
            TaskError::NotFound("a".into())
        );
        assert_eq!(
            t.cancel("k2", "a").await.unwrap_err(),
            TaskError::NotFound("a".into())
        );
        let done = t
            .update("a", |x| {
                x.state = State::Completed;
                x.answer = Some("answer a".into());
            })
            .await
            .unwrap();
        assert_eq!(done.state, State::Completed);
        // Another Tasks over the same store (a restarted gateway) reads it.
        let again = Tasks::new(t.store.clone(), t.clock.clone(), "r1".into(), t.limits());
        let got = again.get("k1", "a").await.unwrap();
        assert_eq!(
            (got.state, got.answer.as_deref()),
            (State::Completed, Some("answer a"))
        );
        assert!(again.get("k2", "a").await.is_err());
        assert_eq!(
            again.context("k1", "c").await.unwrap(),
            vec![("question a".to_owned(), "answer a".to_owned())]
        );
        assert!(again.context("k2", "c").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_canceled_task_stays_canceled() {
        let (t, _dir) = tasks(16).await;
        t.insert("k", task("a")).await.unwrap();
        assert_eq!(t.cancel("k", "a").await.unwrap().state, State::Canceled);
        // Its run is gone from this replica: a late answer changes nothing.
        assert!(
            t.update("a", |x| x.state = State::Completed)
                .await
                .is_none()
        );
        assert_eq!(t.get("k", "a").await.unwrap().state, State::Canceled);
        assert_eq!(
            t.cancel("k", "a").await.unwrap_err(),
            TaskError::NotCancelable("a".into())
        );
    }

    #[tokio::test]
    async fn a_cancel_through_another_replica_wins_over_the_answer() {
        let (t, _dir) = tasks(16).await;
        t.insert("k", task("a")).await.unwrap();
        let other = Tasks::new(t.store.clone(), t.clock.clone(), "r2".into(), t.limits());
        assert_eq!(other.cancel("k", "a").await.unwrap().state, State::Canceled);
        let after = t.update("a", |x| x.state = State::Completed).await.unwrap();
        assert_eq!(after.state, State::Canceled);
        assert_eq!(t.get("k", "a").await.unwrap().state, State::Canceled);
    }

    #[tokio::test]
    async fn running_tasks_per_key_are_bounded() {
        let (t, _dir) = tasks(3).await;
        for i in 0..3 {
            t.insert("k", task(&i.to_string())).await.unwrap();
        }
        assert_eq!(t.insert("k", task("x")).await.unwrap_err(), TaskError::Busy);
        assert!(t.insert("other", task("y")).await.is_ok());
        t.update("0", |x| x.state = State::Failed).await.unwrap();
        assert!(t.insert("k", task("z")).await.is_ok(), "one ended");
    }

    /// The churn attack: a key making and ending task after task keeps only its
    /// newest ended ones and never removes another key's.
    #[tokio::test]
    async fn one_keys_churn_trims_only_its_own_ended_tasks() {
        let (t, _dir) = tasks(16).await;
        t.insert("other", task("o")).await.unwrap();
        t.update("o", |x| x.state = State::Completed).await.unwrap();
        for i in 0..8 {
            let id = format!("c{i}");
            t.insert("k", task(&id)).await.unwrap();
            t.update(&id, |x| x.state = State::Rejected).await.unwrap();
        }
        t.insert("k", task("live")).await.unwrap();
        let mut kept = Vec::new();
        for i in 0..8 {
            if t.get("k", &format!("c{i}")).await.is_ok() {
                kept.push(i);
            }
        }
        assert_eq!(kept, [5, 6, 7], "its three newest ended tasks");
        assert_eq!(t.get("k", "live").await.unwrap().state, State::Working);
        assert_eq!(t.get("other", "o").await.unwrap().state, State::Completed);
    }

    #[test]
    fn long_answers_are_cut_on_a_character_boundary() {
        let s = "é".repeat(MAX_ANSWER_BYTES);
        let (cut, was) = bounded(&s);
        assert!(was && cut.len() <= MAX_ANSWER_BYTES && cut.len() >= MAX_ANSWER_BYTES - 1);
        assert_eq!(bounded("hi"), ("hi", false));
    }
}
