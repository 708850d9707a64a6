#!/usr/bin/env python3
"""Calibrates the gateway's model audit (issue 16) on real runs and prints the table.

An honest provider serves the default model; one lying provider per substitute
serves a substituted GGUF (benches/audit/make-substitute.py) under the same model
id. Each answers the same varied prompts (raw text and ChatML-rendered chats, half
greedy, half at temperature 0.8). The honest provider then scores every answer
teacher-forced as the gateway's reference auditor does (`/v1/completions`,
`echo: true, logprobs: K, max_tokens: 0` over prompt + answer), and the statistic
of `gateway/src/audit/stat.rs` is applied for a grid of its parameters:
false-positive rate on honest answers, detection rate on substituted ones, and the
audit's cost in provider time (scoring wall time against generation wall time at
the same concurrency).

    cargo build --release --bins
    python3 benches/audit/calibrate.py            # ~15 min on 2 busy cores

Options: --answers N (per provider, default 200), --max-tokens, --concurrency,
--bin-dir (default target/release), --substitutes noise0.1,noise0.3,drop3.
The statistic below mirrors `judge` in gateway/src/audit/stat.rs line for line.
"""
import argparse
import concurrent.futures as cf
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
OUT = ROOT / "target" / "audit"
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

TOPICS = [
    "the Roman empire", "photosynthesis", "black holes", "the French revolution", "volcanoes",
    "machine learning", "the human heart", "coffee", "the moon landing", "honey bees",
    "climate change", "the printing press", "jazz music", "the Amazon rainforest", "electric cars",
    "the immune system", "ancient Egypt", "chess", "the ocean tides", "bread baking",
    "the internet", "dinosaurs", "solar panels", "the Olympic games", "earthquakes",
    "the piano", "vaccines", "the Great Wall of China", "recycling", "penguins",
    "the stock market", "rainbows", "the Renaissance", "sleep", "glaciers",
    "the bicycle", "DNA", "the Silk Road", "tea", "hurricanes",
    "prime numbers", "the telescope", "wolves", "democracy", "the water cycle",
    "origami", "the Moon", "electricity", "the Titanic", "mushrooms",
]
RAW = [
    "Here is a short essay about {t}.\n\n",
    "{T} is",
    "Q: What should a student know about {t}?\nA:",
    "Five facts about {t}:\n1.",
]
CHAT = [
    "Explain {t} to a ten-year-old.",
    "Write a short paragraph about {t}.",
    "What are the most interesting things about {t}?",
    "Give me three tips related to {t}.",
]


def chatml(user: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


def prompts(n: int):
    out = []
    i = 0
    while len(out) < n:
        t = TOPICS[i % len(TOPICS)]
        form = (i // len(TOPICS)) % 4
        if i % 2 == 0:
            p = RAW[form].format(t=t, T=t[0].upper() + t[1:])
        else:
            p = chatml(CHAT[form].format(t=t))
        temp = 0.0 if (i // 2) % 2 == 0 else 0.8
        out.append((p, temp, i))
        i += 1
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provider_config(weights: Path | None) -> Path:
    """The shipped provider config; with `weights`, serving that file under the
    default model's id (without the digest check, as a lying provider would)."""
    text = (ROOT / "configs" / "provider.toml").read_text()
    name = "honest" if weights is None else weights.stem
    if weights is not None:
        text, n = re.subn(
            r'path = "smollm2-135m-instruct/SmolLM2-135M-Instruct\.Q4_1\.gguf"\n(#[^\n]*\n)*sha256 = "[0-9a-f]+"\n',
            f'path = "{weights}"\n', text)
        if n != 1:
            sys.exit("configs/provider.toml changed shape; update provider_config")
    path = OUT / f"{name}.toml"
    path.write_text(text)
    return path


def start(bin_dir: Path, weights: Path | None):
    port = free_port()
    cfg = provider_config(weights)
    name = cfg.stem
    log = open(OUT / f"{name}.log", "w")
    proc = subprocess.Popen(
        [str(bin_dir / "tenzro-provider"), "--config", str(cfg), "--listen", f"127.0.0.1:{port}",
         "--models-dir", str(ROOT / ".tenzro" / "models"), "--key-path", str(OUT / f"{name}.key"),
         "--vouchers-path", str(OUT / f"{name}-vouchers.json")],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"provider {name} exited; see {log.name}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    sys.exit(f"provider {name} not healthy in 300 s")


def post(url: str, body: dict) -> dict:
    r = httpx.post(f"{url}/v1/completions", json={"model": MODEL, **body}, timeout=600)
    r.raise_for_status()
    return r.json()


def run_all(fn, items, concurrency):
    t = time.monotonic()
    with cf.ThreadPoolExecutor(concurrency) as ex:
        res = list(ex.map(fn, items))
    return res, time.monotonic() - t


def generate(url, ps, max_tokens, concurrency):
    def one(item):
        p, temp, i = item
        r = post(url, {"prompt": p, "max_tokens": max_tokens, "temperature": temp, "seed": 1000 + i})
        return {"prompt": p, "temp": temp, "answer": r["choices"][0]["text"],
                "tokens": r["usage"]["completion_tokens"]}
    return run_all(one, ps, concurrency)


def score(auditor, answers, k, concurrency):
    """Per answer: (logprob, served token's rank-in-top-k flag, top logprobs) of each
    answer token as the auditor scores it."""
    def one(a):
        p = a["prompt"]
        r = post(auditor, {"prompt": p + a["answer"], "max_tokens": 0, "echo": True, "logprobs": k})
        lp = r["choices"][0]["logprobs"]
        out = []
        for tok, l, top, off in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], lp["text_offset"]):
            if off < len(p) or l is None or top is None:
                continue
            out.append((l, sorted(top.values(), reverse=True), tok in top, top))
        return out
    return run_all(one, answers, concurrency)


def tail_bound(tops, temperature):
    """`gateway/src/audit/stat.rs::tail_bound`."""
    top = [min(0.0, x) for x in tops if math.isfinite(x)]
    q = 1.0 - min(1.0, max(0.0, sum(math.exp(x) for x in top)))
    if temperature >= 1.0 or q <= 0.0:
        return q
    if not top:
        return 1.0
    inv = 1.0 / max(temperature, 1e-3)
    hi = max(top) * inv
    a = sum(math.exp(x * inv - hi) for x in top)
    b = q * math.exp(min(top) * (inv - 1.0) - hi)
    return b / (a + b) if a + b > 0 else q


def judge(tokens, temperature, k, z, slack, margin, min_tokens=16, aware=True):
    """`gateway/src/audit/stat.rs::judge` with the top list cut to k; `aware`
    False: the first rule (every answer judged with the temperature-1 tail bound
    against its top-k misses), for comparison. None: not judged."""
    if len(tokens) < min_tokens:
        return None
    greedy = aware and temperature <= 1e-6
    mu = var = 0.0
    out = 0
    for l, tops, _in_top in tokens:
        tk = tops[:k]
        if greedy:
            out += l < tops[0] - margin
            continue
        q = tail_bound(tk, temperature if aware else 1.0)
        mu += q
        var += q * (1.0 - q)
        out += l < tk[-1] - 1e-6
    return out > mu + z * math.sqrt(var) + slack


def rate(flags):
    judged = [f for f in flags if f is not None]
    if not judged:
        return "-", 0
    return f"{100.0 * sum(judged) / len(judged):5.1f}%", len(judged)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--answers", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--bin-dir", type=Path, default=ROOT / "target" / "release")
    ap.add_argument("--substitutes", default="noise0.1,noise0.3,drop3")
    ap.add_argument("--report-only", action="store_true", help="print the tables of the last run's calibration.json")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if a.report_only:
        report(load(), a)
        return 0
    subs = []
    for s in [x for x in a.substitutes.split(",") if x]:
        path = OUT / f"substitute-{s}.gguf"
        if not path.exists():
            args = ["--noise", s[5:]] if s.startswith("noise") else ["--drop-layers", s[4:]]
            subprocess.run([sys.executable, str(Path(__file__).parent / "make-substitute.py"),
                            *args, "--out", str(path)], check=True)
        subs.append((s, path))
    ps = prompts(a.answers)
    honest_proc, honest = start(a.bin_dir, None)
    results = {}
    try:
        gen, gen_s = generate(honest, ps, a.max_tokens, a.concurrency)
        scored, score_s = score(honest, gen, a.k, a.concurrency)
        results["honest"] = (gen, scored, gen_s, score_s)
        for name, path in subs:
            proc, url = start(a.bin_dir, path)
            try:
                g, gs = generate(url, ps, a.max_tokens, a.concurrency)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            sc, ss = score(honest, g, a.k, a.concurrency)
            results[name] = (g, sc, gs, ss)
            save(results)
            report(load(), a)
            sys.stdout.flush()
    finally:
        honest_proc.terminate()
        honest_proc.wait(timeout=30)
    save(results)
    report(load(), a)
    return 0


def save(results):
    (OUT / "calibration.json").write_text(json.dumps(
        {n: {"answers": [x["answer"] for x in r[0]], "temps": [x["temp"] for x in r[0]],
             "scored": [[t[:3] for t in s] for s in r[1]], "gen_s": r[2], "score_s": r[3]}
         for n, r in results.items()}))


def load():
    return json.loads((OUT / "calibration.json").read_text())


def report(results, a):
    """Prints the tables from saved results (`calibration.json`'s shape)."""
    print(f"\nAudit calibration: {MODEL}, {a.answers} answers per provider, max_tokens {a.max_tokens}, "
          f"half greedy / half T=0.8, half raw / half ChatML; auditor = the honest model, top-{a.k}\n")
    print("| provider | answers judged (>= 16 tokens) | top-k misses per answer | greedy top-1 misses (margin 0.5) per greedy answer | mean logprob | greedy answers identical to honest's |")
    print("|---|---|---|---|---|---|")
    honest = results["honest"]
    for name, r in results.items():
        judged = [(s, t) for s, t in zip(r["scored"], r["temps"]) if len(s) >= 16]
        outs = [sum(1 for x in s if not x[2]) for s, _ in judged]
        g1 = [sum(1 for x in s if x[0] < x[1][0] - 0.5) for s, t in judged if t == 0]
        lps = [sum(x[0] for x in s) / len(s) for s, _ in judged]
        same = sum(1 for x, h, t in zip(r["answers"], honest["answers"], r["temps"]) if t == 0 and x == h)
        greedy = sum(1 for t in r["temps"] if t == 0)
        print(f"| {name} | {len(judged)} | {sum(outs) / max(1, len(outs)):.2f} | {sum(g1) / max(1, len(g1)):.2f} | "
              f"{sum(lps) / max(1, len(lps)):.3f} | {same}/{greedy} |")
    subs = [n for n in results if n != "honest"]

    def row(label, **kw):
        cells = []
        for name in results:
            r = results[name]
            flags = [judge(s, t, **kw) for s, t in zip(r["scored"], r["temps"])]
            if name == "honest":
                cells.append(rate(flags)[0])
                cells.append(rate([f for f, t in zip(flags, r["temps"]) if t == 0])[0])
                cells.append(rate([f for f, t in zip(flags, r["temps"]) if t > 0])[0])
            else:
                cells.append(rate(flags)[0])
                cells.append(rate([f for f, t in zip(flags, r["temps"]) if t == 0])[0])
                cells.append(rate([f for f, t in zip(flags, r["temps"]) if t > 0])[0])
        print(f"| {label} | " + " | ".join(cells) + " |")

    head = "| rule | honest FP | FP greedy | FP T=0.8 | " + " | ".join(
        f"{n} caught | greedy | T=0.8" for n in subs) + " |"
    print("\nFailed audits (false positives on honest answers, detections on substituted ones):\n")
    print(head)
    print("|---|---|---|---|" + "---|---|---|" * len(subs))
    for k in sorted({3, a.k}):
        for z in (3.0, 4.0):
            for slack in (0.0, 2.0, 4.0):
                for margin in (0.2, 0.5, 1.0):
                    row(f"k {k}, z {z}, slack {slack}, margin {margin}", k=k, z=z, slack=slack, margin=margin)
    row(f"first rule: top-{a.k} misses against the T=1 bound for every answer, z 4, slack 2",
        k=a.k, z=4.0, slack=2.0, margin=0.5, aware=False)
    if all("gen_s" in r for r in results.values()):
        print(f"\nCost in provider time (wall clock of all {a.answers} requests at concurrency {a.concurrency}):\n")
        print("| provider | generation s | scoring s | scoring / generation |")
        print("|---|---|---|---|")
        for name, r in results.items():
            print(f"| {name} | {r['gen_s']:.1f} | {r['score_s']:.1f} | {r['score_s'] / r['gen_s']:.2f} |")
    print(f"\nReproduce: cargo build --release --bins && python3 benches/audit/calibrate.py "
          f"--answers {a.answers} --max-tokens {a.max_tokens} --substitutes {a.substitutes}")


if __name__ == "__main__":
    sys.exit(main())
