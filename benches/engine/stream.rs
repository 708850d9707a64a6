//! `engine-speed --weight-stream N`: what huge pages do to the weight stream of a
//! decode step, without the engine around it. Every 2-D tensor of the GGUF that
//! our kernels serve is loaded twice, once in huge-page regions
//! (`QWeight::from_slice`, how the engine loads) and once on the heap
//! (`QWeight::new`); then N passes alternate between the two sets, each pass one
//! GEMV (one activation row) through every matrix, as a decode step does. The
//! fastest pass of each set is the least disturbed by other processes on a shared
//! machine. `RAYON_NUM_THREADS` sets the kernels' threads.

use std::path::Path;
use std::time::{Duration, Instant};

use tenzro_models::kernels::{Isa, QWeight, WeightType};

pub fn run(path: &Path, passes: usize) -> anyhow::Result<serde_json::Value> {
    let (content, mut file) = tenzro_models::gguf::read_content(path)?;
    let (mut huge, mut heap) = (Vec::new(), Vec::new());
    for (name, info) in &content.tensor_infos {
        let dims = info.shape.dims();
        if dims.len() != 2 || WeightType::from_ggml(info.ggml_dtype).is_none() {
            continue;
        }
        let t = content.tensor(&mut file, name, &candle_core::Device::Cpu)?;
        let data = t.data()?;
        let (rows, cols) = (dims[0], dims[1]);
        if let (Ok(a), Ok(b)) = (
            QWeight::from_slice(info.ggml_dtype, rows, cols, &data),
            QWeight::new(info.ggml_dtype, rows, cols, data.into_owned()),
        ) {
            huge.push(a);
            heap.push(b);
        }
    }
    let bytes: usize = heap
        .iter()
        .map(|w| {
            w.rows() * w.cols() / w.weight_type().block_values() * w.weight_type().block_bytes()
        })
        .sum();
    let pass = |ws: &[QWeight]| -> anyhow::Result<Duration> {
        let start = Instant::now();
        for w in ws {
            let x: Vec<f32> = (0..w.cols())
                .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
                .collect();
            w.matmul(&x, 1, Isa::Best)
                .map_err(|e| anyhow::anyhow!(e.0))?;
        }
        Ok(start.elapsed())
    };
    let (mut t_huge, mut t_heap) = (Vec::new(), Vec::new());
    for _ in 0..passes.max(1) {
        t_huge.push(pass(&huge)?);
        t_heap.push(pass(&heap)?);
    }
    t_huge.sort();
    t_heap.sort();
    let in_huge = huge.iter().filter(|w| w.in_huge_pages()).count();
    let stat = |t: &[Duration]| {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        serde_json::json!({
            "min_ms": ms(t[0]),
            "p50_ms": ms(t[t.len() / 2]),
            "best_gb_s": bytes as f64 / t[0].as_secs_f64() / 1e9,
        })
    };
    Ok(serde_json::json!({
        "matrices": heap.len(),
        "in_huge_pages": in_huge,
        "weight_mib": bytes as f64 / (1 << 20) as f64,
        "passes": passes,
        "threads": tenzro_models::kernels::pool::threads(),
        "huge_pages": stat(&t_huge),
        "heap": stat(&t_heap),
    }))
}
