"""Accuracy of crossentropy.jax next to jax.nn / optax: max and median ulp error per function.

Usage::

    python bench/jax_accuracy.py [--out bench/results/jax_accuracy.csv]

The data and references of ``bench/accuracy.py`` and ``tests/test_accuracy.py``:

* softmax family: 1000 x 1000 logits ~ N(0, 10) with random labels; reference in
  longdouble (tests/_reference.py, checked against mpmath by tests/test_accuracy.py), and
  mpmath (50 digits) itself on the first 20 rows;
* sigmoid family: the 600 000 points of ``dense_sigmoid_points`` (longdouble reference)
  and the 3400 of ``sigmoid_points`` (mpmath); labels 0 and 1 alternating for the BCE.

float64 runs with ``jax_enable_x64``; float32 is computed in float32 by both libraries.
Errors by ``tests/_jax_support.ulp``: ulps of the result dtype, a result flushed to 0 where
the exact value is subnormal counting as exact (XLA on CPU flushes subnormals); "inf" is a
NaN or infinite result where the exact one is finite.  "jax" is ``jax.nn`` (log_softmax,
softmax, logsumexp, sigmoid, log_sigmoid, softplus), ``optax.losses`` for the cross-entropy
and the BCE, gradients by ``jax.grad``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
from _jax_support import ulp  # noqa: E402  (tests/ is on the path just above)
from _reference import (  # noqa: E402
    Ref,
    dense_sigmoid_points,
    dense_sigmoid_reference,
    mp_binary,
    mp_rows,
    random_rows,
    rows_reference,
    sigmoid_points,
)

MP_CHECKED = 20


def _impls() -> dict[str, Callable[..., dict[str, Any]]]:
    import jax
    import jax.numpy as jnp
    import optax

    import crossentropy.jax as cej

    def rows(lib: str) -> Callable[..., dict[str, Any]]:
        @jax.jit
        def run(x: Any, y: Any) -> dict[str, Any]:
            if lib == "ours":
                def ce(v: Any) -> Any:
                    return cej.cross_entropy(v, y, reduction="none")
                lse, ls, sm = cej.logsumexp(x), cej.log_softmax(x), cej.softmax(x)
            else:
                def ce(v: Any) -> Any:
                    return optax.losses.softmax_cross_entropy_with_integer_labels(v, y)
                lse, ls = jax.nn.logsumexp(x, axis=-1), jax.nn.log_softmax(x)
                sm = jax.nn.softmax(x)
            return {"logsumexp": lse, "log_softmax": ls, "softmax": sm, "cross_entropy": ce(x),
                    "cross_entropy_grad": jax.grad(lambda v: jnp.sum(ce(v)))(x)}

        return run

    def binary(lib: str) -> Callable[..., dict[str, Any]]:
        @jax.jit
        def run(x: Any, y: Any) -> dict[str, Any]:
            if lib == "ours":
                sig, lsig, sp = cej.sigmoid, cej.log_sigmoid, cej.softplus

                def bce(v: Any) -> Any:
                    return cej.binary_cross_entropy_with_logits(v, y, reduction="none")
            else:
                sig, lsig, sp = jax.nn.sigmoid, jax.nn.log_sigmoid, jax.nn.softplus

                def bce(v: Any) -> Any:
                    return optax.losses.sigmoid_binary_cross_entropy(v, y)

            def d(f: Any) -> Any:
                return jax.grad(lambda v: jnp.sum(f(v)))(x)

            return {"sigmoid": sig(x), "sigmoid_grad": d(sig), "log_sigmoid": lsig(x),
                    "log_sigmoid_grad": d(lsig), "softplus": sp(x),
                    "bce_with_logits": bce(x), "bce_with_logits_grad": d(bce)}

        return run

    return {"rows_ours": rows("ours"), "rows_jax": rows("jax"),
            "binary_ours": binary("ours"), "binary_jax": binary("jax")}


def _binary_refs(r: dict[str, Ref], y: np.ndarray) -> dict[str, Ref]:
    """The references of the binary functions for alternating labels (0: bce0, 1: bce1)."""
    def pick(a: Ref, b: Ref) -> Ref:
        one = y == 1
        return Ref(np.where(one, b.hi, a.hi), np.where(one, b.lo, a.lo),
                   np.where(one, b.e, a.e))

    return {"sigmoid": r["sigmoid"], "sigmoid_grad": r["sigmoid_grad"],
            "log_sigmoid": r["log_sigmoid"], "log_sigmoid_grad": r["log_sigmoid_grad"],
            "softplus": r["bce0"], "bce_with_logits": pick(r["bce0"], r["bce1"]),
            "bce_with_logits_grad": pick(r["bce0_grad"], r["bce1_grad"])}


def measure() -> list[dict[str, Any]]:
    import jax

    impls = _impls()
    out: list[dict[str, Any]] = []
    for dtype in ("float64", "float32"):
        with jax.enable_x64(dtype == "float64"):
            x, y = random_rows(dtype)
            ld = rows_reference(dtype, "ld")
            mp = mp_rows(x[:MP_CHECKED], y[:MP_CHECKED])
            ld["cross_entropy"], ld["cross_entropy_grad"] = ld["ce"], ld["ce_grad"]
            ld["logsumexp"] = ld["lse"]
            mp["cross_entropy"], mp["cross_entropy_grad"] = mp["ce"], mp["ce_grad"]
            mp["logsumexp"] = mp["lse"]
            got = {lib: {k: np.asarray(v) for k, v in impls[f"rows_{lib}"](x, y).items()}
                   for lib in ("ours", "jax")}
            for kind in ("logsumexp", "log_softmax", "softmax", "cross_entropy",
                         "cross_entropy_grad"):
                row: dict[str, Any] = {"function": kind, "dtype": dtype}
                for lib in ("ours", "jax"):
                    e = np.maximum(ulp(got[lib][kind], ld[kind]).max(),
                                   ulp(got[lib][kind][:MP_CHECKED], mp[kind]).max())
                    row[f"{lib}_max"] = float(e)
                    row[f"{lib}_median"] = float(np.median(ulp(got[lib][kind], ld[kind])))
                out.append(row)
            pts = {"dense": dense_sigmoid_points(dtype), "mp": sigmoid_points(dtype)}
            refs = {"dense": dense_sigmoid_reference(dtype), "mp": mp_binary(pts["mp"])}
            rows_b: dict[str, dict[str, Any]] = {}
            for which, xs in pts.items():
                lab = (np.arange(xs.size) % 2).astype(dtype)
                ref = _binary_refs(refs[which], lab)
                for lib in ("ours", "jax"):
                    res = impls[f"binary_{lib}"](xs, lab)
                    for kind, v in res.items():
                        e = ulp(np.asarray(v), ref[kind])
                        r = rows_b.setdefault(kind, {"function": kind, "dtype": dtype})
                        r[f"{lib}_max"] = max(r.get(f"{lib}_max", 0.0), float(e.max()))
                        if which == "dense":
                            r[f"{lib}_median"] = float(np.median(e))
            out.extend(rows_b.values())
    return out


def _fmt(v: float) -> str:
    return "inf" if not np.isfinite(v) else (f"{v:.2f}" if v < 1e3 else f"{v:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"
                                         / "jax_accuracy.csv"))
    a = ap.parse_args()
    rows = measure()
    print("| function | dtype | crossentropy.jax max / median | jax.nn, optax max / median |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['function']} | {r['dtype']} | {_fmt(r['ours_max'])} / "
              f"{_fmt(r['ours_median'])} | {_fmt(r['jax_max'])} / {_fmt(r['jax_median'])} |")
    stamp = harness.stamp()
    harness.write_csv([{**r, **stamp} for r in rows], a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
