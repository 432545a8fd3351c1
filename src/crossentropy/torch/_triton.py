"""The torch side of the Triton kernels: autograd Functions over the launchers, and the seam.

:func:`cross_entropy_2d` and :func:`linear_cross_entropy_2d` are what
:mod:`crossentropy.torch` calls with ``impl="triton"`` (and ``"auto"`` on CUDA), after it
has validated the arguments into a :class:`~crossentropy._options.CrossEntropyOptions` and
reshaped the inputs to 2-D; :mod:`crossentropy.triton` re-exports them by name.  The
kernels (``crossentropy/triton/_kernels.py``) and their launchers
(``crossentropy/triton/_launch.py``) hold the device code; this module is the host side.

No function here reads a device value on the host: weight sums, means and the scale of the
gradient stay tensors on the device (no ``.item()``), so a step can be captured in a CUDA
graph.  The per-row loss is finished from the kernels' row statistics in float64 (a few
[N] vectors) by the one row formula (:mod:`._rowstats`), the reduction is the one
:class:`~._reduction.ReductionPlan` (a mean over zero counted rows is ``opts.empty_mean``,
NaN for torch semantics, with a zero gradient).  Probability targets are not
differentiated (their gradient is None).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from crossentropy._options import CrossEntropyOptions, Reduction
from crossentropy.torch._reduction import ReductionPlan, grad_factor, row_weights
from crossentropy.torch._reference import zero_class_rows
from crossentropy.torch._rowstats import (
    RowStats,
    dense_coefficients,
    finish,
    index_coefficients,
    index_targets,
    merge_stacked,
)
from crossentropy.triton import _launch
from crossentropy.triton._available import require
from crossentropy.triton._launch import KernelStats

__all__ = [
    "CrossEntropyFunction",
    "LinearCrossEntropyFunction",
    "cross_entropy_2d",
    "finish_rows",
    "linear_cross_entropy_2d",
]


def _row_stats(k: KernelStats) -> tuple[RowStats, Tensor]:
    """The kernels' statistics as the whole rows' :class:`RowStats` (float64) and ``z'_y``.

    The fused forward leaves ``[SPLIT, N]`` statistics of contiguous vocabulary ranges:
    they are merged here, on the device, in range order, by the one merge rule
    (:func:`~crossentropy.torch._rowstats.merge_stacked`; the kernels' ``k`` are columns of
    the whole row, so the argmax of the first range reaching the maximum is the row's).
    The kernels report the target logit ``z'_y`` itself (0 off its range), not its gap to
    their maximum: ``m - z'_y`` is taken against the whole row's ``m`` by
    :func:`finish_rows`, in float64, where the float32 values subtract exactly enough.
    """
    zero = torch.zeros_like(k.s)
    st = RowStats(k.m.double(), k.s, zero, torch.zeros_like(zero, dtype=torch.bool),
                  asum=k.A, agap=k.B, argmax=k.k, ent=k.ent)
    if k.m.dim() == 2:
        return merge_stacked(st), k.zy.sum(dim=0)
    return st, k.zy


def _kernel_stats(m: Tensor, s: Tensor, k: Tensor, A: Tensor) -> KernelStats:
    """What the backward kernels read of the row statistics (``m`` float32)."""
    m32 = m.to(torch.float32)
    return KernelStats(m=m32, s=s, k=k, A=A, B=A, zy=m32)


def finish_rows(
    st: RowStats, z_y: Tensor, target: Tensor, weight: Tensor | None,
    opts: CrossEntropyOptions, C: int,
) -> tuple[Tensor, Tensor]:
    """Per-row loss (float64, nats, no scale) and lse (float32) from the row statistics.

    :func:`~crossentropy.torch._rowstats.finish`: index targets
    ``(1 - eps) w_y ((m - z'_y) + L) + (B + A L)`` on counted rows (NaN where the index is
    outside ``[0, C)``, found without a host sync), probability targets ``B + A L``; plus
    ``z_loss lse^2`` per counted row (unweighted), ``L = log1p(rest)``.  Every term is
    >= 0: nothing cancels, and the float64 arithmetic on float32 statistics adds no error
    of its own.
    """
    if target.dim() == 2:
        every = torch.ones_like(st.has_y)
        loss, lse = finish(st, counted=every, target_coef=None, z_loss=opts.z_loss)
        return loss, lse.float()
    t = index_targets(target, ignore_index=opts.ignore_index, num_classes=C, weight=weight,
                      dtype=torch.float64)
    whole = dataclasses.replace(st, zy=st.m - z_y.double(), has_y=t.counted)
    loss, lse = finish(whole, counted=t.counted,
                       target_coef=(1.0 - opts.label_smoothing) * t.weight,
                       z_loss=opts.z_loss, invalid=t.invalid)
    return loss, lse.float()


def _plan(target: Tensor, weight: Tensor | None, opts: CrossEntropyOptions, C: int
          ) -> ReductionPlan:
    """The reduction of this call (:mod:`._reduction`), the mean's row weights in float64."""
    omega = row_weights(target, weight, opts, C, torch.float64) \
        if opts.reduction is Reduction.MEAN else None
    return ReductionPlan(opts, omega)


def _row_scale(grad_value: Tensor, divisor: Tensor, opts: CrossEntropyOptions) -> Tensor:
    """``d value / d loss_i`` times the incoming gradient, float32 ``[1]`` or ``[N]``
    ('none'), read by the kernels on the device (0 for a mean over nothing)."""
    return grad_factor(grad_value, divisor, opts).to(torch.float32).contiguous()


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
        st, z_y = _row_stats(_launch.ce_forward(logits, target, weight, opts))
        loss, lse = finish_rows(st, z_y, target, weight, opts, C)
        plan = _plan(target, weight, opts, C)
        value = plan.value(loss)
        ctx.save_for_backward(logits, target, weight, st.m, st.rest, st.argmax, st.asum,
                              plan.divisor(loss))
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
        logits, target, weight, m, s, k, A, divisor = ctx.saved_tensors
        opts: CrossEntropyOptions = ctx.opts
        scale = _row_scale(grad_value, divisor, opts)  # [1] or [N] ('none')
        out = logits if ctx.inplace else torch.empty_like(logits)
        _launch.ce_backward(logits, target, weight, opts, _kernel_stats(m, s, k, A), scale, out)
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
        st, z_y = _row_stats(
            _launch.lce_forward(hidden, linear_weight, linear_bias, target, weight, opts))
        loss, lse = finish_rows(st, z_y, target, weight, opts, V)
        plan = _plan(target, weight, opts, V)
        value = plan.value(loss)
        ctx.save_for_backward(
            hidden, linear_weight, linear_bias, target, weight, st.m, st.rest, st.argmax,
            st.asum, lse, plan.divisor(loss),
        )
        ctx.opts = opts
        ctx.mark_non_differentiable(lse)
        return value.to(value_dtype), lse

    @staticmethod
    def backward(ctx: Any, grad_value: torch.Tensor, grad_lse: Any) -> Any:
        (hidden, linear_weight, linear_bias, target, weight, m, s, k, A, lse,
         divisor) = ctx.saved_tensors
        opts: CrossEntropyOptions = ctx.opts
        V = linear_weight.shape[0]
        N = hidden.shape[0]
        f32 = torch.float32
        if grad_value is None:
            grad_value = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
        r = _row_scale(grad_value, divisor, opts)  # d L / d loss_i: [N] ('none') or [1]
        r = r.expand(N) if r.numel() == 1 else r
        # dl/dz_c = P p_c - (T [c = y] + a_c), P = T + A + 2 zl lse (see _kernels), and at
        # the argmax k the kernel takes P - (T [k = y] + a_k) summed from its own terms
        # (P - a_k itself cancels for a confident row): the one rule of _rowstats
        f64 = torch.float64
        kk = k.long().clamp(0, max(V - 1, 0))
        eps = opts.label_smoothing
        zl = 2.0 * opts.z_loss * lse.to(f64) if opts.z_loss > 0.0 else None
        if target.dim() == 2:  # probability rows: a_c = w_c ((1 - eps) t_c + eps / V)
            a = (1.0 - eps) * target.to(f64) + eps / V
            a = a if weight is None else a * weight.to(f64)
            W, rest, _ = dense_coefficients(a, kk[:, None], None if zl is None else zl[:, None])
            W, rest = W[:, 0], rest[:, 0]
            T = torch.zeros(N, dtype=f64, device=hidden.device)
        else:
            t = index_targets(target, ignore_index=opts.ignore_index, num_classes=V,
                              weight=weight, dtype=f64)
            T = (1.0 - eps) * t.weight
            W, rest, _ = index_coefficients(
                a_y=T, k_is_y=t.counted & (t.safe == kk), counted=t.counted, soft=eps / V,
                total_weight=float(V) if weight is None else weight.to(f64).sum(),
                w_k=None if weight is None else weight.to(f64)[kk], zl=zl)
            r = torch.where(t.counted, r, 0.0)
            r = torch.where(t.invalid, math.nan, r)
        P, T32 = W.to(f32), T.to(f32)
        need = ctx.needs_input_grad
        dh, dw, db = _launch.lce_backward(
            hidden, linear_weight, linear_bias, target, weight,
            _kernel_stats(m, s, k, A),
            (r * P).contiguous(), (r * T32).contiguous(), r.contiguous(),
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


# --------------------------------------------------------------------------- the seam


def _no_classes(z: Tensor, target: Tensor, opts: CrossEntropyOptions,
                ) -> tuple[Tensor, Tensor]:
    """The seams' result for (N, 0) logits: torch's values (each row 0, 'mean' NaN; see
    :func:`crossentropy.torch._reference.zero_class_rows`), lse -inf in float32."""
    out, lse = zero_class_rows(z, target, target.dim() == 2, opts)
    return out.to(z.dtype), lse.to(torch.float32)


def _rows_contiguous(t: Tensor) -> Tensor:
    return t if t.dim() < 2 or t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


def cross_entropy_2d(
    x: Tensor,
    target: Tensor,
    weight: Tensor | None,
    opts: CrossEntropyOptions,
    *,
    inplace_grad: bool = False,
    value_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The seam: cross-entropy of 2-D logits with validated options, on the kernels.

    .. math:: \ell_i = \sum_c a_{ic} \big((m_i - z'_{ic}) + \operatorname{log1p}(s_i)\big)
              + \zeta\,\mathrm{lse}_i^2, \qquad
              \frac{\partial \ell_i}{\partial z'_{ic}} = P_i\, p_{ic} - a_{ic}

    (``a_ic`` the target weights of class ``c``, ``P_i = sum_c a_ic + 2 zeta lse_i``).

    Parameters
    ----------
    x : Tensor
        (N, C) float16/bfloat16/float32 logits (rows are made contiguous if needed).
    target : Tensor
        int64 [N] class indices, or floating [N, C] probability rows (not differentiated).
    weight : Tensor or None
        [C] class weights.
    opts : CrossEntropyOptions
        Validated options (not checked again).
    inplace_grad : bool
        Write the gradient into ``x``'s memory during backward (the logits are destroyed;
        ignored for a leaf tensor and for logits without contiguous rows).
    value_dtype : torch.dtype or None
        The dtype of the returned loss: the float32 accumulation rounded once to it (None:
        x's dtype; ``torch.float32`` keeps a bfloat16 loss unrounded).

    Returns
    -------
    (Tensor, Tensor)
        The loss reduced per ``opts`` in ``value_dtype`` (shape [N] for 'none') and the float32
        lse [N] (of the soft-capped logits, nats, not differentiable).  Autograd-capable;
        no host synchronisation.  Raises :class:`TritonUnavailable` (why) when the
        kernels cannot take the call.

    Examples
    --------
    >>> import torch
    >>> from crossentropy._options import CrossEntropyOptions
    >>> o = CrossEntropyOptions.create(semantics="torch")
    >>> x = torch.zeros(2, 3, dtype=torch.float64)
    >>> cross_entropy_2d(x, torch.tensor([0, 1]), None, o)
    Traceback (most recent call last):
    ...
    crossentropy.triton.TritonUnavailable: float64 tensors: the Triton kernels compute in float32
    """
    require(x)
    vdt = x.dtype if value_dtype is None else value_dtype
    if x.shape[1] == 0:  # no classes: torch's values (the kernels need a class to read)
        out, lse = _no_classes(x, target, opts)
        return out.to(vdt), lse
    xc = _rows_contiguous(x)
    inplace = bool(inplace_grad) and xc is x and not x.is_leaf  # never a leaf's own memory
    t = target.contiguous() if target.dim() == 1 else _rows_contiguous(target)
    w = weight.contiguous() if weight is not None else None
    loss, lse = CrossEntropyFunction.apply(  # type: ignore[no-untyped-call]
        xc, t, w, opts, inplace, vdt)
    return loss, lse


def linear_cross_entropy_2d(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    opts: CrossEntropyOptions,
    *,
    value_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    r"""The seam: fused ``cross_entropy_2d(h @ w.T + b, target, weight, opts)``.

    .. math:: z = h W^\top + b, \qquad
              \frac{\partial L}{\partial h} = G W, \quad
              \frac{\partial L}{\partial W} = G^\top h, \quad
              \frac{\partial L}{\partial b} = \textstyle\sum_i G_i

    with ``G = dL/dz``.  The logits never exist in memory: the forward folds each on-chip
    tile into the row statistics; the backward recomputes them one vocabulary chunk at a
    time, writes that chunk of ``G`` once and forms both gradients by GEMMs (no atomics;
    ``docs/gpu.md`` has the roofline).  Logits and products accumulate in float32.

    Parameters
    ----------
    h : Tensor
        (N, D) hidden states, float16/bfloat16/float32.
    w : Tensor
        (V, D) classifier weight, same dtype and device.
    b : Tensor or None
        (V,) classifier bias.
    target, weight, opts
        As for :func:`cross_entropy_2d` (with ``C = V``); probability targets are [N, V].

    Returns
    -------
    (Tensor, Tensor)
        Loss (reduced per ``opts``, in ``value_dtype`` as for :func:`cross_entropy_2d`;
        None: h's dtype) and float32 lse [N].

    Examples
    --------
    >>> import torch
    >>> from crossentropy._options import CrossEntropyOptions
    >>> o = CrossEntropyOptions.create(ignore_index=None, semantics="torch")
    >>> h = torch.zeros(2, 4, dtype=torch.float64)
    >>> linear_cross_entropy_2d(h, torch.zeros(5, 4, dtype=torch.float64), None,
    ...                         torch.tensor([0, 1]), None, o)
    Traceback (most recent call last):
    ...
    crossentropy.triton.TritonUnavailable: float64 tensors: the Triton kernels compute in float32
    """
    require(h)
    vdt = h.dtype if value_dtype is None else value_dtype
    if w.shape[0] == 0:  # no classes: the (N, 0) logits cost nothing
        out, lse = _no_classes(torch.nn.functional.linear(h, w, b), target, opts)
        return out.to(vdt), lse
    t = target.contiguous() if target.dim() == 1 else _rows_contiguous(target)
    loss, lse = LinearCrossEntropyFunction.apply(  # type: ignore[no-untyped-call]
        _rows_contiguous(h),
        _rows_contiguous(w),
        b.contiguous() if b is not None else None,
        t,
        weight.contiguous() if weight is not None else None,
        opts,
        vdt,
    )
    return loss, lse
