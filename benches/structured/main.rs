//! What constrained decoding costs: aggregate decode tok/s of the default model
//! unconstrained, under a strict `json_schema`, and under `tool_choice: required`
//! (the tool-call grammar), with 1 and 8 concurrent streams, side by side in one
//! process; each constrained mode twice, with the engine's masks computed during the
//! forward pass (the default, `EngineConfig::overlap_masks`) and inline before
//! sampling; plus 8 streams of which one is constrained, to show what a constrained
//! sequence costs the others in its batch (their per-stream tok/s against 8
//! unconstrained streams'). First, where a mask's time goes, step by step.
//!
//! The schemas ask for long arrays so that every stream decodes all `--tokens`
//! tokens: rows then compare the same batch sizes (a row whose streams ended early
//! is marked `*`). Runs of all rows are interleaved and the median is shown, so a
//! noisy machine's drift touches every row alike.
//!
//! Run: `cargo run --release -p tenzro-benches --bin structured-speed [-- --tokens 64]`
//! (needs `scripts/fetch-models`). Results: `benches/structured/RESULTS.md`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use clap::Parser;
use serde_json::json;
use tenzro_models::engine::{Engine, EngineConfig, Event, GenerateRequest, GenerationParams};
use tenzro_models::grammar::{Compiled, GrammarSpec};
use tenzro_models::llm::{Llm, LlmConfig, Requantize, default_model_path};
use tenzro_models::sampler::SamplingParams;
use tenzro_models::template::TemplateMessage;
use tenzro_models::tools::{self, ToolDef, ToolMode};

mod profile;

#[derive(Parser)]
struct Args {
    /// Tokens to generate per stream at most.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    #[arg(long, default_value = ".tenzro/models")]
    models_dir: PathBuf,
    /// Concurrent stream counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    streams: Vec<usize>,
    /// Runs per row (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
}

/// Which grammar stream `i` of a run decodes under.
type GrammarFor<'a> = &'a dyn Fn(usize) -> Option<Compiled>;

/// One run's measurement.
struct Measure {
    /// Decode tokens per second over all streams (the first token, from prefill,
    /// not counted).
    tok_s: f64,
    /// The mean over unconstrained streams of each one's own decode tok/s.
    free_per_stream: f64,
    /// Completion tokens over all streams.
    tokens: u64,
}

/// A person with a long list of tags: every stream fills `--tokens` tokens.
fn person_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"enum": ["Paris", "Rome", "Oslo"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
                     "minItems": 40, "maxItems": 48}
        },
        "required": ["name", "age", "city", "tags"],
        "additionalProperties": false
    })
}

/// The weather in many cities at once: a call long enough to fill `--tokens`.
fn weather_tool() -> ToolDef {
    ToolDef {
        name: "get_weather".into(),
        description: Some("The weather in a list of cities".into()),
        parameters: json!({"type": "object", "properties": {
                "cities": {"type": "array", "items": {"type": "string", "maxLength": 20},
                           "minItems": 40, "maxItems": 48},
                "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["cities", "unit"], "additionalProperties": false}),
        strict: true,
    }
}

/// One stream's result: first text, end, completion tokens.
type StreamEnd = (Option<Instant>, Instant, u32);

fn listen(mut rx: tokio::sync::mpsc::UnboundedReceiver<Event>) -> Result<StreamEnd, String> {
    let mut first = None;
    let mut count = 0u32;
    while let Some(ev) = rx.blocking_recv() {
        if first.is_none() && matches!(ev, Event::Text { .. } | Event::Finished { .. }) {
            first = Some(Instant::now());
        }
        match ev {
            Event::Done {
                completion_tokens, ..
            } => count = completion_tokens,
            Event::Error(e) => return Err(e),
            _ => {}
        }
    }
    Ok((first, Instant::now(), count))
}

/// Run `streams` requests at once; `grammar(i)` is stream i's grammar.
fn run(
    engine: &Engine,
    prompt: &[u32],
    streams: usize,
    tokens: usize,
    grammar: GrammarFor<'_>,
) -> anyhow::Result<Measure> {
    let mut handles = Vec::with_capacity(streams);
    let mut senders = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        handles.push(std::thread::spawn(move || listen(rx)));
    }
    let start = Instant::now();
    for (i, reply) in senders.into_iter().enumerate() {
        let params = GenerationParams {
            sampling: SamplingParams::greedy(),
            max_new_tokens: tokens,
            stop: vec![],
            n: 1,
            grammar: grammar(i),
        };
        engine
            .submit(GenerateRequest {
                prompt: prompt.to_vec(),
                params,
                reply,
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let (mut first_min, mut last_end) = (None::<Instant>, start);
    let (mut decoded, mut total) = (0u64, 0u64);
    let mut free_rates = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        let (first, end, count) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a stream thread panicked"))?
            .map_err(|e| anyhow::anyhow!(e))?;
        let first = first.unwrap_or(end);
        first_min = Some(first_min.map_or(first, |m: Instant| m.min(first)));
        last_end = last_end.max(end);
        total += u64::from(count);
        decoded += u64::from(count.saturating_sub(1));
        if grammar(i).is_none() {
            free_rates.push(rate(u64::from(count.saturating_sub(1)), first, end));
        }
    }
    Ok(Measure {
        tok_s: rate(decoded, first_min.unwrap_or(start), last_end),
        free_per_stream: free_rates.iter().sum::<f64>() / free_rates.len().max(1) as f64,
        tokens: total,
    })
}

fn rate(n: u64, from: Instant, to: Instant) -> f64 {
    let secs = (to - from).as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// The median of `v` by `key`.
fn median(v: &[Measure], key: impl Fn(&Measure) -> f64) -> (f64, u64) {
    let mut keyed: Vec<(f64, u64)> = v.iter().map(|m| (key(m), m.tokens)).collect();
    keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
    keyed.get(keyed.len() / 2).copied().unwrap_or((0.0, 0))
}

/// The loaded model, its two engines and what the rows decode.
struct Setup {
    llm: Arc<Llm>,
    /// Masks computed during the forward pass (the default).
    overlapped: Engine,
    /// Masks computed inline, after the forward pass.
    inline: Engine,
    schema: Compiled,
    call: Compiled,
    json_prompt: Vec<u32>,
    tool_prompt: Vec<u32>,
}

fn setup(args: &Args) -> anyhow::Result<Setup> {
    let cfg = LlmConfig {
        path: default_model_path(&args.models_dir),
        sha256: None,
        tokenizer_json: None,
        requantize: Requantize::Q8_0,
    };
    let llm = Arc::new(
        Llm::load(&cfg, &Device::Cpu).context("loading the model (run scripts/fetch-models)")?,
    );
    let grammars = llm.grammars()?;
    let t = Instant::now();
    let schema = grammars.compile(&GrammarSpec::JsonSchema {
        schema: person_schema(),
        strict: true,
    })?;
    let compile_schema = t.elapsed();
    let tool = [weather_tool()];
    let t = Instant::now();
    let call = grammars.compile(&tools::grammar(&tool, &ToolMode::Required, true)?)?;
    let compile_tool = t.elapsed();
    println!(
        "grammar compile: strict json_schema {:.1} ms, tool_choice required {:.1} ms\n",
        compile_schema.as_secs_f64() * 1e3,
        compile_tool.as_secs_f64() * 1e3
    );
    let message = |role: &str, content: String| TemplateMessage {
        role: role.into(),
        content,
    };
    let json_prompt = llm.encode(&llm.render_chat(&[message(
        "user",
        "Describe a person who lives in Europe as JSON, with many tags.".into(),
    )])?)?;
    let tool_prompt = llm.encode(&llm.render_chat(&[
        message("system", tools::system_block(&tool)),
        message(
            "user",
            "What is the weather in the fifty largest cities of Europe?".into(),
        ),
    ])?)?;
    let engine = |overlap_masks| {
        Engine::spawn(
            llm.clone(),
            EngineConfig {
                max_sequences: args.streams.iter().copied().max().unwrap_or(1).max(1),
                overlap_masks,
                ..EngineConfig::default()
            },
        )
    };
    Ok(Setup {
        overlapped: engine(true)?,
        inline: engine(false)?,
        llm,
        schema,
        call,
        json_prompt,
        tool_prompt,
    })
}

/// One row of the table: what it runs and what it is compared with.
struct Row<'a> {
    name: String,
    engine: &'a Engine,
    prompt: &'a [u32],
    grammar: Box<dyn Fn(usize) -> Option<Compiled> + 'a>,
    /// The row whose tok/s is this row's baseline (itself for a baseline).
    base: usize,
    /// Compare per-stream tok/s of the unconstrained streams (the mixed batch).
    per_stream: bool,
}

fn rows<'a>(s: &'a Setup, streams: usize) -> Vec<Row<'a>> {
    let row =
        |name: &str, engine, prompt, grammar: Box<dyn Fn(usize) -> Option<Compiled> + 'a>, base| {
            Row {
                name: name.into(),
                engine,
                prompt,
                grammar,
                base,
                per_stream: false,
            }
        };
    let (schema, call) = (&s.schema, &s.call);
    let mut rows = vec![
        row(
            "unconstrained (json prompt)",
            &s.overlapped,
            &s.json_prompt,
            Box::new(|_| None),
            0,
        ),
        row(
            "strict json_schema",
            &s.overlapped,
            &s.json_prompt,
            Box::new(|_| Some(schema.clone())),
            0,
        ),
        row(
            "strict json_schema, masks inline",
            &s.inline,
            &s.json_prompt,
            Box::new(|_| Some(schema.clone())),
            0,
        ),
        row(
            "unconstrained (tools prompt)",
            &s.overlapped,
            &s.tool_prompt,
            Box::new(|_| None),
            3,
        ),
        row(
            "tool_choice required",
            &s.overlapped,
            &s.tool_prompt,
            Box::new(|_| Some(call.clone())),
            3,
        ),
        row(
            "tool_choice required, masks inline",
            &s.inline,
            &s.tool_prompt,
            Box::new(|_| Some(call.clone())),
            3,
        ),
    ];
    if streams > 1 {
        let rest = streams - 1;
        for (name, engine) in [("", &s.overlapped), (", inline", &s.inline)] {
            rows.push(Row {
                name: format!("1 json_schema + {rest} free: {rest}'s per stream{name}"),
                engine,
                prompt: &s.json_prompt,
                grammar: Box::new(|i| (i == 0).then(|| schema.clone())),
                base: 0,
                per_stream: true,
            });
        }
    }
    rows
}

fn table(args: &Args, s: &Setup, streams: usize) -> anyhow::Result<()> {
    let rows = rows(s, streams);
    let mut runs: Vec<Vec<Measure>> = rows.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.runs.max(1) {
        for (r, out) in rows.iter().zip(&mut runs) {
            out.push(run(r.engine, r.prompt, streams, args.tokens, &*r.grammar)?);
        }
    }
    let full = (streams * args.tokens) as u64;
    for (r, m) in rows.iter().zip(&runs) {
        let (shown, tokens) = if r.per_stream {
            median(m, |m| m.free_per_stream)
        } else {
            median(m, |m| m.tok_s)
        };
        let base = match runs.get(r.base) {
            Some(b) if r.per_stream => median(b, |m| m.free_per_stream).0,
            Some(b) => median(b, |m| m.tok_s).0,
            None => 0.0,
        };
        let ratio = if base > 0.0 { shown / base } else { 0.0 };
        let short = if tokens < full { "*" } else { "" };
        println!(
            "{:<50} {:>7} {:>7}{short:<1} {:>12.1} {:>7.3}",
            r.name, streams, tokens, shown, ratio
        );
        if r.base == 0 && r.name.starts_with("unconstrained") && streams > 1 {
            let (per, _) = median(m, |m| m.free_per_stream);
            println!(
                "{:<50} {:>7} {:>8} {:>12.1} {:>7.3}",
                "unconstrained (json prompt), per stream", streams, "", per, 1.0
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "constrained decoding, default model on the CPU, greedy, {} tokens per stream, median of {} interleaved runs",
        args.tokens, args.runs
    );
    let s = setup(&args)?;
    run(&s.overlapped, &s.json_prompt, 1, 4, &|_| None)?;

    println!("where a mask's time goes (one sequence, masks computed inline):");
    profile::header();
    profile::profile(
        &s.llm,
        "strict json_schema",
        &s.json_prompt,
        &s.schema,
        args.tokens,
    )?;
    profile::profile(
        &s.llm,
        "tool_choice required",
        &s.tool_prompt,
        &s.call,
        args.tokens,
    )?;

    println!(
        "\n{:<50} {:>7} {:>8} {:>12} {:>7}",
        "mode", "streams", "tokens", "decode tok/s", "ratio"
    );
    for &streams in &args.streams {
        table(&args, &s, streams)?;
    }
    println!(
        "\nratio: against the unconstrained row with the same prompt and stream count \
         (the mixed batch: per-stream tok/s of its unconstrained streams against the \
         unconstrained row's per-stream tok/s)."
    );
    println!("*: some streams ended before --tokens (EOS or the grammar's end).");
    println!(
        "reproduce: cargo run --release -p tenzro-benches --bin structured-speed -- --tokens {} --runs {}",
        args.tokens, args.runs
    );
    Ok(())
}
