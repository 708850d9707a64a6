"""End to end: the real provider behind the real gateway, driven by the OpenAI SDK.

Starts `tenzro-provider` and `tenzro-gateway` on free localhost ports, makes a key
with `tenzro-gateway keys create`, and checks what an app developer sees: chat
(stream and not) with costs, embeddings, the models list, and errors raised as the
SDK's own exception classes.

The provider registers itself with `--gateway URL` when its binary has that flag;
otherwise the gateway's config lists it as a static provider, so this test runs
either way.
"""
import json
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest

import conftest
from conftest import CHAT_MODEL, EMBED_MODEL, MODELS_DIR, ROOT, Server, binary, free_port

ADMIN = "e2e-admin-token"


def provider_has_gateway_flag() -> bool:
    out = subprocess.run([str(binary("tenzro-provider")), "--help"], capture_output=True, text=True, timeout=30)
    return "--gateway" in out.stdout


def gateway_config(data_dir: Path, provider_url: str | None) -> str:
    return conftest.gateway_config(data_dir, provider_url, admin_token=ADMIN, first_byte_timeout_ms=120000)


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="tenzro-gw-e2e-"))
    gw_port = free_port()
    gw_url = f"http://127.0.0.1:{gw_port}"
    registers = provider_has_gateway_flag()
    prov_port = free_port()
    prov_url = f"http://127.0.0.1:{prov_port}"
    cfg = tmp / "gateway.toml"
    cfg.write_text(gateway_config(tmp / "data", None if registers else prov_url))

    key = subprocess.run(
        [str(binary("tenzro-gateway")), "keys", "create", "--config", str(cfg), "--balance", "1000"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout.strip()
    assert key.startswith("tz-")

    gateway = Server([str(binary("tenzro-gateway")), "--config", str(cfg), "--listen", f"127.0.0.1:{gw_port}"], gw_port)
    extra = ["--gateway", gw_url] if registers else []
    provider = Server(
        [str(binary("tenzro-provider")), "--config", str(ROOT / "configs" / "provider.toml"),
         "--listen", f"127.0.0.1:{prov_port}", "--models-dir", str(MODELS_DIR), *extra],
        prov_port,
    )
    try:
        # Wait until the gateway routes to the provider (registration is async).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = httpx.get(f"{gw_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
            if r.status_code == 200 and {m["id"] for m in r.json()["data"]} >= {CHAT_MODEL, EMBED_MODEL}:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the gateway never listed the provider's models: {r.text}")
        yield {"url": gw_url, "key": key, "registers": registers}
    finally:
        provider.stop()
        gateway.stop()


@pytest.fixture(scope="module")
def client(stack):
    return openai.OpenAI(base_url=f"{stack['url']}/v1", api_key=stack["key"], max_retries=0, timeout=120)


def messages():
    return [{"role": "user", "content": "What is the capital of France?"}]


def test_non_stream_chat_reports_cost_in_usage_and_headers(client):
    raw = client.chat.completions.with_raw_response.create(model=CHAT_MODEL, messages=messages(), max_tokens=16, temperature=0)
    r = raw.parse()
    assert r.choices[0].message.content
    assert r.usage.completion_tokens >= 1
    extra = r.usage.model_extra or {}
    assert extra["asset"] == "TNZO"
    assert int(extra["cost"]) > 0
    assert raw.headers["x-tenzro-cost"] == extra["cost"]
    assert raw.headers["x-tenzro-asset"] == "TNZO"
    assert raw.headers["x-request-id"]


def test_stream_chat_with_and_without_usage(client):
    chunks = list(client.chat.completions.create(model=CHAT_MODEL, messages=messages(), max_tokens=16, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert all(c.usage is None for c in chunks), "usage stripped when not asked for"

    chunks = list(client.chat.completions.create(
        model=CHAT_MODEL, messages=messages(), max_tokens=16, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert int((usage.model_extra or {})["cost"]) > 0
    tokens = sum(((c.model_extra or {}).get("tenzro") or {}).get("tokens", 0) for c in chunks)
    assert tokens == usage.completion_tokens


def test_completions_and_embeddings(client):
    r = client.completions.create(model=CHAT_MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.choices[0].text
    e = client.embeddings.create(model=EMBED_MODEL, input=["hello", "world"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 384
    assert int((e.usage.model_extra or {})["cost"]) > 0


def test_models_list(client):
    ids = {m.id for m in client.models.list()}
    assert {CHAT_MODEL, EMBED_MODEL} <= ids


def admin_key(stack, balance="10", **scope):
    r = httpx.post(f"{stack['url']}/admin/accounts", headers={"Authorization": f"Bearer {ADMIN}"},
                   json={"name": "scoped", "balance": balance, "scope": scope}, timeout=10)
    r.raise_for_status()
    return openai.OpenAI(base_url=f"{stack['url']}/v1", api_key=r.json()["key"], max_retries=0, timeout=120)


def test_errors_are_the_sdks_own_exceptions(stack, client):
    bad = openai.OpenAI(base_url=f"{stack['url']}/v1", api_key="tz-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=CHAT_MODEL, messages=messages())
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=messages())
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=CHAT_MODEL, messages=[])
    with pytest.raises(openai.PermissionDeniedError):
        admin_key(stack, allowed_models=[EMBED_MODEL]).chat.completions.create(model=CHAT_MODEL, messages=messages())
    limited = admin_key(stack, requests_per_minute=1)
    limited.chat.completions.create(model=CHAT_MODEL, messages=messages(), max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        limited.chat.completions.create(model=CHAT_MODEL, messages=messages(), max_tokens=2)
    assert int(e.value.response.headers["retry-after"]) >= 1
    # 10^12 base units cannot cover 100 tokens at 5 * 10^10 each (idle congestion 0.5).
    with pytest.raises(openai.APIStatusError) as e:
        admin_key(stack, balance="0.000001").chat.completions.create(model=CHAT_MODEL, messages=messages(), max_tokens=100)
    assert e.value.status_code == 402
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model=CHAT_MODEL, messages=messages(), extra_body={"tenzro": {"tee": True}})
    assert e.value.status_code == 503
