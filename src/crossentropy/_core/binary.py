r"""Binary cross-entropy in float64, elementwise, value and gradient: the oracle.

With label :math:`y \in [0, 1]` (after smoothing :math:`y' = (1-\varepsilon) y + \varepsilon/2`)
and positive weight *p*:

.. math::

    \ell(x) = p\,y \operatorname{softplus}(-x) + (1 - y)\operatorname{softplus}(x), \qquad
    \ell'(x) = (1 - y)\,\sigma(x) - p\,y\,\sigma(-x)

from logits (two terms >= 0: no cancellation, so ``x = -40, y = 0`` gives 4.25e-18), and

.. math::

    \ell(q) = -\bigl(p\,y \log q + (1 - y)\operatorname{log1p}(-q)\bigr), \qquad
    \ell'(q) = \frac{1 - y}{1 - q} - \frac{p\,y}{q}

from probabilities, with no clipping.  A term whose coefficient is 0 adds exactly 0.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from crossentropy._core.sigmoid import sigmoid, softplus
from crossentropy._core.terms import xlogy_terms

__all__ = ["from_logits", "from_probs", "smooth_labels"]

F64 = npt.NDArray[np.float64]


def smooth_labels(y: F64, label_smoothing: float) -> F64:
    """Label smoothing for two classes: y' = (1 - eps) y + eps / 2."""
    if not label_smoothing:
        return y
    out: F64 = (1.0 - label_smoothing) * y + 0.5 * label_smoothing
    return out



def from_logits(
    x: F64, y: F64, pos_weight: F64 | None = None, *, want_grad: bool = False
) -> tuple[F64, F64 | None]:
    """Elementwise ``(loss, dloss/dx)`` from logits (y already smoothed)."""
    with np.errstate(invalid="ignore", over="ignore"):
        py = y if pos_weight is None else pos_weight * y
        ny = 1.0 - y
        loss = xlogy_terms(py, softplus(-x)) + xlogy_terms(ny, softplus(x))
        if not want_grad:
            return loss, None
        # d softplus(x)/dx = sigmoid(x);  d softplus(-x)/dx = -sigmoid(-x)
        grad = xlogy_terms(ny, sigmoid(x)) - xlogy_terms(py, sigmoid(-x))
    return loss, grad


def from_probs(
    q: F64, y: F64, pos_weight: F64 | None = None, *, want_grad: bool = False
) -> tuple[F64, F64 | None]:
    """Elementwise ``(loss, dloss/dq)`` from probabilities (y already smoothed)."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        py = y if pos_weight is None else pos_weight * y
        ny = 1.0 - y
        # log(1 - q) = log1p(-q): exact for small q, and -q is exact
        loss = xlogy_terms(py, -np.log(q)) + xlogy_terms(ny, -np.log1p(-q))
        if not want_grad:
            return loss, None
        # (1 - y) / (1 - q) - p y / q, each one division (y / q stays exact where 1 / q
        # would overflow), and 0 where its coefficient is 0
        grad = np.where(ny == 0.0, 0.0, ny / (1.0 - q)) - np.where(py == 0.0, 0.0, py / q)
    return loss, grad
