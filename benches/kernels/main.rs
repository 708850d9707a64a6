//! Quantized matmul speed: this crate's CPU kernels (`tenzro_models::linear`)
//! against candle's `QMatMul` on the same weights, per weight type and batch size.
//!
//! Run: `cargo run --release -p tenzro-benches --bin kernel-speed [-- --iters 200]`.
//! Prints one row per (type, shape, batch) with both medians and the speed-up.
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
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn time(iters: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    f()?;
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed());
    }
    Ok(median(v))
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
        "| type | rows x cols | batch | candle QMatMul | ours | speed-up |\n|---|---|---|---|---|---|"
    );
    for dtype in types {
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
                let tc = time(args.iters, || Ok(drop(candle.forward(&x)?)))?;
                let to = time(args.iters, || Ok(drop(ours.forward(&x)?)))?;
                println!(
                    "| {dtype:?} | {rows}x{cols} | {b} | {:.1} µs | {:.1} µs | {:.2}x |",
                    tc.as_secs_f64() * 1e6,
                    to.as_secs_f64() * 1e6,
                    tc.as_secs_f64() / to.as_secs_f64().max(1e-12)
                );
            }
        }
    }
    Ok(())
}
