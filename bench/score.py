"""Throughput and peak memory of ``crossentropy score`` on large files at 1,000 classes.

Writes a CSV of probabilities (and optionally a .npy of logits and a Parquet file) of about
``--gb`` gigabytes by repeating one random block of rows, runs the console script on each
in a child process, and reports rows per second and the child's peak RSS (from wait4).
The block's own mean cross-entropy, computed here with NumPy, must equal the reported one.

    python bench/score.py --gb 5 --classes 1000            # the README numbers
    python bench/score.py --gb 0.2 --formats csv,npy       # a quick check
    python bench/score.py --calibrate --gb 1 --pairs 3     # docs/evaluation.md

``--calibrate`` times ``crossentropy calibrate`` on a .npy of float32 logits of an
over-confident model (calibrated logits times 2.5, labels drawn from the calibrated
softmax, every row drawn afresh) against one read of the same file (a child process
reading it in 8 MB pieces), alternating the two (A B A B ...) in one process, and reports
the median per-pair ratio (wall and CPU) with its p20-p80 spread, the number of passes
over the file, both peak RSS figures (wait4) and the load average.  The fitted T must be
the model's 2.5 within sampling error (0.05).
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


_READ = (
    "import sys\n"
    "with open(sys.argv[1], 'rb', buffering=0) as f:\n"
    "    while f.read(8 << 20):\n"
    "        pass\n"
    "print('{}')\n"
)


def write_calibration_npy(path: Path, labels: Path, classes: int, block: int,
                          target_bytes: int) -> int:
    """float32 logits of an over-confident model, every row drawn afresh (no repeated block,
    so the in-memory first fit on the file's head is a real estimate): calibrated logits
    z ~ N(0, 1.5^2) with labels drawn from softmax(z), written as 2.5 z."""
    import scipy.special

    reps = max(1, math.ceil(target_bytes / (block * classes * 4)))
    n = reps * block
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, classes))
    ys = np.empty(n, dtype=np.int64)
    for r in range(reps):
        rng = np.random.default_rng([1, r])
        z = rng.normal(scale=1.5, size=(block, classes))
        p = scipy.special.softmax(z, axis=1)
        u = rng.random(block)[:, None]
        ys[r * block:(r + 1) * block] = np.minimum(
            np.sum(np.cumsum(p, axis=1) < u, axis=1), classes - 1)
        out[r * block:(r + 1) * block] = (2.5 * z).astype(np.float32)
    out.flush()
    del out
    np.save(labels, ys)
    return n


def calibrate_bench(args: argparse.Namespace, d: Path, exe: str) -> None:
    """``crossentropy calibrate`` on a .npy of logits against one read of the file."""
    f, lab = d / "cal_logits.npy", d / "cal_labels.npy"
    t0 = time.perf_counter()
    n = write_calibration_npy(f, lab, args.classes, args.block, int(args.gb * 1e9))
    made = time.perf_counter() - t0
    cal = [exe, "calibrate", str(f), "--label", str(lab), "--logits", "--json",
           "--no-progress"]
    read = [sys.executable, "-c", _READ, str(f)]
    score = [exe, "score", str(f), "--label", str(lab), "--logits", "--json", "--no-progress"]
    pairs = []
    loads = [os.getloadavg()]
    for _ in range(args.pairs):
        cw, ccpu, crss, rep = run(cal)
        rw, rcpu, rrss, _ = run(read)
        q: dict[str, object] = {}
        if args.with_score:  # a third member: one pass of `score` over the same file
            sw, scpu, srss, _ = run(score)
            q = {"score_s": sw, "score_cpu_s": scpu, "score_rss_mb": srss / 2**20,
                 "ratio_to_score": cw / sw, "cpu_ratio_to_score": ccpu / scpu}
        loads.append(os.getloadavg())
        pairs.append({"calibrate_s": cw, "read_s": rw, "ratio": cw / rw,
                      "calibrate_cpu_s": ccpu, "read_cpu_s": rcpu,
                      "cpu_ratio": ccpu / max(rcpu, 1e-9),
                      "calibrate_rss_mb": crss / 2**20, "read_rss_mb": rrss / 2**20,
                      "passes": rep["passes"], "temperature": rep["temperature"],
                      "last_dF_dT": rep["iterations"][-1]["dF_dT"],  # type: ignore[index]
                      **q})
        print(json.dumps(pairs[-1]), flush=True)
        # the model's true temperature is 2.5: recovered within sampling error
        assert abs(float(rep["temperature"]) - 2.5) < 0.05, rep["temperature"]  # type: ignore[arg-type]
    ratios = np.array([q["ratio"] for q in pairs])
    row = {"format": "npy-calibrate", "classes": args.classes, "rows": n,
           "bytes": f.stat().st_size, "pairs": len(pairs),
           "ratio_median": round(float(np.median(ratios)), 2),
           "ratio_p20": round(float(np.percentile(ratios, 20)), 2),
           "ratio_p80": round(float(np.percentile(ratios, 80)), 2),
           "cpu_ratio_median": round(float(np.median([q["cpu_ratio"] for q in pairs])), 2),
           "calibrate_s_median": round(float(np.median([q["calibrate_s"] for q in pairs])), 2),
           "calibrate_cpu_s_median": round(float(np.median([q["calibrate_cpu_s"]
                                                            for q in pairs])), 2),
           "read_s_median": round(float(np.median([q["read_s"] for q in pairs])), 2),
           "passes": pairs[0]["passes"], "temperature": pairs[0]["temperature"],
           "peak_rss_mb": round(max(q["calibrate_rss_mb"] for q in pairs), 1),
           "read_peak_rss_mb": round(max(q["read_rss_mb"] for q in pairs), 1),
           "load_average": loads, "generate_s": round(made, 1)}
    if args.with_score:
        for k in ("ratio_to_score", "cpu_ratio_to_score"):
            v = np.array([float(q[k]) for q in pairs])
            row[k] = [round(float(np.percentile(v, x)), 2) for x in (20, 50, 80)]
        row["score_peak_rss_mb"] = round(max(float(q["score_rss_mb"])
                                             for q in pairs), 1)
    print(json.dumps(row), flush=True)
    meta = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()}",
            "python": platform.python_version(), "numpy": np.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": " ".join(sys.argv)}
    out = Path(args.out).with_name(f"calibrate_{args.gb:g}gb.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": [row], "pairs": pairs}, indent=2)
                   + "\n")
    if not args.keep:
        for g in (f, lab):
            g.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=5.0, help="size of each file (GB, 1e9 bytes)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--block", type=int, default=1000, help="rows in the repeated block")
    ap.add_argument("--formats", default="csv,npy,parquet")
    ap.add_argument("--dir", default="/tmp/crossentropy-bench")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "score.json"))
    ap.add_argument("--calibrate", action="store_true",
                    help="time calibrate on a .npy of logits against one read of the file")
    ap.add_argument("--pairs", type=int, default=3, help="with --calibrate: A B pairs")
    ap.add_argument("--with-score", action="store_true",
                    help="with --calibrate: also alternate one `score` pass (A B C ...)")
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    exe = shutil.which("crossentropy") or str(Path(sys.executable).parent / "crossentropy")
    if args.calibrate:
        calibrate_bench(args, d, exe)
        return
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
