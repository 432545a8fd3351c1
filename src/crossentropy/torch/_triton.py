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
[N] vectors), the reduction is :func:`crossentropy.torch._reference.reduce_rows` (a mean
over zero counted rows is ``opts.empty_mean``, NaN for torch semantics, with a zero
gradient).  Probability targets are not differentiated (their gradient is None).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from crossentropy._options import CrossEntropyOptions, Reduction
from crossentropy.torch._reference import reduce_rows, row_weights, zero_class_rows
from crossentropy.triton import _launch
from crossentropy.triton._available import require
from crossentropy.triton._launch import RowStats

__all__ = [
    "CrossEntropyFunction",
    "LinearCrossEntropyFunction",
    "cross_entropy_2d",
    "finish_rows",
    "linear_cross_entropy_2d",
]


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
    dev = target.device
    if opts.reduction is not Reduction.MEAN or opts.normalizer is not None:
        div = opts.normalizer if opts.normalizer is not None else 1.0
        return None, torch.full((1,), opts.scale / div, dtype=torch.float32, device=dev)
    omega = row_weights(target, weight, opts, C, torch.float64)
    denom = omega.sum()
    safe = torch.where(denom == 0, 1.0, denom)
    return omega, torch.where(denom == 0, 0.0, opts.scale / safe).reshape(1).float()


def _value(loss: torch.Tensor, omega: torch.Tensor | None, opts: CrossEntropyOptions) -> Any:
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
