r"""The arithmetic of the vocabulary-parallel loss: local slice statistics, their merge
across the ranks, the loss rows, the reduction and the gradients.

Each rank reduces its shard to :class:`~crossentropy.torch._merge.RowStats` (relative to its
own maximum, in the log1p form), then the ranks' statistics are merged with the one merge
rule of :mod:`crossentropy.torch._merge`:

* ``all_gather``: every rank gathers ``[P, N, k]`` (``m, rest, m - z_y`` and, with label
  smoothing, ``sum_c w_c (m - z_c)``) and folds :func:`~crossentropy.torch._merge.merge`
  over the ranks in rank order (so every rank computes bit-identical results);
* ``all_reduce``: one all-reduce MAX of the row maxima ``m``, then one all-reduce SUM of
  the statistics rescaled to ``m``: ``rest_r`` on a rank that reaches ``m`` (plus a count
  of such ranks: all but one of their maximal elements belong to ``rest``), and
  ``(1 + rest_r) e^{m_r - m}`` on the others; ``m - z_y`` and ``sum_c w_c (m - z_c)``
  shifted by ``m - m_r >= 0``.  Every summand is >= 0.

The computation runs in :attr:`Agreement.compute_dtype` (float64 on CPU, rounded once to
the input dtype at the end).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from crossentropy._options import Reduction
from crossentropy.torch import _merge
from crossentropy.torch._merge import RowStats
from crossentropy.torch.distributed._protocol import Agreement

__all__ = ["AllReduceGrad", "LinearCrossEntropy", "LogitsCrossEntropy"]


@dataclass(frozen=True)
class _Targets:
    """The targets of one call, flattened, with what the loss needs of the class weights."""

    index: Tensor  # [N] int64 class indices (any value on rows not counted)
    counted: Tensor  # [N] bool: not ignore_index
    target_weight: Tensor  # [N] w_y (1 without class weights; 0 on rows not counted)
    local_weight: Tensor | None  # [V_r] this rank's class weights (None: all 1)
    shard_weight_sums: Tensor | None  # [P] sum of each shard's class weights (smoothing)
    total_weight: Tensor | float  # sum_c w_c over the vocabulary (V without weights)


def _targets(a: Agreement, target: Tensor, class_weight: Tensor | None) -> _Targets:
    ct = a.compute_dtype
    y = target.reshape(-1).to(torch.int64)
    ignore = a.options.ignore_index
    counted = torch.ones_like(y, dtype=torch.bool) if ignore is None else y != ignore
    safe = torch.where(counted, y, torch.zeros_like(y))
    if class_weight is None:
        wy = counted.to(ct)
        local = None
        total: Tensor | float = float(a.num_classes)
        sums = torch.tensor(a.shard_sizes, dtype=ct, device=a.device)
    else:
        w = class_weight.detach().to(ct)
        wy = torch.where(counted, w[safe], torch.zeros((), dtype=ct, device=a.device))
        local = w[a.start : a.start + a.local_size]
        total = w.sum()
        sums = torch.stack([part.sum() for part in torch.split(w, list(a.shard_sizes))])
    return _Targets(safe, counted, wy, local, sums if a.options.label_smoothing else None,
                    total)


# --------------------------------------------------------------------------- soft cap


def _softcap(x: Tensor, cap: float | None) -> Tensor:
    """``cap * tanh(x / cap)`` (Gemma 2), `x` itself without a cap."""
    return x if cap is None else torch.tanh(x / cap).mul_(cap)


def _softcap_slope(x: Tensor, cap: float) -> Tensor:
    """d/dx cap tanh(x / cap) = sech(u)^2 = 4 e^{-2|u|} / (1 + e^{-2|u|})^2, u = x / cap.

    No cancellation and no overflow (``(1 - t)(1 + t)`` with ``t = tanh(u)`` is off by 2x at
    u = 9 in float32 and 0 at u = 12); 0 at ``x = +-inf``.
    """
    t = (x / cap).abs_().mul_(-2.0).exp_()
    one_t = 1.0 + t
    return t.mul_(4.0).div_(one_t.mul_(one_t))


# --------------------------------------------------------------------------- statistics


def _cat_stats(blocks: list[RowStats], a: Agreement) -> RowStats:
    if not blocks:
        e = torch.zeros(0, dtype=a.compute_dtype, device=a.device)
        smooth = bool(a.options.label_smoothing)
        return RowStats(e, e, e, torch.zeros(0, dtype=torch.bool, device=a.device),
                        e if smooth else None, e.new_zeros(()) if smooth else None)
    wz = None if blocks[0].wz is None else torch.cat([b.wz for b in blocks if b.wz is not None])
    k = None if blocks[0].argmax is None else torch.cat(
        [b.argmax for b in blocks if b.argmax is not None])
    return RowStats(torch.cat([b.m for b in blocks]), torch.cat([b.rest for b in blocks]),
                    torch.cat([b.zy for b in blocks]), torch.cat([b.has_y for b in blocks]),
                    wz, blocks[0].wsum, k)


def _owner_mask(a: Agreement, t: _Targets, rank: int) -> Tensor:
    start = sum(a.shard_sizes[:rank])
    return t.counted & (t.index >= start) & (t.index < start + a.shard_sizes[rank])


def _merge_ranks(a: Agreement, local: RowStats, t: _Targets) -> RowStats:
    """The whole vocabulary's statistics from every rank's (the collectives of the forward)."""
    smooth = local.wz is not None
    if a.collective == "all_gather":
        cols = [local.m, local.rest, local.zy] + ([local.wz] if local.wz is not None else [])
        mine = torch.stack(cols, dim=1).contiguous()
        parts = [torch.empty_like(mine) for _ in range(a.world_size)]
        dist.all_gather(parts, mine, group=a.group)  # the one collective: [P, N, k]
        sums = t.shard_weight_sums
        stats = [
            RowStats(p[:, 0], p[:, 1], p[:, 2], _owner_mask(a, t, r),
                     p[:, 3] if smooth else None,
                     sums[r] if sums is not None else None)
            for r, p in enumerate(parts)
        ]
        return _merge.merge_all(stats)  # in rank order: identical on every rank
    m = local.m.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=a.group)  # collective 1: [N]
    top = local.m == m  # this rank reaches the row maximum (ties on several ranks count)
    f = _merge.exp_diff(local.m, m)  # e^{m_r - m}, 0 for an empty shard
    # a rank below the maximum adds its whole sum (1 + rest_r) e^{m_r - m}; a rank at the
    # maximum adds rest_r (without one maximal element) and 1 to the count of such ranks:
    # rest = sum + (count - 1) leaves out exactly one maximal element of the whole row
    rest = torch.where(top, local.rest, f + f * local.rest)
    shift = torch.where(top, torch.zeros_like(m), m - local.m)  # m - m_r >= 0
    # the owner's m - z_y = (m - m_r) + (m_r - z_y)
    zy = torch.where(local.has_y, local.zy + shift, torch.zeros_like(m))
    cols = [rest, zy, top.to(m.dtype)]
    if local.wz is not None and local.wsum is not None:
        # sum_{c in r} w_c (m - z_c) = wz_r + (m - m_r) sum_{c in r} w_c (0 for an empty shard)
        extra = torch.where(local.wsum == 0, torch.zeros_like(shift), shift * local.wsum)
        cols.append(local.wz + extra)
    buf = torch.stack(cols, dim=1)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=a.group)  # collective 2: [N, k]
    rest_all = buf[:, 0] + (buf[:, 2] - 1.0)
    has_y = t.counted & (t.index >= 0) & (t.index < a.num_classes)
    wsum = None if t.shard_weight_sums is None else t.shard_weight_sums.sum()
    return RowStats(m, rest_all, buf[:, 1], has_y, buf[:, 3] if smooth else None, wsum)


def _loss_rows(a: Agreement, stats: RowStats, t: _Targets) -> tuple[Tensor, Tensor]:
    o = a.options
    return _merge.finish(stats, target_weight=t.target_weight, counted=t.counted,
                         label_smoothing=o.label_smoothing, num_classes=a.num_classes,
                         total_weight=t.total_weight, z_loss=o.z_loss)


# --------------------------------------------------------------------------- reduction


def _reduce(a: Agreement, loss: Tensor, t: _Targets) -> tuple[Tensor, Tensor]:
    """``(value, divisor)``: the one torch reduction, in the compute dtype, no host sync.

    none: ``loss * scale``; sum: ``sum * scale`` (``/ normalizer`` if given); mean:
    ``sum * scale / normalizer`` or ``/ sum_i w_{y_i}`` over the counted rows (divided last);
    a mean over zero counted rows is ``options.empty_mean`` (torch: NaN) with gradient 0.
    The gradient of row i is its own gradient times ``grad_out * scale / divisor``.
    """
    o = a.options
    one = torch.ones((), dtype=loss.dtype, device=loss.device)
    if o.reduction is Reduction.NONE:
        return (loss * o.scale).reshape(a.rows), one
    total = loss.sum() * o.scale
    if o.normalizer is not None:
        div = torch.full((), o.normalizer, dtype=loss.dtype, device=loss.device)
        return total / div, div
    if o.reduction is Reduction.SUM:
        return total, one
    div = t.target_weight.sum()
    empty = div == 0
    value = torch.where(empty, torch.full_like(total, o.empty_mean), total / div)
    # nothing counted: a zero gradient (an infinite divisor makes grad_out * scale / div 0)
    return value, torch.where(empty, torch.full_like(div, math.inf), div)


def _row_factor(a: Agreement, grad_out: Tensor, div: Tensor) -> Tensor:
    """``d result / d loss_i`` times grad_out, per row ([N], compute dtype)."""
    g = grad_out.to(a.compute_dtype)
    if a.options.reduction is Reduction.NONE:
        g = g.reshape(-1)
    else:
        g = g.reshape(()).expand(a.num_rows)
    return (g * a.options.scale) / div  # divide last (a subnormal divisor stays finite)


def _grad_block(a: Agreement, x: Tensor, t: _Targets, rows: slice, saved: _Saved,
                f: Tensor) -> Tensor:
    """d result / d x for a ``[n, V_r]`` block of raw logits x (compute dtype)."""
    o = a.options
    cap = o.softcap
    xc = x if cap is None else x.to(a.compute_dtype)
    g = _merge.slice_grad(
        _softcap(xc, cap), t.index[rows], a.start, counted=t.counted[rows], m=saved.m[rows],
        rest=saved.rest[rows], lse=saved.lse[rows], target_weight=t.target_weight[rows],
        label_smoothing=o.label_smoothing, num_classes=a.num_classes, weight=t.local_weight,
        total_weight=t.total_weight, z_loss=o.z_loss, row_factor=f[rows],
        compensate=_compensate(a), dtype=a.compute_dtype, argmax=saved.argmax[rows],
    )
    if cap is not None:
        g.mul_(_softcap_slope(xc, cap))  # chain rule through z = c tanh(x / c)
    return g


def _block_stats(a: Agreement, x: Tensor, t: _Targets, rows: slice) -> RowStats:
    """The statistics of a block of raw logits (any float dtype: promoted, not copied)."""
    cap = a.options.softcap
    z = x if cap is None else _softcap(x.to(a.compute_dtype), cap)
    return _merge.slice_stats(z, t.index[rows], a.start, counted=t.counted[rows],
                              weight=t.local_weight, smoothing=bool(a.options.label_smoothing),
                              compensate=_compensate(a), dtype=a.compute_dtype)


def _compensate(a: Agreement) -> bool:
    """TwoSum in e^{z - m} where it matters: when the result keeps the compute precision
    (float32 inputs computed in float64 are rounded to float32 at the end)."""
    return a.dtype == a.compute_dtype


@dataclass(frozen=True)
class _Saved:
    """What the backward pass needs per row: the whole row's m, rest and lse, this shard's
    argmax, and the reduction's divisor."""

    m: Tensor
    rest: Tensor
    lse: Tensor
    argmax: Tensor
    divisor: Tensor

    def tensors(self) -> tuple[Tensor, ...]:
        return self.m, self.rest, self.lse, self.argmax, self.divisor


def _forward(a: Agreement, blocks: list[RowStats], t: _Targets) -> tuple[Tensor, _Saved]:
    local = _cat_stats(blocks, a)
    stats = _merge_ranks(a, local, t)
    loss, lse = _loss_rows(a, stats, t)
    value, div = _reduce(a, loss, t)
    k = local.argmax if local.argmax is not None else torch.zeros(
        a.num_rows, dtype=torch.int64, device=a.device)
    return value, _Saved(stats.m, stats.rest, lse, k, div)


# --------------------------------------------------------------------------- autograd


# the elementwise passes run on blocks of about this many compute-dtype elements (1 MiB in
# float64), so that their temporaries stay in cache: 2x faster than whole chunks on CPU
_BLOCK_ELEMENTS = 2**17


def _row_blocks(start: int, stop: int, a: Agreement) -> list[slice]:
    """Consecutive row ranges of at most ``chunk_size`` rows and about _BLOCK_ELEMENTS
    elements each, covering ``[start, stop)``."""
    step = max(1, min(a.chunk_size, _BLOCK_ELEMENTS // max(a.local_size, 1)))
    return [slice(s, min(s + step, stop)) for s in range(start, stop, step)]


class LogitsCrossEntropy(torch.autograd.Function):
    """The loss of a logits shard; backward needs no collective."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, class_weight: Tensor | None,
                a: Agreement) -> Tensor:
        n = a.num_rows
        x = logits.reshape(n, a.local_size)
        t = _targets(a, target, class_weight)
        blocks = [_block_stats(a, x[rows], t, rows) for rows in _row_blocks(0, n, a)]
        value, saved = _forward(a, blocks, t)
        ctx.save_for_backward(logits, target, class_weight, *saved.tensors())
        ctx.agreement = a
        return value.to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Any, ...]:
        logits, target, class_weight, *kept = ctx.saved_tensors
        saved = _Saved(*kept)
        a: Agreement = ctx.agreement
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        n = a.num_rows
        x = logits.reshape(n, a.local_size)
        t = _targets(a, target, class_weight)
        f = _row_factor(a, grad_out, saved.divisor)
        grad = torch.empty_like(x)
        for rows in _row_blocks(0, n, a):
            grad[rows].copy_(_grad_block(a, x[rows], t, rows, saved, f))  # one rounding
        return grad.reshape(logits.shape), None, None, None


def _matmul_dtype(a: Agreement) -> torch.dtype:
    """The matmuls run in the input dtype (float32 for float16/bfloat16), as
    :func:`crossentropy.torch.linear_cross_entropy`'s; the row arithmetic in the compute dtype."""
    return torch.float32 if a.dtype in (torch.float16, torch.bfloat16) else a.dtype


def _linear_logits(h: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:
    """``h @ w.T + bias`` in the matmul dtype (`w`, `bias` already in it)."""
    hm = h.to(w.dtype)
    return hm @ w.t() if bias is None else torch.addmm(bias, hm, w.t())


class LinearCrossEntropy(torch.autograd.Function):
    """The loss of ``h @ W_r.T + b_r``; backward: one all-reduce SUM of d loss / d h."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, bias: Tensor | None, target: Tensor,
                class_weight: Tensor | None, a: Agreement) -> Tensor:
        n, md = a.num_rows, _matmul_dtype(a)
        h = hidden.reshape(n, a.hidden_size)
        t = _targets(a, target, class_weight)
        wm = weight.to(md)
        bm = None if bias is None else bias.to(md)
        blocks = []
        for s in range(0, n, a.chunk_size):
            stop = min(s + a.chunk_size, n)
            z = _linear_logits(h[s:stop], wm, bm)  # chunk_size x V_r logits at a time
            # (the statistics promote z to the compute dtype inside each operation)
            blocks += [_block_stats(a, z[r.start - s : r.stop - s], t, r)
                       for r in _row_blocks(s, stop, a)]
        value, saved = _forward(a, blocks, t)
        ctx.save_for_backward(hidden, weight, bias, target, class_weight, *saved.tensors())
        ctx.agreement = a
        return value.to(hidden.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Any, ...]:
        hidden, weight, bias, target, class_weight, *kept = ctx.saved_tensors
        saved = _Saved(*kept)
        a: Agreement = ctx.agreement
        need_w, need_b = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        n, md = a.num_rows, _matmul_dtype(a)
        h = hidden.reshape(n, a.hidden_size)
        t = _targets(a, target, class_weight)
        f = _row_factor(a, grad_out, saved.divisor)
        gh = torch.zeros(n, a.hidden_size, dtype=md, device=a.device) \
            if a.hidden_requires_grad else None
        gw = torch.zeros(weight.shape, dtype=md, device=a.device) if need_w else None
        gb = torch.zeros(a.local_size, dtype=a.compute_dtype, device=a.device) \
            if need_b else None
        wm = weight.to(md)
        bm = None if bias is None else bias.to(md)
        if gh is not None or gw is not None or gb is not None:
            for s in range(0, n, a.chunk_size):
                stop = min(s + a.chunk_size, n)
                rows = slice(s, stop)
                g = _linear_logits(h[rows], wm, bm)
                for r in _row_blocks(s, stop, a):  # the logits become d loss / d z in place
                    part = slice(r.start - s, r.stop - s)
                    g[part] = _grad_block(a, g[part], t, r, saved, f)  # rounded once
                if gh is not None:
                    # this shard's part of d loss / d h = g_r @ W_r; the ranks' parts are summed
                    gh[rows] = g @ wm
                if gw is not None:
                    gw.addmm_(g.t(), h[rows].to(md))
                if gb is not None:
                    gb += g.sum(dim=0)
        if gh is not None:
            dist.all_reduce(gh, op=dist.ReduceOp.SUM, group=a.group)  # backward: [N, D]
        return (
            gh.to(hidden.dtype).reshape(hidden.shape)
            if gh is not None and ctx.needs_input_grad[0] else None,
            gw.to(weight.dtype) if gw is not None else None,
            gb.to(bias.dtype) if gb is not None and bias is not None else None,
            None,
            None,
            None,
        )


class AllReduceGrad(torch.autograd.Function):
    """Identity forward; all-reduce SUM of the gradient backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, group: Any) -> Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Any, ...]:
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None
