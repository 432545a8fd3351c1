"""Sigmoid, log-sigmoid, softmax, log-softmax and log-sum-exp: the public NumPy functions.

Each function validates its arguments, lays the array out with the class axis last, picks
the implementation (:func:`crossentropy._dispatch.pick`: plain Python for a few numbers, the
numba kernels for large float arrays, else the exact core), computes, and rounds once to the
result dtype.  The
arithmetic itself lives in :mod:`crossentropy._core` (``sigmoid`` and ``rows``): inputs of
float16 and float32 are computed there in float64 and rounded once at the end, so their
results are correctly rounded in all but rare ties; float64 inputs keep a few ulp over the
whole range, subnormal results included.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from crossentropy._core import rows as core_rows
from crossentropy._core import sigmoid as core_sigmoid
from crossentropy._dispatch import pick
from crossentropy._layout import moved
from crossentropy._validate import (
    as_float_array,
    cast_out,
    check_axis,
    check_out,
    check_probabilities,
    real_array,
    write_out,
)

__all__ = ["log_sigmoid", "log_softmax", "logit", "logsumexp", "sigmoid", "softmax", "softplus"]

F64 = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- layout


def _axes(axis: Any, ndim: int) -> tuple[int, ...] | None:
    """Normalise `axis`: an int, a tuple of ints (SciPy's convention: the axes are taken
    together as one), or None (all axes).  Returns the sorted axes, or None for all."""
    if axis is None:
        return None
    if isinstance(axis, tuple):
        if not axis:
            raise ValueError("axis=() names no axis; pass None to use every axis")
        axes = tuple(check_axis(a, ndim) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"axis={axis} repeats an axis")
        return tuple(sorted(axes))
    return (check_axis(axis, ndim),)


def _masked(arr: np.ndarray, where: Any) -> tuple[np.ndarray, npt.NDArray[np.bool_] | None]:
    """Apply a `where` mask (True: the entry takes part): excluded entries become -inf,
    which gives them probability 0 and leaves the log-sum-exp of the others."""
    if where is None:
        return arr, None
    m = np.asarray(where)
    if m.dtype != np.bool_:
        raise TypeError(f"where must be a boolean array, got dtype {m.dtype}")
    try:
        m = np.broadcast_to(m, arr.shape)
    except ValueError:
        raise ValueError(
            f"where with shape {m.shape} cannot be broadcast to x with shape {arr.shape}"
        ) from None
    return np.where(m, arr, -np.inf).astype(arr.dtype, copy=False), m


def _softmax_like(x: Any, axis: Any, out: Any, where: Any, *, log: bool) -> Any:
    arr, dtype = real_array(x, "x")
    axes = _axes(axis, arr.ndim)
    if out is not None:
        check_out(out, arr.shape, dtype)
    mask = None
    if where is not None:
        arr, mask = _masked(arr, where)
    # a few numbers go to plain Python first, unless they come with `out` or `where`
    be = pick(arr, numba=arr.size > 0, plain=True,
              kernels_first=out is not None or mask is not None)
    res = be.softmax(arr, axes, log=log, dtype=dtype, out=None if mask is not None else out)
    if res is out and out is not None:  # written in place by the kernels
        return out
    if mask is not None:  # excluded entries: probability 0, log-probability -inf
        res = np.where(mask, res, -np.inf if log else 0.0)
    return cast_out(res, dtype) if out is None else write_out(cast_out(res, dtype), out)


def _logsumexp_rows(arr: np.ndarray, axes: tuple[int, ...] | None, kernels_first: bool) -> F64:
    """float64 log-sum-exp over `axes` (None: all elements), the reduced shape."""
    if arr.ndim == 0:  # (only with axes=None) one row of one element
        arr = arr.reshape(1)
    if axes is None:
        rows_shape: tuple[int, ...] = (1,)
        C = arr.size
    elif axes == (arr.ndim - 1,):  # the common case, without the general loop
        rows_shape, C = arr.shape[:-1], arr.shape[-1]
    else:
        rows_shape = tuple(d for i, d in enumerate(arr.shape) if i not in axes)
        C = math.prod(arr.shape[a] for a in axes)
    if C == 0:
        return np.full(rows_shape, -np.inf)
    if arr.size == 0:
        return np.zeros(rows_shape)
    be = pick(arr, plain=True, kernels_first=kernels_first)
    return be.logsumexp(arr, axes).reshape(rows_shape)


def sigmoid(x: Any, *, return_grad: bool = False, out: Any = None) -> Any:
    r"""The logistic sigmoid, elementwise.

    .. math:: \sigma(x) = \frac{1}{1 + e^{-x}}

    Parameters
    ----------
    x : array_like
        Real numbers.  float16, float32 and float64 keep their dtype; integers become float64.
    return_grad : bool
        Also return the derivative :math:`\sigma'(x) = \sigma(x)\,\sigma(-x)`.

    Returns
    -------
    ndarray or scalar, or a tuple ``(value, derivative)``

    Notes
    -----
    Results that are subnormal are kept: ``sigmoid(-720) = 2.03e-313`` where libraries that
    compute ``1 / (1 + exp(-x))`` return 0.  The derivative is non-zero up to |x| ~ 745.
    ``1 - sigmoid(x)`` is ``sigmoid(-x)``: use that instead of subtracting.

    Examples
    --------
    >>> import crossentropy as ce
    >>> ce.sigmoid([1.0, -3.0])
    array([0.73105858, 0.04742587])
    >>> float(ce.sigmoid(-720.0))  # mpmath: exp(-720) / (1 + exp(-720)) = 2.032230802e-313
    2.0322308e-313
    >>> v, d = ce.sigmoid(0.0, return_grad=True)
    >>> float(v), float(d)
    (0.5, 0.25)
    """
    arr, dtype = real_array(x, "x")
    if out is not None:
        check_out(out, arr.shape, dtype)
    return pick(arr).sigmoid(arr, dtype, log=False, return_grad=return_grad, out=out)


def log_sigmoid(x: Any, *, return_grad: bool = False, out: Any = None) -> Any:
    r"""The logarithm of the sigmoid, elementwise.

    .. math:: \log\sigma(x) = -\log(1 + e^{-x})

    ``log(1 - sigmoid(x))`` is ``log_sigmoid(-x)``: the complement needs no subtraction.

    Parameters
    ----------
    x : array_like
        Real numbers.
    return_grad : bool
        Also return the derivative :math:`\frac{d}{dx}\log\sigma(x) = \sigma(-x)`.

    Examples
    --------
    >>> import crossentropy as ce
    >>> ce.log_sigmoid([0.0, 40.0, -800.0])
    array([-6.93147181e-01, -4.24835426e-18, -8.00000000e+02])
    """
    arr, dtype = real_array(x, "x")
    if out is not None:
        check_out(out, arr.shape, dtype)
    return pick(arr).sigmoid(arr, dtype, log=True, return_grad=return_grad, out=out)


def softmax(
    x: Any, axis: int | tuple[int, ...] | None = -1, *, where: Any = None, out: Any = None
) -> Any:
    r"""The softmax along `axis`: scores to probabilities that sum to 1.

    .. math:: \operatorname{softmax}(x)_j = \frac{e^{x_j}}{\sum_i e^{x_i}}
              = \frac{e^{x_j - m}}{1 + \sum_{i \ne k} e^{x_i - m}},\quad m = x_k = \max_i x_i

    Parameters
    ----------
    x : array_like
        Scores (logits).
    axis : int, tuple of ints or None
        The class axis (default: the last).  A tuple takes those axes together as one (as
        SciPy does); ``None`` treats all elements as one row.
    where : array_like of bool, optional
        Entries that take part (broadcastable to `x`, as in JAX and optax); the others get
        probability 0 and do not count in the normalisation.
    out : ndarray, optional
        Array of the result's shape and dtype to write into (it may be `x` itself); saves
        allocating a large result.

    Notes
    -----
    Special values: a row with +inf entries gives those entries equal shares
    (``[inf, 0] -> [1, 0]``, ``[inf, inf] -> [0.5, 0.5]``); -inf entries get probability 0;
    a row of all -inf, or with a NaN, gives NaN.  Error at most a few ulp (8 is tested).

    Examples
    --------
    >>> import crossentropy as ce
    >>> ce.softmax([3.0, 0.6, 6.3])    # mpmath: 0.0354567722, 0.003216565804, 0.961326662
    array([0.03545677, 0.00321657, 0.96132666])
    >>> ce.softmax([9.8, 3.7, 0.2])    # mpmath: 0.9976947301, 0.002237697304, 6.757260347e-5
    array([9.97694730e-01, 2.23769730e-03, 6.75726035e-05])
    >>> ce.softmax([1.0, 2.0, 3.0], where=[True, False, True])
    array([0.11920292, 0.        , 0.88079708])
    """
    return _softmax_like(x, axis, out, where, log=False)


def log_softmax(
    x: Any, axis: int | tuple[int, ...] | None = -1, *, where: Any = None, out: Any = None
) -> Any:
    r"""The logarithm of the softmax along `axis`.

    .. math:: \log\operatorname{softmax}(x)_j = (x_j - m) - \log1p\Big(\sum_{i \ne k}
              e^{x_i - m}\Big),\quad m = x_k = \max_i x_i

    Exact near 0, where computing ``x - logsumexp(x)`` loses up to 10^8 ulp (the rounded
    ``1 + s`` under the log throws away the digits of ``s``).

    Parameters
    ----------
    x : array_like
        Scores (logits).
    axis : int, tuple of ints or None
        As for :func:`softmax`.
    where : array_like of bool, optional
        Entries that take part; the others get -inf and do not count.
    out : ndarray, optional
        Array of the result's shape and dtype to write into (it may be `x` itself).

    Examples
    --------
    >>> import crossentropy as ce
    >>> ce.log_softmax([0.0, -40.0])
    array([-4.24835426e-18, -4.00000000e+01])
    """
    return _softmax_like(x, axis, out, where, log=True)


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

    .. math:: \operatorname{LSE}(x) = m + \log1p\Big(\sum_{i \ne k} e^{x_i - m}\Big)

    Parameters
    ----------
    x : array_like
    axis : int, tuple of ints or None
        Axis to reduce (default: the last); a tuple reduces those axes together, ``None``
        all elements.
    b : array_like, optional
        Weights broadcastable to `x`; entries with ``b == 0`` are left out, negative ones
        subtract.  With weights, terms within a factor 2 of the largest are written as
        ``b (1 + expm1(x - m))`` so that the sum ``sum(b) + sum(b expm1(x - m))`` keeps the
        digits that cancel: ``log(e^0 - e^1e-20)`` is ``-46.0517`` with sign -1 (SciPy and
        JAX give -inf).
    where : array_like of bool, optional
        Entries that take part (broadcastable to `x`); the others are left out of the sum.
    keepdims : bool
        Keep the reduced axes with length 1.
    return_sign : bool
        Return ``(log|sum|, sign(sum))``.  Without it a negative sum raises ``ValueError``.

    Notes
    -----
    The result is -inf for an empty axis or a row of all -inf, +inf when a term is +inf,
    NaN when a term is NaN.  When the sum is close to 1 and the maximum is negative the
    problem itself is ill conditioned: the error is a few ulp of ``max(|m|, log1p(s))``.

    Examples
    --------
    >>> import crossentropy as ce
    >>> float(ce.logsumexp([1000.0, 1000.0]))
    1000.6931471805599
    >>> ce.logsumexp([0.0, 1e-20], b=[1.0, -1.0], return_sign=True)
    (np.float64(-46.051701859880914), np.float64(-1.0))
    """
    arr, dtype = real_array(x, "x")
    axes = _axes(axis, arr.ndim)
    if where is not None:
        arr, _ = _masked(arr, where)
    if b is None:
        # a 1-d row without options goes to plain Python first when it is short
        out = _logsumexp_rows(arr, axes, where is not None or keepdims or return_sign
                              or arr.ndim != 1)
        sign = np.where(np.isnan(out), np.nan, 1.0) if return_sign else out
    else:
        out, sign, dtype = _weighted_logsumexp(arr, b, axes, dtype, return_sign)
    if keepdims:
        kept = tuple(1 if axes is None or i in axes else d for i, d in enumerate(np.shape(x)))
        out, sign = out.reshape(kept), sign.reshape(kept)
    elif axes is None:
        out, sign = out.reshape(()), sign.reshape(())
    if return_sign:
        return cast_out(out, dtype), cast_out(sign, dtype)
    return cast_out(out, dtype)


def _weighted_logsumexp(arr: np.ndarray, b: Any, axes: tuple[int, ...] | None,
                        dtype: np.dtype[Any], return_sign: bool,
                        ) -> tuple[F64, F64, np.dtype[Any]]:
    """``(log|sum b e^x|, sign, result dtype)`` over `axes` (the core only); a negative sum
    raises without `return_sign`."""
    x64 = arr.astype(np.float64, copy=False)
    b64, bdtype = as_float_array(b, "b")
    try:
        x64, b64 = np.broadcast_arrays(x64, b64)
    except ValueError:
        raise ValueError(
            f"b with shape {b64.shape} cannot be broadcast to x with shape {x64.shape}"
        ) from None
    if np.asarray(b).dtype.kind == "f":  # integer weights (b=[1, -1]) never widen
        dtype = max(dtype, bdtype, key=lambda d: d.itemsize)
    if x64.ndim == 0:
        x64, b64 = x64.reshape(1), b64.reshape(1)
    rows_shape = (1,) if axes is None else tuple(
        d for i, d in enumerate(x64.shape) if i not in axes)
    out, sign = core_rows.weighted_logsumexp(moved(x64, axes), moved(b64, axes))
    out, sign = out.reshape(rows_shape), sign.reshape(rows_shape)
    if not return_sign and (sign < 0).any():
        raise ValueError(
            "the weighted sum sum(b * exp(x)) is negative for some rows, so its log is "
            "not real; pass return_sign=True to get log|sum| and the sign"
        )
    return out, sign, dtype


def softplus(x: Any, *, return_grad: bool = False) -> Any:
    r"""softplus(x) = log(1 + e^x), elementwise, without overflow or cancellation.

    .. math:: \operatorname{softplus}(x) = \max(x, 0) + \operatorname{log1p}(e^{-|x|}),
              \qquad \operatorname{softplus}'(x) = \sigma(x)

    Both terms are >= 0, so ``softplus(-40) = 4.25e-18`` keeps every digit (the textbook
    ``log(1 + exp(x))`` gives 0) and ``softplus(1000) = 1000``.  It equals
    ``-log_sigmoid(-x)``, PyTorch's ``F.softplus`` (beta 1, without its linear cut-off)
    and ``numpy.logaddexp(0, x)``.

    Parameters
    ----------
    x : array_like
        Real numbers.
    return_grad : bool
        Also return the derivative, the sigmoid.

    Examples
    --------
    >>> import crossentropy as ce
    >>> ce.softplus([-40.0, 0.0, 1000.0])  # mpmath: log1p(exp(-40)) = 4.248354255291589e-18
    array([4.24835426e-18, 6.93147181e-01, 1.00000000e+03])
    """
    arr, dtype = real_array(x, "x")
    x64 = arr.astype(np.float64, copy=False)
    value = cast_out(core_sigmoid.softplus(x64), dtype)
    if return_grad:
        return value, cast_out(core_sigmoid.sigmoid(x64), dtype)
    return value


def logit(p: Any, *, return_grad: bool = False) -> Any:
    r"""The logit log(p / (1 - p)), the inverse of the sigmoid, elementwise on [0, 1].

    .. math:: \operatorname{logit}(p) = \log p - \operatorname{log1p}(-p), \qquad
              \operatorname{logit}'(p) = \frac{1}{p\,(1 - p)}

    Near p = 1/2 it is ``log1p((2p - 1) / (1 - p))``, where ``2p - 1`` is exact, so small
    results keep their digits; ``logit(0) = -inf``, ``logit(1) = +inf``.  As
    ``scipy.special.logit``; probabilities outside [0, 1] raise ``ValueError`` instead of
    returning NaN.

    Examples
    --------
    >>> import crossentropy as ce
    >>> ce.logit([0.5, 0.75, 1e-300])   # mpmath: log(3) = 1.0986122886681098
    array([   0.        ,    1.09861229, -690.7755279 ])
    >>> float(ce.sigmoid(ce.logit(0.3)))
    0.3
    """
    arr, dtype = real_array(p, "p")
    p64 = arr.astype(np.float64, copy=False)
    check_probabilities(p64, "p")
    value = cast_out(core_sigmoid.logit(p64), dtype)
    if return_grad:
        with np.errstate(divide="ignore", over="ignore"):
            # 1 / (p (1 - p)): one rounding each for the product and the quotient
            return value, cast_out(1.0 / (p64 * (1.0 - p64)), dtype)
    return value
