//! The default model, loaded for real: tokenizer ids, template, greedy answers,
//! streaming invariants. Needs `scripts/fetch-models` to have run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use candle_core::Device;
use tenzro_models::api::FinishReason;
use tenzro_models::engine::{Engine, EngineConfig, Event, GenerateRequest, GenerationParams};
use tenzro_models::llama::PrefillPart;
use tenzro_models::llm::{Llm, LlmConfig, Requantize, default_model_path};
use tenzro_models::sampler::SamplingParams;
use tenzro_models::template::TemplateMessage;

fn models_dir() -> PathBuf {
    std::env::var_os("TENZRO_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.tenzro/models"))
}

fn llm() -> Arc<Llm> {
    static LLM: OnceLock<Arc<Llm>> = OnceLock::new();
    LLM.get_or_init(|| {
        let path = default_model_path(&models_dir());
        assert!(
            path.exists(),
            "{} is missing: run scripts/fetch-models",
            path.display()
        );
        let cfg = LlmConfig {
            path,
            sha256: None,
            tokenizer_json: None,
            requantize: Requantize::Q8_0,
        };
        Arc::new(Llm::load(&cfg, &Device::Cpu).unwrap())
    })
    .clone()
}

fn msg(role: &str, content: &str) -> TemplateMessage {
    TemplateMessage {
        role: role.into(),
        content: content.into(),
    }
}

const QUESTION: &str = "What is the capital of France?";

#[test]
fn tokenizer_ids_match_llama_cpp_for_the_chatml_prompt() {
    let llm = llm();
    // No system message: the template inserts its default one.
    let prompt = llm.render_chat(&[msg("user", QUESTION)]).unwrap();
    assert!(prompt.starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
    assert!(prompt.ends_with("<|im_start|>assistant\n"));
    let ids = llm.encode(&prompt).unwrap();
    assert_eq!(ids.len(), 37, "{ids:?}");
    assert_eq!(&ids[..4], &[1, 9690, 198, 2683]);
    // The turn markers are single special tokens, not spelled out.
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);
    assert_eq!(ids.iter().filter(|&&i| i == 2).count(), 2);
    assert_eq!(ids[ids.len() - 1], 198);
}

#[test]
fn digits_are_split_one_by_one_and_text_round_trips() {
    let llm = llm();
    let text = "In 2024, π≈3.14159 — naïve café 東京!";
    let ids = llm.encode(text).unwrap();
    assert_eq!(llm.tokenizer.decode(&ids, false).unwrap(), text);
    let digits = llm.encode("2024").unwrap();
    assert_eq!(digits.len(), 4, "{digits:?}");
}

#[test]
fn streaming_decode_never_splits_a_character() {
    use tenzro_models::detok::IncrementalDecoder;
    let llm = llm();
    // Byte-level BPE splits these characters across tokens.
    let text = "naïve café 東京 🦀🦀 ok";
    let ids = llm.encode(text).unwrap();
    assert!(ids.len() > text.chars().count() / 2);
    let mut dec = IncrementalDecoder::default();
    let mut pieces = Vec::new();
    for id in ids {
        pieces.push(dec.push(&llm.tokenizer, id).unwrap());
    }
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    // Some token completed no character on its own and released nothing.
    assert!(pieces.iter().any(String::is_empty), "{pieces:?}");
    assert_eq!(pieces.concat(), text);
}

#[test]
fn template_is_read_from_a_tokenizer_config_too() {
    let dir = std::env::temp_dir().join(format!("tenzro-tc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let string = dir.join("a.json");
    std::fs::write(
        &string,
        r#"{"chat_template": "{{ messages[0]['content'] }}"}"#,
    )
    .unwrap();
    let list = dir.join("b.json");
    std::fs::write(&list, r#"{"chat_template": [{"name": "tool_use", "template": "x"}, {"name": "default", "template": "y"}]}"#).unwrap();
    use tenzro_models::llm::template_from_tokenizer_config as read;
    assert_eq!(
        read(&string).as_deref(),
        Some("{{ messages[0]['content'] }}")
    );
    assert_eq!(read(&list).as_deref(), Some("y"));
    assert_eq!(read(&dir.join("missing.json")), None);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn generate(
    engine: &Engine,
    prompt: Vec<u32>,
    params: GenerationParams,
) -> (Vec<String>, Vec<Event>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    engine
        .submit(GenerateRequest {
            prompt,
            params: params.clone(),
            reply: tx,
        })
        .unwrap();
    let mut texts = vec![String::new(); params.n as usize];
    let mut events = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match &ev {
            Event::Text { choice, text, .. } | Event::Finished { choice, text, .. } => {
                texts[*choice as usize].push_str(text)
            }
            Event::Done { .. } | Event::Error(_) => {
                events.push(ev);
                break;
            }
            Event::ToolCall { .. } | Event::Logprobs { .. } => {}
        }
        events.push(ev);
    }
    (texts, events)
}

fn greedy(max_new_tokens: usize) -> GenerationParams {
    GenerationParams {
        sampling: SamplingParams::greedy(),
        max_new_tokens,
        stop: vec![],
        n: 1,
        grammar: None,
    }
}

fn france_prompt(llm: &Llm) -> Vec<u32> {
    let p = llm
        .render_chat(&[
            msg("system", "You are a helpful assistant."),
            msg("user", QUESTION),
        ])
        .unwrap();
    llm.encode(&p).unwrap()
}

#[test]
fn greedy_answer_names_paris_and_token_counts_add_up() {
    let llm = llm();
    let engine = Engine::spawn(llm.clone(), EngineConfig::default()).unwrap();
    let prompt = france_prompt(&llm);
    let (texts, events) = generate(&engine, prompt.clone(), greedy(40));
    assert!(texts[0].contains("Paris"), "{:?}", texts[0]);
    let reported: u32 = events
        .iter()
        .map(|e| match e {
            Event::Text { tokens, .. } | Event::Finished { tokens, .. } => *tokens,
            _ => 0,
        })
        .sum();
    let Some(Event::Done {
        prompt_tokens,
        completion_tokens,
    }) = events.last()
    else {
        panic!("{events:?}")
    };
    assert_eq!(*prompt_tokens as usize, prompt.len());
    assert_eq!(reported, *completion_tokens);
    // Every text event carries at least one token.
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, Event::Text { tokens: 0, .. }))
    );
}

#[test]
fn max_tokens_and_stop_sequences_end_the_choice() {
    let llm = llm();
    let engine = Engine::spawn(llm.clone(), EngineConfig::default()).unwrap();
    let prompt = france_prompt(&llm);
    let (full, _) = generate(&engine, prompt.clone(), greedy(40));

    let (one, events) = generate(&engine, prompt.clone(), greedy(1));
    assert!(
        matches!(
            events.last(),
            Some(Event::Done {
                completion_tokens: 1,
                ..
            })
        ),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Finished {
            reason: FinishReason::Length,
            ..
        }
    )));
    assert!(full[0].starts_with(&one[0]));

    // Stop at "Paris": the answer up to it, without it.
    let mut params = greedy(40);
    params.stop = vec!["Paris".into()];
    let (cut, events) = generate(&engine, prompt, params);
    let at = full[0].find("Paris").unwrap();
    assert_eq!(cut[0], full[0][..at]);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Finished {
            reason: FinishReason::Stop,
            ..
        }
    )));
}

#[test]
fn n_choices_with_a_seed_are_reproducible() {
    let llm = llm();
    let engine = Engine::spawn(llm.clone(), EngineConfig::default()).unwrap();
    let prompt = france_prompt(&llm);
    let params = GenerationParams {
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(42),
            ..Default::default()
        },
        max_new_tokens: 24,
        stop: vec![],
        n: 3,
        grammar: None,
    };
    let (a, _) = generate(&engine, prompt.clone(), params.clone());
    let (b, _) = generate(&engine, prompt, params);
    assert_eq!(a, b);
    assert_eq!(a.len(), 3);
    // Three samples at temperature 1 from one seed are not all the same.
    assert!(a[0] != a[1] || a[1] != a[2], "{a:?}");
}

#[test]
fn concurrent_requests_give_the_same_greedy_text_as_alone() {
    let llm = llm();
    let engine = Engine::spawn(llm.clone(), EngineConfig::default()).unwrap();
    let questions = [
        "What is the capital of France?",
        "Name a primary colour.",
        "What is 2+2?",
        "Say hello.",
    ];
    let prompts: Vec<Vec<u32>> = questions
        .iter()
        .map(|q| {
            let p = llm
                .render_chat(&[
                    msg("system", "You are a helpful assistant."),
                    msg("user", q),
                ])
                .unwrap();
            llm.encode(&p).unwrap()
        })
        .collect();
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| generate(&engine, p.clone(), greedy(24)).0.remove(0))
        .collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let engine = engine.clone();
                s.spawn(move || generate(&engine, p.clone(), greedy(24)).0.remove(0))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Batched decode sums each matmul row in another order than a solo run, so a greedy
    // near-tie can flip late in an answer (batch-invariant kernels are the engine
    // issue's). What batching must never do is mix sequences up: every answer starts
    // as its solo run does, and most match it whole.
    let first_words = |t: &str| t.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    for (a, t) in alone.iter().zip(&together) {
        assert_eq!(first_words(a), first_words(t), "{alone:?} vs {together:?}");
    }
    let same = alone.iter().zip(&together).filter(|(a, t)| a == t).count();
    assert!(same + 1 >= alone.len(), "{alone:?} vs {together:?}");
}

/// A burst of requests with one prompt prefills it once: the ones admitted
/// beside the first (or while it prefilled) start from the prefix it left in
/// the prefix cache, and answer as a request alone does.
#[test]
fn a_burst_sharing_a_prompt_prefills_it_once() {
    let llm = llm();
    let engine = Engine::spawn(llm.clone(), EngineConfig::default()).unwrap();
    let prompt = france_prompt(&llm);
    let alone = generate(&engine, prompt.clone(), greedy(8)).0.remove(0);
    engine.clear_prefix_cache();
    let before = engine.prefix_tokens_reused();
    let replies: Vec<_> = (0..4)
        .map(|_| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            engine
                .submit(GenerateRequest {
                    prompt: prompt.clone(),
                    params: greedy(8),
                    reply: tx,
                })
                .unwrap();
            rx
        })
        .collect();
    for mut rx in replies {
        let mut text = String::new();
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                Event::Text { text: t, .. } | Event::Finished { text: t, .. } => text.push_str(&t),
                Event::Done { .. } => break,
                Event::Error(e) => panic!("{e}"),
                Event::ToolCall { .. } | Event::Logprobs { .. } => {}
            }
        }
        assert_eq!(text, alone);
    }
    // Each of the three later requests prefilled only the prompt's last token.
    let reused = engine.prefix_tokens_reused() - before;
    assert!(
        reused >= 3 * (prompt.len() as u64 - 1),
        "{reused} prompt tokens reused for 3 x {}",
        prompt.len() - 1
    );
}

#[test]
fn a_dropped_client_frees_its_slot() {
    let llm = llm();
    let engine = Engine::spawn(
        llm.clone(),
        EngineConfig {
            queue_capacity: 4,
            max_sequences: 1,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    let prompt = france_prompt(&llm);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    engine
        .submit(GenerateRequest {
            prompt: prompt.clone(),
            params: greedy(3000),
            reply: tx,
        })
        .unwrap();
    drop(rx);
    // With one slot, this only completes if the abandoned sequence was dropped.
    let (texts, _) = generate(&engine, prompt, greedy(8));
    assert!(!texts[0].is_empty());
}

#[test]
fn a_long_prompt_prefills_in_chunks_while_a_running_sequence_keeps_decoding() {
    let llm = llm();
    let engine = Engine::spawn(
        llm.clone(),
        EngineConfig {
            // Small chunks keep the prompt short: a debug build's prefill of
            // 1,000 tokens took over 20 minutes on a loaded 2-core machine.
            prefill_chunk: 8,
            prefix_cache_bytes: 0,
            ..EngineConfig::default()
        },
    )
    .unwrap();
    // Both requests answer on one channel, so the order of their events is the
    // order the engine sent them in. A counts on for a long time.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let counting = llm
        .encode("1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,")
        .unwrap();
    let counting_len = counting.len() as u32;
    // With logprobs every token A decodes is an event, whatever text it makes
    // (a token of no text, such as a special one, sends no `Text`).
    let mut counting_params = greedy(400);
    counting_params.sampling.logprobs = Some(0);
    engine
        .submit(GenerateRequest {
            prompt: counting,
            params: counting_params,
            reply: tx.clone(),
        })
        .unwrap();
    assert!(matches!(rx.blocking_recv(), Some(Event::Logprobs { .. })));
    // B: a prompt of ~200 tokens, which takes 25 chunks of 8.
    let long = llm
        .encode(&"The quick brown fox jumps over the lazy dog. ".repeat(20))
        .unwrap();
    let long_len = long.len() as u32;
    assert!(long_len > 180, "{long_len}");
    engine
        .submit(GenerateRequest {
            prompt: long,
            params: greedy(1),
            reply: tx,
        })
        .unwrap();
    let mut texts_before_b_done = 0;
    loop {
        match rx.blocking_recv().unwrap() {
            Event::Logprobs { .. } => texts_before_b_done += 1,
            Event::Done {
                prompt_tokens,
                completion_tokens,
            } if prompt_tokens == long_len => {
                // A prompt still prefilling once counted as finished (no choices
                // yet) and ended after its first chunk with no answer.
                assert_eq!(completion_tokens, 1, "the long prompt ended unanswered");
                break;
            }
            Event::Done { prompt_tokens, .. } => {
                assert_eq!(prompt_tokens, counting_len);
                panic!("the counting sequence ended before the long prompt was prefilled");
            }
            Event::Error(e) => panic!("{e}"),
            _ => {}
        }
    }
    // Prefilled in one pass, B would let A step at most once or twice (and B's own
    // first token is one of these events); in chunks, A steps between them.
    assert!(
        texts_before_b_done >= 15,
        "only {texts_before_b_done} tokens of the running sequence while the long prompt prefilled"
    );
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Chunked prefill and the prefix cache rest on this: a prompt prefilled in
/// pieces, from a copied prefix, or token by token through decode steps (alone
/// or beside another sequence) gives exactly the logits of one pass.
#[test]
fn a_prompt_in_pieces_gives_bit_for_bit_the_logits_of_one_pass() {
    let llm = llm();
    let model = &llm.model;
    let prompt = france_prompt(&llm);
    let n = prompt.len();
    let mut whole = model.new_cache();
    let want =
        tenzro_models::llm::logits_vec(&model.prefill(&prompt, &mut whole).unwrap()).unwrap();
    for splits in [
        vec![1],
        vec![7],
        vec![n / 2],
        vec![n - 1],
        vec![3, 11, n - 2],
    ] {
        let mut cache = model.new_cache();
        let mut got = Vec::new();
        let mut from = 0;
        for end in splits.iter().copied().chain([n]) {
            let l = model.prefill(&prompt[from..end], &mut cache).unwrap();
            got = tenzro_models::llm::logits_vec(&l).unwrap();
            from = end;
        }
        assert!(
            got == want,
            "split at {splits:?}: logits differ by up to {}",
            max_diff(&got, &want)
        );
    }
    // From a cached prefix (what the prefix cache hands out), with no room
    // estimate, room for fewer positions than the prompt (it grows past them)
    // and for many more.
    for room in [0, n / 2 + 1, n + 300] {
        let mut copy = whole.prefix_copy(n / 2, room).unwrap();
        let got =
            tenzro_models::llm::logits_vec(&model.prefill(&prompt[n / 2..], &mut copy).unwrap())
                .unwrap();
        assert!(
            got == want,
            "from a copied prefix with room for {room}: differ by up to {}",
            max_diff(&got, &want)
        );
    }
    // A cache expecting fewer positions than it is given grows past them.
    let mut short = model.new_cache();
    short.expect(3);
    let got = tenzro_models::llm::logits_vec(&model.prefill(&prompt, &mut short).unwrap()).unwrap();
    assert!(
        got == want,
        "in a cache expecting 3 positions: differ by up to {}",
        max_diff(&got, &want)
    );
    // In one pass beside other prompts (the engine's batched prefill): the
    // whole prompt, the rest of a split one, and another prompt's first chunk,
    // whose cache then continues as a prefill of it alone does.
    let other: Vec<u32> = prompt.iter().rev().copied().collect();
    let (mut one, mut rest, mut chunk) = (model.new_cache(), model.new_cache(), model.new_cache());
    model.prefill(&prompt[..n / 2], &mut rest).unwrap();
    let out = model
        .prefill_many(&mut [
            PrefillPart {
                tokens: &other[..5],
                cache: &mut chunk,
                logits: false,
            },
            PrefillPart {
                tokens: &prompt,
                cache: &mut one,
                logits: true,
            },
            PrefillPart {
                tokens: &prompt[n / 2..],
                cache: &mut rest,
                logits: true,
            },
        ])
        .into_iter()
        .map(|r| r.unwrap())
        .collect::<Vec<_>>();
    assert!(out[0].is_none(), "a chunk's logits were not asked for");
    for (i, l) in out[1..].iter().enumerate() {
        let got = tenzro_models::llm::logits_vec(l.as_ref().unwrap()).unwrap();
        assert!(
            got == want,
            "part {} of a pass: differ by up to {}",
            i + 1,
            max_diff(&got, &want)
        );
    }
    let mut alone = model.new_cache();
    let other_want =
        tenzro_models::llm::logits_vec(&model.prefill(&other, &mut alone).unwrap()).unwrap();
    let got =
        tenzro_models::llm::logits_vec(&model.prefill(&other[5..], &mut chunk).unwrap()).unwrap();
    assert!(
        got == other_want,
        "after a chunk in a pass: differ by up to {}",
        max_diff(&got, &other_want)
    );
    // A part that fails (an empty one) fails the joint pass; the others then
    // run alone, each from where its cache was, and get their own logits.
    let (mut good, mut bad) = (model.new_cache(), model.new_cache());
    let out = model.prefill_many(&mut [
        PrefillPart {
            tokens: &prompt,
            cache: &mut good,
            logits: true,
        },
        PrefillPart {
            tokens: &[],
            cache: &mut bad,
            logits: true,
        },
    ]);
    assert!(out[1].is_err(), "an empty part is refused");
    let got = tenzro_models::llm::logits_vec(out[0].as_ref().unwrap().as_ref().unwrap()).unwrap();
    assert!(
        got == want && good.len() == n && bad.is_empty(),
        "beside a failing part: differ by up to {}, caches at {} and {}",
        max_diff(&got, &want),
        good.len(),
        bad.len()
    );
    // Token by token through decode steps, beside another sequence.
    let mut a = model.new_cache();
    let mut other = model.new_cache();
    model.prefill(&prompt[..1], &mut a).unwrap();
    model.prefill(&prompt[..5], &mut other).unwrap();
    let mut got = Vec::new();
    for &t in &prompt[1..] {
        let rows = model.decode(&[t, 42], &mut [&mut a, &mut other]).unwrap();
        got = tenzro_models::llm::logits_vec(&rows.get(0).unwrap()).unwrap();
    }
    assert!(
        got == want,
        "decoded in a batch: differ by up to {}",
        max_diff(&got, &want)
    );
}
