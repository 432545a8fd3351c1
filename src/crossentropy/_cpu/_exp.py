# mypy: ignore-errors
# (numba compiles and types this module; its decorators are untyped for mypy)
"""The vectorisable exp of the kernels (float64, and a shorter one for float32 work).

* Everything is computed in float64, float32 inputs included (their results are then
  rounded once), with a vectorisable exp: Cody-Waite reduction ``x = k ln2 + r`` with a
  two-part ln2, a degree-11 polynomial fitted for relative error (Horner form), and 2^k
  added to the exponent bits (one multiplication more near the subnormal range).
  Measured error < 1 ulp (float64).
  float32 rows use a shorter, fitted polynomial (relative error < 2e-9, 0.04 float32 ulp).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from ._jit import _STRICT, _cache
from ._llvm import _f64_as_i64, _i64_as_f64

# --------------------------------------------------------------------------- exp

_LOG2E = 1.4426950408889634
# ln 2 = _LN2HI + _LN2LO; _LN2HI has 21 trailing zero bits (0x3FE62E42FEE00000), so
# k * _LN2HI is exact for |k| < 2^21 (here |k| <= 1100).
_LN2HI = 6.93147180369123816490e-01
_LN2LO = 1.90821492927058770002e-10
_SHIFT = 6755399441055744.0  # 1.5 * 2**52: adding and subtracting it rounds to an integer
# The bits of _SHIFT as an int64 (0x4338000000000000).  For t = u + _SHIFT with |u| < 2^51, t's
# significand holds round(u) as an integer k, so bits(t) - _SHIFT_BITS = k exactly: the
# integer k without a float-to-int64 conversion, which AVX2 lacks (vcvttpd2qq is
# AVX-512DQ), so that LLVM splits every vector of a loop into four scalar conversions
# (float64 `ce` and `softmax` took 1.05-1.15x as long with them on an AMD Zen 3).
_SHIFT_BITS = int(np.float64(_SHIFT).view(np.int64))
_TWO_M1000 = 9.332636185032189e-302  # 2**-1000
# exp(r) on |r| <= ln2 / 2 as 1 + r + r^2 Q(r), Q of degree 9: Q's coefficients fitted for
# the least maximal *relative* error of exp (Lawson's iteration on 400 Chebyshev nodes,
# mpmath at 50 digits; each coefficient rounded to float64 in turn and the others refitted).
# With the rounded coefficients the error is 3.71e-18 (0.033 ulp; mpmath on 8001 points):
# as good as the Taylor series to r^13 (4e-18), two multiply-adds fewer per element.
_Q11 = (0.5000000000000011, 0.16666666666666452, 0.04166666666652821, 0.008333333333475915,
        0.0013888888943906271, 0.0001984126953802481, 2.4801492939961275e-05,
        2.755756339234989e-06, 2.7630278510738106e-07, 2.5006201691167824e-08)
(_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11) = _Q11


@nb.njit(fastmath=_STRICT, **_cache)
def _exp_dd(d: float, dl: float) -> float:
    """exp(d + dl) for d <= 709 and |dl| <= 2^-52 |d| (the rounding error of d), < 1 ulp;
    0 for d < -745.2 and d = -inf.  NaN gives 0: callers detect NaN rows separately."""
    d = d if d > -746.0 else -746.0
    # k = round(d / ln2): the shift makes the addition round to an integer (ties to even)
    t = d * _LOG2E + _SHIFT
    kf = t - _SHIFT
    # r = (d + dl) - k ln2 in [-0.35, 0.35], exact to ~2^-60 (Cody-Waite, two-part ln2);
    # dl joins r instead of a factor (1 + dl) after the exp: one addition for a
    # multiply-add (exp(r + dl) is then the one rounding of r + dl, < 2^-54 relative)
    r = ((d - kf * _LN2HI) - kf * _LN2LO) + dl
    p = _E11
    p = p * r + _E10
    p = p * r + _E9
    p = p * r + _E8
    p = p * r + _E7
    p = p * r + _E6
    p = p * r + _E5
    p = p * r + _E4
    p = p * r + _E3
    p = p * r + _E2
    p = p * r + 1.0
    p = p * r + 1.0
    # exp(d) = 2^k exp(r), 2^k added to p's exponent field (exact while the result is
    # normal: p in [0.7, 1.42]; bits(p) + (k << 52) for negative k too, two's complement).
    # Below k = -1000 the result may be subnormal: add k + 1000, then multiply by 2^-1000
    # (one rounding, at the end).
    k = _f64_as_i64(t) - _SHIFT_BITS  # = kf as an integer (see _SHIFT_BITS)
    small = k < -1000
    kb = k + 1000 if small else k
    s2 = _TWO_M1000 if small else 1.0
    return _i64_as_f64(_f64_as_i64(p) + (kb << 52)) * s2


@nb.njit(fastmath=_STRICT, **_cache)
def exp_le0(d: float) -> float:
    """exp(d) for d <= 0 (also fine up to d = 709), < 1 ulp; 0 for d < -745.2 and d = -inf.

    NaN gives 0: callers detect NaN rows separately.
    """
    return _exp_dd(d, 0.0)


_LN2 = 0.6931471805599453
# exp(r) on |r| <= ln2 / 2 by a degree-6 polynomial fitted for the least maximal *relative*
# error (Lawson's iteration on 4000 Chebyshev nodes over [-0.34661, 0.34661], checked
# against mpmath on 1000 points: max relative error 1.86e-9).  (The Taylor series needs
# degree 8 for the same interval: two multiply-adds more per element.)
_P6 = (1.00000000055461, 1.0000000363447343, 0.49999992075048466, 0.16666420072057997,
       0.04166822619838978, 0.008374824054652777, 0.001383683523564778)
(_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6) = _P6


@nb.njit(fastmath=_STRICT, **_cache)
def exp_le0_f32(d: float) -> float:
    """exp(d) in float64 for float32 work (d <= 0): relative error < 2e-9 (0.04 float32 ulp).

    Results below exp(-700) ~ 1e-304 are far under float32's smallest subnormal (1.4e-45),
    so d is clamped there and 2^k is always a normal number (one multiplication).  The
    reduction r = d - k ln2 with a one-part ln2 errs by |k| 2^-53 <= 1e-13; the fitted
    polynomial ``_P6`` errs by at most 1.86e-9 relative on |r| <= ln2 / 2.  Rounding the
    float64 result to float32 then stays within 0.5 + 0.04 ulp.
    """
    d = d if d > -700.0 else -700.0
    t = d * _LOG2E + _SHIFT  # the shift rounds to an integer k = t - _SHIFT (ties to even)
    kf = t - _SHIFT
    r = d - kf * _LN2
    p = _Q6
    p = p * r + _Q5
    p = p * r + _Q4
    p = p * r + _Q3
    p = p * r + _Q2
    p = p * r + _Q1
    p = p * r + _Q0
    # p 2^k by adding k to p's exponent field: exact, as the product is, while the result
    # is normal (p in [0.7, 1.42], k >= -1010).  The low bits of t hold k: bits(t) =
    # bits(_SHIFT) + k, and bits(_SHIFT) ends in 51 zero bits, so its low 12 bits, the
    # only ones the shift keeps, are 0: bits(t) << 52 = k << 52 (mod 2^64, negative k
    # included, |k| < 2^11).  Two integer operations instead of a conversion,
    # an addition, a shift and a multiplication.
    return _i64_as_f64(_f64_as_i64(p) + (_f64_as_i64(t) << 52))


@nb.njit(fastmath=_STRICT, **_cache)
def two_diff(x: float, m: float) -> tuple[float, float]:
    """(dh, dl) with dh = fl(x - m) and dh + dl = x - m exactly (TwoSum); dl = 0 if not finite."""
    dh = x - m
    bb = dh - x
    dl = (x - (dh - bb)) + (-m - bb)
    if not (dl == dl and abs(dl) < 1.0):
        dl = 0.0
    return dh, dl


@nb.njit(fastmath=_STRICT, **_cache)
def exp_shift(x: float, m: float) -> float:
    """exp(x - m) for x <= m (float64), with the rounding error of x - m put back.

    dh = fl(x - m), dl = (x - m) - dh exactly (Knuth's TwoSum, ``two_diff``); exp(dh + dl)
    with dl added to the reduced argument (see ``_exp_dd``).
    """
    dh, dl = two_diff(x, m)
    return _exp_dd(dh, dl)


@nb.njit(fastmath=_STRICT, **_cache)
def exp_shift32(x: float, m: float) -> float:
    """exp(x - m) for float32 x and m: x - m is exact in float64 (both have 24-bit
    significands; when it is not, exp(x - m) underflows float32 anyway)."""
    return exp_le0_f32(x - m)
