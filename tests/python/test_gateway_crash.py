"""Crash: stream through the real gateway to the real provider, `kill -9` the
gateway at random instants (50 times, bounded in time), restart it on the same data
directory, and check after each restart the money invariants of DESIGN.md:

- conservation: funded = available balance + the deposits of the account's channels;
- bounded: spent <= deposit on every channel;
- monotonic: a channel's nonce and spent never fall across crashes, and the provider
  never saw two vouchers with one nonce and different content;
- durable: nothing the provider holds a voucher for is lost (the gateway's spent and
  nonce are at least the provider's latest countersigned voucher), no request id is
  charged twice in the store, and the store never charges more than the client was
  told it cost plus what cut streams could have cost.
"""
import random
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from conftest import CHAT_MODEL, MODELS_DIR, ROOT, Server, binary, free_port, gateway_config, wait_healthy

KILLS = 50
MIN_COMPLETED = 10
TIME_BUDGET_S = 420
FUNDS_TNZO = 1000
ONE = 10**18


def config(data_dir: Path, provider_url: str) -> str:
    # Vouchers often, so the provider holds recent ones when the gateway dies.
    return gateway_config(data_dir, provider_url, extra="[channels]\nvoucher_interval_ms = 50\n")


class Load:
    """Client threads streaming chat completions until told to stop."""

    def __init__(self, url: str, key: str, threads: int = 3):
        self.url, self.key = url, key
        self.completed: dict[str, int] = {}   # request id -> cost the client was told
        self.cut: dict[str, int] = {}         # request id -> worst case (cut by the kill)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def run(self):
        client = httpx.Client(timeout=30)
        while not self.stop.is_set():
            rid = f"crash-{uuid.uuid4()}"
            max_tokens = random.randint(4, 12)
            body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Count to twenty."}],
                    "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
            cost = None
            try:
                with client.stream("POST", f"{self.url}/v1/chat/completions", json=body,
                                   headers={"Authorization": f"Bearer {self.key}", "x-request-id": rid}) as r:
                    if r.status_code != 200:
                        r.read()
                        time.sleep(0.05)
                        continue
                    for line in r.iter_lines():
                        if line.startswith(": x-tenzro-cost="):
                            cost = int(line.split("=", 1)[1].split()[0])
                        if line == "data: [DONE]" and cost is not None:
                            with self.lock:
                                self.completed[rid] = cost
                            break
                    else:
                        raise httpx.ReadError("stream ended without [DONE]")
            except httpx.HTTPError:
                with self.lock:
                    if rid not in self.completed:
                        # At most (prompt + max_tokens) tokens at 10^-7 TNZO, times the
                        # highest multipliers (complexity 3, congestion 2, TEE 1.2).
                        self.cut[rid] = (64 + max_tokens) * 100_000_000_000 * 8
                time.sleep(0.02)


def account(url: str, key: str) -> dict:
    r = httpx.get(f"{url}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    r.raise_for_status()
    return r.json()


OPERATOR = "crash-operator-token"


def provider_voucher(provider_url: str, channel: str):
    # The provider shows its vouchers to the payer or the operator only.
    r = httpx.get(f"{provider_url}/v1/channels/{channel}/voucher", headers={"Authorization": f"Bearer {OPERATOR}"},
                  timeout=10)
    assert r.status_code in (200, 404), r.text
    return r.json() if r.status_code == 200 else None


def test_kill_dash_nine_loses_nothing_and_charges_nothing_twice():
    tmp = Path(tempfile.mkdtemp(prefix="tenzro-crash-"))
    prov_port, gw_port = free_port(), free_port()
    prov_url, gw_url = f"http://127.0.0.1:{prov_port}", f"http://127.0.0.1:{gw_port}"
    provider = Server([str(binary("tenzro-provider")), "--config", str(ROOT / "configs" / "provider.toml"),
                       "--listen", f"127.0.0.1:{prov_port}", "--models-dir", str(MODELS_DIR),
                       "--vouchers-path", str(tmp / "provider-vouchers.json")], prov_port,
                      env={"TENZRO_OPERATOR_TOKEN": OPERATOR})
    cfg = tmp / "gateway.toml"
    cfg.write_text(config(tmp / "data", prov_url))
    key = subprocess.run([str(binary("tenzro-gateway")), "keys", "create", "--config", str(cfg), "--balance", str(FUNDS_TNZO)],
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip().splitlines()[-1]
    funded = FUNDS_TNZO * ONE
    gw_log = open(tmp / "gateway.log", "w")

    def start_gateway():
        proc = subprocess.Popen([str(binary("tenzro-gateway")), "--config", str(cfg), "--listen", f"127.0.0.1:{gw_port}"],
                                cwd=ROOT, stdout=gw_log, stderr=subprocess.STDOUT)
        wait_healthy(gw_url, proc, timeout=60)
        return proc

    seen: dict[str, tuple[int, int]] = {}      # channel -> (nonce, spent) at the last check
    held: dict[str, tuple[int, int]] = {}      # channel -> provider's latest (nonce, spent)
    load = None
    completed: dict[str, int] = {}
    cut: dict[str, int] = {}
    kills = 0
    started = time.monotonic()
    rng = random.Random(20261122)
    try:
        gw = start_gateway()
        while (kills < KILLS or len(completed) < MIN_COMPLETED) and time.monotonic() - started < TIME_BUDGET_S:
            load = Load(gw_url, key)
            load.start()
            # Kill at a random instant; on a slow machine, leave room for some
            # requests to finish too.
            slow = len(completed) * 5 < kills
            time.sleep(rng.uniform(1.0, 4.0) if slow else rng.uniform(0.2, 2.5))
            gw.send_signal(signal.SIGKILL)
            gw.wait()
            kills += 1
            load.join()
            completed.update(load.completed)
            cut.update(load.cut)

            gw = start_gateway()
            # Let the restarted gateway reconcile with the provider and send vouchers.
            time.sleep(0.3)
            a = account(gw_url, key)
            channels = a["channels"]
            deposits = sum(int(c["deposit"]) for c in channels if c["state"] != "closed")
            available = int(a["balances"]["TNZO"])
            assert available + deposits == funded, f"conservation after kill {kills}: {available} + {deposits} != {funded}"
            for c in channels:
                nonce, spent, deposit = c["nonce"], int(c["spent"]), int(c["deposit"])
                assert spent <= deposit, f"bounded: {c}"
                before = seen.get(c["id"], (0, 0))
                assert nonce >= before[0] and spent >= before[1], f"monotonic across kill {kills}: {before} -> {c}"
                seen[c["id"]] = (nonce, spent)
                v = provider_voucher(prov_url, c["id"])
                if v is not None:
                    pv = (v["nonce"], int(v["cumulative_spent"]))
                    assert pv[0] <= nonce and pv[1] <= spent, f"the provider holds more than the gateway kept: {pv} vs {c}"
                    old = held.get(c["id"], (0, 0))
                    assert pv[0] >= old[0] and pv[1] >= old[1], f"the provider's voucher went back: {old} -> {pv}"
                    held[c["id"]] = pv
    finally:
        if load is not None:
            load.join()
        try:
            gw.send_signal(signal.SIGTERM)
            gw.wait(timeout=20)
        except Exception:
            gw.kill()
        provider.stop()
        gw_log.close()

    assert kills >= KILLS, f"only {kills} kills within {TIME_BUDGET_S} s"
    assert len(completed) >= MIN_COMPLETED, f"too few requests completed to mean anything: {len(completed)}"
    db = sqlite3.connect(tmp / "data" / "gateway.db")
    rows = db.execute("SELECT request_id, COUNT(*), SUM(CAST(charged AS INTEGER)) FROM requests GROUP BY request_id").fetchall()
    twice = [r for r in rows if r[1] != 1]
    assert not twice, f"requests charged twice: {twice[:5]}"
    stored = {r[0]: int(r[2]) for r in rows}
    for rid, cost in stored.items():
        if rid in completed:
            assert cost == completed[rid], f"{rid}: stored {cost}, the client was told {completed[rid]}"
        else:
            assert rid in cut, f"{rid} charged but never sent by this test"
            assert cost <= cut[rid]
    total_spent = sum(spent for _, spent in seen.values())
    assert total_spent <= sum(completed.values()) + sum(cut.values()), "charged more than was delivered"
    log = (tmp / "gateway.log").read_text()
    assert "rejected a voucher" not in log, "the provider saw a nonce signed twice with different content"
    assert held, "the provider countersigned vouchers"
    print(f"\n{kills} kills in {time.monotonic() - started:.0f} s: {len(completed)} requests completed, "
          f"{len(cut)} cut, {len(stored)} charged in the store, {len(seen)} channels, "
          f"{len(held)} with a countersigned voucher")
