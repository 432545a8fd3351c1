"""The sigmoid kernels against another revision's, alternated in one process (A B A B).

Usage::

    git show REV:src/crossentropy/_cpu/_kernels.py > /tmp/kold.py
    python bench/sigmoid_ab.py /tmp/kold.py

``sigmoid_flat`` of this tree and of the old file on the same 2^25 elements (N(0, 8)),
value, value + derivative and log-sigmoid, float32 and float64: the median of 7 per-pair
ratios new / old with p20-p80, the ns per element of each, and the load average.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

import numpy as np

from crossentropy._cpu import _kernels as knew


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python bench/sigmoid_ab.py OLD_KERNELS.py", file=sys.stderr)
        return 2
    # numba's cache finds a module by its name: register the old file under its own
    spec = importlib.util.spec_from_file_location("kold", args[0])
    assert spec is not None and spec.loader is not None
    kold = importlib.util.module_from_spec(spec)
    sys.modules["kold"] = kold
    spec.loader.exec_module(kold)
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        x = (rng.standard_normal(1 << 25) * 8).astype(dt)
        out = np.empty_like(x)
        d = np.empty_like(x)
        for log, want in ((False, False), (False, True), (True, False)):
            for k in (kold, knew):  # compile / warm
                k.sigmoid_flat(x[: 1 << 18], out[: 1 << 18], d[: 1 << 18], want, log)
            ratios, tn, to = [], [], []
            for _ in range(7):
                t0 = time.perf_counter()
                knew.sigmoid_flat(x, out, d, want, log)
                a = time.perf_counter() - t0
                t0 = time.perf_counter()
                kold.sigmoid_flat(x, out, d, want, log)
                b = time.perf_counter() - t0
                ratios.append(a / b)
                tn.append(a)
                to.append(b)
            r = np.array(ratios)
            print(f"{np.dtype(dt).name} log={log} grad={want}: new/old {np.median(r):.3f} "
                  f"(p20 {np.percentile(r, 20):.3f}, p80 {np.percentile(r, 80):.3f}); "
                  f"new {np.median(tn) / x.size * 1e9:.2f} ns/elem, "
                  f"old {np.median(to) / x.size * 1e9:.2f}; load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
