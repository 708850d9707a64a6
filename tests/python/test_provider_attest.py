"""Attestation and receipts through the real provider (`none` evidence).

- `GET /v1/attestation?nonce=HEX` binds the provider's key, its weight digests and a
  fresh nonce: the report data is recomputed here from attest's documented encoding
  (`attest/src/binding.rs`).
- Every response carries `tenzro.receipt`; `tenzro-verify receipt FILE --key PUB`
  accepts it, its response digest is recomputed from what the SDK received (the
  definition is in `provider/src/receipt.rs`), and a tampered receipt is refused.
- A provider whose config names the wrong weight digest refuses to start.
"""
import base64
import hashlib
import json
import os
import re
import struct
import subprocess
import uuid

import httpx
import pytest

from conftest import CHAT_MODEL, EMBED_MODEL, MODELS_DIR, ROOT, SYSTEM, binary, free_port

DOMAIN = b"tenzro/attest/report-data/v1"


def lp(b: bytes) -> bytes:
    return len(b).to_bytes(8, "big") + b


def report_data(public_key: bytes, digests, nonce: bytes) -> bytes:
    """attest's binding: SHA-512(lp(domain) | lp(key) | u64(n) | sorted unique digests | lp(nonce))."""
    ds = sorted(set(digests))
    body = lp(DOMAIN) + lp(public_key) + len(ds).to_bytes(8, "big") + b"".join(ds) + lp(nonce)
    return hashlib.sha512(body).digest()


def did_of(public_key: bytes) -> str:
    """attest's DID: the first 16 bytes of SHA-256(key) as a version-8 UUID."""
    b = bytearray(hashlib.sha256(public_key).digest()[:16])
    b[6] = (b[6] & 0x0F) | 0x80
    b[8] = (b[8] & 0x3F) | 0x80
    return f"did:tenzro:machine:{uuid.UUID(bytes=bytes(b))}"


def items_digest(items) -> str:
    """The receipt's response digest: each item length-prefixed (u64 big-endian), in order."""
    h = hashlib.sha256()
    for item in items:
        h.update(len(item).to_bytes(8, "big"))
        h.update(item)
    return h.hexdigest()


def texts_digest(texts) -> str:
    return items_digest(t.encode() for t in texts)


def embeddings_digest(vectors) -> str:
    return items_digest(struct.pack(f"<{len(v)}f", *v) for v in vectors)


def ext(obj):
    return (obj.model_extra or {}).get("tenzro") or {}


def france(**kw):
    return dict(
        model=CHAT_MODEL,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "What is the capital of France?"}],
        temperature=0,
        max_tokens=16,
        **kw,
    )


@pytest.fixture(scope="module")
def attestation(provider):
    r = httpx.get(f"{provider.url}/v1/attestation", params={"nonce": os.urandom(32).hex()}, timeout=30)
    r.raise_for_status()
    return r.json()


def verify(receipt: dict, key: str, tmp_path, name="receipt.json") -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(json.dumps(receipt))
    return subprocess.run(
        [str(binary("tenzro-verify")), "receipt", str(path), "--key", key],
        capture_output=True, text=True, timeout=60,
    )


def check_receipt(receipt, attestation, tmp_path, *, texts=None, vectors=None, usage=None, model=CHAT_MODEL):
    """The receipt verifies, names the right model and weights, and binds what was received."""
    key = attestation["public_key"]
    assert receipt["provider_key"] == key
    assert receipt["model"] == model
    assert receipt["weight_sha256"] == attestation["model_digests"][model]
    if texts is not None:
        assert receipt["response_sha256"] == texts_digest(texts)
    if vectors is not None:
        assert receipt["response_sha256"] == embeddings_digest(vectors)
    if usage is not None:
        assert receipt["prompt_tokens"] == usage.prompt_tokens
        assert receipt["completion_tokens"] == (getattr(usage, "completion_tokens", None) or 0)
    ok = verify(receipt, key, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "TRUSTED" in ok.stdout
    # Any signed field changed: refused.
    for field, value in [
        ("completion_tokens", receipt["completion_tokens"] + 1),
        ("response_sha256", "00" * 32),
        ("request_sha256", receipt["response_sha256"]),
        ("model", receipt["model"] + "x"),
        ("issued_at", receipt["issued_at"] - 1),
    ]:
        bad = verify({**receipt, field: value}, key, tmp_path, "tampered.json")
        assert bad.returncode != 0, f"tampered {field} was accepted: {bad.stdout}"
        assert "REFUSED" in bad.stdout
    # The right receipt under another key: refused.
    other = verify(receipt, "3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29", tmp_path)
    assert other.returncode != 0


def test_attestation_binds_key_weights_and_a_fresh_nonce(provider, attestation):
    doc = attestation
    assert doc["tee_kind"] == "none" and doc["evidence"]["kind"] == "none"
    key = bytes.fromhex(doc["public_key"])
    assert len(key) == 32
    assert doc["did"] == did_of(key)
    assert doc["domain"] == DOMAIN.decode()
    # The digests are the ones the provider serves (and lists in /v1/models).
    models = httpx.get(f"{provider.url}/v1/models", timeout=30).json()["data"]
    assert doc["model_digests"] == {m["id"]: m["weight_sha256"] for m in models}
    assert set(doc["model_digests"]) == {CHAT_MODEL, EMBED_MODEL}
    # `none` evidence is the report data itself, and it recomputes.
    digests = [bytes.fromhex(d) for d in doc["model_digests"].values()]
    expected = report_data(key, digests, bytes.fromhex(doc["nonce"]))
    assert bytes.fromhex(doc["report_data"]) == expected
    assert base64.b64decode(doc["evidence"]["report"]) == expected
    # A fresh nonce gives fresh report data; the key and digests stay.
    nonce = os.urandom(16)
    again = httpx.get(f"{provider.url}/v1/attestation?nonce={nonce.hex()}", timeout=30).json()
    assert again["public_key"] == doc["public_key"] and again["model_digests"] == doc["model_digests"]
    assert bytes.fromhex(again["report_data"]) == report_data(key, digests, nonce)
    assert again["report_data"] != doc["report_data"]
    # Nothing else binds: another nonce, another key, one digest fewer.
    assert report_data(key, digests, os.urandom(16)) != expected
    assert report_data(bytes(32), digests, bytes.fromhex(doc["nonce"])) != expected
    assert report_data(key, digests[:1], bytes.fromhex(doc["nonce"])) != expected


@pytest.mark.parametrize("query, needle", [
    ("", "required"),
    ("?nonce=", "required"),
    ("?other=1", "required"),
    ("?nonce=" + "zz" * 16, "hex"),
    ("?nonce=" + "a" * 33, "hex"),
    ("?nonce=" + "ab" * 8, "16 to 64 bytes"),
    ("?nonce=" + "ab" * 65, "16 to 64 bytes"),
    ("?nonce=" + "ab" * 5000, "16 to 64 bytes"),
])
def test_bad_nonces_are_400_in_openai_shape(provider, query, needle):
    r = httpx.get(f"{provider.url}/v1/attestation{query}", timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "nonce"
    assert needle in err["message"]


def test_non_stream_chat_receipt(client, attestation, tmp_path):
    r = client.chat.completions.create(**france())
    receipt = ext(r)["receipt"]
    check_receipt(receipt, attestation, tmp_path, texts=[r.choices[0].message.content], usage=r.usage)


def test_stream_receipts_with_and_without_usage(client, attestation, tmp_path):
    # Without usage: every chunk has a choice; the last one carries the receipt.
    chunks = list(client.chat.completions.create(**france(), stream=True))
    assert all(c.choices for c in chunks)
    assert [i for i, c in enumerate(chunks) if ext(c).get("receipt")] == [len(chunks) - 1]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    receipt = ext(chunks[-1])["receipt"]
    check_receipt(receipt, attestation, tmp_path, texts=[text])
    assert receipt["completion_tokens"] == sum(ext(c).get("tokens", 0) for c in chunks)
    # With usage: the usage chunk (last, no choices) carries it.
    chunks = list(client.chat.completions.create(**france(), stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert [i for i, c in enumerate(chunks) if ext(c).get("receipt")] == [len(chunks) - 1]
    text2 = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text2 == text
    check_receipt(ext(last)["receipt"], attestation, tmp_path, texts=[text2], usage=last.usage)


def test_receipt_covers_every_choice_in_index_order(client, attestation, tmp_path):
    kw = {**france(), "temperature": 1.0, "max_tokens": 12, "n": 2, "seed": 7}
    whole = client.chat.completions.create(**kw)
    texts = [c.message.content for c in whole.choices]
    check_receipt(ext(whole)["receipt"], attestation, tmp_path, texts=texts, usage=whole.usage)
    per_choice = ["", ""]
    chunks = list(client.chat.completions.create(**kw, stream=True))
    for c in chunks:
        for ch in c.choices:
            per_choice[ch.index] += ch.delta.content or ""
    assert per_choice == texts
    assert ext(chunks[-1])["receipt"]["response_sha256"] == texts_digest(texts)


def test_completion_receipts_include_the_echo(client, attestation, tmp_path):
    r = client.completions.create(model=CHAT_MODEL, prompt="Hello", max_tokens=3, temperature=0, echo=True)
    assert r.choices[0].text.startswith("Hello")
    check_receipt(ext(r)["receipt"], attestation, tmp_path, texts=[r.choices[0].text], usage=r.usage)
    chunks = list(client.completions.create(model=CHAT_MODEL, prompt="Hello", max_tokens=3, temperature=0,
                                            echo=True, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == r.choices[0].text
    assert ext(chunks[-1])["receipt"]["response_sha256"] == texts_digest([text])


def test_embedding_receipts_bind_the_vectors(client, attestation, tmp_path):
    texts = ["The cat sits on the mat.", "Interest rates rose."]
    r = client.embeddings.create(model=EMBED_MODEL, input=texts)  # base64 on the wire
    vectors = [d.embedding for d in r.data]
    check_receipt(ext(r)["receipt"], attestation, tmp_path, vectors=vectors, usage=r.usage, model=EMBED_MODEL)
    floats = client.embeddings.create(model=EMBED_MODEL, input=texts, encoding_format="float")
    assert ext(floats)["receipt"]["response_sha256"] == embeddings_digest([d.embedding for d in floats.data])


def test_request_digest_is_the_exact_body(provider, attestation):
    body = json.dumps({"model": CHAT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
                      indent=3).encode() + b"\n  "
    r = httpx.post(f"{provider.url}/v1/chat/completions", content=body,
                   headers={"content-type": "application/json"}, timeout=120)
    r.raise_for_status()
    assert r.json()["tenzro"]["receipt"]["request_sha256"] == hashlib.sha256(body).hexdigest()
    body = b'{"model": "%s", "input": "x"}' % EMBED_MODEL.encode()
    r = httpx.post(f"{provider.url}/v1/embeddings", content=body, headers={"content-type": "application/json"},
                   timeout=120)
    r.raise_for_status()
    assert r.json()["tenzro"]["receipt"]["request_sha256"] == hashlib.sha256(body).hexdigest()


def test_wrong_weight_digest_refuses_to_start(tmp_path):
    config = (ROOT / "configs" / "provider.toml").read_text()
    real = re.search(r'^sha256 = "([0-9a-f]{64})"', config, re.M).group(1)
    wrong = "0" * 64
    cfg = tmp_path / "provider.toml"
    cfg.write_text(config.replace(real, wrong, 1))
    out = subprocess.run(
        [str(binary("tenzro-provider")), "--config", str(cfg), "--listen", f"127.0.0.1:{free_port()}",
         "--models-dir", str(MODELS_DIR), "--key-path", str(tmp_path / "provider.key")],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert out.returncode != 0
    log = out.stdout + out.stderr
    assert wrong in log and real in log, log
    assert "listening" not in log
