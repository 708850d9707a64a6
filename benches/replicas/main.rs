//! Replicas on one PostgreSQL (issue 17): 1, 2 and 3 `tenzro-gateway` processes
//! on one database, streaming answers from a mock upstream for many accounts,
//! with the requests spread by a plain round-robin balancer (a replica that does
//! not hold an account's lease forwards to the one that does) or pinned by
//! account (key affinity). Per replica count and plan: the highest rate whose
//! p99 stays within 50 ms, the commits per second PostgreSQL saw, and who used
//! the CPU (the replicas, the PostgreSQL server, the load generator with the mock).
//!
//! `target/release/gateway-replicas --gateway-bin target/release/tenzro-gateway`
//! (a PostgreSQL server: `--postgres-url`, `TENZRO_TEST_POSTGRES_URL`, or the one
//! `scripts/postgres` starts; the run uses a database of its own and drops it).

mod load;
mod pg;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;

use tenzro_benches::mock;
use tenzro_benches::procs::{self, Proc};

use crate::load::{Phase, Plan, Targets};

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "target/release/tenzro-gateway")]
    gateway_bin: PathBuf,
    /// PostgreSQL server URL (default: TENZRO_TEST_POSTGRES_URL or scripts/postgres).
    #[arg(long)]
    postgres_url: Option<String>,
    /// Replica counts, in increasing order (replicas are added, never restarted).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 2, 3])]
    replicas: Vec<usize>,
    /// Accounts the load is spread over (one key each).
    #[arg(long, default_value_t = 30)]
    accounts: usize,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rates tried in order (requests per second); the search stops at the first
    /// that fails twice.
    #[arg(long, value_delimiter = ',', default_values_t = vec![50, 100, 200, 400, 600, 800, 1200, 1600, 2400])]
    ramp: Vec<u64>,
    /// Leave the pinned plan out (it shows what forwarding costs).
    #[arg(long)]
    no_pinned: bool,
}

const SLO_MS: f64 = 50.0;
const BODY: &str = r#"{"model":"bench","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"stream":true}"#;
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const SECRET: &str = "bench-cluster-secret-0123456789";
/// Seconds an idle account keeps its lease in this run (then another replica
/// may take it): short, so each phase starts with the leases free.
const LEASE_IDLE_S: u64 = 2;

/// A measured phase with the CPU each part used (share of one core, %).
struct Measured {
    rate: u64,
    phase: Phase,
    commits_per_s: f64,
    cpu_replicas: Vec<f64>,
    cpu_pg: f64,
    cpu_bench: f64,
}

struct Run {
    replicas: usize,
    plan: Plan,
    best: Option<Measured>,
    first_failure: Option<Measured>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mock = mock::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("tenzro-replicas-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = rt.block_on(async {
        let server = pg::server_url(args.postgres_url.as_deref())?;
        let db = pg::Db::create(&server).await?;
        run(&args, mock, &dir, db).await
    });
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("configs and logs kept in {}", dir.display()),
    }
    result
}

/// Starts replica number `n` (1-based) on the shared database.
async fn start_replica(
    bin: &Path,
    mock: SocketAddr,
    dir: &Path,
    db_url: &str,
    n: usize,
) -> anyhow::Result<Proc> {
    let cfg = dir.join(format!("replica-{n}.toml"));
    let store = format!(
        "[store]\ncommit_interval_ms = 10\nlease_ttl_s = 30\nlease_idle_s = {LEASE_IDLE_S}\n"
    );
    let data = dir.join(format!("replica-{n}"));
    std::fs::write(&cfg, procs::gateway_config(&data, mock, &store))?;
    let port = procs::free_port()?;
    let advertise = format!("http://127.0.0.1:{port}");
    let env = [
        ("TENZRO_STORE_URL", db_url),
        ("TENZRO_ADMIN_TOKEN", ADMIN_TOKEN),
        ("TENZRO_CLUSTER_ADVERTISE", advertise.as_str()),
        ("TENZRO_CLUSTER_SECRET", SECRET),
    ];
    procs::spawn_gateway(
        bin,
        &cfg,
        (dir, &format!("replica-{n}")),
        port,
        String::new(),
        &env,
    )
    .await
}

/// Creates `n` funded accounts through `replica`'s admin API; returns their keys.
async fn create_accounts(
    client: &reqwest::Client,
    replica: &Proc,
    n: usize,
) -> anyhow::Result<Vec<String>> {
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let r = client
            .post(format!("{}/admin/accounts", replica.url))
            .bearer_auth(ADMIN_TOKEN)
            .json(&serde_json::json!({ "name": format!("bench-{i}"), "balance": "1000000" }))
            .send()
            .await?;
        let status = r.status();
        let v: serde_json::Value = r.json().await?;
        let key = v["key"]
            .as_str()
            .with_context(|| format!("POST /admin/accounts answered {status}: {v}"))?;
        keys.push(key.to_owned());
    }
    Ok(keys)
}

async fn run(args: &Args, mock: SocketAddr, dir: &Path, mut db: pg::Db) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .build()?;
    let mut replicas: Vec<Proc> = Vec::new();
    let mut keys = Vec::new();
    let mut runs = Vec::new();
    print_header(args, &db);
    let outcome = async {
        for &r in &args.replicas {
            while replicas.len() < r {
                let n = replicas.len() + 1;
                replicas.push(start_replica(&args.gateway_bin, mock, dir, &db.url, n).await?);
            }
            if keys.is_empty() {
                keys = create_accounts(&client, &replicas[0], args.accounts).await?;
            }
            let plans: &[Plan] = if r == 1 || args.no_pinned {
                &[Plan::RoundRobin]
            } else {
                &[Plan::Pinned, Plan::RoundRobin]
            };
            for &plan in plans {
                let targets = Targets {
                    urls: replicas
                        .iter()
                        .map(|p| format!("{}/v1/chat/completions", p.url))
                        .collect(),
                    keys: keys.clone(),
                    plan,
                };
                check(&client, &targets).await?;
                runs.push(search(args, &client, &targets, &replicas, &mut db).await);
            }
        }
        anyhow::Ok(())
    }
    .await;
    drop(replicas);
    db.drop_now().await;
    outcome?;
    print_table(&runs);
    println!(
        "\nreproduce: cargo build --release -p tenzro-gateway -p tenzro-benches && {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

/// A warm-up (its errors are printed: a replica that just joined may not know
/// the others' addresses yet), then every (replica, account) pair of the plan
/// must answer one whole stream.
async fn check(client: &reqwest::Client, t: &Targets) -> anyhow::Result<()> {
    let w = load::phase(client, t, BODY, 50, 1).await;
    if w.errors > 0 {
        println!(
            "warm-up, {} replica(s), {}: {} of {} failed: {:?}",
            t.urls.len(),
            t.plan.as_str(),
            w.errors,
            w.errors + w.ok,
            w.error_kinds
        );
    }
    tokio::time::sleep(Duration::from_secs(LEASE_IDLE_S + 1)).await;
    let p = load::phase(client, t, BODY, 50, 1).await;
    // `replica_busy` is what the table measures (each phase counts it); any
    // other failure means the setup is wrong.
    let other = p
        .error_kinds
        .iter()
        .any(|(k, _)| k.as_str() != "503 replica_busy");
    if other {
        bail!(
            "{} of {} check requests failed: {:?}",
            p.errors,
            p.errors + p.ok,
            p.error_kinds
        );
    } else if p.errors > 0 {
        println!(
            "check, {} replica(s), {}: {} of {} answered 503 replica_busy",
            t.urls.len(),
            t.plan.as_str(),
            p.errors,
            p.errors + p.ok
        );
    }
    tokio::time::sleep(Duration::from_secs(LEASE_IDLE_S + 1)).await;
    Ok(())
}

async fn measure(
    args: &Args,
    client: &reqwest::Client,
    t: &Targets,
    replicas: &[Proc],
    db: &mut pg::Db,
    rate: u64,
) -> Measured {
    let hz = procs::clock_ticks_per_s() as f64;
    let c0 = db.commits().await;
    let r0: Vec<u64> = replicas.iter().map(Proc::cpu_ticks).collect();
    let (pg0, me0) = (pg::server_cpu_ticks(), pg::self_cpu_ticks());
    let t0 = std::time::Instant::now();
    let phase = load::phase(client, t, BODY, rate, args.seconds).await;
    let secs = t0.elapsed().as_secs_f64().max(1e-3);
    // The statistics reach pg_stat_database within a second of each commit.
    let share = |ticks: u64| ticks as f64 * 100.0 / hz / secs;
    let cpu_replicas = replicas
        .iter()
        .zip(&r0)
        .map(|(p, &t0)| share(p.cpu_ticks().saturating_sub(t0)))
        .collect();
    let cpu_pg = share(pg::server_cpu_ticks().saturating_sub(pg0));
    let cpu_bench = share(pg::self_cpu_ticks().saturating_sub(me0));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let commits_per_s = (db.commits().await - c0) as f64 / secs;
    // Idle long enough that every lease is free again for the next phase.
    tokio::time::sleep(Duration::from_secs(LEASE_IDLE_S + 1)).await;
    Measured {
        rate,
        phase,
        commits_per_s,
        cpu_replicas,
        cpu_pg,
        cpu_bench,
    }
}

/// The ramp: the highest rate within the SLO (a failing rate is tried twice).
async fn search(
    args: &Args,
    client: &reqwest::Client,
    t: &Targets,
    replicas: &[Proc],
    db: &mut pg::Db,
) -> Run {
    let mut run = Run {
        replicas: replicas.len(),
        plan: t.plan,
        best: None,
        first_failure: None,
    };
    for &rate in &args.ramp {
        let mut good = false;
        for attempt in ["", " (again)"] {
            let m = measure(args, client, t, replicas, db, rate).await;
            good = m.phase.passes(SLO_MS);
            println!(
                "{} replica(s), {}: {rate} req/s{attempt} -> p50 {:.1} ms, p99 {:.1} ms, {} errors {:?}, {:.0} commits/s, CPU % replicas {:?} postgres {:.0} bench {:.0}{}",
                replicas.len(),
                t.plan.as_str(),
                m.phase.p50_ms,
                m.phase.p99_ms,
                m.phase.errors,
                m.phase.error_kinds,
                m.commits_per_s,
                m.cpu_replicas
                    .iter()
                    .map(|c| c.round() as i64)
                    .collect::<Vec<_>>(),
                m.cpu_pg,
                m.cpu_bench,
                if good { "" } else { "  (fails)" }
            );
            if good {
                run.best = Some(m);
                break;
            } else if attempt.is_empty() {
                continue;
            } else {
                run.first_failure = Some(m);
            }
        }
        if !good {
            break;
        }
    }
    run
}

fn print_header(args: &Args, db: &pg::Db) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "gateway-replicas: {cores} cores; tenzro-gateway {} replicas on PostgreSQL database {} (commit_interval_ms 10, lease_idle_s {LEASE_IDLE_S}, forwarding on: [cluster] advertise + secret); {} accounts, streamed answers (10 chunks) from one mock upstream; open loop, {} s or {} requests per phase; every process on 127.0.0.1",
        args.gateway_bin.display(),
        db.name,
        args.accounts,
        args.seconds,
        load::MIN_REQUESTS
    );
}

fn print_table(runs: &[Run]) {
    let base = runs
        .first()
        .and_then(|r| r.best.as_ref())
        .map(|m| m.rate as f64);
    println!(
        "\n| replicas | plan | max req/s (p99 <= {SLO_MS} ms, <= 1 % errors) | vs 1 replica | p50 / p99 ms there | commits/s there | requests per commit | CPU % per replica | CPU % PostgreSQL | CPU % load generator + mock | first failing rate: p99 ms, errors |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|");
    for r in runs {
        let fail = r.first_failure.as_ref().map_or_else(
            || "none (ramp passed)".to_owned(),
            |m| {
                format!(
                    "{} req/s: {:.0} ms, {} {:?}",
                    m.rate, m.phase.p99_ms, m.phase.errors, m.phase.error_kinds
                )
            },
        );
        match &r.best {
            Some(m) => println!(
                "| {} | {} | {} | {} | {:.1} / {:.1} | {:.0} | {:.1} | {} | {:.0} | {:.0} | {fail} |",
                r.replicas,
                r.plan.as_str(),
                m.rate,
                base.map_or_else(|| "—".to_owned(), |b| format!("{:.2}x", m.rate as f64 / b)),
                m.phase.p50_ms,
                m.phase.p99_ms,
                m.commits_per_s,
                m.rate as f64 / m.commits_per_s.max(1e-9),
                m.cpu_replicas
                    .iter()
                    .map(|c| format!("{c:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / "),
                m.cpu_pg,
                m.cpu_bench,
            ),
            None => println!(
                "| {} | {} | < first rate | — | — | — | — | — | — | — | {fail} |",
                r.replicas,
                r.plan.as_str()
            ),
        }
    }
}
