"""How long the numba kernels take to start, each figure over `--runs` fresh processes.

* ``cold``: ``ce.warm_up()`` on an empty ``NUMBA_CACHE_DIR`` (the first run on a machine:
  the whole compile, spread over the cores);
* ``load``: ``ce.warm_up()`` again on that cache (a later process loading every kernel);
* ``first call``: a new process on the warm cache, its first float32 [2048, 32000]
  ``ce.cross_entropy`` against its second (the warm call); the difference is what a process
  pays to start the kernels (numba loads only the ones the call runs);
* ``numba floor``: the same difference for a one-line cached ``numba.njit`` function: the
  import of numba and the set-up of its compiler target (which imports SciPy where SciPy is
  installed), which every process that runs a numba kernel pays, whatever the kernel;
* with ``--serial``: the whole compile in one process, alternated with ``cold``;
* ``cold, CPU``: the CPU time (user + sys) of the cold ``warm_up()`` and of every process
  it started, which other work on a shared machine inflates far less than the wall time.

    python bench/cold_start.py --runs 3 [--serial]

Prints one line per run, then the median and range of each figure.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

_WARM_UP = "import crossentropy as ce; ce.warm_up()"
_SERIAL = "from crossentropy._cpu import _compile; _compile.compile_shared(1)"
_FIRST_CALL = textwrap.dedent("""
    import time
    import numpy as np
    import crossentropy as ce
    x = np.random.default_rng(0).standard_normal((2048, 32000)).astype(np.float32)
    y = np.arange(2048) % 32000
    t0 = time.perf_counter(); ce.cross_entropy(x, y)
    t1 = time.perf_counter(); ce.cross_entropy(x, y)
    t2 = time.perf_counter()
    print(t1 - t0, t2 - t1, ce.kernel_status().startswith("compiled"))
""")
_FLOOR_MODULE = "import numba\n\n@numba.njit(cache=True)\ndef one(x):\n    return x + 1\n"
_FLOOR_CALL = textwrap.dedent("""
    import sys, time
    t0 = time.perf_counter()
    import one_line
    one_line.one(1.0)
    t1 = time.perf_counter()
    one_line.one(2.0)
    print(t1 - t0, time.perf_counter() - t1)
""")


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # (waited-for descendants included)
    return r.ru_utime + r.ru_stime


def _timed(code: str, cache: str) -> tuple[float, float]:
    """(wall, CPU) seconds of a child process running `code` on the cache folder."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    c0 = _children_cpu()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - t0, _children_cpu() - c0


def _wall(code: str, cache: str) -> float:
    return _timed(code, cache)[0]


def _printed(code: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True)
    return out.stdout.split()


def _summary(name: str, xs: list[float], unit: str = "s") -> str:
    return (f"{name:28s} median {statistics.median(xs):7.2f} {unit} "
            f"(range {min(xs):.2f}-{max(xs):.2f}, {len(xs)} runs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--serial", action="store_true",
                    help="also the whole compile in one process (alternated with cold)")
    args = ap.parse_args()
    print(f"cores {len(os.sched_getaffinity(0))}, load {os.getloadavg()[0]:.2f}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    fig: dict[str, list[float]] = {k: [] for k in ("cold", "cold cpu", "serial", "serial cpu",
                                                   "load", "first", "warm", "first - warm",
                                                   "floor")}
    for i in range(args.runs):
        kinds = ["cold", "serial"] if args.serial else ["cold"]
        for kind in kinds if i % 2 == 0 else kinds[::-1]:
            with tempfile.TemporaryDirectory() as cache:
                wall, cpu = _timed(_WARM_UP if kind == "cold" else _SERIAL, cache)
                fig[kind].append(wall)
                fig[f"{kind} cpu"].append(cpu)
                line = (f"run {i}: {kind:6s} {wall:6.1f} s (CPU {cpu:.1f} s, loadavg "
                        f"{os.getloadavg()[0]:.2f})")
                if kind == "cold":
                    fig["load"].append(_wall(_WARM_UP, cache))
                    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
                    first, warm, compiled = _printed(_FIRST_CALL, env)
                    assert compiled == "True"
                    fig["first"].append(float(first))
                    fig["warm"].append(float(warm))
                    fig["first - warm"].append(float(first) - float(warm))
                    with tempfile.TemporaryDirectory() as mod:
                        with open(os.path.join(mod, "one_line.py"), "w") as f:
                            f.write(_FLOOR_MODULE)
                        env["PYTHONPATH"] = mod
                        _printed(_FLOOR_CALL, env)  # fills its cache
                        a, b = _printed(_FLOOR_CALL, env)
                    fig["floor"].append(float(a) - float(b))
                    line += (f", load {fig['load'][-1]:.2f} s, first call {first[:5]} s "
                             f"(warm {warm[:5]} s), numba floor {fig['floor'][-1]:.2f} s")
                print(line, flush=True)
    labels = {"cold": "warm_up(), cold cache", "cold cpu": "warm_up(), cold, CPU",
              "serial": "one process, cold cache", "serial cpu": "one process, CPU",
              "load": "warm_up(), warm cache", "first": "first call, warm cache",
              "warm": "second call", "first - warm": "first call - second call",
              "floor": "numba floor (one-line njit)"}
    for key, label in labels.items():
        if fig[key]:
            print(_summary(label, fig[key]))
    if fig["serial"]:
        ratios = [c / s for c, s in zip(fig["cold"], fig["serial"], strict=True)]
        print(_summary("cold / one process", ratios, unit="x"))
    print(f"load {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
