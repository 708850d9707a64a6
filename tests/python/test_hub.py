"""`hf://` checkpoints through the Hugging Face cache, with `huggingface_hub` itself.

A fake hub (a thread in this process) speaks the Hub's resolve endpoint (HEAD/GET,
`X-Repo-Commit`, `ETag`/`X-Linked-Etag`, `X-Linked-Size`, Range) and its model API
(`/api/models/{repo}/revision/{rev}?blobs=true`) and serves tiny random checkpoints
sharded in two. Checked here:
- a cache that `huggingface_hub.hf_hub_download` filled is served by the provider
  without downloading a file;
- a checkpoint the provider downloaded is read by `huggingface_hub` from the cache
  (`local_files_only`, `scan_cache_dir`), and served through the OpenAI SDK;
- `HF_HUB_OFFLINE=1` with an empty cache stops the provider, naming what is missing.

Another architecture plugs in by adding its `config.json` fields and tensors to
`CHECKPOINTS` (test_architectures.py's `tensors()` has every family's names).
"""
import hashlib
import json
import random
import shutil
import struct
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, Server, binary, free_port

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
SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]


def tokenizer_json() -> str:
    vocab = {(SPECIALS[i] if i < len(SPECIALS) else f"w{i}"): i for i in range(VOCAB)}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, t in enumerate(SPECIALS)]
    return json.dumps({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                       "normalizer": None, "pre_tokenizer": {"type": "Whitespace"},
                       "post_processor": None, "decoder": None,
                       "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}})


def safetensors(named: dict) -> bytes:
    """u64 header length, JSON header, raw little-endian f32."""
    header, blobs, offset = {}, [], 0
    for name in sorted(named):
        shape, values = named[name]
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


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
    names = sorted(named)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    files = {
        "config.json": json.dumps({**BASE, "model_type": model_type}).encode(),
        "generation_config.json": b'{"eos_token_id": [2, 4]}',
        "tokenizer.json": tokenizer_json().encode(),
        "tokenizer_config.json": json.dumps({"bos_token": "<s>", "eos_token": "<|im_end|>",
                                             "chat_template": TEMPLATE}).encode(),
        "model.safetensors.index.json": json.dumps({"metadata": {}, "weight_map": {
            n: SHARDS[k] for k, half in enumerate(halves) for n in half}}).encode(),
        "README.md": b"# tiny\n",
    }
    for shard, half in zip(SHARDS, halves):
        files[shard] = safetensors({n: named[n] for n in half})
    return files


def weights_digest(files: dict) -> str:
    """The provider's digest: `sha256sum` of the shards piped to sha256sum."""
    listing = "".join(f"{hashlib.sha256(files[s]).hexdigest()}  {s}\n" for s in SHARDS)
    return hashlib.sha256(listing.encode()).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name: str) -> bool:
    return name.endswith(".safetensors")


class FakeHub:
    """repos: "owner/name" -> (commit, {file: bytes}). `log` holds (method, path)."""

    def __init__(self, repos: dict):
        self.repos, self.log = repos, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.answer(self, head=True)

            def do_GET(self):
                hub.answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def file_gets(self) -> list:
        return [p for m, p in self.log if m == "GET" and "/resolve/" in p]

    def repo(self, repo_id: str, revision: str):
        entry = self.repos.get(repo_id)
        return entry if entry and revision in ("main", entry[0]) else None

    def answer(self, req, head: bool):
        self.log.append((req.command, req.path))
        path = req.path.split("?")[0]
        if path.startswith("/api/models/") and "/revision/" in path:
            repo_id, revision = path[len("/api/models/"):].split("/revision/", 1)
            entry = self.repo(repo_id, revision)
            if entry:
                commit, files = entry
                siblings = []
                for name, data in files.items():
                    s = {"rfilename": name, "blobId": git_sha1(data), "size": len(data)}
                    if is_lfs(name):
                        s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                    "pointerSize": 132}
                    siblings.append(s)
                return self.send(req, 200, {"Content-Type": "application/json"},
                                 json.dumps({"id": repo_id, "sha": commit, "siblings": siblings}).encode(), head)
        elif "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            revision, _, name = rest.partition("/")
            entry = self.repo(repo_id, revision)
            if entry and name in entry[1]:
                commit, files = entry
                data = files[name]
                etag = hashlib.sha256(data).hexdigest() if is_lfs(name) else git_sha1(data)
                headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
                if is_lfs(name):
                    headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
                status, body = 200, data
                rng = req.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-") and not head:
                    start = int(rng[len("bytes="):-1])
                    status, body = 206, data[start:]
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self.send(req, status, headers, body, head)
        self.send(req, 404, {"X-Error-Code": "EntryNotFound"}, b"Entry not found", head)

    @staticmethod
    def send(req, status, headers, body, head):
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if not head:
            req.wfile.write(body)


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
