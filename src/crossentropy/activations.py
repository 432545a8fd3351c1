"""Sigmoid, log-sigmoid, softmax, log-softmax and log-sum-exp: the exact NumPy reference.

Every function here is the oracle that the faster backends are tested against.  Inputs
of float16 and float32 are computed in float64 and rounded once at the end, so their
results are correctly rounded in all but rare ties.  float64 inputs use the identities
commented at each line, which keep the error within a few ulp over the whole range,
subnormal results included.

The algorithms follow Blanchard, Higham & Higham, "Accurately computing the log-sum-exp
and softmax functions", IMA J. Numer. Anal. 41 (2021): shift by the maximum, take
``log1p`` of the sum of the *other* terms, and divide by ``1 + s`` for the softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from crossentropy import _cpu, _small
from crossentropy._validate import as_float_array, cast_out, check_axis

__all__ = ["log_sigmoid", "log_softmax", "logsumexp", "sigmoid", "softmax"]

F64 = npt.NDArray[np.float64]

# --------------------------------------------------------------------------- sigmoid


# ln 2 split as in fdlibm: _LN2_HI has its last 21 bits zero, so k * _LN2_HI is exact for
# k < 2^21, and _LN2_HI + _LN2_LO is ln 2 to about 2^-86.
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10


def _exp_neg_abs_split(x: F64) -> tuple[F64, F64, F64]:
    """e^-|x| as ``(hi + lo) * 2^-k``: hi in [0.7, 1.42], lo its correction, k a whole number.

    Cody-Waite reduction |x| = k ln2 + r, |r| <= ln2 / 2, then e^-r = 1 + expm1(-r):
    the 1 is exact and expm1 is accurate to half an ulp of a number below 0.42, so hi + lo
    carries e^-|x| to a small fraction of an ulp, where np.exp(-|x|) is off by up to 0.7 ulp.
    Keeping 2^-k apart lets the callers round subnormal results only once, at the end.
    """
    a = np.abs(x)
    far = a > 1100.0  # e^-|x| is 0 in every dtype (x = +-inf included)
    nan = np.isnan(a)
    a = np.where(far | nan, 0.0, a)
    k = np.rint(a * (1.0 / np.log(2.0)))
    r_hi = a - k * _LN2_HI  # exact: k * _LN2_HI is exact and within a factor 2 of a (Sterbenz)
    kl = k * _LN2_LO
    r = r_hi - kl
    r_lo = (r_hi - r) - kl  # r + r_lo = a - k ln2 (Fast2Sum: |r_hi| >= |kl|)
    g = np.expm1(-r)
    hi = 1.0 + g
    # e^-(r + r_lo) = (1 + g)(1 - r_lo): Fast2Sum error of 1 + g, then the r_lo term
    lo = ((1.0 - hi) + g) - r_lo * hi
    hi = np.where(far, 0.0, np.where(nan, np.nan, hi))
    lo = np.where(far | nan, 0.0, lo)
    return hi, lo, k


def _one_plus(hi: F64, lo: F64, k: F64) -> tuple[F64, F64]:
    """1 + e^-|x| as ``d_hi + d_lo`` (Fast2Sum, since e^-|x| <= 1)."""
    with np.errstate(under="ignore"):
        t_hi = np.ldexp(hi, -k.astype(np.int64))
        t_lo = np.ldexp(lo, -k.astype(np.int64))
    d_hi = 1.0 + t_hi
    d_lo = ((1.0 - d_hi) + t_hi) + t_lo
    return d_hi, d_lo


def _ratio(hi: F64, lo: F64) -> F64:
    """lo / hi, 0 where hi is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(hi == 0.0, 0.0, lo / hi)


def _sigmoid64(x: F64) -> F64:
    # Two branches, each free of overflow and of cancellation, with t = e^-|x|:
    #   x >= 0:  1 / (1 + t)
    #   x <  0:  t / (1 + t)      (1 / (1 + e^-x) would overflow e^-x for x < -709)
    # 1 + t = d_hi + d_lo and t = (hi + lo) 2^-k are carried to double-double accuracy, so
    # a / (d_hi + d_lo) = (a / d_hi)(1 - d_lo / d_hi) with one rounded division: <= 1 ulp.
    hi, lo, k = _exp_neg_abs_split(x)
    d_hi, d_lo = _one_plus(hi, lo, k)
    c = d_lo / d_hi
    q_pos = 1.0 / d_hi
    pos = q_pos - q_pos * c
    q_neg = hi / d_hi
    neg = q_neg + q_neg * (_ratio(hi, lo) - c)
    with np.errstate(under="ignore", invalid="ignore"):
        neg = np.ldexp(neg, -k.astype(np.int64))  # the only rounding of a subnormal result
        out: F64 = np.where(x >= 0, pos, neg)
    return out


def _softplus64(x: F64) -> F64:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): both terms >= 0, so no cancellation."""
    hi, lo, k = _exp_neg_abs_split(x)
    with np.errstate(under="ignore", invalid="ignore"):
        t_hi = np.ldexp(hi, -k.astype(np.int64))
        t_lo = np.ldexp(lo, -k.astype(np.int64))
        # log1p(t_hi + t_lo) = log1p(t_hi) + t_lo / (1 + t_hi) to first order
        out: F64 = np.maximum(x, 0.0) + (np.log1p(t_hi) + t_lo / (1.0 + t_hi))
    return out


def _log_sigmoid64(x: F64) -> F64:
    # log sigmoid(x) = -log(1 + e^-x) = -softplus(-x)
    #   x >= 0:  -log1p(e^-x)            (tiny and exact: log1p keeps e^-x's digits)
    #   x <  0:  x - log1p(e^x)          (two terms of the same sign: no cancellation)
    return -_softplus64(-x)


def _sigmoid_prime64(x: F64) -> F64:
    """sigmoid'(x) = sigmoid(x) sigmoid(-x) = e^-|x| / (1 + e^-|x|)^2.

    Written with e^-|x| it is symmetric and stays non-zero (subnormal) up to |x| ~ 745,
    where sigmoid(x) (1 - sigmoid(x)) would round 1 - sigmoid(x) to 0 already at x ~ 37.
    (1 + t)^2 = (d_hi + d_lo)^2 is formed with d_hi^2 = p1 + p2 exactly (Veltkamp/Dekker
    split), so one rounded division remains: <= 1 ulp.
    """
    hi, lo, k = _exp_neg_abs_split(x)
    d_hi, d_lo = _one_plus(hi, lo, k)
    split = 134217729.0 * d_hi  # 2^27 + 1
    a_hi = split - (split - d_hi)
    a_lo = d_hi - a_hi
    p1 = d_hi * d_hi
    p2 = ((a_hi * a_hi - p1) + 2.0 * a_hi * a_lo) + a_lo * a_lo  # d_hi^2 - p1, exactly
    q = hi / p1
    # t / (1 + t)^2 = (hi / p1)(1 + lo / hi - p2 / p1 - 2 d_lo / d_hi) to first order
    v = q + q * ((_ratio(hi, lo) - p2 / p1) - 2.0 * (d_lo / d_hi))
    with np.errstate(under="ignore", invalid="ignore"):
        out: F64 = np.ldexp(v, -k.astype(np.int64))
    return out


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
    if _cpu.wants(x):  # large float arrays: the numba kernels (crossentropy._cpu)
        return _cpu.sigmoid(x, log=False, return_grad=return_grad, out=out)
    x64, dtype = as_float_array(x, "x")
    value = _cpu.deliver(cast_out(_sigmoid64(x64), dtype), out)
    if return_grad:
        return value, cast_out(_sigmoid_prime64(x64), dtype)
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
    if _cpu.wants(x):
        return _cpu.sigmoid(x, log=True, return_grad=return_grad, out=out)
    x64, dtype = as_float_array(x, "x")
    value = _cpu.deliver(cast_out(_log_sigmoid64(x64), dtype), out)
    if return_grad:
        return value, cast_out(_sigmoid64(-x64), dtype)
    return value


# --------------------------------------------------------------------------- softmax


@dataclass
class _Rows:
    """Everything a softmax-like function needs from rows laid along the last axis.

    For a row x with maximum m reached first at index k (all values finite):

    * ``dh + dl`` is x - m exactly (TwoSum): ``dh`` is the rounded difference, ``dl`` its
      rounding error, so exp(x - m) = exp(dh) (1 + dl) to within half an ulp.
    * ``e`` holds exp(x - m); ``e[k] == 1``.
    * ``s`` is the sum of the other terms, so that sum(e) = 1 + s and
      log-sum-exp = m + log1p(s).  Taking log1p of s, rather than log of the rounded 1 + s,
      is what keeps log_softmax exact near 0.
    """

    x: F64
    m: F64  # row maximum, keepdims
    k: npt.NDArray[np.intp]  # argmax, keepdims
    dh: F64
    dl: F64
    e: F64
    s: F64  # keepdims
    L: F64  # log1p(s), keepdims
    pos_inf: npt.NDArray[np.bool_]  # rows whose maximum is +inf, keepdims
    neg_inf: npt.NDArray[np.bool_]  # rows that are all -inf (or empty), keepdims


def _sum_last(e: F64) -> F64:
    """Sum over the last axis (keepdims), accurate to about one rounding whatever the layout.

    Pairwise summation in which every addition p + q = s + err is error-free (TwoSum,
    Knuth); the errors are summed on the side and added back once.  np.sum's own pairwise
    sum can be off by a few ulp for a 1000-term row, which showed up as up to 4.3 ulp in
    softmax (and the cross-entropy gradient) on N(0, 10) rows.
    """
    a = e
    comp = np.zeros((*e.shape[:-1], 1))
    while a.shape[-1] > 1:
        h = a.shape[-1] // 2
        p, q = a[..., :h], a[..., h : 2 * h]
        s = p + q
        bb = s - p
        comp += np.sum((p - (s - bb)) + (q - bb), axis=-1, keepdims=True)  # TwoSum errors
        a = np.concatenate([s, a[..., 2 * h :]], axis=-1) if a.shape[-1] % 2 else s
    # +-inf or NaN terms make the errors NaN: then the plain sum is the answer
    comp = np.where(np.isfinite(comp), comp, 0.0)
    out: F64 = a + comp
    return out


def _rows(x: F64) -> _Rows:
    """Decompose rows (last axis) as described in :class:`_Rows`. `x` has size > 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(x, axis=-1, keepdims=True)  # NaN if the row has a NaN
        k = np.argmax(x, axis=-1, keepdims=True)
        pos_inf = m == np.inf
        neg_inf = m == -np.inf
        ms = np.where(np.isfinite(m), m, 0.0)
        # TwoSum (Knuth): dh = fl(x - m) and dl = (x - m) - dh exactly.
        dh = x - ms
        bb = dh - x
        dl = (x - (dh - bb)) + (-ms - bb)
        dl = np.where(np.isfinite(dl), dl, 0.0)
        e = np.exp(dh)
        e += e * dl  # exp(dh + dl) = exp(dh) (1 + dl + O(dl^2))
        np.put_along_axis(e, k, 0.0, axis=-1)
        s = _sum_last(e)  # the terms other than the first maximum
        np.put_along_axis(e, k, 1.0, axis=-1)
        L = np.log1p(s)
    return _Rows(x, m, k, dh, dl, e, s, L, pos_inf, neg_inf)


def _probs(r: _Rows) -> F64:
    """softmax = e / (1 + s), with the rounding error of 1 + s put back.

    1 + s = S + S_lo exactly (TwoSum), and e / (S + S_lo) = q (1 - S_lo / S) with q = e / S;
    1 + s >= 1, so p never overflows.
    """
    S = 1.0 + r.s
    bb = S - 1.0
    S_lo = (1.0 - (S - bb)) + (r.s - bb)
    q = r.e / S
    out: F64 = q - q * (S_lo / S)
    return out


def _inf_share(x: F64) -> F64:
    """Rows whose maximum is +inf: the +inf entries share the probability mass equally."""
    hit = x == np.inf
    with np.errstate(invalid="ignore"):
        share: F64 = hit / np.sum(hit, axis=-1, keepdims=True)
    return share


def _small_rows(x: F64) -> list[list[float]] | None:
    """The rows of `x` as Python floats when the plain-Python path applies, else None."""
    if not 0 < x.size <= _small.SMALL or x.shape[-1] == 0:
        return None
    rows: list[list[float]] = x.reshape(-1, x.shape[-1]).tolist()
    return rows if _small.finite(rows) else None


def _softmax_last(x: F64) -> F64:
    if x.size == 0:
        return np.zeros_like(x)
    if (small := _small_rows(x)) is not None:  # a few finite numbers: no NumPy overhead
        return np.array(_small.softmax_rows(small)).reshape(x.shape)
    r = _rows(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        p: F64 = _probs(r)  # e^(x - m) / sum
        p = np.where(r.pos_inf, _inf_share(x), p)
        p = np.where(r.neg_inf, np.nan, p)  # exp(-inf)/0: no distribution
        p = np.where(np.isnan(r.m), np.nan, p)  # a NaN anywhere in the row (max is NaN)
    return p


def _log_softmax_last(x: F64) -> F64:
    if x.size == 0:
        return np.zeros_like(x)
    if (small := _small_rows(x)) is not None:
        return np.array(_small.log_softmax_rows(small)).reshape(x.shape)
    r = _rows(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        # log p_j = (x_j - m) - log1p(s) = (dh_j - L) + dl_j: two terms <= 0, and the
        # rounding error of x_j - m added back.  At the maximum this is exactly -log1p(s).
        lp: F64 = (r.dh - r.L) + r.dl
        lp = np.where(r.pos_inf, np.log(_inf_share(x)), lp)
        lp = np.where(r.neg_inf, np.nan, lp)
        lp = np.where(np.isnan(r.m), np.nan, lp)  # a NaN anywhere in the row (max is NaN)
    return lp


def _logsumexp_last(x: F64) -> F64:
    """log(sum(exp(x))) over the last axis (no keepdims). Empty rows give -inf."""
    if x.shape[-1] == 0:
        return np.full(x.shape[:-1], -np.inf)
    if x.size == 0:
        return np.zeros(x.shape[:-1])
    if (small := _small_rows(x)) is not None:
        return np.array(_small.logsumexp_rows(small)).reshape(x.shape[:-1])
    r = _rows(x)
    with np.errstate(invalid="ignore"):
        out = (r.m + r.L)[..., 0]  # -inf rows come out right: m = -inf, L finite
        # +inf rows: +inf.  (m + L alone gives NaN when two entries are +inf: the TwoSum of
        # inf - 0 is inf - inf, which poisons e and so s and L.)
        out = np.where(r.pos_inf[..., 0], np.inf, out)
    return out


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
    if _cpu.wants(x):  # large float arrays: the numba kernels (crossentropy._cpu)
        return _cpu.softmax(x, axis, log=False, out=out)
    x64, dtype = as_float_array(x, "x")
    xm, ax = _moved(x64, axis)
    p = _softmax_last(xm)
    p = _back(p, x64.shape, ax)
    return _cpu.deliver(cast_out(p, dtype), out)


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
    if _cpu.wants(x):
        return _cpu.softmax(x, axis, log=True, out=out)
    x64, dtype = as_float_array(x, "x")
    xm, ax = _moved(x64, axis)
    lp = _log_softmax_last(xm)
    lp = _back(lp, x64.shape, ax)
    return _cpu.deliver(cast_out(lp, dtype), out)


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
    if b is None and not return_sign and _cpu.wants(x):
        return _cpu.logsumexp(x, axis, keepdims)
    x64, dtype = as_float_array(x, "x")
    if b is None:
        xm, ax = _moved(x64, axis)
        out = _logsumexp_last(xm)
        sign = np.where(np.isnan(out), np.nan, 1.0)
    else:
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
        out, sign = _weighted_logsumexp_last(xm, bm)
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


def _weighted_logsumexp_last(x: F64, b: F64) -> tuple[F64, F64]:
    """log|sum(b e^x)| and its sign over the last axis, keeping cancelling digits."""
    shape = x.shape[:-1]
    if x.shape[-1] == 0:
        return np.full(shape, -np.inf), np.zeros(shape)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        xe = np.where(b == 0, -np.inf, x)  # b = 0 removes the term, whatever x is
        m = np.max(xe, axis=-1, keepdims=True)
        ms = np.where(np.isfinite(m), m, 0.0)
        dh = xe - ms
        bb = dh - xe
        dl = (xe - (dh - bb)) + (-ms - bb)  # TwoSum error of x - m, as in _rows
        dl = np.where(np.isfinite(dl), dl, 0.0)
        e = np.exp(dh)
        e += e * dl
        # Terms within a factor 2 of the largest: b e^d = b + b expm1(d).  The b's add up
        # exactly when they are small whole numbers (the usual +-1), and expm1 keeps the
        # digits of e^d - 1 that rounding 1 + tiny would lose.
        near = dh > -np.log(2.0)
        em1 = np.expm1(dh) + e * dl
        A = np.sum(np.where(near, b, 0.0), axis=-1, keepdims=True)
        bterm = np.where(b == 0, 0.0, b * np.where(near, em1, e))
        R = np.sum(bterm, axis=-1, keepdims=True)
        # log(A + R) = log|A| + log1p(R / A) while R / A > -1/2 (no cancellation), else log|A+R|.
        ratio = R / A
        gentle = (A != 0) & (ratio > -0.5)
        tot = A + R
        out = np.where(gentle, np.log(np.abs(A)) + np.log1p(ratio), np.log(np.abs(tot)))
        sign = np.sign(np.where(gentle, A, tot))
        out = out + ms
        # Rows with +inf terms: the sum is +-inf by the sign of the b's at +inf (NaN if 0).
        hit = xe == np.inf
        binf = np.sum(np.where(hit, b, 0.0), axis=-1, keepdims=True)
        pinf = m == np.inf
        out = np.where(pinf, np.where(binf != 0, np.inf, np.nan), out)
        sign = np.where(pinf, np.where(binf != 0, np.sign(binf), np.nan), sign)
        allneg = m == -np.inf
        out = np.where(allneg, -np.inf, out)
        sign = np.where(allneg, 0.0, sign)
        nan = np.isnan(m) | np.isnan(out)
        out = np.where(nan, np.nan, out)
        sign = np.where(nan, np.nan, sign)
    return out[..., 0], sign[..., 0]
