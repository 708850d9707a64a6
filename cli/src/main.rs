//! `tenzro`: the Tenzro command line. `tenzro chat` talks to any OpenAI-compatible
//! server (a Tenzro gateway, a provider, or anyone else's) from the terminal.

mod chat;
mod client;
mod input;
mod sse;
mod stdin;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "tenzro", version, about = "The Tenzro command line")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Chat with a model in the terminal (streaming; /help inside lists the commands).
    Chat(ChatArgs),
}

#[derive(clap::Args)]
struct ChatArgs {
    /// The OpenAI-compatible base URL (the gateway's /v1).
    #[arg(long, env = "TENZRO_URL", default_value = "http://127.0.0.1:8080/v1")]
    url: String,
    /// The API key (else TENZRO_API_KEY, else OPENAI_API_KEY; none: no
    /// Authorization header).
    #[arg(long, hide_env_values = true)]
    key: Option<String>,
    /// The model (default: the first the server lists; /model NAME switches).
    #[arg(long)]
    model: Option<String>,
    /// A system prompt (/system TEXT changes it).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per answer (default: the server's).
    #[arg(long)]
    max_tokens: Option<u32>,
    /// Sampling temperature (default: the server's).
    #[arg(long)]
    temperature: Option<f32>,
}

fn key(flag: Option<String>) -> Option<String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    flag.or_else(|| env("TENZRO_API_KEY"))
        .or_else(|| env("OPENAI_API_KEY"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Cmd::Chat(args) = cli.command;
    // Before anything else: from here on Ctrl-C is ours, never the default exit.
    let interrupts = chat::Interrupts::new()?;
    let client = client::Client::new(&args.url, key(args.key))?;
    let opts = client::Options {
        model: args.model.unwrap_or_default(),
        max_tokens: args.max_tokens,
        temperature: args.temperature,
    };
    let mut chat = chat::Chat::new(client, opts, args.system);
    chat.default_model().await;
    chat::say(&format!(
        "tenzro chat: {} · model {} · /help for commands\n",
        args.url,
        chat.model_label()
    ));
    let lines = stdin::spawn(input::MAX_MESSAGE_BYTES);
    chat.run(lines, interrupts).await;
    // The stdin thread may be blocked in a read: leave without waiting for it.
    std::process::exit(0)
}
