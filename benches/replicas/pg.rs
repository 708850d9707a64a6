//! The PostgreSQL side of the replica benchmark: a database of its own on the
//! server `scripts/postgres` starts (created at start, dropped at the end), its
//! commit counter (`pg_stat_database.xact_commit`), and the CPU time of the
//! server's processes.

use std::process::Command;

use anyhow::Context;
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};

/// The server's URL: `--postgres-url`, else `TENZRO_TEST_POSTGRES_URL`, else
/// what `scripts/postgres` prints (it starts a throwaway server).
pub fn server_url(given: Option<&str>) -> anyhow::Result<String> {
    if let Some(u) = given {
        return Ok(u.to_owned());
    }
    if let Ok(u) = std::env::var("TENZRO_TEST_POSTGRES_URL")
        && !u.is_empty()
    {
        return Ok(u);
    }
    let out = Command::new("scripts/postgres")
        .output()
        .context("running scripts/postgres (run from the repository root)")?;
    if !out.status.success() {
        anyhow::bail!(
            "scripts/postgres failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// A database made for this run; dropped by [`Db::drop_now`].
pub struct Db {
    pub name: String,
    pub url: String,
    admin: PgConnection,
}

impl Db {
    pub async fn create(server: &str) -> anyhow::Result<Db> {
        let mut admin = PgConnection::connect(server).await?;
        let name = format!("tenzro_bench_{}", std::process::id());
        // The name is ours (digits and letters only), not input.
        sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
            .execute(&mut admin)
            .await?;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await?;
        let base = server
            .rsplit_once('/')
            .map_or(server, |(b, _)| b)
            .to_owned();
        Ok(Db {
            url: format!("{base}/{name}"),
            name,
            admin,
        })
    }

    /// Transactions committed in this database so far.
    pub async fn commits(&mut self) -> i64 {
        sqlx::query("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
            .bind(&self.name)
            .fetch_one(&mut self.admin)
            .await
            .and_then(|r| r.try_get::<i64, _>(0))
            .unwrap_or(0)
    }

    pub async fn drop_now(mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = sqlx::query(AssertSqlSafe(sql))
            .execute(&mut self.admin)
            .await;
    }
}

/// utime + stime (clock ticks) of every process named `postgres` (the whole
/// server: other clients of the same server count too).
pub fn server_cpu_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter(|s| s.contains("(postgres)"))
        .filter_map(|s| ticks(&s))
        .sum()
}

/// utime + stime of this process (the load generator and the mock).
pub fn self_cpu_ticks() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| ticks(&s))
        .unwrap_or(0)
}

fn ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}
