r"""Compensated floating-point arithmetic in pure JAX: the building blocks of the exact layer.

XLA's own transcendental functions are not accurate enough to build exact results on
(measured on XLA CPU, jaxlib 0.10.2, against an 80-bit reference: float64 ``exp`` 1.5 ulp,
``expm1`` 4.1 ulp, ``log1p`` of negative arguments 128 ulp, ``tanh`` 5.6 ulp; float32
``expm1`` 5.5 ulp, ``tanh`` 4.2 ulp), so this module writes them again from additions,
multiplications and divisions, which IEEE rounds correctly, in the working dtype (float32 or
float64) -- the same code for both, with per-dtype constants:

* :func:`two_sum`, :func:`fast_two_sum`, :func:`two_prod`: error-free transformations
  (Knuth, Dekker), ``a + b = s + e`` and ``a b = p + e`` exactly;
* :func:`exp_parts`: :math:`e^x = (hi + lo)\, 2^k` to about :math:`2^{-p-2}` relative,
  :func:`exp`, :func:`expm1`;
* :func:`log`, :func:`log1p`: below one ulp, with a correction term for an argument that
  is itself a rounded sum;
* :func:`tanh`, :func:`sech2` (the soft cap);
* :func:`sum_nonneg`: a sum of non-negative terms to about one rounding in any order
  (Rump, Ogita and Oishi's error-free extraction).

Nothing here may be reassociated: the error terms (``(a - (s - bb)) + (b - bb)``) are zero
in real arithmetic, so a compiler that treats floats as reals deletes them.  XLA's
algebraic simplifier does so by default for compile-time constants: it rewrites
``(x + 1) - 1`` to ``x`` (measured: the TwoSum of ``1 + 1e-17`` loses its ``1e-17``).  Every
constant that takes part in such a chain is therefore made opaque (:func:`opaque`, an
``optimization_barrier`` on a scalar, which XLA removes after simplification: no cost).
``--xla_cpu_enable_fast_math=true`` (not the default) would let LLVM reassociate the rest;
``docs/jax.md`` lists the flags and ``tests/test_jax_flags.py`` checks that the defaults
keep the compensation.

XLA on CPU flushes subnormal numbers to zero (inputs and results, whatever
``--xla_cpu_ftz`` says): a result below the smallest normal number comes out 0 there.
:func:`ldexp` rounds a subnormal result once where the platform keeps subnormals.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "Consts",
    "consts",
    "exp",
    "exp_parts",
    "expm1",
    "fast_two_sum",
    "ldexp",
    "log",
    "log1p",
    "opaque",
    "sech2",
    "split_at",
    "sum_nonneg",
    "tanh",
    "two_prod",
    "two_sum",
]

Array = jax.Array
_barrier: Any = lax.optimization_barrier  # (untyped in jax: typed here as Any)


@dataclass(frozen=True)
class Consts:
    """The constants of one working dtype (float32 or float64)."""

    dtype: np.dtype[Any]
    int_dtype: np.dtype[Any]
    mant: int  # explicit mantissa bits (23, 52)
    bias: int  # exponent bias (127, 1023)
    ln2_hi: float  # ln 2 with trailing zero bits: k * ln2_hi is exact for the k used here
    ln2_lo: float  # ln 2 - ln2_hi
    exp_lo: float  # e^x is 0 below this in every rounding (subnormals included)
    exp_hi: float  # e^x overflows above this
    expm1_coefs: tuple[float, ...]  # 1/2!, 1/3!, ... (Taylor), enough for |r| <= ln2 / 2
    atanh_coefs: tuple[float, ...]  # 2/3, 2/5, ... : 2 atanh(s) = 2 s + s R(s^2)
    split: float  # Veltkamp's 2^ceil(p/2) + 1
    block: int  # terms per block of sum_nonneg (block^2 eps^2 stays far below eps)
    sum_shift: int  # 2^sum_shift lifts every term that counts in a sum above tiny


def _ln2_split(keep_bits: int, dtype: Any) -> tuple[float, float]:
    """ln 2 as hi + lo, hi with `keep_bits` significant bits (so k * hi is exact while k
    has fewer than p - keep_bits bits)."""
    ln2 = math.log(2.0)
    scale = 2.0 ** keep_bits
    hi = math.floor(ln2 * scale) / scale
    return float(np.asarray(hi, dtype)), float(np.asarray(ln2 - hi, dtype))


@functools.cache
def consts(dtype: Any) -> Consts:
    """The :class:`Consts` of float32 or float64."""
    dt = np.dtype(dtype)
    if dt == np.float64:
        # fdlibm's split of ln 2: hi has its last 21 bits zero (|k| < 2^21 is exact)
        hi, lo = 6.93147180369123816490e-01, 1.90821492927058770002e-10
        # expm1 on |r| <= 0.3466: r^14 / 14! < 2^-54 r; atanh on s^2 <= 0.0295: 10 terms
        return Consts(dt, np.dtype(np.int64), 52, 1023, hi, lo, -1100.0, 709.782712893384,
                      tuple(1.0 / math.factorial(n) for n in range(2, 15)),
                      tuple(2.0 / (2 * n + 1) for n in range(1, 11)), 134217729.0, 1 << 16, 64)
    if dt == np.float32:
        hi, lo = _ln2_split(16, np.float32)  # |k| < 256 is exact
        return Consts(dt, np.dtype(np.int32), 23, 127, hi, lo, -110.0, 88.72283,
                      tuple(1.0 / math.factorial(n) for n in range(2, 9)),
                      tuple(2.0 / (2 * n + 1) for n in range(1, 6)), 4097.0, 256, 32)
    raise TypeError(f"the exact arithmetic works in float32 or float64, not {dt}")


def opaque(value: float, like: Array) -> Array:
    """The scalar `value` in the dtype of `like`, hidden from XLA's algebraic simplifier.

    The simplifier reassociates additions with constants as if floats were reals
    (``(x + C) - C -> x``), which deletes an error term; behind an optimization barrier
    the constant is not a constant to it.  The barrier is gone after simplification, so
    the compiled code is the same as with the literal (and it differentiates and batches
    as the identity).
    """
    out: Array = _barrier(jnp.asarray(value, dtype=like.dtype))
    return out


def _c(value: float, like: Array) -> Array:
    """A constant in the dtype of `like` (a Python float would be weakly typed: fine, but
    explicit keeps float32 constants rounded once, here)."""
    return jnp.asarray(value, dtype=like.dtype)


# --------------------------------------------------------------------------- error-free


def two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """``a + b = s + e`` exactly, s = fl(a + b) (Knuth's TwoSum, any magnitudes).

    ``e`` is NaN where ``s`` is infinite; callers that can meet infinities mask it.
    """
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def fast_two_sum(a: Array, b: Array) -> tuple[Array, Array]:
    """``a + b = s + e`` exactly when ``|a| >= |b|`` (Dekker's Fast2Sum)."""
    s = a + b
    return s, b - (s - a)


def _split(a: Array) -> tuple[Array, Array]:
    """Veltkamp: a = hi + lo with hi, lo of at most half the mantissa each (exact)."""
    t = a * _c(consts(a.dtype).split, a)
    hi = t - (t - a)
    return hi, a - hi


def two_prod(a: Array, b: Array) -> tuple[Array, Array]:
    """``a b = p + e`` exactly (Dekker's TwoProduct; finite, no overflow in the split).

    Every partial product is exact, so a compiler that fuses a multiply into an add
    (FMA contraction) changes nothing here.
    """
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


# --------------------------------------------------------------------------- powers of 2


def _pow2(k: Array, dtype: np.dtype[Any]) -> Array:
    """2^k for whole k in the normal range (clipped to it), built from the exponent bits."""
    c = consts(dtype)
    kk = jnp.clip(k, 1 - c.bias, c.bias).astype(c.int_dtype)
    bits = lax.shift_left(kk + c.bias, jnp.asarray(c.mant, c.int_dtype))
    return lax.bitcast_convert_type(bits, dtype)


def ldexp(v: Array, k: Array) -> Array:
    """``v 2^k`` rounded once (k whole, any size): two exact steps, then the one rounding.

    With k = k1 + k2, k1 = floor(k / 2): v 2^k1 is exact (normal) for the |k| met here,
    so a subnormal result is rounded only by the second product.  Beyond the range both
    factors clip, and the product still overflows or underflows.
    """
    k1 = jnp.floor_divide(k, 2)
    return v * _pow2(k1, v.dtype) * _pow2(k - k1, v.dtype)


def _frexp_sqrt2(u: Array) -> tuple[Array, Array]:
    """u = m 2^k with m in [sqrt(1/2), sqrt(2)), for positive finite normal u (exact)."""
    c = consts(u.dtype)
    it = c.int_dtype
    bits = lax.bitcast_convert_type(u, it)
    mant_mask = jnp.asarray((1 << c.mant) - 1, it)
    k = lax.shift_right_arithmetic(bits, jnp.asarray(c.mant, it)) - c.bias
    one_bits = jnp.asarray(c.bias << c.mant, it)
    m = lax.bitcast_convert_type(lax.bitwise_or(lax.bitwise_and(bits, mant_mask), one_bits),
                                 u.dtype)  # in [1, 2)
    big = m > _c(math.sqrt(2.0), m)
    m = jnp.where(big, m * _c(0.5, m), m)  # exact
    return m, jnp.where(big, k + 1, k)


# --------------------------------------------------------------------------- exp


def _expm1_small(r: Array, precise: bool = False) -> tuple[Array, Array]:
    """e^r - 1 = g + g_lo for |r| <= ln2 / 2 (plus a little).

    r + r^2 P(r) with P the Taylor polynomial 1/2 + r/6 + ... (Horner): the r^2 P(r) term
    is at most 0.17 r, so its few roundings weigh 0.17 as much as the final addition's
    (g alone within about 1.6 ulp, g_lo = 0).  ``precise=True`` forms r + r^2/2 exactly
    (TwoProduct, Fast2Sum) and adds the cubic tail to the low part: g + g_lo then carries
    e^r - 1 to a small fraction of an ulp, for expm1 and tanh, whose results keep it.
    """
    coefs = consts(r.dtype).expm1_coefs
    if not precise:
        p = _c(coefs[-1], r)
        for a in coefs[-2::-1]:
            p = p * r + _c(a, r)
        return r + (r * r) * p, jnp.zeros_like(r)
    p = _c(coefs[-1], r)
    for a in coefs[-2:0:-1]:
        p = p * r + _c(a, r)  # 1/6 + r/24 + ...
    h, h_lo = two_prod(r, r)
    h, h_lo = h * 0.5, h_lo * 0.5  # r^2 / 2 = h + h_lo exactly
    tail = (r * h) * (2.0 * p)  # r^3 (1/6 + r/24 + ...), at most r / 15
    s1, e1 = fast_two_sum(r, h)  # |r| >= r^2 / 2
    g, e2 = fast_two_sum(s1, tail)
    return g, (e1 + e2) + h_lo


def exp_parts(x: Array, precise: bool = False, x_lo: Array | None = None,
              ) -> tuple[Array, Array, Array]:
    """``e^x = (hi + lo) 2^k``: hi in [0.70, 1.42], lo its correction, k whole (int).

    Cody-Waite reduction x = k ln2 + r + r_lo (k ln2_hi exact, r_lo the rounding of
    r = (x - k ln2_hi) - k ln2_lo, by Fast2Sum), then e^(r + r_lo) = (1 + g)(1 + r_lo) with
    g = expm1(r) below one ulp: 1 + g = hi + (1 - hi) + g exactly (Fast2Sum, |g| < 1).
    hi + lo carries e^x to about 2^-(p+2) relative, where exp alone rounds (XLA's float64
    exp is off by up to 1.5 ulp).  x = -inf gives hi = 0; x = +inf or above the overflow
    threshold hi = +inf; NaN gives NaN.  ``precise``: see :func:`_expm1_small`.
    ``x_lo`` (finite, tiny beside x, e.g. the TwoSum error of x = a - b) is added to r_lo:
    e^(x + x_lo), with the correction applied before the scaling by 2^k (a correction
    applied after it, e^x x_lo, is subnormal and flushed to 0 for e^x below 2^-100 in
    float32, which cost 60 ulp).
    """
    c = consts(x.dtype)
    finite = jnp.isfinite(x)
    xf = jnp.clip(jnp.where(finite, x, 0.0), c.exp_lo, c.exp_hi)
    k = jnp.round(xf * _c(1.0 / math.log(2.0), xf))
    r_hi = xf - k * _c(c.ln2_hi, xf)  # exact: k ln2_hi is exact and close to x (Sterbenz)
    kl = k * _c(c.ln2_lo, xf)
    r = r_hi - kl
    r_lo = (r_hi - r) - kl  # Fast2Sum: |r_hi| >= |kl|
    if x_lo is not None:
        r_lo = r_lo + x_lo
    g, g_lo = _expm1_small(r, precise)
    one = opaque(1.0, xf)
    hi = one + g
    lo = ((one - hi) + g) + (g_lo + r_lo * hi)  # the rounding of 1 + g, then e^r r_lo
    over = (x > c.exp_hi) | (x == jnp.inf)
    hi = jnp.where(x == -jnp.inf, 0.0, jnp.where(over, jnp.inf, hi))
    hi = jnp.where(jnp.isnan(x), jnp.nan, hi)
    lo = jnp.where(finite & ~over, lo, 0.0)
    return hi, lo, k.astype(c.int_dtype)


def exp(x: Array, x_lo: Array | None = None) -> Array:
    """e^(x + x_lo) within about half an ulp plus 2^-(p+2) (one rounding of hi + lo, then
    scaled; ``x_lo`` as in :func:`exp_parts`)."""
    hi, lo, k = exp_parts(x, x_lo=x_lo)
    return ldexp(hi + lo, k)


def expm1(x: Array) -> Array:
    """e^x - 1 within about one ulp over the whole range.

    With e^x = (hi + lo) 2^k: for k = 0, hi - 1 is exact (Sterbenz) and lo is added once;
    otherwise 2^k hi - 1 is formed by TwoSum, its error and 2^k lo added back.  (|e^x - 1|
    >= 0.29 there: no cancellation.)
    """
    hi, lo, k = exp_parts(x, precise=True)
    near = k == 0
    one = opaque(1.0, x)
    t_hi = ldexp(hi, k)
    s, e = two_sum(t_hi, -one)
    far = s + (e + ldexp(lo, k))
    out = jnp.where(near, (hi - one) + lo, far)
    out = jnp.where(x == jnp.inf, jnp.inf, out)
    return jnp.where(x == -jnp.inf, -1.0, out)


# --------------------------------------------------------------------------- log


def _log_reduced(f: Array, corr: Array, k: Array) -> Array:
    """k ln2 + log(1 + f) + corr / (1 + f) for f in [sqrt(1/2) - 1, sqrt(2) - 1].

    With s = f / (2 + f), log(1 + f) = 2 atanh(s) = 2s + s R(s^2), R = sum 2 z^n / (2n+1);
    since 2s = f - s f, this equals f - f^2/2 + s (f^2/2 + R): the leading f is exact and
    the rest is a small correction computed to a few ulp of itself (the arrangement of
    Sun's fdlibm log1p, with the Taylor coefficients of atanh).  `corr` carries an argument
    that was itself rounded (log1p's 1 + x).
    """
    coefs = consts(f.dtype).atanh_coefs
    s = f / (2.0 + f)
    z = s * s
    p = _c(coefs[-1], f)
    for a in coefs[-2::-1]:
        p = p * z + _c(a, f)
    R = z * p
    hfsq = _c(0.5, f) * f * f
    kf = k.astype(f.dtype)
    c = consts(f.dtype)
    tail = kf * _c(c.ln2_lo, f) + corr / (1.0 + f)
    return kf * _c(c.ln2_hi, f) - ((hfsq - (s * (hfsq + R) + tail)) - f)


def _prescaled(u: Array) -> tuple[Array, Array]:
    """(u 2^j, j): subnormal u scaled into the normal range (j = mantissa bits + 2, else 0).

    Where the platform flushes subnormals (XLA CPU), u is already 0 and stays 0.
    """
    c = consts(u.dtype)
    tiny = np.finfo(c.dtype).tiny
    sub = jnp.abs(u) < tiny
    j = c.mant + 2
    return jnp.where(sub, u * _c(2.0 ** j, u), u), jnp.where(sub, -j, 0)


def log(x: Array) -> Array:
    """log x below one ulp; log 0 = -inf, log(x < 0) = NaN, log inf = inf."""
    u, j = _prescaled(x)
    ok = u > 0
    us = jnp.where(ok & jnp.isfinite(u), u, 1.0)
    m, k = _frexp_sqrt2(us)
    out = _log_reduced(m - opaque(1.0, m), jnp.zeros_like(m), k + j.astype(k.dtype))
    out = jnp.where(u == 0, -jnp.inf, out)
    out = jnp.where(u == jnp.inf, jnp.inf, out)
    return jnp.where((u < 0) | jnp.isnan(u), jnp.nan, out)


def log1p(x: Array, x_lo: Array | None = None) -> Array:
    """log(1 + x + x_lo) below one ulp, for x >= -1 (x_lo: a small correction, optional).

    1 + x = u + c exactly (TwoSum), u = m 2^k with m near 1, f = m - 1 exact (Sterbenz);
    then log(1 + x) = k ln2 + log(1 + f) + c 2^-k / m to first order in the tiny c.  So
    log1p(1e-20) = 1e-20, and the digits of x that 1 + x rounds away are kept.
    """
    one = opaque(1.0, x)
    u, c = two_sum(one, x)
    if x_lo is not None:
        c = c + x_lo
    ok = (u > 0) & jnp.isfinite(u)
    us = jnp.where(ok, u, 1.0)
    m, k = _frexp_sqrt2(us)
    corr = ldexp(jnp.where(ok, c, 0.0), -k)
    out = _log_reduced(m - one, corr, k)
    out = jnp.where(u == 0, -jnp.inf, out)
    out = jnp.where(u == jnp.inf, jnp.inf, out)
    return jnp.where((x < -1) | jnp.isnan(x), jnp.nan, out)


# --------------------------------------------------------------------------- tanh


def tanh(x: Array) -> Array:
    r"""tanh x within about one ulp: :math:`\tanh|x| = -E / (2 + E)`, E = expm1(-2|x|).

    E is carried as hi + lo (from :func:`exp_parts`), 2 + E by TwoSum, and the quotient
    corrected by both low parts: one rounded division remains.  No cancellation: for
    small |x|, E = -2|x| + ... keeps its digits (tanh x = x - x^3/3 ...).
    """
    a = -2.0 * jnp.abs(x)
    hi, lo, k = exp_parts(a, precise=True)
    near = k == 0
    one = opaque(1.0, x)
    t_hi = ldexp(hi, k)
    t_lo = ldexp(lo, k)
    s, e = two_sum(t_hi, -one)
    E_hi = jnp.where(near, hi - one, s)  # hi - 1 exact for k = 0 (Sterbenz)
    E_lo = jnp.where(near, lo, e + t_lo)
    E_hi, E_lo = fast_two_sum(E_hi, E_lo)
    D_hi, D_lo = fast_two_sum(opaque(2.0, x), E_hi)
    D_lo = D_lo + E_lo
    q = -E_hi / D_hi
    safe = jnp.where(E_hi == 0, 1.0, E_hi)
    q = q + q * (E_lo / safe - D_lo / D_hi)
    q = jnp.where(E_hi == 0, -E_hi * 0.5, q)  # |x| tiny (or flushed): tanh x = x
    q = jnp.where(jnp.abs(x) == jnp.inf, 1.0, q)
    return jnp.where(x < 0, -q, jnp.where(jnp.isnan(x), jnp.nan, q))


def sech2(x: Array) -> Array:
    r"""1 - tanh^2 x = 4t / (1 + t)^2 with t = e^{-2|x|} <= 1: no cancellation (``1 - t*t``
    loses every digit once tanh rounds to 1) and no overflow (``cosh`` overflows at 710)."""
    t = exp(-2.0 * jnp.abs(x))
    d = 4.0 * t / ((1.0 + t) * (1.0 + t))
    return jnp.where(jnp.isnan(x), jnp.nan, d)


# --------------------------------------------------------------------------- sums


def split_at(e: Array, g: Array | float) -> Array:
    """The multiple of the power of two `g` nearest to e: ``round(e / g) g``, exact, and
    e minus it is exact too.

    This is the extraction of Rump, Ogita and Oishi (``(e + sigma) - sigma`` with sigma a
    power of two) written with a rounding: XLA's algebraic simplifier rewrites
    ``(e + C) - C`` to e for a constant C, and in a vmapped program it returned a sum of
    such q's that was 16 ulp off (measured); it has no rule for ``round``.
    """
    inv = 1.0 / g if isinstance(g, float) else jnp.reciprocal(g)  # exact: a power of two
    out: Array = jnp.round(e * inv) * g
    return out


def _extract_sum(e: Array) -> tuple[Array, Array, Array]:
    """``(tau, rest, plain)``: the last-axis sum (keepdims) of terms >= 0 as tau + rest.

    Rump-Ogita-Oishi ExtractVector: with M the largest term and sigma = 2^ceil(log2(2nM))
    a power of two above 2nM, each term splits exactly as q + r with q a multiple of
    g = eps sigma (:func:`split_at`), so ``tau = sum(q)`` is exact in any order (XLA's
    reduction order is its own; no partial sum exceeds sigma / 2); the r's are below
    g / 2 and ``rest = sum(r)`` is off by about n^2 eps^2 M, far below an ulp for the row
    lengths met.  Where a term is +-inf or NaN or every term is 0, ``plain`` (the plain
    sum) is the answer and tau, rest are unused.
    """
    n = e.shape[-1]
    c = consts(e.dtype)
    M = jnp.max(e, axis=-1, keepdims=True)
    Mf = jnp.where(jnp.isfinite(M) & (M > 0), M, 1.0)
    _, E = jnp.frexp(Mf)
    g = ldexp(jnp.ones_like(Mf), E + (max(n - 1, 1)).bit_length() + 1 - c.mant)
    q = split_at(e, g)
    tau = jnp.sum(q, axis=-1, keepdims=True)
    rest = jnp.sum(e - q, axis=-1, keepdims=True)
    plain = jnp.sum(e, axis=-1, keepdims=True)
    bad = ~jnp.isfinite(tau + rest) | ~(M > 0)
    return jnp.where(bad, plain, tau), jnp.where(bad, 0.0, rest), plain


def sum_nonneg(e: Array, axis: int = -1, keepdims: bool = False) -> Array:
    """The sum of non-negative terms along `axis`, to about one rounding.

    Rows longer than the dtype's block (256 float32, 65536 float64) are extracted block by
    block (:func:`_extract_sum`), then the blocks' exact parts the same way and their
    remainders plainly: the error of one extraction grows as n^2 eps^2, which for one
    float32 pass over 128,000 terms would be 2^-14 relative.  (jnp.sum alone can be off by
    tens of ulp on long rows, and by far more when one large term meets many small ones.)
    """
    axis = axis % e.ndim
    e = jnp.moveaxis(e, axis, -1)
    n = e.shape[-1]
    B = consts(e.dtype).block
    if n <= B:
        tau, rest, _ = _extract_sum(e)
        out = tau + rest
    else:
        nb = -(-n // B)
        pad = nb * B - n
        eb = jnp.pad(e, [(0, 0)] * (e.ndim - 1) + [(0, pad)]) if pad else e
        eb = eb.reshape(*e.shape[:-1], nb, B)
        taus, rests, _ = _extract_sum(eb)  # per block: tau exact, rest small
        tau, rest, _ = _extract_sum(taus[..., 0])
        out = tau + (rest + jnp.sum(rests[..., 0], axis=-1, keepdims=True))
    out = jnp.moveaxis(out, -1, axis)
    return out if keepdims else jnp.squeeze(out, axis)
