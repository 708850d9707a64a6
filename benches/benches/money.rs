//! Money on the hot path: what a streamed chunk costs the gateway's book, how many
//! channel updates per second it takes, and how fast each store commits.
//!
//! `cargo bench -p tenzro-benches --bench money` (set `TENZRO_TEST_POSTGRES_URL`,
//! e.g. from `scripts/postgres`, to include PostgreSQL).
//!
//! Criterion measures the per-chunk paths; then a table compares, in this process:
//! metering a chunk alone (the baseline) against metering it and moving its cost
//! into the payer's channel (`Book::progress`), channel updates per second on one
//! and two threads, and group-commit throughput of SQLite and PostgreSQL.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use tenzro_gateway::metering::Meter;
use tenzro_gateway::money::book::{Book, BookConfig, Reservation};
use tenzro_gateway::pricing::{Asset, ONE, PPM, Quote};
use tenzro_gateway::store::Store;
use tenzro_gateway::tasks::committer::commit_once;

const BIG: u128 = 1_000_000 * ONE;

fn quote() -> Quote {
    Quote::new(100_000_000_000, PPM, PPM / 2, PPM, Asset::Tnzo, ONE)
}

/// Bounds wide enough that no chunk of the benchmark is clipped.
fn bounds() -> tenzro_gateway::verify::Bounds {
    tenzro_gateway::verify::Bounds {
        prompt_estimate: 0,
        choices: 1,
        max_new: u64::MAX / 4,
        hard_cap: false,
        generates: true,
    }
}

fn funded_book(accounts: usize) -> (Arc<Book>, Vec<Reservation>) {
    let book = Arc::new(Book::new(BookConfig::default()));
    let mut holds = Vec::new();
    for i in 0..accounts {
        let a = format!("acct_{i}");
        let _ = book.credit(&a, Asset::Tnzo, BIG * 10);
        if let Ok(r) = book.reserve(&a, Asset::Tnzo, BIG, None, 0) {
            let _ = book.bind(&r, "prov", 0);
            holds.push(r);
        }
    }
    (book, holds)
}

/// Nanoseconds per call of `f` over `n` calls.
fn per_call(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

fn criterion_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("per_chunk");
    g.bench_function("meter_only", |b| {
        let mut m = Meter::new(quote(), bounds());
        b.iter(|| black_box(m.on_chunk(black_box(1), black_box(4), 0)))
    });
    g.bench_function("meter_and_channel", |b| {
        let (book, holds) = funded_book(1);
        let mut m = Meter::new(quote(), bounds());
        b.iter(|| {
            let _ = m.on_chunk(1, 4, 0);
            black_box(book.progress(&holds[0], m.cost, "prov", 0))
        })
    });
    g.finish();
}

fn updates_on_threads(threads: usize, per_thread: u64) -> f64 {
    let (book, holds) = funded_book(threads);
    let holds = Arc::new(holds);
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (book, holds) = (book.clone(), holds.clone());
            std::thread::spawn(move || {
                for n in 1..=per_thread {
                    let _ = book.progress(&holds[i], u128::from(n) * 1000, "prov", 0);
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    (threads as u64 * per_thread) as f64 / t.elapsed().as_secs_f64()
}

/// Commits of `channels` changed channels (and their accounts) per batch: returns
/// (milliseconds per commit, rows per second).
async fn commit_rate(store: &Store, channels: usize, rounds: usize) -> (f64, f64) {
    let (book, holds) = funded_book(channels);
    let _ = commit_once(&book, store).await;
    let mut rows = 0usize;
    let t = Instant::now();
    for round in 1..=rounds {
        for h in &holds {
            let _ = book.progress(h, round as u128 * 1000, "prov", 0);
        }
        rows += commit_once(&book, store).await.unwrap_or(0);
    }
    let secs = t.elapsed().as_secs_f64();
    (secs * 1000.0 / rounds as f64, rows as f64 / secs)
}

async fn postgres_store() -> Option<Store> {
    use sqlx::Executor;
    let admin = std::env::var("TENZRO_TEST_POSTGRES_URL").ok()?;
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&admin).await.ok()?;
    let name = format!("bench_{}", std::process::id());
    let _ = pool
        .execute(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name}"
        )))
        .await;
    pool.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .ok()?;
    pool.close().await;
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b.to_owned())
        .unwrap_or(admin);
    Store::open(&format!("{base}/{name}")).await.ok()
}

fn table() -> anyhow::Result<()> {
    let n = 2_000_000;
    let mut m = Meter::new(quote(), bounds());
    let meter_ns = per_call(n, |_| {
        let _ = black_box(m.on_chunk(1, 4, 0));
    });
    let (book, holds) = funded_book(1);
    let mut m = Meter::new(quote(), bounds());
    let both_ns = per_call(n, |_| {
        let _ = m.on_chunk(1, 4, 0);
        let _ = black_box(book.progress(&holds[0], m.cost, "prov", 0));
    });
    let one = updates_on_threads(1, n);
    let two = updates_on_threads(2, n / 2);

    println!();
    println!("per streamed chunk (this process, {n} chunks)      ns/chunk   vs meter only");
    println!("  meter only (baseline)                          {meter_ns:>9.1}   1.00x");
    println!(
        "  meter + channel update (Book::progress)        {both_ns:>9.1}   {:.2}x",
        both_ns / meter_ns
    );
    println!(
        "  added by the channel update                    {:>9.1}   (goal < 2000 ns)",
        both_ns - meter_ns
    );
    println!();
    println!("channel updates per second                       updates/s   vs 1 thread");
    println!("  1 thread                                       {one:>11.0}   1.00x");
    println!(
        "  2 threads (one lock, two payers)               {two:>11.0}   {:.2}x   (goal >= 200000 on 2 cores)",
        two / one
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let mut stores = vec![("SQLite (WAL, synchronous=FULL)", Store::open(&format!("sqlite://{}", dir.path().join("b.db").display())).await?)];
        match postgres_store().await {
            Some(pg) => stores.push(("PostgreSQL", pg)),
            None => println!("\n(PostgreSQL skipped: set TENZRO_TEST_POSTGRES_URL, e.g. $(scripts/postgres))"),
        }
        println!();
        println!("group commit: changed channels per commit     ms/commit    rows/s   (a row: a channel or a balance)");
        for (name, store) in &stores {
            for channels in [10usize, 100, 1000] {
                let rounds = (4000 / channels).clamp(10, 200);
                let (ms, rows) = commit_rate(store, channels, rounds).await;
                println!("  {name:<32} {channels:>5}   {ms:>9.2}  {rows:>9.0}");
            }
            store.close().await;
        }
        anyhow::Ok(())
    })?;
    println!();
    println!(
        "reproduce: TENZRO_TEST_POSTGRES_URL=$(scripts/postgres) cargo bench -p tenzro-benches --bench money"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    criterion_benches(&mut c);
    c.final_summary();
    table()
}
