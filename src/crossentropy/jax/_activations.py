r"""Sigmoid, log-sigmoid, softplus, softmax, log-softmax and log-sum-exp: the public JAX functions.

Each function checks its arguments' dtypes and shapes (static under ``jit``), lays the
array out with the class axes last, computes in the working dtype (:mod:`._layout`:
bfloat16 and float16 in float32) with the compensated arithmetic of :mod:`._rows` and
:mod:`._sigmoid`, and rounds once to the input's dtype.  Differentiable in every mode
(``grad``, ``jacfwd``, ``jacrev``, ``vmap``, ``jit``): the derivatives are custom rules
with the exact formulas.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from crossentropy.jax import _layout as lay
from crossentropy.jax import _rows as rows
from crossentropy.jax import _sigmoid as sig

__all__ = ["log_sigmoid", "log_softmax", "logsumexp", "sigmoid", "softmax", "softplus"]

Array = jax.Array


# Each public function checks its arguments in Python, then calls one jitted computation
# (static: the layout and options): eagerly, op-by-op dispatch would compile every small
# operation on its own (17 s for a first cross_entropy call); under an outer jit the
# inner one is inlined.


@functools.partial(jax.jit, static_argnums=(0,))
def _elementwise_jit(f: Any, arr: Array) -> Array:
    out: Array = f(arr.astype(lay.compute_dtype(arr.dtype))).astype(arr.dtype)
    return out


def _elementwise(f: Any, x: Any) -> Array:
    out: Array = _elementwise_jit(f, lay.as_float(x, "x", allow_int=True))
    return out


def sigmoid(x: Any) -> Array:
    r"""The logistic sigmoid, elementwise.

    .. math:: \sigma(x) = \frac{1}{1 + e^{-x}}, \qquad \sigma'(x) = \sigma(x)\,\sigma(-x)

    Computed as ``1 / (1 + t)`` or ``t / (1 + t)`` with :math:`t = e^{-|x|}` carried to
    double-word accuracy: within 2 ulp (1.25 measured) in float64 and float32 over the whole
    range (a subnormal result is 0 where the platform flushes subnormals, as XLA CPU).  Its
    derivative is exact and non-zero while :math:`e^{-|x|}` is a normal number.
    ``1 - sigmoid(x)`` is ``sigmoid(-x)``: use that instead of subtracting.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> cej.sigmoid(jnp.array([1.0, -3.0])).tolist()  # mpmath: 0.7310585786, 0.0474258732
    [0.7310585975646973, 0.04742587357759476]
    >>> import jax
    >>> float(jax.grad(cej.sigmoid)(0.0))
    0.25
    """
    return _elementwise(sig.sigmoid, x)


def log_sigmoid(x: Any) -> Array:
    r"""The logarithm of the sigmoid, elementwise: :math:`\log\sigma(x) = -\log(1 + e^{-x})`.

    Exact for large x, where ``log(sigmoid(x))`` rounds to 0: ``log_sigmoid(40) =
    -4.25e-18``.  ``log(1 - sigmoid(x))`` is ``log_sigmoid(-x)``.  Derivative
    :math:`\sigma(-x)`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> cej.log_sigmoid(jnp.array([0.0, 40.0, -80.0])).tolist()
    [-0.6931471824645996, -4.24835413113866e-18, -80.0]
    """
    return _elementwise(sig.log_sigmoid, x)


def softplus(x: Any) -> Array:
    r"""softplus(x) = log(1 + e^x) = max(x, 0) + log1p(e^{-|x|}), elementwise.

    Both terms are >= 0, so ``softplus(-40) = 4.25e-18`` keeps every digit.  Derivative
    :math:`\sigma(x)`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> cej.softplus(jnp.array([-40.0, 0.0, 80.0])).tolist()
    [4.24835413113866e-18, 0.6931471824645996, 80.0]
    """
    return _elementwise(sig.softplus, x)


def _softmax_like(x: Any, axis: Any, where: Any, *, log: bool) -> Array:
    arr = lay.as_float(x, "x", allow_int=True)
    axes = lay.check_axes(axis, arr.ndim) if arr.ndim else None
    mask = lay.as_mask(where, arr.shape)
    if arr.size == 0:
        return jnp.zeros_like(arr)
    out: Array = _softmax_jit(arr, mask, axes, log)
    return out


@functools.partial(jax.jit, static_argnums=(2, 3))
def _softmax_jit(arr: Array, mask: Array | None, axes: lay.Axes | None, log: bool) -> Array:
    xc = arr.astype(lay.compute_dtype(arr.dtype))
    if mask is not None:  # entries left out: logit -inf, probability 0
        xc = jnp.where(mask, xc, -jnp.inf)
    f = rows.log_softmax if log else rows.softmax
    out = lay.from_rows(f(lay.to_rows(xc, axes)), arr.shape, axes)
    if mask is not None:  # rows with every entry left out: 0 (or -inf), not NaN
        out = jnp.where(mask, out, -jnp.inf if log else 0.0)
    result: Array = out.astype(arr.dtype)
    return result


def softmax(x: Any, axis: int | tuple[int, ...] | None = -1, *, where: Any = None) -> Array:
    r"""The softmax along `axis`: scores to probabilities that sum to 1.

    .. math:: \operatorname{softmax}(x)_j = \frac{e^{x_j - m}}{1 + \sum_{i \ne k} e^{x_i - m}},
              \quad m = x_k = \max_i x_i

    Parameters
    ----------
    x : array_like
        Scores (logits); integers become JAX's default float dtype.
    axis : int, tuple of ints or None
        The class axis (default: the last); a tuple takes those axes together as one (as
        SciPy does); None treats all elements as one row.
    where : array_like of bool, optional
        Entries that take part (broadcastable to `x`, as in ``jax.nn.softmax``); the others
        get probability 0 and gradient 0.

    Notes
    -----
    Within 8 ulp of the exact value (2.7 measured) in float64 and float32; bfloat16 and
    float16 are computed in float32 and rounded once.  +inf entries share the mass equally;
    a row of all -inf, or with a NaN, gives NaN.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> cej.softmax(jnp.array([9.8, 3.7, 0.2])).tolist()  # mpmath: 0.99769473, 0.0022376973
    [0.997694730758667, 0.002237696899101138, 6.757258961442858e-05]
    """
    return _softmax_like(x, axis, where, log=False)


def log_softmax(x: Any, axis: int | tuple[int, ...] | None = -1, *, where: Any = None,
                ) -> Array:
    r"""The logarithm of the softmax along `axis`, exact near 0.

    .. math:: \log\operatorname{softmax}(x)_j = (x_j - m) - \operatorname{log1p}\Big(
              \sum_{i \ne k} e^{x_i - m}\Big)

    ``x - logsumexp(x)`` (``jax.nn.log_softmax``) rounds the log of 1 + tiny and loses up
    to 10^8 ulp there.  Arguments as for :func:`softmax` (left-out entries get -inf).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> cej.log_softmax(jnp.array([0.0, -40.0])).tolist()
    [-4.24835413113866e-18, -40.0]
    """
    return _softmax_like(x, axis, where, log=True)


def logsumexp(
    x: Any,
    axis: int | tuple[int, ...] | None = -1,
    *,
    b: Any = None,
    where: Any = None,
    keepdims: bool = False,
    return_sign: bool = False,
) -> Any:
    r"""log(sum(b * exp(x))) along `axis`, without overflow and exact under cancellation.

    .. math:: \operatorname{LSE}(x) = m + \operatorname{log1p}\Big(\sum_{i \ne k} e^{x_i - m}\Big)

    Parameters
    ----------
    x : array_like
    axis : int, tuple of ints or None
        Axis to reduce (default: the last, as the rest of this library; SciPy's and JAX's
        default is None); a tuple reduces those axes together, None all elements.
    b : array_like, optional
        Weights broadcastable to `x`; ``b == 0`` leaves a term out, negative weights
        subtract.  Terms within a factor 2 of the largest are written ``b (1 + expm1(x -
        m))`` so that the digits that cancel are kept: ``log(e^0 - e^1e-20)`` is -46.05
        with sign -1 (float64; SciPy and JAX give -inf).
    where : array_like of bool, optional
        Entries that take part (broadcastable to `x`).
    keepdims : bool
        Keep the reduced axes with length 1.
    return_sign : bool
        Return ``(log|sum|, sign(sum))``.  Without it a negative sum gives NaN (as in
        ``jax.scipy.special.logsumexp``: under ``jit`` the value cannot raise).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> float(cej.logsumexp(jnp.array([1000.0, 1000.0])))
    1000.6931762695312
    """
    arr = lay.as_float(x, "x", allow_int=True)
    axes = lay.check_axes(axis, arr.ndim) if arr.ndim else None
    mask = lay.as_mask(where, arr.shape)
    bb = None
    dtype = arr.dtype
    if b is not None:
        bb = lay.as_float(b, "b", allow_int=True)
        if jnp.issubdtype(jnp.asarray(b).dtype, jnp.floating):
            dtype = jnp.promote_types(dtype, bb.dtype)
        try:
            jnp.broadcast_shapes(arr.shape, bb.shape)
        except ValueError:
            raise ValueError(f"b with shape {bb.shape} cannot be broadcast to x with shape "
                             f"{arr.shape}") from None
    out, sign = _logsumexp_jit(arr, bb, mask, axes, keepdims, return_sign, jnp.dtype(dtype))
    return (out, sign) if return_sign else out


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _logsumexp_jit(arr: Array, bb: Array | None, mask: Array | None, axes: lay.Axes | None,
                   keepdims: bool, return_sign: bool, dtype: Any) -> tuple[Array, Array]:
    xc = arr.astype(lay.compute_dtype(dtype))
    if mask is not None:
        xc = jnp.where(mask, xc, -jnp.inf)
    if bb is not None:
        xc, bc = jnp.broadcast_arrays(xc, bb.astype(xc.dtype))
    shape = xc.shape
    rows_shape = () if axes is None else tuple(d for i, d in enumerate(shape) if i not in axes)
    C = math.prod(shape) if axes is None else math.prod(shape[a] for a in axes)
    if C == 0:
        out = jnp.full(rows_shape, -jnp.inf, xc.dtype)
        sign = jnp.zeros(rows_shape, xc.dtype)
    elif xc.size == 0:
        out = jnp.zeros(rows_shape, xc.dtype)
        sign = jnp.ones(rows_shape, xc.dtype)
    elif bb is None:
        out = rows.logsumexp(lay.to_rows(xc.reshape(shape or (1,)), axes)).reshape(rows_shape)
        sign = jnp.where(jnp.isnan(out), jnp.nan, 1.0).astype(xc.dtype)
    else:
        x2 = lay.to_rows(xc.reshape(shape or (1,)), axes)
        b2 = lay.to_rows(bc.reshape(shape or (1,)), axes)
        out, sign = rows.weighted_logsumexp(x2, b2)
        out, sign = out.reshape(rows_shape), sign.reshape(rows_shape)
        if not return_sign:
            out = jnp.where(sign < 0, jnp.nan, out)
    if keepdims:
        kept = tuple(1 if axes is None or i in axes else d for i, d in enumerate(shape))
        out, sign = out.reshape(kept), sign.reshape(kept)
    return out.astype(dtype), sign.astype(dtype)
