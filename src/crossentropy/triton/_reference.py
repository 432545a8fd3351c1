r"""Pure-PyTorch cross-entropy with every option of the kernels: the fallback and the oracle.

It materialises the logits and lets autograd differentiate through them, so it is slow and
memory-hungry but obviously right.  ``compute_dtype=torch.float64`` makes it the float64
ground truth the kernels are tested against; the public functions use it (in float32, or
float64 for float64 inputs) when the Triton kernels cannot run.

.. math::

    z' = s \tanh(z / s), \quad \mathrm{lse} = \log\sum_c e^{z'_c}, \quad
    \ell = (1-\varepsilon) w_y (\mathrm{lse} - z'_y)
      + \tfrac{\varepsilon}{C}\textstyle\sum_c w_c (\mathrm{lse} - z'_c)
      + \lambda\, w_y\, \mathrm{lse}^2

(``s`` the softcap, ``eps`` the label smoothing, ``lambda`` the z-loss coefficient; an
ignored token contributes 0 and ``mean`` divides by ``sum w_y`` over counted tokens).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["cross_entropy_reference", "linear_cross_entropy_reference"]


def cross_entropy_reference(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    base: float | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    compute_dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of ``input`` [N, C] against class indices ``target`` [N], in PyTorch.

    Arguments are as for :func:`crossentropy.triton.cross_entropy` (not re-validated here);
    ``compute_dtype`` (default: float32, or float64 for float64 input) is the precision of
    every operation.  The loss has the input's dtype, the lse is float32 (float64 when
    computing in float64).

    >>> import torch
    >>> x = torch.tensor([[1.0, 2.0, 3.0]])
    >>> float(cross_entropy_reference(x, torch.tensor([2])))
    0.40761
    """
    import torch

    if compute_dtype is None:
        compute_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    z = input.to(compute_dtype)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    C = z.shape[-1]
    # lse = m + log1p(r) with m the row maximum and r the sum of exp(z - m) over all but
    # one maximal element, so that lse - z_y = (m - z_y) + log1p(r) is a sum of two terms
    # >= 0 (no cancellation when the prediction is confident).
    top = z.max(dim=-1, keepdim=True)
    e = torch.exp(z - top.values).scatter(-1, top.indices, 0.0)
    m = top.values[:, 0]
    l1p = torch.log1p(e.sum(dim=-1))
    lse = m + l1p
    counted = target != ignore_index
    y = torch.where(counted, target, 0).to(torch.long)
    in_range = (y >= 0) & (y < C)
    y = torch.where(in_range, y, 0)
    w = (
        torch.ones(C, dtype=compute_dtype, device=z.device)
        if weight is None
        else weight.to(compute_dtype)
    )
    wy = torch.where(counted, w[y], 0.0)
    zy = z.gather(-1, y[:, None])[:, 0]
    loss = (1.0 - label_smoothing) * wy * ((m - zy) + l1p)
    if label_smoothing:
        smooth = (w * (lse[:, None] - z)).sum(-1)
        loss = loss + torch.where(counted, (label_smoothing / C) * smooth, 0.0)
    if z_loss:
        loss = loss + torch.where(counted, z_loss * lse * lse, 0.0)  # not weighted by w_y
    loss = torch.where(counted & ~in_range, math.nan, loss)
    inv_ln = 1.0 if base is None else 1.0 / math.log(base)
    if reduction == "none":
        out = loss * inv_ln
    elif reduction == "sum":
        out = loss.sum() * inv_ln
    else:
        # sum / sum(w_y); 0 / 0 = NaN when nothing is counted (as torch), with a zero
        # gradient (as torch): divide by 1 there and add the NaN as a constant.
        wsum = wy.sum()
        empty = wsum == 0
        out = loss.sum() * inv_ln / torch.where(empty, 1.0, wsum)
        out = out + torch.where(empty, math.nan, 0.0)
    out = out.to(input.dtype)
    lse_out = lse.detach() if compute_dtype == torch.float64 else lse.detach().float()
    return (out, lse_out) if return_lse else out


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    compute_dtype: torch.dtype | None = None,
    **options: object,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``cross_entropy_reference(hidden @ linear_weight.T + linear_bias, target, **options)``,
    the logits computed in ``compute_dtype`` (default float32, float64 for float64 input).

    >>> import torch
    >>> h = torch.tensor([[1.0, 0.0]]); W = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    >>> float(linear_cross_entropy_reference(h, W, torch.tensor([0])))
    0.31326
    """
    import torch

    if compute_dtype is None:
        compute_dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = hidden.to(compute_dtype) @ linear_weight.to(compute_dtype).T
    if linear_bias is not None:
        logits = logits + linear_bias.to(compute_dtype)
    out = cross_entropy_reference(
        logits, target, compute_dtype=compute_dtype, **options  # type: ignore[arg-type]
    )
    if isinstance(out, tuple):
        return out[0].to(hidden.dtype), out[1]
    return out.to(hidden.dtype)
