"""The sigmoid family in float64: sigmoid, its derivative, softplus and log-sigmoid.

Every function takes a float64 array and returns float64, accurate to about one ulp over the
whole range, subnormal results included (the 2^-k factor is applied last, so a subnormal
result is rounded once).  The building block is e^-|x| carried as a double-double
``(hi + lo) 2^-k`` (Cody-Waite reduction and ``expm1``), which removes the 0.7 ulp error of
``np.exp`` that would otherwise pass into every result.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["log_sigmoid", "logit", "sigmoid", "sigmoid_prime", "softplus"]

F64 = npt.NDArray[np.float64]

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


def sigmoid(x: F64) -> F64:
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


def softplus(x: F64) -> F64:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): both terms >= 0, so no cancellation."""
    hi, lo, k = _exp_neg_abs_split(x)
    with np.errstate(under="ignore", invalid="ignore"):
        t_hi = np.ldexp(hi, -k.astype(np.int64))
        t_lo = np.ldexp(lo, -k.astype(np.int64))
        # log1p(t_hi + t_lo) = log1p(t_hi) + t_lo / (1 + t_hi) to first order
        out: F64 = np.maximum(x, 0.0) + (np.log1p(t_hi) + t_lo / (1.0 + t_hi))
    return out


def log_sigmoid(x: F64) -> F64:
    # log sigmoid(x) = -log(1 + e^-x) = -softplus(-x)
    #   x >= 0:  -log1p(e^-x)            (tiny and exact: log1p keeps e^-x's digits)
    #   x <  0:  x - log1p(e^x)          (two terms of the same sign: no cancellation)
    return -softplus(-x)


def sigmoid_prime(x: F64) -> F64:
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


def logit(p: F64) -> F64:
    """log(p / (1 - p)), the inverse of the sigmoid, for p in [0, 1].

    Near p = 1/2 the quotient is formed as ``log1p((2p - 1) / (1 - p))``: ``2p - 1`` and
    ``1 - p`` are exact there (Sterbenz), so the small result keeps its digits.  Elsewhere
    ``log(p) - log1p(-p)``: the two terms have opposite signs, so they add without
    cancellation (``log1p(-p)`` keeps the digits of small p).  logit(0) = -inf,
    logit(1) = +inf.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        near = (p > 0.25) & (p < 0.75)
        mid = np.log1p((2.0 * p - 1.0) / (1.0 - p))
        far = np.log(p) - np.log1p(-p)
        out: F64 = np.where(near, mid, far)
    return out
