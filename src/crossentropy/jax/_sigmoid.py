r"""The sigmoid family: sigmoid, its derivative, softplus and log-sigmoid, elementwise.

The formulas of the NumPy core (:mod:`crossentropy._core.sigmoid`) with the compensated
JAX primitives: :math:`t = e^{-|x|}` is carried as ``(hi + lo) 2^k``
(:func:`._arith.exp_parts`), so the 1.5 ulp error of XLA's float64 ``exp`` never enters a
result, and the power of two is applied last, so a result that is subnormal is rounded
once where the platform keeps subnormals (XLA CPU flushes them to 0).

Each function is a ``jax.custom_jvp`` with the exact derivative: sigmoid' from its own
cancellation-free formula, d softplus = sigmoid, d log_sigmoid = sigmoid(-x).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from crossentropy.jax import _arith as ar

__all__ = ["log_sigmoid", "sigmoid", "sigmoid_prime", "softplus"]

Array = jax.Array


def _split(x: Array) -> tuple[Array, Array, Array, Array, Array]:
    """``(hi, lo, k, d_hi, d_lo)``: e^-|x| = (hi + lo) 2^k and 1 + e^-|x| = d_hi + d_lo
    (Fast2Sum, since e^-|x| <= 1)."""
    hi, lo, k = ar.exp_parts(-jnp.abs(x))
    t_hi, t_lo = ar.ldexp(hi, k), ar.ldexp(lo, k)
    one = ar.opaque(1.0, x)
    d_hi = one + t_hi
    d_lo = ((one - d_hi) + t_hi) + t_lo
    return hi, lo, k, d_hi, d_lo


def _ratio(hi: Array, lo: Array) -> Array:
    """lo / hi, 0 where hi is 0 (x = +-inf)."""
    return jnp.where(hi == 0.0, 0.0, lo / jnp.where(hi == 0.0, 1.0, hi))


def _sigmoid(x: Array) -> Array:
    # Two branches, each free of overflow and of cancellation, with t = e^-|x|:
    #   x >= 0:  1 / (1 + t)
    #   x <  0:  t / (1 + t)      (1 / (1 + e^-x) would overflow e^-x for x < -709)
    # 1 + t = d_hi + d_lo and t = (hi + lo) 2^k are carried to double-word accuracy, so
    # a / (d_hi + d_lo) = (a / d_hi)(1 - d_lo / d_hi) with one rounded division.
    hi, lo, k, d_hi, d_lo = _split(x)
    c = d_lo / d_hi
    q_pos = 1.0 / d_hi
    pos = q_pos - q_pos * c
    q_neg = hi / d_hi
    neg = ar.ldexp(q_neg + q_neg * (_ratio(hi, lo) - c), k)  # the only rounding if subnormal
    return jnp.where(x >= 0, pos, neg)


def _softplus(x: Array) -> Array:
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): two terms >= 0, so no cancellation; the
    low part of e^-|x| goes into log1p's correction."""
    hi, lo, k = ar.exp_parts(-jnp.abs(x))
    return jnp.maximum(x, 0.0) + ar.log1p(ar.ldexp(hi, k), ar.ldexp(lo, k))


def sigmoid_prime(x: Array) -> Array:
    """sigmoid'(x) = e^-|x| / (1 + e^-|x|)^2, symmetric, non-zero while e^-|x| is.

    (1 + t)^2 = (d_hi + d_lo)^2 with d_hi^2 = p1 + p2 exactly (TwoProduct), so one rounded
    division remains.  sigmoid(x) (1 - sigmoid(x)) would round to 0 already at x ~ 37.
    """
    hi, lo, k, d_hi, d_lo = _split(x)
    p1, p2 = ar.two_prod(d_hi, d_hi)
    q = hi / p1
    # t / (1 + t)^2 = (hi / p1)(1 + lo / hi - p2 / p1 - 2 d_lo / d_hi) to first order
    v = q + q * ((_ratio(hi, lo) - p2 / p1) - 2.0 * (d_lo / d_hi))
    return ar.ldexp(v, k)


@jax.custom_jvp
def sigmoid(x: Array) -> Array:
    """1 / (1 + e^-x), elementwise."""
    return _sigmoid(x)


@sigmoid.defjvp
def _sigmoid_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    return _sigmoid(x), sigmoid_prime(x) * dx


@jax.custom_jvp
def softplus(x: Array) -> Array:
    """log(1 + e^x), elementwise."""
    return _softplus(x)


@softplus.defjvp
def _softplus_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    return _softplus(x), _sigmoid(x) * dx  # d softplus(x) / dx = sigmoid(x)


@jax.custom_jvp
def log_sigmoid(x: Array) -> Array:
    """log sigmoid(x) = -softplus(-x), elementwise."""
    # x >= 0: -log1p(e^-x) (tiny and exact); x < 0: x - log1p(e^x) (same signs)
    return -_softplus(-x)


@log_sigmoid.defjvp
def _log_sigmoid_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    return -_softplus(-x), _sigmoid(-x) * dx  # d log sigmoid(x) / dx = sigmoid(-x)
