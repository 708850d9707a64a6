"""The provider is paid or says no (issue 11): the real provider started with
`--gateway` behind the real gateway.

Attached to a gateway, the provider serves inference only when the gateway's payer
key signed it (`x-tenzro-payer-auth`, attest/src/payer.rs), takes vouchers only from
that payer, shows its channel book only to the payer or the operator token, and
limits fresh attestation documents per address. The gateway's own traffic flows.

Signatures use the canonical encoding of attest/src/canon.rs, rebuilt here
independently of the Rust code.
"""
import hashlib
import os
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest

import conftest
from conftest import CHAT_MODEL, EMBED_MODEL, MODELS_DIR, ROOT, Server, binary, free_port

ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")

ADMIN = "paid-admin-token"
OPERATOR = "paid-operator-token"
PAYER_AUTH_DOMAIN = b"tenzro/payer-auth/v1"
VOUCHER_DOMAIN = b"tenzro/voucher/v1"


def blob(b: bytes) -> bytes:
    return struct.pack(">Q", len(b)) + b


class Key:
    def __init__(self, seed_hex: str | None = None):
        if seed_hex is None:
            self.key = ed25519.Ed25519PrivateKey.generate()
        else:
            self.key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))
        self.public = self.key.public_key().public_bytes_raw()

    def payer_auth(self, method: str, path: str, channel: str, body: bytes, at: int | None = None) -> str:
        at = int(time.time()) if at is None else at
        message = (blob(PAYER_AUTH_DOMAIN) + blob(method.encode()) + blob(path.encode()) + blob(channel.encode())
                   + hashlib.sha256(body).digest() + struct.pack(">Q", at) + self.public)
        return f"{at}.{self.key.sign(message).hex()}"

    def voucher(self, channel: str, nonce: int, spent: int) -> dict:
        v = {"channel_id": channel, "nonce": nonce, "cumulative_spent": str(spent), "asset": "TNZO",
             "payer_key": self.public.hex()}
        message = (blob(VOUCHER_DOMAIN) + blob(channel.encode()) + struct.pack(">Q", nonce) + spent.to_bytes(16, "big")
                   + blob(b"TNZO") + self.public)
        v["payer_signature"] = self.key.sign(message).hex()
        return v


def gateway_config(data_dir: Path) -> str:
    text = conftest.gateway_config(data_dir, None, admin_token=ADMIN, first_byte_timeout_ms=120000,
                                   extra="[channels]\nvoucher_interval_ms = 50\n")
    if "allow_private_endpoints" not in text:
        # The provider registers a 127.0.0.1 endpoint: development only.
        text += "\n[registration]\nallow_private_endpoints = true\n"
    return text


@pytest.fixture(scope="module")
def stack():
    tmp = Path(tempfile.mkdtemp(prefix="tenzro-paid-"))
    gw_port, prov_port = free_port(), free_port()
    gw_url, prov_url = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{prov_port}"
    cfg = tmp / "gateway.toml"
    cfg.write_text(gateway_config(tmp / "data"))
    key = subprocess.run([str(binary("tenzro-gateway")), "keys", "create", "--config", str(cfg), "--balance", "1000"],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip().splitlines()[-1]
    gateway = Server([str(binary("tenzro-gateway")), "--config", str(cfg), "--listen", f"127.0.0.1:{gw_port}"], gw_port)
    provider = None
    try:
        provider = Server(
            [str(binary("tenzro-provider")), "--config", str(ROOT / "configs" / "provider.toml"),
             "--listen", f"127.0.0.1:{prov_port}", "--models-dir", str(MODELS_DIR),
             "--key-path", str(tmp / "provider.key"), "--vouchers-path", str(tmp / "vouchers.json"),
             "--gateway", gw_url],
            prov_port, env={"TENZRO_OPERATOR_TOKEN": OPERATOR, "TENZRO_OWNER_KEY": ""},
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            r = httpx.get(f"{gw_url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
            if r.status_code == 200 and {m["id"] for m in r.json()["data"]} >= {CHAT_MODEL, EMBED_MODEL}:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the gateway never listed the provider's models: {r.text}")
        yield {"gateway": gw_url, "provider": prov_url, "key": key, "tmp": tmp}
    finally:
        if provider is not None:
            provider.stop()
        gateway.stop()


CHAT = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def operator_list(url: str) -> list:
    r = httpx.get(f"{url}/v1/channels", headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code, error
    return error


def test_a_direct_unpaid_request_is_402(stack):
    url = stack["provider"]
    for path, body in [("/v1/chat/completions", CHAT), ("/v1/completions", {"model": CHAT_MODEL, "prompt": "Hi"}),
                       ("/v1/embeddings", {"model": EMBED_MODEL, "input": "hi"})]:
        error = assert_error(httpx.post(f"{url}{path}", json=body, timeout=60), 402, "payment_required")
        assert "attached to a gateway" in error["message"], error
        # Naming a channel is not paying for it.
        r = httpx.post(f"{url}{path}", json=body, headers={"x-tenzro-channel": "ch-free"}, timeout=60)
        error = assert_error(r, 402, "payer_auth_invalid")
        assert "x-tenzro-payer-auth" in error["message"], error
    # The same provider still answers what costs nothing.
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    assert httpx.get(f"{url}/v1/models", timeout=10).status_code == 200


def test_a_forged_payer_signature_is_402(stack):
    url = stack["provider"]
    forger = Key()
    body = httpx.Request("POST", "http://x", json=CHAT).content
    for auth in [forger.payer_auth("POST", "/v1/chat/completions", "ch-forged", body),
                 "1700000000." + "00" * 64,
                 "not-a-signature"]:
        headers = {"x-tenzro-channel": "ch-forged", "x-tenzro-payer-auth": auth, "content-type": "application/json"}
        r = httpx.post(f"{url}/v1/chat/completions", content=body, headers=headers, timeout=60)
        assert_error(r, 402, "payer_auth_invalid")
    assert not any(c["channel_id"] == "ch-forged" for c in operator_list(url))


def test_foreign_payer_vouchers_are_refused(stack):
    url = stack["provider"]
    attacker = Key()
    body = httpx.Request("POST", "http://x", json={"vouchers": [attacker.voucher(f"evil-{i}", 1, 10**18) for i in range(8)]}).content
    headers = {"content-type": "application/json"}
    # Unsigned, or signed by the attacker's own key: 401, nothing stored.
    assert_error(httpx.post(f"{url}/v1/channels/vouchers", content=body, headers=headers, timeout=30), 401)
    signed = {**headers, "x-tenzro-payer-auth": attacker.payer_auth("POST", "/v1/channels/vouchers", "", body)}
    assert_error(httpx.post(f"{url}/v1/channels/vouchers", content=body, headers=signed, timeout=30), 401,
                 "payer_auth_invalid")
    # Even in a batch the gateway's payer key signed, another payer's vouchers are refused.
    gateway = Key((stack["tmp"] / "data" / "payer.key").read_text().strip())
    signed = {**headers, "x-tenzro-payer-auth": gateway.payer_auth("POST", "/v1/channels/vouchers", "", body)}
    r = httpx.post(f"{url}/v1/channels/vouchers", content=body, headers=signed, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["vouchers"] == [] and len(r.json()["rejected"]) == 8
    assert all("not this provider's trusted payer" in x["reason"] for x in r.json()["rejected"]), r.text
    assert not any(c["channel_id"].startswith("evil-") for c in operator_list(url))
    assert not (stack["tmp"] / "vouchers.json").exists() or "evil-" not in (stack["tmp"] / "vouchers.json").read_text()


def test_the_channel_book_needs_the_payer_or_the_operator(stack):
    url = stack["provider"]
    error = assert_error(httpx.get(f"{url}/v1/channels", timeout=30), 401, "payer_auth_required")
    assert "operator token" in error["message"]
    assert_error(httpx.get(f"{url}/v1/channels", headers={"Authorization": "Bearer wrong"}, timeout=30), 401)
    assert_error(httpx.get(f"{url}/v1/channels/any/voucher", timeout=30), 401)
    stranger = Key()
    auth = stranger.payer_auth("GET", "/v1/channels", "", b"")
    assert_error(httpx.get(f"{url}/v1/channels", headers={"x-tenzro-payer-auth": auth}, timeout=30), 401)
    assert isinstance(operator_list(url), list)


def test_the_gateways_own_traffic_flows_and_is_vouchered(stack):
    client = openai.OpenAI(base_url=f"{stack['gateway']}/v1", api_key=stack["key"], max_retries=0, timeout=120)
    r = client.chat.completions.create(model=CHAT_MODEL, messages=CHAT["messages"], max_tokens=8, temperature=0)
    assert r.choices[0].message.content
    chunks = list(client.chat.completions.create(model=CHAT_MODEL, messages=CHAT["messages"], max_tokens=8,
                                                 temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    e = client.embeddings.create(model=EMBED_MODEL, input=["hello"])
    assert len(e.data[0].embedding) == 384
    # The gateway's vouchers reach the provider (signed batches from its trusted payer).
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        held = [c for c in operator_list(stack["provider"]) if c["nonce"]]
        if held:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the provider never received a voucher from the gateway")
    payer = held[0]["payer_key"]
    assert all(c["payer_key"] == payer for c in held)
    # The operator reads one channel's voucher.
    r = httpx.get(f"{stack['provider']}/v1/channels/{held[0]['channel_id']}/voucher",
                  headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=30)
    assert r.status_code == 200 and r.json()["payer_key"] == payer


def test_fresh_attestations_are_rate_limited_and_cached(stack):
    # Last in this module: it spends this address's budget of fresh documents.
    url = stack["provider"]
    nonce = os.urandom(16).hex()
    first = httpx.get(f"{url}/v1/attestation", params={"nonce": nonce}, timeout=30)
    assert first.status_code == 200
    limited = None
    for _ in range(200):
        r = httpx.get(f"{url}/v1/attestation", params={"nonce": os.urandom(16).hex()}, timeout=30)
        if r.status_code == 429:
            limited = r
            break
        assert r.status_code == 200, r.text
    assert limited is not None, "200 fresh attestation documents in a row were produced"
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"
    # A nonce asked before is answered from the cache: the same document.
    again = httpx.get(f"{url}/v1/attestation", params={"nonce": nonce}, timeout=30)
    assert again.status_code == 200 and again.json() == first.json()
