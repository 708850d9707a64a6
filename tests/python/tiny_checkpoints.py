"""Tiny random checkpoints of every architecture the engine runs, for tests.

Each is a config.json (`CONFIGS` over `BASE`), f32 weights under the Hugging Face
names of its family, a chat template, and the tokenizer of the default embedding
model (all-minilm-l6-v2's tokenizer.json, from scripts/fetch-models). Random
weights say nothing sensible: tests check serving, not language. The output head
is untied (its own `lm_head.weight`): with this vocabulary a head tied to the
random embeddings decodes one token over and over, which would compare little.
"""
import json
import random
from pathlib import Path

from conftest import MODELS_DIR
from fake_hub import safetensors, shard

TOKENIZER = MODELS_DIR / "all-minilm-l6-v2" / "tokenizer.json"
VOCAB = 30522
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)

BASE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "vocab_size": VOCAB,
    "max_position_embeddings": 512,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "eos_token_id": 102,
}

# model_type -> its config.json fields beyond BASE. `llama` is Llama 3.2-style:
# RoPE base 500 000 with the llama3 frequency scaling every Llama 3.x config has.
CONFIGS = {
    "llama": {"rope_theta": 500000.0,
              "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
    "qwen3": {"head_dim": 16, "attention_bias": False, "use_sliding_window": False},
    "mistral": {"sliding_window": 8},
    "gemma2": {"head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "hidden_act": "gelu_pytorch_tanh",
               "query_pre_attn_scalar": 16, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0, "sliding_window": 8},
    "gemma3_text": {"head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "hidden_act": None,
                    "query_pre_attn_scalar": 16, "sliding_window": 8, "sliding_window_pattern": 2,
                    "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0},
    "phi3": {"sliding_window": 16, "tie_word_embeddings": False},
}


def require_tokenizer() -> None:
    if not TOKENIZER.exists():
        raise RuntimeError(f"{TOKENIZER} is missing: run scripts/fetch-models first")


def config(model_type: str) -> dict:
    return {**BASE, "model_type": model_type, **CONFIGS[model_type]}


def tensors(model_type: str, config: dict, rng: random.Random) -> dict:
    """Name -> (shape, values) under the Hugging Face names of `model_type`."""
    h, f, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    d = config.get("head_dim", h // heads)
    gemma = model_type.startswith("gemma")
    out = {}

    def put(name, shape, scale, offset=0.0):
        count = 1
        for s in shape:
            count *= s
        out[name] = (shape, [offset + scale * (2 * rng.random() - 1) for _ in range(count)])

    norm = 0.0 if gemma else 1.0
    put("model.embed_tokens.weight", [VOCAB, h], 1.0)
    put("model.norm.weight", [h], 0.1, norm)
    if not config["tie_word_embeddings"]:
        put("lm_head.weight", [VOCAB, h], 0.5)
    for i in range(n):
        p = f"model.layers.{i}."
        if model_type == "phi3":
            put(p + "self_attn.qkv_proj.weight", [(heads + 2 * kv) * d, h], h ** -0.5)
            put(p + "mlp.gate_up_proj.weight", [2 * f, h], h ** -0.5)
        else:
            put(p + "self_attn.q_proj.weight", [heads * d, h], h ** -0.5)
            put(p + "self_attn.k_proj.weight", [kv * d, h], h ** -0.5)
            put(p + "self_attn.v_proj.weight", [kv * d, h], h ** -0.5)
            put(p + "mlp.gate_proj.weight", [f, h], h ** -0.5)
            put(p + "mlp.up_proj.weight", [f, h], h ** -0.5)
        put(p + "self_attn.o_proj.weight", [h, heads * d], (heads * d) ** -0.5)
        put(p + "mlp.down_proj.weight", [h, f], f ** -0.5)
        put(p + "input_layernorm.weight", [h], 0.1, norm)
        put(p + "post_attention_layernorm.weight", [h], 0.1, norm)
        if gemma:
            put(p + "pre_feedforward_layernorm.weight", [h], 0.1)
            put(p + "post_feedforward_layernorm.weight", [h], 0.1)
        if model_type in ("qwen3", "gemma3_text"):
            put(p + "self_attn.q_norm.weight", [d], 0.1, norm)
            put(p + "self_attn.k_norm.weight", [d], 0.1, norm)
    return out


def checkpoint_files(model_type: str, seed: int, shards: int = 1) -> dict:
    """File name -> bytes of a whole checkpoint: config, tokenizer files, and the
    weights in `model.safetensors` (shards == 1) or in shards with their index."""
    require_tokenizer()
    cfg = config(model_type)
    named = tensors(model_type, cfg, random.Random(seed))
    files = {
        "config.json": json.dumps(cfg).encode(),
        "tokenizer.json": TOKENIZER.read_bytes(),
        "tokenizer_config.json": json.dumps(
            {"chat_template": TEMPLATE, "eos_token": "[SEP]", "bos_token": "[CLS]"}).encode(),
    }
    if shards == 1:
        files["model.safetensors"] = safetensors(named)
    else:
        files.update(shard(named, shards))
    return files


def write_files(dir: Path, files: dict) -> None:
    dir.mkdir(parents=True)
    for name, data in files.items():
        (dir / name).write_bytes(data)


def write_checkpoint(dir: Path, model_type: str, seed: int) -> None:
    write_files(dir, checkpoint_files(model_type, seed))
