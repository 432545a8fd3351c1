"""autograd Functions (layer 3 of 4) over the launchers.

No function here reads a device value on the host: weight sums, means and the scale of the
gradient stay tensors on the device (no ``.item()``), so a step can be captured in a CUDA
graph.  The per-row loss is finished from the kernels' row statistics in float64 (a few
[N] vectors), the reduction is :func:`crossentropy.torch._reference.reduce_rows` (a mean
over zero counted rows is ``opts.empty_mean``, NaN for torch semantics, with a zero
gradient).  Probability targets are not differentiated (their gradient is None).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from crossentropy._options import CrossEntropyOptions, Reduction
from crossentropy.triton import _launch
from crossentropy.triton._launch import RowStats

__all__ = ["CrossEntropyFunction", "LinearCrossEntropyFunction", "finish_rows"]


def _index_rows(
    target: torch.Tensor, weight: torch.Tensor | None, opts: CrossEntropyOptions, C: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(counted, bad, w_y)`` of index targets: ``w_y`` float64, 0 where not counted;
    ``bad``: counted but outside ``[0, C)`` (a NaN row, found without a host sync)."""
    if opts.ignore_index is None:
        counted = torch.ones_like(target, dtype=torch.bool)
    else:
        counted = target != opts.ignore_index
    in_range = (target >= 0) & (target < C)
    y = torch.where(in_range, target, 0)
    if weight is None:
        wy = counted.to(torch.float64)
    else:
        wy = torch.where(counted, weight.to(torch.float64)[y], 0.0)
    return counted, counted & ~in_range, wy


def finish_rows(
    st: RowStats, target: torch.Tensor, weight: torch.Tensor | None,
    opts: CrossEntropyOptions, C: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss (float64, nats, no scale) and lse (float32) from the row statistics.

    ``L = log1p(s)``, ``lse = m + L``; index targets: ``(1 - eps) w_y ((m - z'_y) + L) +
    (B + A L)`` on counted rows (``finish`` of crossentropy/torch/_merge.py); probability
    targets: ``B + A L``; plus ``z_loss lse^2`` per counted row (unweighted).  Every
    term is >= 0: nothing cancels, and the float64 arithmetic on float32 statistics adds
    no error of its own.
    """
    m = st.m.double()
    L = torch.log1p(st.s)
    lse = m + L
    if target.dim() == 2:
        loss = st.B + st.A * L
        if opts.z_loss > 0.0:
            loss = loss + opts.z_loss * lse * lse
        return loss, lse.float()
    counted, bad, wy = _index_rows(target, weight, opts, C)
    main = (1.0 - opts.label_smoothing) * wy * ((m - st.zy.double()) + L)
    loss = torch.where(counted, main, 0.0)
    if opts.label_smoothing > 0.0:
        loss = loss + torch.where(counted, st.B + st.A * L, 0.0)
    if opts.z_loss > 0.0:
        loss = loss + torch.where(counted, opts.z_loss * lse * lse, 0.0)
    return torch.where(bad, math.nan, loss), lse.float()


def _grad_scale(
    target: torch.Tensor, weight: torch.Tensor | None, opts: CrossEntropyOptions, C: int
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """``(omega, gscale)``: the mean's row weights (None unless a mean divides by them) and
    ``d value / d loss_i`` as a float32 tensor of one element, on the device (0 for a mean
    over nothing: the empty mean has a zero gradient)."""
    from crossentropy.torch._reference import row_weights

    dev = target.device
    if opts.reduction is not Reduction.MEAN or opts.normalizer is not None:
        div = opts.normalizer if opts.normalizer is not None else 1.0
        return None, torch.full((1,), opts.scale / div, dtype=torch.float32, device=dev)
    omega = row_weights(target, weight, opts, C, torch.float64)
    denom = omega.sum()
    safe = torch.where(denom == 0, 1.0, denom)
    return omega, torch.where(denom == 0, 0.0, opts.scale / safe).reshape(1).float()


def _value(loss: torch.Tensor, omega: torch.Tensor | None, opts: CrossEntropyOptions) -> Any:
    from crossentropy.torch._reference import reduce_rows

    return reduce_rows(loss, omega, opts)


class CrossEntropyFunction(torch.autograd.Function):
    """Cross-entropy over materialised logits.

    Forward reads each row once (the row statistics) and keeps ``[N]`` vectors; backward
    reads the logits once more and writes the gradient once, with the incoming gradient
    and ``d value / d loss_i`` read on the device: three passes over ``[N, C]`` in all, no
    extra scaling pass.  With ``inplace_grad`` the gradient is written into the logits'
    own memory (the logits are destroyed, so backward may run once; any other node that
    saved them refuses to run: their version counter is bumped).
    """

    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        opts: CrossEntropyOptions,
        inplace_grad: bool,
        value_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        C = logits.shape[1]
        st = _launch.ce_forward(logits, target, weight, opts)
        loss, lse = finish_rows(st, target, weight, opts, C)
        omega, gscale = _grad_scale(target, weight, opts, C)
        value = _value(loss, omega, opts)
        ctx.save_for_backward(logits, target, weight, st.m, st.s, st.k, st.A, gscale)
        ctx.opts = opts
        ctx.inplace = inplace_grad
        ctx.used = False
        ctx.mark_non_differentiable(lse)
        # the float32 accumulation rounded once, to the dtype the caller asked for
        return value.to(value_dtype), lse

    @staticmethod
    def backward(ctx: Any, grad_value: torch.Tensor, grad_lse: Any) -> Any:
        if grad_value is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None
        if ctx.inplace and ctx.used:
            raise RuntimeError(
                "crossentropy.triton.cross_entropy(inplace_grad=True): backward ran twice "
                "through the same forward; the logits were overwritten by the first"
            )
        ctx.used = True
        logits, target, weight, m, s, k, A, gscale = ctx.saved_tensors
        opts: CrossEntropyOptions = ctx.opts
        scale = (grad_value.to(torch.float32) * gscale).contiguous()  # [1] or [N] ('none')
        st = RowStats(m=m, s=s, k=k, A=A, B=A, zy=m)
        out = logits if ctx.inplace else torch.empty_like(logits)
        _launch.ce_backward(logits, target, weight, opts, st, scale, out)
        if ctx.inplace:
            # The kernel wrote through a raw pointer: bump the version counter so that any
            # other autograd node that saved these logits refuses to use the overwritten values.
            torch.autograd.graph.increment_version(logits)
        return out, None, None, None, None, None


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Fused ``cross_entropy(hidden @ linear_weight.T + linear_bias, target)``.

    Forward keeps only [N] vectors (row statistics, lse); backward recomputes the logits
    chunk by chunk (``_launch.lce_backward``).  The full logits never exist in memory.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        linear_weight: torch.Tensor,
        linear_bias: torch.Tensor | None,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        opts: CrossEntropyOptions,
        value_dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        V = linear_weight.shape[0]
        st = _launch.lce_forward(hidden, linear_weight, linear_bias, target, weight, opts)
        loss, lse = finish_rows(st, target, weight, opts, V)
        omega, gscale = _grad_scale(target, weight, opts, V)
        value = _value(loss, omega, opts)
        ctx.save_for_backward(
            hidden, linear_weight, linear_bias, target, weight, st.m, st.s, st.k, st.A,
            lse, gscale,
        )
        ctx.opts = opts
        ctx.mark_non_differentiable(lse)
        return value.to(value_dtype), lse

    @staticmethod
    def backward(ctx: Any, grad_value: torch.Tensor, grad_lse: Any) -> Any:
        (hidden, linear_weight, linear_bias, target, weight, m, s, k, A, lse,
         gscale) = ctx.saved_tensors
        opts: CrossEntropyOptions = ctx.opts
        V = linear_weight.shape[0]
        N = hidden.shape[0]
        f32 = torch.float32
        if grad_value is None:
            grad_value = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        r = grad_value.to(f32) * gscale  # d L / d loss_i: [N] ('none') or [1]
        r = r.expand(N) if r.numel() == 1 else r
        # dl/dz_c = P p_c - (T [c = y] + a_c), P = T + A + 2 zl lse (see _kernels)
        P = A.to(f32)
        if target.dim() == 2:
            T = torch.zeros(N, dtype=f32, device=hidden.device)
        else:
            counted, bad, wy = _index_rows(target, weight, opts, V)
            T = ((1.0 - opts.label_smoothing) * wy).to(f32)
            P = P + T
            r = torch.where(counted, r, 0.0)
            r = torch.where(bad, math.nan, r)
        # P - tgt_k = sum_{c != k} tgt_c + 2 zl lse, summed directly: P - tgt_k itself
        # cancels for a confident row (P ~ tgt_k) under smoothing or z-loss
        kk = k.long().clamp(0, max(V - 1, 0))
        eps = opts.label_smoothing
        if target.dim() == 2:  # probability rows: a_c = w_c ((1 - eps) t_c + eps / V)
            t64 = target.to(torch.float64)
            w64 = None if weight is None else weight.to(torch.float64)
            a = (1.0 - eps) * t64 + eps / V
            a = a if w64 is None else a * w64
            rest = torch.where(torch.arange(V, device=a.device) == kk[:, None], 0.0, a).sum(-1)
        else:
            wtot = float(V) if weight is None else weight.to(torch.float64).sum()
            wk = 1.0 if weight is None else weight.to(torch.float64)[kk]
            # sum_{c != k} a_c = T [y != k] + (eps / V) (sum_c w_c - w_k)
            rest = torch.where(target != kk, T.to(torch.float64), 0.0)
            rest = rest + (eps / V) * (wtot - wk) if eps else rest
        if opts.z_loss > 0.0:
            P = P + 2.0 * opts.z_loss * lse
            rest = rest + 2.0 * opts.z_loss * lse.to(torch.float64)
        need = ctx.needs_input_grad
        dh, dw, db = _launch.lce_backward(
            hidden, linear_weight, linear_bias, target, weight,
            RowStats(m=m, s=s, k=k, A=A, B=A, zy=m),
            (r * P).contiguous(), (r * T).contiguous(), r.contiguous(),
            (r * rest.to(f32)).contiguous(), opts,
            need_hidden=need[0], need_weight=need[1],
            need_bias=linear_bias is not None and need[2],
        )
        return (
            dh.to(hidden.dtype) if dh is not None else None,
            dw,
            db.to(linear_bias.dtype) if db is not None and linear_bias is not None else None,
            None,
            None,
            None,
            None,
        )
