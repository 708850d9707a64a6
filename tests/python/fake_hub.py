"""A fake Hugging Face Hub for tests, and the checkpoint bytes it serves.

`FakeHub` (a thread in the test process) speaks the Hub's resolve endpoint
(HEAD/GET, `X-Repo-Commit`, `ETag`/`X-Linked-Etag`, `X-Linked-Size`, Range) and its
model API (`/api/models/{repo}/revision/{rev}?blobs=true`, whose `siblings` carry
`lfs.sha256`). Point the provider at it with `HF_ENDPOINT` and give it its own
cache with `HF_HOME`.

`safetensors()` writes the format, `shard()` splits named tensors into shards with
their index, and `weights_digest()` is the digest the provider lists in
`/v1/models` for such a checkpoint.
"""
import hashlib
import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def safetensors(named: dict) -> bytes:
    """Name -> (shape, f32 values) as a safetensors file: u64 header length, JSON
    header, raw little-endian f32."""
    header, blobs, offset = {}, [], 0
    for name in sorted(named):
        shape, values = named[name]
        blob = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + b"".join(blobs)


def shard_names(count: int) -> list:
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def shard(named: dict, count: int = 2) -> dict:
    """File name -> bytes: `count` shards of the tensors (by sorted name) and
    `model.safetensors.index.json` mapping each tensor to its shard."""
    names, shards = sorted(named), shard_names(count)
    size = -(-len(names) // count)
    parts = [names[i * size:(i + 1) * size] for i in range(count)]
    files = {"model.safetensors.index.json": json.dumps({"metadata": {}, "weight_map": {
        n: shards[k] for k, part in enumerate(parts) for n in part}}).encode()}
    for name, part in zip(shards, parts):
        files[name] = safetensors({n: named[n] for n in part})
    return files


def weights_digest(files: dict) -> str:
    """The provider's digest of a checkpoint: `sha256sum` of its `*.safetensors`
    files (sorted by name) piped to sha256sum."""
    listing = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n"
                      for name, data in sorted(files.items()) if name.endswith(".safetensors"))
    return hashlib.sha256(listing.encode()).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(name: str) -> bool:
    return name.endswith(".safetensors")


class FakeHub:
    """repos: "owner/name" -> (commit, {file: bytes}). `log` holds (method, path)."""

    def __init__(self, repos: dict):
        self.repos, self.log = repos, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.answer(self, head=True)

            def do_GET(self):
                hub.answer(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def file_gets(self) -> list:
        return [p for m, p in self.log if m == "GET" and "/resolve/" in p]

    def repo(self, repo_id: str, revision: str):
        entry = self.repos.get(repo_id)
        return entry if entry and revision in ("main", entry[0]) else None

    def answer(self, req, head: bool):
        self.log.append((req.command, req.path))
        path = req.path.split("?")[0]
        if path.startswith("/api/models/") and "/revision/" in path:
            repo_id, revision = path[len("/api/models/"):].split("/revision/", 1)
            entry = self.repo(repo_id, revision)
            if entry:
                commit, files = entry
                siblings = []
                for name, data in files.items():
                    s = {"rfilename": name, "blobId": git_sha1(data), "size": len(data)}
                    if is_lfs(name):
                        s["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
                                    "pointerSize": 132}
                    siblings.append(s)
                return self.send(req, 200, {"Content-Type": "application/json"},
                                 json.dumps({"id": repo_id, "sha": commit, "siblings": siblings}).encode(), head)
        elif "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            revision, _, name = rest.partition("/")
            entry = self.repo(repo_id, revision)
            if entry and name in entry[1]:
                commit, files = entry
                data = files[name]
                etag = hashlib.sha256(data).hexdigest() if is_lfs(name) else git_sha1(data)
                headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
                if is_lfs(name):
                    headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
                status, body = 200, data
                rng = req.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-") and not head:
                    start = int(rng[len("bytes="):-1])
                    status, body = 206, data[start:]
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                return self.send(req, status, headers, body, head)
        self.send(req, 404, {"X-Error-Code": "EntryNotFound"}, b"Entry not found", head)

    @staticmethod
    def send(req, status, headers, body, head):
        req.send_response(status)
        for k, v in headers.items():
            req.send_header(k, v)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        if not head:
            req.wfile.write(body)
