//! Quantized matmul speed: this crate's CPU kernels (`tenzro_models::linear`)
//! against candle's `QMatMul` on the same weights, per weight type and batch size.
//!
//! Run: `cargo run --release -p tenzro-benches --bin kernel-speed [-- --iters 200] [--engine]`.
//! Prints one row per (type, shape, batch) with both medians, the speed-up, and
//! both fastest calls (the steadier figure on a shared machine).
//! The shapes are the default model's (hidden 576, FFN 1536) and a 4096x4096
//! matrix, as in 7B models; K-quant rows need 256-multiples, so they use the
//! FFN's down projection.

use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use clap::Parser;
use tenzro_models::linear::Linear;

#[derive(Parser)]
struct Args {
    /// Timed calls per row (the median is printed).
    #[arg(long, default_value_t = 100)]
    iters: usize,
    #[arg(long, value_delimiter = ',', default_value = "1,4,8,16")]
    batches: Vec<usize>,
    /// Also run a 4096x4096 matrix per type (slower).
    #[arg(long)]
    large: bool,
    /// Also time greedy decode of the default model (prefill, then `--tokens`
    /// steps for 1 and 8 sequences) with candle's matmul and with ours, each
    /// loaded in this process.
    #[arg(long)]
    engine: bool,
    #[arg(long, default_value_t = 32)]
    tokens: usize,
    #[arg(long, default_value = ".tenzro/models")]
    models_dir: std::path::PathBuf,
    /// Only these weight types (e.g. `q4k,q6k`; default: all).
    #[arg(long, value_delimiter = ',')]
    types: Vec<String>,
}

/// Decode tok/s of `streams` greedy sequences on the default model (Q4_1 as
/// shipped, or re-quantised to Q8_0 at load).
fn engine_tok_s(
    args: &Args,
    ours: bool,
    q8: bool,
    streams: usize,
) -> anyhow::Result<(f64, String)> {
    use tenzro_models::llm::{Llm, LlmConfig, Requantize, default_model_path};
    use tenzro_models::sampler::argmax;
    use tenzro_models::template::TemplateMessage;
    tenzro_models::linear::use_cpu_kernels(ours);
    let cfg = LlmConfig {
        path: default_model_path(&args.models_dir),
        sha256: None,
        tokenizer_json: None,
        requantize: if q8 {
            Requantize::Q8_0
        } else {
            Requantize::None
        },
    };
    let llm = Llm::load(&cfg, &Device::Cpu)?;
    let prompt = llm.render_chat(&[TemplateMessage {
        role: "user".into(),
        content: "Write a short story about a lighthouse keeper.".into(),
    }])?;
    let ids = llm.encode(&prompt)?;
    let mut caches = Vec::new();
    let mut next = Vec::new();
    for _ in 0..streams {
        let (cache, logits) = llm.prefill(&ids)?;
        caches.push(cache);
        next.push(argmax(&logits));
    }
    let mut first = vec![next[0]];
    let t = Instant::now();
    for _ in 0..args.tokens {
        let mut refs: Vec<_> = caches.iter_mut().collect();
        let logits = llm.decode(&next, &mut refs)?;
        next = logits.iter().map(|l| argmax(l)).collect();
        first.push(next[0]);
    }
    let tok_s = (args.tokens * streams) as f64 / t.elapsed().as_secs_f64();
    let text = llm.tokenizer.decode(&first, true).unwrap_or_default();
    Ok((tok_s, text))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

/// The median and the fastest of `iters` timed calls (after one untimed call).
/// On a shared machine the fastest is the steadier figure: other processes only
/// ever add time.
fn time(
    iters: usize,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(Duration, Duration)> {
    f()?;
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    let min = v.iter().min().copied().unwrap_or_default();
    Ok((median(v), min))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dev = Device::Cpu;
    let types = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];
    println!(
        "threads: {} (rayon; candle uses the same pool)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "| type | rows x cols | batch | candle QMatMul | ours | speed-up | candle min | ours min |\n|---|---|---|---|---|---|---|---|"
    );
    let wanted = |t: GgmlDType| {
        let name = format!("{t:?}").to_lowercase().replace('_', "");
        args.types.is_empty()
            || args
                .types
                .iter()
                .any(|w| w.to_lowercase().replace('_', "") == name)
    };
    for dtype in types.into_iter().filter(|&t| wanted(t)) {
        let mut shapes = vec![if dtype.block_size() == 256 {
            (576, 1536)
        } else {
            (1536, 576)
        }];
        if args.large {
            shapes.push((4096, 4096));
        }
        for (rows, cols) in shapes {
            let w = Tensor::randn(0f32, 0.05, (rows, cols), &dev)?;
            let q = QTensor::quantize(&w, dtype).context("quantize")?;
            let candle = QMatMul::from_qtensor(QTensor::quantize(&w, dtype)?)?;
            let ours = Linear::from_qtensor(q)?;
            for &b in &args.batches {
                let x = Tensor::randn(0f32, 1.0, (b, cols), &dev)?;
                let (tc, tc_min) = time(args.iters, || {
                    candle.forward(&x)?;
                    Ok(())
                })?;
                let (to, to_min) = time(args.iters, || {
                    ours.forward(&x)?;
                    Ok(())
                })?;
                println!(
                    "| {dtype:?} | {rows}x{cols} | {b} | {:.1} µs | {:.1} µs | {:.2}x | {:.1} µs | {:.1} µs |",
                    tc.as_secs_f64() * 1e6,
                    to.as_secs_f64() * 1e6,
                    tc.as_secs_f64() / to.as_secs_f64().max(1e-12),
                    tc_min.as_secs_f64() * 1e6,
                    to_min.as_secs_f64() * 1e6,
                );
            }
        }
    }
    if args.engine {
        println!(
            "\n| default model, greedy decode of {} tokens | streams | tok/s | vs candle Q8_0 |\n|---|---|---|---|",
            args.tokens
        );
        for streams in [1, 8] {
            let (base, text) = engine_tok_s(&args, false, true, streams)?;
            println!(
                "| candle matmul, Q8_0 at load (the old default) | {streams} | {base:.1} | 1.00x |"
            );
            for (name, q8) in [
                ("ours, Q4_1 as shipped", false),
                ("ours, Q8_0 at load", true),
            ] {
                let (tok_s, ours) = engine_tok_s(&args, true, q8, streams)?;
                println!("| {name} | {streams} | {tok_s:.1} | {:.2}x |", tok_s / base);
                if ours != text {
                    println!("|   (text differs: candle {text:?}, ours {ours:?}) | | | |");
                }
            }
        }
    }
    Ok(())
}
