"""Payment-channel vouchers against the real provider binary: a payer key made
here signs vouchers, the provider countersigns and stores them, refuses service on
a channel past its credit limit until a voucher pays, and keeps its vouchers
across a restart.

Signatures use the canonical encoding documented in attest/src/voucher.rs and
attest/src/canon.rs, rebuilt here independently of the Rust code. Standalone (no
gateway) each batch is signed by its vouchers' payer (x-tenzro-payer-auth) and the
book is read with the operator token.
"""
import hashlib
import json
import time
import os
import struct
import subprocess

import httpx
import pytest

from conftest import CHAT_MODEL, EMBED_MODEL, MODELS_DIR, ROOT, BIN_DIR, Server, binary, free_port

ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")

VOUCHER_DOMAIN = b"tenzro/voucher/v1"
PAYER_AUTH_DOMAIN = b"tenzro/payer-auth/v1"
OPERATOR = "vouchers-operator-token"
AS_OPERATOR = {"Authorization": f"Bearer {OPERATOR}"}
COUNTERSIGN_DOMAIN = b"tenzro/voucher-countersign/v1"
CREDIT_LIMIT = 5
CHANNEL = "py-channel-1"


def blob(b: bytes) -> bytes:
    return struct.pack(">Q", len(b)) + b


def payer_message(v: dict) -> bytes:
    spent = int(v["cumulative_spent"])
    return (
        blob(VOUCHER_DOMAIN)
        + blob(v["channel_id"].encode())
        + struct.pack(">Q", v["nonce"])
        + spent.to_bytes(16, "big")
        + blob(v["asset"].encode())
        + bytes.fromhex(v["payer_key"])
    )


def countersign_message(v: dict) -> bytes:
    return (
        blob(COUNTERSIGN_DOMAIN)
        + blob(payer_message(v))
        + blob(bytes.fromhex(v["payer_signature"]))
        + bytes.fromhex(v["provider_key"])
    )


class Payer:
    def __init__(self):
        self.key = ed25519.Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes_raw()
        self.public_hex = raw.hex()

    def voucher(self, nonce: int, spent: int, channel: str = CHANNEL, asset: str = "TNZO") -> dict:
        v = {
            "channel_id": channel,
            "nonce": nonce,
            "cumulative_spent": str(spent),
            "asset": asset,
            "payer_key": self.public_hex,
        }
        v["payer_signature"] = self.key.sign(payer_message(v)).hex()
        return v

    def payer_auth(self, method: str, path: str, channel: str, body: bytes) -> str:
        at = int(time.time())
        message = (blob(PAYER_AUTH_DOMAIN) + blob(method.encode()) + blob(path.encode()) + blob(channel.encode())
                   + hashlib.sha256(body).digest() + struct.pack(">Q", at) + bytes.fromhex(self.public_hex))
        return f"{at}.{self.key.sign(message).hex()}"


def check_countersigned(v: dict, provider_key: str) -> None:
    assert v["provider_key"] == provider_key
    pub = ed25519.Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["provider_key"]))
    pub.verify(bytes.fromhex(v["provider_signature"]), countersign_message(v))


def start(config: str, tmp_path) -> Server:
    port = free_port()
    args = [
        str(binary("tenzro-provider")),
        "--config", config,
        "--listen", f"127.0.0.1:{port}",
        "--models-dir", str(MODELS_DIR),
        "--key-path", str(tmp_path / "provider.key"),
    ]
    return Server(args, port, env={"TENZRO_OPERATOR_TOKEN": OPERATOR})


@pytest.fixture
def setup(tmp_path):
    """A config like configs/provider.toml with a small credit limit and its own store."""
    text = (ROOT / "configs" / "provider.toml").read_text()
    store = tmp_path / "vouchers.json"
    text = text.replace('path = ".tenzro/provider-vouchers.json"', f"path = {json.dumps(str(store))}")
    text = text.replace("credit_limit_tokens = 200_000", f"credit_limit_tokens = {CREDIT_LIMIT}")
    assert str(store) in text and f"= {CREDIT_LIMIT}" in text, "configs/provider.toml no longer has the [channels] keys"
    config = tmp_path / "provider.toml"
    config.write_text(text)
    server = start(str(config), tmp_path)
    yield server, str(config), store
    server.stop()


def provider_key(url: str) -> str:
    r = httpx.get(f"{url}/v1/attestation", params={"nonce": "00" * 16}, timeout=30)
    r.raise_for_status()
    return r.json()["public_key"]


def post(url: str, vouchers, payer: "Payer") -> dict:
    body = json.dumps({"vouchers": vouchers}).encode()
    headers = {"content-type": "application/json",
               "x-tenzro-payer-auth": payer.payer_auth("POST", "/v1/channels/vouchers", "", body)}
    r = httpx.post(f"{url}/v1/channels/vouchers", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def chat(url: str, channel: str | None):
    headers = {"x-tenzro-channel": channel} if channel else {}
    body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120)


def unpaid(url: str, channel: str) -> int:
    data = httpx.get(f"{url}/v1/channels", headers=AS_OPERATOR, timeout=30).json()["data"]
    return next((c["unpaid_tokens"] for c in data if c["channel_id"] == channel), 0)


def test_vouchers_are_countersigned_stored_and_enforced(setup, tmp_path):
    server, config, store = setup
    url = server.url
    me = provider_key(url)
    payer = Payer()

    # Accepted and countersigned; the file is written before the answer.
    first = payer.voucher(1, 10**18)
    # Unsigned batches are refused.
    r = httpx.post(f"{url}/v1/channels/vouchers", json={"vouchers": [first]}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "payer_auth_required", r.text
    answer = post(url, [first], payer)
    assert answer["rejected"] == []
    [signed] = answer["vouchers"]
    check_countersigned(signed, me)
    assert {k: signed[k] for k in first} == first
    assert json.loads(store.read_text())["vouchers"] == [signed]

    # The same check through the project's own verifier, when it is built.
    verify = next((d / "tenzro-verify" for d in (BIN_DIR, ROOT / "target" / "debug") if (d / "tenzro-verify").exists()), None)
    if verify is not None:
        path = tmp_path / "voucher.json"
        path.write_text(json.dumps(signed))
        out = subprocess.run([str(verify), "voucher", str(path), "--key", payer.public_hex, "--provider-key", me],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr

    # A resend gets the stored voucher; bad ones are refused with a reason.
    forged = payer.voucher(2, 2 * 10**18)
    forged["cumulative_spent"] = str(10**30)
    other = Payer().voucher(2, 2 * 10**18)
    answer = post(url, [first, payer.voucher(1, 5), forged, other], payer)
    assert answer["vouchers"] == [signed]
    reasons = {r["nonce"]: r["reason"] for r in answer["rejected"]}
    assert len(answer["rejected"]) == 3
    assert "already accepted" in reasons[1]
    assert any("signature does not verify" in r["reason"] for r in answer["rejected"])
    assert any("pinned to payer key" in r["reason"] for r in answer["rejected"])

    # Read back, one channel and the list: by the channel's payer or the operator.
    assert httpx.get(f"{url}/v1/channels/{CHANNEL}/voucher", timeout=30).status_code == 401
    assert httpx.get(f"{url}/v1/channels", timeout=30).status_code == 401
    path = f"/v1/channels/{CHANNEL}/voucher"
    auth = {"x-tenzro-payer-auth": payer.payer_auth("GET", path, CHANNEL, b"")}
    r = httpx.get(f"{url}{path}", headers=auth, timeout=30)
    assert r.status_code == 200 and r.json() == signed
    r = httpx.get(f"{url}{path}", headers={"x-tenzro-payer-auth": Payer().payer_auth("GET", path, CHANNEL, b"")}, timeout=30)
    assert r.status_code == 401
    r = httpx.get(f"{url}/v1/channels/unknown/voucher", headers=AS_OPERATOR, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "voucher_not_found"
    [entry] = httpx.get(f"{url}/v1/channels", headers=AS_OPERATOR, timeout=30).json()["data"]
    assert entry == {"channel_id": CHANNEL, "asset": "TNZO", "nonce": 1, "cumulative_spent": str(10**18),
                     "payer_key": payer.public_hex, "unpaid_tokens": 0}

    # Bad bodies get 400 in OpenAI's shape.
    r = httpx.post(f"{url}/v1/channels/vouchers", content=b"{", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]

    # Credit: the served tokens count against the channel; past the limit, 402.
    r = chat(url, CHANNEL)
    assert r.status_code == 200, r.text
    served = r.json()["usage"]["total_tokens"]
    assert served > CREDIT_LIMIT
    assert unpaid(url, CHANNEL) == served
    r = chat(url, CHANNEL)
    assert r.status_code == 402
    error = r.json()["error"]
    assert error["code"] == "channel_unpaid"
    assert f"{served} unpaid tokens" in error["message"] and f"limit of {CREDIT_LIMIT}" in error["message"]
    body = {"model": EMBED_MODEL, "input": "hello"}
    r = httpx.post(f"{url}/v1/embeddings", json=body, headers={"x-tenzro-channel": CHANNEL}, timeout=60)
    assert r.status_code == 402
    # Other channels and requests without the header are served as before.
    assert chat(url, None).status_code == 200
    assert chat(url, "py-channel-2").status_code == 200
    # A voucher that pays clears the debt.
    answer = post(url, [payer.voucher(2, 2 * 10**18)], payer)
    assert answer["rejected"] == [] and answer["vouchers"][0]["nonce"] == 2
    assert unpaid(url, CHANNEL) == 0
    assert chat(url, CHANNEL).status_code == 200

    # The vouchers survive a restart; a corrupt store stops the provider.
    latest = httpx.get(f"{url}/v1/channels/{CHANNEL}/voucher", headers=AS_OPERATOR, timeout=30).json()
    server.stop()
    again = start(config, tmp_path)
    try:
        assert httpx.get(f"{again.url}/v1/channels/{CHANNEL}/voucher", headers=AS_OPERATOR, timeout=30).json() == latest
        answer = post(again.url, [payer.voucher(2, 3 * 10**18)], payer)
        assert "already accepted" in answer["rejected"][0]["reason"]
    finally:
        again.stop()
    store.write_text('{"version": 1, "vouchers": [')
    args = [str(binary("tenzro-provider")), "--config", config, "--listen", f"127.0.0.1:{free_port()}",
            "--models-dir", str(MODELS_DIR), "--key-path", str(tmp_path / "provider.key")]
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "is corrupt" in out.stderr, out.stderr
