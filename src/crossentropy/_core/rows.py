"""Rows of scores, class axis last, in float64: the decomposition behind every softmax-like result.

For a row x with maximum m reached first at index k, every function here uses

    x - m = dh + dl exactly (TwoSum),   e_c = e^{x_c - m},   s = sum_{c != k} e_c,
    log-sum-exp = m + log1p(s),   softmax_c = e_c / (1 + s),   log softmax_c = (dh_c - L) + dl_c

with L = log1p(s).  Taking log1p of the sum of the *other* terms, rather than the log of the
rounded 1 + s, keeps log-softmax and the cross-entropy of confident rows exact (Blanchard,
Higham & Higham, "Accurately computing the log-sum-exp and softmax functions", IMA J. Numer.
Anal. 41 (2021)).  The same decomposition, merged slice by slice, is the row-statistics rule
of the vocabulary-sliced and vocabulary-parallel losses (``crossentropy.torch._rowstats``) and of
the Triton kernels.

Inputs are float64 arrays with at least one row and one class (callers handle empty arrays).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from crossentropy._core.scratch import Scratch, take

__all__ = [
    "Rows",
    "decompose",
    "inf_share",
    "log_softmax",
    "logsumexp",
    "probs",
    "softmax",
    "sum_last",
    "weighted_logsumexp",
]

F64 = npt.NDArray[np.float64]


@dataclass
class Rows:
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
    dl: F64 | float  # the scalar 0.0 when not exact
    e: F64
    s: F64  # keepdims
    L: F64  # log1p(s), keepdims
    pos_inf: npt.NDArray[np.bool_]  # rows whose maximum is +inf, keepdims
    neg_inf: npt.NDArray[np.bool_]  # rows that are all -inf (or empty), keepdims
    exact: bool  # False: no TwoSum / compensated sums (float32 and float16 inputs)


def sum_last(e: F64, scratch: Scratch | None = None) -> F64:
    """Sum over the last axis (keepdims) of nonnegative terms, to within about one rounding.

    One error-free extraction (Rump, Ogita & Oishi, "Accurate floating-point summation
    part I", SIAM J. Sci. Comput. 31 (2008), ExtractVector): with M the row's largest term
    and sigma = 2^ceil(log2(2 n M)) a power of two above n M,

        q_c = (sigma + e_c) - sigma,   r_c = e_c - q_c        (both exact),

    every q_c is a multiple of eps sigma / 2 no larger than M, so sum(q) is exact in any
    order (no partial sum exceeds sigma / 2); each |r_c| <= eps sigma / 2, so the plain sum
    of the r's is off by at most about log2(n) n eps^2 M, some 10^-5 ulp of the result for
    n = 10^6.  The row sum is sum(q) + sum(r), rounded once: 6 passes over the row and no
    loop in Python.  (np.sum alone can be 6 ulp off: a 1 then 4098 terms of 0.75 * 2^-53,
    each dropped by the accumulator that holds the 1; see tests/test_core_sum.py.)
    Rows with +-inf or NaN terms get the plain sum.
    """
    n = e.shape[-1]
    M = np.max(e, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        # sigma = 2^(E + ceil(log2 n) + 1) with M < 2^E; M = 0 gives q = r = 0.
        _, E = np.frexp(np.where(np.isfinite(M), M, 0.0))
        sigma = np.ldexp(1.0, E + (max(n - 1, 1)).bit_length() + 1)
        q = np.add(e, sigma, out=take(scratch, "sum", e.shape))
        q -= sigma
        tau = np.sum(q, axis=-1, keepdims=True)  # exact
        np.subtract(e, q, out=q)  # the remainders r
        out: F64 = tau + np.sum(q, axis=-1, keepdims=True)
        bad = ~np.isfinite(out)
        if bad.any():  # +-inf or NaN terms: the plain sum is the answer
            out = np.where(bad, np.sum(e, axis=-1, keepdims=True), out)
    return out


def decompose(x: F64, exact: bool = True, scratch: Scratch | None = None) -> Rows:
    """Decompose rows (last axis) as described in :class:`Rows`. `x` has size > 0.

    ``exact=False`` is for inputs that were float32 or float16 (computed in float64, then
    rounded once to their own dtype): the TwoSum correction of x - m and the compensated
    row sum are skipped (``dl`` is then the scalar 0).  What they remove is an error of a
    few float64 ulp, 2^-29 of a float32 ulp, so the rounded result does not change except
    in the rarest ties.

    The exact path works in place (``out=``) on four arrays, taken from `scratch` when
    given (see :mod:`.scratch`): the fields of the result are then valid until the next
    call with the same scratch.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        m = np.max(x, axis=-1, keepdims=True)  # NaN if the row has a NaN
        k = np.argmax(x, axis=-1, keepdims=True)
        pos_inf = m == np.inf
        neg_inf = m == -np.inf
        ms = np.where(np.isfinite(m), m, 0.0)
        dh = np.subtract(x, ms, out=take(scratch, "dh", x.shape))
        if not exact:
            e = np.exp(dh, out=take(scratch, "e", x.shape))
            np.put_along_axis(e, k, 0.0, axis=-1)
            s = np.sum(e, axis=-1, keepdims=True)  # the terms other than the first maximum
            np.put_along_axis(e, k, 1.0, axis=-1)
            return Rows(x, m, k, dh, 0.0, e, s, np.log1p(s), pos_inf, neg_inf, False)
        # TwoSum (Knuth): dh = fl(x - m) and dl = (x - m) - dh = (x - (dh - bb)) + (-m - bb)
        # exactly, with bb = dh - x; -m - bb is computed as -(m + bb), the same rounding.
        bb = np.subtract(dh, x, out=take(scratch, "e", x.shape))
        dl = np.subtract(dh, bb, out=take(scratch, "dl", x.shape))
        np.subtract(x, dl, out=dl)
        bb += ms
        dl -= bb
        np.copyto(dl, 0.0, where=~np.isfinite(dl))
        e = np.exp(dh, out=bb)
        # exp(dh + dl) = exp(dh) (1 + dl + O(dl^2)): e += e dl, in place with one scratch
        e += np.multiply(e, dl, out=take(scratch, "sum", x.shape))
        np.put_along_axis(e, k, 0.0, axis=-1)
        s = sum_last(e, scratch)  # the terms other than the first maximum
        np.put_along_axis(e, k, 1.0, axis=-1)
        L = np.log1p(s)
    return Rows(x, m, k, dh, dl, e, s, L, pos_inf, neg_inf, True)


def probs(r: Rows, scratch: Scratch | None = None) -> F64:
    """softmax = e / (1 + s), with the rounding error of 1 + s put back.

    1 + s = S + S_lo exactly (TwoSum), and e / (S + S_lo) = q (1 - S_lo / S) with q = e / S;
    1 + s >= 1, so p never overflows.
    """
    S = 1.0 + r.s
    if not r.exact:
        out0: F64 = r.e / S
        return out0
    bb = S - 1.0
    S_lo = (1.0 - (S - bb)) + (r.s - bb)
    q = np.divide(r.e, S, out=take(scratch, "p", r.e.shape))
    q -= np.multiply(q, S_lo / S, out=take(scratch, "sum", r.e.shape))
    return q


def inf_share(x: F64) -> F64:
    """Rows whose maximum is +inf: the +inf entries share the probability mass equally."""
    hit = x == np.inf
    with np.errstate(invalid="ignore"):
        share: F64 = hit / np.sum(hit, axis=-1, keepdims=True)
    return share


def softmax(x: F64, exact: bool = True, scratch: Scratch | None = None) -> F64:
    """softmax over the last axis: e_c / (1 + s), special rows as documented.

    A row with +inf entries gives them equal shares; an all -inf row, or one with a NaN,
    gives NaN.
    """
    if x.size == 0:
        return np.zeros_like(x)
    r = decompose(x, exact, scratch)
    with np.errstate(invalid="ignore", divide="ignore"):
        p: F64 = probs(r, scratch)  # e^(x - m) / sum
        if r.pos_inf.any():
            p = np.where(r.pos_inf, inf_share(x), p)
        # exp(-inf)/0: no distribution; a NaN anywhere in the row (its max is NaN)
        bad = r.neg_inf | np.isnan(r.m)
        if bad.any():
            p = np.where(bad, np.nan, p)
    return p


def log_softmax(x: F64, exact: bool = True, scratch: Scratch | None = None) -> F64:
    """log softmax over the last axis: (dh_c - L) + dl_c, exact near 0."""
    if x.size == 0:
        return np.zeros_like(x)
    r = decompose(x, exact, scratch)
    with np.errstate(invalid="ignore", divide="ignore"):
        # log p_j = (x_j - m) - log1p(s) = (dh_j - L) + dl_j: two terms <= 0, and the
        # rounding error of x_j - m added back.  At the maximum this is exactly -log1p(s).
        lp: F64 = np.subtract(r.dh, r.L, out=take(scratch, "p", x.shape))
        if r.exact:
            lp += r.dl
        if r.pos_inf.any():
            lp = np.where(r.pos_inf, np.log(inf_share(x)), lp)
        bad = r.neg_inf | np.isnan(r.m)  # no distribution, or a NaN anywhere in the row
        if bad.any():
            lp = np.where(bad, np.nan, lp)
    return lp


def logsumexp(x: F64, exact: bool = True, scratch: Scratch | None = None) -> F64:
    """log(sum(exp(x))) over the last axis (no keepdims). Empty rows give -inf."""
    if x.shape[-1] == 0:
        return np.full(x.shape[:-1], -np.inf)
    if x.size == 0:
        return np.zeros(x.shape[:-1])
    r = decompose(x, exact, scratch)
    with np.errstate(invalid="ignore"):
        out = (r.m + r.L)[..., 0]  # -inf rows come out right: m = -inf, L finite
        # +inf rows: +inf.  (m + L alone gives NaN when two entries are +inf: the TwoSum of
        # inf - 0 is inf - inf, which poisons e and so s and L.)
        out = np.where(r.pos_inf[..., 0], np.inf, out)
    return out


def weighted_logsumexp(x: F64, b: F64) -> tuple[F64, F64]:
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
        dl = (xe - (dh - bb)) + (-ms - bb)  # TwoSum error of x - m, as in decompose
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
