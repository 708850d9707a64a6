"""The provider serves every architecture the engine runs, through the OpenAI SDK.

Each model is a tiny random checkpoint (tiny_checkpoints.py: config.json,
model.safetensors in f32, a chat template, the default embedding model's
tokenizer) written to a local directory; one provider serves them all. Random
weights say nothing sensible, so the checks are about serving: every model
answers, greedy streaming and non-streaming agree, usage adds up, and /v1/models
lists them. test_hub_architectures.py serves the same checkpoints downloaded. That the math matches each architecture's reference is
models/tests/architectures.rs's job.
"""
import shutil
import tempfile
from pathlib import Path

import httpx
import pytest

from conftest import Server, binary, free_port
from tiny_checkpoints import CONFIGS, require_tokenizer, write_checkpoint


@pytest.fixture(scope="module")
def served():
    """One provider serving a tiny checkpoint of each architecture; yields (url, ids)."""
    require_tokenizer()
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
