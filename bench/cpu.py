"""CPU benchmark: every operation as a ratio to its memory floor, measured in alternation.

::

    python bench/cpu.py                      # every shape and dtype (a few minutes)
    python bench/cpu.py --quick              # 8192x32000 float32, few pairs (< 60 s)
    python bench/cpu.py --shapes 512x128256 --dtypes float64 --ops softmax_out
    python bench/cpu.py --plot-only          # redraw bench/results/cpu.png from the CSV
    python bench/cpu.py --kernels eb78623    # the same table with the kernels of a commit
    python bench/cpu.py --against eb78623    # also: each op, these kernels / that commit's

Method (``bench/harness.py``'s :func:`~harness.alternate`): each candidate is timed in
alternation with its baseline in this one process, A B A B ..., after a warm-up; a row
gives the median of the per-pair ratios t_candidate / t_baseline with its p20-p80 spread,
both median times and the 1-minute load average before and after.  The ratios are what
counts on a shared machine; the times are there to read them.

Floors, on the same logits [rows, classes]:

* ``read``: ``np.sum(x)`` (every byte of the logits read once);
* ``copy``: ``np.copyto(buf, x)`` into a preallocated buffer (read once, write once);
* ``alloc``: ``x.copy()`` into a fresh array (read, write, and the fresh pages).

Operations (crossentropy with the numba backend, mean reduction, int64 labels):

=================  ==================================================  =======
op                 call                                                floor
=================  ==================================================  =======
ce                 ``cross_entropy(x, y)``                             read
logsumexp          ``logsumexp(x, axis=-1)``                           read
ce_grad_out        ``cross_entropy(x, y, return_grad=True, grad_out=b)`` copy
log_softmax_out    ``log_softmax(x, out=b)``                           copy
softmax_out        ``softmax(x, out=b)``                               copy
ce_grad            ``cross_entropy(x, y, return_grad=True)``           alloc
log_softmax        ``log_softmax(x)``                                  alloc
softmax            ``softmax(x)``                                      alloc
torch_fb           ``crossentropy.torch.cross_entropy`` fwd + bwd      alloc,
                                                                       eager, compile
=================  ==================================================  =======

``torch_fb`` is also compared with eager ``F.cross_entropy`` and with
``torch.compile(F.cross_entropy)`` (forward + backward, the gradient not kept between
calls), and at 64x10 and 512x1000 (``--tiny``, float32) with ``F.cross_entropy``: the
per-call overhead of the torch layer.  ``--versus`` adds the headline comparisons with
other libraries (ours / theirs, < 1 is faster): ``ce`` against eager ``F.cross_entropy``,
``log_softmax`` against ``scipy.special.log_softmax``.

``--kernels REV`` runs the table with the kernels of ``src/crossentropy/_cpu/`` as they were at
the git revision REV (compiled from a temporary copy), the adapter and the rest of the package
as they are now: the "before" of a kernel change.  ``--against REV`` adds, for every numba
operation, the ratio of the current kernels to REV's, the two alternated call by call in this
process.

Writes ``bench/results/cpu.csv`` (one row per (op, shape, dtype, baseline), stamped with
machine, versions, date, command and load) and ``bench/results/cpu.png`` (the ratios with
their spread), and prints the markdown table.  A subset (``--shapes``, ``--dtypes``,
``--ops``, ``--quick``) writes ``bench/results/cpu_partial.csv`` / ``.png`` instead (not
tracked) and ``--tiny-only`` ``cpu_tiny.csv``, so that a partial run never overwrites the
full table; ``--out`` and ``--plot`` choose other paths.
"""

from __future__ import annotations

import argparse
import csv
import gc
import importlib.util
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Ratio, alternate, load, machine, stamp, write_csv

RESULTS = Path(__file__).resolve().parent / "results"

SHAPES = ((8192, 32000), (512, 128256), (65536, 1000))
DTYPES = ("float32", "float64")
TINY = ((64, 10), (512, 1000))

# op -> floors it is compared with (torch_fb also with eager and compiled torch)
OPS: dict[str, tuple[str, ...]] = {
    "ce": ("read",),
    "logsumexp": ("read",),
    "ce_grad_out": ("copy",),
    "log_softmax_out": ("copy",),
    "softmax_out": ("copy",),
    "ce_grad": ("alloc",),
    "log_softmax": ("alloc",),
    "softmax": ("alloc",),
    "torch_fb": ("alloc", "torch", "torch.compile"),
}
CALLS = {
    "ce": "cross_entropy(x, y)",
    "logsumexp": "logsumexp(x, axis=-1)",
    "ce_grad_out": "cross_entropy(x, y, return_grad=True, grad_out=buf)",
    "log_softmax_out": "log_softmax(x, out=buf)",
    "softmax_out": "softmax(x, out=buf)",
    "ce_grad": "cross_entropy(x, y, return_grad=True)",
    "log_softmax": "log_softmax(x)",
    "softmax": "softmax(x)",
    "torch_fb": "crossentropy.torch.cross_entropy forward + backward",
}
# the targets: time / floor at most this (None: reported only)
TARGET = {"read": 1.0, "copy": 1.25, "alloc": 1.25}


def _data(rows: int, classes: int, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Logits ~ N(0, 9) and uniform labels (seeded)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, classes), dtype=np.float32)
    x *= 3.0
    return x.astype(dtype, copy=False), rng.integers(0, classes, rows)


# --------------------------------------------------------------------------- kernels


def kernels_at(rev: str) -> Any:
    """The kernels module as it was at git revision `rev`, compiled from a temporary copy.

    Where the kernels are one module per concept (``_cpu/_jit.py`` and the others, which
    import one another relatively), the copies form a package of their own and its
    ``_kernels`` is returned; before that, ``_kernels.py`` held them all."""
    root = Path(__file__).resolve().parents[1]

    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{rev}:{path}"], cwd=root, capture_output=True,
                              text=True, check=True).stdout

    name = f"_kernels_at_{rev.replace('~', '_').replace('^', '_')}"
    tmp = Path(tempfile.mkdtemp(prefix="ce-bench-"))
    files = subprocess.run(["git", "ls-tree", "--name-only", rev, "src/crossentropy/_cpu/"],
                           cwd=root, capture_output=True, text=True, check=True).stdout.split()
    if "src/crossentropy/_cpu/_jit.py" in files:
        (tmp / name).mkdir()
        (tmp / name / "__init__.py").write_text("")  # (not the adapter: the kernels only)
        for f in files:
            if f.endswith(".py") and Path(f).name != "__init__.py":
                (tmp / name / Path(f).name).write_text(show(f))
        sys.path.insert(0, str(tmp))
        return importlib.import_module(f"{name}._kernels")
    src = show("src/crossentropy/_cpu/_kernels.py")
    path = tmp / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def use_kernels(mod: Any) -> None:
    """Make the numba adapter call `mod` (None: the package's own kernels).

    (Sets the adapter's module cache, ``crossentropy._cpu._mod``: a benchmark-only hook.)
    """
    import crossentropy._cpu as cpu

    cpu._mod.pop("k", None)
    if mod is not None:
        cpu._mod["k"] = mod


def with_kernels(mod: Any, fn: Callable[[], Any]) -> Callable[[], Any]:
    """fn, run with the kernels `mod` (the swap is a dict assignment: not worth timing)."""

    def call() -> Any:
        use_kernels(mod)
        return fn()

    return call


# --------------------------------------------------------------------------- floors


def floor(name: str, x: np.ndarray) -> Callable[[], Any]:
    if name == "read":
        return lambda: np.sum(x)
    if name == "copy":
        buf = np.empty_like(x)
        buf.fill(0)  # pages touched before timing
        return lambda: np.copyto(buf, x)
    if name == "alloc":
        return lambda: x.copy()
    raise ValueError(name)


# --------------------------------------------------------------------------- candidates


def ours(op: str, x: np.ndarray, y: np.ndarray) -> Callable[[], Any]:
    import crossentropy as ce

    ce.set_backend("numba")
    if op == "ce":
        return lambda: ce.cross_entropy(x, y)
    if op == "logsumexp":
        return lambda: ce.logsumexp(x, axis=-1)
    if op == "ce_grad":
        return lambda: ce.cross_entropy(x, y, return_grad=True)
    if op == "log_softmax":
        return lambda: ce.log_softmax(x)
    if op == "softmax":
        return lambda: ce.softmax(x)
    buf = np.empty_like(x)
    buf.fill(0)
    if op == "ce_grad_out":
        return lambda: ce.cross_entropy(x, y, return_grad=True, grad_out=buf)
    if op == "log_softmax_out":
        return lambda: ce.log_softmax(x, out=buf)
    if op == "softmax_out":
        return lambda: ce.softmax(x, out=buf)
    raise ValueError(op)


def torch_fb(x: np.ndarray, y: np.ndarray, which: str) -> Callable[[], Any]:
    """Forward + backward of a mean cross-entropy; the gradient is not kept between calls.

    which: "ours" (crossentropy.torch), "torch" (eager F.cross_entropy) or
    "torch.compile" (F.cross_entropy compiled by inductor).
    """
    import torch
    import torch.nn.functional as F

    if which == "ours":
        import crossentropy.torch as ct

        f: Callable[..., Any] = ct.cross_entropy
    elif which == "torch":
        f = F.cross_entropy
    else:
        f = torch.compile(F.cross_entropy, dynamic=False)
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = torch.from_numpy(y)

    def call() -> Any:
        loss = f(xt, yt)
        loss.backward()
        g = xt.grad
        xt.grad = None
        return g

    return call


def versus(op: str, x: np.ndarray, y: np.ndarray) -> tuple[str, Callable[[], Any]]:
    if op == "ce":
        import torch
        import torch.nn.functional as F

        xt, yt = torch.from_numpy(x), torch.from_numpy(y)
        return "torch F.cross_entropy", lambda: F.cross_entropy(xt, yt).item()
    import scipy.special as sp

    return "scipy.special.log_softmax", lambda: sp.log_softmax(x, axis=1)


# --------------------------------------------------------------------------- the run


def _row(op: str, call: str, rows: int, classes: int, dtype: str, baseline: str,
         r: Ratio, stamped: dict[str, str]) -> dict[str, Any]:
    target = TARGET.get(baseline)
    return {
        "op": op, "call": call, "rows": rows, "classes": classes, "dtype": dtype,
        "baseline": baseline, **r.fields(),
        "target": "" if target is None else target,
        "met": "" if target is None else ("yes" if r.median <= target else "no"),
        **stamped,
    }


def measure(shapes: list[tuple[int, int]], dtypes: list[str], ops: list[str], *,
            pairs: int, warmup: int, with_torch: bool, with_compile: bool, tiny: bool,
            with_versus: bool, kernels: str | None = None, against: str | None = None,
            log: Callable[[str], None] = print,
            save: Callable[[list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    stamped = stamp()
    if kernels is not None:
        stamped["kernels"] = kernels
        use_kernels(kernels_at(kernels))
    old = kernels_at(against) if against is not None else None
    out: list[dict[str, Any]] = []
    for rows, classes in shapes:
        for dtype in dtypes:
            x, y = _data(rows, classes, dtype)
            for op in ops:
                for base in OPS[op]:
                    if op == "torch_fb" and not with_torch:
                        continue
                    if base == "torch.compile" and not with_compile:
                        continue
                    if op == "torch_fb":
                        cand = torch_fb(x, y, "ours")
                        ref = floor(base, x) if base == "alloc" else torch_fb(x, y, base)
                    else:
                        cand = ours(op, x, y)
                        ref = floor(base, x)
                    r = alternate(cand, ref, pairs=pairs, warmup=warmup)
                    out.append(_row(op, CALLS[op], rows, classes, dtype, base, r, stamped))
                    log(f"{op:>16} {rows}x{classes} {dtype:<8} / {base:<14} {r}")
                    if save is not None:
                        save(out)
                    del cand, ref
                    gc.collect()
                if old is not None and op != "torch_fb":
                    new = ours(op, x, y)
                    r = alternate(with_kernels(None, new), with_kernels(old, new), pairs=pairs,
                                  warmup=warmup)
                    use_kernels(None)
                    base = f"kernels@{against}"
                    out.append(_row(op, CALLS[op], rows, classes, dtype, base, r, stamped))
                    log(f"{op:>16} {rows}x{classes} {dtype:<8} / {base:<14} {r}")
                    if save is not None:
                        save(out)
                    del new
                    gc.collect()
            if with_versus:
                for op in ("ce", "log_softmax"):
                    name, theirs = versus(op, x, y)
                    r = alternate(ours(op, x, y), theirs, pairs=max(3, pairs // 2),
                                  warmup=1)
                    out.append(_row(op, CALLS[op], rows, classes, dtype, name, r, stamped))
                    log(f"{op:>16} {rows}x{classes} {dtype:<8} / {name:<14} {r}")
                    if save is not None:
                        save(out)
            del x, y
            gc.collect()
    if tiny:
        import crossentropy as ce

        ce.set_backend("auto")  # what a user gets: small inputs may stay on the NumPy core
        for rows, classes in TINY:
            x, y = _data(rows, classes, "float32")
            for base in ("torch",):
                r = alternate(torch_fb(x, y, "ours"), torch_fb(x, y, base), pairs=pairs,
                              warmup=20, inner=200)
                out.append(_row("torch_fb", CALLS["torch_fb"] + " (per-call overhead)",
                                rows, classes, "float32", base, r, stamped))
                log(f"{'torch_fb tiny':>16} {rows}x{classes} float32  / {base:<14} {r}")
                if save is not None:
                    save(out)
            if old is not None:  # the same call with these kernels / with REV's
                new = torch_fb(x, y, "ours")
                r = alternate(with_kernels(None, new), with_kernels(old, new), pairs=pairs,
                              warmup=20, inner=200)
                use_kernels(None)
                base = f"kernels@{against}"
                out.append(_row("torch_fb", CALLS["torch_fb"] + " (per-call overhead)",
                                rows, classes, "float32", base, r, stamped))
                log(f"{'torch_fb tiny':>16} {rows}x{classes} float32  / {base:<14} {r}")
                if save is not None:
                    save(out)
    return out


# --------------------------------------------------------------------------- report


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per (op, shape, dtype, baseline)."""
    lines = ["| op | shape | dtype | baseline | time / baseline | p20-p80 | ms (ours / base) "
             "| target | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tgt = f"<= {r['target']}" if r["target"] not in ("", None) else ""
        met = {"yes": " (met)", "no": " (**not met**)"}.get(str(r["met"]), "")
        lines.append(
            f"| {r['op']} | {r['rows']}x{r['classes']} | {r['dtype']} | {r['baseline']} | "
            f"{float(r['ratio']):.2f} | {float(r['ratio_p20']):.2f}-{float(r['ratio_p80']):.2f}"
            f" | {float(r['candidate_ms']):.3g} / {float(r['baseline_ms']):.3g} | {tgt}{met} | "
            f"{float(r['load_before']):.1f}-{float(r['load_after']):.1f} |")
    if rows:
        r0 = rows[0]
        lines += ["", f"Machine: {r0['machine']}; {r0['versions']}; {r0['date']}; "
                      f"`{r0['command']}`"]
    return "\n".join(lines)


def summary(rows: list[dict[str, Any]]) -> str:
    """Markdown, compact: per dtype, one line per (op, baseline), one column per shape,
    cells ``median (p20-p80)`` of time / baseline."""
    shapes = list(dict.fromkeys(f"{r['rows']}x{r['classes']}" for r in rows
                                if "per-call" not in str(r["call"])))
    out: list[str] = []
    for dt in DTYPES:
        here = [r for r in rows if r["dtype"] == dt and "per-call" not in str(r["call"])]
        if not here:
            continue
        cell: dict[tuple[str, str], dict[str, str]] = {}
        for r in here:
            tgt = f" (target <= {r['target']})" if r["target"] not in ("", None) else ""
            key = (f"`{r['op']}`", f"{r['baseline']}{tgt}")
            cell.setdefault(key, {})[f"{r['rows']}x{r['classes']}"] = (
                f"{float(r['ratio']):.2f} ({float(r['ratio_p20']):.2f}-"
                f"{float(r['ratio_p80']):.2f})")
        out += [f"**{dt}** (time / baseline, median of pairs, p20-p80)", "",
                "| op | baseline | " + " | ".join(shapes) + " |",
                "|---|---|" + "---|" * len(shapes)]
        for (op, base), d in cell.items():
            out.append(f"| {op} | {base} | " + " | ".join(d.get(sh, "") for sh in shapes) + " |")
        out.append("")
    tiny = [r for r in rows if "per-call" in str(r["call"])]
    if tiny:
        out += ["**torch layer per call** (forward + backward, float32)", "",
                "| shape | ours / F.cross_entropy | ms (ours / torch) |", "|---|---|---|"]
        for r in tiny:
            out.append(f"| {r['rows']}x{r['classes']} | {float(r['ratio']):.2f} "
                       f"({float(r['ratio_p20']):.2f}-{float(r['ratio_p80']):.2f}) | "
                       f"{float(r['candidate_ms']):.3g} / {float(r['baseline_ms']):.3g} |")
        out.append("")
    if rows:
        loads = [float(r["load_before"]) for r in rows] + [float(r["load_after"]) for r in rows]
        r0 = rows[0]
        out.append(f"Machine: {r0['machine']}; {r0['versions']}; {r0['date']}; load average "
                   f"{min(loads):.1f}-{max(loads):.1f}; `{r0['command']}`.")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Draw the ratios to the floors, one panel per shape; False (nothing drawn) when rows
    hold none (``--tiny-only`` measures against torch only)."""
    sel = [r for r in rows if r["baseline"] in TARGET]
    if not sel:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys((int(r["rows"]), int(r["classes"])) for r in sel))
    fig, axes = plt.subplots(1, max(1, len(shapes)), figsize=(5 * max(1, len(shapes)), 4.5),
                             squeeze=False)
    for ax, (n, c) in zip(axes[0], shapes, strict=False):
        here = [r for r in sel if (int(r["rows"]), int(r["classes"])) == (n, c)]
        labels = list(dict.fromkeys(f"{r['op']} / {r['baseline']}" for r in here))
        present = [dt for dt in DTYPES if any(r["dtype"] == dt for r in here)]
        for k, dt in enumerate(present):
            pts = {f"{r['op']} / {r['baseline']}": r for r in here if r["dtype"] == dt}
            # one bar per dtype present, centred on the label's row
            ys = np.arange(len(labels)) + (k - (len(present) - 1) / 2) * 0.38
            med = [float(pts[lb]["ratio"]) if lb in pts else np.nan for lb in labels]
            lo = [med[i] - float(pts[lb]["ratio_p20"]) if lb in pts else 0.0
                  for i, lb in enumerate(labels)]
            hi = [float(pts[lb]["ratio_p80"]) - med[i] if lb in pts else 0.0
                  for i, lb in enumerate(labels)]
            ax.barh(ys, med, height=0.36, xerr=[lo, hi], label=dt, color=f"C{k}", alpha=0.8)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.axvline(1.25, color="r", lw=0.8, ls="--")
        ax.set_yticks(np.arange(len(labels)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("time / floor (median of pairs, p20-p80)")
        ax.set_title(f"{n} x {c}", fontsize=10)
    # one legend for all panels, above them (inside a panel it hid the top bars)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper right", ncol=len(names), fontsize=8, frameon=False)
    fig.suptitle(f"CPU: {machine()}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _shape(s: str) -> tuple[int, int]:
    a, b = s.lower().split("x")
    return int(a), int(b)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="8192x32000 float32, 3 pairs, 1 warm-up, no torch.compile (< 60 s)")
    ap.add_argument("--shapes", default=",".join(f"{n}x{c}" for n, c in SHAPES))
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--ops", default=",".join(OPS), help=f"from {', '.join(OPS)}")
    ap.add_argument("--pairs", type=int, default=9)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-tiny", action="store_true")
    ap.add_argument("--tiny-only", action="store_true",
                    help="only the torch layer's per-call overhead at 64x10 and 512x1000")
    ap.add_argument("--versus", action="store_true",
                    help="also ours / torch (ce) and ours / scipy (log_softmax)")
    ap.add_argument("--kernels", metavar="REV",
                    help="run with the kernels of src/crossentropy/_cpu/ from git revision REV")
    ap.add_argument("--against", metavar="REV",
                    help="also time each op with these kernels / with REV's (alternated)")
    ap.add_argument("--out", help="CSV to write (with --plot-only: comma-separated CSVs to "
                    "read); default bench/results/cpu.csv for the full table, cpu_tiny.csv "
                    "with --tiny-only, cpu_partial.csv (not tracked) for any other subset")
    ap.add_argument("--plot", help="PNG to draw (default: the CSV's path with .png)")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--summary", action="store_true",
                    help="print the compact tables (one column per shape) instead")
    args = ap.parse_args(argv)
    if args.out is None:
        full = not (args.quick or args.tiny_only) and all(
            getattr(args, k) == ap.get_default(k) for k in ("shapes", "dtypes", "ops"))
        name = "cpu.csv" if full else "cpu_tiny.csv" if args.tiny_only else "cpu_partial.csv"
        args.out = str(RESULTS / name)
    if args.plot is None:
        args.plot = str(Path(args.out.split(",")[0]).with_suffix(".png"))
    if args.plot_only:
        rows: list[dict[str, Any]] = []
        for p in args.out.split(","):
            with open(p) as f:
                rows += list(csv.DictReader(f))
        if not plot(rows, Path(args.plot)):
            print(f"(no ratios to floors in {args.out}: nothing drawn)")
        print(summary(rows) if args.summary else report(rows))
        return 0
    if args.quick:
        shapes, dtypes, pairs = [SHAPES[0]], ["float32"], min(args.pairs, 3)
        args.warmup = min(args.warmup, 1)
    else:
        shapes = [_shape(s) for s in args.shapes.split(",")]
        dtypes, pairs = args.dtypes.split(","), args.pairs
    ops = args.ops.split(",")
    if args.tiny_only:
        shapes = []
    for op in ops:
        if op not in OPS:
            ap.error(f"--ops: unknown operation {op!r}")
    print(f"load {load():.2f}; {machine()}", flush=True)
    rows = measure(shapes, dtypes, ops, pairs=pairs, warmup=args.warmup,
                   with_torch=not args.no_torch, with_compile=not (args.no_compile or args.quick),
                   tiny=not (args.no_tiny or args.quick), with_versus=args.versus,
                   kernels=args.kernels, against=args.against,
                   save=lambda rows: write_csv(rows, args.out))  # a crash keeps what was measured
    write_csv(rows, args.out)
    plot(rows, Path(args.plot))  # (nothing for --tiny-only: its baseline is torch)
    print(summary(rows) if args.summary else report(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
