//! Where a mask's time goes: one sequence decoded greedily under a grammar,
//! timing the forward pass, llguidance's mask computation (`Constraint::prepare`),
//! applying the mask to the logits, and advancing the grammar, step by step.

use std::time::{Duration, Instant};

use tenzro_models::grammar::Compiled;
use tenzro_models::llm::Llm;

/// Per-step times of one phase.
#[derive(Default)]
struct Phase(Vec<Duration>);

impl Phase {
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.0.push(t.elapsed());
        out
    }

    /// (median, 95th percentile, max) in microseconds.
    fn summary(&self) -> (f64, f64, f64) {
        let mut v: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        v.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let i = ((v.len() as f64 - 1.0) * q).round() as usize;
            v.get(i).copied().unwrap_or(0.0)
        };
        (at(0.5), at(0.95), v.last().copied().unwrap_or(0.0))
    }
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = (0usize, f32::NEG_INFINITY);
    for (i, &l) in logits.iter().enumerate() {
        if l > best.1 {
            best = (i, l);
        }
    }
    u32::try_from(best.0).unwrap_or(0)
}

/// Decode up to `tokens` tokens of `prompt` under `grammar`, one sequence, and
/// print the per-step cost of each phase.
pub fn profile(
    llm: &Llm,
    name: &str,
    prompt: &[u32],
    grammar: &Compiled,
    tokens: usize,
) -> anyhow::Result<()> {
    let (mut cache, mut logits) = llm.prefill(prompt)?;
    let mut c = grammar.start()?;
    let (mut forward, mut compute, mut apply, mut commit) = Default::default();
    let (forward, compute, apply, commit): (&mut Phase, &mut Phase, &mut Phase, &mut Phase) =
        (&mut forward, &mut compute, &mut apply, &mut commit);
    for _ in 0..tokens {
        compute.time(|| c.prepare());
        apply.time(|| c.mask(&mut logits))?;
        let token = argmax(&logits);
        let eos = llm.eos_ids.contains(&token);
        commit.time(|| c.commit(token, eos))?;
        if eos {
            break;
        }
        let rows = forward.time(|| llm.decode(&[token], &mut [&mut cache]))?;
        logits = rows.into_iter().next().unwrap_or_default();
    }
    for (phase, p) in [
        ("forward pass (1 sequence)", &*forward),
        ("compute_mask (llguidance)", &*compute),
        ("apply mask to logits", &*apply),
        ("commit token", &*commit),
    ] {
        let (p50, p95, max) = p.summary();
        println!(
            "{:<22} {:<28} {:>6} {:>10.1} {:>10.1} {:>10.1}",
            name,
            phase,
            p.0.len(),
            p50,
            p95,
            max
        );
    }
    Ok(())
}

pub fn header() {
    println!(
        "{:<22} {:<28} {:>6} {:>10} {:>10} {:>10}",
        "grammar", "phase", "steps", "p50 µs", "p95 µs", "max µs"
    );
}
