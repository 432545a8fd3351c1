"""Throughput and peak memory of ``crossentropy score`` on large files at 1,000 classes.

Writes a CSV of probabilities (and optionally a .npy of logits and a Parquet file) of about
``--gb`` gigabytes by repeating one random block of rows, runs the console script on each
in a child process, and reports rows per second and the child's peak RSS (from wait4).
The block's own mean cross-entropy, computed here with NumPy, must equal the reported one.

    python bench/score.py --gb 5 --classes 1000            # the README numbers
    python bench/score.py --gb 0.2 --formats csv,npy       # a quick check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def block(rows: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random logits, their softmax rounded to 6 significant digits, and labels."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(rows, classes))
    y = rng.integers(0, classes, size=rows)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p = np.array([[float(f"{v:.6g}") for v in row] for row in p])
    return z, p, y


def write_csv(path: Path, p: np.ndarray, y: np.ndarray, target_bytes: int) -> int:
    header = ",".join([f"p{j}" for j in range(p.shape[1])] + ["label"]) + "\n"
    lines = "".join(",".join(f"{v:.6g}" for v in row) + f",{lab}\n"
                    for row, lab in zip(p, y, strict=True))
    reps = max(1, math.ceil((target_bytes - len(header)) / len(lines)))
    with open(path, "w") as f:
        f.write(header)
        for _ in range(reps):
            f.write(lines)
    return reps * len(y)


def write_npy(path: Path, labels: Path, z: np.ndarray, y: np.ndarray, target_bytes: int) -> int:
    reps = max(1, math.ceil(target_bytes / z.astype(np.float32).nbytes))
    n = reps * len(y)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, z.shape[1]))
    for r in range(reps):
        out[r * len(y):(r + 1) * len(y)] = z
        out.flush()
    del out
    np.save(labels, np.tile(y, reps))
    return n


def write_parquet(path: Path, p: np.ndarray, y: np.ndarray, target_bytes: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Row groups of 10 blocks (10,000 rows at the defaults, 80 MB): few enough that the
    # footer stays small, small enough that one row group fits the memory budget.
    group = 10
    t = pa.table({**{f"p{j}": np.tile(p[:, j], group) for j in range(p.shape[1])},
                  "label": np.tile(y, group)})
    reps = max(1, math.ceil(target_bytes / (p.nbytes + y.nbytes) / group))
    with pq.ParquetWriter(path, t.schema, compression="none", use_dictionary=False) as w:
        for _ in range(reps):
            w.write_table(t)
    return reps * group * len(y)


# Linux copies a process's peak-RSS mark into its fork children and keeps it across exec, so
# a command started straight from this (large) process would report this process's peak.  A
# small Python wrapper starts it instead and reports its rusage on the last stderr line.
_WRAP = (
    "import json, os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:])\n"
    "_, st, ru = os.wait4(p.pid, 0)\n"
    "sys.stderr.write('\\nRUSAGE ' + json.dumps([ru.ru_maxrss, ru.ru_utime + ru.ru_stime]))\n"
    "sys.exit(os.waitstatus_to_exitcode(st))\n"
)


def run(cmd: list[str]) -> tuple[float, float, int, dict[str, object]]:
    """Wall seconds, CPU seconds (user + system), peak RSS in bytes of the command alone,
    and the JSON report.  On a shared machine the CPU time is the steadier number."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {proc.stderr.decode()}")
    maxrss_kb, cpu = json.loads(proc.stderr.decode().rsplit("RUSAGE ", 1)[1])
    return wall, float(cpu), int(maxrss_kb) * 1024, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=5.0, help="size of each file (GB, 1e9 bytes)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--block", type=int, default=1000, help="rows in the repeated block")
    ap.add_argument("--formats", default="csv,npy,parquet")
    ap.add_argument("--dir", default="/tmp/crossentropy-bench")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "score.json"))
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("crossentropy") or str(Path(sys.executable).parent / "crossentropy")
    z, p, y = block(args.block, args.classes)
    target = int(args.gb * 1e9)
    q = p / p.sum(axis=1, keepdims=True)
    ce_probs = float(np.mean(-np.log(q[np.arange(len(y)), y])))
    zs = z.astype(np.float32).astype(np.float64)
    m = zs.max(axis=1)
    ce_logits = float(np.mean(m + np.log(np.exp(zs - m[:, None]).sum(axis=1))
                              - zs[np.arange(len(y)), y]))
    results = []
    for fmt in args.formats.split(","):
        t0 = time.perf_counter()
        if fmt == "csv":
            f = d / "probs.csv"
            n = write_csv(f, p, y, target)
            cmd = [exe, "score", str(f), "--json", "--no-progress"]
            want = ce_probs
        elif fmt == "npy":
            f = d / "logits.npy"
            n = write_npy(f, d / "labels.npy", z, y, target)
            cmd = [exe, "score", str(f), "--label", str(d / "labels.npy"), "--logits",
                   "--json", "--no-progress"]
            want = ce_logits
        elif fmt == "parquet":
            f = d / "probs.parquet"
            n = write_parquet(f, p, y, target)
            cmd = [exe, "score", str(f), "--json", "--no-progress"]
            want = ce_probs
        else:
            raise SystemExit(f"unknown format {fmt}")
        made = time.perf_counter() - t0
        size = f.stat().st_size
        wall, cpu, rss, rep = run(cmd)
        got = float(rep["cross_entropy"])  # type: ignore[arg-type]
        assert rep["rows"] == n, (rep["rows"], n)
        assert abs(got - want) <= 1e-9 * want, (got, want)
        row = {"format": fmt, "classes": args.classes, "rows": n, "bytes": size,
               "seconds": round(wall, 2), "rows_per_s": round(n / wall),
               "cpu_seconds": round(cpu, 2), "rows_per_cpu_s": round(n / cpu),
               "mb_per_s": round(size / wall / 1e6, 1), "peak_rss_mb": round(rss / 2**20, 1),
               "cross_entropy": got, "expected": want, "generate_s": round(made, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep:
            f.unlink()
            if fmt == "npy":
                (d / "labels.npy").unlink()
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
            "python": platform.python_version(), "numpy": np.__version__,
            "load_average": os.getloadavg(),
            "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "command": " ".join(sys.argv)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
