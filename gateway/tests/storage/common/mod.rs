//! What the store tests share: the backends each test runs against.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests"
)]

use sqlx::Executor;
use tenzro_gateway::store::Store;

/// Fresh stores to run a test against: SQLite always, PostgreSQL when
/// `TENZRO_TEST_POSTGRES_URL` names a server (`scripts/postgres` starts one; required
/// under CI, so a missing server fails rather than skips there). Each PostgreSQL test
/// works in a fresh database.
pub async fn backends() -> Vec<(String, Store, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("t.db").display());
    let mut out = vec![(
        sqlite.clone(),
        Store::open(&sqlite).await.unwrap(),
        Some(dir),
    )];
    match std::env::var("TENZRO_TEST_POSTGRES_URL") {
        Ok(admin) => {
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            sqlx::any::install_default_drivers();
            let pool = sqlx::AnyPool::connect(&admin)
                .await
                .expect("connecting to TENZRO_TEST_POSTGRES_URL");
            pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .unwrap();
            pool.close().await;
            let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
            let url = format!("{base}/{name}");
            out.push((url.clone(), Store::open(&url).await.unwrap(), None));
        }
        Err(_) if std::env::var_os("CI").is_some() => panic!(
            "CI must run the storage tests on PostgreSQL: set TENZRO_TEST_POSTGRES_URL (scripts/postgres)"
        ),
        Err(_) => eprintln!(
            "TENZRO_TEST_POSTGRES_URL unset: PostgreSQL skipped (scripts/postgres starts one)"
        ),
    }
    out
}
