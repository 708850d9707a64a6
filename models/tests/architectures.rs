//! Every architecture the engine runs, checked against candle-transformers'
//! implementation of the same architecture on a tiny random checkpoint written
//! here from a config (no network, no model files): the logits after every
//! prefix agree within a tolerance, and the greedy tokens are the same, for a
//! sequence decoded alone and for sequences decoded side by side in one batch
//! (several KV caches, different lengths). The windowed families run past their
//! window, so the window decides what is attended.
//!
//! The reference recomputes each prefix from scratch (its caches cleared), so
//! only its masks decide what each position sees. candle's masks let a query see
//! `sliding_window + 1` keys where Hugging Face and llama.cpp let it see
//! `sliding_window`, so the reference is given our window minus one. candle's
//! gemma3 cannot prefill more than one token (its KV cache refuses the
//! non-contiguous values), so it is fed one token at a time, where its rotating
//! cache of `sliding_window` keys is the window itself.
//!
//! The same checkpoints written as GGUF files with llama.cpp's metadata keys
//! and tensor names (fused phi3 tensors, gemma's norms stored as w + 1, f32 and
//! Q8_0) load into the same model as the safetensors checkpoint.
#![expect(clippy::unwrap_used, clippy::panic, reason = "tests")]

use std::collections::HashMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{gemma2, gemma3, llama, mistral, phi3, qwen3};
use serde_json::{Value as Json, json};
use tenzro_models::hf::{self, HfConfig};
use tenzro_models::llama::{KvCache, Llama};
use tenzro_models::llm::logits_vec;

const VOCAB: usize = 96;
/// Largest |ours - reference| allowed in any logit.
const TOLERANCE: f32 = 2e-3;
/// Greedy tokens decoded after each prompt.
const STEPS: usize = 14;

/// A temp directory removed when the test ends, passing or not.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("tenzro-arch-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic uniform numbers in [-1, 1) (xorshift), so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn tensor(&mut self, dims: &[usize], scale: f32, offset: f32) -> Tensor {
        let n: usize = dims.iter().product();
        let data: Vec<f32> = (0..n).map(|_| offset + scale * self.next()).collect();
        Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
    }
}

/// A tiny checkpoint of one architecture: its config and its weights under the
/// Hugging Face names.
struct Checkpoint {
    config: Json,
    tensors: HashMap<String, Tensor>,
}

fn get(config: &Json, key: &str) -> usize {
    config[key].as_u64().unwrap() as usize
}

fn checkpoint(config: Json, seed: u64) -> Checkpoint {
    let mut rng = Rng(seed);
    let (h, f, n) = (
        get(&config, "hidden_size"),
        get(&config, "intermediate_size"),
        get(&config, "num_hidden_layers"),
    );
    let heads = get(&config, "num_attention_heads");
    let kv_heads = get(&config, "num_key_value_heads");
    let d = config["head_dim"]
        .as_u64()
        .map_or(h / heads, |d| d as usize);
    let model_type = config["model_type"].as_str().unwrap().to_owned();
    let gemma = model_type.starts_with("gemma");
    // Gemma's norms scale by 1 + w, the others' by w: both near 1.
    let norm_offset = if gemma { 0.0 } else { 1.0 };
    let mut t = HashMap::new();
    let mut put = |name: String, dims: &[usize], scale: f32, offset: f32| {
        t.insert(name, rng.tensor(dims, scale, offset));
    };
    put("model.embed_tokens.weight".into(), &[VOCAB, h], 1.0, 0.0);
    put("model.norm.weight".into(), &[h], 0.2, norm_offset);
    if !config["tie_word_embeddings"].as_bool().unwrap_or(false) {
        put("lm_head.weight".into(), &[VOCAB, h], 0.5, 0.0);
    }
    let lin = |fan_in: usize| 1.7 / (fan_in as f32).sqrt();
    for i in 0..n {
        let p = format!("model.layers.{i}.");
        if model_type == "phi3" {
            put(
                format!("{p}self_attn.qkv_proj.weight"),
                &[(heads + 2 * kv_heads) * d, h],
                lin(h),
                0.0,
            );
            put(
                format!("{p}mlp.gate_up_proj.weight"),
                &[2 * f, h],
                lin(h),
                0.0,
            );
        } else {
            put(
                format!("{p}self_attn.q_proj.weight"),
                &[heads * d, h],
                lin(h),
                0.0,
            );
            put(
                format!("{p}self_attn.k_proj.weight"),
                &[kv_heads * d, h],
                lin(h),
                0.0,
            );
            put(
                format!("{p}self_attn.v_proj.weight"),
                &[kv_heads * d, h],
                lin(h),
                0.0,
            );
            put(format!("{p}mlp.gate_proj.weight"), &[f, h], lin(h), 0.0);
            put(format!("{p}mlp.up_proj.weight"), &[f, h], lin(h), 0.0);
        }
        put(
            format!("{p}self_attn.o_proj.weight"),
            &[h, heads * d],
            lin(heads * d),
            0.0,
        );
        put(format!("{p}mlp.down_proj.weight"), &[h, f], lin(f), 0.0);
        put(format!("{p}input_layernorm.weight"), &[h], 0.2, norm_offset);
        put(
            format!("{p}post_attention_layernorm.weight"),
            &[h],
            0.2,
            norm_offset,
        );
        if gemma {
            put(
                format!("{p}pre_feedforward_layernorm.weight"),
                &[h],
                0.2,
                0.0,
            );
            put(
                format!("{p}post_feedforward_layernorm.weight"),
                &[h],
                0.2,
                0.0,
            );
        }
        if matches!(model_type.as_str(), "qwen3" | "gemma3_text") {
            put(
                format!("{p}self_attn.q_norm.weight"),
                &[d],
                0.2,
                norm_offset,
            );
            put(
                format!("{p}self_attn.k_norm.weight"),
                &[d],
                0.2,
                norm_offset,
            );
        }
    }
    Checkpoint { config, tensors: t }
}

/// Fields every config shares: 3 layers, 4 query heads over 2 key/value heads.
fn base(model_type: &str) -> Json {
    json!({
        "model_type": model_type,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "vocab_size": VOCAB,
        "max_position_embeddings": 256,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
    })
}

fn patched(mut config: Json, patch: Json) -> Json {
    for (k, v) in patch.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

fn qwen3_config() -> Json {
    // head_dim 16 with 4 heads: the attention width (64) differs from hidden (32).
    patched(
        base("qwen3"),
        json!({"head_dim": 16, "attention_bias": false, "max_window_layers": 3,
               "sliding_window": null, "use_sliding_window": false,
               "tie_word_embeddings": true, "rope_theta": 1000000.0}),
    )
}

fn mistral_config() -> Json {
    patched(base("mistral"), json!({"sliding_window": 5}))
}

fn gemma2_config() -> Json {
    // The window is longer than any sequence here: candle's gemma2 windows every
    // layer, Hugging Face's only the even ones (gemma3 below checks alternation).
    patched(
        base("gemma2"),
        json!({"head_dim": 16, "attention_bias": false, "hidden_act": "gelu_pytorch_tanh",
               "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 16,
               "attn_logit_softcapping": 2.0, "final_logit_softcapping": 3.0,
               "sliding_window": 128, "tie_word_embeddings": true}),
    )
}

fn gemma3_config() -> Json {
    patched(
        base("gemma3_text"),
        json!({"head_dim": 16, "attention_bias": false, "hidden_act": null,
               "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 16,
               "attn_logit_softcapping": null, "final_logit_softcapping": null,
               "sliding_window": 6, "sliding_window_pattern": 2,
               "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
               "num_hidden_layers": 4, "tie_word_embeddings": true}),
    )
}

fn phi3_config() -> Json {
    // candle's phi3 has no sliding window; ours is longer than any sequence here.
    patched(
        base("phi3"),
        json!({"sliding_window": 200, "rope_scaling": null, "bos_token_id": 1,
               "eos_token_id": 2, "original_max_position_embeddings": 256,
               "partial_rotary_factor": null}),
    )
}

/// Llama 3.x: `rope_scaling` of type `llama3`. With head_dim 8 and base 10 000 the
/// wavelengths are 6.3, 63, 628 and 6283 positions; an original context of 128
/// keeps the first (under 128 / 4), blends the second and divides the others.
fn llama3_config() -> Json {
    patched(
        base("llama"),
        json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 128},
               "bos_token_id": 1, "eos_token_id": 2}),
    )
}

/// candle-transformers' model of the same architecture.
enum Reference {
    Llama(llama::Llama, llama::Config),
    Qwen3(qwen3::ModelForCausalLM),
    Mistral(mistral::Model),
    Gemma2(gemma2::Model),
    Gemma3(gemma3::Model),
    Phi3(phi3::Model),
}

impl Reference {
    fn new(ck: &Checkpoint) -> Reference {
        let vb = VarBuilder::from_tensors(ck.tensors.clone(), DType::F32, &Device::Cpu);
        let mut config = ck.config.clone();
        // candle's masks hold one key more than Hugging Face's window (see the top).
        let incremental = ck.config["model_type"] == "gemma3_text";
        if let Some(w) = config["sliding_window"].as_u64().filter(|_| !incremental) {
            config["sliding_window"] = json!(w - 1);
        }
        // candle's phi3 multiplies the frequencies by longrope's factors where
        // Hugging Face divides them (and has no attention factor).
        if config["rope_scaling"]["type"] == "longrope" {
            for key in ["short_factor", "long_factor"] {
                let inverse: Vec<f64> = config["rope_scaling"][key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| 1.0 / f.as_f64().unwrap())
                    .collect();
                config["rope_scaling"][key] = json!(inverse);
            }
        }
        fn cfg<T: serde::de::DeserializeOwned>(c: &Json) -> T {
            serde_json::from_value(c.clone()).unwrap()
        }
        match ck.config["model_type"].as_str().unwrap() {
            "llama" => {
                let c = cfg::<llama::LlamaConfig>(&config).into_config(false);
                Reference::Llama(llama::Llama::load(vb, &c).unwrap(), c)
            }
            "qwen3" => Reference::Qwen3(qwen3::ModelForCausalLM::new(&cfg(&config), vb).unwrap()),
            "mistral" => Reference::Mistral(mistral::Model::new(&cfg(&config), vb).unwrap()),
            "gemma2" => Reference::Gemma2(gemma2::Model::new(false, &cfg(&config), vb).unwrap()),
            "gemma3_text" => {
                Reference::Gemma3(gemma3::Model::new(false, &cfg(&config), vb).unwrap())
            }
            "phi3" => Reference::Phi3(phi3::Model::new(&cfg(&config), vb).unwrap()),
            other => panic!("no reference for {other}"),
        }
    }

    /// The logits after `tokens`, computed from scratch.
    fn logits(&mut self, tokens: &[u32]) -> Vec<f32> {
        let ids = Tensor::new(tokens, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let out = match self {
            Reference::Llama(m, c) => {
                let mut cache = llama::Cache::new(false, DType::F32, c, &Device::Cpu).unwrap();
                m.forward(&ids, 0, &mut cache)
            }
            Reference::Qwen3(m) => {
                m.clear_kv_cache();
                m.forward(&ids, 0)
            }
            Reference::Mistral(m) => {
                m.clear_kv_cache();
                m.forward(&ids, 0)
            }
            Reference::Gemma2(m) => {
                m.clear_kv_cache();
                m.forward(&ids, 0)
            }
            Reference::Gemma3(m) => {
                m.clear_kv_cache();
                let mut out = None;
                for i in 0..tokens.len() {
                    out = Some(m.forward(&ids.narrow(1, i, 1).unwrap(), i));
                }
                out.unwrap()
            }
            Reference::Phi3(m) => {
                m.clear_kv_cache();
                m.forward(&ids, 0)
            }
        };
        logits_vec(&out.unwrap()).unwrap()
    }
}

/// Write the checkpoint as `config.json` + `model.safetensors` and load it.
fn load_ours(ck: &Checkpoint, dir: &Path, quantize: Option<GgmlDType>) -> Llama {
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&ck.config).unwrap(),
    )
    .unwrap();
    candle_core::safetensors::save(&ck.tensors, dir.join("model.safetensors")).unwrap();
    let config = HfConfig::read(&dir.join("config.json")).unwrap();
    let files = hf::weight_files(dir).unwrap();
    hf::load_llama(&config, &files, quantize, &Device::Cpu).unwrap()
}

fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Prompts of different lengths (the windowed families' windows are shorter).
fn prompts() -> Vec<Vec<u32>> {
    let mut rng = Rng(7);
    [9usize, 3, 13]
        .iter()
        .map(|&n| {
            (0..n)
                .map(|_| ((rng.next() + 1.0) * 0.5 * VOCAB as f32) as u32 % VOCAB as u32)
                .collect()
        })
        .collect()
}

/// Decode greedily from every prompt at once (one batch, one cache each),
/// checking each step's logits against the reference's for the same prefix.
/// Returns each sequence's tokens and the largest difference seen.
fn decode_checked(
    model: &Llama,
    reference: &mut Reference,
    prompts: &[Vec<u32>],
) -> (Vec<Vec<u32>>, f32) {
    let mut worst = 0f32;
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    let mut caches: Vec<KvCache> = Vec::new();
    let mut next = Vec::new();
    for p in prompts {
        let mut cache = model.new_cache();
        let ours = logits_vec(&model.prefill(p, &mut cache).unwrap()).unwrap();
        let theirs = reference.logits(p);
        worst = worst.max(max_abs_diff(&ours, &theirs));
        assert_eq!(
            argmax(&ours),
            argmax(&theirs),
            "first token after a prompt of {}",
            p.len()
        );
        next.push(argmax(&ours));
        caches.push(cache);
    }
    for step in 0..STEPS {
        for (s, &t) in seqs.iter_mut().zip(&next) {
            s.push(t);
        }
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let logits = model
            .decode(&next, &mut refs)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        next.clear();
        for (i, ours) in logits.iter().enumerate() {
            let theirs = reference.logits(&seqs[i]);
            let diff = max_abs_diff(ours, &theirs);
            worst = worst.max(diff);
            assert!(
                diff <= TOLERANCE,
                "sequence {i}, step {step}: logits differ by {diff}"
            );
            assert_eq!(
                argmax(ours),
                argmax(&theirs),
                "sequence {i}, step {step}: greedy token"
            );
            next.push(argmax(ours));
        }
    }
    for (s, &t) in seqs.iter_mut().zip(&next) {
        s.push(t);
    }
    (seqs, worst)
}

fn check_against_reference(name: &str, config: Json) {
    let ck = checkpoint(config, 0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
    let dir = TempDir::new(name);
    let model = load_ours(&ck, &dir.0, None);
    let mut reference = Reference::new(&ck);
    let prompts = prompts();
    // Alone (the single-sequence decode path), then all together in one batch.
    let (alone, worst_alone) = decode_checked(&model, &mut reference, &prompts[..1]);
    let (batched, worst) = decode_checked(&model, &mut reference, &prompts);
    assert_eq!(
        alone[0], batched[0],
        "{name}: alone and batched greedy runs differ"
    );
    println!(
        "{name}: max |logit diff| alone {worst_alone:.2e}, batched {worst:.2e}; tokens {:?}",
        batched[0]
    );
    assert!(worst <= TOLERANCE && worst_alone <= TOLERANCE);
    // Greedy decoding that only repeated one token would check little.
    let distinct: std::collections::HashSet<_> = batched[2].iter().collect();
    assert!(
        distinct.len() > 3,
        "{name}: degenerate output {:?}",
        batched[2]
    );
}

#[test]
fn llama3_rope_scaling_matches_candle() {
    check_against_reference("llama3", llama3_config());
}

/// RoPE scaling must change the output (otherwise the test above would pass
/// with it ignored), and linear scaling divides every frequency.
#[test]
fn rope_scaling_matters() {
    let scaled = checkpoint(llama3_config(), 13);
    let with = |rope_scaling: Json| Checkpoint {
        config: patched(llama3_config(), json!({ "rope_scaling": rope_scaling })),
        tensors: scaled.tensors.clone(),
    };
    let tokens: Vec<u32> = (0..20u32).map(|i| (i * 7 + 3) % VOCAB as u32).collect();
    let logits = |ck: &Checkpoint, name: &str| {
        let dir = TempDir::new(name);
        let m = load_ours(ck, &dir.0, None);
        let mut cache = m.new_cache();
        logits_vec(&m.prefill(&tokens, &mut cache).unwrap()).unwrap()
    };
    let plain = logits(&with(Json::Null), "rope-plain");
    let llama3 = logits(&scaled, "rope-llama3");
    let linear = logits(
        &with(json!({"rope_type": "linear", "factor": 4.0})),
        "rope-linear",
    );
    assert!(
        max_abs_diff(&plain, &llama3) > 1e-3,
        "llama3 scaling changed nothing"
    );
    assert!(
        max_abs_diff(&plain, &linear) > 1e-3,
        "linear scaling changed nothing"
    );
    assert!(max_abs_diff(&llama3, &linear) > 1e-3);
}

/// Gemma 3's linear scaling (its 4B and larger models) applies to the global
/// layers only: with every layer local it changes nothing, with global layers
/// it does.
#[test]
fn gemma3_linear_scaling_leaves_local_layers_alone() {
    let tokens: Vec<u32> = (0..12u32).map(|i| (i * 5 + 1) % VOCAB as u32).collect();
    let diff = |pattern: u64, name: &str| {
        let config = patched(gemma3_config(), json!({"sliding_window_pattern": pattern}));
        let plain = checkpoint(config.clone(), 17);
        let scaled = Checkpoint {
            config: patched(
                config,
                json!({"rope_scaling": {"rope_type": "linear", "factor": 8.0}}),
            ),
            tensors: plain.tensors.clone(),
        };
        let logits = |ck: &Checkpoint, tag: &str| {
            let dir = TempDir::new(&format!("{name}-{tag}"));
            let m = load_ours(ck, &dir.0, None);
            let mut cache = m.new_cache();
            logits_vec(&m.prefill(&tokens, &mut cache).unwrap()).unwrap()
        };
        max_abs_diff(&logits(&plain, "plain"), &logits(&scaled, "scaled"))
    };
    // 4 layers: a pattern of 5 makes them all local, 2 makes two global.
    assert!(diff(5, "g3-local") < 1e-6, "local layers were scaled");
    assert!(diff(2, "g3-mixed") > 1e-3, "global layers were not scaled");
}

#[test]
fn refused_rope_scaling_is_named() {
    let dir = TempDir::new("yarn");
    let path = dir.0.join("config.json");
    let config = patched(
        base("qwen2"),
        json!({"rope_scaling": {"type": "yarn", "factor": 4.0,
                                "original_max_position_embeddings": 32768}}),
    );
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let err = HfConfig::read(&path).unwrap_err().to_string();
    assert!(
        err.contains(
            "rope_scaling type `yarn` is not supported (supported: default, linear, llama3, longrope)"
        ),
        "{err}"
    );
}

#[test]
fn qwen3_matches_candle() {
    check_against_reference("qwen3", qwen3_config());
}

#[test]
fn mistral_matches_candle_past_its_window() {
    check_against_reference("mistral", mistral_config());
}

#[test]
fn gemma2_matches_candle() {
    check_against_reference("gemma2", gemma2_config());
}

#[test]
fn gemma3_matches_candle_with_local_and_global_layers() {
    check_against_reference("gemma3", gemma3_config());
}

#[test]
fn phi3_matches_candle() {
    check_against_reference("phi3", phi3_config());
}

/// Phi-3.5's longrope within its original context: short factors divide the
/// frequencies. (candle's phi3 has no attention factor, so the context is not
/// extended here: the factor is 1.)
#[test]
fn phi3_longrope_matches_candle() {
    let config = patched(
        phi3_config(),
        json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5, 3.0, 7.0],
                                "long_factor": [1.0, 9.0, 20.0, 40.0]},
               "max_position_embeddings": 256, "original_max_position_embeddings": null}),
    );
    check_against_reference("phi3-longrope", config);
}

/// A longrope GGUF as llama.cpp writes it (factor tensors, the attention factor
/// for a context extended 32 times) loads like its checkpoint, and the attention
/// factor changes the output.
#[test]
fn gguf_phi3_longrope_loads_like_its_checkpoint() {
    let extended = patched(
        phi3_config(),
        json!({"rope_scaling": {"type": "longrope", "short_factor": [1.0, 1.5, 3.0, 7.0],
                                "long_factor": [1.0, 9.0, 20.0, 40.0]},
               "max_position_embeddings": 131072, "original_max_position_embeddings": 4096}),
    );
    check_gguf("phi3-longrope", extended.clone(), "phi3");
    let unextended = patched(extended.clone(), json!({"max_position_embeddings": 4096}));
    let ck = checkpoint(extended, 3);
    let other = Checkpoint {
        config: unextended,
        tensors: ck.tensors.clone(),
    };
    let (a, b) = (TempDir::new("longrope-a"), TempDir::new("longrope-b"));
    let (first_a, _) = run(&load_ours(&ck, &a.0, None));
    let (first_b, _) = run(&load_ours(&other, &b.0, None));
    assert!(
        max_abs_diff(&first_a[2], &first_b[2]) > 1e-3,
        "the attention factor changed nothing"
    );
}

/// `partial_rotary_factor` (Phi-4-mini's 0.75): RoPE turns the first half of
/// each head here, the rest passes through.
#[test]
fn phi3_partial_rotary_matches_candle() {
    let config = patched(phi3_config(), json!({"partial_rotary_factor": 0.5}));
    check_against_reference("phi3-partial", config.clone());
    check_gguf("phi3-partial", config, "phi3");
}

/// A window must change the output once a sequence outgrows it (otherwise the
/// window tests above would pass with no window at all).
#[test]
fn the_window_matters_past_its_length() {
    let windowed = checkpoint(mistral_config(), 11);
    let unwindowed = Checkpoint {
        config: patched(mistral_config(), json!({"sliding_window": null})),
        tensors: windowed.tensors.clone(),
    };
    let (a, b) = (TempDir::new("win-a"), TempDir::new("win-b"));
    let (ma, mb) = (
        load_ours(&windowed, &a.0, None),
        load_ours(&unwindowed, &b.0, None),
    );
    let run = |m: &Llama, n: usize| {
        let mut cache = m.new_cache();
        let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 3) % VOCAB as u32).collect();
        logits_vec(&m.prefill(&tokens, &mut cache).unwrap()).unwrap()
    };
    assert!(
        max_abs_diff(&run(&ma, 5), &run(&mb, 5)) < 1e-5,
        "within the window"
    );
    assert!(
        max_abs_diff(&run(&ma, 12), &run(&mb, 12)) > 1e-3,
        "past the window"
    );
}

#[test]
fn unknown_model_type_is_refused_naming_it_and_the_supported_ones() {
    let dir = TempDir::new("unknown");
    let path = dir.0.join("config.json");
    std::fs::write(&path, serde_json::to_vec(&base("mamba")).unwrap()).unwrap();
    let err = HfConfig::read(&path).unwrap_err().to_string();
    assert!(err.contains("model_type `mamba` is not supported"), "{err}");
    assert!(
        err.contains("qwen3, mistral, gemma2, gemma3_text, phi3"),
        "{err}"
    );
}

// ---- GGUF: llama.cpp's names for the same checkpoints ----

/// The GGUF tensor name of a Hugging Face one (None: not stored under this name).
fn gguf_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, suffix) = rest.split_once('.').unwrap();
    let name = match suffix {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.qkv_proj.weight" => "attn_qkv.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_norm.weight" => "attn_q_norm.weight",
        "self_attn.k_norm.weight" => "attn_k_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" | "mlp.gate_up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        other => other,
    };
    format!("blk.{layer}.{name}")
}

/// llama.cpp's layout of a checkpoint: names, `{arch}.…` keys, gemma's norms + 1.
fn write_gguf(ck: &Checkpoint, arch: &str, quant: GgmlDType) -> Vec<u8> {
    let c = &ck.config;
    let gemma = arch.starts_with("gemma");
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in &ck.tensors {
        let mut gname = gguf_name(name);
        if let Some(rest) = name.strip_prefix("model.layers.") {
            let suffix = rest.split_once('.').unwrap().1;
            gname = match (suffix, gemma) {
                ("post_attention_layernorm.weight", true) => {
                    gname.replace(suffix, "post_attention_norm.weight")
                }
                ("post_attention_layernorm.weight", false) => {
                    gname.replace(suffix, "ffn_norm.weight")
                }
                ("pre_feedforward_layernorm.weight", _) => gname.replace(suffix, "ffn_norm.weight"),
                ("post_feedforward_layernorm.weight", _) => {
                    gname.replace(suffix, "post_ffw_norm.weight")
                }
                _ => gname,
            };
        }
        let t = if gemma && name.ends_with("norm.weight") {
            (t + 1.0).unwrap()
        } else if arch == "llama" && name.ends_with("q_proj.weight") {
            permute_for_llama_cpp(t, get(c, "num_attention_heads"))
        } else if arch == "llama" && name.ends_with("k_proj.weight") {
            permute_for_llama_cpp(t, get(c, "num_key_value_heads"))
        } else {
            t.clone()
        };
        tensors.push((gname, quantize(&t, name, quant)));
    }
    let scaling = &c["rope_scaling"];
    if scaling["rope_type"] == "llama3" {
        let d = get(c, "hidden_size") / get(c, "num_attention_heads");
        let freqs = llama3_rope_freqs(scaling, c["rope_theta"].as_f64().unwrap(), d);
        let freqs = Tensor::from_vec(freqs, d / 2, &Device::Cpu).unwrap();
        tensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&freqs, GgmlDType::F32).unwrap(),
        ));
    }
    // A tied head is stored as its own (quantized) tensor, as the safetensors
    // loader quantizes its copy of the embedding.
    if !ck.tensors.contains_key("lm_head.weight") {
        let embed = &ck.tensors["model.embed_tokens.weight"];
        tensors.push((
            "output.weight".into(),
            quantize(embed, "lm_head.weight", quant),
        ));
    }
    let heads = get(c, "num_attention_heads");
    let d = c["head_dim"]
        .as_u64()
        .map_or(get(c, "hidden_size") / heads, |d| d as usize);
    let key = |k: &str| format!("{arch}.{k}");
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (
            key("block_count"),
            Value::U32(get(c, "num_hidden_layers") as u32),
        ),
        (key("context_length"), Value::U32(256)),
        (
            key("embedding_length"),
            Value::U32(get(c, "hidden_size") as u32),
        ),
        (
            key("feed_forward_length"),
            Value::U32(get(c, "intermediate_size") as u32),
        ),
        (key("attention.head_count"), Value::U32(heads as u32)),
        (
            key("attention.head_count_kv"),
            Value::U32(get(c, "num_key_value_heads") as u32),
        ),
        (key("attention.key_length"), Value::U32(d as u32)),
        (key("attention.value_length"), Value::U32(d as u32)),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(c["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
        (
            key("rope.freq_base"),
            Value::F32(c["rope_theta"].as_f64().unwrap() as f32),
        ),
        (
            key("rope.dimension_count"),
            Value::U32((d as f64 * c["partial_rotary_factor"].as_f64().unwrap_or(1.0)) as u32),
        ),
    ];
    if let Some(w) = c["sliding_window"].as_u64() {
        md.push((key("attention.sliding_window"), Value::U32(w as u32)));
    }
    for (hf_key, gguf_key) in [
        ("attn_logit_softcapping", "attn_logit_softcapping"),
        ("final_logit_softcapping", "final_logit_softcapping"),
    ] {
        if let Some(v) = c[hf_key].as_f64() {
            md.push((key(gguf_key), Value::F32(v as f32)));
        }
    }
    if scaling["type"] == "longrope" {
        for (key, name) in [
            ("short_factor", "rope_factors_short.weight"),
            ("long_factor", "rope_factors_long.weight"),
        ] {
            let f: Vec<f32> = scaling[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            let n = f.len();
            let t = Tensor::from_vec(f, n, &Device::Cpu).unwrap();
            tensors.push((name.into(), QTensor::quantize(&t, GgmlDType::F32).unwrap()));
        }
    }
    if scaling["rope_type"] == "linear" {
        md.push((key("rope.scaling.type"), Value::String("linear".into())));
        md.push((
            key("rope.scaling.factor"),
            Value::F32(scaling["factor"].as_f64().unwrap() as f32),
        ));
    }
    if scaling["type"] == "longrope" {
        // convert_hf_to_gguf.py's Phi3MiniModel.
        let (max, original) = (
            get(c, "max_position_embeddings"),
            get(c, "original_max_position_embeddings"),
        );
        let scale = max as f64 / original as f64;
        let attn = if scale > 1.0 {
            (1.0 + scale.ln() / (original as f64).ln()).sqrt()
        } else {
            1.0
        };
        md.retain(|(k, _)| k != &key("context_length"));
        md.push((key("context_length"), Value::U32(max as u32)));
        md.push((
            key("rope.scaling.original_context_length"),
            Value::U32(original as u32),
        ));
        md.push((key("rope.scaling.attn_factor"), Value::F32(attn as f32)));
    }
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = Cursor::new(Vec::new());
    gguf_file::write(&mut out, &md_refs, &t_refs).unwrap();
    out.into_inner()
}

/// llama.cpp's converter permutes the rows of llama's q and k weights so that
/// RoPE pairs neighbouring dimensions (`permute` in convert_hf_to_gguf.py).
fn permute_for_llama_cpp(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    t.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// The `rope_freqs` tensor llama.cpp's converter writes for llama3 scaling
/// (`LlamaModel.generate_extra_tensors`): per frequency, the divisor.
fn llama3_rope_freqs(scaling: &Json, base: f64, dim: usize) -> Vec<f32> {
    let f = |k: &str| scaling[k].as_f64().unwrap();
    let (factor, low, high) = (f("factor"), f("low_freq_factor"), f("high_freq_factor"));
    let old = f("original_max_position_embeddings");
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    (0..dim)
        .step_by(2)
        .map(|i| {
            let freq = 1.0 / base.powf(i as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let divisor = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            divisor as f32
        })
        .collect()
}

/// Matrices in `quant` where their rows are whole blocks (as the safetensors
/// loader does), everything else in f32.
fn quantize(t: &Tensor, name: &str, quant: GgmlDType) -> QTensor {
    let cols = *t.dims().last().unwrap();
    let matrix = t.rank() == 2 && !name.contains("embed_tokens");
    let dtype = if matrix && cols.is_multiple_of(quant.block_size()) {
        quant
    } else {
        GgmlDType::F32
    };
    QTensor::quantize(t, dtype).unwrap()
}

fn load_gguf(bytes: Vec<u8>) -> Llama {
    let mut cursor = Cursor::new(bytes);
    let content = Content::read(&mut cursor).unwrap();
    tenzro_models::arch::gguf::load(&content, &mut cursor, &Device::Cpu).unwrap()
}

/// Greedy tokens and first logits of two prompts decoded together.
fn run(model: &Llama) -> (Vec<Vec<f32>>, Vec<Vec<u32>>) {
    let prompts = prompts();
    let mut caches: Vec<KvCache> = Vec::new();
    let mut firsts = Vec::new();
    let mut tokens: Vec<Vec<u32>> = Vec::new();
    for p in &prompts {
        let mut cache = model.new_cache();
        let l = logits_vec(&model.prefill(p, &mut cache).unwrap()).unwrap();
        tokens.push(vec![argmax(&l)]);
        firsts.push(l);
        caches.push(cache);
    }
    for _ in 0..STEPS {
        let last: Vec<u32> = tokens.iter().map(|t| t[t.len() - 1]).collect();
        let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
        let logits = model
            .decode(&last, &mut refs)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (t, l) in tokens.iter_mut().zip(&logits) {
            t.push(argmax(l));
        }
    }
    (firsts, tokens)
}

fn check_gguf(name: &str, config: Json, arch: &str) {
    let ck = checkpoint(config, 0x1234_5678 ^ name.len() as u64);
    for (quant, tol) in [(GgmlDType::F32, 1e-4), (GgmlDType::Q8_0, 1e-4)] {
        let dir = TempDir::new(&format!("gguf-{name}-{quant:?}"));
        let hf_quant = (quant != GgmlDType::F32).then_some(quant);
        let (hf_logits, hf_tokens) = run(&load_ours(&ck, &dir.0, hf_quant));
        let (gg_logits, gg_tokens) = run(&load_gguf(write_gguf(&ck, arch, quant)));
        for (a, b) in hf_logits.iter().zip(&gg_logits) {
            let diff = max_abs_diff(a, b);
            // llama.cpp's converter permutes llama's q and k rows, so attention
            // sums a head's products in another order: last-bit differences,
            // which an 8-bit activation rounding downstream can turn into one
            // quantisation step (measured: 0.032 on logits up to 3.7, 0.2 % on
            // average). A loader mistake moves logits by their own size.
            let tol = match arch == "llama" && quant != GgmlDType::F32 {
                true => 0.02 * a.iter().fold(0f32, |m, x| m.max(x.abs())),
                false => tol,
            };
            assert!(
                diff <= tol,
                "{name} {quant:?}: GGUF logits differ by {diff}"
            );
        }
        assert_eq!(hf_tokens, gg_tokens, "{name} {quant:?}: GGUF greedy tokens");
    }
}

#[test]
fn gguf_qwen3_loads_like_its_checkpoint() {
    check_gguf("qwen3", qwen3_config(), "qwen3");
}

/// A Llama 3.x GGUF as llama.cpp writes it: `general.architecture` llama, q and k
/// rows permuted, the llama3 scaling as a `rope_freqs` tensor; and a linear one
/// as `llama.rope.scaling.*` keys.
#[test]
fn gguf_llama3_rope_freqs_and_linear_scaling_load_like_their_checkpoints() {
    check_gguf("llama3", llama3_config(), "llama");
    let linear = patched(
        llama3_config(),
        json!({"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    );
    check_gguf("llama-linear", linear, "llama");
}

#[test]
fn gguf_refused_rope_scaling_is_named() {
    let ck = checkpoint(llama3_config(), 5);
    let mut cursor = Cursor::new(write_gguf(&ck, "llama", GgmlDType::F32));
    let mut content = Content::read(&mut cursor).unwrap();
    // The metadata as read, with the type a Qwen 2.5 long-context GGUF has.
    content.metadata.insert(
        "llama.rope.scaling.type".into(),
        Value::String("yarn".into()),
    );
    let err = tenzro_models::arch::gguf::load(&content, &mut cursor, &Device::Cpu).unwrap_err();
    assert!(
        err.to_string()
            .contains("RoPE scaling `yarn` is not supported"),
        "{err}"
    );
}

#[test]
fn gguf_gemma2_loads_like_its_checkpoint() {
    check_gguf("gemma2", gemma2_config(), "gemma2");
}

#[test]
fn gguf_gemma3_loads_like_its_checkpoint() {
    // GGUF gemma3 uses llama.cpp's fixed pattern (five local layers per global one).
    let config = patched(
        gemma3_config(),
        json!({"sliding_window_pattern": 6, "num_hidden_layers": 6}),
    );
    check_gguf("gemma3", config, "gemma3");
}

#[test]
fn gguf_phi3_splits_fused_tensors_byte_for_byte() {
    check_gguf("phi3", phi3_config(), "phi3");
}

#[test]
fn gguf_unknown_architecture_is_refused_naming_it() {
    let ck = checkpoint(qwen3_config(), 5);
    let bytes = write_gguf(&ck, "falcon", GgmlDType::F32);
    let mut cursor = Cursor::new(bytes);
    let content = Content::read(&mut cursor).unwrap();
    let err = tenzro_models::arch::gguf::load(&content, &mut cursor, &Device::Cpu).unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("GGUF architecture `falcon` is not supported"),
        "{err}"
    );
    assert!(err.contains("qwen3, gemma2, gemma3, phi3"), "{err}");
}

/// The engine prefills long prompts in chunks: a windowed model must give the
/// same logits as from one pass.
#[test]
fn windowed_models_prefill_in_chunks_alike() {
    for (name, config) in [("mistral", mistral_config()), ("gemma3", gemma3_config())] {
        let ck = checkpoint(config, 21);
        let dir = TempDir::new(&format!("chunks-{name}"));
        let model = load_ours(&ck, &dir.0, None);
        let prompt: Vec<u32> = (0..17u32).map(|i| (i * 11 + 5) % VOCAB as u32).collect();
        let mut whole = model.new_cache();
        let expected = logits_vec(&model.prefill(&prompt, &mut whole).unwrap()).unwrap();
        for split in [1, 4, 9, 16] {
            let mut cache = model.new_cache();
            model.prefill(&prompt[..split], &mut cache).unwrap();
            let got = logits_vec(&model.prefill(&prompt[split..], &mut cache).unwrap()).unwrap();
            let diff = max_abs_diff(&expected, &got);
            assert!(
                diff < 1e-4,
                "{name}: chunks split at {split} differ by {diff}"
            );
        }
    }
}
