r"""Rows of scores, class axis last: the decomposition behind every softmax-like result.

The decomposition of the NumPy core (:mod:`crossentropy._core.rows`), with the compensated
JAX primitives of :mod:`._arith`.  For a row x with maximum m:

.. math::

    x - m = dh + dl \text{ exactly (TwoSum)}, \quad e_c = e^{dh_c + dl_c}, \quad
    s = \sum_c e_c - 1, \quad L = \operatorname{log1p}(s),

    \mathrm{lse} = m + L, \quad \operatorname{softmax}_c = e_c / (1 + s), \quad
    \log\operatorname{softmax}_c = (dh_c - L) + dl_c .

``s`` is the sum of every term but one maximum's: taking log1p of it, rather than the log
of the rounded 1 + s, keeps log-softmax and the loss of confident rows exact (Blanchard,
Higham & Higham, "Accurately computing the log-sum-exp and softmax functions", IMA J.
Numer. Anal. 41 (2021)).

How s is formed, for speed on XLA (one pass, fused into a single reduction): every term,
the maximum's included, goes through Rump-Ogita-Oishi's error-free extraction with a
fixed power of two sigma = 2^(bits(C) + 1) (the terms are <= 1): e_c = q_c + r_c exactly
with q_c a multiple of eps sigma (:func:`._arith.split_at`), sum(q) is exact in any order,
and the maximum's own term is exactly 1 (dh = dl = 0, exp(0) = 1), so
``s = (sum(q) - 1) + sum(r)`` subtracts it without cancelling anything.  Ties need no
index: each other maximum is a term of 1.
The terms use XLA's exp (fused into the reduction; its error, below 1 ulp in float32 and
1.5 ulp in float64, is that of each term, so of s); every per-element output (softmax,
log-softmax, gradients) uses the exact exp of :mod:`._arith`.  Measured on 1000 x 1000
rows ~ N(0, 10): s within 1.3 ulp (float64) and 1.8 ulp (float32).

Three kinds of row take a slower, exact path (about 4x), chosen per call by ``lax.cond``
(so it costs nothing when no row needs it; under ``vmap``, and so ``jacfwd``/``jacrev``,
both paths run):

* a maximum of +inf: its +inf entries share the mass equally -- the row is replaced by
  0 at the +inf entries and -inf elsewhere, whose decomposition gives exactly that;
* s below 2^(p+3) times the smallest normal number (s = 0 included: a row with a single
  finite entry), where a platform that flushes subnormals to zero (XLA CPU) drops terms
  that still count: there the terms are scaled by 2^shift before they are summed (exact
  both ways);
* a maximum beyond 1/8 of the largest float in magnitude, where the fast pass's clamp of
  the entries (see :func:`_fast_sum`) would not be harmless.

A row of all -inf or with a NaN is ``bad``: NaN results (log-sum-exp -inf or NaN).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crossentropy.jax import _arith as ar

__all__ = [
    "Stats",
    "effective",
    "log_softmax",
    "logsumexp",
    "probs",
    "row_stats",
    "softmax",
    "terms",
    "weighted_logsumexp",
]

Array = jax.Array


class Stats(NamedTuple):
    """Per-row statistics (keepdims, shape (..., 1)).

    ``m`` is the maximum of the row as decomposed (0 for a row whose maximum is +inf, see
    :func:`effective`), ``s`` the sum of the other terms, ``L = log1p(s)``.
    """

    m: Array
    s: Array
    L: Array
    pos_inf: Array
    bad: Array

    @property
    def lse(self) -> Array:
        """log-sum-exp (no keepdims): m + L, +inf for +inf rows."""
        out: Array = jnp.where(self.pos_inf, jnp.inf, self.m + self.L)[..., 0]
        return out


def effective(x: Array, pos_inf: Array) -> Array:
    """The row as decomposed: where the maximum is +inf, 0 at the +inf entries and -inf
    elsewhere (they share the mass equally); other rows unchanged."""
    inf_row = jnp.where(x == jnp.inf, 0.0, -jnp.inf).astype(x.dtype)
    return jnp.where(pos_inf, inf_row, x)


def _fast_sum(x: Array, m: Array) -> Array:
    """s = sum_c e^(x_c - m) - 1 in one fused pass (see the module docstring), for rows
    with |m| <= max/8.

    x is first raised to -max/4: a -inf entry would make the TwoSum error NaN (and its
    term 0 * NaN); raised, its term is still exactly 0.  (A select would do the same, but
    XLA's CPU backend then splits the pass into four, 8x slower.)
    """
    big = float(np.finfo(x.dtype).max) / 4
    dh, dl = ar.two_sum(jnp.maximum(x, -big), -m)
    e = jnp.exp(dh)
    e = e + e * dl  # exp(dh + dl) = exp(dh) (1 + dl) to half an ulp
    # the extraction with sigma = 2^(bits(C) + 1) >= 2 C max(e): multiples of eps sigma
    q = ar.split_at(e, 2.0 ** (x.shape[-1].bit_length() + 1 - ar.consts(x.dtype).mant))
    # the 1 to subtract, from the data (a constant would let XLA reassociate the sums)
    one = jnp.sign(jnp.abs(m) + 1.0)
    tau = jnp.sum(q, axis=-1, keepdims=True)
    rest = jnp.sum(e - q, axis=-1, keepdims=True)
    return (tau - one) + rest


def _exact_sum(x: Array, m: Array) -> Array:
    """s for every row with the exact exp, the terms below the maximum scaled by 2^shift
    (no flushing of terms that count) and each other maximum counted as 1."""
    c = ar.consts(x.dtype)
    dh, dl = ar.two_sum(x, -m)
    dl = jnp.where(jnp.isfinite(dl), dl, 0.0)
    hi, lo, k = ar.exp_parts(dh, x_lo=dl)
    top = x == m
    big = jnp.where(top, 0.0, ar.ldexp(hi + lo, k + c.sum_shift))  # each <= 2^shift
    # the fast pass's extraction, with the bound 2^shift on the terms
    q = ar.split_at(big, 2.0 ** (c.sum_shift + x.shape[-1].bit_length() + 1 - c.mant))
    total = jnp.sum(q, axis=-1, keepdims=True) + jnp.sum(big - q, axis=-1, keepdims=True)
    small = total * (2.0 ** -c.sum_shift)
    ties = jnp.sum(top, axis=-1, keepdims=True).astype(x.dtype)
    return small + jnp.maximum(ties - 1.0, 0.0)


def row_stats(x: Array) -> Stats:
    """The :class:`Stats` of rows (last axis, length >= 1).

    The passes over the rows run inside ``lax.cond`` branches on purpose: a branch is a
    computation of its own, which XLA cannot fuse with what comes after it.  Fused with
    a consumer that holds a select, XLA's CPU backend split the one-pass sum into
    separate, 4x slower passes (measured).  The maximum is therefore computed again inside
    the branch (fused into the sum) and once outside for the callers.
    """
    c = ar.consts(x.dtype)
    m = jnp.max(x, axis=-1, keepdims=True)  # NaN if the row holds a NaN
    pos_inf = m == jnp.inf
    bad = jnp.isnan(m) | (m == -jnp.inf)
    finite = jnp.isfinite(m)
    tiny = float(2.0 ** (c.mant + 3)) * float(np.finfo(x.dtype).tiny)
    huge = float(np.finfo(x.dtype).max) / 8
    # float min/max reductions, not jnp.any of booleans (a reduce-window on XLA CPU,
    # which also broke the fusion of the sum)
    odd_m = ((jnp.max(jnp.where(jnp.isnan(m), -jnp.inf, m)) == jnp.inf)
             | (jnp.max(jnp.where(finite, jnp.abs(m), 0.0)) > huge))

    def fast(xx: Array) -> Array:
        return _fast_sum(xx, jnp.max(xx, axis=-1, keepdims=True))

    def exact(xx: Array) -> Array:
        mm = jnp.max(xx, axis=-1, keepdims=True)
        me = jnp.where(jnp.isfinite(mm), mm, 0.0)  # 0 for +inf rows, as effective() needs
        return _exact_sum(effective(xx, mm == jnp.inf), me)

    if x.shape[-1] == 1:  # one class: s = 0 exactly
        s = jnp.zeros_like(m)
    else:
        s = lax.cond(odd_m, exact, fast, x)
        small = jnp.min(jnp.where(finite, s, 1.0)) < tiny
        s = lax.cond(small, lambda ops: exact(ops[0]), lambda ops: ops[1], (x, s))
    ms = jnp.where(finite, m, 0.0)
    s = jnp.where(bad, 0.0, s)
    return Stats(jnp.where(bad, m, ms), s, ar.log1p(s), pos_inf, bad)


def terms(x: Array, st: Stats) -> tuple[Array, Array, Array, Array]:
    """Per element ``(xe, dh, dl, top)``: the row as decomposed, x - m = dh + dl (dl 0
    where not finite) and the maxima (where e = 1, log softmax = -L)."""
    xe = effective(x, st.pos_inf)
    dh, dl = ar.two_sum(xe, -st.m)
    dl = jnp.where(jnp.isfinite(dl), dl, 0.0)
    return xe, dh, dl, xe == st.m


def probs(x: Array, st: Stats) -> Array:
    """softmax = e / (1 + s), the exact exp per element and the rounding of 1 + s put
    back: 1 + s = S + S_lo exactly (TwoSum), e / (S + S_lo) = q (1 - S_lo / S).  Bad rows
    NaN."""
    _, dh, dl, top = terms(x, st)
    e = jnp.where(top, 1.0, ar.exp(dh, dl))
    one = ar.opaque(1.0, st.s)
    S, S_lo = ar.two_sum(one, st.s)
    q = e / S
    return jnp.where(st.bad, jnp.nan, q - q * (S_lo / S))


def _log_softmax_value(x: Array, st: Stats) -> Array:
    # log p_j = (x_j - m) - log1p(s) = (dh_j - L) + dl_j: two terms <= 0, and the rounding
    # error of x_j - m added back; at a maximum exactly -log1p(s)
    _, dh, dl, top = terms(x, st)
    lp = jnp.where(top, -st.L, (dh - st.L) + dl)
    return jnp.where(st.bad, jnp.nan, lp)


def _dot_last(p: Array, t: Array) -> Array:
    """sum_c p_c t_c over the last axis, keepdims; 0 * anything-finite is 0 (p = 0 at -inf)."""
    out: Array = jnp.sum(p * t, axis=-1, keepdims=True)
    return out


@jax.custom_jvp
def softmax(x: Array) -> Array:
    """softmax over the last axis (see the module docstring)."""
    return probs(x, row_stats(x))


@softmax.defjvp
def _softmax_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    p = probs(x, row_stats(x))
    # d softmax = p (dx - <p, dx>)
    return p, p * (dx - _dot_last(p, dx))


@jax.custom_jvp
def log_softmax(x: Array) -> Array:
    """log softmax over the last axis, exact near 0."""
    return _log_softmax_value(x, row_stats(x))


@log_softmax.defjvp
def _log_softmax_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    st = row_stats(x)
    # d log softmax = dx - <p, dx>
    return _log_softmax_value(x, st), dx - _dot_last(probs(x, st), dx)


@jax.custom_jvp
def logsumexp(x: Array) -> Array:
    """log(sum(exp(x))) over the last axis (no keepdims)."""
    return row_stats(x).lse


@logsumexp.defjvp
def _logsumexp_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    st = row_stats(x)
    # d lse = <p, dx>
    return st.lse, _dot_last(probs(x, st), dx)[..., 0]


def _weighted(x: Array, b: Array) -> tuple[Array, Array]:
    """log|sum(b e^x)| and its sign over the last axis (as the NumPy core's
    ``weighted_logsumexp``), keeping the digits that cancel."""
    xe = jnp.where(b == 0, -jnp.inf, x)  # b = 0 removes the term, whatever x is
    m = jnp.max(xe, axis=-1, keepdims=True)
    ms = jnp.where(jnp.isfinite(m), m, 0.0)
    dh, dl = ar.two_sum(xe, -ms)
    dl = jnp.where(jnp.isfinite(dl), dl, 0.0)
    e = ar.exp(dh, dl)
    # Terms within a factor 2 of the largest: b e^d = b + b expm1(d).  The b's add up
    # exactly when they are small whole numbers (the usual +-1), and expm1 keeps the
    # digits of e^d - 1 that rounding 1 + tiny would lose.
    near = dh > -math.log(2.0)
    em1 = ar.expm1(jnp.where(near, dh, 0.0)) + e * dl
    A = jnp.sum(jnp.where(near, b, 0.0), axis=-1, keepdims=True)
    bterm = jnp.where(b == 0, 0.0, b * jnp.where(near, em1, e))
    R = jnp.sum(bterm, axis=-1, keepdims=True)
    # log(A + R) = log|A| + log1p(R / A) while R / A > -1/2 (no cancellation), else log|A+R|
    safeA = jnp.where(A == 0, 1.0, A)
    ratio = R / safeA
    gentle = (A != 0) & (ratio > -0.5)
    tot = A + R
    out = jnp.where(gentle, ar.log(jnp.abs(safeA)) + ar.log1p(jnp.where(gentle, ratio, 0.0)),
                    ar.log(jnp.abs(tot)))
    sign = jnp.sign(jnp.where(gentle, A, tot))
    out = out + ms
    # +inf terms: the sum is +-inf by the sign of the b's at +inf (NaN if they sum to 0)
    hit = xe == jnp.inf
    binf = jnp.sum(jnp.where(hit, b, 0.0), axis=-1, keepdims=True)
    pinf = m == jnp.inf
    out = jnp.where(pinf, jnp.where(binf != 0, jnp.inf, jnp.nan), out)
    sign = jnp.where(pinf, jnp.where(binf != 0, jnp.sign(binf), jnp.nan), sign)
    allneg = m == -jnp.inf
    out = jnp.where(allneg, -jnp.inf, out)
    sign = jnp.where(allneg, 0.0, sign)
    nan = jnp.isnan(m) | jnp.isnan(out)
    return jnp.where(nan, jnp.nan, out)[..., 0], jnp.where(nan, jnp.nan, sign)[..., 0]


@jax.custom_jvp
def weighted_logsumexp(x: Array, b: Array) -> tuple[Array, Array]:
    """``(log|sum(b e^x)|, sign)`` over the last axis (x and b of one shape)."""
    return _weighted(x, b)


@weighted_logsumexp.defjvp
def _weighted_jvp(primals: tuple[Array, Array], tangents: tuple[Any, Any],
                  ) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    (x, b), (dx, db) = primals, tangents
    out, sign = _weighted(x, b)
    # d log|S| = (sum_c e^{x_c} (b_c dx_c + db_c)) / S with S = sign e^out
    w = sign[..., None] * ar.exp(x - out[..., None])
    w = jnp.where(jnp.isfinite(w), w, 0.0)
    t = jnp.sum(w * (b * dx + db), axis=-1)
    return (out, sign), (t, jnp.zeros_like(sign))
