"""Row-wise cross-entropy written with torch operations.

Two versions of the same per-row loss

.. math::

    z = c \\tanh(x / c) \\;(\\text{soft cap } c), \\quad
    \\mathrm{lse}_i = \\log \\sum_c e^{z_{ic}}, \\quad
    \\ell_i = \\sum_c a_{ic} (\\mathrm{lse}_i - z_{ic}) + \\zeta\\, \\mathrm{lse}_i^2,

with :math:`a_{ic} = w_c t'_{ic}` (class weight times the smoothed target, 0 for ignored
rows):

* :func:`reference_rows` is differentiable by autograd (any order).  It is the path for
  probability targets, for second derivatives, and for the GPU fallback;
* :func:`rows_with_grad_` is the fused form used by the chunked linear cross-entropy on
  devices without the compiled CPU kernel: it overwrites the logits with the gradient.

The CPU fast path for index targets is :func:`crossentropy._cpu.cross_entropy_rows`.
"""

from __future__ import annotations

import torch
from torch import Tensor


def softcap_(x: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(x / cap)`` (Gemma 2 soft capping); `x` itself when cap is None."""
    if cap is None:
        return x
    return torch.tanh(x / cap) * cap


def target_coefficients(
    target: Tensor,
    num_classes: int,
    *,
    prob: bool,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor | None]:
    """Dense ``a[i, c] = w_c t'_ic`` and the counted-row mask (None for probability targets).

    ``t' = (1 - eps) t + eps / C`` is the smoothed target; ignored rows get all zeros.
    """
    counted: Tensor | None
    if prob:
        t = target.to(dtype)
        counted = None
    else:
        counted = target != ignore_index
        safe = torch.where(counted, target, torch.zeros_like(target))
        t = torch.nn.functional.one_hot(safe, num_classes).to(dtype)
    if label_smoothing:
        # label smoothing: t' = (1 - eps) t + eps / C
        t = t * (1.0 - label_smoothing) + label_smoothing / num_classes
    if weight is not None:
        t = t * weight.to(dtype)
    if counted is not None:
        t = t * counted.unsqueeze(1).to(dtype)
    return t, counted


def reference_rows(
    x: Tensor,
    target: Tensor,
    *,
    prob: bool,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor]:
    """Per-row ``(loss, lse)`` of (M, C) logits `x`, in x's dtype, differentiable by autograd.

    Each row's loss is ``sum_c a_c (lse - z_c) + z_loss * lse**2``; a term whose
    coefficient ``a_c`` is 0 adds exactly 0 (even when ``z_c = -inf``).
    """
    z = softcap_(x, softcap)
    lse = torch.logsumexp(z, dim=1)
    a, counted = target_coefficients(
        target, x.shape[1], prob=prob, weight=weight, ignore_index=ignore_index,
        label_smoothing=label_smoothing, dtype=x.dtype,
    )
    # -log softmax(z)_c = lse - z_c
    nls = lse.unsqueeze(1) - z
    loss = torch.where(a == 0, torch.zeros_like(nls), a * nls).sum(dim=1)
    if z_loss:
        zl = z_loss * lse * lse  # PaLM z-loss: z_loss * lse^2 per counted row
        loss = loss + (zl if counted is None else torch.where(counted, zl, 0.0))
    return loss, lse


def rows_with_grad_(
    x: Tensor,
    target: Tensor,
    *,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad_scale: float,
) -> tuple[Tensor, Tensor]:
    """Per-row ``(loss, lse)`` of index targets; `x` (M, C) is overwritten by the gradient.

    ``x[i]`` becomes ``grad_scale * d loss_i / d x_i`` (0 for ignored rows), computed as

    .. math:: \\frac{\\partial \\ell_i}{\\partial z_{ic}} = p_{ic}\\,(W_i + 2\\zeta\\,
              \\mathrm{lse}_i) - a_{ic}, \\qquad W_i = \\sum_c a_{ic},

    times :math:`dz/dx = (1 - t)(1 + t)` under a soft cap (:math:`t = \\tanh(x/c)`).
    """
    C = x.shape[1]
    counted = target != ignore_index
    safe = torch.where(counted, target, torch.zeros_like(target)).unsqueeze(1)
    cf = counted.to(x.dtype)
    dzdx: Tensor | None = None
    if softcap is not None:
        t = torch.tanh(x / softcap)
        dzdx = (1.0 - t) * (1.0 + t)  # 1 - tanh^2, factored: no cancellation near |t| = 1
        x.copy_(t.mul_(softcap))
    lse = torch.logsumexp(x, dim=1)
    eps = label_smoothing
    w = None if weight is None else weight.to(x.dtype)
    wy = torch.ones_like(cf) if w is None else w[safe.squeeze(1)]
    zy = x.gather(1, safe).squeeze(1)
    # sum_c a_c z_c = (1 - eps) w_y z_y + eps / C * sum_c w_c z_c
    az = (1.0 - eps) * wy * zy
    wsum = float(C) if w is None else w.sum()
    if eps:
        az = az + (eps / C) * (x.sum(1) if w is None else x @ w)
    # W = sum_c a_c = (1 - eps) w_y + eps / C * sum_c w_c
    W = ((1.0 - eps) * wy + (eps / C) * wsum) * cf
    loss = (W * lse - az * cf) if eps or w is not None else torch.where(counted, lse - zy, 0.0)
    Wz = W
    if z_loss:
        loss = loss + z_loss * lse * lse * cf  # z-loss on counted rows
        Wz = W + 2.0 * z_loss * lse * cf
    # gradient: p (W + 2 zeta lse) - a, written over x
    x.sub_(lse.unsqueeze(1)).exp_().mul_((Wz * grad_scale).unsqueeze(1))
    if eps:
        smooth = (eps / C) * grad_scale
        x.sub_(cf.unsqueeze(1) * (smooth if w is None else smooth * w))
    x.scatter_add_(1, safe, (-(1.0 - eps) * grad_scale * wy * cf).unsqueeze(1))
    if dzdx is not None:
        x.mul_(dzdx)
    return loss, lse
