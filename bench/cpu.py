"""CPU benchmark: crossentropy's numba kernels against NumPy, SciPy, PyTorch and JAX.

::

    python bench/cpu.py                    # the full table (main, small, big, f64 cases)
    python bench/cpu.py --quick            # the main case only
    python bench/cpu.py --cases main,small,big,f64small
    python bench/cpu.py --plot-only        # redraw bench/results/cpu.png from the CSV

Operations, on float logits [rows, classes] and int64 labels, mean reduction:

* ``ce``: cross-entropy value; ``ce+grad``: value and gradient with respect to the logits;
* ``softmax``, ``log_softmax`` along the class axis.

Providers: ``numpy-naive`` (max, exp, sum, log written the obvious way), ``scipy``
(``scipy.special.log_softmax`` + take, ``softmax``, ``log_softmax``), ``torch`` (eager,
``F.cross_entropy``; ``ce+grad`` is forward + backward), ``torch.compile`` (the same,
compiled by inductor), ``jax.jit`` (when installed), ``ours`` (``crossentropy`` with the
numba backend), ``ours-inplace`` (the gradient written over the logits, ``grad_out=x``; the
softmax written into a preallocated ``out``), and two read-bandwidth yardsticks on ``ce``:
``np.sum`` and a numba parallel sum over the same logits.

Writes ``bench/results/cpu.csv`` (one row per case and provider, stamped with machine,
versions and date) and ``bench/results/cpu.png`` (time against the number of classes,
one line per provider, for ``ce`` and ``ce+grad``), and prints the target ratios.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Case, Provider, Skip, machine, run, write_csv

RESULTS = Path(__file__).resolve().parent / "results"


_shared: dict[tuple[int, int, str], tuple[np.ndarray, np.ndarray]] = {}


def _data(case: Case, own: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The case's logits (N(0, 9)) and labels.  One copy is shared by the providers that
    only read it (a 4 GiB case must not be held once per provider); ``own`` gives a private
    copy (for the in-place provider)."""
    key = (case.rows, case.classes, case.dtype)
    if key not in _shared:
        _shared.clear()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((case.rows, case.classes), dtype=np.float32)
        x *= 3.0
        x = x.astype(case.dtype, copy=False)
        _shared[key] = (x, rng.integers(0, case.classes, case.rows))
    x, y = _shared[key]
    return (x.copy(), y) if own else (x, y)


# --------------------------------------------------------------------------- providers


def numpy_naive(case: Case) -> Callable[[], Any]:
    x, y = _data(case)
    n = case.rows
    r = np.arange(n)

    def ce() -> Any:
        m = x.max(axis=1, keepdims=True)
        lse = np.log(np.exp(x - m).sum(axis=1)) + m[:, 0]
        return np.mean(lse - x[r, y])

    def ce_grad() -> Any:
        m = x.max(axis=1, keepdims=True)
        e = np.exp(x - m)
        s = e.sum(axis=1, keepdims=True)
        loss = np.mean(np.log(s[:, 0]) + m[:, 0] - x[r, y])
        e /= s
        e[r, y] -= 1.0
        e /= n
        return loss, e

    def softmax() -> Any:
        e = np.exp(x - x.max(axis=1, keepdims=True))
        e /= e.sum(axis=1, keepdims=True)
        return e

    def log_softmax() -> Any:
        z = x - x.max(axis=1, keepdims=True)
        z -= np.log(np.exp(z).sum(axis=1, keepdims=True))
        return z

    return {"ce": ce, "ce+grad": ce_grad, "softmax": softmax, "log_softmax": log_softmax}[
        case.op
    ]


def scipy_special(case: Case) -> Callable[[], Any]:
    try:
        import scipy.special as sp
    except ImportError as exc:
        raise Skip("scipy not installed") from exc
    x, y = _data(case)
    r = np.arange(case.rows)
    if case.op == "ce":
        return lambda: -np.mean(sp.log_softmax(x, axis=1)[r, y])
    if case.op == "softmax":
        return lambda: sp.softmax(x, axis=1)
    if case.op == "log_softmax":
        return lambda: sp.log_softmax(x, axis=1)
    raise Skip(case.op)


def _torch(case: Case, compiled: bool) -> Callable[[], Any]:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError as exc:
        raise Skip("torch not installed") from exc
    x, y = _data(case)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    ops: dict[str, Callable[..., Any]] = {
        "ce": F.cross_entropy,
        "ce+grad": F.cross_entropy,
        "softmax": lambda z: torch.softmax(z, dim=1),
        "log_softmax": lambda z: torch.log_softmax(z, dim=1),
    }
    f = ops[case.op]
    if compiled:
        f = torch.compile(f, dynamic=False)
    if case.op == "ce+grad":
        xg = torch.from_numpy(x.copy() if case.nbytes < 2**31 else x).requires_grad_(True)

        def fwd_bwd() -> Any:
            loss = f(xg, yt)
            loss.backward()
            g = xg.grad
            xg.grad = None  # not held between calls (4 GiB at the big case)
            return loss.item(), g

        return fwd_bwd
    if case.op == "ce":
        return lambda: f(xt, yt).item()
    return lambda: f(xt)


def torch_eager(case: Case) -> Callable[[], Any]:
    return _torch(case, False)


def torch_compile(case: Case) -> Callable[[], Any]:
    return _torch(case, True)


def jax_jit(case: Case) -> Callable[[], Any]:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as exc:
        raise Skip("jax not installed") from exc
    x, y = _data(case)
    xj = jnp.asarray(x)
    yj = jnp.asarray(y)

    def ce(z: Any, t: Any) -> Any:
        lp = jax.nn.log_softmax(z, axis=1)
        return -jnp.mean(jnp.take_along_axis(lp, t[:, None], axis=1))

    if case.op == "ce":
        f = jax.jit(ce)
        return lambda: f(xj, yj).block_until_ready()
    if case.op == "ce+grad":
        g = jax.jit(jax.value_and_grad(ce))
        return lambda: jax.block_until_ready(g(xj, yj))
    h = jax.jit({"softmax": jax.nn.softmax, "log_softmax": jax.nn.log_softmax}[case.op])
    return lambda: h(xj).block_until_ready()


def ours(case: Case) -> Callable[[], Any]:
    import crossentropy as ce

    ce.set_backend("numba")
    x, y = _data(case)
    if case.op == "ce":
        return lambda: ce.cross_entropy(x, y)
    if case.op == "ce+grad":
        return lambda: ce.cross_entropy(x, y, return_grad=True)
    f = {"softmax": ce.softmax, "log_softmax": ce.log_softmax}[case.op]
    return lambda: f(x)


def ours_inplace(case: Case) -> Callable[[], Any]:
    import crossentropy as ce

    ce.set_backend("numba")
    x, y = _data(case, own=True)
    if case.op == "ce+grad":
        # the gradient overwrites the logits; the next call differentiates at the gradient,
        # which has the same cost (all values finite)
        return lambda: ce.cross_entropy(x, y, return_grad=True, grad_out=x)
    if case.op in ("softmax", "log_softmax"):
        out = np.empty_like(x)
        f = {"softmax": ce.softmax, "log_softmax": ce.log_softmax}[case.op]
        return lambda: f(x, out=out)
    raise Skip(case.op)


def np_sum(case: Case) -> Callable[[], Any]:
    x, _ = _data(case)
    return lambda: x.sum()


def numba_sum(case: Case) -> Callable[[], Any]:
    import numba

    @numba.njit(parallel=True, fastmath=True)
    def rowsums(a: Any, out: Any) -> None:
        for i in numba.prange(a.shape[0]):
            s = 0.0
            r = a[i]
            for j in range(r.shape[0]):
                s += r[j]
            out[i] = s

    x, _ = _data(case)
    out = np.empty(x.shape[0])
    rowsums(x[:2], out[:2])
    return lambda: rowsums(x, out)


PROVIDERS = [
    Provider("numpy-naive", numpy_naive),
    Provider("scipy", scipy_special, frozenset({"ce", "softmax", "log_softmax"})),
    Provider("torch", torch_eager),
    Provider("torch.compile", torch_compile, frozenset({"ce", "ce+grad"})),
    Provider("jax.jit", jax_jit),
    Provider("ours", ours),
    Provider("ours-inplace", ours_inplace, frozenset({"ce+grad", "softmax", "log_softmax"})),
    Provider("np.sum (read bw)", np_sum, frozenset({"ce"})),
    Provider("numba sum (read bw)", numba_sum, frozenset({"ce"})),
]
SLOW = {"numpy-naive", "scipy"}  # left out of the big case (minutes per op at 4 GiB)

OPS = ("ce", "ce+grad", "softmax", "log_softmax")


CASE_SETS = {
    # name: (rows, classes, dtype, ops, leave out the slow providers)
    "main": (8192, 32000, "float32", OPS, False),
    "small": (512, 32000, "float32", OPS, False),
    "big": (8192, 128256, "float32", ("ce", "ce+grad"), True),
    "f64": (8192, 32000, "float64", OPS, False),
    "f64small": (512, 32000, "float64", OPS, False),
}


def cases(names: list[str]) -> list[tuple[Case, list[Provider]]]:
    out = []
    fast = [p for p in PROVIDERS if p.name not in SLOW]
    for name in names:
        n, c, dt, ops, no_slow = CASE_SETS[name]
        out += [(Case(op, n, c, dt), fast if no_slow else PROVIDERS) for op in ops]
    return out


# --------------------------------------------------------------------------- report

TARGETS = [
    # (op, provider, minimum speed-up of ours over it, which of ours)
    ("ce", "torch", 8.0, "ours"),
    ("ce", "scipy", 20.0, "ours"),
    ("ce+grad", "torch", 6.0, "best"),
    ("ce+grad", "torch.compile", 1.5, "best"),
    ("softmax", "scipy", 10.0, "best"),
    ("log_softmax", "scipy", 10.0, "best"),
]


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown: the timing table per shape and the target ratios."""
    by: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in rows:
        key = (int(r["rows"]), int(r["classes"]), r["dtype"], r["op"])
        by.setdefault(key, {})[r["provider"]] = float(r["median_s"])
    provs = [p.name for p in PROVIDERS if any(p.name in d for d in by.values())]
    lines = ["| shape | dtype | op | " + " | ".join(provs) + " |",
             "|---|---|---|" + "---|" * len(provs)]
    for (n, c, dt, op), d in by.items():
        cells = [f"{d[p] * 1e3:.1f}" if p in d else "" for p in provs]
        lines.append(f"| {n}x{c} | {dt} | {op} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Times in ms (medians). Speed-ups of ours (ratio of medians, same run):")
    lines.append("")
    lines.append("| shape | dtype | op | vs | target | measured | met |")
    lines.append("|---|---|---|---|---|---|---|")
    for (n, c, dt, op), d in by.items():
        for top, prov, goal, which in TARGETS:
            if top != op or prov not in d or "ours" not in d:
                continue
            mine = d["ours"] if which == "ours" else min(
                d[k] for k in ("ours", "ours-inplace") if k in d)
            ratio = d[prov] / mine
            label = "ours" if which == "ours" else "ours (best of new / in place)"
            ok = "yes" if ratio >= goal else "no"
            lines.append(f"| {n}x{c} | {dt} | {op} ({label}) | {prov} | >= {goal:g}x | "
                         f"{ratio:.1f}x | {ok} |")
        if op == "ce" and "ours" in d:
            for yard in ("np.sum (read bw)", "numba sum (read bw)"):
                if yard in d:
                    gb = n * c * np.dtype(dt).itemsize / 1e9
                    lines.append(
                        f"| {n}x{c} | {dt} | ce read bandwidth | {yard} "
                        f"{gb / d[yard]:.1f} GB/s | >= 50% | ours {gb / d['ours']:.1f} GB/s "
                        f"= {100 * d[yard] / d['ours']:.0f}% | "
                        f"{'yes' if d[yard] / d['ours'] >= 0.5 else 'no'} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, op in zip(axes, ("ce", "ce+grad"), strict=True):
        sel = [r for r in rows if r["op"] == op and r["dtype"] == "float32"
               and int(r["rows"]) == 8192 and "read bw" not in r["provider"]]
        for prov in dict.fromkeys(r["provider"] for r in sel):
            pts = sorted((int(r["classes"]), float(r["median_s"])) for r in sel
                         if r["provider"] == prov)
            color = f"C{[q.name for q in PROVIDERS].index(prov) % 10}"  # same in both panels
            ax.plot([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o", label=prov,
                    color=color)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("number of classes (8192 rows, float32)")
        ax.set_ylabel("median time (ms)")
        ax.set_title(f"cross-entropy {'value' if op == 'ce' else 'value + gradient'}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"CPU: {machine()}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the main case only")
    ap.add_argument("--cases", default="main,small,big,f64",
                    help=f"comma-separated, from {', '.join(CASE_SETS)}")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "cpu.csv"),
                    help="CSV to write (with --plot-only: comma-separated CSVs to read)")
    ap.add_argument("--plot", default=str(RESULTS / "cpu.png"))
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--providers", help="comma-separated subset of providers")
    ap.add_argument("--ops", help=f"comma-separated subset of {', '.join(OPS)}")
    args = ap.parse_args(argv)
    if args.plot_only:
        rows = []
        for path in args.out.split(","):
            with open(path) as f:
                rows += list(csv.DictReader(f))
        plot(rows, Path(args.plot))
        print(report(rows))
        return 0
    rows: list[dict[str, Any]] = []
    keep = set(args.providers.split(",")) if args.providers else None
    for case, provs in cases(["main"] if args.quick else args.cases.split(",")):
        if keep is not None:
            provs = [p for p in provs if p.name in keep]
        if args.ops and case.op not in args.ops.split(","):
            continue
        print(f"{case.op} {case.rows}x{case.classes} {case.dtype}", flush=True)
        rows += run([case], provs, repeats=args.repeats)
        write_csv(rows, args.out)  # after every case: a crash keeps what was measured
    plot(rows, Path(args.plot))
    print(report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
