"""A small benchmark harness: cases, providers, warm-up, medians and peak memory, CSV rows.

A *provider* is a name and a setup factory: ``setup(case)`` builds its inputs (outside the
timing) and returns the zero-argument callable to time, or raises :class:`Skip` with a
reason.  :func:`run` warms every callable up, times ``repeats`` calls, and reports the
median with the 20th and 80th percentiles, and the peak growth of the process's resident
memory during one extra call (sampled every millisecond from ``/proc/self/statm``, so it
sees NumPy, numba and PyTorch allocations alike).  Every CSV row is stamped with the
machine, the versions of the libraries and the date.

Timings on a shared machine are noisy, so the method used everywhere in ``bench/`` is
:func:`alternate`: a candidate and its baseline (a floor such as ``np.sum`` or a competing
library) are called in turn in one process, A B A B ..., after a warm-up, and the result is
the median of the per-pair ratios t_A / t_B with its 20th and 80th percentiles, together
with the load average before and after (``os.getloadavg()``).  A burst of load hits both
members of a pair, so the ratio survives a noisy machine far better than either time.
:func:`stamp` gives the fields every CSV row carries: machine, versions, date, command and
load.  ``run`` (medians of interleaved providers) is kept for the absolute timings.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gc
import importlib
import os
import platform
import shlex
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Case", "Provider", "Ratio", "Skip", "alternate", "load", "machine", "run",
           "stamp", "versions", "write_csv"]


class Skip(Exception):
    """Raised by a setup factory when the provider cannot run this case (reason in args)."""


@dataclass(frozen=True)
class Case:
    """One benchmark point: an operation on inputs of a given shape and dtype."""

    op: str
    rows: int
    classes: int
    dtype: str
    extra: tuple[tuple[str, Any], ...] = ()

    @property
    def nbytes(self) -> int:
        return self.rows * self.classes * np.dtype(self.dtype).itemsize


@dataclass
class Provider:
    name: str
    setup: Callable[[Case], Callable[[], Any]]
    ops: frozenset[str] = field(default_factory=frozenset)  # empty: every op

    def handles(self, case: Case) -> bool:
        return not self.ops or case.op in self.ops


def machine() -> str:
    """CPU model and core count, e.g. 'AMD EPYC (2 cores)'."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} cores)"


def versions(names: Iterable[str] = ("numpy", "scipy", "numba", "torch", "jax",
                                     "crossentropy")) -> str:
    out = []
    for n in names:
        try:
            mod = importlib.import_module(n)
        except ImportError:
            continue
        out.append(f"{n}={getattr(mod, '__version__', '?')}")
    return " ".join(out)


def load() -> float:
    """The machine's 1-minute load average (``os.getloadavg()[0]``)."""
    return os.getloadavg()[0]


def command() -> str:
    """The command line that is running (``python bench/cpu.py --quick``)."""
    return shlex.join(["python", *sys.argv])


def stamp() -> dict[str, str]:
    """The fields stamped on every CSV row: machine, versions, UTC date and command."""
    return {
        "machine": machine(),
        "versions": versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "command": command(),
    }


@dataclass(frozen=True)
class Ratio:
    """The median of per-pair ratios t_candidate / t_baseline with its p20-p80 spread."""

    median: float
    p20: float
    p80: float
    candidate_s: float  # median time of the candidate
    baseline_s: float  # median time of the baseline
    pairs: int
    load_before: float
    load_after: float

    def fields(self) -> dict[str, float | int]:
        return {
            "ratio": round(self.median, 4),
            "ratio_p20": round(self.p20, 4),
            "ratio_p80": round(self.p80, 4),
            "candidate_ms": round(self.candidate_s * 1e3, 4),
            "baseline_ms": round(self.baseline_s * 1e3, 4),
            "pairs": self.pairs,
            "load_before": round(self.load_before, 2),
            "load_after": round(self.load_after, 2),
        }

    def __str__(self) -> str:
        return (f"{self.median:6.3f} [{self.p20:.3f}, {self.p80:.3f}]  "
                f"({self.candidate_s * 1e3:.2f} / {self.baseline_s * 1e3:.2f} ms, "
                f"{self.pairs} pairs, load {self.load_before:.1f}-{self.load_after:.1f})")


def alternate(
    candidate: Callable[[], Any],
    baseline: Callable[[], Any],
    *,
    pairs: int = 9,
    warmup: int = 2,
    inner: int = 1,
) -> Ratio:
    """Time `candidate` and `baseline` in alternation (A B A B ...) in this process.

    Both are called `warmup` times first (compilation, caches, page faults), then `pairs`
    times each in turn; each call is timed `inner` times in a row (for calls of a few
    microseconds) and the time per call kept.  Returns the median of the per-pair ratios
    t_A / t_B, their 20th and 80th percentiles, the two median times and the 1-minute load
    average before and after.
    """
    for _ in range(warmup):
        candidate()
        baseline()
    before = load()
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(pairs):
        for fn, ts in ((candidate, ta), (baseline, tb)):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            ts.append((time.perf_counter() - t0) / inner)
    r = np.array(ta) / np.array(tb)
    return Ratio(
        median=float(np.median(r)),
        p20=float(np.percentile(r, 20)),
        p80=float(np.percentile(r, 80)),
        candidate_s=float(np.median(ta)),
        baseline_s=float(np.median(tb)),
        pairs=pairs,
        load_before=before,
        load_after=load(),
    )


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], Any]) -> int:
    """Peak growth of the resident set (bytes) during one call of fn, sampled every ms."""
    gc.collect()
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        res = fn()
        peak[0] = max(peak[0], _rss())
        del res
    finally:
        stop.set()
        t.join()
    return max(0, peak[0] - base)


def run(
    cases: Sequence[Case],
    providers: Sequence[Provider],
    *,
    repeats: int = 5,
    warmup: int = 1,
    memory: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Time every provider on every case; return one dict (a CSV row) per pair."""
    stamped = stamp()
    rows: list[dict[str, Any]] = []
    for case in cases:
        fns: dict[str, Callable[[], Any]] = {}
        for p in providers:
            if not p.handles(case):
                continue
            try:
                fns[p.name] = p.setup(case)
            except Skip as exc:
                log(f"  skip {p.name} on {case}: {exc}")
            except MemoryError:
                log(f"  skip {p.name} on {case}: out of memory")
        times: dict[str, list[float]] = {n: [] for n in fns}
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for _ in range(repeats):  # interleaved: a burst of load hits every provider
            for n, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[n].append(time.perf_counter() - t0)
        for n, fn in fns.items():
            ts = np.array(times[n])
            row = {
                "op": case.op,
                "rows": case.rows,
                "classes": case.classes,
                "dtype": case.dtype,
                "provider": n,
                "median_s": float(np.median(ts)),
                "p20_s": float(np.percentile(ts, 20)),
                "p80_s": float(np.percentile(ts, 80)),
                "runs": len(ts),
                "read_gbps": case.nbytes / float(np.median(ts)) / 1e9,
                "peak_mb": peak_memory(fn) / 2**20 if memory else float("nan"),
                **dict(case.extra),
                "load": round(load(), 2),
                **stamped,
            }
            rows.append(row)
            log(
                f"  {case.op:>16} {case.rows}x{case.classes} {case.dtype:<8} {n:<18} "
                f"{row['median_s'] * 1e3:9.1f} ms  [{row['p20_s'] * 1e3:.1f}, "
                f"{row['p80_s'] * 1e3:.1f}]  peak +{row['peak_mb']:.0f} MiB"
            )
        del fns
        gc.collect()
    return rows


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write rows (dicts with the same keys) to a CSV file, creating the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
