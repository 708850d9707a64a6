//! Engine speed on the default model: candle's own `quantized_llama` (the
//! baseline, run in this same process on the same file and threads) against our
//! engine with one stream and with eight concurrent streams.
//!
//! Run: `cargo run --release -p tenzro-benches --bin engine-speed [-- --tokens 64]`
//! (needs `scripts/fetch-models`). Prints a table with ratios to the baseline.
//! `--ours-only --streams 1 --json` prints one stream count of our engine alone
//! as JSON, which is how `benches/llama-cpp/compare.py` runs it (one process per
//! stream count, so each peak RSS is that run's own).

mod stream;
mod weights;

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::ModelWeights;
use clap::Parser;
use serde_json::json;
use tenzro_models::engine::{Engine, EngineConfig, Event, GenerateRequest, GenerationParams};
use tenzro_models::llm::{Llm, LlmConfig, Requantize, default_model_path, requantize_q4_1};
use tenzro_models::sampler::{SamplingParams, argmax};
use tenzro_models::template::TemplateMessage;

#[derive(Parser)]
struct Args {
    /// Tokens to generate per stream (fewer when the model ends its answer).
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    #[arg(long, default_value = ".tenzro/models")]
    models_dir: PathBuf,
    /// A GGUF file other than the default model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Concurrent stream counts to run our engine with.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    streams: Vec<usize>,
    /// Only our engine's rows, without candle's `quantized_llama` baseline.
    #[arg(long)]
    ours_only: bool,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// MiB of the engine's prefix cache (0: off). It is emptied before each
    /// measured run, so a run never reuses the warm-up's prompt.
    #[arg(long, default_value_t = 64)]
    prefix_cache_mib: usize,
    /// Also time a second turn of the conversation (`second_turn` in the JSON):
    /// its TTFT with the first turn in the prefix cache, and cold.
    #[arg(long)]
    second_turn: bool,
    /// Times the second-turn measurement runs (first turn, second turn, cold
    /// second turn each time); the JSON holds each one's median. A 30-token
    /// first turn takes ~40 ms here, where one run's noise is ~20 %.
    #[arg(long, default_value_t = 5)]
    turns: usize,
    /// `q8_0` re-quantises Q4_1 tensors at load; `none` runs the file's own
    /// blocks; `auto` (the shipped provider config's choice) runs them where our
    /// CPU kernels serve them (release builds) and re-quantises otherwise.
    #[arg(long, default_value = "auto")]
    requantize: String,
    /// The system message of the prompt (compare.py's agent scenario passes a
    /// few hundred tokens of tool instructions here).
    #[arg(long, default_value = "You are a helpful assistant.")]
    system: String,
    /// Only time N passes of one GEMV through every weight matrix, in huge
    /// pages and on the heap alternately (`stream.rs`), and print them as JSON.
    #[arg(long, value_name = "N")]
    weight_stream: Option<usize>,
}

struct Row {
    name: String,
    side: &'static str,
    streams: usize,
    timing: Timing,
    /// VmHWM right after this row ran: the process's peak so far.
    peak_rss_mib: f64,
}

/// What one run of `streams` concurrent requests measured.
struct Timing {
    /// Time to first token of each stream, from the moment all were submitted.
    ttft: Vec<Duration>,
    /// Completion tokens over all streams.
    completion_tokens: u64,
    /// Tokens that arrived after every stream had its first, over the span from
    /// that moment to the last stream's end: aggregate decode throughput, as
    /// compare.py's llama.cpp side measures it (it prefills every prompt in one
    /// batch, so its streams all start decoding together).
    decode_tok_s: f64,
    /// Tokens after each stream's first over the span from the earliest first
    /// token: what `decode_tok_s` was before session 12. Our engine prefills
    /// the prompts waiting in one round together (since session 14), but the
    /// first request of a burst is admitted before the others reach the queue,
    /// so this span also holds the prefill pass of the rest.
    decode_from_first_tok_s: f64,
    wall: Duration,
    /// What the first stream generated (a check that both engines agree).
    text: String,
    /// The first stream's time per decode step (between its tokens' arrivals),
    /// sorted: its fastest steps are the least disturbed by other processes.
    steps: Vec<Duration>,
}

impl Timing {
    fn ttft_mean(&self) -> Duration {
        let n = u32::try_from(self.ttft.len()).unwrap_or(u32::MAX).max(1);
        self.ttft.iter().sum::<Duration>() / n
    }

    /// The `q` quantile (0 = fastest) of the first stream's decode steps, in ms.
    fn step_ms(&self, q: f64) -> f64 {
        let i = ((self.steps.len().saturating_sub(1)) as f64 * q).round() as usize;
        self.steps.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    }

    fn ttft_p50(&self) -> Duration {
        let mut sorted = self.ttft.clone();
        sorted.sort();
        sorted.get(sorted.len() / 2).copied().unwrap_or_default()
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args
        .model
        .clone()
        .unwrap_or_else(|| default_model_path(&args.models_dir));
    if let Some(passes) = args.weight_stream {
        let out = stream::run(&path, passes)?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let device = Device::Cpu;
    let cfg = LlmConfig {
        path: path.clone(),
        sha256: None,
        tokenizer_json: None,
        requantize: match args.requantize.as_str() {
            "none" => Requantize::None,
            "q8_0" => Requantize::Q8_0,
            "auto" => Requantize::Auto,
            other => anyhow::bail!("--requantize {other}: want none, q8_0 or auto"),
        },
    };
    let llm = Arc::new(Llm::load(&cfg, &device).context("loading the model")?);
    let rss_after_load = rss_mib("VmRSS:");
    let messages = [
        TemplateMessage {
            role: "system".into(),
            content: args.system.clone(),
        },
        TemplateMessage {
            role: "user".into(),
            content: "Write a short story about a lighthouse keeper.".into(),
        },
    ];
    let prompt_text = llm.render_chat(&messages)?;
    let prompt = llm.encode(&prompt_text)?;
    let mut rows = Vec::new();

    if !args.ours_only {
        for (name, requant) in [
            ("candle quantized_llama, Q4_1 as shipped", false),
            ("candle quantized_llama, Q8_0 at load", true),
        ] {
            let timing = run_candle(&path, requant, &prompt, args.tokens, &device)?;
            rows.push(Row {
                name: name.into(),
                side: "candle",
                streams: 1,
                timing,
                peak_rss_mib: rss_mib("VmHWM:"),
            });
        }
    }

    let max_streams = args.streams.iter().copied().max().unwrap_or(1).max(1);
    let engine = Engine::spawn(
        llm.clone(),
        EngineConfig {
            queue_capacity: 64,
            max_sequences: max_streams,
            prefix_cache_bytes: args.prefix_cache_mib << 20,
            ..EngineConfig::default()
        },
    )?;
    // One short request first, so the first measured one does not pay for cold
    // caches and page faults (llama.cpp's side warms up the same way).
    run_streams(&engine, &prompt, 1, 2)?;
    for &streams in &args.streams {
        engine.clear_prefix_cache();
        let timing = run_streams(&engine, &prompt, streams, args.tokens)?;
        rows.push(Row {
            name: format!("tenzro engine, {streams} stream(s)"),
            side: "tenzro",
            streams,
            timing,
            peak_rss_mib: rss_mib("VmHWM:"),
        });
    }

    let second = if args.second_turn {
        Some(second_turn(
            &engine,
            &llm,
            &messages,
            &prompt,
            args.tokens,
            args.turns,
        )?)
    } else {
        None
    };
    let weights = weights::per_token(&path)?;
    if args.json {
        let out = json!({
            "model": path.display().to_string(),
            "threads": candle_core::utils::get_num_threads(),
            "prompt_tokens": prompt,
            "max_new_tokens": args.tokens,
            "rss_after_load_mib": rss_after_load,
            "second_turn": second,
            "weights": weights.iter().map(|w| json!({
                "format": w.format,
                "bytes_per_token": w.bytes_per_token,
                "resident_bytes": w.resident_bytes,
            })).collect::<Vec<_>>(),
            "rows": rows.iter().map(|r| json!({
                "name": r.name,
                "side": r.side,
                "streams": r.streams,
                "completion_tokens": r.timing.completion_tokens,
                "ttft_ms_mean": r.timing.ttft_mean().as_secs_f64() * 1e3,
                "ttft_ms_p50": r.timing.ttft_p50().as_secs_f64() * 1e3,
                "decode_tok_s": r.timing.decode_tok_s,
                "decode_from_first_tok_s": r.timing.decode_from_first_tok_s,
                "wall_s": r.timing.wall.as_secs_f64(),
                "peak_rss_mib": r.peak_rss_mib,
                "text": r.timing.text,
                "step_ms_min": r.timing.step_ms(0.0),
                "step_ms_p10": r.timing.step_ms(0.1),
                "step_ms_p50": r.timing.step_ms(0.5),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    let base = rows.first().map_or(1.0, |r| r.timing.decode_tok_s);
    println!(
        "\nModel {}, prompt {} tokens, up to {} new tokens per stream, greedy, {} threads",
        path.display(),
        prompt.len(),
        args.tokens,
        candle_core::utils::get_num_threads()
    );
    println!(
        "{:<42} {:>7} {:>10} {:>10} {:>16} {:>12} {:>10}",
        "engine", "streams", "TTFT mean", "TTFT p50", "decode tok/s", "vs first row", "peak RSS"
    );
    for r in &rows {
        println!(
            "{:<42} {:>7} {:>8.1}ms {:>8.1}ms {:>16.1} {:>11.2}x {:>7.0}MiB",
            r.name,
            r.streams,
            r.timing.ttft_mean().as_secs_f64() * 1e3,
            r.timing.ttft_p50().as_secs_f64() * 1e3,
            r.timing.decode_tok_s,
            r.timing.decode_tok_s / base,
            r.peak_rss_mib
        );
    }
    println!("\nweights read per decode step (one step serves every stream in the batch):");
    for w in &weights {
        println!(
            "  {:<28} {:>8.1} MiB",
            w.format,
            w.bytes_per_token as f64 / (1024.0 * 1024.0)
        );
    }
    println!("peak RSS is the process's high-water mark after each row (rows share one process)");
    println!(
        "reproduce: cargo run --release -p tenzro-benches --bin engine-speed -- --tokens {}",
        args.tokens
    );
    Ok(())
}

/// Candle's `quantized_llama`, one greedy stream, in this process.
fn run_candle(
    path: &std::path::Path,
    requant: bool,
    prompt: &[u32],
    tokens: usize,
    device: &Device,
) -> anyhow::Result<Timing> {
    let (content, mut file) = tenzro_models::gguf::read_content(path)?;
    let mut model = if requant {
        let bytes = requantize_q4_1(&content, &mut file)?;
        let mut cur = Cursor::new(bytes);
        let ct = Content::read(&mut cur)?;
        ModelWeights::from_gguf(ct, &mut cur, device)?
    } else {
        ModelWeights::from_gguf(content, &mut file, device)?
    };
    let start = Instant::now();
    let input = Tensor::new(prompt, device)?.unsqueeze(0)?;
    let logits = model.forward(&input, 0)?;
    let mut next = argmax(&logits.flatten_all()?.to_vec1::<f32>()?);
    let ttft = start.elapsed();
    let decode = Instant::now();
    let steps = tokens.saturating_sub(1);
    for i in 0..steps {
        let input = Tensor::new(&[next], device)?.unsqueeze(0)?;
        let logits = model.forward(&input, prompt.len() + i)?;
        next = argmax(&logits.flatten_all()?.to_vec1::<f32>()?);
    }
    let decode_tok_s = steps as f64 / decode.elapsed().as_secs_f64();
    let wall = start.elapsed();
    Ok(Timing {
        ttft: vec![ttft],
        completion_tokens: tokens as u64,
        decode_tok_s,
        decode_from_first_tok_s: decode_tok_s,
        wall,
        text: String::new(),
        steps: Vec::new(),
    })
}

/// A second turn of the conversation, one stream: the first turn with the prefix
/// cache empty, then the follow-up (the first prompt, the answer's tokens and the
/// next user turn's), whose prompt starts with what the first turn left in the
/// prefix cache, then the same follow-up with the cache emptied; `turns` times,
/// each TTFT the median of its runs. `suffix_ids` are the next turn's tokens, so
/// another engine can build the same follow-up on its own answer.
fn second_turn(
    engine: &Engine,
    llm: &Llm,
    messages: &[TemplateMessage],
    prompt: &[u32],
    tokens: usize,
    turns: usize,
) -> anyhow::Result<serde_json::Value> {
    let ms = |t: &Timing| t.ttft_p50().as_secs_f64() * 1e3;
    let (mut firsts, mut warms, mut colds) = (Vec::new(), Vec::new(), Vec::new());
    let mut follow_up = None;
    let mut reused = 0;
    for _ in 0..turns.max(1) {
        engine.clear_prefix_cache();
        let first = run_streams(engine, prompt, 1, tokens)?;
        let (second, suffix) = match follow_up.take() {
            Some(f) => f,
            None => follow_up_of(llm, messages, prompt, &first.text)?,
        };
        let before = engine.prefix_tokens_reused();
        let warm = run_streams(engine, &second, 1, tokens)?;
        reused = engine.prefix_tokens_reused() - before;
        engine.clear_prefix_cache();
        let cold = run_streams(engine, &second, 1, tokens)?;
        firsts.push(ms(&first));
        warms.push(ms(&warm));
        colds.push(ms(&cold));
        follow_up = Some((second, suffix));
    }
    let (second, suffix) = follow_up.context("no turn ran")?;
    Ok(json!({
        "first_ttft_ms": median(&mut firsts),
        "second_ttft_ms": median(&mut warms),
        "second_cold_ttft_ms": median(&mut colds),
        "turns": turns.max(1),
        "second_prompt_tokens": second.len(),
        "reused_tokens": reused,
        "first_prompt_tokens": prompt.len(),
        "suffix_ids": suffix,
        "peak_rss_mib": rss_mib("VmHWM:"),
    }))
}

/// The follow-up's prompt tokens (the first prompt, the answer `answer` and the
/// next user turn), and the next user turn's tokens alone.
fn follow_up_of(
    llm: &Llm,
    messages: &[TemplateMessage],
    prompt: &[u32],
    answer: &str,
) -> anyhow::Result<(Vec<u32>, Vec<u32>)> {
    let mut convo = messages.to_vec();
    convo.push(TemplateMessage {
        role: "assistant".into(),
        content: answer.to_owned(),
    });
    convo.push(TemplateMessage {
        role: "user".into(),
        content: "Now tell it again in two sentences.".into(),
    });
    let head = format!("{}{}", llm.render_chat(messages)?, answer);
    let full = llm.render_chat(&convo)?;
    let suffix_text = full
        .strip_prefix(&head)
        .context("the chat template does not render the first turn as a prefix of the second")?;
    let suffix = llm.encode(suffix_text)?;
    let mut second = prompt.to_vec();
    second.extend(llm.encode(answer)?);
    second.extend(&suffix);
    Ok((second, suffix))
}

/// The median of `v` (sorted in place; 0 when empty).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// `streams` concurrent greedy requests through the engine.
fn run_streams(
    engine: &Engine,
    prompt: &[u32],
    streams: usize,
    tokens: usize,
) -> anyhow::Result<Timing> {
    let mut senders = Vec::with_capacity(streams);
    let mut handles = Vec::with_capacity(streams);
    // Readers first, so a token's arrival is timed when it is sent, not when a
    // reader thread gets started.
    for _ in 0..streams {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        handles.push(std::thread::spawn(move || {
            let mut first = None;
            let mut end = None;
            let mut count = 0u32;
            let mut out = String::new();
            let (mut steps, mut last) = (Vec::new(), None::<Instant>);
            let mut arrivals = Vec::new();
            while let Some(ev) = rx.blocking_recv() {
                if first.is_none() && matches!(ev, Event::Text { .. } | Event::Finished { .. }) {
                    first = Some(Instant::now());
                }
                if let Event::Text { tokens, .. } | Event::Finished { tokens, .. } = &ev {
                    arrivals.push((Instant::now(), *tokens));
                }
                if let Event::Text { tokens, .. } = &ev {
                    let now = Instant::now();
                    if let Some(prev) = last.replace(now)
                        && *tokens > 0
                    {
                        steps.push((now - prev) / *tokens);
                    }
                }
                match ev {
                    Event::Text { text, .. } | Event::Finished { text, .. } => out.push_str(&text),
                    Event::Done {
                        completion_tokens, ..
                    } => {
                        end = Some(Instant::now());
                        count = completion_tokens;
                    }
                    Event::Error(e) => return Err(e),
                    Event::ToolCall { .. } | Event::Logprobs { .. } => {}
                }
            }
            steps.sort();
            let end = end.unwrap_or_else(Instant::now);
            Ok((first, end, count, out, steps, arrivals))
        }));
    }
    let start = Instant::now();
    for reply in senders {
        let params = GenerationParams {
            sampling: SamplingParams::greedy(),
            max_new_tokens: tokens,
            stop: vec![],
            n: 1,
            grammar: None,
        };
        engine
            .submit(GenerateRequest {
                prompt: prompt.to_vec(),
                params,
                reply,
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let mut ttft = Vec::with_capacity(streams);
    let mut completion_tokens = 0u64;
    let mut decoded = 0u64;
    let mut first_min = None::<Instant>;
    let mut last_end = start;
    let mut text = None;
    let mut first_steps = None;
    let mut streams_out = Vec::with_capacity(handles.len());
    for h in handles {
        let (first, end, count, out, steps, arrivals) = h
            .join()
            .map_err(|_| anyhow::anyhow!("stream thread panicked"))?
            .map_err(|e| anyhow::anyhow!(e))?;
        let first = first.unwrap_or(end);
        ttft.push(first - start);
        first_min = Some(first_min.map_or(first, |m: Instant| m.min(first)));
        last_end = last_end.max(end);
        completion_tokens += u64::from(count);
        decoded += u64::from(count.saturating_sub(1));
        text.get_or_insert(out);
        first_steps.get_or_insert(steps);
        streams_out.push((count, arrivals));
    }
    // Every stream decoding: from the last first token on.
    let all_started = start + ttft.iter().copied().max().unwrap_or_default();
    let after: u64 = streams_out
        .iter()
        .map(|(count, arrivals)| {
            let before: u32 = arrivals
                .iter()
                .filter(|(at, _)| *at <= all_started)
                .map(|(_, n)| n)
                .sum();
            u64::from(count.saturating_sub(before.max(1)))
        })
        .sum();
    let per_s = |tokens: u64, from: Instant| match last_end.checked_duration_since(from) {
        Some(span) if !span.is_zero() => tokens as f64 / span.as_secs_f64(),
        _ => 0.0,
    };
    Ok(Timing {
        ttft,
        completion_tokens,
        decode_tok_s: per_s(after, all_started),
        decode_from_first_tok_s: per_s(decoded, first_min.unwrap_or(start)),
        wall: last_end - start,
        text: text.unwrap_or_default(),
        steps: first_steps.unwrap_or_default(),
    })
}

/// A size line of /proc/self/status (`VmRSS:`, `VmHWM:`) in MiB; 0 where there is none.
fn rss_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(key)).map(str::to_owned))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|k| k.parse::<u64>().ok())
        })
        .map_or(0.0, |kib| kib as f64 / 1024.0)
}
