"""A copied data directory, with real processes on one PostgreSQL (issue 17).

The data directory holds the replica id (`replica-id`), which owns the replica's
leases. A gateway started on a copy of a running gateway's data directory would
share that id, so it refuses to start, naming the id and the file; once the first
process is killed (`kill -9`) and its heartbeat has expired, the copy starts,
claims the id and takes the dead process's leases at once (it does not wait for
them to expire).

Needs TENZRO_TEST_POSTGRES_URL (scripts/postgres starts a server); skipped
without it.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, binary, free_port, gateway_config, new_key, wait_healthy
from test_replicas import fresh_database, psql

pytestmark = pytest.mark.skipif(not os.environ.get("TENZRO_TEST_POSTGRES_URL"),
                                reason="TENZRO_TEST_POSTGRES_URL unset (scripts/postgres starts a server)")

ADMIN = "data-dir-admin-token"
HEARTBEAT_S = 1          # a process silent for 3 heartbeats counts as dead
LEASE_TTL_S = 60         # far longer than the test: a lease taken over is not an expired one


class Gateway:
    def __init__(self, tmp: Path, name: str, data: Path, cfg: Path, db: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"{name}.log"
        log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(binary("tenzro-gateway")), "--config", str(cfg), "--listen", f"127.0.0.1:{self.port}",
             "--data-dir", str(data)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TENZRO_STORE_URL": db})
        log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def balance(url: str, key: str) -> httpx.Response:
    return httpx.get(f"{url}/v1/account", headers={"Authorization": f"Bearer {key}"}, timeout=30)


def test_a_copied_data_dir_is_refused_until_the_original_is_dead():
    tmp = Path(tempfile.mkdtemp(prefix="tenzro-data-dir-"))
    db = fresh_database(os.environ["TENZRO_TEST_POSTGRES_URL"])
    a_dir, b_dir = tmp / "a", tmp / "b"
    cfg = tmp / "gateway.toml"
    cfg.write_text(gateway_config(
        a_dir, None, admin_token=ADMIN,
        extra=f"[store]\nlease_ttl_s = {LEASE_TTL_S}\n\n[cluster]\nheartbeat_s = {HEARTBEAT_S}\n"))
    a = Gateway(tmp, "a", a_dir, cfg, db)
    b = None
    try:
        wait_healthy(a.url, a.proc, timeout=60)
        replica_id = (a_dir / "replica-id").read_text().strip()
        assert replica_id.startswith("replica_")
        # An account A serves: A holds its lease.
        key = new_key(a.url, admin=ADMIN, balance="7")
        r = balance(a.url, key)
        assert r.status_code == 200, r.text
        balances = r.json()["balances"]
        assert balances, r.text
        holder = psql(db, "SELECT owner FROM leases")
        assert holder == [[replica_id]], holder

        # The copy, made while A runs, refuses to start: A is alive.
        shutil.copytree(a_dir, b_dir)
        b = Gateway(tmp, "b", b_dir, cfg, db)
        try:
            code = b.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the copy did not refuse to start:\n{b.log()}")
        log = b.log()
        assert code != 0, log
        assert replica_id in log, log
        assert str(b_dir / "replica-id") in log, log
        assert a.proc.poll() is None, "A kept running"
        assert balance(a.url, key).status_code == 200

        # A dies; once its heartbeat is three heartbeats old the copy starts
        # (it waits for that itself) and serves A's account at once: the lease
        # is its replica id's, taken over long before it would expire.
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
        killed = time.monotonic()
        b = Gateway(tmp, "b2", b_dir, cfg, db)
        wait_healthy(b.url, b.proc, timeout=60)
        started = time.monotonic() - killed
        assert started < LEASE_TTL_S / 2, f"the copy took {started:.1f} s to start"
        r = balance(b.url, key)
        assert r.status_code == 200, r.text
        assert r.json()["balances"] == balances, r.text
        rows = psql(db, f"SELECT count(*) FROM replicas WHERE id = '{replica_id}'")
        assert rows == [["1"]], rows
    finally:
        a.stop()
        if b is not None:
            b.stop()
