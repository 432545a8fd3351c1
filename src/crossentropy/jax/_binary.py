r"""Binary cross-entropy from logits, elementwise: value and exact derivative.

With the smoothed label :math:`y' = (1-\varepsilon) y + \varepsilon/2`, positive weight *p*,
:math:`a = p\,y'` and :math:`b = 1 - y'`:

.. math::

    \ell(x) = a \operatorname{softplus}(-x) + b \operatorname{softplus}(x), \qquad
    \ell'(x) = b\,\sigma(x) - a\,\sigma(-x)

two terms >= 0 (no cancellation: ``x = -40, y = 0`` gives 4.25e-18), each softplus within
an ulp (:mod:`._sigmoid`).  A term whose coefficient is 0 adds exactly 0, even where its
softplus is infinite.  The rule is a ``jax.custom_jvp`` with symbolic zeros: derivatives
with respect to the labels (``softplus(-x)`` and ``softplus(x)``) are formed only when
asked for.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from crossentropy.jax import _sigmoid as sg

__all__ = ["bce_terms"]

Array = jax.Array


def _term(coef: Array, value: Array) -> Array:
    return jnp.where(coef == 0, 0.0, coef * value)


@jax.custom_jvp
def bce_terms(x: Array, a: Array, b: Array) -> Array:
    """``a softplus(-x) + b softplus(x)`` elementwise (a = p y', b = 1 - y')."""
    return _term(a, sg.softplus(-x)) + _term(b, sg.softplus(x))


def _bce_jvp(primals: tuple[Array, Array, Array], tangents: tuple[Any, Any, Any],
             ) -> tuple[Array, Array]:
    x, a, b = primals
    dx, da, db = tangents
    sp_neg, sp_pos = sg.softplus(-x), sg.softplus(x)
    out = _term(a, sp_neg) + _term(b, sp_pos)
    t = jnp.zeros_like(out)
    if not isinstance(dx, SymbolicZero):
        # d/dx softplus(x) = sigmoid(x), d/dx softplus(-x) = -sigmoid(-x)
        t = t + (_term(b, sg.sigmoid(x)) - _term(a, sg.sigmoid(-x))) * dx
    if not isinstance(da, SymbolicZero):
        t = t + sp_neg * da
    if not isinstance(db, SymbolicZero):
        t = t + sp_pos * db
    return out, t


bce_terms.defjvp(_bce_jvp, symbolic_zeros=True)
