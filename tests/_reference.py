"""High-precision references and the ulp error measure, for tests/ and bench/accuracy.py.

A reference value is held as ``(hi + lo) * 2**e`` with ``hi`` in [0.5, 1) a float64, ``lo``
its float64 remainder and ``e`` an integer: 106 significant bits and an unbounded
exponent, so values far below the float64 subnormals (sigmoid(-800) = 3.7e-348) keep
their digits.  Two independent sources fill it:

* mpmath at 50 significant digits (:func:`ref_from_mp`, the ``mp_*`` functions), the
  ground truth, slow (a few microseconds per element even with gmpy2);
* NumPy ``longdouble`` (80-bit extended on x86-64, 64-bit mantissa; :func:`ref_from_ld`,
  the ``ld_*`` functions), fast enough for 1000 x 1000 arrays, and validated against
  mpmath on a subset by the tests.

:func:`ulp_error` measures a computed array against a reference in units of the spacing
of the correctly rounded reference in the target dtype (``np.spacing``; in the subnormal
range that is the subnormal spacing).  Exact zeros, infinities and NaNs in the reference
are compared by equality (error 0 or inf).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mpmath
import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
DPS = 50  # decimal digits of every mpmath reference

__all__ = [
    "DPS",
    "EDGE_ROWS",
    "LONGDOUBLE_IS_EXTENDED",
    "Ref",
    "dense_sigmoid_points",
    "dense_sigmoid_reference",
    "ld_binary",
    "ld_rows",
    "mp_binary",
    "mp_rows",
    "random_rows",
    "ref_distance",
    "ref_from_ld",
    "ref_from_mp",
    "rows_reference",
    "sigmoid_points",
    "sigmoid_reference",
    "ulp_error",
]

#: True when np.longdouble carries at least 64 mantissa bits (x86-64 Linux: 80-bit).
LONGDOUBLE_IS_EXTENDED = np.finfo(np.longdouble).nmant >= 63


@dataclass
class Ref:
    """Reference values ``(hi + lo) * 2**e``; ``hi`` holds 0, +-inf or NaN for exact specials."""

    hi: F64
    lo: F64
    e: npt.NDArray[np.int64]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.hi.shape

    def __getitem__(self, idx: Any) -> Ref:
        return Ref(self.hi[idx], self.lo[idx], self.e[idx])

    def rounded(self, dtype: Any) -> npt.NDArray[Any]:
        """The reference rounded to `dtype` (via float64; the double rounding this can
        cause only at exact float64 ties does not change the spacing)."""
        with np.errstate(over="ignore", under="ignore"):
            v = np.ldexp(self.hi, self.e) + np.ldexp(self.lo, self.e)
            return v.astype(dtype)


def ref_from_mp(values: Sequence[Any], shape: tuple[int, ...] | None = None) -> Ref:
    """Pack mpmath numbers (or anything mpmath.mpf accepts) into a :class:`Ref`."""
    n = len(values)
    hi = np.empty(n)
    lo = np.empty(n)
    e = np.zeros(n, dtype=np.int64)
    with mpmath.workdps(DPS):
        for i, v in enumerate(values):
            v = mpmath.mpf(v)
            if v == 0 or not mpmath.isfinite(v):
                hi[i] = float(v)
                lo[i] = 0.0
                continue
            man, ex = mpmath.frexp(v)  # v = man 2^ex, 0.5 <= |man| < 1
            h = float(man)
            hi[i] = h
            lo[i] = float(man - h)
            # Beyond 2^+-1200 every dtype rounds to 0 or overflows; clamping keeps the
            # exponent an int64 (e^-2e300) without changing either outcome.
            e[i] = min(max(int(ex), -1200), 1200)
    out = Ref(hi, lo, e)
    if shape is not None:
        out = Ref(hi.reshape(shape), lo.reshape(shape), e.reshape(shape))
    return out


def ref_from_ld(values: npt.NDArray[np.longdouble]) -> Ref:
    """Pack a longdouble array into a :class:`Ref` (zeros, infs and NaNs pass through)."""
    v = np.asarray(values, dtype=np.longdouble)
    special = (v == 0) | ~np.isfinite(v)
    man, ex = np.frexp(np.where(special, 1, v))
    hi = man.astype(np.float64)
    lo = (man - hi).astype(np.float64)
    hi = np.where(special, v.astype(np.float64), hi)
    lo = np.where(special, 0.0, lo)
    return Ref(hi, lo, np.where(special, 0, ex).astype(np.int64))


def ulp_error(computed: Any, ref: Ref, dtype: Any = None) -> F64:
    """|computed - exact| in units of the spacing of the correctly rounded exact value.

    `dtype` is the target precision (default: the dtype of `computed`).  The spacing is
    ``np.spacing(|round(exact)|)`` in that dtype, which is the subnormal spacing for
    subnormal results and the smallest subnormal for exact values that round to 0.
    Where the exact value is 0, +-inf or NaN, or rounds to +-inf, the error is 0 for an
    equal result and inf otherwise.  A correctly rounded result has error <= 0.5.

    >>> import numpy as np
    >>> r = ref_from_mp(["0.1", "1e-320", "0"])
    >>> ulp_error(np.array([0.1, 1e-320, 0.0]), r)
    array([0.4       , 0.02253307, 0.        ])
    >>> float(ulp_error(np.float32(0.1), ref_from_mp(["0.1"]))[0])  # float32(0.1) is off by 0.2 ulp
    0.2
    """
    c_in = np.asarray(computed)
    dt = np.dtype(dtype) if dtype is not None else c_in.dtype
    c = c_in.astype(np.float64)
    c, hi, lo, e = np.broadcast_arrays(c, ref.hi, ref.lo, ref.e)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        r = Ref(hi, lo, e).rounded(dt)
        exact = (hi == 0) | ~np.isfinite(hi) | ~np.isfinite(r)
        spacing = np.spacing(np.abs(r)).astype(np.float64)
        # Scale by 2^-e: c 2^-e is exact while it stays normal, and c 2^-e - hi is exact
        # (Sterbenz) whenever c is within a factor 2 of the reference.
        d = np.abs((np.ldexp(c, -e) - hi) - lo)
        err = d / np.ldexp(spacing, -e)
        equal = (c == np.ldexp(hi, e)) | (np.isnan(c) & np.isnan(hi))
        err = np.where(exact, np.where(equal, 0.0, np.inf), err)
        err = np.where(np.isnan(err), np.inf, err)
    return np.asarray(err, dtype=np.float64)


def ref_distance(a: Ref, b: Ref, dtype: Any = np.float64) -> F64:
    """|a - b| in ulps of `dtype` at b, both references at full (106-bit) resolution.

    Used to validate the longdouble references against mpmath: a correct longdouble
    reference is within about 1e-3 float64 ulp.  Specials must match exactly.
    """
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        shift = a.e - b.e
        dh = np.ldexp(a.hi, shift) - b.hi  # exact: a and b agree to within a factor 2
        dl = np.ldexp(a.lo, shift) - b.lo
        r = b.rounded(dtype)
        spacing = np.ldexp(np.spacing(np.abs(r)).astype(np.float64), -b.e)
        err = np.abs(dh + dl) / spacing
        exact = (b.hi == 0) | ~np.isfinite(b.hi)
        same = (a.hi == b.hi) | (np.isnan(a.hi) & np.isnan(b.hi))
        err = np.where(exact, np.where(same, 0.0, np.inf), err)
    return np.asarray(err, dtype=np.float64)


# --------------------------------------------------------------------------- mpmath


def _mp(v: float) -> Any:
    return mpmath.mpf(float(v))


def mp_rows(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, Ref]:
    """mpmath references for rows of logits `x` (2-d, finite) and class indices `y`.

    Returns Refs for 'lse' (N,), 'log_softmax', 'softmax', 'ce_grad' (N, C) and 'ce' (N,).
    With m the row maximum (at k) and s = sum_{i != k} e^(x_i - m), all in 50 digits:
    lse = m + log1p(s); log_softmax_j = (x_j - m) - log1p(s); softmax_j = e^(x_j - m) / (1 + s);
    ce = lse - x_y; the CE gradient softmax_j - [j == y] is written at j = y as
    -(sum_{i != y} e^(x_i - m)) / (1 + s) so that it keeps its digits when it is tiny.
    """
    x = np.asarray(x, dtype=np.float64)
    N, C = x.shape
    lse: list[Any] = []
    ce: list[Any] = []
    ls: list[Any] = []
    sm: list[Any] = []
    g: list[Any] = []
    with mpmath.workdps(DPS):
        for i in range(N):
            row = [_mp(v) for v in x[i]]
            k = int(np.argmax(x[i]))
            m = row[k]
            d = [v - m for v in row]
            ex = [mpmath.exp(t) for t in d]
            s = mpmath.fsum(ex[:k] + ex[k + 1 :])
            L = mpmath.log1p(s)
            S = 1 + s
            yi = int(y[i])
            lse.append(m + L)
            ce.append(L - d[yi])
            ls.extend(t - L for t in d)
            sm.extend(t / S for t in ex)
            g.append(-mpmath.fsum(ex[:yi] + ex[yi + 1 :]) / S)
    softmax = ref_from_mp(sm, (N, C))
    # the gradient is the softmax except at the label
    grad = Ref(softmax.hi.copy(), softmax.lo.copy(), softmax.e.copy())
    at_y = ref_from_mp(g)
    rows = np.arange(N)
    yy = np.asarray(y, dtype=np.intp)
    grad.hi[rows, yy], grad.lo[rows, yy], grad.e[rows, yy] = at_y.hi, at_y.lo, at_y.e
    return {
        "lse": ref_from_mp(lse),
        "ce": ref_from_mp(ce),
        "log_softmax": ref_from_mp(ls, (N, C)),
        "softmax": softmax,
        "ce_grad": grad,
    }


def _mp_elementwise(f: Callable[[Any], Any], x: npt.NDArray[Any]) -> Ref:
    x = np.asarray(x, dtype=np.float64)
    with mpmath.workdps(DPS):
        vals = [f(_mp(v)) for v in x.ravel()]
    return ref_from_mp(vals, x.shape)


def mp_binary(x: npt.NDArray[Any]) -> dict[str, Ref]:
    """mpmath references of the sigmoid family at the points `x` (50 digits).

    'sigmoid' 1/(1 + e^-x); 'sigmoid_grad' e^-x / (1 + e^-x)^2; 'log_sigmoid'
    -log1p(e^-x); 'log_sigmoid_grad' = sigmoid(-x); 'bce0' / 'bce1' the BCE with logits for
    label 0 / 1, log1p(e^x) / log1p(e^-x); 'bce0_grad' sigmoid(x), 'bce1_grad' -sigmoid(-x)
    (the exact value of sigmoid(x) - 1).
    """

    def sig(t: Any) -> Any:
        return 1 / (1 + mpmath.exp(-t))

    def sig_grad(t: Any) -> Any:
        u = mpmath.exp(-t)
        return u / (1 + u) ** 2

    def softplus(t: Any) -> Any:
        return mpmath.log1p(mpmath.exp(t))

    return {
        "sigmoid": _mp_elementwise(sig, x),
        "sigmoid_grad": _mp_elementwise(sig_grad, x),
        "log_sigmoid": _mp_elementwise(lambda t: -softplus(-t), x),
        "log_sigmoid_grad": _mp_elementwise(lambda t: sig(-t), x),
        "bce0": _mp_elementwise(softplus, x),
        "bce1": _mp_elementwise(lambda t: softplus(-t), x),
        "bce0_grad": _mp_elementwise(sig, x),
        "bce1_grad": _mp_elementwise(lambda t: -sig(-t), x),
    }


# --------------------------------------------------------------------------- longdouble


def ld_rows(x: npt.NDArray[Any], y: npt.NDArray[Any]) -> dict[str, Ref]:
    """The quantities of :func:`mp_rows`, computed in longdouble (fast, for large arrays).

    Same formulas as :func:`mp_rows` in 64-bit-mantissa arithmetic: with finite logits
    below ~1e4 in magnitude x - m is exact or within 2^-64 relative, and every other step
    adds a few longdouble ulps, i.e. about 1/1000 of a float64 ulp.  Only meaningful when
    :data:`LONGDOUBLE_IS_EXTENDED`; the tests check it against mpmath on a subset.
    """
    xl = np.asarray(x, dtype=np.float64).astype(np.longdouble)
    k = np.argmax(xl, axis=-1)[:, None]
    m = np.take_along_axis(xl, k, axis=-1)
    d = xl - m
    ex = np.exp(d)
    np.put_along_axis(ex, k, 0, axis=-1)
    s = np.sum(ex, axis=-1, keepdims=True)
    np.put_along_axis(ex, k, 1, axis=-1)
    L = np.log1p(s)
    S = 1 + s
    yi = np.asarray(y, dtype=np.intp)[:, None]
    p = ex / S
    g = p.copy()
    # softmax_y - 1 = -(sum of the other terms) / S; at y = k that sum is s itself
    rest = np.where(yi == k, s, S - np.take_along_axis(ex, yi, axis=-1))
    np.put_along_axis(g, yi, -(rest / S), axis=-1)
    return {
        "lse": ref_from_ld((m + L)[:, 0]),
        "ce": ref_from_ld((L - np.take_along_axis(d, yi, axis=-1))[:, 0]),
        "log_softmax": ref_from_ld(d - L),
        "softmax": ref_from_ld(p),
        "ce_grad": ref_from_ld(g),
    }


def ld_binary(x: npt.NDArray[Any]) -> dict[str, Ref]:
    """The quantities of :func:`mp_binary` in longdouble, with t = e^-|x| (never overflows):
    sigmoid = 1/(1 + t) or t/(1 + t), sigmoid' = t/(1 + t)^2, softplus(x) = max(x, 0) +
    log1p(t).  Checked against mpmath by the tests."""
    xl = np.asarray(x, dtype=np.float64).astype(np.longdouble)
    t = np.exp(-np.abs(xl))
    pos = xl >= 0
    sig = np.where(pos, 1 / (1 + t), t / (1 + t))  # sigmoid(x)
    sig_neg = np.where(pos, t / (1 + t), 1 / (1 + t))  # sigmoid(-x)
    sp = np.maximum(xl, 0) + np.log1p(t)  # softplus(x)
    sp_neg = np.maximum(-xl, 0) + np.log1p(t)  # softplus(-x)
    return {
        "sigmoid": ref_from_ld(sig),
        "sigmoid_grad": ref_from_ld(t / (1 + t) ** 2),
        "log_sigmoid": ref_from_ld(-sp_neg),
        "log_sigmoid_grad": ref_from_ld(sig_neg),
        "bce0": ref_from_ld(sp),
        "bce1": ref_from_ld(sp_neg),
        "bce0_grad": ref_from_ld(sig),
        "bce1_grad": ref_from_ld(-sig_neg),
    }


# --------------------------------------------------------------------------- shared data

ROWS_SHAPE = (1000, 1000)
#: rows of the random data checked against mpmath itself; all 1000 rows are checked
#: against the longdouble reference, which mpmath validates on these rows
MP_ROWS = {"float64": 100, "float32": 50, "float16": 20}


#: Edge rows (row, label) for the softmax family, checked in float64 and, where finite,
#: float32, against mp_rows (50-digit mpmath): +-1e9, huge offsets with tiny spreads, ties,
#: subnormal outputs, the overflow/underflow thresholds, tiny and large losses.
EDGE_ROWS: list[tuple[list[float], int]] = [
    ([1e9, -1e9, 0.0], 0),  # +-1e9: loss 0 (e^-1e9 underflows everywhere)
    ([1e9, -1e9, 0.0], 1),  # loss 2e9
    ([-1e9, 1e9], 0),
    ([1e9, 1e9 - 1, 1e9 - 2], 2),  # spread of a few units at 1e9
    ([1e6 + 1, 1e6, 1e6 - 1], 0),  # float32 label 0: 0.40761 (huge offset, tiny spread)
    ([1e6 + 1, 1e6, 1e6 - 1], 2),
    ([3.0, 3.0, 3.0, 3.0], 1),  # ties
    ([5.0, 5.0, -1.0], 0),
    ([5.0, 5.0, -1.0], 2),
    ([0.0] * 1000, 999),  # 1000-way tie: loss log(1000)
    ([0.0, -740.0], 0),  # subnormal probability e^-740
    ([0.0, -745.0], 1),  # e^-745 = 4.9e-324, the last subnormal
    ([0.0, -746.0, -800.0], 0),  # probabilities below the subnormals
    ([0.0, -103.0], 0),  # float32 subnormal probability
    ([0.0, -88.0, -87.0], 1),  # float32 threshold
    ([88.7, 88.0, -88.0], 0),  # e^88.7 would overflow float32
    ([709.78, 709.0, 0.0], 1),  # e^709.78 is at the float64 overflow threshold
    ([710.0, 0.0], 1),  # e^710 overflows float64: loss 710
    ([-745.0, -746.0, -709.0], 0),  # all terms underflow without the shift
    ([-720.0, -720.0], 0),
    ([40.0, 0.0, 0.0], 0),  # confident and right: loss 2 e^-40 = 8.5e-18
    ([37.0, 0.0], 0),
    ([800.0, 0.0], 0),  # loss e^-800 = 3.7e-348, below the subnormals: 0
    ([20.0, 19.0, -30.0, 1.0], 0),
    ([0.0, 700.0], 0),  # confident and wrong: loss 700
    ([1e-300, 0.0, -1e-300], 1),  # all but tied
    ([1e300, -1e300], 0),  # the largest finite spreads
    ([1e300, -1e300], 1),
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0], 4),
]


@functools.cache
def random_rows(dtype_name: str) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
    """The random-rows data set: logits ~ N(0, 10) of shape 1000 x 1000 (float16: N(0, 3),
    so that the rows keep more than one significant class), and random labels."""
    rng = np.random.default_rng(20261127)
    x = rng.normal(0.0, 10.0, ROWS_SHAPE)
    y = rng.integers(0, ROWS_SHAPE[1], ROWS_SHAPE[0])
    if dtype_name == "float16":
        x = x * 0.3
    x = x.astype(dtype_name)
    x.setflags(write=False)
    return x, y


@functools.cache
def rows_reference(dtype_name: str, source: str) -> dict[str, Ref]:
    """References for :func:`random_rows`: ``source='mp'`` on the first MP_ROWS rows,
    ``'ld'`` (longdouble) on all of them.  Cached for the session."""
    x, y = random_rows(dtype_name)
    if source == "mp":
        n = MP_ROWS[dtype_name]
        return mp_rows(x[:n], y[:n])
    return ld_rows(x, y)


@functools.cache
def sigmoid_points(dtype_name: str) -> npt.NDArray[Any]:
    """Points covering the whole range of the sigmoid family in `dtype_name`: both signs of
    log-spaced magnitudes from 1e-30 (float16: 1e-7) to just past the underflow of e^-|x|,
    uniform points, and the thresholds themselves."""
    rng = np.random.default_rng(7)
    top = {"float64": 746.0, "float32": 104.5, "float16": 18.0}[dtype_name]
    low = {"float64": -30, "float32": -30, "float16": -7}[dtype_name]
    mags = np.logspace(low, np.log10(top), 1200)
    pts = np.concatenate(
        [
            mags,
            -mags,
            rng.uniform(-top, top, 800),
            [0.0, 1.0, -1.0, 16.0, 17.0, 36.7, 37.0, 40.0, -36.7, -37.0, -40.0],
            [88.0, 88.7, 89.0, -87.3, -88.0, -88.7, -89.0, -103.0, -103.9, -104.0],
            [708.0, 709.0, 709.78, 710.0, 720.0, 740.0, 744.0, 745.0, 745.13, 745.2],
            [-708.0, -709.0, -709.78, -710.0, -720.0, -740.0, -744.0, -745.0, -745.13, -745.2],
        ]
    )
    pts = pts[np.abs(pts) <= top].astype(dtype_name)
    pts.setflags(write=False)
    return pts


@functools.cache
def sigmoid_reference(dtype_name: str) -> dict[str, Ref]:
    """mpmath references of the sigmoid family at :func:`sigmoid_points` (cached)."""
    return mp_binary(sigmoid_points(dtype_name))


@functools.cache
def dense_sigmoid_points(dtype_name: str) -> npt.NDArray[Any]:
    """600 000 points for the longdouble check of the sigmoid family: uniform where
    the functions bend (|x| < 40), uniform over the whole range, and log-spaced
    magnitudes of both signs; for float16, every finite value."""
    if dtype_name == "float16":  # every finite float16, both signs
        pos = np.arange(0x7C00, dtype=np.uint16).view(np.float16)
        every = np.concatenate([pos, -pos])
        every.setflags(write=False)
        return every
    rng = np.random.default_rng(8)
    top = {"float64": 746.0, "float32": 104.5}[dtype_name]
    bend = 40.0
    mags = np.logspace(-20, np.log10(top), 50_000)
    pts = np.concatenate(
        [rng.uniform(-bend, bend, 400_000), rng.uniform(-top, top, 100_000), mags, -mags]
    ).astype(dtype_name)
    pts.setflags(write=False)
    return pts


@functools.cache
def dense_sigmoid_reference(dtype_name: str) -> dict[str, Ref]:
    """Longdouble references at :func:`dense_sigmoid_points` (cached)."""
    return ld_binary(dense_sigmoid_points(dtype_name))
