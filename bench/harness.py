"""A small benchmark harness: cases, providers, warm-up, medians and peak memory, CSV rows.

A *provider* is a name and a setup factory: ``setup(case)`` builds its inputs (outside the
timing) and returns the zero-argument callable to time, or raises :class:`Skip` with a
reason.  :func:`run` warms every callable up, times ``repeats`` calls, and reports the
median with the 20th and 80th percentiles, and the peak growth of the process's resident
memory during one extra call (sampled every millisecond from ``/proc/self/statm``, so it
sees NumPy, numba and PyTorch allocations alike).  Every CSV row is stamped with the
machine, the versions of the libraries and the date.

Timings on a shared machine are noisy: compare providers measured side by side in the same
run (``run`` interleaves them, one call each in turn, so that a burst of load hits all of
them) and report ratios.
"""

from __future__ import annotations

import csv
import datetime as _dt
import gc
import importlib
import os
import platform
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Case", "Provider", "Skip", "machine", "run", "versions", "write_csv"]


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
    stamp = {
        "machine": machine(),
        "versions": versions(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
    }
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
                **stamp,
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
