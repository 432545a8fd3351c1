r"""Categorical cross-entropy rows in float64, every option, value and gradient: the oracle.

Notation for row *i* (class axis last, C classes): logits :math:`x`, soft-capped logits
:math:`z = c\tanh(x/c)` (no cap: :math:`z = x`), target distribution :math:`t`, smoothed
target :math:`t' = (1-\varepsilon)t + \varepsilon/C`, class weights :math:`w` (1 by default),
coefficients :math:`a_c = w_c t'_c` (all 0 for an ignored row), :math:`W = \sum_c a_c`,
z-loss coefficient :math:`\zeta`.  Then

.. math::

    \ell = \sum_c a_c\,(-\log\operatorname{softmax}(z)_c) + \zeta\,\mathrm{lse}^2, \qquad
    \frac{\partial\ell}{\partial z_c} = p_c\,(W + 2\zeta\,\mathrm{lse}) - a_c, \qquad
    \frac{\partial\ell}{\partial x_c} = \frac{\partial\ell}{\partial z_c}\,
        \operatorname{sech}^2(x_c / c)

with :math:`-\log\operatorname{softmax}(z)_c = (L - dh_c) - dl_c` (see :mod:`.rows`): two
terms >= 0, so a loss of 1e-18 keeps all its digits.  The z-loss term is never weighted.

Nothing here validates: callers pass float64 arrays, labels already checked against
``[0, C)``, and a ``counted`` mask for ``ignore_index``.  Reductions are in :mod:`.reduce`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from crossentropy._core.rows import Rows, decompose, inf_share, probs
from crossentropy._core.scratch import Scratch
from crossentropy._core.terms import xlogy_terms

__all__ = [
    "Target",
    "logits_rows",
    "nll_rows",
    "normalised_rows",
    "row_weights",
    "softcap",
    "target_coefficients",
]

F64 = npt.NDArray[np.float64]
Ints = npt.NDArray[np.intp]
Bools = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Target:
    """Categorical targets of the rows ``(..., C)``: class indices or probability rows.

    ``labels`` (index targets) holds the class of each row, 0 where the row is not counted;
    ``probs`` (probability targets) holds each row's distribution; exactly one is given.
    ``counted`` marks the rows that take part (False where the label is ``ignore_index``);
    ``classes`` (optional, broadcastable to the prediction) the classes that take part in
    each row -- the others have probability 0 and no target coefficient (optax's ``where``).
    """

    counted: Bools
    labels: Ints | None = None
    probs: F64 | None = None
    classes: Bools | None = None

    def rows(self, sl: slice) -> Target:
        """The targets of rows ``sl`` of a 2-d layout (row shape flattened)."""
        def cut(a: Any, extra: int) -> Any:
            if a is None:
                return None
            lead = a.shape[: a.ndim - extra]
            return a.reshape(math.prod(lead), *a.shape[a.ndim - extra :])[sl]
        return Target(counted=cut(self.counted, 0), labels=cut(self.labels, 0),
                      probs=cut(self.probs, 1), classes=cut(self.classes, 1))


def softcap(x: F64, cap: float | None) -> tuple[F64, F64 | None]:
    r"""``(z, dz/dx)`` for the soft cap :math:`z = c \tanh(x / c)` (Gemma 2); ``(x, None)``
    without a cap.

    :math:`dz/dx = 1 - \tanh^2 u = \operatorname{sech}^2 u = 4e^{-2|u|}/(1 + e^{-2|u|})^2`,
    u = x / c: written with :math:`e^{-2|u|} \le 1` there is no cancellation (``1 - t*t``
    loses every digit once tanh rounds to 1) and no overflow (``cosh`` overflows at 710).
    """
    if cap is None:
        return x, None
    u = x / cap
    with np.errstate(under="ignore", invalid="ignore"):
        q = np.exp(-2.0 * np.abs(u))
        d: F64 = 4.0 * q / ((1.0 + q) * (1.0 + q))
        d = np.where(np.isnan(u), np.nan, d)
    return cap * np.tanh(u), d


def target_coefficients(
    t: Target, num_classes: int, weight: F64 | None, label_smoothing: float
) -> F64:
    """Dense ``a[..., c] = w_c t'_c``, zero rows where not counted."""
    if t.probs is not None:
        dist = t.probs
    else:
        assert t.labels is not None
        dist = np.zeros((*t.counted.shape, num_classes))
        np.put_along_axis(dist, t.labels[..., None], 1.0, axis=-1)
    if label_smoothing and num_classes:
        # label smoothing: t' = (1 - eps) t + eps / C
        dist = (1.0 - label_smoothing) * dist + label_smoothing / num_classes
    a = dist if weight is None else dist * weight
    keep = t.counted[..., None] if t.classes is None else t.counted[..., None] & t.classes
    out: F64 = np.where(keep, a, 0.0)
    return out


def row_weights(t: Target, weight: F64 | None) -> F64:
    r"""The weight :math:`\omega_i = \sum_c w_c t_{ic}` of each row's *unsmoothed* target
    (``weight[y_i]`` for an index target), 0 for rows that are not counted: the divisor
    of a weighted mean."""
    if t.probs is not None:
        with np.errstate(invalid="ignore"):
            om = np.ones(t.counted.shape) if weight is None else np.sum(t.probs * weight, -1)
    else:
        assert t.labels is not None
        om = np.ones(t.counted.shape) if weight is None else weight[t.labels]
    out: F64 = np.where(t.counted, om, 0.0)
    return out



def logits_rows(
    x: F64,
    t: Target,
    weight: F64 | None = None,
    *,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    cap: float | None = None,
    want_grad: bool = False,
    exact: bool = True,
    scratch: Scratch | None = None,
) -> tuple[F64, F64, F64 | None]:
    """Per-row ``(loss, lse, dloss/dx)`` of logits `x` (``(..., C)``, size > 0), in nats.

    ``exact=False`` for float32/float16 inputs (see :func:`.rows.decompose`).  With a
    `scratch` (:mod:`.scratch`) the gradient may be one of its buffers: copy it out before
    the next call.

    The loss is 0 and the gradient row 0 where the row is not counted; a NaN anywhere in a
    counted row makes its loss (and gradient row) NaN.  ``lse`` is the log-sum-exp of the
    soft-capped row, every row included.
    """
    C = x.shape[-1]
    if t.classes is not None:  # classes left out: logit -inf, probability 0
        x = np.where(t.classes, x, -np.inf)
    z, dzdx = softcap(x, cap)
    if t.classes is not None and cap is not None:
        # after the cap too: cap tanh(-inf / cap) = -cap would give a left-out class the
        # probability e^-cap / sum (its derivative there is 0: the gradient stays 0)
        z = np.where(t.classes, z, -np.inf)
    r = decompose(z, exact, scratch)
    counted = t.counted
    if t.labels is not None and not label_smoothing and t.classes is None:
        loss, lse, g = _index_rows(r, z, t.labels, counted, weight, z_loss, want_grad, scratch)
        return loss, lse, (g if g is None or dzdx is None else g * dzdx)
    a = target_coefficients(t, C, weight, label_smoothing)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = (r.m + r.L)[..., 0]
        lse = np.where(r.pos_inf[..., 0], np.inf, lse)
        # -log softmax_c = (L - dh_c) - dl_c, both terms >= 0 (see rows.Rows)
        nls = (r.L - r.dh) - r.dl
        share = inf_share(z)
        nls = np.where(r.pos_inf, -np.log(share), nls)
        nls = np.where(r.neg_inf, np.nan, nls)
        loss = np.sum(xlogy_terms(a, nls), axis=-1)
        if z_loss:
            loss = loss + np.where(counted, z_loss * lse * lse, 0.0)  # PaLM z-loss, unweighted
        # A NaN anywhere in a counted row (its max is NaN) makes its loss NaN, even in a
        # class with no target mass; rows not counted are not looked at (as if sliced out).
        nan_row = np.isnan(r.m[..., 0]) & counted
        loss = np.where(nan_row, np.nan, loss)
    if not want_grad:
        return loss, lse, None
    g = _logits_grad(r, a, share, lse, counted, nan_row, z_loss)
    if dzdx is not None:
        g = g * dzdx  # chain rule through the soft cap
    return loss, lse, g


def _index_rows(
    r: Rows,
    z: F64,
    labels: Ints,
    counted: Bools,
    weight: F64 | None,
    z_loss: float,
    want_grad: bool,
    scratch: Scratch | None = None,
) -> tuple[F64, F64, F64 | None]:
    """:func:`logits_rows` for one-hot targets, a_c = w_y [c = y], without the dense (..., C)
    coefficients: the same formulas with the sums over c reduced to their one term."""
    y = labels[..., None]
    wy = np.ones(counted.shape) if weight is None else weight[labels]
    wy = np.where(counted, wy, 0.0)[..., None]
    special = bool(r.pos_inf.any() or r.neg_inf.any())
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = (r.m + r.L)[..., 0]
        lse = np.where(r.pos_inf[..., 0], np.inf, lse)
        # -log softmax_y = (L - dh_y) - dl_y, both terms >= 0 (see rows.Rows)
        dl_y = np.take_along_axis(r.dl, y, axis=-1) if isinstance(r.dl, np.ndarray) else 0.0
        nls_y = (r.L - np.take_along_axis(r.dh, y, axis=-1)) - dl_y
        share = inf_share(z) if special else None
        if share is not None:
            nls_y = np.where(r.pos_inf, -np.log(np.take_along_axis(share, y, axis=-1)), nls_y)
            nls_y = np.where(r.neg_inf, np.nan, nls_y)
        loss = xlogy_terms(wy, nls_y)[..., 0]
        if z_loss:
            loss = loss + np.where(counted, z_loss * lse * lse, 0.0)  # PaLM z-loss, unweighted
        nan_row = np.isnan(r.m[..., 0]) & counted  # a NaN anywhere in a counted row
        loss = np.where(nan_row, np.nan, loss)
        if not want_grad:
            return loss, lse, None
        zl = np.where(counted, 2.0 * z_loss * lse, 0.0)[..., None] if z_loss else 0.0
        Wz = wy + zl  # W = sum_c a_c = w_y
        g = probs(r, scratch)
        g *= Wz  # p (W + 2 zeta lse) ...
        g_y = np.take_along_axis(g, y, axis=-1) - wy  # ... - a_c, nonzero at y only
        np.put_along_axis(g, y, g_y, axis=-1)
        # the argmax k as in _logits_grad: ((W' - a_k) - a_k s) / (1 + s), with
        # W' - a_k = [y != k] w_y + 2 zeta lse and a_k = [y == k] w_y
        at_k = y == r.k
        gk = ((np.where(at_k, 0.0, wy) + zl) - np.where(at_k, wy, 0.0) * r.s) / (1.0 + r.s)
        np.put_along_axis(g, r.k, gk, axis=-1)
        if share is not None:
            onehot = np.arange(z.shape[-1]) == y
            g = np.where(r.pos_inf, share * Wz - np.where(onehot, wy, 0.0), g)
            g = np.where(r.neg_inf, np.nan, g)
        if nan_row.any():
            g = np.where(nan_row[..., None], np.nan, g)
        if not counted.all():
            g = np.where(counted[..., None], g, 0.0)  # rows not counted: zero gradient
    return loss, lse, g


def _logits_grad(
    r: Rows, a: F64, share: F64, lse: F64, counted: Bools, nan_row: Bools, z_loss: float
) -> F64:
    """d loss / dz = p (W + 2 zeta lse) - a, with the argmax entry formed without cancellation."""
    C = a.shape[-1]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        W = np.sum(a, axis=-1, keepdims=True)
        zl = np.where(counted, 2.0 * z_loss * lse, 0.0)[..., None] if z_loss else 0.0
        Wz = W + zl
        p = probs(r)  # e^(z - m) / (1 + s), the rounding of 1 + s put back
        g = p * Wz - a
        # At the argmax k, p_k = 1 / (1 + s), so p_k W' - a_k = ((W' - a_k) - a_k s) / (1 + s)
        # with W' - a_k summed directly: exact where a one-hot target meets a confident
        # prediction (p_k - 1 = -s / (1 + s) instead of 1 - 1 + tiny).
        ak = np.take_along_axis(a, r.k, axis=-1)
        a_rest = np.sum(a, axis=-1, keepdims=True, where=np.arange(C) != r.k) + zl
        gk = (a_rest - ak * r.s) / (1.0 + r.s)
        np.put_along_axis(g, r.k, gk, axis=-1)
        g = np.where(r.pos_inf, share * Wz - a, g)
        g = np.where(r.neg_inf, np.nan, g)
        g = np.where(nan_row[..., None], np.nan, g)
        out: F64 = np.where(counted[..., None], g, 0.0)  # rows not counted: zero gradient
    return out


def nll_rows(
    x: F64, t: Target, weight: F64 | None = None, *, want_grad: bool = False
) -> tuple[F64, F64 | None]:
    r"""Per-row ``(loss, dloss/dx)`` of the negative log-likelihood ``-w_y x_y`` (PyTorch's
    ``nll_loss``: `x` is taken as log-probabilities as it is, unchecked); index targets."""
    assert t.labels is not None
    wy = np.ones(t.counted.shape) if weight is None else weight[t.labels]
    wy = np.where(t.counted, wy, 0.0)
    xy = np.take_along_axis(x, t.labels[..., None], axis=-1)[..., 0]
    # 0 * (-inf) = 0: no mass, no term; + 0.0 turns -0.0 (x_y = 0) into 0.0
    loss: F64 = np.where(wy == 0.0, 0.0, -(wy * xy) + 0.0)
    if not want_grad:
        return loss, None
    g = np.zeros(x.shape)
    np.put_along_axis(g, t.labels[..., None], -wy[..., None], axis=-1)
    return loss, g


def normalised_rows(
    q: F64,
    t: Target,
    weight: F64 | None = None,
    *,
    log: bool,
    label_smoothing: float = 0.0,
    want_grad: bool = False,
) -> tuple[F64, F64 | None]:
    r"""Per-row ``(loss, dloss/dq)`` from probabilities (``log=False``) or log-probabilities.

    .. math:: \ell = -\sum_c a_c \log q_c, \qquad
              \frac{\partial\ell}{\partial q_c} = -\frac{a_c}{q_c}, \qquad
              \frac{\partial\ell}{\partial \log q_c} = -a_c

    (0 where :math:`a_c = 0`).  ``-a / q`` is one division, so a subnormal q with a small
    coefficient stays finite where ``a * (1 / q)`` would overflow.
    """
    a = target_coefficients(t, q.shape[-1], weight, label_smoothing)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        nl = -q if log else -np.log(q)  # -log q_c (+inf where q_c = 0)
        loss = np.sum(xlogy_terms(a, nl), axis=-1)
        # a NaN anywhere in a counted row makes its loss NaN (rows not counted are skipped)
        nan_row = np.isnan(q).any(axis=-1) & t.counted
        loss = np.where(nan_row, np.nan, loss)
        if not want_grad:
            return loss, None
        g = np.where(a == 0.0, 0.0, -a if log else -a / q)
        g = np.where(nan_row[..., None], np.nan, g)
    return loss, g
