"""The NumPy core against the textbook NumPy code, in alternation (issue: a NumPy reference
that is not pathological, <= 4x the textbook time on large inputs).

Each pair times the library's NumPy path (``ce.use_backend("numpy")``) and the textbook code
for the same operation back to back, after one warm-up of each; the figure is the median of
the per-pair ratios with its p20-p80 spread.  Textbook code (what a user would write):

* cross_entropy: ``m = max; lse = m + log(sum(exp(x - m))); mean(lse - x[y])``
* cross_entropy + gradient: the same, plus ``softmax - onehot`` divided by N
* softmax: ``e = exp(x - max); e / sum(e)``;  log_softmax: ``s = x - max; s - log(sum(exp(s)))``

Usage: ``python bench/numpy_path.py [--pairs 7] [--shapes 4096x32000:float32,...]
[--out bench/results/numpy_path.csv]``
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import crossentropy as ce


def _textbook(x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], Any]]:
    n = x.shape[0]
    rows = np.arange(n)

    def ce_value() -> Any:
        m = x.max(-1, keepdims=True)
        lse = m[:, 0] + np.log(np.exp(x - m).sum(-1))
        return np.mean(lse - x[rows, y])

    def ce_grad() -> Any:
        m = x.max(-1, keepdims=True)
        e = np.exp(x - m)
        s = e.sum(-1, keepdims=True)
        loss = np.mean(m[:, 0] + np.log(s[:, 0]) - x[rows, y])
        g = e / s
        g[rows, y] -= 1.0
        g /= n
        return loss, g

    def softmax() -> Any:
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def log_softmax() -> Any:
        s = x - x.max(-1, keepdims=True)
        return s - np.log(np.exp(s).sum(-1, keepdims=True))

    return {"cross_entropy": ce_value, "cross_entropy+grad": ce_grad, "softmax": softmax,
            "log_softmax": log_softmax}


def _ours(x: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], Any]]:
    return {
        "cross_entropy": lambda: ce.cross_entropy(x, y),
        "cross_entropy+grad": lambda: ce.cross_entropy(x, y, return_grad=True),
        "softmax": lambda: ce.softmax(x),
        "log_softmax": lambda: ce.log_softmax(x),
    }


def _time(f: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--shapes", default="4096x32000:float32,1024x32000:float64")
    ap.add_argument("--out", default="bench/results/numpy_path.csv")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    rows_out = []
    stamp = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "python": platform.python_version(), "numpy": np.__version__,
        "crossentropy": ce.__version__, "date": dt.date.today().isoformat(),
        "command": "python " + " ".join(sys.argv),
    }
    for spec in args.shapes.split(","):
        shape, dtype = spec.split(":")
        n, c = (int(v) for v in shape.split("x"))
        x = rng.normal(scale=3.0, size=(n, c)).astype(dtype)
        y = rng.integers(0, c, size=n)
        ours, book = _ours(x, y), _textbook(x, y)
        with ce.use_backend("numpy"):
            for op in ours:
                ours[op]()
                book[op]()  # warm-up
                ratios, t_ours, t_book = [], [], []
                loads = []
                for _ in range(args.pairs):
                    a = _time(ours[op])
                    b = _time(book[op])
                    ratios.append(a / b)
                    t_ours.append(a)
                    t_book.append(b)
                    loads.append(os.getloadavg()[0])
                r = np.array(ratios)
                row = {
                    "op": op, "shape": shape, "dtype": dtype, "pairs": args.pairs,
                    "ratio_median": round(float(np.median(r)), 3),
                    "ratio_p20": round(float(np.percentile(r, 20)), 3),
                    "ratio_p80": round(float(np.percentile(r, 80)), 3),
                    "ours_median_s": round(float(np.median(t_ours)), 4),
                    "textbook_median_s": round(float(np.median(t_book)), 4),
                    "load_avg": round(float(np.mean(loads)), 1), **stamp,
                }
                rows_out.append(row)
                print(f"{op:20s} {shape:>11s} {dtype:8s} ratio {row['ratio_median']:.2f} "
                      f"(p20 {row['ratio_p20']:.2f}, p80 {row['ratio_p80']:.2f})  ours "
                      f"{row['ours_median_s']:.3f} s  textbook {row['textbook_median_s']:.3f} s"
                      f"  load {row['load_avg']}", flush=True)
        del x
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows_out[0]))
        w.writeheader()
        w.writerows(rows_out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
