"""Latency targets of the CPU path: import time, first call after a warm cache, tiny inputs.

    python bench/latency.py [--out bench/results/latency.csv]

* ``import crossentropy``: wall time of the import in a fresh interpreter (median of 7),
  and the cumulative figure ``python -X importtime`` reports for the package.
* first call after a warm numba cache: a fresh interpreter imports crossentropy, then times
  its first large ``cross_entropy`` call (the kernels load from numba's on-disk cache); the
  cache is warmed by one run before the timed ones.
* a 3-element softmax against scipy.special.softmax: the two alternated in one process
  (``harness.alternate``: 2000 calls per timing, 15 pairs, the median of the per-pair ratios
  with its p20-p80 spread).

Each row is stamped with the machine, versions, date, command and load average, like the
other benchmarks.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import alternate, load, stamp

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
    r = alternate(lambda: ce.softmax(x), lambda: scipy.special.softmax(x), pairs=15,
                  warmup=200, inner=2000)
    rows.append(("softmax of 3 elements, ours", "us (median)", r.candidate_s * 1e6, ""))
    rows.append(("softmax of 3 elements, scipy.special", "us (median)", r.baseline_s * 1e6, ""))
    rows.append(("softmax of 3 elements, ours / scipy",
                 f"ratio (median of 15 pairs, p20-p80 {r.p20:.2f}-{r.p80:.2f})", r.median,
                 "<= 2"))

    stamped = {**stamp(), "load": f"{load():.2f}"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["what", "unit", "value", "target", *stamped])
        for what, unit, value, target in rows:
            w.writerow([what, unit, f"{value:.4g}", target, *stamped.values()])
    print("| what | unit | value | target |\n|---|---|---|---|")
    for what, unit, value, target in rows:
        print(f"| {what} | {unit} | {value:.4g} | {target} |")
    print(f"\n{stamped}")


if __name__ == "__main__":
    main()
