#!/usr/bin/env python3
"""Makes a substituted model for the audit calibration (issue 16): a copy of the
default model's GGUF whose weights differ, to be served under the default model's
id and weight digest by a lying provider.

Two substitutions, combinable:
  --noise A        every quantized weight matrix (not the token embedding) gets
                   Gaussian noise of A times that matrix's own standard deviation,
                   then is quantized again in its own type (same shapes, same size);
  --drop-layers L  transformer blocks L (comma separated) are dropped from the
                   residual stream: their attention output and FFN down
                   projections are zeroed, so each block adds nothing.

The file keeps its metadata, tokenizer and size: only weight values change, so a
provider loads it as the registered model. Needs the `gguf` PyPI package (MIT).

    python3 benches/audit/make-substitute.py --noise 0.3 \
        --out target/audit/substitute-noise0.3.gguf
"""
import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SRC = ROOT / ".tenzro/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    import gguf
    from gguf import quants

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--noise", type=float, default=0.0, help="noise std relative to each matrix's std")
    ap.add_argument("--drop-layers", default="", help="blocks to drop, e.g. 3,17")
    ap.add_argument("--seed", type=int, default=16)
    a = ap.parse_args()
    drop = {int(x) for x in a.drop_layers.split(",") if x.strip()}
    if a.noise <= 0 and not drop:
        print("nothing to substitute: give --noise and/or --drop-layers", file=sys.stderr)
        return 2
    a.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(a.src, a.out)
    reader = gguf.GGUFReader(a.out, "r+")
    rng = np.random.default_rng(a.seed)
    changed = 0
    for t in reader.tensors:
        qtype = t.tensor_type
        if qtype == gguf.GGMLQuantizationType.F32 or t.name == "token_embd.weight":
            continue
        parts = t.name.split(".")
        block = int(parts[1]) if parts[0] == "blk" else None
        zero = block in drop and parts[2] in ("attn_output", "ffn_down")
        if not zero and a.noise <= 0:
            continue
        w = quants.dequantize(t.data, qtype).astype(np.float32)
        if zero:
            w[:] = 0.0
        else:
            w += rng.standard_normal(w.shape, dtype=np.float32) * (a.noise * float(w.std()))
        q = quants.quantize(w, qtype)
        assert q.shape == t.data.shape and q.dtype == t.data.dtype, (t.name, q.shape, t.data.shape)
        t.data[...] = q
        changed += 1
    reader.data.flush()
    del reader
    print(f"{a.out}: {changed} tensors changed (noise {a.noise}, dropped blocks {sorted(drop) or '-'})")
    print(f"sha256 {sha256(a.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
