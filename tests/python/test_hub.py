"""`hf://` checkpoints through the Hugging Face cache, with `huggingface_hub` itself.

A fake hub (fake_hub.py: the Hub's resolve endpoint and model API, in a thread of
this process) serves tiny random checkpoints sharded in two. Checked here:
- a cache that `huggingface_hub.hf_hub_download` filled is served by the provider
  without downloading a file;
- a checkpoint the provider downloaded is read by `huggingface_hub` from the cache
  (`local_files_only`, `scan_cache_dir`), and served through the OpenAI SDK;
- `HF_HUB_OFFLINE=1` with an empty cache stops the provider, naming what is missing.

The other architectures are downloaded and served in test_hub_architectures.py.
"""
import json
import random
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, Server, binary, free_port
from fake_hub import FakeHub, shard, weights_digest

hf = pytest.importorskip("huggingface_hub")

VOCAB = 64
SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m.role }} {{ m.content }}<|im_end|>{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
BASE = {
    "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "vocab_size": VOCAB, "max_position_embeddings": 256,
    "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 4,
}
# model_type -> whether q, k and v have biases.
CHECKPOINTS = {"llama": False, "qwen2": True}


def tokenizer_json() -> str:
    vocab = {(SPECIALS[i] if i < len(SPECIALS) else f"w{i}"): i for i in range(VOCAB)}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(SPECIALS)]
    return json.dumps({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                       "normalizer": None, "pre_tokenizer": {"type": "Whitespace"},
                       "post_processor": None, "decoder": None,
                       "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}})


def checkpoint(model_type: str, seed: int) -> dict:
    """File name -> bytes: config, tokenizer files, an index and two shards, a README."""
    rng = random.Random(seed)
    h, f, v = BASE["hidden_size"], BASE["intermediate_size"], VOCAB
    q, kv = h, BASE["num_key_value_heads"] * (h // BASE["num_attention_heads"])
    shapes = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h], "lm_head.weight": [v, h]}
    for i in range(BASE["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": [q, h], p + "self_attn.k_proj.weight": [kv, h],
                       p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, q],
                       p + "mlp.gate_proj.weight": [f, h], p + "mlp.up_proj.weight": [f, h],
                       p + "mlp.down_proj.weight": [h, f], p + "input_layernorm.weight": [h],
                       p + "post_attention_layernorm.weight": [h]})
        if CHECKPOINTS[model_type]:
            shapes.update({p + "self_attn.q_proj.bias": [q], p + "self_attn.k_proj.bias": [kv],
                           p + "self_attn.v_proj.bias": [kv]})
    named = {}
    for name, shape in shapes.items():
        count = 1
        for s in shape:
            count *= s
        norm = len(shape) == 1 and "bias" not in name
        named[name] = (shape, [1.0 if norm else 0.4 * (2 * rng.random() - 1) for _ in range(count)])
    files = {
        "config.json": json.dumps({**BASE, "model_type": model_type}).encode(),
        "generation_config.json": b'{"eos_token_id": [2, 4]}',
        "tokenizer.json": tokenizer_json().encode(),
        "tokenizer_config.json": json.dumps({"bos_token": "<s>", "eos_token": "<|im_end|>",
                                             "chat_template": TEMPLATE}).encode(),
        "README.md": b"# tiny\n",
        **shard(named, 2),
    }
    return files


COMMITS = {"llama": "a" * 40, "qwen2": "b" * 40}


@pytest.fixture(scope="module")
def hub():
    repos = {f"owner/tiny-{t}": (COMMITS[t], checkpoint(t, seed)) for seed, t in enumerate(CHECKPOINTS)}
    server = FakeHub(repos)
    yield server
    server.stop()


def start(tmp: Path, model_type: str, env: dict) -> Server:
    (tmp / "provider.toml").write_text("\n".join([
        'listen = "127.0.0.1:0"', f'models_dir = "{tmp / "models"}"',
        "[[chat_models]]", f'id = "tiny-{model_type}"', f'path = "hf://owner/tiny-{model_type}"',
        'price_per_token = "1"', "parameters = 1000000"]) + "\n")
    port = free_port()
    return Server([str(binary("tenzro-provider")), "--config", str(tmp / "provider.toml"),
                   "--listen", f"127.0.0.1:{port}", "--key-path", str(tmp / "provider.key")], port,
                  env={"TENZRO_VOUCHERS_PATH": str(tmp / "vouchers.json"), **env})


def chat_and_list(server: Server, model_type: str, files: dict) -> None:
    from openai import OpenAI

    model = f"tiny-{model_type}"
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model=model, max_tokens=6, temperature=0,
                                           messages=[{"role": "user", "content": "w7 w8 w9"}])
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 3 and 1 <= reply.usage.completion_tokens <= 6
    card = next(m for m in httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"] if m["id"] == model)
    assert card["architecture"] == model_type
    assert card["format"] == "safetensors"
    assert card["weight_sha256"] == weights_digest(files)


@pytest.fixture
def tmp():
    path = Path(tempfile.mkdtemp(prefix="tenzro-hub-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_cache_filled_by_huggingface_hub_is_served_without_a_download(hub, tmp):
    commit, files = hub.repos["owner/tiny-llama"]
    cache = tmp / "hf" / "hub"
    for name in files:
        if name != "README.md":
            hf.hf_hub_download("owner/tiny-llama", name, cache_dir=cache, endpoint=hub.url)
    assert (cache / "models--owner--tiny-llama" / "refs" / "main").read_text() == commit
    before = len(hub.file_gets())
    server = start(tmp, "llama", {"HF_HOME": str(tmp / "hf"), "HF_ENDPOINT": hub.url})
    try:
        assert hub.file_gets()[before:] == [], "the provider downloaded what the cache had"
        chat_and_list(server, "llama", files)
    finally:
        server.stop()


def test_a_checkpoint_the_provider_downloaded_is_read_by_huggingface_hub(hub, tmp):
    commit, files = hub.repos["owner/tiny-qwen2"]
    cache = tmp / "hf" / "hub"
    server = start(tmp, "qwen2", {"HF_HOME": str(tmp / "hf"), "HF_ENDPOINT": hub.url})
    try:
        chat_and_list(server, "qwen2", files)
    finally:
        server.stop()
    for name, data in files.items():
        if name == "README.md":
            continue
        path = hf.hf_hub_download("owner/tiny-qwen2", name, cache_dir=cache, local_files_only=True)
        assert Path(path).read_bytes() == data, name
    info = hf.scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    (repo,) = info.repos
    assert repo.repo_id == "owner/tiny-qwen2"
    assert [r.commit_hash for r in repo.revisions] == [commit]
    assert next(iter(repo.revisions)).refs == frozenset({"main"})


def test_offline_with_an_empty_cache_names_what_is_missing(hub, tmp):
    with pytest.raises(RuntimeError, match="exited"):
        start(tmp, "llama", {"HF_HOME": str(tmp / "hf"), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "1"})
    logs = sorted((ROOT / "target").glob("tenzro-provider-*.log"), key=lambda p: p.stat().st_mtime)
    text = logs[-1].read_text()
    assert "HF_HUB_OFFLINE" in text and "refs/main" in text, text[-2000:]
