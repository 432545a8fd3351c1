"""Value checks that work under ``jit``, through ``jax.experimental.checkify``.

Under ``jit`` a loss cannot look at its arguments' values (that would be a host
synchronisation; the compiled program has no way to raise).  The losses therefore only
check shapes and dtypes, and define what a bad value gives: a class index outside
``[0, C)`` that is not ``ignore_index`` makes its row's loss NaN.  To turn such values into
errors, call these checks in the loss function and functionalize it with ``checkify``::

    from jax.experimental import checkify

    def loss_fn(logits, labels):
        cej.check_labels(labels, logits.shape[-1])
        return cej.cross_entropy(logits, labels)

    err, loss = checkify.checkify(jax.jit(loss_fn))(logits, labels)
    err.throw()  # raises, naming the first bad position

Called eagerly (no ``jit``), a failed check raises at once; inside ``jit`` without
``checkify`` JAX refuses to trace it ("Cannot abstractly evaluate a checkify.check which
was not functionalized").
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from crossentropy.jax import _layout as lay

__all__ = ["check_labels", "check_probabilities"]

Array = jax.Array


def check_labels(labels: Any, num_classes: int, *, ignore_index: int | None = -100) -> None:
    """``checkify.check`` that every class index is in ``[0, num_classes)`` or equals
    `ignore_index`; the message gives the flat position of the first bad one.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> cej.check_labels(jnp.array([0, 2, -100]), 3)  # fine: nothing happens
    >>> try:  # doctest: +ELLIPSIS
    ...     cej.check_labels(jnp.array([0, 3]), 3)
    ... except Exception as exc:  # jax.errors.JaxRuntimeError
    ...     print(str(exc).splitlines()[0])
    labels must be in [0, 3) or ignore_index=-100; the label at flat position 1 is 3 ...
    """
    y = jnp.asarray(labels)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    counted = jnp.ones(y.shape, bool) if ignore_index is None else y != ignore_index
    bad = (counted & ((y < 0) | (y >= num_classes))).reshape(-1)
    first = jnp.argmax(bad) if bad.size else jnp.asarray(0)
    value = y.reshape(-1)[first] if bad.size else jnp.asarray(0)
    checkify.check(~jnp.any(bad), f"labels must be in [0, {num_classes}) or ignore_index="
                   f"{ignore_index}; the label at flat position {{i}} is {{v}}", i=first,
                   v=value)


def check_probabilities(p: Any, axis: int = -1, *, tol: float | None = None) -> None:
    """``checkify.check`` that `p` holds probabilities in [0, 1] whose rows (along `axis`)
    sum to 1 within `tol` (default ``max(C, 16)`` machine epsilons of p's dtype, the NumPy
    API's rule).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> cej.check_probabilities(jnp.array([[0.25, 0.75]]))
    >>> try:  # doctest: +ELLIPSIS
    ...     cej.check_probabilities(jnp.array([[0.5, 0.75]]))
    ... except Exception as exc:  # jax.errors.JaxRuntimeError
    ...     print(str(exc).splitlines()[0])
    rows must sum to 1 (tolerance 1.9073e-06); row 0 sums to 1.25 ...
    """
    arr = lay.as_float(p, "p", allow_int=True)
    axes = lay.check_axes(axis, arr.ndim)
    assert axes is not None
    ax = axes[0]
    C = arr.shape[ax]
    if tol is None:
        tol = max(C, 16) * float(np.finfo(arr.dtype).eps)
    rng_bad = ((arr < 0) | (arr > 1) | jnp.isnan(arr)).reshape(-1)
    first = jnp.argmax(rng_bad) if rng_bad.size else jnp.asarray(0)
    checkify.check(~jnp.any(rng_bad), "probabilities must be in [0, 1]; the value at flat "
                   "position {i} is {v}", i=first,
                   v=arr.reshape(-1)[first] if rng_bad.size else jnp.asarray(0.0))
    sums = jnp.sum(arr.astype(lay.compute_dtype(arr.dtype)), axis=ax).reshape(-1)
    off = jnp.abs(sums - 1.0) > tol
    row = jnp.argmax(off) if off.size else jnp.asarray(0)
    checkify.check(~jnp.any(off), f"rows must sum to 1 (tolerance {tol:.5g}); row {{r}} sums "
                   "to {s}", r=row, s=sums[row] if off.size else jnp.asarray(1.0))
