//! Keeping the stored A2A tasks bounded: at start, the tasks this replica left
//! running when it stopped are marked failed (their runs died with it); then,
//! every `[a2a] sweep_interval_s`, tasks older than `[a2a] retention_s` are
//! deleted, then the oldest beyond `[a2a] max_tasks`.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::task::{INTERRUPTED, Msg, Role, State, task_of};
use crate::clock::SharedClock;
use crate::config::A2aSection;
use crate::store::Store;
use crate::store::a2a::TaskRow;

/// The body of a task that was running on a replica that stopped.
fn interrupted(row: &TaskRow, now: u64) -> String {
    let Ok(mut t) = task_of(row) else {
        return row.body.clone();
    };
    t.state = State::Failed;
    t.updated = now;
    t.status_message = Some(Msg {
        id: format!("{}-interrupted", t.id),
        role: Role::Agent,
        text: INTERRUPTED.into(),
    });
    serde_json::to_string(&t).unwrap_or_else(|_| row.body.clone())
}

/// Marks `runner`'s unfinished tasks failed; call before serving.
pub async fn recover(store: &Store, runner: &str, now: u64) {
    match store
        .fail_a2a_tasks_of(runner, now, |r| interrupted(r, now))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            tasks = n,
            "A2A tasks left running by this replica's last run marked failed"
        ),
        Err(e) => tracing::warn!(error = %e, "marking this replica's unfinished A2A tasks"),
    }
}

/// Sweeps until `cancel`.
pub async fn sweep(store: Store, clock: SharedClock, cfg: A2aSection, cancel: CancellationToken) {
    let interval = Duration::from_secs(cfg.sweep_interval_s.max(1));
    loop {
        match store
            .sweep_a2a_tasks(clock.unix(), cfg.retention_s, cfg.max_tasks)
            .await
        {
            Ok(s) if s.expired + s.over_limit > 0 => tracing::info!(
                expired = s.expired,
                over_limit = s.over_limit,
                "A2A tasks swept"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "sweeping A2A tasks"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = cancel.cancelled() => break,
        }
    }
}
