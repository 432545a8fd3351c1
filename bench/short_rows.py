"""The cross-entropy row kernel on short rows, these kernels against a git revision's.

::

    python bench/short_rows.py [--against HEAD] [--pairs 15] [--out FILE]

Calls ``ce_rows_into`` of ``crossentropy._cpu._kernels`` directly (one thread, no Python
layers above it: what a small torch call pays inside the kernel) on rows of 10 and 64
classes, value only and with the gradient, float32 and float64, and alternates it with the
same call on the kernels file of revision ``--against`` (compiled from a temporary copy, as
``bench/cpu.py --against`` does), 200 calls per timing: the median of the per-pair ratios
with the p20-p80 spread, and the time per row.  Rows are stamped like every benchmark's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crossentropy._cpu as adapter
from cpu import kernels_at
from harness import alternate, stamp, write_csv

SHAPES = ((64, 10), (4096, 10), (64, 64), (4096, 64))


def _call(k: Any, x: np.ndarray, y: np.ndarray, grad: bool) -> Any:
    n = x.shape[0]
    g = np.empty_like(x)
    loss, lse = np.empty(n), np.empty(n)
    w = np.ones(1)

    def run() -> None:
        k.ce_rows_into(x, y, w, False, -100, 0.0, 0.0, 0.0, g, grad, 1.0 / n,
                       x.dtype == np.float64, loss, lse, 1, False)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--against", default="HEAD")
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--out", default=None, help="CSV to write (default: print only)")
    args = ap.parse_args()
    new, old = adapter.kernels(), kernels_at(args.against)
    rows = []
    rng = np.random.default_rng(0)
    print(f"{'shape':>9} {'dtype':<8} {'pass':<6} {'new / ' + args.against:<24} ns/row new, old")
    for n, c in SHAPES:
        for dt in ("float32", "float64"):
            x = (rng.standard_normal((n, c)) * 3).astype(dt)
            y = rng.integers(0, c, n)
            for grad in (False, True):
                r = alternate(_call(new, x, y, grad), _call(old, x, y, grad),
                              pairs=args.pairs, warmup=3, inner=200)
                what = "grad" if grad else "value"
                print(f"{n:>5}x{c:<3} {dt:<8} {what:<6} {r.median:.3f} ({r.p20:.3f}-{r.p80:.3f})"
                      f"{'':6} {r.candidate_s / n * 1e9:6.1f}, {r.baseline_s / n * 1e9:6.1f}"
                      f"  (load {r.load_before:.1f}-{r.load_after:.1f})")
                rows.append({"shape": f"{n}x{c}", "dtype": dt, "pass": what,
                             "baseline": f"kernels@{args.against}", "ratio": r.median,
                             "p20": r.p20, "p80": r.p80, "ns_per_row": r.candidate_s / n * 1e9,
                             "ns_per_row_baseline": r.baseline_s / n * 1e9,
                             "load": f"{r.load_before:.2f}-{r.load_after:.2f}", **stamp()})
    if args.out:
        write_csv(rows, args.out)


if __name__ == "__main__":
    main()
