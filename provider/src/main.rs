//! `tenzro-provider`: serve open-weight models behind an OpenAI-compatible API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tenzro_provider::config::Config;
use tenzro_provider::{load, routes};
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
    config.validate()?;
    let listen = config.listen;
    // Models load before the listener opens: once /health answers, they serve.
    let state = load::load(config).context("loading models")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
        tracing::info!(addr = %listener.local_addr()?, "tenzro-provider listening");
        axum::serve(listener, routes::router(state))
            .with_graceful_shutdown(shutdown())
            .await
            .context("serving")
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
