"""Shared pieces of the crossentropy.jax tests: the ulp measure on a flushing platform, the
float64 switch, and a check that names the worst position."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from _reference import Ref, ulp_error


@contextlib.contextmanager
def precision(dtype: str) -> Iterator[None]:
    """float64 needs ``jax_enable_x64`` (scoped, so other tests keep JAX's default)."""
    import jax

    if dtype == "float64":
        with jax.enable_x64(True):
            yield
    else:
        yield


def ulp(got: Any, ref: Ref, dtype: Any = None) -> np.ndarray:
    """:func:`_reference.ulp_error`, except that a result flushed to 0 where the exact one
    rounds to a subnormal number counts as exact: XLA on CPU flushes subnormals to zero
    (inputs and results), which docs/jax.md documents; elsewhere the usual measure."""
    g = np.asarray(got)
    dt = np.dtype(dtype) if dtype is not None else g.dtype
    err = ulp_error(g, ref, dt)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        r = ref.rounded(dt).astype(np.float64)
    flushed = (np.abs(r) < float(np.finfo(dt).tiny)) & (g.astype(np.float64) == 0)
    return np.where(flushed, 0.0, err)


def check(err: np.ndarray, bound: float, what: str) -> float:
    """Assert max(err) <= bound, naming the worst position; return the max."""
    worst = float(np.max(err)) if err.size else 0.0
    where = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
    assert worst <= bound, f"{what}: max error {worst:.3f} ulp at {where} > {bound} ulp"
    return worst
