//! Gateway load benchmark: a mock upstream, the real `tenzro-gateway` binary in its
//! own process, and an open-loop load generator, all on 127.0.0.1.
//!
//! `cargo run --release -p tenzro-benches --bin gateway-load -- --gateway-bin target/release/tenzro-gateway`
//!
//! Prints, for non-stream and stream: latency p50/p99 direct-to-mock vs through the
//! gateway at fixed rates (open loop: latency counts from each request's scheduled
//! start, so a stalled server cannot hide its queue), the highest tried rate whose
//! p99 stays within 50 ms, and the gateway's CPU time per request from
//! `/proc/PID/stat` (utime + stime). Auth, rate limiting, routing, pricing, the
//! ledger and per-chunk metering are all on in the gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    /// The gateway binary (build it with `cargo build --release -p tenzro-gateway`).
    #[arg(long, default_value = "target/release/tenzro-gateway")]
    gateway_bin: PathBuf,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Fixed rates (requests per second) for the overhead table.
    #[arg(long, value_delimiter = ',', default_values_t = vec![200, 500, 1000, 2000])]
    rates: Vec<u64>,
    /// Rates tried, in order, for the max-QPS search.
    #[arg(long, value_delimiter = ',', default_values_t = vec![500, 1000, 2000, 3000, 4000, 6000, 8000])]
    ramp: Vec<u64>,
}

const CHAT: &str = r#"{"id":"chatcmpl-b","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Paris is the capital of France."},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":8,"total_tokens":20}}"#;

fn sse_body() -> Bytes {
    let mut s = String::new();
    for i in 0..10 {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}},\"finish_reason\":null}}],\"tenzro\":{{\"tokens\":1}}}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-b\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":10,\"total_tokens\":22}}\n\n");
    s.push_str("data: [DONE]\n\n");
    Bytes::from(s)
}

async fn mock(body: Bytes) -> Response {
    let stream = body.windows(13).any(|w| w == b"\"stream\":true");
    if stream {
        Response::builder().header("content-type", "text/event-stream").body(Body::from(sse_body())).unwrap_or_default()
    } else {
        Response::builder().header("content-type", "application/json").body(Body::from(CHAT)).unwrap_or_default()
    }
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("stat format")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    Ok(f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?)
}

struct Phase {
    p50_ms: f64,
    p99_ms: f64,
    ok: usize,
    errors: usize,
}

/// Sends `rate` requests per second for `secs` seconds, open loop.
async fn phase(client: &reqwest::Client, url: &str, key: Option<&str>, body: &'static str, rate: u64, secs: u64) -> Phase {
    let n = (rate * secs) as usize;
    let start = Instant::now() + Duration::from_millis(20);
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + Duration::from_nanos(i as u64 * 1_000_000_000 / rate);
        let (client, url, key) = (client.clone(), url.to_owned(), key.map(str::to_owned));
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            let mut rb = client.post(url).header("content-type", "application/json").body(body);
            if let Some(k) = key {
                rb = rb.bearer_auth(k);
            }
            let ok = match rb.send().await {
                Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                _ => false,
            };
            (ok, at.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    for h in handles {
        match h.await {
            Ok((true, d)) => lat.push(d),
            _ => errors += 1,
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).map(|d| d.as_secs_f64() * 1e3).unwrap_or(f64::NAN);
    Phase { p50_ms: pct(0.50), p99_ms: pct(0.99), ok: lat.len(), errors }
}

struct Gateway {
    child: Child,
    url: String,
    key: String,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn start_gateway(bin: &PathBuf, mock: SocketAddr) -> anyhow::Result<Gateway> {
    let dir = std::env::temp_dir().join(format!("tenzro-gw-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = dir.join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[server]
data_dir = "{}"
[limits]
requests_per_minute = 0
tokens_per_minute = 0
[[providers]]
id = "mock"
endpoint = "http://{mock}"
stake = "100000"
max_concurrency = 1000000
[[providers.models]]
id = "bench"
category = "LLM"
price_per_token = "1000"
max_context = 2048
"#,
            dir.join("data").display()
        ),
    )?;
    let out = Command::new(bin)
        .args(["keys", "create", "--config"])
        .arg(&cfg)
        .args(["--balance", "1000000000"])
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!("keys create failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let key = String::from_utf8(out.stdout)?.trim().to_owned();
    let port = free_port()?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(&cfg)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if reqwest::get(format!("{url}/health")).await.is_ok() {
            return Ok(Gateway { child, url, key });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the gateway did not come up")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The mock gets its own single thread, the load generator the runtime below.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        if let Ok(rt) = rt {
            rt.block_on(async move {
                if let Ok(l) = tokio::net::TcpListener::bind("127.0.0.1:0").await {
                    let _ = tx.send(l.local_addr().ok());
                    let app = Router::new().route("/v1/chat/completions", post(mock));
                    let _ = axum::serve(l, app).await;
                }
            });
        }
    });
    let mock_addr = rx.recv()?.context("mock did not start")?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    rt.block_on(run(args, mock_addr))
}

async fn run(args: Args, mock_addr: SocketAddr) -> anyhow::Result<()> {
    let gw = Arc::new(start_gateway(&args.gateway_bin, mock_addr).await?);
    let pid = gw.child.id();
    let client = reqwest::Client::builder().no_proxy().tcp_nodelay(true).pool_max_idle_per_host(4096).build()?;
    let direct = format!("http://{mock_addr}/v1/chat/completions");
    let via = format!("{}/v1/chat/completions", gw.url);
    let bodies: [(&str, &'static str); 2] = [
        ("non-stream", r#"{"model":"bench","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16}"#),
        ("stream", r#"{"model":"bench","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":16,"stream":true}"#),
    ];
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("gateway-load: {cores} cores, {} s per phase, all processes on 127.0.0.1", args.seconds);
    for (mode, body) in bodies {
        // Warm both paths.
        phase(&client, &direct, None, body, 200, 1).await;
        phase(&client, &via, Some(&gw.key), body, 200, 1).await;
        println!("\n## {mode}\n");
        println!("| rate (req/s) | direct p50 ms | direct p99 ms | gateway p50 ms | gateway p99 ms | overhead p50 ms | overhead p99 ms | gateway CPU µs/req | errors |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for &rate in &args.rates {
            let d = phase(&client, &direct, None, body, rate, args.seconds).await;
            let t0 = cpu_ticks(pid)?;
            let g = phase(&client, &via, Some(&gw.key), body, rate, args.seconds).await;
            let ticks = cpu_ticks(pid)? - t0;
            // Clock ticks are 10 ms on Linux (CLK_TCK = 100).
            let cpu_us = ticks as f64 * 10_000.0 / g.ok.max(1) as f64;
            println!(
                "| {rate} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {} |",
                d.p50_ms, d.p99_ms, g.p50_ms, g.p99_ms, g.p50_ms - d.p50_ms, g.p99_ms - d.p99_ms, cpu_us, d.errors + g.errors
            );
        }
        let mut best = None;
        for &rate in &args.ramp {
            let g = phase(&client, &via, Some(&gw.key), body, rate, args.seconds).await;
            let good = g.p99_ms <= 50.0 && g.errors * 100 <= g.ok;
            println!("max-QPS search ({mode}): {rate} req/s -> p99 {:.2} ms, {} errors{}", g.p99_ms, g.errors, if good { "" } else { "  (fails)" });
            if !good {
                break;
            }
            best = Some(rate);
        }
        match best {
            Some(r) => println!("max sustained {mode} rate with p99 <= 50 ms: {r} req/s (highest tried that passed)"),
            None => println!("max sustained {mode} rate with p99 <= 50 ms: below {} req/s", args.ramp.first().copied().unwrap_or(0)),
        }
    }
    Ok(())
}
