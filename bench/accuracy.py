"""Accuracy benchmark: our max and median ulp error next to NumPy, SciPy and PyTorch.

Usage::

    python bench/accuracy.py [--out bench/results/accuracy.csv]

Every implementation gets the same inputs, in float64 and in float32:

* softmax family: 1000 x 1000 logits ~ N(0, 10) with random labels (the data set of
  tests/test_accuracy.py); reference in longdouble, itself checked here against mpmath
  (50 digits) on the first rows;
* sigmoid family: 600 000 points over the whole range (|x| < 40 densely, up to the
  underflow of e^-|x|, and log-spaced magnitudes), labels 0 / 1 alternating for the BCE;
  reference in longdouble, checked against mpmath on a 3400-point grid.

Ours runs on each CPU backend: crossentropy[numpy] is the exact NumPy reference,
crossentropy[numba] the compiled kernels (when numba is installed).  The error is measured
by tests/_reference.ulp_error: |computed - exact| in units of the
spacing of the correctly rounded exact value in the dtype (subnormal spacing included;
a wrong 0, inf or NaN counts as inf).  "numpy" is the textbook formula written with NumPy
(shift by the max for the softmax family, 1 / (1 + exp(-x)) for the sigmoid, the BCE as
-(y log s + (1 - y) log(1 - s))).  SciPy and PyTorch compute float32 in float32.
"""

from __future__ import annotations

import argparse
import csv
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import crossentropy as ce  # noqa: E402
from _reference import (  # noqa: E402  (tests/ is put on the path just above)
    MP_ROWS,
    Ref,
    dense_sigmoid_points,
    dense_sigmoid_reference,
    ld_binary,
    ld_rows,
    mp_rows,
    random_rows,
    ref_distance,
    sigmoid_points,
    sigmoid_reference,
    ulp_error,
)
from crossentropy._config import numba_available  # noqa: E402

Impl = Callable[[Any, Any], Any]


# --------------------------------------------------------------------------- implementations


def _onehot(y: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    t = np.zeros(shape, dtype=dtype)
    t[np.arange(shape[0]), y] = 1
    return t


def ours_rows() -> dict[str, Impl]:
    return {
        "logsumexp": lambda x, y: ce.logsumexp(x),
        "log_softmax": lambda x, y: ce.log_softmax(x),
        "softmax": lambda x, y: ce.softmax(x),
        "cross_entropy": lambda x, y: ce.cross_entropy(x, y, reduction="none"),
        "cross_entropy_grad": lambda x, y: ce.cross_entropy(
            x, y, reduction="none", return_grad=True
        )[1],
    }


def numpy_rows() -> dict[str, Impl]:
    def lse(x: Any) -> Any:
        m = np.max(x, axis=-1, keepdims=True)
        return m + np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))

    def softmax(x: Any) -> Any:
        e = np.exp(x - np.max(x, axis=-1, keepdims=True))
        return e / np.sum(e, axis=-1, keepdims=True)

    def ce_(x: Any, y: Any) -> Any:
        return (lse(x) - np.take_along_axis(x, y[:, None], axis=-1))[:, 0]

    return {
        "logsumexp": lambda x, y: lse(x)[:, 0],
        "log_softmax": lambda x, y: x - lse(x),
        "softmax": lambda x, y: softmax(x),
        "cross_entropy": ce_,
        "cross_entropy_grad": lambda x, y: softmax(x) - _onehot(y, x.shape, x.dtype),
    }


def scipy_rows() -> dict[str, Impl]:
    from scipy import special

    def ce_(x: Any, y: Any) -> Any:
        return -np.take_along_axis(special.log_softmax(x, axis=-1), y[:, None], axis=-1)[:, 0]

    return {
        "logsumexp": lambda x, y: special.logsumexp(x, axis=-1),
        "log_softmax": lambda x, y: special.log_softmax(x, axis=-1),
        "softmax": lambda x, y: special.softmax(x, axis=-1),
        "cross_entropy": ce_,
        "cross_entropy_grad": lambda x, y: special.softmax(x, axis=-1)
        - _onehot(y, x.shape, x.dtype),
    }


def torch_rows() -> dict[str, Impl]:
    import torch
    import torch.nn.functional as F

    def ce_grad(x: Any, y: Any) -> Any:
        t = torch.tensor(x, requires_grad=True)
        F.cross_entropy(t, torch.tensor(y), reduction="sum").backward()
        assert t.grad is not None
        return t.grad.numpy()

    return {
        "logsumexp": lambda x, y: torch.logsumexp(torch.tensor(x), -1).numpy(),
        "log_softmax": lambda x, y: torch.log_softmax(torch.tensor(x), -1).numpy(),
        "softmax": lambda x, y: torch.softmax(torch.tensor(x), -1).numpy(),
        "cross_entropy": lambda x, y: F.cross_entropy(
            torch.tensor(x), torch.tensor(y), reduction="none"
        ).numpy(),
        "cross_entropy_grad": ce_grad,
    }


def ours_binary() -> dict[str, Impl]:
    return {
        "sigmoid": lambda x, y: ce.sigmoid(x),
        "sigmoid_grad": lambda x, y: ce.sigmoid(x, return_grad=True)[1],
        "log_sigmoid": lambda x, y: ce.log_sigmoid(x),
        "log_sigmoid_grad": lambda x, y: ce.log_sigmoid(x, return_grad=True)[1],
        "bce_with_logits": lambda x, y: ce.binary_cross_entropy_with_logits(
            x, y, reduction="none"
        ),
        "bce_with_logits_grad": lambda x, y: ce.binary_cross_entropy_with_logits(
            x, y, reduction="none", return_grad=True
        )[1],
    }


def numpy_binary() -> dict[str, Impl]:
    def sig(x: Any) -> Any:
        with np.errstate(over="ignore"):
            return 1 / (1 + np.exp(-x))

    def bce(x: Any, y: Any) -> Any:
        s = sig(x)
        with np.errstate(divide="ignore", invalid="ignore"):
            return -(y * np.log(s) + (1 - y) * np.log(1 - s))

    def log_sig(x: Any) -> Any:
        with np.errstate(over="ignore"):
            return -np.log(1 + np.exp(-x))

    return {
        "sigmoid": lambda x, y: sig(x),
        "sigmoid_grad": lambda x, y: sig(x) * (1 - sig(x)),
        "log_sigmoid": lambda x, y: log_sig(x),
        "log_sigmoid_grad": lambda x, y: 1 - sig(x),
        "bce_with_logits": bce,
        "bce_with_logits_grad": lambda x, y: sig(x) - y,
    }


def scipy_binary() -> dict[str, Impl]:
    from scipy import special

    def bce(x: Any, y: Any) -> Any:
        return np.where(y == 1, -special.log_expit(x), -special.log_expit(-x))

    return {
        "sigmoid": lambda x, y: special.expit(x),
        "sigmoid_grad": lambda x, y: special.expit(x) * special.expit(-x),
        "log_sigmoid": lambda x, y: special.log_expit(x),
        "log_sigmoid_grad": lambda x, y: special.expit(-x),
        "bce_with_logits": bce,
        "bce_with_logits_grad": lambda x, y: special.expit(x) - y,
    }


def torch_binary() -> dict[str, Impl]:
    import torch
    import torch.nn.functional as F

    def grad(f: Callable[[Any], Any], x: Any) -> Any:
        t = torch.tensor(x, requires_grad=True)
        f(t).sum().backward()
        assert t.grad is not None
        return t.grad.numpy()

    def bce(t: Any, y: Any) -> Any:
        return F.binary_cross_entropy_with_logits(t, torch.tensor(y), reduction="none")

    return {
        "sigmoid": lambda x, y: torch.sigmoid(torch.tensor(x)).numpy(),
        "sigmoid_grad": lambda x, y: grad(torch.sigmoid, x),
        "log_sigmoid": lambda x, y: F.logsigmoid(torch.tensor(x)).numpy(),
        "log_sigmoid_grad": lambda x, y: grad(F.logsigmoid, x),
        "bce_with_logits": lambda x, y: bce(torch.tensor(x), y).numpy(),
        "bce_with_logits_grad": lambda x, y: grad(lambda t: bce(t, y), x),
    }


# --------------------------------------------------------------------------- references


ROW_REF_KEY = {
    "logsumexp": "lse",
    "log_softmax": "log_softmax",
    "softmax": "softmax",
    "cross_entropy": "ce",
    "cross_entropy_grad": "ce_grad",
}


def _select(ref_a: Ref, ref_b: Ref, pick_b: Any) -> Ref:
    return Ref(
        np.where(pick_b, ref_b.hi, ref_a.hi),
        np.where(pick_b, ref_b.lo, ref_a.lo),
        np.where(pick_b, ref_b.e, ref_a.e),
    )


def binary_refs(r: dict[str, Ref], y: Any) -> dict[str, Ref]:
    one = y == 1
    return {
        "sigmoid": r["sigmoid"],
        "sigmoid_grad": r["sigmoid_grad"],
        "log_sigmoid": r["log_sigmoid"],
        "log_sigmoid_grad": r["log_sigmoid_grad"],
        "bce_with_logits": _select(r["bce0"], r["bce1"], one),
        "bce_with_logits_grad": _select(r["bce0_grad"], r["bce1_grad"], one),
    }


def validate_references() -> float:
    """Largest distance (float64 ulps) between the longdouble and mpmath references."""
    worst = 0.0
    for dtype in ("float64", "float32"):
        x, y = random_rows(dtype)
        n = min(20, MP_ROWS[dtype])
        mp = mp_rows(x[:n], y[:n])
        ld = ld_rows(x[:n], y[:n])
        for k in mp:
            worst = max(worst, float(np.max(ref_distance(ld[k], mp[k]))))
        pts = sigmoid_points(dtype)
        mpb = sigmoid_reference(dtype)
        ldb = ld_binary(pts)
        for k in mpb:
            worst = max(worst, float(np.max(ref_distance(ldb[k], mpb[k]))))
    return worst


# --------------------------------------------------------------------------- main


BACKENDS = ["numpy", *(["numba"] if numba_available() else [])]


def _on_backend(impls: dict[str, Impl], backend: str) -> dict[str, Impl]:
    """The same functions, each run under crossentropy.use_backend(backend)."""

    def wrap(f: Impl) -> Impl:
        def g(x: Any, y: Any) -> Any:
            with ce.use_backend(backend):  # type: ignore[arg-type]
                return f(x, y)

        return g

    return {k: wrap(f) for k, f in impls.items()}


def _stats(value: Any, ref: Ref, dtype: str) -> tuple[float, float]:
    value = np.asarray(value)
    if value.dtype != np.dtype(dtype):  # e.g. a float64 result for float32 input
        value = value.astype(dtype)
    err = ulp_error(value, ref, dtype)
    return float(np.max(err)), float(np.median(err))


def run() -> list[dict[str, Any]]:
    impls_rows = {
        **{f"crossentropy[{b}]": _on_backend(ours_rows(), b) for b in BACKENDS},
        "numpy": numpy_rows(),
        "scipy": scipy_rows(),
        "torch": torch_rows(),
    }
    impls_bin = {
        **{f"crossentropy[{b}]": _on_backend(ours_binary(), b) for b in BACKENDS},
        "numpy": numpy_binary(),
        "scipy": scipy_binary(),
        "torch": torch_binary(),
    }
    rows: list[dict[str, Any]] = []
    for dtype in ("float64", "float32"):
        x, y = random_rows(dtype)
        ref = ld_rows(x, y)
        for fn, key in ROW_REF_KEY.items():
            for name, impls in impls_rows.items():
                mx, med = _stats(impls[fn](np.array(x), y), ref[key], dtype)
                rows.append(dict(function=fn, dtype=dtype, data="N(0,10) 1000x1000",
                                 implementation=name, max_ulp=mx, median_ulp=med))
        xb = np.array(dense_sigmoid_points(dtype))
        yb = (np.arange(xb.size) % 2).astype(dtype)
        refb = binary_refs(dense_sigmoid_reference(dtype), yb)
        for fn, r in refb.items():
            for name, impls in impls_bin.items():
                with np.errstate(all="ignore"):
                    mx, med = _stats(impls[fn](xb, yb), r, dtype)
                rows.append(dict(function=fn, dtype=dtype, data="whole range, 600k points",
                                 implementation=name, max_ulp=mx, median_ulp=med))
    return rows


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "inf"
    if v >= 1e4:
        return f"{v:.1e}"
    return f"{v:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one line per function and dtype, max / median per implementation."""
    names = list(dict.fromkeys(r["implementation"] for r in rows))
    head = "| function | dtype | " + " | ".join(f"{n} max / median" for n in names) + " |"
    lines = [head, "|" + "---|" * (2 + len(names))]
    keys = dict.fromkeys((r["function"], r["dtype"]) for r in rows)
    by_key = {(r["function"], r["dtype"], r["implementation"]): r for r in rows}
    for fn, dt in keys:
        cells = []
        for n in names:
            r = by_key[fn, dt, n]
            cells.append(f"{_fmt(r['max_ulp'])} / {_fmt(r['median_ulp'])}")
        lines.append(f"| {fn} | {dt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "accuracy.csv"))
    args = ap.parse_args(argv)
    import scipy
    import torch

    t0 = time.time()
    check = validate_references()
    print(f"longdouble reference vs mpmath ({50} digits): max distance {check:.4f} float64 ulp")
    if check > 0.05:
        raise SystemExit("the longdouble reference disagrees with mpmath: is np.longdouble 80-bit?")
    rows = run()
    sys.path.insert(0, str(ROOT / "bench"))
    from harness import stamp

    stamped = stamp()  # machine, versions, date, command (as every bench/ CSV)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*rows[0], *stamp()])
        w.writeheader()
        for r in rows:
            w.writerow(
                {**r, "max_ulp": f"{r['max_ulp']:.4g}", "median_ulp": f"{r['median_ulp']:.4g}",
                 **stamped}
            )
    print(
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, {platform.machine()} {_cpu_name()}, "
        f"{platform.system()}, Python {platform.python_version()}, numpy "
        f"{np.__version__}, scipy {scipy.__version__}, torch {torch.__version__}; "
        f"{time.time() - t0:.0f} s"
    )
    print("errors in ulps of the result dtype: max / median")
    print(table(rows))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
