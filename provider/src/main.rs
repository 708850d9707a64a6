//! `tenzro-provider`: serve open-weight models behind an OpenAI-compatible API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tenzro_provider::config::Config;
use tenzro_provider::{load, register, registration, routes};
use tokio_util::sync::CancellationToken;
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(name = "tenzro-provider", version, about = "Serve open-weight models behind an OpenAI-compatible API")]
struct Args {
    /// The TOML configuration (see configs/provider.toml).
    #[arg(long, env = "TENZRO_PROVIDER_CONFIG", default_value = "configs/provider.toml")]
    config: PathBuf,
    /// Address to listen on; overrides `listen` in the config.
    #[arg(long, env = "TENZRO_LISTEN")]
    listen: Option<SocketAddr>,
    /// Directory of model files; overrides `models_dir` in the config.
    #[arg(long, env = "TENZRO_MODELS_DIR")]
    models_dir: Option<PathBuf>,
    /// The provider's Ed25519 key file; overrides `identity.key_path` in the config.
    #[arg(long, env = "TENZRO_KEY_PATH")]
    key_path: Option<PathBuf>,
    /// The payment-channel voucher store; overrides `channels.path` in the config.
    #[arg(long, env = "TENZRO_VOUCHERS_PATH")]
    vouchers_path: Option<PathBuf>,
    /// A gateway to register with (e.g. http://127.0.0.1:8080); the provider then
    /// sends signed heartbeats until it stops.
    #[arg(long, env = "TENZRO_GATEWAY")]
    gateway: Option<String>,
    /// The URL the gateway should call this provider at (default: http://LISTEN).
    #[arg(long, env = "TENZRO_PUBLIC_URL")]
    public_url: Option<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.models_dir {
        config.models_dir = dir;
    }
    if let Some(path) = args.key_path {
        config.identity.key_path = path;
    }
    if let Some(path) = args.vouchers_path {
        config.channels.path = path;
    }
    config.validate()?;
    let listen = config.listen;
    // Models load before the listener opens: once /health answers, they serve.
    let state = load::load(config).context("loading models")?;
    tracing::info!(
        public_key = %state.identity.public_key(),
        did = %state.identity.did(),
        tee = %state.identity.tee_kind(),
        "provider identity"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "tenzro-provider listening");
        let cancel = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        if let Some(gateway) = args.gateway {
            let endpoint = args.public_url.unwrap_or_else(|| format!("http://{local}"));
            let registration = registration::registration(&state, endpoint);
            let identity = state.identity.clone();
            let sign = move |bytes: &[u8]| identity.key().sign(bytes).to_hex();
            tasks.spawn(register::run(gateway, registration, sign, cancel.clone()));
        }
        tasks.close();
        let served = axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(shutdown())
            .await
            .context("serving");
        cancel.cancel();
        tasks.wait().await;
        served
    })
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
