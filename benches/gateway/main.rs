//! Gateway load benchmark: a mock upstream, the real `tenzro-gateway` binary and
//! LiteLLM's proxy each in its own process, and an open-loop load generator, all
//! on 127.0.0.1.
//!
//! `target/release/gateway-load --gateway-bin target/release/tenzro-gateway`
//!
//! Prints, for non-stream and stream, side by side in one run: latency p50/p99
//! direct-to-mock, through our gateway and through LiteLLM's proxy at fixed rates
//! (open loop, see `load`), each proxy's overhead over direct, its CPU time per
//! request (utime + stime of its process tree from `/proc`), the litellm/tenzro
//! ratios, and the highest tried rate whose p99 stays within 50 ms. LiteLLM's
//! columns are on whenever its `litellm` command is found (`--no-litellm` turns
//! them off; `benches/setup-litellm` installs it). `--bare-proxy-bin` adds, after
//! the other columns, a bare forwarder (`bare-proxy`: the gateway's HTTP/1.1
//! front door and h2c client and nothing else, the transport's floor) and each
//! proxy's kernel (stime) share of its CPU.

mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::Parser;

use tenzro_benches::mock;
use tenzro_benches::procs::{self, Proc};

use crate::load::{Phase, Target};

#[derive(Parser, Debug)]
struct Args {
    /// The gateway binary (build it with `cargo build --release -p tenzro-gateway`).
    #[arg(long, default_value = "target/release/tenzro-gateway")]
    gateway_bin: PathBuf,
    /// LiteLLM's proxy command, looked up on PATH; its columns are on when found.
    #[arg(long, default_value = "litellm")]
    litellm_bin: PathBuf,
    /// Leave LiteLLM out even when it is installed.
    #[arg(long)]
    no_litellm: bool,
    /// The bare forwarder baseline (`cargo build --release -p tenzro-benches`
    /// builds `target/release/bare-proxy`); its columns, and the kernel shares,
    /// are on when given.
    #[arg(long)]
    bare_proxy_bin: Option<PathBuf>,
    /// LiteLLM's `--num_workers` (uvicorn worker processes).
    #[arg(long, default_value_t = 1)]
    litellm_workers: u32,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Fixed rates (requests per second) for the overhead table.
    #[arg(long, value_delimiter = ',', default_values_t = vec![25, 50, 100, 200, 500, 1000, 2000])]
    rates: Vec<u64>,
    /// Rates tried, in order, for the max-QPS search (it stops at the first failure).
    #[arg(long, value_delimiter = ',', default_values_t = vec![10, 25, 50, 100, 200, 500, 1000, 2000, 4000, 8000])]
    ramp: Vec<u64>,
}

/// The latency objective of the max-QPS search.
const SLO_MS: f64 = 50.0;
/// A proxy whose p99 passes this (or with over 1 % errors) at some rate of the
/// table is saturated; its higher rates are skipped, which keeps the run bounded.
const SATURATED_MS: f64 = 1_000.0;

const BODIES: [(&str, &str); 2] = [
    (
        "non-stream",
        r#"{"model":"bench","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16}"#,
    ),
    (
        "stream",
        r#"{"model":"bench","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"stream":true}"#,
    ),
];

/// One system under test: the mock itself (no process of its own) or a proxy.
struct Sut<'a> {
    name: &'static str,
    target: Target<'a>,
    proc: Option<&'a Proc>,
}

/// A phase and, for a proxy, its CPU time per successful request and the
/// kernel's (stime) share of that time.
struct Measured {
    phase: Phase,
    cpu_us: Option<f64>,
    sys_share: Option<f64>,
}

/// Everything a phase needs besides the target, rate and body.
struct Bench {
    client: reqwest::Client,
    secs: u64,
    ticks_per_s: u64,
}

impl Bench {
    async fn measure(&self, sut: &Sut<'_>, body: &'static str, rate: u64) -> Measured {
        if let Some(p) = sut.proc {
            settle(p, self.ticks_per_s).await;
        }
        let t0 = sut.proc.map(Proc::cpu_split);
        let phase = load::phase(&self.client, &sut.target, body, rate, self.secs).await;
        let spent = sut.proc.zip(t0).map(|(p, (u0, s0))| {
            let (u, s) = p.cpu_split();
            (u.saturating_sub(u0), s.saturating_sub(s0))
        });
        let cpu_us = spent
            .map(|(u, s)| (u + s) as f64 * 1e6 / self.ticks_per_s as f64 / phase.ok.max(1) as f64);
        let sys_share = spent
            .filter(|&(u, s)| u + s > 0)
            .map(|(u, s)| s as f64 / (u + s) as f64);
        Measured {
            phase,
            cpu_us,
            sys_share,
        }
    }

    /// The highest rate of `ramp` whose p99 stays within [`SLO_MS`], trying them
    /// in order and stopping at the first that fails twice in a row (on a shared
    /// machine one stall can push a short phase's p99 over). `Err(first)` when
    /// even the first fails.
    async fn max_rate(
        &self,
        sut: &Sut<'_>,
        mode: &str,
        body: &'static str,
        ramp: &[u64],
    ) -> Result<u64, u64> {
        let mut best = Err(ramp.first().copied().unwrap_or(0));
        for &rate in ramp {
            let mut good = false;
            for attempt in ["", " (again)"] {
                let m = self.measure(sut, body, rate).await;
                good = m.phase.passes(SLO_MS);
                println!(
                    "max-QPS search, {mode}, {}: {rate} req/s{attempt} -> p99 {:.2} ms, {} errors{}",
                    sut.name,
                    m.phase.p99_ms,
                    m.phase.errors,
                    if good { "" } else { "  (fails)" }
                );
                if good {
                    break;
                }
            }
            if !good {
                break;
            }
            best = Ok(rate);
        }
        best
    }
}

/// Waits (at most 30 s) until `p` is idle: under 4 % of a core over half a
/// second. An overloaded proxy keeps serving its backlog after the client gave
/// up; the next phase must not pay for it.
async fn settle(p: &Proc, ticks_per_s: u64) {
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < until {
        let t0 = p.cpu_ticks();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if p.cpu_ticks().saturating_sub(t0) * 50 <= ticks_per_s {
            return;
        }
    }
}

/// The share of one core `p` uses over 2 s, in percent.
async fn idle_share(p: &Proc, ticks_per_s: u64) -> f64 {
    settle(p, ticks_per_s).await;
    let t0 = p.cpu_ticks();
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.cpu_ticks().saturating_sub(t0) as f64 * 100.0 / (2 * ticks_per_s) as f64
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The mock gets its own single thread, the load generator the runtime below.
    let mock_addr = mock::start()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("tenzro-gw-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = rt.block_on(run(&args, mock_addr, &dir));
    // Every child process is gone by now (each `Proc` kills its tree on drop).
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("configs and logs kept in {}", dir.display()),
    }
    result
}

async fn run(args: &Args, mock_addr: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    let ticks_per_s = procs::clock_ticks_per_s();
    let tenzro = procs::start_tenzro(&args.gateway_bin, mock_addr, dir).await?;
    let litellm = start_litellm(args, mock_addr, dir).await?;
    let bare = match &args.bare_proxy_bin {
        Some(bin) => Some(procs::start_bare_proxy(bin, mock_addr, dir).await?),
        None => None,
    };
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .build()?;
    let bench = Bench {
        client,
        secs: args.seconds,
        ticks_per_s,
    };

    let direct_url = format!("http://{mock_addr}/v1/chat/completions");
    let tenzro_url = format!("{}/v1/chat/completions", tenzro.url);
    let litellm_url = litellm
        .as_ref()
        .map(|(p, _)| format!("{}/v1/chat/completions", p.url));
    let bare_url = bare
        .as_ref()
        .map(|p| format!("{}/v1/chat/completions", p.url));
    let direct = Sut {
        name: "direct",
        target: Target {
            url: &direct_url,
            key: None,
        },
        proc: None,
    };
    let tz = Sut {
        name: "tenzro",
        target: Target {
            url: &tenzro_url,
            key: Some(&tenzro.key),
        },
        proc: Some(&tenzro),
    };
    let ll = litellm
        .as_ref()
        .zip(litellm_url.as_deref())
        .map(|((p, _), url)| Sut {
            name: "litellm",
            target: Target {
                url,
                key: Some(&p.key),
            },
            proc: Some(p),
        });
    let bp = bare.as_ref().zip(bare_url.as_deref()).map(|(p, url)| Sut {
        name: "bare",
        target: Target { url, key: None },
        proc: Some(p),
    });

    print_header(args, litellm.as_ref().map(|(_, v)| v.as_str()));
    // Background work (the gateway's group commit and voucher rounds, LiteLLM's
    // schedulers) costs CPU with no load at all; it is inside the per-request
    // figures, most visibly at low rates.
    let idle_tz = idle_share(&tenzro, ticks_per_s).await;
    let idle_ll = match &litellm {
        Some((p, _)) => format!("{:.1} %", idle_share(p, ticks_per_s).await),
        None => "off".to_owned(),
    };
    let idle_bare = match &bare {
        Some(p) => format!(", bare {:.1} %", idle_share(p, ticks_per_s).await),
        None => String::new(),
    };
    println!(
        "idle CPU (share of one core over 2 s, no load): tenzro {idle_tz:.1} %, litellm {idle_ll}{idle_bare}"
    );
    for (mode, body) in BODIES {
        for sut in [Some(&direct), Some(&tz), ll.as_ref(), bp.as_ref()]
            .into_iter()
            .flatten()
        {
            check_answer(&bench.client, sut, mode, body).await?;
        }
        // Warm every path (LiteLLM imports lazily on its first requests).
        for sut in [Some(&direct), Some(&tz), ll.as_ref(), bp.as_ref()]
            .into_iter()
            .flatten()
        {
            load::phase(&bench.client, &sut.target, body, 50, 1).await;
        }
        println!("\n## {mode}\n");
        let (bare_head, bare_rule) = if bp.is_some() {
            (BARE_HEAD, BARE_RULE)
        } else {
            ("", "")
        };
        println!(
            "| rate req/s | direct p50 / p99 ms | tenzro p50 / p99 ms | tenzro overhead p50 / p99 ms | litellm p50 / p99 ms | litellm overhead p50 / p99 ms | litellm/tenzro overhead p50 | tenzro CPU µs/req | litellm CPU µs/req | litellm/tenzro CPU | errors d/t/l |{bare_head}"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{bare_rule}");
        let (mut tz_saturated, mut ll_saturated, mut bp_saturated) = (false, false, false);
        // (rate, CPU µs/req) of the table's phases that met the SLO.
        let mut tz_cpu: Vec<(u64, f64)> = Vec::new();
        let mut ll_cpu: Vec<(u64, f64)> = Vec::new();
        let mut bp_cpu: Vec<(u64, f64)> = Vec::new();
        for &rate in &args.rates {
            let d = bench.measure(&direct, body, rate).await;
            let t = if tz_saturated {
                None
            } else {
                Some(bench.measure(&tz, body, rate).await)
            };
            let l = match &ll {
                Some(sut) if !ll_saturated => Some(bench.measure(sut, body, rate).await),
                _ => None,
            };
            let b = match &bp {
                Some(sut) if !bp_saturated => Some(bench.measure(sut, body, rate).await),
                _ => None,
            };
            tz_saturated |= t.as_ref().is_some_and(|m| !m.phase.passes(SATURATED_MS));
            ll_saturated |= l.as_ref().is_some_and(|m| !m.phase.passes(SATURATED_MS));
            bp_saturated |= b.as_ref().is_some_and(|m| !m.phase.passes(SATURATED_MS));
            let within = |m: &Option<Measured>| {
                m.as_ref()
                    .filter(|m| m.phase.passes(SLO_MS))
                    .and_then(|m| m.cpu_us)
            };
            tz_cpu.extend(within(&t).map(|c| (rate, c)));
            ll_cpu.extend(within(&l).map(|c| (rate, c)));
            bp_cpu.extend(within(&b).map(|c| (rate, c)));
            let bare_cells = if bp.is_some() {
                bare_row(&d, t.as_ref(), b.as_ref())
            } else {
                String::new()
            };
            println!(
                "{}{bare_cells}",
                row(rate, &d, t.as_ref(), l.as_ref(), ll.is_some())
            );
        }
        println!();
        let d_max = bench.max_rate(&direct, mode, body, &args.ramp).await;
        let t_max = bench.max_rate(&tz, mode, body, &args.ramp).await;
        let l_max = match &ll {
            Some(sut) => Some(bench.max_rate(sut, mode, body, &args.ramp).await),
            None => None,
        };
        let b_max = match &bp {
            Some(sut) => Some(bench.max_rate(sut, mode, body, &args.ramp).await),
            None => None,
        };
        // The bare forwarder's column, after the others, only when it runs.
        let bare_col = |s: String| {
            if bp.is_some() {
                format!(" {s} |")
            } else {
                String::new()
            }
        };
        println!(
            "\n| {mode} | direct | tenzro | litellm |{}",
            bare_col("bare".to_owned())
        );
        println!(
            "|---|---:|---:|---:|{}",
            if bp.is_some() { "---:|" } else { "" }
        );
        println!(
            "| max sustained req/s (p99 <= {SLO_MS} ms, errors <= 1 %) | {} | {} | {} |{}",
            max_cell(d_max, &args.ramp),
            max_cell(t_max, &args.ramp),
            l_max.map_or_else(|| "off".to_owned(), |m| max_cell(m, &args.ramp)),
            bare_col(b_max.map_or_else(String::new, |m| max_cell(m, &args.ramp)))
        );
        let off = |s: String| if ll.is_some() { s } else { "off".to_owned() };
        // The same rate for both: the highest table rate where both met the SLO.
        let both = tz_cpu.iter().rev().find_map(|&(r, t)| {
            ll_cpu
                .iter()
                .find(|&&(lr, _)| lr == r)
                .map(|&(_, l)| (r, t, l))
        });
        match both {
            Some((r, t, l)) => println!(
                "| CPU µs/req at {r} req/s (highest table rate where both met the SLO) | — | {t:.0} | {l:.0} |{}",
                bare_col("—".to_owned())
            ),
            None => println!(
                "| CPU µs/req at a table rate where both met the SLO | — | — | {} |{}",
                off("none".to_owned()),
                bare_col("—".to_owned())
            ),
        }
        let at_best = |v: &[(u64, f64)]| {
            v.last()
                .map_or_else(|| "—".to_owned(), |(r, c)| format!("{c:.0} (at {r} req/s)"))
        };
        println!(
            "| CPU µs/req at its highest table rate within the SLO | — | {} | {} |{}",
            at_best(&tz_cpu),
            off(at_best(&ll_cpu)),
            bare_col(at_best(&bp_cpu))
        );
    }
    println!("\nreproduce: {}", reproduce_line());
    Ok(())
}

/// One request: the answer must carry the mock's content (all ten chunks and the
/// end marker, when streamed), so a proxy that answers 200 with an error inside
/// cannot pass for a fast one.
async fn check_answer(
    client: &reqwest::Client,
    sut: &Sut<'_>,
    mode: &str,
    body: &'static str,
) -> anyhow::Result<()> {
    let mut rb = client
        .post(sut.target.url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(k) = sut.target.key {
        rb = rb.bearer_auth(k);
    }
    let r = rb.timeout(load::REQUEST_TIMEOUT).send().await?;
    let status = r.status();
    let text = r.text().await?;
    let expected: &[&str] = if body.contains("\"stream\":true") {
        &["w0 ", "w9 ", "[DONE]"]
    } else {
        &["Paris is the capital of France."]
    };
    if !status.is_success() || !expected.iter().all(|e| text.contains(e)) {
        bail!(
            "{} ({mode}) answered {status} without the mock's content: {}",
            sut.name,
            text.chars().take(500).collect::<String>()
        );
    }
    Ok(())
}

/// Starts LiteLLM unless it is off or missing; returns it with its version.
async fn start_litellm(
    args: &Args,
    mock: SocketAddr,
    dir: &Path,
) -> anyhow::Result<Option<(Proc, String)>> {
    if args.no_litellm {
        return Ok(None);
    }
    let Some(bin) = procs::find_on_path(&args.litellm_bin) else {
        println!(
            "LiteLLM: `{}` not found, so its columns are off (install it with benches/setup-litellm)",
            args.litellm_bin.display()
        );
        return Ok(None);
    };
    let p = procs::start_litellm(
        &procs::LitellmOpts {
            bin: &bin,
            workers: args.litellm_workers,
        },
        mock,
        dir,
    )
    .await?;
    let version = procs::litellm_version(&p).await;
    Ok(Some((p, version)))
}

fn print_header(args: &Args, litellm_version: Option<&str>) {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "gateway-load: {cores} cores, {} s or {} requests per phase (whichever is longer), open loop, every process on 127.0.0.1 and the same mock upstream",
        args.seconds,
        load::MIN_REQUESTS
    );
    println!(
        "tenzro: tenzro-gateway {}, auth on (API key -> account in its SQLite store), rate limiters checked (limits far above the load), routing, pricing, ledger and per-chunk metering on, RUST_LOG=warn",
        args.gateway_bin.display()
    );
    match litellm_version {
        Some(v) => println!(
            "litellm: LiteLLM proxy {v}, {} uvicorn worker(s), auth on (master key), default hooks on (its parallel-request limiter among them, no limits set), no database (so no virtual keys, spend tracking or budgets), LITELLM_LOG=WARNING (no access log), telemetry off, bundled cost map",
            args.litellm_workers
        ),
        None => println!("litellm: off"),
    }
    if let Some(bin) = &args.bare_proxy_bin {
        println!(
            "bare: {} (benches/gateway/bare_proxy.rs), a baseline: the gateway's HTTP/1.1 listener and h2c provider client (one connection) on tokio's default workers, the body and answer relayed unchanged; no auth, limits, routing, pricing, ledger, signing, metering or logging; system allocator (the gateway: mimalloc)",
            bin.display()
        );
    }
    println!(
        "overhead = proxy latency - direct latency at the same rate; CPU = utime + stime of the proxy's process tree per successful request"
    );
}

fn row(
    rate: u64,
    d: &Measured,
    t: Option<&Measured>,
    l: Option<&Measured>,
    litellm_on: bool,
) -> String {
    let pair = |m: Option<&Measured>| {
        m.map_or_else(
            || "—".to_owned(),
            |m| format!("{:.2} / {:.2}", m.phase.p50_ms, m.phase.p99_ms),
        )
    };
    let over = |m: Option<&Measured>| {
        m.map_or_else(
            || "—".to_owned(),
            |m| {
                format!(
                    "{:.2} / {:.2}",
                    m.phase.p50_ms - d.phase.p50_ms,
                    m.phase.p99_ms - d.phase.p99_ms
                )
            },
        )
    };
    let skipped = if litellm_on { "saturated" } else { "off" };
    let (l_pair, l_over) = match l {
        Some(_) => (pair(l), over(l)),
        None => (skipped.to_owned(), skipped.to_owned()),
    };
    let within = |m: Option<&Measured>| {
        m.filter(|m| m.phase.passes(SLO_MS))
            .map(|m| m.phase.p50_ms - d.phase.p50_ms)
    };
    // Past the SLO a latency is mostly queue, which grows with the phase's length,
    // and below 0.05 ms our overhead is within the noise: no ratio in either case.
    let over_ratio = match (l, within(l), within(t)) {
        (None, ..) => "—".to_owned(),
        (Some(_), None, _) => "litellm over SLO".to_owned(),
        (Some(_), Some(_), None) => "tenzro over SLO".to_owned(),
        (Some(_), Some(l), Some(t)) if t >= 0.05 => format!("{:.0}x", l / t),
        (Some(_), Some(_), Some(_)) => "n/a (tenzro < 0.05 ms)".to_owned(),
    };
    let t_cpu = t.and_then(|m| m.cpu_us);
    let l_cpu = l.and_then(|m| m.cpu_us);
    let cpu_ratio = match (l_cpu, t_cpu) {
        (Some(l), Some(t)) if t > 0.0 => format!("{:.0}x", l / t),
        _ => "—".to_owned(),
    };
    let errs =
        |m: Option<&Measured>| m.map_or_else(|| "-".to_owned(), |m| m.phase.errors.to_string());
    format!(
        "| {rate} | {} | {} | {} | {l_pair} | {l_over} | {over_ratio} | {} | {} | {cpu_ratio} | {}/{}/{} |",
        pair(Some(d)),
        pair(t),
        over(t),
        opt(t_cpu, 0),
        opt(l_cpu, 0),
        d.phase.errors,
        errs(t),
        errs(l)
    )
}

/// The bare forwarder's columns, after the table's others (only with
/// `--bare-proxy-bin`). The kernel shares are stime / (utime + stime) of each
/// process tree over the phase.
const BARE_HEAD: &str = " bare p50 / p99 ms | bare overhead p50 / p99 ms | bare CPU µs/req | tenzro/bare CPU | tenzro kernel % of CPU | bare kernel % of CPU | errors b |";
const BARE_RULE: &str = "---:|---:|---:|---:|---:|---:|---:|";

/// A row's cells for [`BARE_HEAD`], after the row's closing `|`.
fn bare_row(d: &Measured, t: Option<&Measured>, b: Option<&Measured>) -> String {
    let pct = |m: Option<&Measured>| opt(m.and_then(|m| m.sys_share).map(|s| s * 100.0), 0);
    let Some(b) = b else {
        return format!(" saturated | saturated | — | — | {} | — | - |", pct(t));
    };
    let t_cpu = t.and_then(|m| m.cpu_us);
    let ratio = match (t_cpu, b.cpu_us) {
        (Some(t), Some(b)) if b > 0.0 => format!("{:.1}x", t / b),
        _ => "—".to_owned(),
    };
    format!(
        " {:.2} / {:.2} | {:.2} / {:.2} | {} | {ratio} | {} | {} | {} |",
        b.phase.p50_ms,
        b.phase.p99_ms,
        b.phase.p50_ms - d.phase.p50_ms,
        b.phase.p99_ms - d.phase.p99_ms,
        opt(b.cpu_us, 0),
        pct(t),
        pct(Some(b)),
        b.phase.errors
    )
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.decimals$}"))
}

fn max_cell(m: Result<u64, u64>, ramp: &[u64]) -> String {
    match m {
        Ok(r) if Some(&r) == ramp.last() => format!(">= {r} (every rate tried passed)"),
        Ok(r) => r.to_string(),
        Err(first) => format!("< {first}"),
    }
}

/// The command line of this run, as typed, after the build that it needs.
fn reproduce_line() -> String {
    let argv: Vec<String> = std::env::args()
        .map(|a| if a.contains(' ') { format!("'{a}'") } else { a })
        .collect();
    format!(
        "benches/setup-litellm && cargo build --release -p tenzro-gateway -p tenzro-benches && {}",
        argv.join(" ")
    )
}
