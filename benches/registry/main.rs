//! Registry at scale (issue 17): 1,000 and 10,000 simulated providers register
//! with the gateway's real registry, heartbeat on a simulated clock, some fail and
//! recover, while routing decisions are timed and the registry's rows go to a
//! real store.
//!
//! `target/release/registry-scale` (defaults: 1000,10000 providers, 10 per model,
//! 660 simulated seconds). Each size runs in a fresh child process of this binary,
//! so its memory figures are its own.
//!
//! Prints per size: p50/p99 of a routing decision (the model index) next to the
//! pre-index shape (every provider read), registration and heartbeat handling
//! times, resident memory per provider, and rows written to the store per second;
//! ratios against the first size, and the command that reproduces the run.

mod sim;

use std::process::Command;

use anyhow::{Context, bail};
use clap::Parser;

use crate::sim::{FLUSH_EVERY, Figures, HEARTBEAT_EVERY, Sim};

#[derive(Parser, Debug)]
struct Args {
    /// Fleet sizes, each run in its own process.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1000, 10000])]
    providers: Vec<usize>,
    /// Providers per model (candidates of one routing decision).
    #[arg(long, default_value_t = 10)]
    per_model: usize,
    /// Simulated seconds after the fleet joined (600 s is how often a heartbeat's
    /// time reaches the store; the default crosses it once).
    #[arg(long, default_value_t = 660)]
    seconds: u64,
    /// Routing decisions timed per simulated second.
    #[arg(long, default_value_t = 20)]
    decisions: usize,
    /// Pre-index scans timed per simulated second.
    #[arg(long, default_value_t = 2)]
    scans: usize,
    /// Store URL (default: a SQLite file in a temporary directory, as a
    /// single-replica gateway has; `postgres://…` for the shared store).
    #[arg(long)]
    store_url: Option<String>,
    /// Internal: run one size and print its figures as one JSON line.
    #[arg(long, hide = true)]
    only: Option<usize>,
}

/// Resident memory of this process in KiB (`VmRSS`, `VmHWM`, ... of /proc/self/status).
pub fn rss_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.only {
        Some(n) => one(&args, n),
        None => parent(&args),
    }
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(((s.len() as f64 * p) as usize).min(s.len().saturating_sub(1)))
        .copied()
        .unwrap_or(f64::NAN)
}

/// One size, in this (child) process: prints one `RESULT` JSON line.
fn one(args: &Args, n: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("tenzro-registry-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let url = args
        .store_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.join("registry.db").display()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let store = tenzro_gateway::store::Store::open(&url).await?;
        let mut sim = Sim::new(n, args.per_model, store);
        let f = sim.run(args.seconds, args.decisions, args.scans).await?;
        anyhow::Ok((f, sim.models()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let (f, models) = result?;
    println!("RESULT {}", summary(n, models, &f));
    Ok(())
}

fn summary(n: usize, models: usize, f: &Figures) -> serde_json::Value {
    let steady: usize = f.steady_rows.iter().sum();
    let secs = f.steady_rows.len().max(1) as f64;
    serde_json::json!({
        "providers": n,
        "models": models,
        "route_p50_us": pct(&f.route_us, 0.5),
        "route_p90_us": pct(&f.route_us, 0.9),
        "route_p99_us": pct(&f.route_us, 0.99),
        "route_max_us": pct(&f.route_us, 1.0),
        "route_n": f.route_us.len(),
        "route_failures": f.route_failures,
        "scan_p50_us": pct(&f.scan_us, 0.5),
        "scan_p99_us": pct(&f.scan_us, 0.99),
        "register_p50_us": pct(&f.register_us, 0.5),
        "register_p99_us": pct(&f.register_us, 0.99),
        "heartbeat_p99_us": pct(&f.heartbeat_us, 0.99),
        "heartbeats_per_s": f.heartbeats as f64 / secs,
        "fleet_kb": f.rss_fleet_kb.saturating_sub(f.rss_before_kb),
        "hwm_kb": f.hwm_kb,
        "join_rows": f.join_rows.iter().sum::<usize>(),
        "steady_rows_per_s": steady as f64 / secs,
        "steady_rows_peak": f.steady_rows.iter().copied().max().unwrap_or(0),
        "save_p99_ms": pct(&f.save_us, 0.99) / 1e3,
        "save_total_s": f.save_us.iter().sum::<f64>() / 1e6,
        "seen_rows_per_s": f.seen_rows.iter().sum::<usize>() as f64 / secs,
        "seen_statements_per_s": f.seen_statements as f64 / secs,
        "flush_p99_ms": pct(&f.flush_us, 0.99) / 1e3,
    })
}

fn parent(args: &Args) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "registry-scale: {cores} cores; {} providers per model, heartbeat every {HEARTBEAT_EVERY} s, 5 % of providers down for 120 s (breaker opened) and back; {} simulated s after the fleet joined; store {}",
        args.per_model,
        args.seconds,
        args.store_url
            .as_deref()
            .unwrap_or("SQLite (temporary file)")
    );
    let mut rows = Vec::new();
    for &n in &args.providers {
        let mut cmd = Command::new(&exe);
        cmd.args(["--only", &n.to_string()])
            .args(["--per-model", &args.per_model.to_string()])
            .args(["--seconds", &args.seconds.to_string()])
            .args(["--decisions", &args.decisions.to_string()])
            .args(["--scans", &args.scans.to_string()]);
        if let Some(u) = &args.store_url {
            cmd.args(["--store-url", u]);
        }
        let t0 = std::time::Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!("{n} providers: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8(out.stdout)?;
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .context("the child printed no result")?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        println!("{n} providers: done in {:.1} s", t0.elapsed().as_secs_f64());
        rows.push(v);
    }
    print_tables(&rows);
    println!("\nreproduce: {}", reproduce_line());
    Ok(())
}

fn num(v: &serde_json::Value, k: &str) -> f64 {
    v.get(k)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(f64::NAN)
}

fn print_tables(rows: &[serde_json::Value]) {
    let Some(base) = rows.first() else { return };
    let ratio = |v: &serde_json::Value, k: &str| {
        let (a, b) = (num(v, k), num(base, k));
        if b > 0.0 {
            format!("{:.2}x", a / b)
        } else {
            "—".to_owned()
        }
    };
    println!(
        "\n## Routing (one decision: the model's candidates from the registry, filtered and ordered)\n"
    );
    println!(
        "| providers | models | route p50 / p90 / p99 / max µs | p50 vs first | p99 vs first | pre-index scan p50 / p99 µs | scan p50 vs first | scan / index p50 | decisions (no provider) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for v in rows {
        println!(
            "| {} | {} | {:.1} / {:.1} / {:.1} / {:.0} | {} | {} | {:.0} / {:.0} | {} | {:.0}x | {} ({}) |",
            num(v, "providers"),
            num(v, "models"),
            num(v, "route_p50_us"),
            num(v, "route_p90_us"),
            num(v, "route_p99_us"),
            num(v, "route_max_us"),
            ratio(v, "route_p50_us"),
            ratio(v, "route_p99_us"),
            num(v, "scan_p50_us"),
            num(v, "scan_p99_us"),
            ratio(v, "scan_p50_us"),
            num(v, "scan_p50_us") / num(v, "route_p50_us"),
            num(v, "route_n"),
            num(v, "route_failures"),
        );
    }
    println!("\n## Heartbeat writes to the store (batched liveness, every {FLUSH_EVERY} s)\n");
    println!(
        "| providers | heartbeats/s | liveness rows/s | statements/s | heartbeats per statement | flush p99 ms |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for v in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.1} |",
            num(v, "providers"),
            num(v, "heartbeats_per_s"),
            num(v, "seen_rows_per_s"),
            num(v, "seen_statements_per_s"),
            num(v, "heartbeats_per_s") / num(v, "seen_statements_per_s"),
            num(v, "flush_p99_ms"),
        );
    }
    println!("\n## Registrations, heartbeats, memory, registry rows\n");
    println!(
        "| providers | register p50 / p99 µs | register p99 vs first | heartbeat p99 µs | heartbeats/s | RSS of the fleet MiB (KiB per provider) | RSS vs first | peak RSS MiB | rows written while joining | rows/s after (peak in one s) | save p99 ms (total s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for v in rows {
        let kb = num(v, "fleet_kb");
        println!(
            "| {} | {:.0} / {:.0} | {} | {:.0} | {:.0} | {:.1} ({:.2}) | {} | {:.1} | {} | {:.2} ({}) | {:.1} ({:.1}) |",
            num(v, "providers"),
            num(v, "register_p50_us"),
            num(v, "register_p99_us"),
            ratio(v, "register_p99_us"),
            num(v, "heartbeat_p99_us"),
            num(v, "heartbeats_per_s"),
            kb / 1024.0,
            kb / num(v, "providers"),
            ratio(v, "fleet_kb"),
            num(v, "hwm_kb") / 1024.0,
            num(v, "join_rows"),
            num(v, "steady_rows_per_s"),
            num(v, "steady_rows_peak"),
            num(v, "save_p99_ms"),
            num(v, "save_total_s"),
        );
    }
}

/// The command line of this run, after the build it needs.
fn reproduce_line() -> String {
    let argv: Vec<String> = std::env::args().collect();
    format!(
        "cargo build --release -p tenzro-benches --bin registry-scale && {}",
        argv.join(" ")
    )
}
