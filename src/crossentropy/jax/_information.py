r"""Entropy and Kullback-Leibler divergence of rows (class axis last): value and derivative.

.. math::

    H(p) = -\sum_c p_c \log p_c, \qquad
    D(p\,\|\,q) = \sum_c p_c \log\frac{p_c}{q_c}

with :math:`0 \log 0 = 0` (a class with no mass adds exactly 0, whatever its other factor).
Three forms of the divergence: of probabilities ``(p, q)`` (the NumPy API's), of targets
and log-predictions ``(p, log q)`` and of log-targets and log-predictions (optax's two).
Each log-ratio is formed without cancellation (see the functions); the derivatives are
``jax.custom_jvp`` rules with symbolic zeros.  At a zero probability the derivative with
respect to the *prediction* is finite (:math:`-p_c / q_c = 0`); with respect to the mass
itself it is the exact one-sided value, :math:`\mp\infty` (the slope of
:math:`p \log p` at 0).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from crossentropy.jax import _arith as ar

__all__ = ["entropy_rows", "kl_log_rows", "kl_logt_rows", "kl_rows", "log_ratio"]

Array = jax.Array


def _zero(t: Any) -> bool:
    return isinstance(t, SymbolicZero)


def _nan_rows(*arrays: Array) -> Array:
    """Rows (keepdims) holding a NaN in any of the arrays (their plain sum is NaN; valid
    probabilities sum to a finite number)."""
    total = sum(jnp.sum(a, axis=-1, keepdims=True) for a in arrays)
    out: Array = jnp.isnan(total)
    return out


# --------------------------------------------------------------------------- entropy


def _entropy(p: Array) -> tuple[Array, Array]:
    logp = ar.log(p)
    terms = jnp.where(p == 0, 0.0, -(p * logp))  # >= 0 on [0, 1]
    h = ar.sum_nonneg(terms, axis=-1)
    return jnp.where(_nan_rows(p)[..., 0], jnp.nan, h), logp


@jax.custom_jvp
def entropy_rows(p: Array) -> Array:
    """H(p) over the last axis."""
    return _entropy(p)[0]


@entropy_rows.defjvp
def _entropy_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (p,), (dp,) = primals, tangents
    h, logp = _entropy(p)
    g = -(logp + 1.0)  # +inf at p = 0: the slope of -p log p there
    g = jnp.where(_nan_rows(p), jnp.nan, g)
    return h, jnp.sum(g * dp, axis=-1)


# --------------------------------------------------------------------------- KL(p || q)


def _log_pq(p: Array, q: Array) -> Array:
    """log(p / q): log1p((p - q) / q) where p / q is within a factor 2 of 1 (p - q is then
    exact, Sterbenz), else log p - log q (the two logs do not cancel much there)."""
    safe_q = jnp.where(q == 0, 1.0, q)
    ratio = p / safe_q
    close = (ratio > 0.5) & (ratio < 2.0) & (q != 0)
    near = ar.log1p(jnp.where(close, (p - q) / safe_q, 0.0))
    return jnp.where(close, near, ar.log(p) - ar.log(q))


def _kl(p: Array, q: Array) -> tuple[Array, Array]:
    lr = _log_pq(p, q)
    d = jnp.sum(jnp.where(p == 0, 0.0, p * lr), axis=-1)  # terms of both signs
    return jnp.where(_nan_rows(p, q)[..., 0], jnp.nan, d), lr


@jax.custom_jvp
def kl_rows(p: Array, q: Array) -> Array:
    """D(p || q) over the last axis, p and q probabilities."""
    return _kl(p, q)[0]


def _kl_jvp(primals: tuple[Array, Array], tangents: tuple[Any, Any]) -> tuple[Array, Array]:
    (p, q), (dp, dq) = primals, tangents
    d, lr = _kl(p, q)
    nan = _nan_rows(p, q)
    t = jnp.zeros_like(d)
    if not _zero(dq):
        # dD/dq_c = -p_c / q_c: one division, 0 where p_c = 0
        gq = jnp.where(p == 0, 0.0, -p / jnp.where(q == 0, 1.0, q))
        gq = jnp.where((p != 0) & (q == 0), -jnp.inf, gq)
        t = t + jnp.sum(jnp.where(nan, jnp.nan, gq) * dq, axis=-1)
    if not _zero(dp):
        gp = jnp.where(p == 0, -jnp.inf, lr + 1.0)  # dD/dp_c = log(p_c / q_c) + 1
        t = t + jnp.sum(jnp.where(nan, jnp.nan, gp) * dp, axis=-1)
    return d, t


kl_rows.defjvp(_kl_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------- log space


def log_ratio(t: Array, lq: Array) -> Array:
    r"""log(t) - lq for t > 0, without the cancellation of the two logs.

    :math:`t e^{-lq} = (P + P_{lo}) 2^K` exactly enough (TwoProduct of t's mantissa with
    the double-word :math:`e^{-lq}`, :func:`._arith.exp_parts`), P brought into
    :math:`[\sqrt{1/2}, \sqrt 2)`, then :math:`K \ln 2 + \operatorname{log1p}(P - 1 + P_{lo})`:
    ``P - 1`` is exact and, for K = 0, the result is log1p's alone, so nearly equal t and
    e^lq keep their digits (``log(t) - lq`` rounds ``log t`` first: with lq = -700 that
    is 300 ulp of a difference near 1).
    """
    c = ar.consts(t.dtype)
    ts = jnp.where(t > 0, t, 1.0)
    mt, kt = jnp.frexp(ts)  # t = mt 2^kt, mt in [0.5, 1)
    # e^-lq overflows beyond exp_hi; there log t (>= log of the smallest normal) and lq
    # differ by more than 1, and the plain difference does not cancel
    near = jnp.isfinite(lq) & (-lq < c.exp_hi - 2.0)
    hi, lo, k = ar.exp_parts(jnp.where(near, -lq, 0.0), precise=True)
    P, P_lo = ar.two_prod(mt, hi)
    P_lo = P_lo + mt * lo
    K = (kt + k).astype(c.int_dtype)
    small = P < math.sqrt(0.5)
    P, P_lo = jnp.where(small, 2.0 * P, P), jnp.where(small, 2.0 * P_lo, P_lo)
    K = jnp.where(small, K - 1, K)
    big = P >= math.sqrt(2.0)
    P, P_lo = jnp.where(big, 0.5 * P, P), jnp.where(big, 0.5 * P_lo, P_lo)
    K = jnp.where(big, K + 1, K)
    Kf = K.astype(t.dtype)
    one = ar.opaque(1.0, t)
    out = Kf * c.ln2_hi + (ar.log1p(P - one, P_lo) + Kf * c.ln2_lo)
    out = jnp.where(near, out, ar.log(t) - lq)  # lq = -inf: +inf; lq = +inf: -inf
    out = jnp.where(t == jnp.inf, jnp.inf, out)
    return jnp.where(jnp.isnan(t) | jnp.isnan(lq), jnp.nan, out)


def _kl_log(t: Array, lq: Array) -> tuple[Array, Array]:
    lr = log_ratio(t, lq)
    terms = jnp.where(t == 0, 0.0, t * lr)
    return jnp.sum(terms, axis=-1), lr


@jax.custom_jvp
def kl_log_rows(t: Array, lq: Array) -> Array:
    """sum_c t_c (log t_c - lq_c) over the last axis (optax's ``kl_divergence``)."""
    return _kl_log(t, lq)[0]


def _kl_log_jvp(primals: tuple[Array, Array], tangents: tuple[Any, Any],
                ) -> tuple[Array, Array]:
    (t, lq), (dt, dlq) = primals, tangents
    d, lr = _kl_log(t, lq)
    out = jnp.zeros_like(d)
    if not _zero(dlq):
        out = out - jnp.sum(t * dlq, axis=-1)  # d/d lq_c = -t_c: finite, 0 where t_c = 0
    if not _zero(dt):
        g = jnp.where(t == 0, -jnp.inf, lr + 1.0)  # d/dt_c = log(t_c / q_c) + 1
        out = out + jnp.sum(g * dt, axis=-1)
    return d, out


kl_log_rows.defjvp(_kl_log_jvp, symbolic_zeros=True)


def _kl_logt(lt: Array, lq: Array) -> tuple[Array, Array, Array]:
    et = ar.exp(lt)
    diff = lt - lq  # one rounding of two given numbers
    terms = jnp.where(et == 0, 0.0, et * diff)  # e^-inf (-inf - lq): 0, not NaN
    return jnp.sum(terms, axis=-1), et, diff


@jax.custom_jvp
def kl_logt_rows(lt: Array, lq: Array) -> Array:
    """sum_c e^lt_c (lt_c - lq_c) over the last axis (optax's
    ``kl_divergence_with_log_targets``)."""
    return _kl_logt(lt, lq)[0]


def _kl_logt_jvp(primals: tuple[Array, Array], tangents: tuple[Any, Any],
                 ) -> tuple[Array, Array]:
    (lt, lq), (dlt, dlq) = primals, tangents
    d, et, diff = _kl_logt(lt, lq)
    out = jnp.zeros_like(d)
    if not _zero(dlq):
        out = out - jnp.sum(et * dlq, axis=-1)
    if not _zero(dlt):
        g = jnp.where(et == 0, 0.0, et * (diff + 1.0))  # -> 0 as lt -> -inf
        out = out + jnp.sum(g * dlt, axis=-1)
    return d, out


kl_logt_rows.defjvp(_kl_logt_jvp, symbolic_zeros=True)
