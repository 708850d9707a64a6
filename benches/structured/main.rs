//! What constrained decoding costs: aggregate decode tok/s of the default model
//! unconstrained, under a strict `json_schema`, and under `tool_choice: required`
//! (the tool-call grammar), with 1 and 8 concurrent streams, side by side in one
//! process; plus 8 streams of which one is constrained, to show what a constrained
//! sequence costs the others in its batch.
//!
//! Run: `cargo run --release -p tenzro-benches --bin structured-speed [-- --tokens 64]`
//! (needs `scripts/fetch-models`). Prints one table with each row's ratio to the
//! unconstrained row of the same stream count.

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

/// One row's measurement: decode tokens per second over all streams, and over the
/// unconstrained streams alone (for the mixed batch).
struct Measure {
    tok_s: f64,
    free_tok_s: f64,
    tokens: u64,
}

fn person_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"enum": ["Paris", "Rome", "Oslo"]},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3}
        },
        "required": ["name", "age", "city", "tags"],
        "additionalProperties": false
    })
}

fn weather_tool() -> ToolDef {
    ToolDef {
        name: "get_weather".into(),
        description: Some("The weather in a city".into()),
        parameters: json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
            "required": ["city"], "additionalProperties": false}),
        strict: true,
    }
}

/// Run `streams` requests at once; `grammar(i)` is stream i's grammar.
fn run(
    engine: &Engine,
    prompt: &[u32],
    streams: usize,
    tokens: usize,
    grammar: &dyn Fn(usize) -> Option<Compiled>,
) -> anyhow::Result<Measure> {
    let mut handles = Vec::with_capacity(streams);
    let mut senders = Vec::with_capacity(streams);
    for _ in 0..streams {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        handles.push(std::thread::spawn(move || {
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
        }));
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
    let (mut decoded, mut free_decoded, mut total) = (0u64, 0u64, 0u64);
    let mut free_span = (None::<Instant>, start);
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
            free_decoded += u64::from(count.saturating_sub(1));
            free_span.0 = Some(free_span.0.map_or(first, |m: Instant| m.min(first)));
            free_span.1 = free_span.1.max(end);
        }
    }
    let rate = |n: u64, from: Option<Instant>, to: Instant| {
        let secs = (to - from.unwrap_or(start)).as_secs_f64();
        if secs > 0.0 { n as f64 / secs } else { 0.0 }
    };
    Ok(Measure {
        tok_s: rate(decoded, first_min, last_end),
        free_tok_s: rate(free_decoded, free_span.0, free_span.1),
        tokens: total,
    })
}

fn median(mut v: Vec<Measure>) -> Option<Measure> {
    v.sort_by(|a, b| a.tok_s.total_cmp(&b.tok_s));
    let mid = v.len() / 2;
    v.into_iter().nth(mid)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let device = Device::Cpu;
    let cfg = LlmConfig {
        path: default_model_path(&args.models_dir),
        sha256: None,
        tokenizer_json: None,
        requantize: Requantize::Q8_0,
    };
    let llm =
        Arc::new(Llm::load(&cfg, &device).context("loading the model (run scripts/fetch-models)")?);
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

    let json_prompt = llm.encode(&llm.render_chat(&[TemplateMessage {
        role: "user".into(),
        content: "Describe a person who lives in Europe as JSON.".into(),
    }])?)?;
    let tool_prompt = llm.encode(&llm.render_chat(&[
        TemplateMessage {
            role: "system".into(),
            content: tools::system_block(&tool),
        },
        TemplateMessage {
            role: "user".into(),
            content: "What is the weather in Paris?".into(),
        },
    ])?)?;

    let max_streams = args.streams.iter().copied().max().unwrap_or(1).max(1);
    let engine = Engine::spawn(
        llm.clone(),
        EngineConfig {
            max_sequences: max_streams,
            ..EngineConfig::default()
        },
    )?;
    run(&engine, &json_prompt, 1, 4, &|_| None)?;

    println!(
        "constrained decoding, default model, greedy, up to {} tokens per stream, median of {} runs",
        args.tokens, args.runs
    );
    println!(
        "grammar compile: strict json_schema {:.1} ms, tool_choice required {:.1} ms\n",
        compile_schema.as_secs_f64() * 1e3,
        compile_tool.as_secs_f64() * 1e3
    );
    println!(
        "{:<44} {:>7} {:>8} {:>12} {:>8}",
        "mode", "streams", "tokens", "decode tok/s", "ratio"
    );
    for &streams in &args.streams {
        let none = |_: usize| None;
        let all_schema = |_: usize| Some(schema.clone());
        let all_call = |_: usize| Some(call.clone());
        let one_schema = |i: usize| (i == 0).then(|| schema.clone());
        let mut modes: Vec<(&str, &[u32], GrammarFor<'_>)> = vec![
            ("unconstrained (json prompt)", &json_prompt, &none),
            ("strict json_schema", &json_prompt, &all_schema),
            ("unconstrained (tools prompt)", &tool_prompt, &none),
            ("tool_choice required", &tool_prompt, &all_call),
        ];
        if streams > 1 {
            modes.push((
                "1 json_schema + rest unconstrained: the rest",
                &json_prompt,
                &one_schema,
            ));
        }
        let mut base = 0.0;
        for (name, prompt, grammar) in modes {
            let runs = (0..args.runs.max(1))
                .map(|_| run(&engine, prompt, streams, args.tokens, grammar))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let m = median(runs).context("no runs")?;
            let shown = if name.ends_with("the rest") {
                m.free_tok_s
            } else {
                m.tok_s
            };
            if name.starts_with("unconstrained") {
                base = shown;
            }
            let base_for = if name.ends_with("the rest") {
                first_base(&args, streams, &engine, &json_prompt)?
            } else {
                base
            };
            println!(
                "{:<44} {:>7} {:>8} {:>12.1} {:>8.2}",
                name,
                streams,
                m.tokens,
                shown,
                if base_for > 0.0 {
                    shown / base_for
                } else {
                    0.0
                }
            );
        }
    }
    println!(
        "\nratio: against the unconstrained row above it with the same prompt and stream count"
    );
    println!(
        "reproduce: cargo run --release -p tenzro-benches --bin structured-speed -- --tokens {}",
        args.tokens
    );
    Ok(())
}

/// The unconstrained tok/s of `streams` streams on the json prompt, measured again
/// right after the mixed batch so both run in the same conditions.
fn first_base(args: &Args, streams: usize, engine: &Engine, prompt: &[u32]) -> anyhow::Result<f64> {
    let runs = (0..args.runs.max(1))
        .map(|_| run(engine, prompt, streams, args.tokens, &|_| None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(median(runs).map_or(0.0, |m| m.free_tok_s))
}
