"""Sigmoid, log-sigmoid, softmax, log-softmax and log-sum-exp: the public NumPy functions.

Each function validates its arguments, lays the array out with the class axis last, picks
the implementation (:func:`crossentropy._backends.use_numba`: the numba kernels for large
float arrays, else the exact core), computes, and rounds once to the result dtype.  The
arithmetic itself lives in :mod:`crossentropy._core` (``sigmoid`` and ``rows``): inputs of
float16 and float32 are computed there in float64 and rounded once at the end, so their
results are correctly rounded in all but rare ties; float64 inputs keep a few ulp over the
whole range, subnormal results included.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from crossentropy import _small
from crossentropy._backends import use_numba
from crossentropy._core import rows as core_rows
from crossentropy._core import sigmoid as core_sigmoid
from crossentropy._validate import (
    as_float_array,
    cast_out,
    check_axis,
    check_out,
    deliver,
    real_array,
)

__all__ = ["log_sigmoid", "log_softmax", "logsumexp", "sigmoid", "softmax"]

F64 = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- layout


def _moved(x: F64, axis: int | None) -> tuple[F64, int | None]:
    """Move `axis` last (or flatten for axis=None); return the array and the normalised axis."""
    if axis is None:
        return x.reshape(1, -1), None
    ax = check_axis(axis, x.ndim)
    # contiguous rows: NumPy sums a contiguous last axis pairwise but a strided one term by
    # term, so without the copy axis=k would differ (by up to ~sqrt(C) ulp) from moving k last
    moved = x if ax == x.ndim - 1 else np.moveaxis(x, ax, -1)  # (moveaxis costs ~3 us)
    return np.ascontiguousarray(moved), ax


def _back(y: F64, shape: tuple[int, ...], ax: int | None) -> F64:
    """Undo :func:`_moved` for a result with the input's shape."""
    if ax is None:
        return y.reshape(shape)
    return y if ax == y.ndim - 1 else np.moveaxis(y, -1, ax)


def _small_rows(x: F64) -> list[list[float]] | None:
    """The rows of `x` as Python floats when the plain-Python path applies, else None."""
    if not 0 < x.size <= _small.SMALL or x.shape[-1] == 0:
        return None
    rows: list[list[float]] = x.reshape(-1, x.shape[-1]).tolist()
    return rows if _small.finite(rows) else None


def _softmax_like(x: Any, axis: int | None, out: Any, *, log: bool) -> Any:
    arr, dtype = real_array(x, "x")
    if axis is not None:
        check_axis(axis, arr.ndim)
    if out is not None:
        check_out(out, arr.shape, dtype)
    if arr.size and use_numba(arr):  # large float arrays: the numba kernels
        from crossentropy import _cpu

        ax = None if axis is None else check_axis(axis, arr.ndim)
        return _cpu.softmax(arr, ax, log=log, out=out)
    xm, ax = _moved(arr.astype(np.float64, copy=False), axis)
    if xm.size == 0:
        res = np.zeros_like(xm)
    elif (small := _small_rows(xm)) is not None:  # a few finite numbers: no NumPy overhead
        fn = _small.log_softmax_rows if log else _small.softmax_rows
        res = np.array(fn(small)).reshape(xm.shape)
    else:
        res = core_rows.log_softmax(xm) if log else core_rows.softmax(xm)
    return deliver(cast_out(_back(res, arr.shape, ax), dtype), out)


def _logsumexp_rows(arr: np.ndarray, ax: int | None) -> F64:
    """float64 log-sum-exp over `ax` (None: all elements), the reduced shape."""
    if arr.ndim == 0:  # (only with ax=None) one row of one element
        arr = arr.reshape(1)
    rows_shape = (1,) if ax is None else arr.shape[:ax] + arr.shape[ax + 1 :]
    C = arr.size if ax is None else arr.shape[ax]
    if C == 0:
        return np.full(rows_shape, -np.inf)
    if arr.size == 0:
        return np.zeros(rows_shape)
    if use_numba(arr):
        from crossentropy import _cpu

        return _cpu.logsumexp(arr, ax).reshape(rows_shape)
    xm, _ = _moved(arr.astype(np.float64, copy=False), ax)
    if (small := _small_rows(xm)) is not None:
        return np.array(_small.logsumexp_rows(small)).reshape(rows_shape)
    return core_rows.logsumexp(xm).reshape(rows_shape)


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
    if use_numba(arr):  # large float arrays: the numba kernels (crossentropy._cpu)
        from crossentropy import _cpu

        return _cpu.sigmoid(arr, log=False, return_grad=return_grad, out=out)
    x64 = arr.astype(np.float64, copy=False)
    value = deliver(cast_out(core_sigmoid.sigmoid(x64), dtype), out)
    if return_grad:
        return value, cast_out(core_sigmoid.sigmoid_prime(x64), dtype)
    return value


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
    if use_numba(arr):
        from crossentropy import _cpu

        return _cpu.sigmoid(arr, log=True, return_grad=return_grad, out=out)
    x64 = arr.astype(np.float64, copy=False)
    value = deliver(cast_out(core_sigmoid.log_sigmoid(x64), dtype), out)
    if return_grad:
        # d/dx log sigmoid(x) = sigmoid(-x)
        return value, cast_out(core_sigmoid.sigmoid(-x64), dtype)
    return value


def softmax(x: Any, axis: int | None = -1, *, out: Any = None) -> Any:
    r"""The softmax along `axis`: scores to probabilities that sum to 1.

    .. math:: \operatorname{softmax}(x)_j = \frac{e^{x_j}}{\sum_i e^{x_i}}
              = \frac{e^{x_j - m}}{1 + \sum_{i \ne k} e^{x_i - m}},\quad m = x_k = \max_i x_i

    Parameters
    ----------
    x : array_like
        Scores (logits).
    axis : int or None
        The class axis (default: the last).  ``None`` treats all elements as one row.
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
    """
    return _softmax_like(x, axis, out, log=False)


def log_softmax(x: Any, axis: int | None = -1, *, out: Any = None) -> Any:
    r"""The logarithm of the softmax along `axis`.

    .. math:: \log\operatorname{softmax}(x)_j = (x_j - m) - \log1p\Big(\sum_{i \ne k}
              e^{x_i - m}\Big),\quad m = x_k = \max_i x_i

    Exact near 0, where computing ``x - logsumexp(x)`` loses up to 10^8 ulp (the rounded
    ``1 + s`` under the log throws away the digits of ``s``).

    Examples
    --------
    >>> import crossentropy as ce
    >>> ce.log_softmax([0.0, -40.0])
    array([-4.24835426e-18, -4.00000000e+01])
    """
    return _softmax_like(x, axis, out, log=True)


def logsumexp(
    x: Any,
    axis: int | None = -1,
    *,
    b: Any = None,
    keepdims: bool = False,
    return_sign: bool = False,
) -> Any:
    r"""log(sum(b * exp(x))) along `axis`, without overflow and exact under cancellation.

    .. math:: \operatorname{LSE}(x) = m + \log1p\Big(\sum_{i \ne k} e^{x_i - m}\Big)

    Parameters
    ----------
    x : array_like
    axis : int or None
        Axis to reduce (default: the last); ``None`` reduces all elements.
    b : array_like, optional
        Weights broadcastable to `x`; entries with ``b == 0`` are left out, negative ones
        subtract.  With weights, terms within a factor 2 of the largest are written as
        ``b (1 + expm1(x - m))`` so that the sum ``sum(b) + sum(b expm1(x - m))`` keeps the
        digits that cancel: ``log(e^0 - e^1e-20)`` is ``-46.0517`` with sign -1 (SciPy and
        JAX give -inf).
    keepdims : bool
        Keep the reduced axis with length 1.
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
    if b is None:
        ax = None if axis is None else check_axis(axis, arr.ndim)
        out = _logsumexp_rows(arr, ax)
        sign = np.where(np.isnan(out), np.nan, 1.0)
        x64 = arr
    else:
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
        xm, ax = _moved(x64, axis)
        bm, _ = _moved(b64, axis)
        out, sign = core_rows.weighted_logsumexp(xm, bm)
        if not return_sign:
            neg = sign < 0
            if neg.any():
                raise ValueError(
                    "the weighted sum sum(b * exp(x)) is negative for some rows, so its log is "
                    "not real; pass return_sign=True to get log|sum| and the sign"
                )
    if keepdims:
        if ax is None:
            out = out.reshape((1,) * x64.ndim)
            sign = sign.reshape((1,) * x64.ndim)
        else:
            out = np.expand_dims(out, ax)
            sign = np.expand_dims(sign, ax)
    elif ax is None:
        out = out.reshape(())
        sign = sign.reshape(())
    if return_sign:
        return cast_out(out, dtype), cast_out(sign, dtype)
    return cast_out(out, dtype)
