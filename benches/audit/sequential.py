#!/usr/bin/env python3
"""Replays the audit calibration (target/audit/calibration.json, written by
calibrate.py) through the sequential statistic of gateway/src/audit/seq.rs, offline:
no model runs.

Per sampled answer (0 < T <= 1) the score Z = (S - E) / sqrt(V): S the answer's
surprisal under the auditor (each token's -logprob, capped at the k-th top logprob's
surprisal + `cap`), E and V upper bounds of its mean and (a plug-in) variance under an
honest sampler at the request's temperature, from the top-k and the tail mass (every
tail token at the cap, with the largest tail weight at T). Per (provider, model, digest)
a one-sided CUSUM  C = max(0, C + clamp(Z, -clamp, clamp) - drift)  slashes when C >= threshold.

Replays the answers of each provider in random orders (drawn with replacement, so
sequences longer than the set) and prints: per-answer Z by provider, audits until
caught (median, 95th percentile) for T=0.8 traffic and for mixed traffic (half greedy,
judged by the per-answer greedy rule as well), and the honest provider's largest C
over long replays (the margin to the threshold).

    python3 benches/audit/sequential.py [--drift 0.5 --threshold 12 --cap 0 --clamp 5]
"""
import argparse
import json
import math
import random
import statistics as st
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def answer_score(tokens, temperature, cap, min_tokens=16, min_var=1.0):
    """`gateway/src/audit/seq.rs::answer_score` (tokens: [logprob, tops, in_top])."""
    if not 1e-6 < temperature <= 1:
        return None
    inv = 1.0 / temperature
    s_sum = e_sum = v_sum = 0.0
    n = 0
    for l, tops, _ in tokens:
        top = [min(0.0, x) for x in tops if math.isfinite(x)]
        if not top or not math.isfinite(l):
            continue
        hi, low = max(top), min(top)
        q = 1.0 - min(1.0, sum(math.exp(x) for x in top))
        m = -low + cap
        w = [math.exp(x * inv - hi * inv) for x in top]
        b = q * math.exp(low * (inv - 1.0) - hi * inv)
        z = sum(w) + b
        e = (sum(wi * -x for wi, x in zip(w, top)) + b * m) / z
        e2 = (sum(wi * x * x for wi, x in zip(w, top)) + b * m * m) / z
        s_sum += min(-l, m)
        e_sum += e
        v_sum += max(0.0, e2 - e * e)
        n += 1
    if n < min_tokens:
        return None
    return (s_sum - e_sum) / math.sqrt(max(v_sum, min_var))


def greedy_fails(tokens, temperature, z=3.0, slack=2.0, margin=0.5, min_tokens=16):
    """The per-answer greedy rule of stat.rs::judge (kept as it is)."""
    if temperature > 1e-6 or len(tokens) < min_tokens:
        return False
    return sum(1 for l, tops, _ in tokens if l < tops[0] - margin) > slack


def until_caught(items, a, rng, limit):
    """Audits (drawn with replacement from `items`: (Z or None, greedy fail)) until
    the CUSUM or the greedy rule slashes; None: not within `limit`."""
    c = 0.0
    for i in range(limit):
        z, g = rng.choice(items)
        if g:
            return i + 1
        if z is not None:
            c = max(0.0, c + max(-a.clamp, min(z, a.clamp)) - a.drift)
            if c >= a.threshold:
                return i + 1
    return None


def largest(items, a, rng, n):
    c = top = 0.0
    for _ in range(n):
        z, _ = rng.choice(items)
        if z is not None:
            c = max(0.0, c + max(-a.clamp, min(z, a.clamp)) - a.drift)
            top = max(top, c)
    return top


def pct(xs, p):
    xs = sorted(x if x is not None else math.inf for x in xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--file", type=Path, default=ROOT / "target" / "audit" / "calibration.json")
    ap.add_argument("--drift", type=float, default=0.5)
    ap.add_argument("--threshold", type=float, default=12.0)
    ap.add_argument("--cap", type=float, default=0.0)
    ap.add_argument("--clamp", type=float, default=5.0)
    ap.add_argument("--orders", type=int, default=2000, help="random orders per provider")
    ap.add_argument("--honest-length", type=int, default=10000, help="audits per honest replay")
    ap.add_argument("--honest-orders", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    data = json.loads(a.file.read_text())
    rng = random.Random(a.seed)
    items = {}
    print(f"Sequential audit replay of {a.file.name}: drift {a.drift}, threshold {a.threshold}, "
          f"cap {a.cap}, clamp {a.clamp}\n")
    print("| provider | sampled answers scored | Z mean | Z sd | Z max | greedy answers failing |")
    print("|---|---|---|---|---|---|")
    for name, r in data.items():
        rows = [(answer_score(s, t, a.cap), greedy_fails(s, t), t) for s, t in zip(r["scored"], r["temps"])]
        items[name] = rows
        zs = [z for z, _, _ in rows if z is not None]
        greedy = [g for _, g, t in rows if t == 0]
        print(f"| {name} | {len(zs)} | {st.mean(zs):.2f} | {st.pstdev(zs):.2f} | {max(zs):.2f} | "
              f"{sum(greedy)}/{len(greedy)} |")
    print(f"\nAudits until slashed ({a.orders} random orders each; '-' = not within 1000):\n")
    print("| provider | T=0.8 only: median | p95 | caught within 20 | mixed (half greedy): median | p95 |")
    print("|---|---|---|---|---|---|")
    for name, rows in items.items():
        if name == "honest":
            continue
        sampled = [(z, False) for z, _, t in rows if t > 0]
        mixed = [(z, g) for z, g, _ in rows]
        s = [until_caught(sampled, a, rng, 1000) for _ in range(a.orders)]
        m = [until_caught(mixed, a, rng, 1000) for _ in range(a.orders)]
        within = sum(1 for x in s if x is not None and x <= 20) / len(s)
        f = lambda v: "-" if v == math.inf else str(v)
        print(f"| {name} | {f(pct(s, .5))} | {f(pct(s, .95))} | {100 * within:.1f}% | {f(pct(m, .5))} | {f(pct(m, .95))} |")
    honest = [(z, g) for z, g, _ in items["honest"]]
    sampled = [(z, g) for z, g, t in items["honest"] if t > 0]
    tops = [largest(sampled, a, rng, a.honest_length) for _ in range(a.honest_orders)]
    # Each honest answer once, in random orders (no answer repeated).
    once = []
    for _ in range(a.orders):
        order = sampled[:]
        rng.shuffle(order)
        c = top = 0.0
        for z, _ in order:
            if z is not None:
                c = max(0.0, c + max(-a.clamp, min(z, a.clamp)) - a.drift)
                top = max(top, c)
        once.append(top)
    print(f"\nHonest, each sampled answer once in {a.orders} random orders: the CUSUM peaked at "
          f"{max(once):.2f} (threshold {a.threshold}: margin {a.threshold - max(once):.2f}).")
    slashed = sum(1 for g in honest if g[1])
    print(f"\nHonest: {sum(1 for z, _ in honest if z is not None)} sampled answers scored, greedy rule fails "
          f"{slashed} of {len(honest)}; over {a.honest_orders} replays of {a.honest_length} sampled audits "
          f"the CUSUM peaked at {max(tops):.2f} (median peak {st.median(tops):.2f}), threshold "
          f"{a.threshold}: margin {a.threshold - max(tops):.2f}.")
    # The bound's worst case: honest scores exactly N(0, 1) (the bound met with equality).
    worst = [until_caught([(rng.gauss(0, 1), False) for _ in range(4000)], a, rng, 200000)
             for _ in range(20)]
    print(f"If an honest sampler met the bound exactly (Z ~ N(0, 1)): a false slash after "
          f"{st.median([w or 200000 for w in worst]):.0f} sampled audits (median of 20 runs).")
    print(f"\nReproduce: python3 benches/audit/sequential.py --drift {a.drift} --threshold {a.threshold} "
          f"--cap {a.cap} --clamp {a.clamp}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
