"""The float32 one-pass row statistics against the two-pass ones, alternated (A B A B).

Usage: ``python bench/onepass.py [--pairs 7] [--out bench/results/onepass.csv]``

On one thread, over 256 MiB of float32 rows (N(0, 9) logits, from memory): the value pass
``_row_stats`` takes for long float32 rows (one read per block, the sum rescaled when the
maximum rises) against the two-pass one (a max pass, then the exp pass with the next row
prefetched), for row lengths around the switch ``_ONEPASS_MIN``.  Each cell: the median of
the per-pair ratios one / two with p20-p80, the ns per element of each, the load average.
Both return the same (m, s, k); s agrees to ~2e-9 relative (the float32-work exponentials).
"""

from __future__ import annotations

import argparse

import numba as nb
import numpy as np

from crossentropy._cpu import _kernels as K
from harness import alternate, stamp, write_csv


@nb.njit
def _one(x: np.ndarray, buf: np.ndarray) -> float:
    t = 0.0
    for i in range(x.shape[0]):
        t += K._row_stats_1pass(x[i], buf)[1]
    return t


@nb.njit
def _two(x: np.ndarray, buf: np.ndarray) -> float:
    t = 0.0
    for i in range(x.shape[0]):
        nxt = x[i + 1] if i + 1 < x.shape[0] else x[0][:0]
        t += K._row_stats_2pass(x[i], False, buf, False, nxt)[1]
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--classes", default="1000,2000,3000,4096,8192,32000,128256")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    buf = np.empty(K._SUMBLK64)
    rows = []
    for C in (int(c) for c in args.classes.split(",")):
        x = (np.random.default_rng(0).standard_normal(((1 << 26) // C, C)) * 3)
        x = x.astype(np.float32)
        r = alternate(lambda x=x: _one(x, buf), lambda x=x: _two(x, buf), pairs=args.pairs)
        ns1, ns2 = r.candidate_s / x.size * 1e9, r.baseline_s / x.size * 1e9
        used = "one" if C >= K._ONEPASS_MIN else "two"
        print(f"{C:7d} classes  one / two {r.median:.3f} ({r.p20:.3f}-{r.p80:.3f})  "
              f"{ns1:.3f} / {ns2:.3f} ns per element  load {r.load_before:.1f}-"
              f"{r.load_after:.1f}  (the kernels use: {used} pass)")
        rows.append({"classes": C, "rows": x.shape[0], **r.fields(), "uses": used,
                     **stamp()})
    if args.out:
        write_csv(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
