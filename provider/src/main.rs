//! `tenzro-provider`: serve open-weight models behind an OpenAI-compatible API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use std::time::Duration;

use tenzro_attest::PublicKey;
use tenzro_provider::config::{Config, GatewayConfig};
use tenzro_provider::payer::{Learned, PayerTrust};
use tenzro_provider::state::AppState;
use tenzro_provider::{bond, load, register, registration, routes};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "tenzro-provider",
    version,
    about = "Serve open-weight models behind an OpenAI-compatible API"
)]
struct Args {
    /// The TOML configuration (see configs/provider.toml).
    #[arg(
        long,
        env = "TENZRO_PROVIDER_CONFIG",
        default_value = "configs/provider.toml"
    )]
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
    /// A gateway to register with (e.g. https://gateway.example or
    /// http://127.0.0.1:8080); overrides `[gateway] url`. The provider then sends
    /// signed heartbeats until it stops, and serves only requests the gateway paid.
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
        // Colour only on a terminal: logs sent to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
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
    if let Some(gateway) = args.gateway {
        config.gateway.url = Some(gateway);
    }
    config.validate()?;
    let listen = config.listen;
    let gateway = config.gateway.clone();
    // Models load before the listener opens: once /health answers, they serve.
    let state = load::load(config).context("loading models")?;
    tracing::info!(
        public_key = %state.identity.public_key(),
        did = %state.identity.did(),
        tee = %state.identity.tee_kind(),
        "provider identity"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        if let Some(url) = &gateway.url {
            bond(&state, url, &gateway).await?;
        }
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, "tenzro-provider listening");
        let cancel = CancellationToken::new();
        let tasks = tokio_util::task::TaskTracker::new();
        if let Some(url) = gateway.url {
            let endpoint = args.public_url.unwrap_or_else(|| format!("http://{local}"));
            let registration = registration::registration(&state, endpoint);
            let identity = state.identity.clone();
            let sign = move |bytes: &[u8]| identity.key().sign(bytes).to_hex();
            let payers = state.payers.clone();
            let learn = move |answer: &register::Registered| learn_payer(&payers, answer);
            tasks.spawn(register::run_with(
                url,
                registration,
                sign,
                learn,
                cancel.clone(),
            ));
        }
        tasks.close();
        let app = routes::router(state).into_make_service_with_connect_info::<SocketAddr>();
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown())
            .await
            .context("serving");
        cancel.cancel();
        tasks.wait().await;
        served
    })
}

/// Trusts the payer key a registration answered (unless the config pins payers).
fn learn_payer(payers: &PayerTrust, answer: &register::Registered) {
    let Some(hex) = &answer.payer_key else {
        tracing::error!(
            "the gateway's registration answer names no payer_key: this provider cannot tell paid requests \
             from unpaid ones and refuses them all (pin the gateway's key in [channels] trusted_payers)"
        );
        return;
    };
    let key = match PublicKey::from_hex(hex) {
        Ok(key) => key,
        Err(e) => {
            tracing::error!(error = %e, "the gateway's payer_key is not a public key; ignored");
            return;
        }
    };
    match payers.learn(key) {
        Learned::New => {
            tracing::info!(payer = %hex, "serving requests paid by the gateway's payer key")
        }
        Learned::Same => {}
        Learned::Replaced { previous } => {
            tracing::warn!(payer = %hex, previous = %previous.to_hex(), "the gateway's payer key changed; trusting the new one")
        }
        Learned::Pinned => tracing::warn!(
            payer = %hex,
            "the gateway's payer key is not among [channels] trusted_payers; its requests and vouchers are refused"
        ),
    }
}

/// Bonds the configured stake before registering (see `bond`): with no owner key,
/// nothing. An unreachable gateway is retried; anything the operator must fix
/// (balance too low, owner key refused, key owned by another account) stops the
/// provider with the reason.
async fn bond(state: &AppState, url: &str, gateway: &GatewayConfig) -> anyhow::Result<()> {
    let Some(owner_key) = gateway.owner_key() else {
        tracing::info!("no owner key ([gateway] owner_key_env): registering without a bond");
        return Ok(());
    };
    let target = bond::whole_tokens(&gateway.bond).map_err(anyhow::Error::msg)?;
    let client = register::client().map_err(anyhow::Error::msg)?;
    let mut backoff = Duration::from_millis(500);
    loop {
        match bond::ensure(&client, url, &owner_key, state.identity.key(), target).await {
            Ok(b) => {
                tracing::info!(
                    owner = %b.owner,
                    bonded_tnzo = %bond::as_tokens(b.bonded),
                    added_tnzo = %bond::as_tokens(b.added),
                    "bonded for this provider's key"
                );
                return Ok(());
            }
            Err(e) if e.retryable() => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "bonding failed; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown() => anyhow::bail!("stopped before the bond was made"),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                tracing::error!(error = %e, "bonding failed");
                return Err(
                    anyhow::Error::new(e).context("bonding before registering with the gateway")
                );
            }
        }
    }
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
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
