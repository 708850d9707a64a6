//! Engine speed on the default model: candle's own `quantized_llama` (the
//! baseline, run in this same process on the same file and threads) against our
//! engine with one stream and with eight concurrent streams.
//!
//! Run: `cargo run --release -p tenzro-benches --bin engine-speed [-- --tokens 64]`
//! (needs `scripts/fetch-models`). Prints a table with ratios to the baseline.

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use clap::Parser;
use tenzro_models::engine::{Engine, EngineConfig, Event, GenerateRequest, GenerationParams};
use tenzro_models::llm::{Llm, LlmConfig, Requantize, default_model_path, requantize_q4_1};
use tenzro_models::sampler::{SamplingParams, argmax};
use tenzro_models::template::TemplateMessage;

#[derive(Parser)]
struct Args {
    /// Tokens to generate per stream.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    #[arg(long, default_value = ".tenzro/models")]
    models_dir: PathBuf,
}

struct Row {
    name: String,
    streams: usize,
    ttft: Duration,
    tok_s: f64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = default_model_path(&args.models_dir);
    let device = Device::Cpu;
    let cfg = LlmConfig { path: path.clone(), sha256: None, tokenizer_json: None, requantize: Requantize::Q8_0 };
    let llm = Arc::new(Llm::load(&cfg, &device).context("loading the default model")?);
    let prompt_text = llm.render_chat(&[
        TemplateMessage { role: "system".into(), content: "You are a helpful assistant.".into() },
        TemplateMessage { role: "user".into(), content: "Write a short story about a lighthouse keeper.".into() },
    ])?;
    let prompt = llm.encode(&prompt_text)?;
    let mut rows = Vec::new();

    for (name, requant) in [("candle quantized_llama, Q4_1 as shipped", false), ("candle quantized_llama, Q8_0 at load", true)] {
        let (content, mut file) = tenzro_models::gguf::read_content(&path)?;
        let mut model = if requant {
            let bytes = requantize_q4_1(&content, &mut file)?;
            let mut cur = Cursor::new(bytes);
            let ct = Content::read(&mut cur)?;
            ModelWeights::from_gguf(ct, &mut cur, &device)?
        } else {
            ModelWeights::from_gguf(content, &mut file, &device)?
        };
        let start = Instant::now();
        let input = Tensor::new(prompt.as_slice(), &device)?.unsqueeze(0)?;
        let logits = model.forward(&input, 0)?;
        let mut next = argmax(&logits.flatten_all()?.to_vec1::<f32>()?);
        let ttft = start.elapsed();
        let decode = Instant::now();
        for i in 0..args.tokens {
            let input = Tensor::new(&[next], &device)?.unsqueeze(0)?;
            let logits = model.forward(&input, prompt.len() + i)?;
            next = argmax(&logits.flatten_all()?.to_vec1::<f32>()?);
        }
        let tok_s = args.tokens as f64 / decode.elapsed().as_secs_f64();
        rows.push(Row { name: name.into(), streams: 1, ttft, tok_s });
    }

    let engine = Engine::spawn(llm.clone(), EngineConfig { queue_capacity: 64, max_sequences: 8 })?;
    for streams in [1usize, 8] {
        let (ttft, tok_s) = run_streams(&engine, &prompt, streams, args.tokens)?;
        rows.push(Row { name: format!("tenzro engine, {streams} stream(s)"), streams, ttft, tok_s });
    }

    let base = rows[0].tok_s;
    println!("\nDefault model (SmolLM2-135M-Instruct), prompt {} tokens, {} new tokens per stream, greedy", prompt.len(), args.tokens);
    println!("{:<42} {:>7} {:>12} {:>16} {:>12}", "engine", "streams", "TTFT (ms)", "aggregate tok/s", "vs baseline");
    for r in &rows {
        println!(
            "{:<42} {:>7} {:>12.1} {:>16.1} {:>11.2}x",
            r.name,
            r.streams,
            r.ttft.as_secs_f64() * 1e3,
            r.tok_s,
            r.tok_s / base
        );
    }
    println!("\npeak RSS of this process: {} MiB", peak_rss_mib());
    println!("reproduce: cargo run --release -p tenzro-benches --bin engine-speed -- --tokens {}", args.tokens);
    Ok(())
}

/// `streams` concurrent greedy requests; returns mean time to first token and
/// aggregate decode tokens per second.
fn run_streams(engine: &Engine, prompt: &[u32], streams: usize, tokens: usize) -> anyhow::Result<(Duration, f64)> {
    let start = Instant::now();
    let mut receivers = Vec::new();
    for _ in 0..streams {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let params = GenerationParams { sampling: SamplingParams::greedy(), max_new_tokens: tokens, stop: vec![], n: 1 };
        engine
            .submit(GenerateRequest { prompt: prompt.to_vec(), params, reply: tx })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        receivers.push(rx);
    }
    let handles: Vec<_> = receivers
        .into_iter()
        .map(|mut rx| {
            std::thread::spawn(move || {
                let mut first = None;
                let mut count = 0u32;
                while let Some(ev) = rx.blocking_recv() {
                    match ev {
                        Event::Text { .. } if first.is_none() => first = Some(Instant::now()),
                        Event::Done { completion_tokens, .. } => count = completion_tokens,
                        Event::Error(_) => break,
                        _ => {}
                    }
                }
                (first, count)
            })
        })
        .collect();
    let mut ttft = Duration::ZERO;
    let mut total = 0u64;
    let mut first_min = None::<Instant>;
    for h in handles {
        let (first, count) = h.join().map_err(|_| anyhow::anyhow!("stream thread panicked"))?;
        let first = first.unwrap_or(start);
        ttft += first - start;
        first_min = Some(first_min.map_or(first, |m: Instant| m.min(first)));
        total += u64::from(count);
    }
    let decode = first_min.map_or(start, |f| f).elapsed().as_secs_f64();
    Ok((ttft / streams as u32, total as f64 / decode))
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_owned))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|k| k.parse::<u64>().ok()))
        .map_or(0, |kib| kib / 1024)
}
