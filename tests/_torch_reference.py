"""Materialised-logits reference for the linear cross-entropy tests (torch functions)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def linear_ce_reference(h, W, b, t, *, reduction, weight, eps, z_loss, softcap, base=None):
    """(loss, lse) of h @ W.T + b through F.cross_entropy plus the z-loss, written out with
    torch's own functions (index targets, ignore_index -100)."""
    z = h @ W.T + (0 if b is None else b)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    lse = torch.logsumexp(z, dim=1)
    per = F.cross_entropy(z, t, weight, label_smoothing=eps, reduction="none")
    per = per + z_loss * lse**2 * (t != -100)
    if reduction == "none":
        out = per
    elif reduction == "sum":
        out = per.sum()
    else:
        counted = t != -100
        wy = counted.double() if weight is None else weight[torch.where(counted, t, 0)] * counted
        out = per.sum() / wy.sum()
    return out / (1.0 if base is None else math.log(base)), lse
