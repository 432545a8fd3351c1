"""Fused linear cross-entropy: peak memory and time against the full-logits path and torch's.

Three providers compute ``loss = CE(hidden @ weight.T, target)`` (mean) and its gradients
with respect to hidden and weight, forward + backward:

* ``full``: ``logits = hidden @ weight.T`` then ``torch.nn.functional.cross_entropy``;
* ``torch_chunked``: torch's own ``F.linear_cross_entropy`` with
  ``options=LinearCrossEntropyOptions()`` (its chunked path, default chunking);
* ``crossentropy``: :func:`crossentropy.torch.linear_cross_entropy` (default chunking).

Each (provider, N, V) point runs in a fresh subprocess: the inputs are allocated and one
warm-up step runs, then the resident set size is read as the baseline, the peak-RSS counter
is reset (``/proc/self/clear_refs``), and ``--reps`` timed steps run.  Each step's wall time
and process CPU time (all threads) are recorded: on a shared, loaded machine the CPU time is
the steadier measure of the work done.  "Extra peak" is the
peak RSS minus that baseline: every byte the step needs above its inputs (the gradients
included, which are the same for every provider).  Providers are interleaved point by
point, so the ratios are measured side by side.

This script is self-contained (``bench/harness.py`` did not exist when it was written); its
CSV follows the same conventions: one row per point with the machine, versions and date,
median, p20 and p80 of the time, and the peak memory.

Run::

    python bench/linear_ce.py                 # the target point and the N/V sweep, + plot
    python bench/linear_ce.py --quick         # small shapes, a smoke test
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROVIDERS = ("full", "torch_chunked", "crossentropy")
RESULTS = Path(__file__).resolve().parent / "results"


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _worker(provider: str, n: int, d: int, v: int, reps: int, threads: int) -> dict[str, object]:
    """One provider at one point, in this (fresh) process."""
    import torch

    torch.set_num_threads(threads)
    import torch.nn.functional as F

    import crossentropy.torch as cet

    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(n, d, generator=g) / d**0.5).requires_grad_()
    weight = torch.randn(v, d, generator=g).requires_grad_()
    target = torch.randint(0, v, (n,), generator=g)

    def step() -> float:
        if provider == "full":
            loss = F.cross_entropy(hidden @ weight.T, target)
        elif provider == "torch_chunked":
            loss = F.linear_cross_entropy(
                hidden, weight, target, options=torch.nn.LinearCrossEntropyOptions()
            )
        else:
            loss = cet.linear_cross_entropy(hidden, weight, target)
        loss.backward()
        return loss.item()

    value = step()  # warm-up (JIT compilation, thread pools)
    hidden.grad = weight.grad = None
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    times, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        hidden.grad = weight.grad = None
    peak = _rss_kib("VmHWM")
    return {"times": times, "cpu": cpu, "extra_peak_mib": (peak - base) / 1024, "loss": value}


def _quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _run_point(provider: str, n: int, d: int, v: int, reps: int, threads: int) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--worker", provider, str(n), str(d), str(v), str(reps),
           str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    res: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return res


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _meta() -> dict[str, str]:
    import numpy
    import torch

    import crossentropy

    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = "-"
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus {_cpu_model()}".strip(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "numba": numba_version,
        "crossentropy": crossentropy.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small shapes (smoke test)")
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3, help="timed steps per subprocess")
    ap.add_argument("--rounds", type=int, default=2,
                    help="subprocesses per provider and point, interleaved with the others")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--points", default=None,
                    help="N:V pairs, comma separated (default: the target and a sweep)")
    ap.add_argument("--out", default=str(RESULTS / "linear_ce.csv"))
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    if args.points:
        points = [tuple(int(x) for x in p.split(":")) for p in args.points.split(",")]
    elif args.quick:
        points = [(256, 2000), (512, 4000)]
        args.d = min(args.d, 128)
    else:
        points = [(4096, 32000), (1024, 32000), (2048, 32000), (4096, 8000), (4096, 16000),
                  (4096, 64000)]
    meta = _meta()
    rows = []
    for n, v in points:
        runs: dict[str, list[dict[str, object]]] = {p: [] for p in PROVIDERS}
        for _ in range(args.rounds):
            for provider in PROVIDERS:
                runs[provider].append(_run_point(provider, n, args.d, v, args.reps,
                                                 args.threads))
        for provider in PROVIDERS:
            times = [t for r in runs[provider] for t in r["times"]]  # type: ignore[attr-defined]
            peaks = [float(r["extra_peak_mib"]) for r in runs[provider]]  # type: ignore[arg-type]
            cpu = [t for r in runs[provider] for t in r.get("cpu", [])]  # type: ignore[attr-defined]
            row = {
                "provider": provider, "N": n, "D": args.d, "V": v,
                "median_s": statistics.median(times), "p20_s": _quantile(times, 0.2),
                "p80_s": _quantile(times, 0.8),
                "cpu_median_s": statistics.median(cpu) if cpu else float("nan"),
                "extra_peak_mib": max(peaks),
                "logits_mib": n * v * 4 / 2**20, "runs": args.rounds * args.reps,
                "threads": args.threads, "loss": runs[provider][0]["loss"], **meta,
            }
            rows.append(row)
            print(f"N={n:5d} V={v:6d} {provider:14s} median {row['median_s']:.3f}s "
                  f"[{row['p20_s']:.3f}, {row['p80_s']:.3f}]  extra peak "
                  f"{row['extra_peak_mib']:.0f} MiB", flush=True)
        by = {r["provider"]: r for r in rows[-3:]}
        full, ours, tch = by["full"], by["crossentropy"], by["torch_chunked"]
        mem = float(ours["extra_peak_mib"]) / float(full["extra_peak_mib"])
        print(f"    crossentropy/full: memory {mem:.3f}x"
              f", time {ours['median_s'] / full['median_s']:.3f}x; crossentropy/torch_chunked:"
              f" memory {ours['extra_peak_mib'] / tch['extra_peak_mib']:.3f}x, time "
              f"{ours['median_s'] / tch['median_s']:.3f}x; CPU time crossentropy/full "
              f"{float(ours['cpu_median_s']) / float(full['cpu_median_s']):.3f}x", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    if not args.no_plot:
        _plot(rows, out.with_suffix(".png"))


def _plot(rows: list[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    n_max = max(int(r["N"]) for r in rows)  # type: ignore[call-overload]
    v_ref = 32000 if any(r["V"] == 32000 for r in rows) else int(rows[0]["V"])  # type: ignore[call-overload]
    for col, (key, fixed_key, fixed) in enumerate((("N", "V", v_ref), ("V", "N", n_max))):
        for provider in PROVIDERS:
            sel = sorted((r for r in rows if r["provider"] == provider and r[fixed_key] == fixed),
                         key=lambda r: int(r[key]))  # type: ignore[call-overload]
            if not sel:
                continue
            xs = [r[key] for r in sel]
            axes[0][col].plot(xs, [r["extra_peak_mib"] for r in sel], "o-", label=provider)
            axes[1][col].errorbar(
                xs, [r["median_s"] for r in sel],
                yerr=[[float(r["median_s"]) - float(r["p20_s"]) for r in sel],  # type: ignore[arg-type]
                      [float(r["p80_s"]) - float(r["median_s"]) for r in sel]],  # type: ignore[arg-type]
                fmt="o-", label=provider, capsize=3,
            )
        axes[0][col].set_title(f"extra peak RSS vs {key} ({fixed_key} = {fixed})")
        axes[0][col].set_ylabel("MiB")
        axes[1][col].set_title(f"forward + backward time vs {key} ({fixed_key} = {fixed})")
        axes[1][col].set_ylabel("seconds (median, p20-p80)")
        for ax in (axes[0][col], axes[1][col]):
            ax.set_xlabel(key)
            ax.legend()
            ax.grid(alpha=0.3)
    d = rows[0]["D"]
    fig.suptitle(f"linear cross-entropy, float32, D = {d}, {rows[0]['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        p, n, d, v, reps, threads = sys.argv[2:8]
        print(json.dumps(_worker(p, int(n), int(d), int(v), int(reps), int(threads))))
    else:
        main()
