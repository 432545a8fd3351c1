"""Per-call cost of crossentropy.torch.cross_entropy against torch.nn.functional.cross_entropy.

Forward + backward, float32 on the CPU, at a small shape (per-call overhead dominates) and
a medium one.  Candidate and baseline alternate in one process (A B A B ...); each sample
times `REPS` calls; the figure is the median of the per-pair ratios with the p20-p80
spread, and the load average is printed.

    python bench/torch_overhead.py [--pairs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import crossentropy as ce
import crossentropy.torch as cet


def _sample(fn, x, t, reps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(reps):
        x.grad = None
        fn(x, t).backward()
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()}")
    for n, c, reps in ((64, 10, 200), (512, 1000, 20)):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, c, generator=g).requires_grad_()
        t = torch.randint(0, c, (n,), generator=g)
        def numba_rows(x, t):
            # what the row kernel costs when cross_entropy_rows takes numba below
            # FAST_MIN_SIZE (the default there is the NumPy core: the small-size culprit)
            with ce.use_backend("numba"):
                return cet.cross_entropy(x, t)

        ours = {"cpu": lambda x, t: cet.cross_entropy(x, t),
                "cpu, numba rows": numba_rows,
                "torch": lambda x, t: cet.cross_entropy(x, t, impl="torch")}
        for name, fn in ours.items():
            for _ in range(3):  # warm-up (numba compile / load, allocator)
                _sample(fn, x, t, reps)
                _sample(F.cross_entropy, x, t, reps)
            ratios, a_t, b_t = [], [], []
            for _ in range(args.pairs):
                a = _sample(fn, x, t, reps)
                b = _sample(F.cross_entropy, x, t, reps)
                ratios.append(a / b)
                a_t.append(a)
                b_t.append(b)
            q = statistics.quantiles(ratios, n=5)
            print(f"{n}x{c} impl={name}: ours {statistics.median(a_t) * 1e6:.1f} us, "
                  f"F.cross_entropy {statistics.median(b_t) * 1e6:.1f} us, ratio median "
                  f"{statistics.median(ratios):.2f} (p20 {q[0]:.2f}, p80 {q[3]:.2f})")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
