//! A2A tasks in the store (`migrations/0009_a2a_tasks.sql`), one row each: written
//! when a task is made and at each change of state, read by `tasks/get`, and
//! swept by age and count. The store knows rows, not A2A: the gateway's `a2a`
//! module turns a task into its JSON `body` and back.
//!
//! A task that ended (completed, canceled, failed, rejected) is never changed
//! again: every update is conditional on the row still running, so a cancel wins
//! over the answer that arrives after it, on any replica.

use sqlx::Row;

use crate::store::{Store, StoreError, i64_of, u64_of};

/// One task as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRow {
    pub id: String,
    /// The id of the API key that made it.
    pub owner: String,
    pub context_id: String,
    pub state: String,
    /// The replica that runs it.
    pub runner: String,
    /// The task's JSON.
    pub body: String,
    pub created: u64,
    pub updated: u64,
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Rows older than the retention.
    pub expired: u64,
    /// The oldest rows over the count limit.
    pub over_limit: u64,
}

/// Reads the columns in this order: id, owner, context_id, state, runner, body,
/// created, updated.
fn row_of(r: &sqlx::any::AnyRow) -> Result<TaskRow, StoreError> {
    Ok(TaskRow {
        id: r.try_get(0)?,
        owner: r.try_get(1)?,
        context_id: r.try_get(2)?,
        state: r.try_get(3)?,
        runner: r.try_get(4)?,
        body: r.try_get(5)?,
        created: u64_of(r.try_get(6)?),
        updated: u64_of(r.try_get(7)?),
    })
}

impl Store {
    /// Writes a new task.
    pub async fn insert_a2a_task(&self, t: &TaskRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO a2a_tasks (id, owner, context_id, state, runner, body, created, updated) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(t.id.as_str())
        .bind(t.owner.as_str())
        .bind(t.context_id.as_str())
        .bind(t.state.as_str())
        .bind(t.runner.as_str())
        .bind(t.body.as_str())
        .bind(i64_of(t.created))
        .bind(i64_of(t.updated))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Changes a task's state and body unless it has ended (or is not `owner`'s,
    /// when `owner` is given); whether it changed.
    pub async fn update_a2a_task(
        &self,
        id: &str,
        owner: Option<&str>,
        state: &str,
        body: &str,
        updated: u64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE a2a_tasks SET state = $1, body = $2, updated = $3 \
             WHERE id = $4 AND ($5 = '' OR owner = $5) \
             AND NOT state IN ('completed', 'canceled', 'failed', 'rejected')",
        )
        .bind(state)
        .bind(body)
        .bind(i64_of(updated))
        .bind(id)
        .bind(owner.unwrap_or_default())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// `owner`'s task `id` (another key's is `None`).
    pub async fn a2a_task(&self, owner: &str, id: &str) -> Result<Option<TaskRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, owner, context_id, state, runner, body, created, updated FROM a2a_tasks WHERE id = $1 AND owner = $2",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(row_of).transpose()
    }

    /// The latest `limit` completed tasks of `owner` in `context_id`, newest first.
    pub async fn a2a_context(
        &self,
        owner: &str,
        context_id: &str,
        limit: usize,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, owner, context_id, state, runner, body, created, updated FROM a2a_tasks \
             WHERE owner = $1 AND context_id = $2 AND state = 'completed' \
             ORDER BY created DESC, id DESC LIMIT $3",
        )
        .bind(owner)
        .bind(context_id)
        .bind(i64_of(limit as u64))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row_of).collect()
    }

    /// Marks `runner`'s unfinished tasks failed (`body` is the failed task's body
    /// for each, from its current one); how many. For a replica that restarted:
    /// the tasks it ran died with it.
    pub async fn fail_a2a_tasks_of(
        &self,
        runner: &str,
        now: u64,
        body: impl Fn(&TaskRow) -> String,
    ) -> Result<u64, StoreError> {
        let rows = sqlx::query(
            "SELECT id, owner, context_id, state, runner, body, created, updated FROM a2a_tasks \
             WHERE runner = $1 AND NOT state IN ('completed', 'canceled', 'failed', 'rejected')",
        )
        .bind(runner)
        .fetch_all(&self.pool)
        .await?;
        let mut n = 0;
        for r in rows.iter().map(row_of) {
            let r = r?;
            if self
                .update_a2a_task(&r.id, None, "failed", &body(&r), now)
                .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Deletes `owner`'s ended tasks beyond its newest `keep` ended ones, so one
    /// key's churn removes only its own history; how many went.
    pub async fn trim_a2a_tasks_of(&self, owner: &str, keep: u64) -> Result<u64, StoreError> {
        let gone = sqlx::query(
            "DELETE FROM a2a_tasks WHERE id IN (SELECT id FROM a2a_tasks WHERE owner = $1 AND state IN ('completed', 'canceled', 'failed', 'rejected') ORDER BY created DESC, id DESC LIMIT $2 OFFSET $3)",
        )
        .bind(owner)
        .bind(i64::MAX)
        .bind(i64_of(keep))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(gone)
    }

    /// Deletes tasks made before `now - retention_s`, then the oldest ended ones
    /// beyond `max_tasks` ended tasks (running tasks are bounded per key by the
    /// gateway, and a sweep never removes one under its run).
    pub async fn sweep_a2a_tasks(
        &self,
        now: u64,
        retention_s: u64,
        max_tasks: u64,
    ) -> Result<Swept, StoreError> {
        let expired = sqlx::query("DELETE FROM a2a_tasks WHERE created < $1")
            .bind(i64_of(now.saturating_sub(retention_s)))
            .execute(&self.pool)
            .await?
            .rows_affected();
        // The newest row that goes: everything at or before it (in (created, id)
        // order) is over the limit.
        let edge = sqlx::query(
            "SELECT created, id FROM a2a_tasks WHERE state IN ('completed', 'canceled', 'failed', 'rejected') ORDER BY created DESC, id DESC LIMIT 1 OFFSET $1",
        )
        .bind(i64_of(max_tasks))
        .fetch_optional(&self.pool)
        .await?;
        let over_limit = match edge {
            None => 0,
            Some(r) => {
                let created: i64 = r.try_get(0)?;
                let id: String = r.try_get(1)?;
                sqlx::query(
                    "DELETE FROM a2a_tasks WHERE state IN ('completed', 'canceled', 'failed', 'rejected') AND (created < $1 OR (created = $1 AND id <= $2))",
                )
                .bind(created)
                .bind(id)
                .execute(&self.pool)
                .await?
                .rows_affected()
            }
        };
        Ok(Swept {
            expired,
            over_limit,
        })
    }
}
