"""Cold compile of the numba kernels: ``ce.warm_up()`` on an empty numba cache, with the
parts spread over the cores (``compile_in_parallel``, what warm_up does) against one
process (``compile_all``), alternated A B A B in fresh child processes, each with its own
empty ``NUMBA_CACHE_DIR``.  Also the warm load (a second process on the filled cache).

    python bench/cold_start.py --pairs 2

Prints one line per run and the median of the per-pair ratios parallel / serial.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

CODE = {
    "parallel": "from crossentropy import _cpu; _cpu.compile_in_parallel()",
    "serial": "from crossentropy import _cpu; _cpu.compile_all()",
    "load": "from crossentropy import _cpu; _cpu.compile_all()",
}


def _run(kind: str, cache: str) -> float:
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", CODE[kind]], env=env, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    print(f"cores {len(os.sched_getaffinity(0))}, load {os.getloadavg()[0]:.2f}")
    ratios = []
    for i in range(args.pairs):
        times = {}
        for kind in ("parallel", "serial") if i % 2 == 0 else ("serial", "parallel"):
            with tempfile.TemporaryDirectory() as cache:
                times[kind] = _run(kind, cache)
                load = _run("load", cache)
            print(f"pair {i}: {kind:8s} {times[kind]:6.1f} s cold, then {load:4.2f} s to load",
                  flush=True)
        ratios.append(times["parallel"] / times["serial"])
    print(f"parallel / serial: median {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} pairs)")


if __name__ == "__main__":
    main()
