//! Gateway memory under many slow streams (issue 17): the real `tenzro-gateway`
//! relays streamed answers from a mock upstream that trickles one token per
//! `--interval-ms`, at 1, 100 and 1,000 streams open at once; the gateway's
//! resident memory (`VmRSS`, sampled every 50 ms, and `VmHWM` from
//! `/proc/PID/status`) is compared with the same process idle. Goal: at most
//! 50 MiB at 1,000 streams.
//!
//! `target/release/gateway-streams --gateway-bin target/release/tenzro-gateway`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;

use tenzro_benches::mock::{self, Pace};
use tenzro_benches::procs::{self, Proc};

#[derive(Parser, Debug)]
struct Args {
    /// The gateway binary (`cargo build --release -p tenzro-gateway`).
    #[arg(long, default_value = "target/release/tenzro-gateway")]
    gateway_bin: PathBuf,
    /// Streams open at once, one phase each.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 100, 1000])]
    streams: Vec<usize>,
    /// Token chunks per streamed answer.
    #[arg(long, default_value_t = 20)]
    chunks: usize,
    /// Milliseconds between two chunks from the upstream.
    #[arg(long, default_value_t = 500)]
    interval_ms: u64,
    /// The goal at the largest phase, in MiB of resident memory.
    #[arg(long, default_value_t = 50.0)]
    goal_mib: f64,
}

const BODY: &str = r#"{"model":"bench","messages":[{"role":"user","content":"Tell me a long story."}],"max_tokens":64,"stream":true}"#;

/// One phase's outcome.
struct Phase {
    streams: usize,
    completed: usize,
    open_max: usize,
    peak_kb: u64,
    secs: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pace = Pace {
        chunks: args.chunks,
        interval: Duration::from_millis(args.interval_ms),
    };
    let mock = mock::start_paced(pace)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = std::env::temp_dir().join(format!("tenzro-streams-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let result = rt.block_on(run(&args, mock, &dir));
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(_) => eprintln!("config and log kept in {}", dir.display()),
    }
    result
}

async fn run(args: &Args, mock: std::net::SocketAddr, dir: &Path) -> anyhow::Result<()> {
    let gw = procs::start_tenzro(&args.gateway_bin, mock, dir).await?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(4096)
        .build()?;
    let url = format!("{}/v1/chat/completions", gw.url);
    // One answer must come back whole before anything is measured; a few more
    // warm the gateway's pools.
    let text = one_stream(&client, &url, &gw.key, None).await?;
    if !text.contains(&format!("w{} ", args.chunks - 1)) || !text.contains("[DONE]") {
        bail!(
            "the gateway's stream lacks the mock's chunks: {}",
            text.chars().take(500).collect::<String>()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_kb = gw.status_kb("VmRSS");
    print_header(args, idle_kb);
    let mut phases = Vec::new();
    for &n in &args.streams {
        let p = phase(&client, &url, &gw, n).await;
        println!(
            "{n} streams: {} completed, {} open at most, peak VmRSS {:.1} MiB, {:.1} s",
            p.completed,
            p.open_max,
            p.peak_kb as f64 / 1024.0,
            p.secs
        );
        phases.push(p);
        // Let the gateway drop what the phase left (connections, channels).
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let hwm_kb = gw.status_kb("VmHWM");
    let after_kb = gw.status_kb("VmRSS");
    print_table(args, idle_kb, &phases, hwm_kb, after_kb);
    println!(
        "\nreproduce: cargo build --release -p tenzro-gateway -p tenzro-benches && {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

/// One streamed request read chunk by chunk; `open` counts streams between their
/// first chunk and their end. Returns the whole text.
async fn one_stream(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    open: Option<&AtomicUsize>,
) -> anyhow::Result<String> {
    let mut r = client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(BODY)
        .timeout(Duration::from_secs(120))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!(
            "status {}: {}",
            r.status(),
            r.text().await.unwrap_or_default()
        );
    }
    let mut text = Vec::new();
    let mut first = true;
    let result = async {
        while let Some(c) = r.chunk().await? {
            if first {
                first = false;
                if let Some(o) = open {
                    o.fetch_add(1, Ordering::SeqCst);
                }
            }
            text.extend_from_slice(&c);
        }
        anyhow::Ok(())
    }
    .await;
    if !first && let Some(o) = open {
        o.fetch_sub(1, Ordering::SeqCst);
    }
    result?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// Opens `n` streams (spread over half a second) and samples the gateway's
/// resident memory every 50 ms until they all ended.
async fn phase(client: &reqwest::Client, url: &str, gw: &Proc, n: usize) -> Phase {
    let open = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (client, url, key, open) =
            (client.clone(), url.to_owned(), gw.key.clone(), open.clone());
        let at = t0 + Duration::from_micros(500_000 * i as u64 / n.max(1) as u64);
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let text = one_stream(&client, &url, &key, Some(&open)).await;
            text.is_ok_and(|t| t.contains("[DONE]"))
        }));
    }
    let sampler = {
        let (done, open) = (done.clone(), open.clone());
        let pid = gw.pid();
        tokio::spawn(async move {
            let (mut peak, mut open_max) = (0u64, 0usize);
            while !done.load(Ordering::SeqCst) {
                peak = peak.max(procs::status_kb(pid, "VmRSS"));
                open_max = open_max.max(open.load(Ordering::SeqCst));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (peak, open_max)
        })
    };
    let mut completed = 0;
    for h in handles {
        completed += usize::from(h.await.unwrap_or(false));
    }
    done.store(true, Ordering::SeqCst);
    let (peak_kb, open_max) = sampler.await.unwrap_or((0, 0));
    Phase {
        streams: n,
        completed,
        open_max,
        peak_kb,
        secs: t0.elapsed().as_secs_f64(),
    }
}

fn print_header(args: &Args, idle_kb: u64) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "gateway-streams: {cores} cores; tenzro-gateway {} (auth, routing, pricing, ledger and per-chunk metering on, RUST_LOG=warn) relaying a mock upstream that sends {} one-token chunks {} ms apart ({:.1} s per answer); every process on 127.0.0.1",
        args.gateway_bin.display(),
        args.chunks,
        args.interval_ms,
        args.chunks as f64 * args.interval_ms as f64 / 1e3
    );
    println!(
        "idle gateway (after one answer): VmRSS {:.1} MiB",
        idle_kb as f64 / 1024.0
    );
}

fn print_table(args: &Args, idle_kb: u64, phases: &[Phase], hwm_kb: u64, after_kb: u64) {
    let mib = |kb: u64| kb as f64 / 1024.0;
    println!(
        "\n| streams | completed | open at once (max) | gateway VmRSS peak MiB | over idle MiB | KiB per open stream | peak / idle |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| 0 (idle, baseline) | — | 0 | {:.1} | 0.0 | — | 1.00x |",
        mib(idle_kb)
    );
    for p in phases {
        let over = p.peak_kb.saturating_sub(idle_kb);
        println!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2}x |",
            p.streams,
            p.completed,
            p.open_max,
            mib(p.peak_kb),
            mib(over),
            over as f64 / p.open_max.max(1) as f64,
            p.peak_kb as f64 / idle_kb.max(1) as f64
        );
    }
    println!(
        "\nVmHWM (highest resident memory of the gateway's life): {:.1} MiB; VmRSS after the last phase: {:.1} MiB",
        mib(hwm_kb),
        mib(after_kb)
    );
    if let Some(last) = phases.last() {
        let verdict = if mib(hwm_kb) <= args.goal_mib {
            "met"
        } else {
            "MISSED"
        };
        println!(
            "goal: VmHWM <= {} MiB with {} streams open: {verdict}",
            args.goal_mib, last.open_max
        );
    }
}
