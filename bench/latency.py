"""Latency targets of the CPU path: import time, first call after a warm cache, tiny inputs.

    python bench/latency.py [--out bench/results/latency.csv]

* ``import crossentropy``: wall time of the import in a fresh interpreter (median of 7),
  and the cumulative figure ``python -X importtime`` reports for the package.
* first call after a warm numba cache: a fresh interpreter imports crossentropy, then times
  its first large ``cross_entropy`` call (the kernels load from numba's on-disk cache); the
  cache is warmed by one run before the timed ones.
* a 3-element softmax next to scipy.special.softmax, timed side by side in one process.

Each row is stamped with the machine, versions and date, like the other benchmarks.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import platform
import statistics
import subprocess
import sys
import timeit
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

FIRST_CALL = """
import time, numpy as np
x = np.random.default_rng(0).normal(size=(256, 1024)).astype(np.float32)
y = np.zeros(256, dtype=np.int64)
import crossentropy as ce
t = time.perf_counter(); ce.cross_entropy(x, y, return_grad=True); print(time.perf_counter() - t)
"""

IMPORT = "import time; t = time.perf_counter(); import crossentropy; print(time.perf_counter() - t)"


def _run(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], capture_output=True, text=True, check=True
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(RESULTS / "latency.csv"))
    args = ap.parse_args()

    rows: list[tuple[str, str, float, str]] = []
    imports = [float(_run(IMPORT).stdout) for _ in range(7)]
    rows.append(("import crossentropy", "wall s (median of 7)", statistics.median(imports),
                 "<= 0.3 s"))
    err = _run("import crossentropy", "-X", "importtime").stderr
    pkg = [ln for ln in err.splitlines() if ln.rstrip().endswith("| crossentropy")]
    cumulative_us = int(pkg[-1].split("|")[1]) if pkg else -1
    rows.append(("import crossentropy", "-X importtime cumulative s", cumulative_us / 1e6,
                 "<= 0.3 s"))

    _run(FIRST_CALL)  # warm numba's on-disk cache
    first = [float(_run(FIRST_CALL).stdout) for _ in range(5)]
    rows.append(("first cross_entropy call, warm cache", "wall s (median of 5)",
                 statistics.median(first), "<= 1 s"))

    import numpy as np
    import scipy.special

    import crossentropy as ce

    x = np.array([3.0, 0.6, 6.3])
    n = 5000
    ours = min(timeit.repeat(lambda: ce.softmax(x), number=n, repeat=7)) / n
    theirs = min(timeit.repeat(lambda: scipy.special.softmax(x), number=n, repeat=7)) / n
    rows.append(("softmax of 3 elements, ours", "us (best of 7)", ours * 1e6, ""))
    rows.append(("softmax of 3 elements, scipy.special", "us (best of 7)", theirs * 1e6, ""))
    rows.append(("softmax of 3 elements, ours / scipy", "ratio", ours / theirs, "<= 2"))

    stamp = {
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["what", "unit", "value", "target", *stamp])
        for what, unit, value, target in rows:
            w.writerow([what, unit, f"{value:.4g}", target, *stamp.values()])
    print("| what | unit | value | target |\n|---|---|---|---|")
    for what, unit, value, target in rows:
        print(f"| {what} | {unit} | {value:.4g} | {target} |")
    print(f"\n{stamp}")


if __name__ == "__main__":
    main()
