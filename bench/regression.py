"""Speed of this tree against another checkout of crossentropy, in alternation.

Each pair runs the same timing script twice, as two child processes -- once with this
tree's ``src`` first on ``sys.path``, once with the baseline's -- in A B A B order; each
child warms up (numba compiled, buffers touched), times ``--reps`` calls of every
operation and prints the median.  The figure per operation is the median over pairs of
``time(this tree) / time(baseline)`` with the p20-p80 spread; below 1 is faster.

Usage::

    git worktree add /tmp/base <commit>
    python bench/regression.py --baseline /tmp/base --pairs 5 --out bench/results/regression.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np
import crossentropy as ce
n, c, reps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)
out = {}
for dtype in ("float32", "float64"):
    x = rng.normal(scale=3.0, size=(n, c)).astype(dtype)
    y = rng.integers(0, c, size=n)
    g = np.empty_like(x)
    buf = np.empty_like(x)
    ops = {
        "cross_entropy": lambda: ce.cross_entropy(x, y),
        "cross_entropy+grad(grad_out)": lambda: ce.cross_entropy(x, y, return_grad=True,
                                                                 grad_out=g),
        "softmax(out)": lambda: ce.softmax(x, out=buf),
        "log_softmax(out)": lambda: ce.log_softmax(x, out=buf),
        "logsumexp": lambda: ce.logsumexp(x),
        "sigmoid": lambda: ce.sigmoid(x),
        "small softmax(3)": lambda: ce.softmax([9.8, 3.7, 0.2]),
    }
    for name, f in ops.items():
        f(); f()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
        out[f"{name} {dtype}"] = float(np.median(ts))
print(json.dumps(out))
"""


def _child(src: Path, n: int, c: int, reps: int) -> dict[str, float]:
    res = subprocess.run([sys.executable, "-c", CHILD, str(src), str(n), str(c), str(reps)],
                         capture_output=True, text=True, check=True)
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True, help="root of the other checkout")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--shape", default="2048x32000")
    ap.add_argument("--out", default="bench/results/regression.csv")
    args = ap.parse_args(argv)
    here = Path(__file__).resolve().parent.parent / "src"
    base = Path(args.baseline).resolve() / "src"
    n, c = (int(v) for v in args.shape.split("x"))
    ratios: dict[str, list[float]] = {}
    loads = []
    for _ in range(args.pairs):
        a = _child(here, n, c, args.reps)
        b = _child(base, n, c, args.reps)
        loads.append(os.getloadavg()[0])
        for k in a:
            ratios.setdefault(k, []).append(a[k] / b[k])
    stamp = {"shape": args.shape, "pairs": args.pairs, "reps": args.reps,
             "load_avg": round(float(np.mean(loads)), 1),
             "machine": f"{platform.machine()} {os.cpu_count()} cores",
             "date": dt.date.today().isoformat(), "command": "python " + " ".join(sys.argv)}
    rows = []
    for k, r in ratios.items():
        arr = np.array(r)
        rows.append({"operation": k, "ratio_median": round(float(np.median(arr)), 3),
                     "ratio_p20": round(float(np.percentile(arr, 20)), 3),
                     "ratio_p80": round(float(np.percentile(arr, 80)), 3), **stamp})
        print(f"{k:40s} {rows[-1]['ratio_median']:.2f} (p20 {rows[-1]['ratio_p20']:.2f}, "
              f"p80 {rows[-1]['ratio_p80']:.2f})")
    print(f"load average {stamp['load_avg']}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
