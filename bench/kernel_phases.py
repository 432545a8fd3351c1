"""Where a row kernel's time goes: each phase on cached rows, one thread, in ns per element.

The value pass of ``cross_entropy`` / ``logsumexp`` is the max pass (``_row_max``) then the
exp pass (``_sum_exp``); ``_row_stats`` is both (for these float32 rows it now takes the
one pass of ``_row_stats_1pass``, see bench/onepass.py).  Each is timed over rows of
32,000 classes, 512 KiB of them, repeated (in L2, so memory does not enter); ``np.sum``
of the same cached rows and of a 1 GiB array (from memory) are the comparisons.
``_row_stats`` is also run on both cores at once, each on its own cached rows (``both, 2
threads``: the aggregate ns per element; a core slows down when the other one works
too).  That aggregate over the time of ``np.sum`` from memory is the last line: the
fewest reads a two-thread value pass can take with this arithmetic, the question of
docs/cpu.md (the target is 1.0).

Usage: ``python bench/kernel_phases.py [--reps 200]``
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial

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
            t += K._row_stats(x[i], buf, False, x[0][:0], x[0][:0])[1]
    return t


@nb.njit(parallel=True)
def _stats2(xs: np.ndarray, reps: int, exact: bool, buf: np.ndarray) -> float:
    """_stats on xs[0] and xs[1] at once, one thread each (own buffers)."""
    t = np.zeros(xs.shape[0])
    for c in nb.prange(xs.shape[0]):
        t[c] = _stats(xs[c], reps, exact, buf[c])
    return float(t.sum())


def _np_sums(x: np.ndarray, reps: int) -> None:
    for _ in range(reps):
        x.sum()


def _median_ns(f: Callable[[], object], reps: int, size: int) -> float:
    """Median of 5 timings of f(), which does `reps` passes over `size` elements, in ns per
    element (after one warm-up call, which also compiles)."""
    f()
    ts = []
    for _ in range(5):
        t0 = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t0) / reps / size * 1e9)
    return float(np.median(ts))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    print(f"load {os.getloadavg()[0]:.2f}; ns per element, median of 5 runs")
    nb.set_num_threads(min(2, nb.get_num_threads()))  # (_stats2: one thread per set)
    for dtype, exact in ((np.float32, False), (np.float64, True)):
        rows = (1 << 19) // np.dtype(dtype).itemsize // 32000  # 512 KiB of rows
        x = (rng.standard_normal((rows, 32000)) * 3).astype(dtype)
        x2 = (rng.standard_normal((2, rows, 32000)) * 3).astype(dtype)
        buf = np.empty(256)
        buf2 = np.empty((2, 256))
        phases: dict[str, Callable[[], object]] = {
            "max pass (_row_max)": partial(_maxes, x, args.reps),
            "exp pass (_sum_exp)": partial(_sums, x, args.reps, exact, buf),
            "both (_row_stats)": partial(_stats, x, args.reps, exact, buf),
            "np.sum, cached": partial(_np_sums, x, args.reps),
        }
        name = np.dtype(dtype).name
        for label, f in phases.items():
            print(f"{name:8s} {label:26s} {_median_ns(f, args.reps, x.size):6.3f}")
        # two threads, each x.size elements: aggregate = time / (2 x.size)
        agg = _median_ns(partial(_stats2, x2, args.reps, exact, buf2), args.reps, 2 * x.size)
        print(f"{name:8s} {'both, 2 threads (aggregate)':26s} {agg:6.3f}")
        big = np.ones((1 << 30) // np.dtype(dtype).itemsize, dtype=dtype)
        mem = _median_ns(big.sum, 1, big.size)
        print(f"{name:8s} {'np.sum, 1 GiB (memory)':26s} {mem:6.3f}")
        print(f"{name:8s} {'-> value pass >= reads':26s} {agg / mem:6.2f}")
        del big
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
