"""Every new architecture downloaded from a hub and served through the OpenAI SDK.

For each of qwen3, mistral, gemma2, gemma3 and phi3, and a Llama 3.x-style llama
(llama3 RoPE scaling), the tiny random checkpoint of test_architectures.py
(tiny_checkpoints.py), sharded in two with its index, is served by a fake hub
(fake_hub.py). One provider per architecture, started one
after another, names it `hf://owner/tiny-TYPE` with `HF_ENDPOINT` at the fake hub
and `HF_HOME` in a temp dir, and also serves the same files from a local
directory. Checked:
- the provider downloads every shard at start into the Hugging Face cache layout;
- greedy completions (temperature 0) through the SDK are the same text, tokens
  and logprobs from the downloaded copy as from the local one (and not one token
  repeated);
- `/v1/models` lists both with the architecture (`model_type`) and the weight
  digest of the shards.
"""
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from conftest import Server, binary, free_port
from fake_hub import FakeHub, shard_names, weights_digest
from tiny_checkpoints import CONFIGS, checkpoint_files, write_files

SHARDS = 2
PROMPTS = ["hello there, how are you today?", "tell me about the weather in paris"]


def commit(seed: int) -> str:
    return f"{seed + 1:x}" * 40


@pytest.fixture(scope="module")
def hub():
    repos = {f"owner/tiny-{t}": (commit(seed), checkpoint_files(t, seed, shards=SHARDS))
             for seed, t in enumerate(CONFIGS)}
    server = FakeHub(repos)
    yield server
    server.stop()


@pytest.fixture
def tmp():
    path = Path(tempfile.mkdtemp(prefix="tenzro-hub-arch-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start(tmp: Path, model_type: str, hub: FakeHub) -> Server:
    """A provider serving `local-TYPE` from a directory and `hub-TYPE` from the hub."""
    write_files(tmp / "models" / "local", hub.repos[f"owner/tiny-{model_type}"][1])
    toml = ['listen = "127.0.0.1:0"', f'models_dir = "{tmp / "models"}"']
    for model_id, path in [(f"local-{model_type}", "local"), (f"hub-{model_type}", f"hf://owner/tiny-{model_type}")]:
        toml += ["[[chat_models]]", f'id = "{model_id}"', f'path = "{path}"',
                 'price_per_token = "1"', "parameters = 1000000"]
    (tmp / "provider.toml").write_text("\n".join(toml) + "\n")
    port = free_port()
    return Server([str(binary("tenzro-provider")), "--config", str(tmp / "provider.toml"),
                   "--listen", f"127.0.0.1:{port}", "--key-path", str(tmp / "provider.key")], port,
                  env={"TENZRO_VOUCHERS_PATH": str(tmp / "vouchers.json"), "HF_HOME": str(tmp / "hf"),
                       "HF_ENDPOINT": hub.url})


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_a_downloaded_checkpoint_answers_as_the_local_one(hub, tmp, model_type):
    from openai import OpenAI

    repo = f"owner/tiny-{model_type}"
    rev, files = hub.repos[repo]
    before = len(hub.file_gets())
    server = start(tmp, model_type, hub)
    try:
        fetched = hub.file_gets()[before:]
        for name in shard_names(SHARDS):
            assert f"/{repo}/resolve/{rev}/{name}" in fetched or f"/{repo}/resolve/main/{name}" in fetched, fetched
        snapshot = tmp / "hf" / "hub" / f"models--owner--tiny-{model_type}" / "snapshots" / rev
        for name, data in files.items():
            assert (snapshot / name).read_bytes() == data, name

        client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        for prompt in PROMPTS:
            answers = {}
            for where in ("local", "hub"):
                reply = client.chat.completions.create(
                    model=f"{where}-{model_type}", max_tokens=12, temperature=0, logprobs=True,
                    messages=[{"role": "user", "content": prompt}])
                assert reply.choices[0].finish_reason in ("stop", "length")
                assert 1 <= reply.usage.completion_tokens <= 12
                answers[where] = (reply.choices[0].message.content,
                                  [(t.token, t.logprob) for t in reply.choices[0].logprobs.content])
            (text, tokens), (local_text, local_tokens) = answers["hub"], answers["local"]
            assert text == local_text, prompt
            assert [t for t, _ in tokens] == [t for t, _ in local_tokens], prompt
            assert [lp for _, lp in tokens] == pytest.approx([lp for _, lp in local_tokens], abs=1e-4)
            # A greedy run that repeated one token would compare little.
            assert len({t for t, _ in tokens}) > 3, tokens

        cards = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]}
        for where in ("local", "hub"):
            card = cards[f"{where}-{model_type}"]
            assert card["architecture"] == model_type
            assert card["format"] == "safetensors"
            assert card["weight_sha256"] == weights_digest(files)
    finally:
        server.stop()
