//! The gateway's CPU per response with and without receipt verification (issue 10:
//! every response's receipt costs an Ed25519 verify plus the response digest).
//!
//! Runs the gateway's own per-response work, in-process and single-threaded, over
//! the answers a provider sends: a 10-chunk SSE stream (split, classify, meter each
//! chunk within the token bounds, read the usage chunk) and a whole JSON answer
//! (read usage, text and digest, price within the bounds). "with receipt" adds what
//! a sampled response adds: keeping each choice's text, the response digest and
//! `verify::check_receipt` (signature, key, model, request and response digests,
//! token counts). Prints a table of the median over rounds.
//!
//! Run: `cargo bench -p tenzro-benches --bench receipts` (add `-- --rounds N` for
//! more rounds; the default is 15 rounds of 2,000 responses each).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Instant;

use serde_json::json;
use tenzro_attest::{ProviderKey, PublicKey, ReceiptBody};
use tenzro_gateway::metering::{self, Event, Meter, SseSplitter};
use tenzro_gateway::pricing::{Asset, ONE, PPM, Quote};
use tenzro_gateway::verify::{self, Bounds, Expected, Texts};

const PER_ROUND: usize = 2_000;
const CHUNKS: usize = 10;
const PIECE: &str = "token ";

struct Fixture {
    key: PublicKey,
    request_sha256: [u8; 32],
    stream: Vec<u8>,
    whole: Vec<u8>,
}

fn digest(texts: &[String]) -> [u8; 32] {
    verify::items_digest(texts.iter().map(|t| t.as_bytes()))
}

fn fixture() -> Fixture {
    let key = ProviderKey::from_seed(&[5; 32]);
    let request = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
    let text: String = PIECE.repeat(CHUNKS);
    let receipt = ReceiptBody {
        model: "m".into(),
        weight_sha256: [1; 32],
        request_sha256: tenzro_attest::sha256(request),
        response_sha256: digest(std::slice::from_ref(&text)),
        prompt_tokens: 12,
        completion_tokens: CHUNKS as u64,
        issued_at: 1,
    }
    .sign(&key);
    let receipt = serde_json::to_value(receipt).unwrap();
    let mut stream = Vec::new();
    for _ in 0..CHUNKS {
        let c = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": PIECE}, "finish_reason": null}],
            "tenzro": {"tokens": 1}});
        stream.extend_from_slice(&metering::sse(c.to_string().as_bytes()));
    }
    let usage = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS},
        "tenzro": {"receipt": receipt}});
    stream.extend_from_slice(&metering::sse(usage.to_string().as_bytes()));
    stream.extend_from_slice(b"data: [DONE]\n\n");
    let whole = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS},
        "tenzro": {"receipt": receipt}});
    Fixture {
        key: key.public_key(),
        request_sha256: tenzro_attest::sha256(request),
        stream,
        whole: whole.to_string().into_bytes(),
    }
}

fn bounds() -> Bounds {
    Bounds {
        prompt_estimate: 100,
        choices: 1,
        max_new: 64,
        hard_cap: true,
        generates: true,
    }
}

fn quote() -> Quote {
    Quote::new(1_000_000_000_000, PPM, PPM / 2, PPM, Asset::Tnzo, ONE)
}

fn expected<'a>(
    f: &'a Fixture,
    response_sha256: [u8; 32],
    usage: Option<(u64, u64)>,
) -> Expected<'a> {
    Expected {
        key: &f.key,
        model: "m",
        weight_sha256: Some([1; 32]),
        request_sha256: f.request_sha256,
        response_sha256,
        usage,
    }
}

/// One streamed response as the relay handles it; returns the cost.
fn stream_once(f: &Fixture, check: bool) -> u128 {
    let mut splitter = SseSplitter::default();
    let mut meter = Meter::new(quote(), bounds());
    let mut texts = check.then(|| Texts::new(1));
    let mut receipt = None;
    // The provider's bytes arrive in reads of 512 bytes.
    for read in f.stream.chunks(512) {
        for ev in splitter.push(read) {
            let data = metering::event_data(&ev);
            match metering::classify(data.as_deref()) {
                Event::Chunk(p) => {
                    if let (Some(t), Some(choices)) = (&mut texts, &p.choices) {
                        for c in choices {
                            t.push(c.index, c.piece(), 1);
                        }
                    }
                    if let Some(r) = p.receipt() {
                        receipt = Some(r.clone());
                    }
                    match &p.usage {
                        Some(u) => {
                            meter.on_usage(u).unwrap();
                        }
                        None => {
                            meter
                                .on_chunk(p.tokens(), p.text_bytes(), p.tool_calls_started())
                                .unwrap();
                        }
                    }
                }
                Event::Done => {
                    if let Some(t) = &texts {
                        let e = expected(f, t.digest(), meter.claimed);
                        verify::check_receipt(receipt.as_ref(), &e).unwrap();
                    }
                }
                Event::Opaque | Event::Empty => {}
            }
        }
    }
    meter.cost
}

/// One whole response as `finish_whole` handles it; returns the cost.
fn whole_once(f: &Fixture, check: bool) -> u128 {
    let w = verify::read_whole(&f.whole).unwrap();
    let b = bounds();
    let (p, c) = w.usage.unwrap();
    let tokens = b.prompt_bound(p) + c.min(b.completion_bound(None, w.text_bytes, w.tool_calls));
    if check {
        let e = expected(f, w.response_sha256, w.usage);
        verify::check_receipt(w.receipt.as_ref(), &e).unwrap();
    }
    quote().cost(tokens).unwrap()
}

/// Median microseconds per response over `rounds` rounds.
fn time(rounds: usize, mut once: impl FnMut() -> u128) -> f64 {
    let mut per: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..PER_ROUND {
                black_box(once());
            }
            t.elapsed().as_secs_f64() * 1e6 / PER_ROUND as f64
        })
        .collect();
    per.sort_by(f64::total_cmp);
    per[per.len() / 2]
}

fn main() {
    let mut rounds = 15usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--rounds")
        && let Some(n) = args.get(i + 1).and_then(|n| n.parse().ok())
    {
        rounds = n;
    }
    let f = fixture();
    // Both paths charge the same.
    assert_eq!(stream_once(&f, false), stream_once(&f, true));
    assert_eq!(whole_once(&f, false), whole_once(&f, true));
    let receipt = {
        let w = verify::read_whole(&f.whole).unwrap();
        let r = w.receipt.unwrap();
        let e = expected(&f, w.response_sha256, w.usage);
        time(rounds, || {
            u128::from(verify::check_receipt(Some(&r), &e).is_ok())
        })
    };
    println!("gateway CPU per response, median of {rounds} rounds x {PER_ROUND} (one thread)");
    println!(
        "{:<28} {:>14} {:>14} {:>8}",
        "response", "bounds only", "+ receipt", "ratio"
    );
    for (name, run) in [
        (
            format!("stream, {CHUNKS} chunks"),
            &stream_once as &dyn Fn(&Fixture, bool) -> u128,
        ),
        ("whole JSON answer".to_owned(), &whole_once),
    ] {
        let without = time(rounds, || run(&f, false));
        let with = time(rounds, || run(&f, true));
        println!(
            "{name:<28} {without:>11.2} us {with:>11.2} us {:>7.2}x",
            with / without
        );
    }
    println!(
        "{:<28} {:>14} {receipt:>11.2} us",
        "check_receipt alone", ""
    );
    println!("reproduce: cargo bench -p tenzro-benches --bench receipts -- --rounds {rounds}");
}
