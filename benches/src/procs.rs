//! The processes under test, each a child of the benchmark: `tenzro-gateway`
//! (its config, a key from `keys create`, the process), LiteLLM's proxy and the
//! bare forwarder baseline (`bare-proxy`). A [`Proc`] kills its whole process
//! tree when dropped, and reads its memory and the tree's CPU time from `/proc`.
//! Shared by gateway-load, gateway-streams and gateway-replicas.

use std::collections::HashMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A child process under test and what it takes to call it.
pub struct Proc {
    child: Child,
    /// Base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    pub key: String,
    pub log: PathBuf,
}

impl Proc {
    /// The process id of the child (its `/proc/PID/status` has its memory).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`); 0 when unreadable.
    pub fn status_kb(&self, field: &str) -> u64 {
        status_kb(self.pid(), field)
    }

    /// utime + stime of the process and all its descendants, in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        let (user, system) = self.cpu_split();
        user + system
    }

    /// utime and stime (the kernel's share) of the process and all its
    /// descendants, in clock ticks.
    pub fn cpu_split(&self) -> (u64, u64) {
        tree(self.child.id())
            .iter()
            .filter_map(|&pid| stat(pid))
            .fold((0, 0), |(u, s), st| (u + st.utime, s + st.stime))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Descendants first (a forking server's workers), while they still name
        // the root as an ancestor; then the root itself.
        let pids: Vec<String> = tree(self.child.id())
            .into_iter()
            .skip(1)
            .map(|p| p.to_string())
            .collect();
        if !pids.is_empty() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .args(&pids)
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`); 0 when unreadable.
pub fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.split(':').next() == Some(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Stat {
    ppid: u32,
    utime: u64,
    stime: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state, ppid, ... utime and stime are fields 14 and 15 of
    // the whole line, 12 and 13 here (1-based), indices 11 and 12.
    let ppid = f.get(1)?.parse().ok()?;
    let utime = f.get(11)?.parse().ok()?;
    let stime = f.get(12)?.parse().ok()?;
    Some(Stat { ppid, utime, stime })
}

/// `root` and every live descendant, root first.
fn tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok())
                && let Some(s) = stat(pid)
            {
                children.entry(s.ppid).or_default().push(pid);
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while let Some(&pid) = out.get(i) {
        out.extend(children.get(&pid).into_iter().flatten());
        i += 1;
    }
    out
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that fails).
pub fn clock_ticks_per_s() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// The first `name` on `PATH` (or `name` itself when it is a path to a file).
pub fn find_on_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A port free on 127.0.0.1 now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Polls `path` until it answers 2xx, the child exits, or `limit` passes. On an
/// error the caller drops `p`, which kills it.
async fn wait_ready(p: &mut Proc, path: &str, limit: Duration) -> anyhow::Result<()> {
    let url = format!("{}{path}", p.url);
    let log = &p.log;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Ok(r) = client.get(&url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Some(status) = p.child.try_wait()? {
            bail!(
                "{url}: the process exited ({status}) before it was ready; log: {}\n{}",
                log.display(),
                tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{url} was not ready within {} s; log: {}\n{}",
        limit.as_secs(),
        log.display(),
        tail(log)
    )
}

fn tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A bench gateway's config: its SQLite store (and payer key, replica id) under
/// `data_dir`, `extra` TOML sections (e.g. `[store]`), the rate limiters set far
/// above any load (checked, never refusing), and one configured provider, `mock`
/// at `mock`, serving the model `bench`.
pub fn gateway_config(data_dir: &Path, mock: SocketAddr, extra: &str) -> String {
    format!(
        r#"[server]
data_dir = "{}"
{extra}[limits]
requests_per_minute = 4000000000
tokens_per_minute = 4000000000
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
        data_dir.display()
    )
}

/// Starts `tenzro-gateway` with a temporary config in `dir` and a funded key made
/// by `keys create` (accounts live in the gateway's SQLite store under
/// `dir/data`). Auth, the rate limiters, routing, pricing, the ledger and
/// per-chunk metering are on.
pub async fn start_tenzro(bin: &Path, mock: SocketAddr, dir: &Path) -> anyhow::Result<Proc> {
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, gateway_config(&dir.join("data"), mock, ""))?;
    let key = create_key(bin, &cfg, &["--balance", "1000000000"], &[])?;
    spawn_gateway(bin, &cfg, (dir, "tenzro-gateway"), free_port()?, key, &[]).await
}

/// Runs `tenzro-gateway keys create --config CFG ARGS...` and returns the key it
/// prints (its last non-empty line).
pub fn create_key(
    bin: &Path,
    cfg: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(["keys", "create", "--config"])
        .arg(cfg)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "keys create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8(out.stdout)?;
    Ok(stdout
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .context("keys create printed no key")?
        .to_owned())
}

/// Starts `tenzro-gateway --config CFG` on 127.0.0.1:`port` with `env`, logging
/// to `dir/NAME.log`, and waits (30 s at most) for `/health`. `key` is what
/// callers use to call it.
pub async fn spawn_gateway(
    bin: &Path,
    cfg: &Path,
    (dir, name): (&Path, &str),
    port: u16,
    key: String,
    env: &[(&str, &str)],
) -> anyhow::Result<Proc> {
    let mut cmd = Command::new(bin);
    cmd.arg("--config")
        .arg(cfg)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied());
    launch(cmd, port, key, dir.join(format!("{name}.log"))).await
}

/// Runs `cmd` (a server that will listen on 127.0.0.1:`port`) with its output
/// in `log`, and waits (30 s at most) for its `/health`.
async fn launch(mut cmd: Command, port: u16, key: String, log: PathBuf) -> anyhow::Result<Proc> {
    let log_file = File::create(&log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))?;
    let mut p = Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
        key,
        log,
    };
    wait_ready(&mut p, "/health", Duration::from_secs(30)).await?;
    Ok(p)
}

/// Starts `bare-proxy` (benches/gateway/bare_proxy.rs, the gateway's transport
/// alone) on a free port in front of `mock`, logging to `dir/bare-proxy.log`, and
/// waits (30 s at most) for `/health`, which it serves once it calls the mock in
/// h2c. It checks no key.
pub async fn start_bare_proxy(bin: &Path, mock: SocketAddr, dir: &Path) -> anyhow::Result<Proc> {
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &mock.to_string()]);
    launch(cmd, port, String::new(), dir.join("bare-proxy.log")).await
}

/// How LiteLLM's proxy is run.
pub struct LitellmOpts<'a> {
    pub bin: &'a Path,
    pub workers: u32,
}

/// The master key LiteLLM checks on every request (auth on, no database).
const LITELLM_KEY: &str = "sk-tenzro-bench";

/// Starts LiteLLM's proxy on a config whose one model points at the mock, with
/// a master key and no database (so no virtual keys, budgets or spend logs), its
/// log level at WARNING (no access log, like our gateway at `warn`), telemetry
/// off and the bundled model cost map (the machine may have no internet).
pub async fn start_litellm(
    opts: &LitellmOpts<'_>,
    mock: SocketAddr,
    dir: &Path,
) -> anyhow::Result<Proc> {
    let cfg = dir.join("litellm.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"model_list:
  - model_name: bench
    litellm_params:
      model: openai/bench
      api_base: http://{mock}/v1
      api_key: x
general_settings:
  master_key: {LITELLM_KEY}
"#
        ),
    )?;
    let port = free_port()?;
    let log = dir.join("litellm.log");
    let log_file = File::create(&log)?;
    let child = Command::new(opts.bin)
        .arg("--config")
        .arg(&cfg)
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--num_workers",
            &opts.workers.to_string(),
        ])
        .env("LITELLM_TELEMETRY", "False")
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .env("LITELLM_LOG", "WARNING")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env_remove("DATABASE_URL")
        .env_remove("DIRECT_URL")
        .env_remove("LITELLM_MASTER_KEY")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("starting {}", opts.bin.display()))?;
    let mut p = Proc {
        child,
        url: format!("http://127.0.0.1:{port}"),
        key: LITELLM_KEY.to_owned(),
        log,
    };
    // Python imports make the first start slow on a small machine.
    wait_ready(&mut p, "/health/readiness", Duration::from_secs(180)).await?;
    Ok(p)
}

/// LiteLLM's version as its detailed readiness endpoint reports it.
pub async fn litellm_version(p: &Proc) -> String {
    let got = async {
        let url = format!("{}/health/readiness/details", p.url);
        let r = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(url)
            .bearer_auth(&p.key)
            .send()
            .await?;
        let v: serde_json::Value = r.json().await?;
        anyhow::Ok(
            v.get("litellm_version")
                .and_then(|v| v.as_str())
                .unwrap_or("(unknown version)")
                .to_owned(),
        )
    };
    got.await.unwrap_or_else(|_| "(unknown version)".to_owned())
}
