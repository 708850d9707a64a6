"""The real provider bonds through `--gateway` with its owner's API key (issue 10,
"How the provider binary gets bonded").

With TENZRO_OWNER_KEY set, `tenzro-provider --gateway URL` tops its key's bond up to
`[gateway] bond` (configs/provider.toml: 100000 TNZO) from the owner's balance before
it registers; a restart bonds nothing more; a balance too low stops it with the reason.
"""
import os
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest

import conftest
from conftest import CHAT_MODEL, MODELS_DIR, ROOT, Server, binary, free_port

ONE = 10**18
BOND = 100_000 * ONE


def gateway_config(data_dir: Path) -> str:
    text = conftest.gateway_config(data_dir, None, admin_token="bond-admin", first_byte_timeout_ms=120000)
    if "allow_private_endpoints" not in text:
        # The provider registers a 127.0.0.1 endpoint: development only.
        text += "\n[registration]\nallow_private_endpoints = true\n"
    return text


def new_key(cfg: Path, balance: int) -> str:
    out = subprocess.run([str(binary("tenzro-gateway")), "keys", "create", "--config", str(cfg), "--balance", str(balance)],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip().splitlines()[-1]


def provider_args(port: int, tmp: Path, gw_url: str) -> list:
    return [str(binary("tenzro-provider")), "--config", str(ROOT / "configs" / "provider.toml"),
            "--listen", f"127.0.0.1:{port}", "--models-dir", str(MODELS_DIR),
            "--key-path", str(tmp / "provider.key"), "--vouchers-path", str(tmp / "vouchers.json"),
            "--gateway", gw_url]


def bonds(gw_url: str, key: str) -> list:
    r = httpx.get(f"{gw_url}/v1/providers/bonds", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()["data"]


def balance(gw_url: str, key: str) -> int:
    r = httpx.get(f"{gw_url}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert r.status_code == 200, r.text
    return int(r.json()["balances"]["TNZO"])


@pytest.fixture
def gateway():
    tmp = Path(tempfile.mkdtemp(prefix="tenzro-bond-"))
    port = free_port()
    cfg = tmp / "gateway.toml"
    cfg.write_text(gateway_config(tmp / "data"))
    owner = new_key(cfg, 150_000)
    poor = new_key(cfg, 10)
    server = Server([str(binary("tenzro-gateway")), "--config", str(cfg), "--listen", f"127.0.0.1:{port}"], port)
    try:
        yield {"url": server.url, "owner": owner, "poor": poor, "tmp": tmp}
    finally:
        server.stop()


def test_the_provider_bonds_before_it_registers_and_only_once(gateway):
    gw, owner, tmp = gateway["url"], gateway["owner"], gateway["tmp"]
    funded = balance(gw, owner)
    port = free_port()
    provider = Server(provider_args(port, tmp, gw), port, env={"TENZRO_OWNER_KEY": owner})
    try:
        me = httpx.get(f"{provider.url}/v1/attestation", params={"nonce": "11" * 16}, timeout=30).json()["public_key"]
        [bond] = [b for b in bonds(gw, owner) if b["provider_key"] == me]
        assert int(bond["bonded"]) == BOND and bond["asset"] == "TNZO"
        assert bond["provider_id"].startswith("did:tenzro:machine:")
        assert balance(gw, owner) == funded - BOND
        # Bonded and registered: the gateway routes to it.
        deadline = time.monotonic() + 60
        client = openai.OpenAI(base_url=f"{gw}/v1", api_key=owner, max_retries=0, timeout=120)
        while True:
            try:
                r = client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=4, temperature=0)
                break
            except openai.APIStatusError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert r.choices[0].message.content
    finally:
        provider.stop()
    # A restart finds the bond in place and adds nothing.
    spent = balance(gw, owner)
    provider = Server(provider_args(port, tmp, gw), port, env={"TENZRO_OWNER_KEY": owner})
    try:
        [bond] = [b for b in bonds(gw, owner) if b["provider_key"] == me]
        assert int(bond["bonded"]) == BOND
        # Nothing more left the balance (a channel settling in between may add to it).
        assert balance(gw, owner) >= spent
    finally:
        provider.stop()


def test_a_balance_too_low_stops_the_provider_with_the_reason(gateway):
    gw, poor, tmp = gateway["url"], gateway["poor"], gateway["tmp"]
    out = subprocess.run(provider_args(free_port(), tmp, gw), cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TENZRO_OWNER_KEY": poor})
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "balance is too low to bond 100000 TNZO" in text, text
    assert balance(gw, poor) == 10 * ONE
    assert bonds(gw, poor) == []
