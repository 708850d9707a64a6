//! A tiny random llama checkpoint, sharded in two, with a word-level tokenizer and a
//! ChatML template: made here so the tests need no network and no fetched model.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::hub::{HubFile, Repo};

pub const VOCAB: usize = 64;

pub fn config_json() -> String {
    serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "vocab_size": VOCAB,
        "max_position_embeddings": 256,
        "tie_word_embeddings": false,
        "hidden_act": "silu",
        "bos_token_id": 1,
        "eos_token_id": 2
    })
    .to_string()
}

/// A word-level vocabulary: specials, then `w5`..`w63`.
pub fn tokenizer_json() -> String {
    let specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"];
    let mut vocab = serde_json::Map::new();
    for id in 0..VOCAB {
        let token = specials
            .get(id)
            .map_or(format!("w{id}"), |s| (*s).to_owned());
        vocab.insert(token, id.into());
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(id, content)| {
            serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
    .to_string()
}

pub fn tokenizer_config_json() -> String {
    serde_json::json!({
        "bos_token": "<s>", "eos_token": "<|im_end|>",
        "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }} {{ m.content }}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant {% endif %}"
    })
    .to_string()
}

/// The weights, by name, as random f32 tensors of the config's shapes.
fn tensors() -> Vec<(String, Tensor)> {
    let (h, f, v, layers, q, kv) = (32, 64, VOCAB, 2, 32, 16);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![v, h]),
        ("model.norm.weight".into(), vec![h]),
        ("lm_head.weight".into(), vec![v, h]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        shapes.extend([
            (format!("{p}.self_attn.q_proj.weight"), vec![q, h]),
            (format!("{p}.self_attn.k_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.v_proj.weight"), vec![kv, h]),
            (format!("{p}.self_attn.o_proj.weight"), vec![h, q]),
            (format!("{p}.mlp.gate_proj.weight"), vec![f, h]),
            (format!("{p}.mlp.up_proj.weight"), vec![f, h]),
            (format!("{p}.mlp.down_proj.weight"), vec![h, f]),
            (format!("{p}.input_layernorm.weight"), vec![h]),
            (format!("{p}.post_attention_layernorm.weight"), vec![h]),
        ]);
    }
    shapes
        .into_iter()
        .map(|(name, shape)| {
            let t = if shape.len() == 1 {
                Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()
            } else {
                Tensor::randn(0f32, 0.2, shape, &Device::Cpu).unwrap()
            };
            (name, t)
        })
        .collect()
}

fn safetensors_bytes(tensors: &[(String, Tensor)], dir: &std::path::Path, name: &str) -> Vec<u8> {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    let path = dir.join(name);
    candle_core::safetensors::save(&map, &path).unwrap();
    std::fs::read(&path).unwrap()
}

/// The repository `owner/tiny`: config, generation config, tokenizer files (no
/// `special_tokens_map.json`: optional), an index and two shards, and a README the
/// downloader must not fetch.
pub fn tiny_repo(commit: &str) -> Repo {
    // One scratch directory per call: the tests run in parallel threads of one process
    // and each removes its own directory when done.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let scratch = std::env::temp_dir().join(format!(
        "tenzro-tiny-{}-{call}-{commit}",
        std::process::id()
    ));
    std::fs::create_dir_all(&scratch).unwrap();
    let tensors = tensors();
    let (first, second) = tensors.split_at(tensors.len() / 2);
    let shard_names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    let mut weight_map = serde_json::Map::new();
    for (part, name) in [first, second].iter().zip(shard_names) {
        for (tensor, _) in part.iter() {
            weight_map.insert(tensor.clone(), name.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    let mut files = BTreeMap::new();
    let mut add = |name: &str, bytes: Vec<u8>, lfs: bool| {
        files.insert(
            name.to_owned(),
            HubFile {
                bytes: Arc::new(bytes),
                lfs,
            },
        );
    };
    add("config.json", config_json().into_bytes(), false);
    add(
        "generation_config.json",
        br#"{"eos_token_id": [2, 4]}"#.to_vec(),
        false,
    );
    add("tokenizer.json", tokenizer_json().into_bytes(), false);
    add(
        "tokenizer_config.json",
        tokenizer_config_json().into_bytes(),
        false,
    );
    add(
        "model.safetensors.index.json",
        index.to_string().into_bytes(),
        false,
    );
    add("README.md", b"# tiny\n".to_vec(), false);
    add(
        shard_names[0],
        safetensors_bytes(first, &scratch, shard_names[0]),
        true,
    );
    add(
        shard_names[1],
        safetensors_bytes(second, &scratch, shard_names[1]),
        true,
    );
    let _ = std::fs::remove_dir_all(&scratch);
    Repo {
        commit: commit.to_owned(),
        files,
    }
}

/// `owner/tiny-GGUF`: a few quantisations (the bytes are not a model: the
/// downloader does not parse them).
pub fn gguf_repo(commit: &str) -> Repo {
    let mut files = BTreeMap::new();
    for (i, name) in [
        "tiny-Q4_K_M.gguf",
        "tiny-Q4_K_S.gguf",
        "tiny-Q8_0.gguf",
        "mmproj-tiny-Q8_0.gguf",
    ]
    .iter()
    .enumerate()
    {
        let bytes: Vec<u8> = (0..200_000u32)
            .map(|x| (x.wrapping_mul(31 + i as u32) >> 3) as u8)
            .collect();
        files.insert(
            (*name).to_owned(),
            HubFile {
                bytes: Arc::new(bytes),
                lfs: true,
            },
        );
    }
    files.insert(
        "README.md".into(),
        HubFile {
            bytes: Arc::new(b"gguf".to_vec()),
            lfs: false,
        },
    );
    Repo {
        commit: commit.to_owned(),
        files,
    }
}
