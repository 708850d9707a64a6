"""Fixtures that start the real binaries on free localhost ports.

The binaries come from `cargo build` (target/debug by default; set
TENZRO_BIN_DIR to use another build). Models come from `scripts/fetch-models`
(TENZRO_MODELS_DIR overrides .tenzro/models).
"""
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("TENZRO_BIN_DIR", ROOT / "target" / "debug"))
MODELS_DIR = Path(os.environ.get("TENZRO_MODELS_DIR", ROOT / ".tenzro" / "models"))

CHAT_MODEL = "smollm2-135m-instruct"
EMBED_MODEL = "all-minilm-l6-v2"
SYSTEM = "You are a helpful assistant."


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}/health did not answer 200 within {timeout} s")


def binary(name: str) -> Path:
    path = BIN_DIR / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `cargo build --workspace --bins` first")
    return path


class Server:
    def __init__(self, args, port, env=None):
        """`env`: variables set (over this process's environment) for the server."""
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(ROOT / "target" / f"{Path(args[0]).name}-{port}.log", "w")
        environ = {**os.environ, **env} if env else None
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=environ)
        try:
            wait_healthy(self.url, self.proc)
        except Exception:
            self.stop()
            raise

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def start_provider(extra=()):
    port = free_port()
    args = [
        str(binary("tenzro-provider")),
        "--config", str(ROOT / "configs" / "provider.toml"),
        "--listen", f"127.0.0.1:{port}",
        "--models-dir", str(MODELS_DIR),
        *extra,
    ]
    return Server(args, port)


@pytest.fixture(scope="session")
def provider():
    server = start_provider()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def client(provider):
    from openai import OpenAI

    return OpenAI(base_url=f"{provider.url}/v1", api_key="not-checked-by-the-provider", max_retries=0, timeout=120)


def tokenize(url: str, **body) -> int:
    r = httpx.post(f"{url}/tokenize", json={"model": CHAT_MODEL, **body}, timeout=30)
    r.raise_for_status()
    return r.json()["count"]


def gateway_config(data_dir: Path, provider_url: str | None, admin_token: str = "",
                   first_byte_timeout_ms: int = 60000, extra: str = "") -> str:
    """A gateway config for tests: its data directory, the default models' provider
    at `provider_url` as a static provider (none when `None`), and `extra` TOML
    tables."""
    text = f"""
[server]
data_dir = "{data_dir}"
admin_token = "{admin_token}"

[upstream]
first_byte_timeout_ms = {first_byte_timeout_ms}

# Development, as configs/gateway.toml: providers on 127.0.0.1 may register, and a
# registered provider (whose stake is its bond) routes without one.
[registration]
allow_private_endpoints = true

[stake_minimums]
llm = "0"
image_gen = "0"
speech = "0"
embedding = "0"
custom = "0"

{extra}
"""
    if provider_url:
        text += f"""
[[providers]]
id = "local"
endpoint = "{provider_url}"
stake = "100000"
max_concurrency = 8
[[providers.models]]
id = "{CHAT_MODEL}"
category = "LLM"
price_per_token = "100000000000"
max_context = 2048
parameters = 134515008
[[providers.models]]
id = "{EMBED_MODEL}"
category = "Embedding"
price_per_token = "10000000000"
max_context = 512
parameters = 22713216
"""
    return text


# The agent surfaces' tests (test_a2a, test_mcp, test_cli_chat, test_console) share
# one gateway over the session's provider (one model load for all four); each test
# file takes its own funded key with `new_key`, so balances and channels stay apart.
AGENT_ADMIN = "agent-surfaces-admin-token"
FAUCET = '[faucet]\nenabled = true\namount = "5"\nper_hour = 3\n'


def start_gateway(config_text: str, tmp: Path) -> Server:
    """A gateway on a free port with `config_text` written to `tmp/gateway.toml`."""
    cfg = tmp / "gateway.toml"
    cfg.write_text(config_text)
    port = free_port()
    return Server([str(binary("tenzro-gateway")), "--config", str(cfg), "--listen", f"127.0.0.1:{port}"], port)


def new_key(url: str, admin: str = AGENT_ADMIN, balance: str = "1000", name: str = "test", scope=None) -> str:
    """A new account with `balance` whole tokens and its key, made through the admin API."""
    r = httpx.post(f"{url}/admin/accounts", headers={"Authorization": f"Bearer {admin}"},
                   json={"name": name, "balance": balance, "scope": scope or {}}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()["key"]


def wait_listed(url: str, key: str, model: str = CHAT_MODEL, timeout: float = 60.0) -> None:
    """Waits until the gateway lists `model` to `key` (its provider was reached)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        if r.status_code == 200 and any(m["id"] == model for m in r.json()["data"]):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the gateway never listed {model}: {r.text}")


@pytest.fixture(scope="session")
def agent_gateway(provider):
    """The agent surfaces' gateway: {"url", "admin", "provider"}; admin token
    AGENT_ADMIN, the faucet on, the session's provider as static provider `local`."""
    tmp = Path(tempfile.mkdtemp(prefix="tenzro-agents-"))
    gw = start_gateway(gateway_config(tmp / "data", provider.url, admin_token=AGENT_ADMIN,
                                      first_byte_timeout_ms=120000, extra=FAUCET), tmp)
    try:
        wait_listed(gw.url, new_key(gw.url, balance="0", name="probe"))
        yield {"url": gw.url, "admin": AGENT_ADMIN, "provider": provider}
    finally:
        gw.stop()
