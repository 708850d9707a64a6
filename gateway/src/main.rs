//! `tenzro-gateway`: serve, or make development keys.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tenzro_gateway::accounts::{KeyScope, create_in_store};
use tenzro_gateway::config::{Config, Overrides};
use tenzro_gateway::pricing::{self, Asset};

/// mimalloc: a request allocates and frees many small buffers (headers, JSON,
/// strings) across the runtime's threads; glibc's malloc spent ~19 % of the
/// gateway's CPU on them (benches/gateway/README.md, "CPU per request").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "tenzro-gateway",
    version,
    about = "OpenAI-compatible gateway of the Tenzro network"
)]
struct Cli {
    /// Configuration file (TOML).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the file and TENZRO_LISTEN).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory: the SQLite store, the payer key, the replica id (overrides the file and TENZRO_DATA_DIR).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Admin API token (prefer TENZRO_ADMIN_TOKEN: flags show up in `ps`).
    #[arg(long)]
    admin_token: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// MCP over stdio for clients that launch a process: the gateway's tools
    /// (list_models, chat, get_balance...), calling the gateway at --url with --key.
    Mcp {
        /// The gateway's URL, e.g. http://127.0.0.1:8080.
        #[arg(long, env = "TENZRO_URL")]
        url: String,
        /// The API key the tools use (prefer TENZRO_API_KEY: flags show up in `ps`).
        #[arg(long, env = "TENZRO_API_KEY", hide_env_values = true)]
        key: String,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Creates a funded development account and prints its API key.
    Create {
        /// Starting balance in whole tokens of the asset (default: limits.dev_balance).
        #[arg(long)]
        balance: Option<String>,
        /// TNZO, USDC or USDT.
        #[arg(long, default_value = "TNZO")]
        asset: String,
        #[arg(long, default_value = "dev")]
        name: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Mcp { url, key }) = &cli.command {
        return mcp_stdio(url, key);
    }
    let flags = Overrides {
        listen: cli.listen,
        data_dir: cli.data_dir.clone(),
        admin_token: cli.admin_token.clone(),
    };
    let config = Config::load(cli.config.as_deref(), |k| std::env::var(k).ok(), &flags)?;
    match cli.command {
        Some(Command::Keys {
            command:
                KeysCommand::Create {
                    balance,
                    asset,
                    name,
                },
        }) => {
            let asset: Asset = asset
                .parse()
                .map_err(|_| anyhow::anyhow!("--asset must be TNZO, USDC or USDT"))?;
            let balance =
                pricing::parse_tokens(balance.as_deref().unwrap_or(&config.limits.dev_balance))
                    .context("--balance")?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let store = tenzro_gateway::open_store(&config).await?;
                let (key, account, _) =
                    create_in_store(&store, &name, asset, balance, KeyScope::default(), None)
                        .await?;
                store.close().await;
                eprintln!(
                    "account {} funded with {} {} base units",
                    account.id, balance, asset
                );
                println!("{key}");
                anyhow::Ok(())
            })
        }
        Some(Command::Mcp { url, key }) => mcp_stdio(&url, &key),
        None => serve(config),
    }
}

/// `tenzro-gateway mcp`: stdout is the protocol, so logs go to stderr.
fn mcp_stdio(url: &str, key: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(tenzro_gateway::mcp::serve_stdio(url, key))
}

fn serve(config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colour only on a terminal: logs sent to a file stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listen = config.server.listen;
        let state = tenzro_gateway::build(config).await?;
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        tracing::info!(addr = %listener.local_addr()?, "tenzro-gateway listening");
        let cancel = state.cancel.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            cancel.cancel();
        });
        tenzro_gateway::serve(listener, state).await?;
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
