"""Three gateway replicas on one PostgreSQL behind a round-robin client, streaming
to the real provider (issue 17):

- normal operation: every request is served wherever it lands (a replica that does
  not hold the account's lease forwards it to the one that does): no 503
  `replica_busy`;
- `kill -9` of one replica while a stream runs through it: that stream ends in
  error, the dead replica's accounts are served by a survivor once their leases
  expire (`store.lease_ttl_s`, 6 s here), and the money invariants of DESIGN.md
  hold: funded = available + open deposits per account, spent <= deposit, no
  request charged twice, nothing charged that the client was not told (or could
  not have been, for streams cut by the kill), and the provider never holds a
  voucher above what the gateway kept.

PostgreSQL: TENZRO_TEST_POSTGRES_URL (scripts/test sets it), else scripts/postgres
starts a throwaway server (as CI's .ci/run installs PostgreSQL).
"""
import itertools
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx

from conftest import CHAT_MODEL, MODELS_DIR, ROOT, Server, binary, free_port, gateway_config, wait_healthy

ONE = 10**18
FUNDS_TNZO = 1000
ACCOUNTS = 5   # coprime with the 3 replicas: each account lands on every replica
LEASE_TTL_S = 6
SECRET = "replica-test-shared-secret"
ADMIN = "replicas-admin-token"
OPERATOR = "replicas-operator-token"
TIME_BUDGET_S = 300


def postgres_url() -> str:
    url = os.environ.get("TENZRO_TEST_POSTGRES_URL")
    if not url:
        url = subprocess.run([str(ROOT / "scripts" / "postgres")], capture_output=True, text=True,
                             timeout=300, check=True).stdout.strip()
    return url


def psql(url: str, sql: str) -> list[list[str]]:
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))
    exe = str(bins[-1]) if bins else "psql"
    out = subprocess.run([exe, url, "-At", "-F", "|", "-c", sql], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [line.split("|") for line in out.splitlines() if line]


def fresh_database(admin: str) -> str:
    name = f"t_{uuid.uuid4().hex}"
    psql(admin, f"CREATE DATABASE {name}")
    return f"{admin.rsplit('/', 1)[0]}/{name}"


class Replica:
    def __init__(self, tmp: Path, i: int, prov_url: str, db: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = tmp / f"replica{i}"
        self.cfg = tmp / f"replica{i}.toml"
        self.cfg.write_text(gateway_config(
            self.data, prov_url, admin_token=ADMIN,
            extra=f"[store]\nlease_ttl_s = {LEASE_TTL_S}\n\n[channels]\nvoucher_interval_ms = 50\n\n"
                  f"[cluster]\nreconcile_s = 1\n"))
        self.env = {**os.environ, "TENZRO_STORE_URL": db, "TENZRO_CLUSTER_ADVERTISE": self.url,
                    "TENZRO_CLUSTER_SECRET": SECRET}
        self.log = open(tmp / f"replica{i}.log", "w")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([str(binary("tenzro-gateway")), "--config", str(self.cfg),
                                      "--listen", f"127.0.0.1:{self.port}"],
                                     cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        wait_healthy(self.url, self.proc, timeout=60)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


class Load:
    """Client threads streaming chat completions, round-robin over `urls`, each
    request for the next account; records what each request was told."""

    def __init__(self, urls: list[str], keys: list[str], threads: int = 3, tokens: tuple[int, int] = (4, 10)):
        self.urls, self.keys, self.tokens = urls, keys, tokens
        self.turn = itertools.count()
        self.completed: dict[str, int] = {}     # request id -> cost the client was told
        self.cut: dict[str, int] = {}           # request id -> worst case (cut)
        self.busy: list[str] = []               # replica_busy answers
        self.errors: list[str] = []             # other failures
        self.lost_events = 0                    # forwarded streams ended by `replica_lost`
        self.forwarded = 0                      # answers forwarded to the lease holder
        self.in_flight: dict[str, int] = {}     # url -> streams past their first chunk
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def start(self):
        for t in self.threads:
            t.start()

    def join(self):
        self.stop.set()
        for t in self.threads:
            if t.is_alive():
                t.join(timeout=60)

    def one(self, client: httpx.Client, url: str, key: str) -> None:
        rid = f"rep-{uuid.uuid4()}"
        max_tokens = random.randint(*self.tokens)
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": "Count to twenty."}],
                "max_tokens": max_tokens, "stream": True, "stream_options": {"include_usage": True}}
        cost, counted = None, False
        try:
            with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {key}", "x-request-id": rid}) as r:
                if r.headers.get("x-tenzro-forwarded") == "1":
                    with self.lock:
                        self.forwarded += 1
                if r.status_code != 200:
                    text = r.read().decode(errors="replace")
                    with self.lock:
                        (self.busy if "replica_busy" in text else self.errors).append(f"{url} {r.status_code} {text}")
                    time.sleep(float(r.headers.get("retry-after", "0.2")))
                    return
                for line in r.iter_lines():
                    if not counted and line.startswith("data: "):
                        counted = True
                        with self.lock:
                            self.in_flight[url] = self.in_flight.get(url, 0) + 1
                    if line.startswith(": x-tenzro-cost="):
                        cost = int(line.split("=", 1)[1].split()[0])
                    if line.startswith("data: {\"error\""):
                        with self.lock:
                            self.lost_events += "replica_lost" in line
                        raise httpx.ReadError(line)
                    if line == "data: [DONE]" and cost is not None:
                        with self.lock:
                            self.completed[rid] = cost
                        return
                raise httpx.ReadError("stream ended without [DONE]")
        except httpx.HTTPError as e:
            with self.lock:
                if rid not in self.completed:
                    # At most (prompt + max_tokens) tokens at 10^-7 TNZO, times the
                    # highest multipliers (complexity 3, congestion 2, TEE 1.2).
                    self.cut[rid] = (64 + max_tokens) * 100_000_000_000 * 8
                    self.errors.append(f"{url} cut: {e}")
        finally:
            if counted:
                with self.lock:
                    self.in_flight[url] -= 1

    def run(self):
        client = httpx.Client(timeout=60)
        while not self.stop.is_set():
            n = next(self.turn)
            self.one(client, self.urls[n % len(self.urls)], self.keys[n % len(self.keys)])


def account(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_three_replicas_round_robin_and_kill_dash_nine():
    tmp = Path(tempfile.mkdtemp(prefix="tenzro-replicas-"))
    db = fresh_database(postgres_url())
    prov_port = free_port()
    prov_url = f"http://127.0.0.1:{prov_port}"
    provider = Server([str(binary("tenzro-provider")), "--config", str(ROOT / "configs" / "provider.toml"),
                       "--listen", f"127.0.0.1:{prov_port}", "--models-dir", str(MODELS_DIR),
                       "--vouchers-path", str(tmp / "provider-vouchers.json")], prov_port,
                      env={"TENZRO_OPERATOR_TOKEN": OPERATOR})
    replicas = [Replica(tmp, i, prov_url, db) for i in range(3)]
    load = None
    try:
        # One payer key for the whole gateway: the first replica makes it, the
        # others get a copy (vouchers for one channel may be signed by any).
        replicas[0].start()
        for r in replicas[1:]:
            r.data.mkdir(parents=True, exist_ok=True)
            shutil.copy(replicas[0].data / "payer.key", r.data / "payer.key")
            r.start()
        keys = []
        for i in range(ACCOUNTS):
            out = subprocess.run([str(binary("tenzro-gateway")), "keys", "create", "--config", str(replicas[i % 3].cfg),
                                  "--balance", str(FUNDS_TNZO), "--name", f"acct{i}"],
                                 capture_output=True, text=True, timeout=60, check=True, env=replicas[0].env)
            keys.append(out.stdout.strip().splitlines()[-1])
        urls = [r.url for r in replicas]
        started = time.monotonic()

        # Normal operation: round robin over three replicas, no replica_busy.
        load = Load(urls, keys)
        load.start()
        deadline = time.monotonic() + 120
        while len(load.completed) < 12 and time.monotonic() < deadline:
            time.sleep(0.2)
        load.join()
        assert not load.busy, f"replica_busy in normal operation: {load.busy[:3]}"
        assert not load.errors, f"failures in normal operation: {load.errors[:3]}"
        assert len(load.completed) >= 12, f"only {len(load.completed)} streams completed"
        assert load.forwarded >= 4, f"only {load.forwarded} requests were forwarded to their lease holder"
        completed, cut = dict(load.completed), dict(load.cut)

        # kill -9 the third replica while a stream runs through it (longer streams,
        # so that one is surely in flight).
        victim = replicas[2]
        load = Load(urls, keys, tokens=(12, 24))
        load.start()
        deadline = time.monotonic() + 120
        while load.in_flight.get(victim.url, 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert load.in_flight.get(victim.url, 0) > 0, "no stream ran through the victim"
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait()
        killed_at = time.monotonic()
        load.urls = urls[:2]          # the balancer's health check drops it
        time.sleep(1.0)
        load.join()
        completed.update(load.completed)
        cut.update(load.cut)
        assert any("cut" in e for e in load.errors), f"the stream through the dead replica did not fail: {load.errors}"
        print(f"kill -9: {len(load.cut)} streams cut, {load.lost_events} of them forwarded ones ended by replica_lost")

        # Every account is served by a survivor once the dead replica's leases
        # expire (they renew every commit; at most the TTL plus the survivor's
        # retry).
        load = Load(urls[:2], keys)
        client = httpx.Client(timeout=60)
        # (from now: the streams of the kill phase may take a while to end on a
        # loaded machine)
        deadline = time.monotonic() + LEASE_TTL_S + 60
        # Each account through the survivors in turn, retried (after Retry-After)
        # until served.
        served = set()
        for i, key in enumerate(keys):
            while time.monotonic() < deadline:
                before = len(load.completed)
                load.one(client, urls[i % 2], key)
                if len(load.completed) > before:
                    served.add(key)
                    break
        assert served == set(keys), (f"accounts not served within {time.monotonic() - killed_at:.0f} s of the kill: "
                                     f"{len(keys) - len(served)}; {load.busy[-3:]} {load.errors[-3:]}")
        assert not [e for e in load.errors if "cut" in e], f"streams cut after the takeover: {load.errors[:3]}"
        completed.update(load.completed)
        cut.update(load.cut)

        # Money invariants, read through the survivors.
        funded = FUNDS_TNZO * ONE
        for i, key in enumerate(keys):
            a = account(urls[i % 2], key).json()
            deposits = sum(int(c["deposit"]) for c in a["channels"] if c["state"] != "closed")
            assert int(a["balances"]["TNZO"]) + deposits == funded, f"conservation of account {i}: {a}"
            for c in a["channels"]:
                assert int(c["spent"]) <= int(c["deposit"]), f"bounded: {c}"
                r = httpx.get(f"{prov_url}/v1/channels/{c['id']}/voucher",
                              headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10)
                assert r.status_code in (200, 404), r.text
                if r.status_code == 200:
                    v = r.json()
                    assert v["nonce"] <= c["nonce"] and int(v["cumulative_spent"]) <= int(c["spent"]), \
                        f"the provider holds more than the gateway kept: {v} vs {c}"
        rows = psql(db, "SELECT request_id, COUNT(*), SUM(CAST(charged AS NUMERIC)) FROM requests GROUP BY request_id")
        twice = [r for r in rows if r[1] != "1"]
        assert not twice, f"requests charged twice: {twice[:5]}"
        for rid, _, charged in rows:
            if rid in completed:
                assert int(charged) == completed[rid], f"{rid}: stored {charged}, the client was told {completed[rid]}"
            else:
                assert rid in cut, f"{rid} charged but never sent by this test"
                assert int(charged) <= cut[rid]
        assert time.monotonic() - started < TIME_BUDGET_S
    finally:
        if load is not None:
            load.join()
        for r in replicas:
            r.stop()
        provider.stop()


def test_sqlite_serves_one_gateway_process():
    """A second gateway process on the same SQLite store refuses to start and
    says why; once the first is gone (kill -9 too), it starts."""
    tmp = Path(tempfile.mkdtemp(prefix="tenzro-sqlite-lock-"))
    cfg = tmp / "gateway.toml"
    cfg.write_text(gateway_config(tmp / "data", None))
    ports = [free_port(), free_port()]
    first = subprocess.Popen([str(binary("tenzro-gateway")), "--config", str(cfg), "--listen", f"127.0.0.1:{ports[0]}"],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{ports[0]}", first, timeout=60)
        second = subprocess.run([str(binary("tenzro-gateway")), "--config", str(cfg), "--listen", f"127.0.0.1:{ports[1]}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert "another gateway process uses the SQLite store" in second.stderr, second.stderr
        assert "gateway.db.lock" in second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait()
        again = subprocess.Popen([str(binary("tenzro-gateway")), "--config", str(cfg), "--listen", f"127.0.0.1:{ports[1]}"],
                                 cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_healthy(f"http://127.0.0.1:{ports[1]}", again, timeout=60)
        finally:
            again.terminate()
            again.wait(timeout=20)
    finally:
        if first.poll() is None:
            first.kill()
