"""The float32 one-pass row statistics against the two-pass ones, alternated (A B A B).

Usage: ``python bench/onepass.py [--pairs 7] [--modes value,stored]
[--out bench/results/onepass.csv]``

On one thread, over 256 MiB of float32 rows (N(0, 9) logits, from memory): the value pass
``_row_stats`` takes for long float32 rows (one read per block, the sum rescaled when the
maximum rises) against the two-pass one (a max pass, then the exp pass with the next row
prefetched), for row lengths around the switch ``_ONEPASS_MIN``.  Mode ``stored`` times
the same with the exponentials kept (softmax, the cross-entropy gradient): the one pass
then also scales the blocks stored before the last rise of the maximum
(``_rescale_blocks``), and the switch is ``_ONEPASS_MIN_STORED``.  Each cell: the median of
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
def _one(x: np.ndarray, buf: np.ndarray, store: bool, mb: np.ndarray) -> float:
    t = 0.0
    for i in range(x.shape[0]):
        if store:
            t += K._row_stats_1pass_stored(x[i], buf, mb)[1]
        else:
            t += K._row_stats_1pass(x[i], buf, mb)[1]
    return t


@nb.njit
def _two(x: np.ndarray, buf: np.ndarray, store: bool) -> float:
    t = 0.0
    for i in range(x.shape[0]):
        # (the kernels prefetch the next row only while it fits in L2 with the stored row)
        ok = i + 1 < x.shape[0] and not (store and x.shape[1] > K._PREFETCH_MAX_STORED)
        nxt = x[i + 1] if ok else x[0][:0]
        t += K._row_stats_2pass(x[i], False, buf, store, nxt)[1]
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--classes", default="1000,2000,3000,4096,8192,32000,128256")
    ap.add_argument("--modes", default="value,stored")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    rows = []
    for mode in args.modes.split(","):
        store = mode == "stored"
        least = K._ONEPASS_MIN_STORED if store else K._ONEPASS_MIN
        for C in (int(c) for c in args.classes.split(",")):
            x = (np.random.default_rng(0).standard_normal(((1 << 26) // C, C)) * 3)
            x = x.astype(np.float32)
            buf = np.empty(C if store else K._SUMBLK64)
            mb = np.empty(K._one_pass_blocks(C))
            r = alternate(lambda x=x, b=buf, s=store, mb=mb: _one(x, b, s, mb),
                          lambda x=x, b=buf, s=store: _two(x, b, s), pairs=args.pairs)
            ns1, ns2 = r.candidate_s / x.size * 1e9, r.baseline_s / x.size * 1e9
            used = "one" if C >= least else "two"
            print(f"{mode:6s} {C:7d} classes  one / two {r.median:.3f} ({r.p20:.3f}-"
                  f"{r.p80:.3f})  {ns1:.3f} / {ns2:.3f} ns per element  load "
                  f"{r.load_before:.1f}-{r.load_after:.1f}  (the kernels use: {used} pass)")
            rows.append({"mode": mode, "classes": C, "rows": x.shape[0], **r.fields(),
                         "uses": used, **stamp()})
    if args.out:
        write_csv(rows, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
