r"""Entropy and Kullback-Leibler divergence of probability rows (class axis last), float64.

.. math::

    H(p) = -\sum_c p_c \log p_c, \quad \frac{\partial H}{\partial p_c} = -(\log p_c + 1);
    \qquad
    D(p\,\|\,q) = \sum_c p_c \log\frac{p_c}{q_c}, \quad
    \frac{\partial D}{\partial q_c} = -\frac{p_c}{q_c}

with :math:`0 \log 0 = 0`.  A NaN anywhere in a row makes that row's value and gradient NaN.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from crossentropy._core.terms import xlogy_terms

__all__ = ["entropy", "kl_divergence"]

F64 = npt.NDArray[np.float64]



def entropy(p: F64, *, want_grad: bool = False) -> tuple[F64, F64 | None]:
    """``(H, dH/dp)`` of rows p."""
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(p)
        h = np.sum(xlogy_terms(p, -logp), axis=-1)
        if not want_grad:
            return h, None
        g = -(logp + 1.0)
        g = np.where(np.isnan(p).any(axis=-1, keepdims=True), np.nan, g)
    return h, g


def kl_divergence(p: F64, q: F64, *, want_grad: bool = False) -> tuple[F64, F64 | None]:
    """``(D(p || q), dD/dq)`` of rows p, q."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = p / q
        close = (ratio > 0.5) & (ratio < 2.0)
        # log(p / q): log1p((p - q) / q) near 1 (Sterbenz: p - q exact), else log p - log q
        lr = np.where(close, np.log1p((p - q) / q), np.log(p) - np.log(q))
        d = np.sum(xlogy_terms(p, lr), axis=-1)
        # a NaN anywhere in p or q makes the row's value and gradient NaN (even where p = 0)
        nan_row = np.any(np.isnan(p) | np.isnan(q), axis=-1)
        d = np.where(nan_row, np.nan, d)
        if not want_grad:
            return d, None
        # -p / q as one division (p = q = 5e-324 gives -1, not -inf), 0 where p = 0
        g = np.where(p == 0.0, 0.0, -p / q)
        g = np.where(nan_row[..., None], np.nan, g)
    return d, g
