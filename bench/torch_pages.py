"""The torch layer's CPU gradient buffer on huge pages against torch's own allocation.

::

    python bench/torch_pages.py [--pairs 7] [--out bench/results/torch_pages.csv]

``crossentropy.torch.cross_entropy`` forward + backward (mean reduction, int64 labels,
the gradient not kept between calls) with the gradient buffer from ``_ops._fresh_like``
(a NumPy array seen as a tensor: NumPy madvises huge pages for arrays of 4 MiB and more)
against the same call with ``torch.empty_like`` (torch's CPU allocator: 4 KiB pages under
the usual transparent-huge-page setting, "madvise"), alternated in this process (the
method of ``bench/harness.py``).  Also ``torch.empty_like(x).fill_(1)`` against the same on
``torch.from_numpy(np.empty(...))``: the page faults alone.  Prints the transparent huge
page setting, which decides the outcome: with "always" both allocations get huge pages.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import crossentropy.torch as cet
from crossentropy.torch import _ops
from harness import alternate, stamp, write_csv

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = ((8192, 32000), (512, 128256), (65536, 1000))


def _thp() -> str:
    try:
        return Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=7)
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--out", default=str(RESULTS / "torch_pages.csv"))
    args = ap.parse_args()
    fresh = _ops._fresh_like
    thp = _thp()
    print(f"transparent huge pages: {thp}")
    rows = []
    for dt in args.dtypes.split(","):
        dtype = getattr(torch, dt)
        for n, c in SHAPES:
            x = torch.randn(n, c, dtype=dtype, requires_grad=True)
            y = torch.randint(0, c, (n,))

            def fb(alloc: object, x: torch.Tensor = x, y: torch.Tensor = y) -> None:
                _ops._fresh_like = alloc  # type: ignore[assignment]
                x.grad = None
                cet.cross_entropy(x, y).backward()
                _ops._fresh_like = fresh

            def numpy_fill(x: torch.Tensor = x) -> None:
                np_dtype = np.float32 if x.dtype == torch.float32 else np.float64
                torch.from_numpy(np.empty(tuple(x.shape), dtype=np_dtype)).fill_(1.0)

            def torch_fill(x: torch.Tensor = x) -> None:
                torch.empty_like(x).fill_(1.0)

            def torch_alloc(x: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
                t = torch.empty_like(x)
                return t, t.numpy()

            cases = (
                ("torch_fb", lambda: fb(fresh), lambda: fb(torch_alloc)),
                ("empty_fill", numpy_fill, torch_fill),
            )
            for op, cand, base in cases:
                r = alternate(cand, base, pairs=args.pairs)
                print(f"{op:10s} {n}x{c} {dt}  huge pages / torch.empty_like  {r}")
                rows.append({"op": op, "shape": f"{n}x{c}", "dtype": dt,
                             "baseline": "torch.empty_like", "thp": thp, **r.fields(),
                             **stamp()})
            del x, y
    write_csv(rows, args.out)


if __name__ == "__main__":
    main()
