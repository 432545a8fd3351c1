"""autograd Functions (layer 3 of 4) over the launchers.

No function here reads a device value on the host: weight sums, means and the scale of the
gradient stay tensors on the device (no ``.item()``), so a step can be captured in a CUDA
graph.  A mean over zero counted targets is ``0 / 0 = NaN`` (as in PyTorch) with a zero
gradient (as in PyTorch).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from crossentropy.triton import _launch

__all__ = ["CrossEntropyFunction", "LinearCrossEntropyFunction"]


def _target_weights(
    target: torch.Tensor, weight: torch.Tensor | None, ignore_index: int, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(counted, in_range, w_y)``: float32 ``w_y`` is 0 for ignored targets."""
    counted = target != ignore_index
    in_range = (target >= 0) & (target < num_classes)
    y = torch.where(in_range, target, 0)
    if weight is None:
        wy = counted.to(torch.float32)
    else:
        wy = torch.where(counted, weight.to(torch.float32)[y], 0.0)
    return counted, in_range, wy


def _reduce(
    loss: torch.Tensor, wy: torch.Tensor, reduction: str, inv_ln: float, dtype: torch.dtype
) -> torch.Tensor:
    """Per-row nats -> the requested reduction in units of the base, in `dtype`."""
    if reduction == "none":
        return (loss * inv_ln).to(dtype)
    total = loss.sum() * inv_ln
    if reduction == "sum":
        return total.to(dtype)
    return (total / wy.sum()).to(dtype)  # 0 / 0 = NaN when nothing is counted


class CrossEntropyFunction(torch.autograd.Function):
    """Cross-entropy over materialised logits; the gradient is written in the forward pass.

    The forward kernel writes ``dloss/dlogits`` (already divided by ``sum w_y`` for 'mean'
    and by ``ln(base)``) into a buffer, or into the logits themselves with
    ``inplace_grad``; backward only multiplies it by the incoming gradient, in place.  So
    backward may run once per forward (a second call raises).
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        inv_ln: float,
        z_loss: float,
        softcap: float | None,
        inplace_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        wy = _target_weights(target, weight, ignore_index, logits.shape[1])[2]
        if reduction == "mean":
            scale = (inv_ln / wy.sum()).reshape(1)  # on the device: no host sync
        else:
            scale = torch.full((1,), inv_ln, dtype=torch.float32, device=logits.device)
        grad_buf = None
        if ctx.needs_input_grad[0]:
            grad_buf = logits if inplace_grad else torch.empty_like(logits)
        loss, lse = _launch.ce_forward(
            logits,
            target,
            weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            grad_out=grad_buf,
            grad_scale=scale.to(torch.float32),
        )
        if grad_buf is not None and inplace_grad:
            # The kernel wrote through a raw pointer: bump the version counter so that any
            # other autograd node that saved these logits refuses to use the overwritten values.
            torch.autograd.graph.increment_version(logits)
        ctx.grad_buf = grad_buf
        ctx.reduction = reduction
        ctx.used = False
        ctx.mark_non_differentiable(lse)
        return _reduce(loss, wy, reduction, inv_ln, logits.dtype), lse

    @staticmethod
    def backward(ctx: Any, grad_value: torch.Tensor, grad_lse: Any) -> Any:
        if ctx.used:
            raise RuntimeError(
                "crossentropy.triton.cross_entropy: backward ran twice through the same "
                "forward; its gradient buffer is scaled in place, so run the forward again"
            )
        ctx.used = True
        buf = ctx.grad_buf
        ctx.grad_buf = None
        if buf is None:
            return (None,) * 10
        if ctx.reduction == "none":
            buf.mul_(grad_value[:, None])
        else:
            buf.mul_(grad_value)
        return (buf,) + (None,) * 9


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Fused ``cross_entropy(hidden @ linear_weight.T + linear_bias, target)``.

    Forward keeps only float32 [N] vectors (lse, target logit, weights); backward recomputes
    the logits tile by tile.  The logits never exist in global memory.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        linear_weight: torch.Tensor,
        linear_bias: torch.Tensor | None,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        ignore_index: int,
        reduction: str,
        label_smoothing: float,
        inv_ln: float,
        z_loss: float,
        softcap: float | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        V = linear_weight.shape[0]
        counted, in_range, wy = _target_weights(target, weight, ignore_index, V)
        mx, rest, zy, sz = _launch.lce_forward(
            hidden,
            linear_weight,
            linear_bias,
            target,
            weight,
            label_smoothing=label_smoothing,
            softcap=softcap,
        )
        eps = label_smoothing
        l1p = torch.log1p(rest)
        lse = mx + l1p
        # lse - z'_y = (m - z'_y) + log1p(r): two terms >= 0, no cancellation
        loss = (1.0 - eps) * wy * ((mx - zy) + l1p)
        wtot: torch.Tensor | float = float(V)
        if eps > 0.0:
            wtot = weight.to(torch.float32).sum() if weight is not None else float(V)
            # (eps / V) sum_c w_c (lse - z'_c) = (eps / V) (W lse - sum_c w_c z'_c)
            loss = loss + torch.where(counted, (eps / V) * (wtot * lse - sz), 0.0)
        if z_loss > 0.0:
            loss = loss + torch.where(counted, z_loss * lse * lse, 0.0)  # not weighted
        bad = counted & ~in_range
        loss = torch.where(bad, math.nan, loss)
        ctx.save_for_backward(hidden, linear_weight, linear_bias, target, weight, lse, wy)
        ctx.opts = (reduction, eps, inv_ln, z_loss, softcap, wtot)
        ctx.ignore_index = ignore_index
        ctx.mark_non_differentiable(lse)
        return _reduce(loss, wy, reduction, inv_ln, hidden.dtype), lse

    @staticmethod
    def backward(ctx: Any, grad_value: torch.Tensor, grad_lse: Any) -> Any:
        hidden, linear_weight, linear_bias, target, weight, lse, wy = ctx.saved_tensors
        reduction, eps, inv_ln, z_loss, softcap, wtot = ctx.opts
        V = linear_weight.shape[0]
        counted = target != ctx.ignore_index
        bad = counted & ~((target >= 0) & (target < V))
        g = grad_value.to(torch.float32)
        if reduction == "mean":
            g = g * inv_ln / wy.sum()
        else:
            g = g * inv_ln
        scale = g.expand(lse.shape)
        # dl/dz'_c = a p_c - b [c = y] - c w_c (see crossentropy.triton._kernels)
        a = (1.0 - eps) * wy
        if eps > 0.0:
            a = a + counted * ((eps / V) * wtot)
        if z_loss > 0.0:
            a = a + 2.0 * z_loss * lse  # (ignored rows are masked below)
        coef_a = torch.where(counted, scale * a, 0.0)
        coef_a = torch.where(bad, math.nan, coef_a).contiguous()
        coef_b = torch.where(counted, scale * (1.0 - eps) * wy, 0.0).contiguous()
        coef_c = torch.where(counted, scale * (eps / V), 0.0).contiguous()
        need = ctx.needs_input_grad
        dh, dw, db = _launch.lce_backward(
            hidden,
            linear_weight,
            linear_bias,
            target,
            weight,
            lse,
            coef_a,
            coef_b,
            coef_c,
            softcap=softcap,
            smoothing=eps > 0.0,
            need_hidden=need[0],
            need_weight=need[1],
            need_bias=linear_bias is not None and need[2],
        )
        return (
            dh.to(hidden.dtype) if dh is not None else None,
            dw,
            db.to(linear_bias.dtype) if db is not None else None,
        ) + (None,) * 8
