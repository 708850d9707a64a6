"""The provider serves every architecture the engine runs, through the OpenAI SDK.

Each model is a tiny random checkpoint written here (config.json, model.safetensors
in f32, a chat template) with the tokenizer of the default embedding model
(all-minilm-l6-v2's tokenizer.json, from scripts/fetch-models); one provider serves
them all. Random weights say nothing sensible, so the checks are about serving:
every model answers, greedy streaming and non-streaming agree, usage adds up, and
/v1/models lists them. That the math matches each architecture's reference is
models/tests/architectures.rs's job.
"""
import json
import random
import shutil
import struct
import tempfile
from pathlib import Path

import httpx
import pytest

from conftest import MODELS_DIR, Server, binary, free_port

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
    "tie_word_embeddings": True,
    "eos_token_id": 102,
}

CONFIGS = {
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


def write_safetensors(path: Path, named: dict) -> None:
    """The safetensors format: u64 header length, JSON header, raw little-endian f32."""
    header, blobs, offset = {}, [], 0
    for name in sorted(named):
        shape, values = named[name]
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for blob in blobs:
            out.write(blob)


def write_checkpoint(dir: Path, model_type: str, seed: int) -> None:
    dir.mkdir(parents=True)
    config = {**BASE, "model_type": model_type, **CONFIGS[model_type]}
    (dir / "config.json").write_text(json.dumps(config))
    write_safetensors(dir / "model.safetensors", tensors(model_type, config, random.Random(seed)))
    shutil.copy(TOKENIZER, dir / "tokenizer.json")
    (dir / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": TEMPLATE, "eos_token": "[SEP]", "bos_token": "[CLS]"}))


@pytest.fixture(scope="module")
def served():
    """One provider serving a tiny checkpoint of each architecture; yields (url, ids)."""
    if not TOKENIZER.exists():
        raise RuntimeError(f"{TOKENIZER} is missing: run scripts/fetch-models first")
    tmp = Path(tempfile.mkdtemp(prefix="tenzro-arch-"))
    ids = []
    toml = [f'listen = "127.0.0.1:0"', f'models_dir = "{tmp}"']
    for seed, model_type in enumerate(CONFIGS):
        model_id = f"tiny-{model_type.replace('_', '-')}"
        write_checkpoint(tmp / model_type, model_type, seed)
        toml += ["[[chat_models]]", f'id = "{model_id}"', f'path = "{model_type}"',
                 'price_per_token = "1"', "parameters = 1000000"]
        ids.append(model_id)
    (tmp / "provider.toml").write_text("\n".join(toml) + "\n")
    port = free_port()
    server = Server([str(binary("tenzro-provider")), "--config", str(tmp / "provider.toml"),
                     "--listen", f"127.0.0.1:{port}", "--key-path", str(tmp / "provider.key")], port,
                    env={"TENZRO_VOUCHERS_PATH": str(tmp / "vouchers.json")})
    try:
        yield server.url, ids
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def test_models_lists_every_architecture(served):
    url, ids = served
    listed = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=30).json()["data"]}
    assert set(ids) <= listed


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_each_architecture_chats_through_the_sdk(served, model_type):
    from openai import OpenAI

    url, _ = served
    model = f"tiny-{model_type.replace('_', '-')}"
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "hello there, how are you today?"}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage.prompt_tokens > 5
    assert 1 <= whole.usage.completion_tokens <= 12

    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    pieces, usage = [], None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.delta.content or "")
    # Greedy decoding is the same streamed or not.
    assert "".join(pieces) == (choice.message.content or "")
    assert usage.completion_tokens == whole.usage.completion_tokens
