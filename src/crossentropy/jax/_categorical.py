r"""Categorical cross-entropy rows, class axis last, every option: value and exact derivative.

The formulas of the NumPy core (:mod:`crossentropy._core.categorical`).  For row *i*:
soft-capped logits :math:`z = c\tanh(x/c)` (or :math:`z = x`), coefficients
:math:`a_c = w_c t'_c` (class weights times the smoothed target, 0 for a row that is not
counted or a class left out), :math:`W = \sum_c a_c`, z-loss coefficient :math:`\zeta`:

.. math::

    \ell = \sum_c a_c\,(-\log\operatorname{softmax}(z)_c) + \zeta\,\mathrm{lse}^2, \qquad
    \frac{\partial\ell}{\partial z_c} = p_c\,(W + 2\zeta\,\mathrm{lse}) - a_c

with :math:`-\log\operatorname{softmax}(z)_c = (L - dh_c) - dl_c` (:mod:`._rows`): two terms
>= 0, so a loss of 1e-18 keeps its digits.  At the row maximum *k*,
:math:`p_k W' - a_k = ((W' - a_k) - a_k s) / (1 + s)` with :math:`W' - a_k` summed
directly, which keeps the gradient of a confident, correct row (:math:`p_k - 1 = -s/(1+s)`,
not 1 - 1 + tiny).

Two row functions, both ``jax.custom_jvp`` with symbolic zeros (a tangent that is not asked
for is not formed, so an infinite loss never meets a zero tangent to make NaN):

* :func:`index_rows` for one-hot targets given as class indices (no dense coefficients);
* :func:`dense_rows` for any coefficients (probability targets, label smoothing, class
  masks).

Each returns the per-row loss in nats and the row's log-sum-exp.  Rows that are not
counted have loss 0 and gradient 0; a counted row with a NaN, or whose label is out of
range, has loss and gradient NaN.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from crossentropy.jax import _arith as ar
from crossentropy.jax import _rows as rw

__all__ = ["dense_rows", "index_rows", "softcap"]

Array = jax.Array


def _zero(t: Any) -> bool:
    return isinstance(t, SymbolicZero)


# --------------------------------------------------------------------------- soft cap


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def softcap(x: Array, cap: float) -> Array:
    r""":math:`c \tanh(x / c)` (Gemma 2's soft cap), tanh within one ulp."""
    return cap * ar.tanh(x / cap)


@softcap.defjvp
def _softcap_jvp(cap: float, primals: tuple[Array], tangents: tuple[Array],
                 ) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    u = x / cap
    # dz/dx = sech^2(x / c), from e^{-2|u|} <= 1: no cancellation, no overflow
    return cap * ar.tanh(u), ar.sech2(u) * dx


# --------------------------------------------------------------------------- shared


def _gk(st: rw.Stats, a_rest: Array, a_k: Array) -> Array:
    """The gradient at a row maximum, ``((W' - a_k) - a_k s) / (1 + s)`` (broadcast)."""
    out: Array = (a_rest - a_k * st.s) / (ar.opaque(1.0, st.s) + st.s)
    return out


def _zl(lse: Array, counted: Array, zeta: float) -> Array:
    """2 zeta lse for the counted rows (keepdims), 0 elsewhere (PaLM's z-loss)."""
    return jnp.where(counted, 2.0 * zeta * lse, 0.0)[..., None]


def _finish_grad(g: Array, st: rw.Stats, nan_row: Array, counted: Array) -> Array:
    g = jnp.where(st.bad | nan_row[..., None], jnp.nan, g)
    return jnp.where(counted[..., None], g, 0.0)  # rows not counted: zero gradient


def _sum_last(t: Array) -> Array:
    return jnp.sum(t, axis=-1)


def _nls(xe: Array, dh: Array, dl: Array, top: Array, st: rw.Stats) -> Array:
    """-log softmax = (L - dh) - dl, both terms >= 0 (L at a maximum); NaN in bad rows."""
    out = jnp.where(top, st.L, (st.L - dh) - dl)
    return jnp.where(st.bad, jnp.nan, out)


# --------------------------------------------------------------------------- index targets


def _index(z: Array, y: Array, wy: Array, counted: Array, invalid: Array, zeta: float,
           want_grad: bool) -> tuple[Array, Array, Array | None, Array | None, Array]:
    """``(loss, lse, grad, p, nls_y)`` for one-hot targets: the sums over c reduce to their
    one term, so the forward pass reads the row twice (max, fused sum) and gathers z_y."""
    st = rw.row_stats(z)
    lse = st.lse
    zy = jnp.take_along_axis(z, y[..., None], axis=-1)
    ye, dh_y, dl_y, top_y = rw.terms(zy, st)
    nls_y = _nls(ye, dh_y, dl_y, top_y, st)[..., 0]
    loss = jnp.where(wy == 0, 0.0, wy * nls_y)  # no mass, no term (even at nls = inf)
    if zeta:
        loss = loss + jnp.where(counted, zeta * lse * lse, 0.0)  # z-loss, never weighted
    nan_row = (jnp.isnan(st.m[..., 0]) & counted) | invalid
    loss = jnp.where(nan_row, jnp.nan, loss)
    if not want_grad:
        return loss, lse, None, None, nls_y
    p = rw.probs(z, st)
    _, _, _, top = rw.terms(z, st)
    zl = _zl(lse, counted, zeta) if zeta else 0.0
    w = wy[..., None]
    iota = lax.broadcasted_iota(y.dtype, z.shape, z.ndim - 1)
    a = jnp.where(iota == y[..., None], w, 0.0)  # a_c = w_y [c = y]
    g = p * (w + zl) - a
    # at a maximum j: W' - a_j = w_y - a_j + 2 zeta lse, and a_j = [j = y] w_y
    g = jnp.where(top, _gk(st, (w - a) + zl, a), g)
    return loss, lse, _finish_grad(g, st, nan_row, counted), p, nls_y


@functools.partial(jax.custom_jvp, nondiff_argnums=(5,))
def index_rows(z: Array, y: Array, wy: Array, counted: Array, invalid: Array,
               zeta: float) -> tuple[Array, Array]:
    """``(loss, lse)`` per row of logits `z` (..., C) for class indices `y` (in range),
    row weights `wy` (``weight[y]``, 0 where not counted), the `counted` rows and the
    rows whose label was out of range (`invalid`: loss NaN)."""
    loss, lse, *_ = _index(z, y, wy, counted, invalid, zeta, want_grad=False)
    return loss, lse


def _along(dz: Any, loss: Array, lse: Array, g: Array | None, p: Array | None,
           ) -> tuple[Array, Array]:
    """The tangents of (loss, lse) along the logits' tangent `dz`: sum_c g_c dz_c and
    sum_c p_c dz_c, with g = d loss / dz and p = softmax = d lse / dz (zeros where `dz` is a
    symbolic zero, and g and p were not formed)."""
    if g is None or p is None:
        return jnp.zeros_like(loss), jnp.zeros_like(lse)
    return _sum_last(g * dz), _sum_last(p * dz)


def _index_rows_jvp(zeta: float, primals: tuple[Array, ...], tangents: tuple[Any, ...],
                    ) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    z, y, wy, counted, invalid = primals
    dz, _, dwy, _, _ = tangents
    want = not _zero(dz)
    loss, lse, g, p, nls_y = _index(z, y, wy, counted, invalid, zeta, want_grad=want)
    dloss, dlse = _along(dz, loss, lse, g, p)
    if not _zero(dwy):
        # d loss / d w_y = -log softmax_y on the counted rows (the others do not use w)
        dloss = dloss + jnp.where(counted, nls_y, 0.0) * dwy
    return (loss, lse), (dloss, dlse)


index_rows.defjvp(_index_rows_jvp, symbolic_zeros=True)


# --------------------------------------------------------------------------- dense


def _dense(z: Array, a: Array, counted: Array, keep: Array, zeta: float, want_grad: bool,
           ) -> tuple[Array, Array, Array | None, Array | None, Array]:
    """``(loss, lse, grad, p, nls)`` for dense coefficients `a` (..., C)."""
    st = rw.row_stats(z)
    lse = st.lse
    xe, dh, dl, top = rw.terms(z, st)
    nls = _nls(xe, dh, dl, top, st)
    terms = jnp.where(a == 0, 0.0, a * nls)  # 0 * inf = 0: no mass, no term
    loss = ar.sum_nonneg(terms, axis=-1)
    if zeta:
        loss = loss + jnp.where(counted, zeta * lse * lse, 0.0)
    nan_row = jnp.isnan(st.m[..., 0]) & counted
    loss = jnp.where(nan_row, jnp.nan, loss)
    if not want_grad:
        return loss, lse, None, None, nls
    p = rw.probs(z, st)
    zl = _zl(lse, counted, zeta) if zeta else 0.0
    W = ar.sum_nonneg(a, axis=-1, keepdims=True)
    g = p * (W + zl) - a
    # at a maximum j: W' - a_j summed directly (the other maxima's a, then the rest)
    rest = ar.sum_nonneg(jnp.where(top, 0.0, a), axis=-1, keepdims=True)
    at_top = jnp.sum(jnp.where(top, a, 0.0), axis=-1, keepdims=True)
    g = jnp.where(top, _gk(st, (rest + (at_top - a)) + zl, a), g)
    return loss, lse, _finish_grad(g, st, nan_row, counted), p, jnp.where(keep, nls, 0.0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(4,))
def dense_rows(z: Array, a: Array, counted: Array, keep: Array, zeta: float,
               ) -> tuple[Array, Array]:
    """``(loss, lse)`` per row of logits `z` (..., C) for coefficients `a` (..., C) >= 0.

    `counted` marks the rows that take part (the others must have ``a = 0``); `keep`
    (broadcastable to `z`) the classes whose coefficient is a free input (a class left
    out, or a row not counted, gets derivative 0 with respect to its coefficient).
    """
    loss, lse, *_ = _dense(z, a, counted, keep, zeta, want_grad=False)
    return loss, lse


def _dense_rows_jvp(zeta: float, primals: tuple[Array, ...], tangents: tuple[Any, ...],
                    ) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    z, a, counted, keep = primals
    dz, da, _, _ = tangents
    want = not _zero(dz)
    loss, lse, g, p, nls = _dense(z, a, counted, keep, zeta, want_grad=want)
    dloss, dlse = _along(dz, loss, lse, g, p)
    if not _zero(da):
        # d loss / d a_c = -log softmax_c (the classes and rows that use it)
        dloss = dloss + _sum_last(jnp.where(counted[..., None], nls, 0.0) * da)
    return (loss, lse), (dloss, dlse)


dense_rows.defjvp(_dense_rows_jvp, symbolic_zeros=True)
