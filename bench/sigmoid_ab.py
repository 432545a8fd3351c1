"""The sigmoid kernels against another revision's, alternated in one process (A B A B).

Usage::

    mkdir /tmp/kold
    git archive REV src/crossentropy/_cpu | tar -x -C /tmp/kold --strip-components=3
    python bench/sigmoid_ab.py /tmp/kold

(a revision whose kernels were all in ``_cpu/_kernels.py``: ``git show
REV:src/crossentropy/_cpu/_kernels.py > /tmp/kold.py`` and ``/tmp/kold.py``)

``sigmoid_flat`` of this tree and of the old file on the same 2^25 elements (N(0, 8)),
value, value + derivative and log-sigmoid, and ``bce_logits_flat`` (the binary cross-entropy
with logits: its block sums and gradient, labels 0 / 1), float32 and float64: the median of
7 per-pair ratios new / old with p20-p80, the ns per element of each, and the load average.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import types
from typing import Any

import numpy as np

from crossentropy._cpu import _kernels as knew


def _pairs(run_new: Any, run_old: Any, args: tuple[Any, ...], n: int, label: str) -> None:
    """Time run_new(*args) and run_old(*args) alternately (7 pairs); print the median ratio."""
    ratios, tn, to = [], [], []
    for _ in range(7):
        t0 = time.perf_counter()
        run_new(*args)
        a = time.perf_counter() - t0
        t0 = time.perf_counter()
        run_old(*args)
        b = time.perf_counter() - t0
        ratios.append(a / b)
        tn.append(a)
        to.append(b)
    r = np.array(ratios)
    print(f"{label}: new/old {np.median(r):.3f} "
          f"(p20 {np.percentile(r, 20):.3f}, p80 {np.percentile(r, 80):.3f}); "
          f"new {np.median(tn) / n * 1e9:.2f} ns/elem, "
          f"old {np.median(to) / n * 1e9:.2f}; load {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] in ("-h", "--help") or not os.path.exists(args[0]):
        print("usage: python bench/sigmoid_ab.py OLD_CPU_FOLDER  (a copy of another "
              "revision's src/crossentropy/_cpu/, or of its _kernels.py before the kernels "
              "were split into modules)", file=sys.stderr)
        return 2
    # numba's cache finds a module by its name: register the old files under their own
    if os.path.isdir(args[0]):  # the kernel modules (relative imports) as a package "kold"
        pkg = types.ModuleType("kold")
        pkg.__path__ = [os.path.abspath(args[0])]  # (its __init__, the adapter, not run)
        sys.modules["kold"] = pkg
        kold: Any = importlib.import_module("kold._kernels")
    else:
        spec = importlib.util.spec_from_file_location("kold", args[0])
        assert spec is not None and spec.loader is not None
        kold = importlib.util.module_from_spec(spec)
        sys.modules["kold"] = kold
        spec.loader.exec_module(kold)
    rng = np.random.default_rng(0)
    n = 1 << 25
    for dt in (np.float32, np.float64):
        x = (rng.standard_normal(n) * 8).astype(dt)
        y = (rng.random(n) < 0.5).astype(dt)
        out = np.empty_like(x)
        d = np.empty_like(x)
        name = np.dtype(dt).name
        for log, want in ((False, False), (False, True), (True, False)):
            for k in (kold, knew):  # compile / warm
                k.sigmoid_flat(x[: 1 << 18], out[: 1 << 18], d[: 1 << 18], want, log)
            _pairs(knew.sigmoid_flat, kold.sigmoid_flat, (x, out, d, want, log), n,
                   f"{name} log={log} grad={want}")
        # BCE with logits, mean reduction with its gradient (as binary_cross_entropy_with_logits)
        part = np.empty((n + knew._BLOCK - 1) // knew._BLOCK)
        none = np.empty(0)
        for k in (kold, knew):
            m = 1 << 18
            k.bce_logits_flat(x[:m], y[:m], 1.0, 0.0, False, none, True, d[:m], 1.0 / n,
                              part[: m // knew._BLOCK])
        _pairs(knew.bce_logits_flat, kold.bce_logits_flat,
               (x, y, 1.0, 0.0, False, none, True, d, 1.0 / n, part), n,
               f"{name} bce loss+grad")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
