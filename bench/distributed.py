"""Vocabulary-parallel cross-entropy: the two collective plans and the metadata check, timed.

Spawns ``--world`` CPU processes (gloo on 127.0.0.1) and times, per (N, V) point, on every
rank, the median of ``--reps`` interleaved calls of:

* ``collectives/all_reduce``: only the forward's communication of that plan, an
  all-reduce MAX of N floats and an all-reduce SUM of N x 4 floats (label smoothing on;
  float64, the compute dtype on CPU);
* ``collectives/all_gather``: only the other plan's, one all-gather of N x 4 floats per rank;
* ``loss/<plan>/check=<bool>``: ``crossentropy.torch.distributed.cross_entropy`` forward and
  backward on the local shard [N, V/P] (float32, label smoothing 0.1), with and without the
  metadata exchange.

With ``--baseline FILE`` (a module with the same ``cross_entropy``, for example an earlier
version: ``git show REV:src/crossentropy/torch/distributed.py > /tmp/old_vp.py``) it also
times ``baseline/<plan>`` interleaved with ``loss/<plan>/check=True`` (A B A B ...) and
prints the median of the per-pair ratios new / baseline with their p20-p80 spread and the
load average.

Rank 0 prints a table and writes ``bench/results/distributed.csv`` (machine, versions,
date, load average in every row).  Timings on a shared machine are noisy; compare rows of
one run.

Run::

    python bench/distributed.py                # world 2; (N, V) = (512, 32000), (8192, 2000)
    python bench/distributed.py --world 3 --quick
    python bench/distributed.py --baseline /tmp/old_vp.py
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import importlib.util
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from crossentropy.torch import distributed as vp

OUT = Path(__file__).resolve().parent / "results" / "distributed.csv"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _load(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("baseline_vp", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _point(rank: int, world: int, n: int, v: int, reps: int, baseline: str | None
           ) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    sizes = vp.shard_sizes(v, world)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, sizes[rank], generator=g)
    y = torch.randint(0, v, (n,), generator=g)
    m = torch.randn(n, dtype=torch.float64)
    buf4r = torch.randn(n, 4, dtype=torch.float64)
    buf4 = torch.randn(n, 4, dtype=torch.float64)
    parts = [torch.empty_like(buf4) for _ in range(world)]

    def coll_reduce() -> None:
        dist.all_reduce(m, op=dist.ReduceOp.MAX)
        dist.all_reduce(buf4r, op=dist.ReduceOp.SUM)

    def coll_gather() -> None:
        dist.all_gather(parts, buf4)

    def loss_fn(plan: str, check: bool, module: Any = vp) -> Any:
        def f() -> None:
            xs = x.clone().requires_grad_()
            loss = module.cross_entropy(xs, y, label_smoothing=0.1, collective=plan,
                                        check=check, shard_sizes=sizes)
            loss.backward()
        return f

    cases = {
        "collectives/all_reduce": coll_reduce,
        "collectives/all_gather": coll_gather,
    }
    for plan in ("all_reduce", "all_gather"):
        for check in (True, False):
            cases[f"loss/{plan}/check={check}"] = loss_fn(plan, check)
        if baseline is not None:
            cases[f"baseline/{plan}"] = loss_fn(plan, True, _load(baseline))
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(reps):  # interleaved
        for k, fn in cases.items():
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=5) if len(ts) >= 5 else [min(ts)] * 4
        rows.append({"case": k, "world": world, "N": n, "V": v,
                     "median_ms": 1e3 * statistics.median(ts), "p20_ms": 1e3 * q[0],
                     "p80_ms": 1e3 * q[-1], "ratio": "", "ratio_p20": "", "ratio_p80": ""})
    if baseline is not None:
        for plan in ("all_reduce", "all_gather"):
            # per-pair ratios of the interleaved runs (A B A B ...): new / baseline
            r = [a / b for a, b in zip(times[f"loss/{plan}/check=True"],
                                       times[f"baseline/{plan}"], strict=True)]
            q = statistics.quantiles(r, n=5) if len(r) >= 5 else [min(r)] * 4
            rows.append({"case": f"ratio new/baseline {plan}", "world": world, "N": n, "V": v,
                         "median_ms": "", "p20_ms": "", "p80_ms": "",
                         "ratio": statistics.median(r), "ratio_p20": q[0], "ratio_p80": q[-1]})
    return rows


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if isinstance(v, float) else format(str(v), ">" + spec.split(".")[0])


def _worker(rank: int, world: int, port: int, points: list[tuple[int, int]], reps: int,
            baseline: str | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    rows = [r for n, v in points for r in _point(rank, world, n, v, reps, baseline)]
    if rank == 0:
        load = os.getloadavg()[0]
        stamp = {"machine": f"{platform.machine()} {os.cpu_count()} cpus",
                 "torch": torch.__version__, "date": dt.date.today().isoformat(),
                 "load": f"{load:.1f}"}
        print(f"load average {load:.1f}")
        print(f"{'case':32s} {'P':>2s} {'N':>6s} {'V':>6s} {'median ms':>10s} {'p20':>8s} "
              f"{'p80':>8s} {'ratio':>6s} {'p20':>6s} {'p80':>6s}")
        for r in rows:
            print(f"{r['case']:32s} {r['world']:2d} {r['N']:6d} {r['V']:6d} "
                  f"{_fmt(r['median_ms'], '10.3f')} {_fmt(r['p20_ms'], '8.3f')} "
                  f"{_fmt(r['p80_ms'], '8.3f')} {_fmt(r['ratio'], '6.2f')} "
                  f"{_fmt(r['ratio_p20'], '6.2f')} {_fmt(r['ratio_p80'], '6.2f')}")
        OUT.parent.mkdir(exist_ok=True)
        old: list[dict[str, Any]] = []
        if OUT.exists():  # earlier rows stay; new columns are left empty in them
            with OUT.open(newline="") as f:
                old = list(csv.DictReader(f))
        fields = list(dict.fromkeys([*(old[0] if old else {}), *rows[0], *stamp]))
        with OUT.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            for r in old:
                w.writerow(r)
            for r in rows:
                w.writerow({**r, **stamp})
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="one small point")
    ap.add_argument("--baseline", help="a module file with the same cross_entropy, to compare")
    a = ap.parse_args()
    points = [(256, 4000)] if a.quick else [(512, 32000), (8192, 2000)]
    mp.start_processes(_worker, args=(a.world, _free_port(), points, a.reps, a.baseline),
                       nprocs=a.world, start_method="spawn")


if __name__ == "__main__":
    main()
