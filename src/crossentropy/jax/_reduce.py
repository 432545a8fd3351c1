r"""The one reduction of per-sample losses, in JAX (the rule of :mod:`crossentropy._core.reduce`).

For per-sample losses :math:`\ell_i` (nats) with mean weights :math:`\omega_i` and scale
:math:`s = 1/\ln(\text{base})`:

* ``none``: :math:`s\,\ell_i`;
* ``sum``: :math:`s \sum_i \ell_i`, divided by the ``normalizer`` when one is given;
* ``mean``: :math:`s \sum_i \ell_i / \sum_i \omega_i` (the normalizer replaces the divisor);
  a mean over zero counted samples is 0.0 with a zero gradient (NaN stays NaN).

The sums are compensated (:func:`._arith.sum_nonneg`: every loss is >= 0), and the scale
is applied as a double-word constant, so float32 results carry one rounding more than the
per-sample losses, not one per term.  The gradient is JAX's own differentiation of these
few operations; the divisor is made safe (1 where it is 0) before dividing, so a mean over
nothing never puts NaN into a gradient.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crossentropy._options import BinaryOptions, CrossEntropyOptions, Reduction
from crossentropy.jax import _arith as ar

__all__ = ["check_normalizer", "reduce", "scaled"]

Array = jax.Array


def scaled(v: Array, scale: float) -> Array:
    """``v * scale`` with `scale` split into two numbers of v's dtype (float32 would
    otherwise round 1 / ln 2 and add half an ulp to every result)."""
    if scale == 1.0:
        return v
    hi = np.asarray(scale, v.dtype)
    lo = np.asarray(scale - float(hi), v.dtype)
    out: Array = v * hi + v * lo
    return out


def check_normalizer(normalizer: Any, reduction: Any) -> tuple[float | None, Array | None]:
    """``(number for the options, 0-d array)``: a Python number is validated by the
    options; a JAX or NumPy array must be 0-d (its value cannot be checked under jit)."""
    if normalizer is None or (isinstance(normalizer, (int, float))
                              and not isinstance(normalizer, bool)):
        return normalizer, None
    if isinstance(normalizer, (jax.Array, np.ndarray, np.generic)):
        arr = jnp.asarray(normalizer)
        if arr.ndim != 0:
            raise ValueError(f"normalizer must be a number or a 0-d array, got shape "
                             f"{arr.shape}")
        if not jnp.issubdtype(arr.dtype, jnp.number) or arr.dtype == jnp.bool_:
            raise TypeError(f"normalizer must be a real number, got dtype {arr.dtype}")
        if Reduction.of(reduction) is Reduction.NONE:
            raise ValueError("normalizer divides a summed loss: it needs reduction='sum' "
                             "or 'mean'")
        return None, arr
    return normalizer, None  # the options raise TypeError naming it


def _total(loss: Array) -> Array:
    return ar.sum_nonneg(loss.reshape(-1), axis=0) if loss.size else jnp.zeros((), loss.dtype)


def reduce(
    loss: Array,
    omega: Array | float,
    opts: CrossEntropyOptions | BinaryOptions,
    *,
    norm: Array | None = None,
) -> Array:
    """Reduce per-sample losses (nats) by the rule in the module docstring.

    `omega` is an array of the losses' shape, or one number (the sample count of a binary
    mean); `norm` a traced normalizer (a 0-d array), used when ``opts.normalizer`` is None.
    """
    if opts.reduction is Reduction.NONE:
        return scaled(loss, opts.scale)
    total = scaled(_total(loss), opts.scale)
    n = opts.normalizer if opts.normalizer is not None else norm
    if n is not None:
        return total / jnp.asarray(n, total.dtype)
    if opts.reduction is Reduction.SUM:
        return total
    D = _total(omega) if isinstance(omega, jax.Array) else jnp.asarray(omega, total.dtype)
    D = D.astype(total.dtype)
    ok = D > 0
    mean = total / jnp.where(ok, D, 1.0)
    empty = jnp.where(jnp.isnan(total), jnp.nan, opts.empty_mean).astype(total.dtype)
    return jnp.where(ok, mean, empty)
