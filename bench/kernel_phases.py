"""Where a row kernel's time goes: each phase on cached rows, one thread, in ns per element.

The value pass of ``cross_entropy`` / ``logsumexp`` is the max pass (``_row_max``) then the
exp pass (``_sum_exp``); ``_row_stats`` is both (for these float32 rows it now takes
the one pass of ``_row_stats_1pass``, see bench/onepass.py).  Each is timed over 16 rows of 32,000
classes (2 MB in float32: in L2) repeated, so memory does not enter; ``np.sum`` of the same
cached rows and of a 1 GiB array (from memory) are the comparisons.  Two cores at the
cached per-element cost of ``_row_stats`` versus one core reading memory is the question
of docs/cpu.md: whether the value pass can reach the read floor at all.

Usage: ``python bench/kernel_phases.py [--reps 200]``
"""

from __future__ import annotations

import argparse
import os
import time

import numba as nb
import numpy as np

from crossentropy._cpu import _kernels as K


@nb.njit
def _maxes(x: np.ndarray, reps: int) -> float:
    t = 0.0
    for _ in range(reps):
        for i in range(x.shape[0]):
            t += K._row_max(x[i])[0]
    return t


@nb.njit
def _sums(x: np.ndarray, reps: int, exact: bool, buf: np.ndarray) -> float:
    t = 0.0
    for _ in range(reps):
        for i in range(x.shape[0]):
            t += K._sum_exp(x[i], 5.0, exact, buf, False, x[0][:0])
    return t


@nb.njit
def _stats(x: np.ndarray, reps: int, exact: bool, buf: np.ndarray) -> float:
    t = 0.0
    for _ in range(reps):
        for i in range(x.shape[0]):
            t += K._row_stats(x[i], exact, buf, False, x[0][:0], x[0][:0])[1]
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"load {os.getloadavg()[0]:.2f}; ns per element, median of 5 runs")
    for dtype, exact in ((np.float32, False), (np.float64, True)):
        x = (rng.standard_normal((16, 32000)) * 3).astype(dtype)
        buf = np.empty(256)
        phases = {
            "max pass (_row_max)": lambda x=x: _maxes(x, args.reps),
            "exp pass (_sum_exp)": lambda x=x, e=exact, b=buf: _sums(x, args.reps, e, b),
            "both (_row_stats)": lambda x=x, e=exact, b=buf: _stats(x, args.reps, e, b),
            "np.sum, cached": lambda x=x: [x.sum() for _ in range(args.reps)],
        }
        for name, f in phases.items():
            f()  # compile / warm
            ts = []
            for _ in range(5):
                t0 = time.perf_counter()
                f()
                ts.append((time.perf_counter() - t0) / args.reps / x.size * 1e9)
            print(f"{np.dtype(dtype).name:8s} {name:22s} {np.median(ts):6.3f}")
        big = np.ones((1 << 30) // np.dtype(dtype).itemsize, dtype=dtype)
        big.sum()
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            big.sum()
            ts.append((time.perf_counter() - t0) / big.size * 1e9)
        print(f"{np.dtype(dtype).name:8s} {'np.sum, 1 GiB (memory)':22s} {np.median(ts):6.3f}")
        del big
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
