"""The exact NumPy version of :func:`crossentropy._cpu.cross_entropy_rows`.

It is the oracle for the numba kernels (and the fallback when numba is missing): dense,
vectorised, computed in float64 on top of :func:`crossentropy.activations._rows`, with
the same identities as :func:`crossentropy.cross_entropy`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from crossentropy.activations import _probs, _rows

F64 = npt.NDArray[np.float64]


def softcap64(x: F64, cap: float) -> tuple[F64, F64]:
    """Return ``(z, dz/dx)`` for the Gemma 2 soft cap ``z = cap * tanh(x / cap)``.

    dz/dx = 1 - tanh^2(u) = 1 / cosh^2(u), u = x / cap: the second form keeps its digits
    where 1 - tanh^2 cancels (|u| large, tanh(u) close to 1).
    """
    u = x / cap
    with np.errstate(over="ignore"):
        ch = np.cosh(u)
        return cap * np.tanh(u), 1.0 / (ch * ch)


def cross_entropy_rows_numpy(
    logits: npt.NDArray[np.floating],
    target: npt.NDArray[np.integer],
    *,
    weight: F64 | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad: npt.NDArray[np.floating] | None = None,
    grad_scale: float = 1.0,
) -> tuple[F64, F64]:
    """NumPy implementation of :func:`crossentropy._cpu.cross_entropy_rows` (same contract)."""
    assert logits.ndim == 2 and target.shape == (logits.shape[0],)
    N, C = logits.shape
    x = np.array(logits, dtype=np.float64)  # a copy: `grad` may be `logits` itself
    dzdx = None
    if softcap is not None:
        assert softcap > 0
        x, dzdx = softcap64(x, float(softcap))
    counted = target != ignore_index
    if N == 0 or C == 0:
        lse = np.full(N, -np.inf)
        if grad is not None:
            grad[...] = 0
        return np.where(counted, np.nan, 0.0), lse
    idx = np.where(counted, target, 0).astype(np.intp)
    eps = float(label_smoothing)
    # a[i, c] = w_c t'_ic, with t' = (1 - eps) onehot(y_i) + eps / C: the coefficient of
    # -log softmax(z_i)_c in row i's loss; all 0 for ignored rows.
    t = np.zeros((N, C))
    np.put_along_axis(t, idx[:, None], 1.0, axis=-1)
    if eps:
        t = (1.0 - eps) * t + eps / C
    a = t if weight is None else t * np.asarray(weight, dtype=np.float64)
    a = np.where(counted[:, None], a, 0.0)
    r = _rows(x)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lse = (r.m + r.L)[:, 0]  # log-sum-exp = m + log1p(s)
        # -log softmax_c = (L - dh_c) - dl_c, both terms >= 0 (see activations._Rows)
        nls = (r.L - r.dh) - r.dl
        hit = x == np.inf
        share = hit / np.sum(hit, axis=-1, keepdims=True)
        nls = np.where(r.pos_inf, -np.log(share), nls)
        nls = np.where(r.neg_inf, np.nan, nls)
        loss = np.sum(np.where(a == 0.0, 0.0, a * nls), axis=-1)
        if z_loss:
            loss = loss + np.where(counted, z_loss * lse * lse, 0.0)  # PaLM z-loss
    if grad is None:
        return loss, lse
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # d/dz_c [sum_c' a_c' (lse - z_c') + zl lse^2] = p_c (W + 2 zl lse) - a_c, W = sum a
        W = np.sum(a, axis=-1, keepdims=True)
        Wz = W + np.where(counted, 2.0 * z_loss * lse, 0.0)[:, None] if z_loss else W
        p = _probs(r)  # e / (1 + s), the rounding of 1 + s put back
        g = p * Wz - a
        # At the argmax k, p_k = 1 / (1 + s): p_k W' - a_k = ((W' - a_k) - a_k s) / (1 + s),
        # with W' - a_k summed directly (exact for one-hot targets and confident rows).
        ak = np.take_along_axis(a, r.k, axis=-1)
        a_rest = np.sum(a, axis=-1, keepdims=True, where=np.arange(C) != r.k)
        if z_loss:
            a_rest = a_rest + np.where(counted, 2.0 * z_loss * lse, 0.0)[:, None]
        gk = (a_rest - ak * r.s) / (1.0 + r.s)
        np.put_along_axis(g, r.k, gk, axis=-1)
        g = np.where(r.pos_inf, share * Wz - a, g)
        g = np.where(r.neg_inf, np.nan, g)
        if dzdx is not None:
            g = g * dzdx  # chain rule through the soft cap
        g = np.where(counted[:, None], g * grad_scale, 0.0)
    grad[...] = g
    return loss, lse
