# mypy: ignore-errors
# (numba compiles and types this module; its decorators are untyped for mypy)
"""The elementwise kernels: sigmoid, log-sigmoid (and derivatives), BCE with logits.

Compiled with NumPy's error model (``_NPERR``).  The entry points ``sigmoid_flat`` and
``bce_logits_flat`` are in ``_kernels``.
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np

from ._exp import _LN2HI, _LN2LO, _LOG2E, _SHIFT, _SHIFT_BITS, _TWO_M1000
from ._jit import _FAST, _NPERR, _STRICT, _cache
from ._llvm import _f64_as_i64, _i64_as_f64, _inline, _wide

# --------------------------------------------------------------------------- elementwise

_BLOCK = 4096  # fixed block size of the elementwise kernels: sums never depend on threads


# exp(-|x|) as (hi + lo) 2^-k, carried beyond double precision (the sigmoid family's
# bound is 2 ulp, which one rounded exp (up to 1 ulp here) and a division would exceed).
_E1 = tuple(1.0 / math.factorial(i) for i in range(15))


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _expm1_small(u: float) -> float:
    """expm1(u) for |u| <= 0.35: u + u^2 (1/2 + u/6 + ... + u^12/14!), error < 1 ulp."""
    _inline()  # into the vectorised loops (see _inline)
    q = _E1[14]
    q = q * u + _E1[13]
    q = q * u + _E1[12]
    q = q * u + _E1[11]
    q = q * u + _E1[10]
    q = q * u + _E1[9]
    q = q * u + _E1[8]
    q = q * u + _E1[7]
    q = q * u + _E1[6]
    q = q * u + _E1[5]
    q = q * u + _E1[4]
    q = q * u + _E1[3]
    q = q * u + _E1[2]
    return u + (u * u) * q


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _exp_neg_abs_split(v: float) -> tuple[float, float, int]:
    """e^-|v| = (hi + lo) 2^-k with hi in [0.7, 1.42] and lo its correction.

    Cody-Waite: |v| = k ln2 + r + r_lo with a two-part ln2 (k ln2hi exact; Fast2Sum for
    r_lo), then e^-r = 1 + expm1(-r) with hi = 1 + g and lo the rounding error of that sum
    minus r_lo hi (e^-(r + r_lo) = e^-r (1 - r_lo)).  |v| > 1100 (and inf) give hi = 0.
    """
    _inline()  # into the vectorised loops (see _inline)
    a = abs(v)
    if not a <= 1100.0:  # e^-|v| is 0 in every dtype; NaN is handled by the callers
        return 0.0, 0.0, 0
    t = a * _LOG2E + _SHIFT
    kf = t - _SHIFT
    r_hi = a - kf * _LN2HI
    kl = kf * _LN2LO
    r = r_hi - kl
    r_lo = (r_hi - r) - kl
    g = _expm1_small(-r)
    hi = 1.0 + g
    lo = ((1.0 - hi) + g) - r_lo * hi
    return hi, lo, _f64_as_i64(t) - _SHIFT_BITS  # = kf as an integer (see _SHIFT_BITS)


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _times_pow2_neg(x: float, k: int) -> float:
    """x 2^-k for 0 <= k <= 1600, rounding once (two steps where 2^-k is subnormal)."""
    _inline()  # into the vectorised loops (see _inline)
    if k > 1000:
        return (x * _i64_as_f64((1023 - (k - 1000)) << 52)) * _TWO_M1000
    return x * _i64_as_f64((1023 - k) << 52)


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _one_plus_t(hi: float, lo: float, k: int) -> tuple[float, float, float, float]:
    """(t_hi, t_lo, d_hi, d_lo): t = t_hi + t_lo = (hi + lo) 2^-k = e^-|x| (from
    ``_exp_neg_abs_split``) and 1 + t = d_hi + d_lo exactly (Fast2Sum, t <= 1); the piece
    the sigmoid, its derivative and the softplus share."""
    _inline()  # into the vectorised loops (see _inline)
    t_hi = _times_pow2_neg(hi, k)
    t_lo = _times_pow2_neg(lo, k)
    d_hi = 1.0 + t_hi
    d_lo = ((1.0 - d_hi) + t_hi) + t_lo
    return t_hi, t_lo, d_hi, d_lo


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _sigmoid_parts(hi: float, lo: float, k: int) -> tuple[float, float, float, float]:
    """(1 / (1 + t), t / (1 + t), t_hi, t_lo) for t = t_hi + t_lo = (hi + lo) 2^-k = e^-|x|
    (``_exp_neg_abs_split``): sigma(|x|), sigma(-|x|) and t, shared by the sigmoid and
    the binary cross-entropy, which needs all of them.

    With 1 + t = d_hi + d_lo (``_one_plus_t``), a / (d_hi + d_lo) = (a / d_hi)(1 - d_lo /
    d_hi): one rounded division, so <= 1 ulp.  The subnormal t / (1 + t) is rounded once,
    by 2^-k.
    """
    _inline()  # into the vectorised loops (see _inline)
    t_hi, t_lo, d_hi, d_lo = _one_plus_t(hi, lo, k)
    c = d_lo / d_hi
    q = 1.0 / d_hi
    qt = hi / d_hi
    small = _times_pow2_neg(qt + qt * (lo / hi - c), k) if hi != 0.0 else 0.0
    return q - q * c, small, t_hi, t_lo


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _sigmoid1(v: float) -> float:
    # x >= 0: 1 / (1 + t);  x < 0: t / (1 + t), t = e^-|x| (see _sigmoid_parts)
    _inline()  # into the vectorised loops (see _inline)
    if v != v:
        return v
    big, small, _, _ = _sigmoid_parts(*_exp_neg_abs_split(v))
    return big if v >= 0.0 else small


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _sigmoid_prime1(v: float) -> float:
    # sigma'(x) = t / (1 + t)^2, t = e^-|x|; (1 + t)^2 = (d_hi + d_lo)^2 with d_hi^2 = p1 + p2
    # exactly (Veltkamp/Dekker split), so one rounded division remains
    _inline()  # into the vectorised loops (see _inline)
    if v != v:
        return v
    hi, lo, k = _exp_neg_abs_split(v)
    _, _, d_hi, d_lo = _one_plus_t(hi, lo, k)
    split = 134217729.0 * d_hi  # 2^27 + 1
    a_hi = split - (split - d_hi)
    a_lo = d_hi - a_hi
    p1 = d_hi * d_hi
    p2 = ((a_hi * a_hi - p1) + 2.0 * a_hi * a_lo) + a_lo * a_lo
    # (hi + lo) / ((d_hi + d_lo)^2) = q (1 + lo / hi - p2 / p1 - 2 d_lo / d_hi) to first
    # order, q = hi / p1 the one rounded division.  The correction is ~2^-52 of q, so it
    # needs only a few correct bits: q lo / hi = lo / p1, q / d_hi = q d_hi / p1, and 1 / p1
    # is one more (independent) division, instead of three.  With no division by hi, the
    # |x| > 1100 case (hi = lo = 0, k = 0: q = w = 0) needs no early return: a branch that
    # returns early kept the loop from vectorising on AVX2 (scalar, 3x slower on a Zen 3).
    q = hi / p1
    ip = 1.0 / p1
    w = q + ip * ((lo - q * p2) - 2.0 * (q * d_lo) * d_hi)
    return _times_pow2_neg(w, k)


# log(1 + f) = 2 atanh(s) with s = f / (2 + f): 2s + s R(s^2), R(z) = sum_j 2 z^j / (2j + 1)
# (the atanh series).  With f in [sqrt(1/2) - 1, sqrt(2) - 1], |s| <= 0.1716 and z <= 0.02944,
# so the series cut after z^9 errs by < z^10 / 21 < 2.3e-17 relative: 0.2 ulp.
_SQRT2 = 1.4142135623730951
_ATANH_R = tuple(2.0 / (2 * j + 1) for j in range(1, 10))
(_R1, _R2, _R3, _R4, _R5, _R6, _R7, _R8, _R9) = _ATANH_R


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _log1p01(t: float, tl: float) -> float:
    """log1p(t + tl) for 0 <= t <= 1 and |tl| <= 2^-52 t: < 1 ulp (0.92 ulp measured against
    mpmath on 400,000 points), branch-free, so that the loops which inline it vectorise
    (libm's log1p is a scalar call: 10 ns an element on a Zen 3, against 1.7 for this).

    1 + t + tl = u + c with u = fl(1 + t) and c = (t - (u - 1)) + tl (Fast2Sum, t <= 1), so
    log1p(t + tl) = log(u) + c / u to first order.  u in [1, 2] is reduced to 2^e (1 + f)
    with f = u - 1 or u / 2 - 1 (both exact: Sterbenz) and |log(1 + f)| <= ln(2) / 2; then
    log(1 + f) = f - f^2/2 + s (f^2/2 + R), since f - s f = 2s (s = f / (2 + f)): the large
    terms f and f^2/2 come first and the rounding errors fall on the small ones.
    """
    _inline()  # into the vectorised loops (see _inline)
    u = 1.0 + t
    c = (t - (u - 1.0)) + tl
    big = u > _SQRT2
    f = (0.5 * u - 1.0) if big else (u - 1.0)
    e = 1.0 if big else 0.0
    s = f / (2.0 + f)
    z = s * s
    r = _R9
    r = r * z + _R8
    r = r * z + _R7
    r = r * z + _R6
    r = r * z + _R5
    r = r * z + _R4
    r = r * z + _R3
    r = r * z + _R2
    r = r * z + _R1
    r = r * z
    hfsq = 0.5 * f * f
    # e ln2 = e _LN2HI + e _LN2LO, the first exact (e is 0 or 1)
    lo = s * (hfsq + r) + (e * _LN2LO + c / u)
    return e * _LN2HI + (f - (hfsq - lo))


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _softplus1(v: float) -> float:
    # log(1 + e^x) = max(x, 0) + log1p(t), t = t_hi + t_lo = e^-|x| (both terms >= 0)
    _inline()  # into the vectorised loops (see _inline)
    if v != v:
        return v
    t_hi, t_lo, _, _ = _one_plus_t(*_exp_neg_abs_split(v))
    return max(v, 0.0) + _log1p01(t_hi, t_lo)


@nb.njit(**_NPERR, fastmath=_STRICT, nogil=True, **_cache)
def _sigmoid_block(x: Any, out: Any, dout: Any, want_d: bool, log: bool) -> None:
    # (strict, not fastmath: these loops sum nothing, and a fast negation's nnan flag
    # would let LLVM fold the inlined NaN tests away)
    _wide()  # 512-bit vectors (see _wide)
    n = x.shape[0]
    if log:
        for i in range(n):
            out[i] = -_softplus1(-np.float64(x[i]))  # log sigma(x) = -softplus(-x)
        if want_d:
            for i in range(n):
                dout[i] = _sigmoid1(-np.float64(x[i]))  # d log sigma(x)/dx = sigma(-x)
    else:
        for i in range(n):
            out[i] = _sigmoid1(np.float64(x[i]))
        if want_d:
            for i in range(n):
                dout[i] = _sigmoid_prime1(np.float64(x[i]))


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _bce1(v: float, y: float, pw: float) -> tuple[float, float]:
    """(loss, dloss/dx) of BCE with logits: p y softplus(-x) + (1 - y) softplus(x).

    A coefficient 0 gives a 0 term (0 * inf = 0).  d softplus(x)/dx = sigma(x).  Both
    softplus(+-x) = max(+-x, 0) + log1p(t) and both sigma(+-x) come from one t = e^-|x|
    (the same arithmetic as ``_softplus1`` and ``_sigmoid1``, so the same bits, for a
    quarter of the exponentials and half the divisions).
    """
    _inline()  # into the vectorised loops (see _inline)
    py = pw * y
    ny = 1.0 - y
    hi, lo, k = _exp_neg_abs_split(v)
    big, small, t_hi, t_lo = _sigmoid_parts(hi, lo, k)
    lp = _log1p01(t_hi, t_lo)
    nan = v != v
    sp_pos = v if nan else max(v, 0.0) + lp  # softplus(x)
    sp_neg = v if nan else max(-v, 0.0) + lp  # softplus(-x)
    s_pos = v if nan else (big if v >= 0.0 else small)  # sigma(x)
    s_neg = v if nan else (big if -v >= 0.0 else small)  # sigma(-x)
    a = py * sp_neg if py != 0.0 else 0.0
    b = ny * sp_pos if ny != 0.0 else 0.0
    ga = py * s_neg if py != 0.0 else 0.0
    gb = ny * s_pos if ny != 0.0 else 0.0
    return a + b, gb - ga


@nb.njit(**_NPERR, nogil=True, **_cache)
def _bce_blocks(x: Any, y: Any, pos_weight: float, eps: float, store_loss: bool, loss: Any,
                want_grad: bool, grad: Any, grad_scale: float, partial: Any, b0: int,
                b1: int) -> None:
    """bce_logits_flat on blocks b0..b1-1 (one thread)."""
    _wide()  # 512-bit vectors (see _wide)
    n = x.shape[0]
    for b in range(b0, b1):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        partial[b] = _bce_block(x[lo:hi], y[lo:hi], pos_weight, eps, store_loss,
                                loss[lo:hi] if store_loss else loss, want_grad,
                                grad[lo:hi] if want_grad else grad, grad_scale)


@nb.njit(**_NPERR, **_cache)
def _bce_block(x: Any, y: Any, pos_weight: float, eps: float, store_loss: bool, loss: Any,
               want_grad: bool, grad: Any, grad_scale: float) -> float:
    """The losses of one block into a float64 scratch (and loss / grad if asked), then
    their sum.  The per-element loop has no reduction, so it vectorises; a sum in it,
    strict, kept it scalar (35 ns an element on a Zen 3).  The sum is ``_fast_sum``'s,
    fixed by the block, not by the threads."""
    _wide()  # 512-bit vectors (see _wide)
    n = x.shape[0]
    li = np.empty(n)
    for i in range(n):
        yi = np.float64(y[i])
        if eps != 0.0:
            yi = (1.0 - eps) * yi + 0.5 * eps  # y' = (1 - eps) y + eps / 2
        li[i], gi = _bce1(np.float64(x[i]), yi, pos_weight)
        if store_loss:
            loss[i] = li[i]
        if want_grad:
            grad[i] = gi * grad_scale
    return _fast_sum(li)


@nb.njit(fastmath=_FAST, **_cache)
def _fast_sum(a: Any) -> float:
    """sum(a), vectorised (reassociated): for a block's <= 4096 terms it errs by at most
    ~4096 * 2^-53 = 2^-40 of sum |a_i|, the bound of the sequential sum it replaced."""
    _wide()  # 512-bit vectors (see _wide)
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i]
    return s
