//! A2A tasks in the SQL store, on both backends (SQLite always; PostgreSQL when
//! `TENZRO_TEST_POSTGRES_URL` names a server, required under CI): a task is read
//! only by its owner, an ended task never changes again, a restarted replica's
//! unfinished tasks are failed, and the sweep keeps rows by age and count.
#![expect(clippy::unwrap_used, reason = "tests")]

use tenzro_gateway::store::Store;
use tenzro_gateway::store::a2a::{Swept, TaskRow};

use crate::common::backends;

fn row(id: &str, owner: &str, state: &str, runner: &str, created: u64) -> TaskRow {
    TaskRow {
        id: id.into(),
        owner: owner.into(),
        context_id: "ctx".into(),
        state: state.into(),
        runner: runner.into(),
        body: format!("{{\"id\":\"{id}\"}}"),
        created,
        updated: created,
    }
}

async fn ids(store: &Store, owner: &str, candidates: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for id in candidates {
        if store.a2a_task(owner, id).await.unwrap().is_some() {
            out.push((*id).to_owned());
        }
    }
    out
}

#[tokio::test]
async fn tasks_are_their_owners_and_ended_ones_stay_ended() {
    for (url, store, _dir) in backends().await {
        store
            .insert_a2a_task(&row("t1", "k1", "working", "r1", 100))
            .await
            .unwrap();
        assert_eq!(
            store.a2a_task("k1", "t1").await.unwrap().unwrap().state,
            "working",
            "{url}"
        );
        assert!(store.a2a_task("k2", "t1").await.unwrap().is_none(), "{url}");
        // Another key cannot cancel it.
        assert!(
            !store
                .update_a2a_task("t1", Some("k2"), "canceled", "{}", 101)
                .await
                .unwrap()
        );
        assert!(
            store
                .update_a2a_task("t1", Some("k1"), "canceled", "{\"c\":1}", 101)
                .await
                .unwrap()
        );
        // The late answer does not replace the cancel.
        assert!(
            !store
                .update_a2a_task("t1", None, "completed", "{}", 102)
                .await
                .unwrap()
        );
        let got = store.a2a_task("k1", "t1").await.unwrap().unwrap();
        assert_eq!(
            (got.state.as_str(), got.body.as_str(), got.updated),
            ("canceled", "{\"c\":1}", 101),
            "{url}"
        );

        for (id, state, at) in [
            ("c1", "completed", 10),
            ("c2", "completed", 20),
            ("c3", "failed", 30),
        ] {
            store
                .insert_a2a_task(&row(id, "k1", state, "r1", at))
                .await
                .unwrap();
        }
        let ctx: Vec<String> = store
            .a2a_context("k1", "ctx", 16)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ctx, ["c2", "c1"], "completed ones, newest first: {url}");
        assert_eq!(store.a2a_context("k1", "ctx", 1).await.unwrap().len(), 1);
        assert!(store.a2a_context("k2", "ctx", 16).await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_restarted_replica_fails_what_it_left_running() {
    for (url, store, _dir) in backends().await {
        store
            .insert_a2a_task(&row("a", "k", "working", "r1", 1))
            .await
            .unwrap();
        store
            .insert_a2a_task(&row("b", "k", "submitted", "r1", 1))
            .await
            .unwrap();
        store
            .insert_a2a_task(&row("c", "k", "completed", "r1", 1))
            .await
            .unwrap();
        store
            .insert_a2a_task(&row("d", "k", "working", "r2", 1))
            .await
            .unwrap();
        let n = store
            .fail_a2a_tasks_of("r1", 50, |r| format!("{{\"failed\":\"{}\"}}", r.id))
            .await
            .unwrap();
        assert_eq!(n, 2, "{url}");
        let state = |id: &'static str| {
            let store = store.clone();
            async move { store.a2a_task("k", id).await.unwrap().unwrap() }
        };
        assert_eq!(state("a").await.state, "failed");
        assert_eq!(state("a").await.body, "{\"failed\":\"a\"}");
        assert_eq!(state("b").await.state, "failed");
        assert_eq!(state("c").await.state, "completed");
        assert_eq!(
            state("d").await.state,
            "working",
            "another replica's: {url}"
        );
    }
}

#[tokio::test]
async fn the_sweep_keeps_tasks_by_age_then_count() {
    for (url, store, _dir) in backends().await {
        let all = ["t0", "t1", "t2", "t3", "t4", "t5"];
        // Two in the same second: the count limit parts them by id.
        for (id, at) in all.iter().zip([100, 200, 300, 300, 400, 500]) {
            store
                .insert_a2a_task(&row(id, "k", "completed", "r", at))
                .await
                .unwrap();
        }
        // Retention 250 s at 500: t0 and t1 (made before 250) go.
        let s = store.sweep_a2a_tasks(500, 250, 100).await.unwrap();
        assert_eq!(
            s,
            Swept {
                expired: 2,
                over_limit: 0
            },
            "{url}"
        );
        assert_eq!(ids(&store, "k", &all).await, ["t2", "t3", "t4", "t5"]);
        // At most 3: the oldest (t2, then t3 of the same second) goes.
        let s = store.sweep_a2a_tasks(500, 1000, 3).await.unwrap();
        assert_eq!(
            s,
            Swept {
                expired: 0,
                over_limit: 1
            },
            "{url}"
        );
        assert_eq!(ids(&store, "k", &all).await, ["t3", "t4", "t5"]);
        let s = store.sweep_a2a_tasks(500, 1000, 1).await.unwrap();
        assert_eq!(s.over_limit, 2);
        assert_eq!(ids(&store, "k", &all).await, ["t5"]);
        assert_eq!(
            store.sweep_a2a_tasks(500, 1000, 1).await.unwrap(),
            Swept::default()
        );
    }
}

#[tokio::test]
async fn a_keys_trim_and_the_sweep_remove_only_ended_tasks() {
    for (url, store, _dir) in backends().await {
        // Key a: four ended tasks and one running, the running one the oldest.
        store
            .insert_a2a_task(&row("a-run", "a", "working", "r", 50))
            .await
            .unwrap();
        for (id, at) in [("a1", 100), ("a2", 200), ("a3", 300), ("a4", 400)] {
            store
                .insert_a2a_task(&row(id, "a", "rejected", "r", at))
                .await
                .unwrap();
        }
        store
            .insert_a2a_task(&row("b1", "b", "completed", "r", 10))
            .await
            .unwrap();
        // a keeps its two newest ended tasks and its running one; b is untouched.
        assert_eq!(store.trim_a2a_tasks_of("a", 2).await.unwrap(), 2, "{url}");
        let a = ["a-run", "a1", "a2", "a3", "a4"];
        assert_eq!(ids(&store, "a", &a).await, ["a-run", "a3", "a4"], "{url}");
        assert_eq!(ids(&store, "b", &["b1"]).await, ["b1"], "{url}");
        assert_eq!(store.trim_a2a_tasks_of("a", 2).await.unwrap(), 0, "{url}");
        // The count limit counts ended tasks only and never takes a running one.
        let s = store.sweep_a2a_tasks(500, 1000, 1).await.unwrap();
        assert_eq!(s.over_limit, 2, "{url}");
        assert_eq!(ids(&store, "a", &a).await, ["a-run", "a4"], "{url}");
        assert!(ids(&store, "b", &["b1"]).await.is_empty(), "{url}");
    }
}
