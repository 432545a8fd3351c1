r"""The arithmetic of the vocabulary-parallel loss: local slice statistics, their merge
across the ranks, the loss rows, the reduction and the gradients.

Each rank reduces its shard to :class:`~crossentropy.torch._rowstats.RowStats` (relative
to its own maximum, in the log1p form), then the ranks' statistics are merged with the one
merge rule of :mod:`crossentropy.torch._rowstats`:

* ``all_gather``: every rank gathers ``[P, N, k]`` (``m, rest, m - z_y`` and, with label
  smoothing, ``B = (eps / V) sum_c w_c (m - z_c)``) and folds
  :func:`~crossentropy.torch._rowstats.merge` over the ranks in rank order (so every rank
  computes bit-identical results);
* ``all_reduce``: one all-reduce MAX of the row maxima ``m``, then one all-reduce SUM of
  the statistics lifted to ``m`` (:func:`~crossentropy.torch._rowstats.lift`): ``rest_r``
  on a rank that reaches ``m`` (plus a count of such ranks: all but one of their maximal
  elements belong to ``rest``), and ``(1 + rest_r) e^{m_r - m}`` on the others; ``m - z_y``
  and ``B`` shifted by ``m - m_r >= 0``.  Every summand is >= 0.

The computation runs in :attr:`Agreement.compute_dtype` (float64 on CPU, rounded once to
the input dtype at the end).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from crossentropy._options import Reduction
from crossentropy.torch import _rowstats
from crossentropy.torch._reduction import ReductionPlan, grad_factor
from crossentropy.torch._rowstats import RowStats, softcap, softcap_derivative
from crossentropy.torch.distributed._protocol import Agreement

__all__ = ["AllReduceGrad", "LinearCrossEntropy", "LogitsCrossEntropy"]


@dataclass(frozen=True)
class _Targets:
    """The targets of one call, flattened, with what the loss needs of the class weights."""

    index: Tensor  # [N] int64 class indices (0 on rows not counted)
    counted: Tensor  # [N] bool: not ignore_index
    target_weight: Tensor  # [N] w_y (1 without class weights; 0 on rows not counted)
    local_weight: Tensor | None  # [V_r] this rank's class weights (None: all 1)
    shard_soft_sums: Tensor | None  # [P] A of each shard: (eps / V) sum of its weights
    total_weight: Tensor | float  # sum_c w_c over the vocabulary (V without weights)


def _soft(a: Agreement) -> float:
    """The soft coefficients' factor ``eps / V`` (``a_c = (eps / V) w_c``)."""
    return a.options.label_smoothing / a.num_classes


def _targets(a: Agreement, target: Tensor, class_weight: Tensor | None) -> _Targets:
    ct = a.compute_dtype
    w = None if class_weight is None else class_weight.detach().to(ct)
    # (the range of the targets is check_targets_in_range's, in _protocol)
    t = _rowstats.index_targets(target.reshape(-1).to(torch.int64),
                                ignore_index=a.options.ignore_index,
                                num_classes=a.num_classes, weight=w, dtype=ct)
    soft = _soft(a)
    if w is None:
        local = None
        total: Tensor | float = float(a.num_classes)
        # slice_stats' A of a shard without weights: soft * V_r
        sums = torch.tensor([soft * v for v in a.shard_sizes], dtype=ct, device=a.device)
    else:
        local = w[a.start : a.start + a.local_size]
        total = w.sum()
        sums = torch.stack([part.sum() * soft for part in torch.split(w, list(a.shard_sizes))])
    return _Targets(t.safe, t.counted, t.weight, local, sums if soft else None, total)


def _target_coef(a: Agreement, t: _Targets) -> Tensor:
    """``a_y = (1 - eps) w_y`` per row (0 on rows not counted)."""
    return (1.0 - a.options.label_smoothing) * t.target_weight


# --------------------------------------------------------------------------- statistics


def _cat_stats(blocks: list[RowStats], a: Agreement) -> RowStats:
    if not blocks:
        e = torch.zeros(0, dtype=a.compute_dtype, device=a.device)
        smooth = bool(a.options.label_smoothing)
        return RowStats(e, e, e, torch.zeros(0, dtype=torch.bool, device=a.device),
                        e.new_zeros(()) if smooth else None, e if smooth else None)
    agap = None if blocks[0].agap is None else torch.cat(
        [b.agap for b in blocks if b.agap is not None])
    k = None if blocks[0].argmax is None else torch.cat(
        [b.argmax for b in blocks if b.argmax is not None])
    return RowStats(torch.cat([b.m for b in blocks]), torch.cat([b.rest for b in blocks]),
                    torch.cat([b.zy for b in blocks]), torch.cat([b.has_y for b in blocks]),
                    blocks[0].asum, agap, k)


def _owner_mask(a: Agreement, t: _Targets, rank: int) -> Tensor:
    start = sum(a.shard_sizes[:rank])
    return t.counted & (t.index >= start) & (t.index < start + a.shard_sizes[rank])


def _merge_ranks(a: Agreement, local: RowStats, t: _Targets) -> RowStats:
    """The whole vocabulary's statistics from every rank's (the collectives of the forward)."""
    smooth = local.agap is not None
    sums = t.shard_soft_sums
    if a.collective == "all_gather":
        cols = [local.m, local.rest, local.zy] + ([local.agap] if local.agap is not None else [])
        mine = torch.stack(cols, dim=1).contiguous()
        parts = [torch.empty_like(mine) for _ in range(a.world_size)]
        dist.all_gather(parts, mine, group=a.group)  # the one collective: [P, N, k]
        stats = [
            RowStats(p[:, 0], p[:, 1], p[:, 2], _owner_mask(a, t, r),
                     sums[r] if sums is not None else None,
                     p[:, 3] if smooth else None)
            for r, p in enumerate(parts)
        ]
        return _rowstats.merge_all(stats)  # in rank order: identical on every rank
    m = local.m.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=a.group)  # collective 1: [N]
    # this rank's terms relative to the row maximum (the merge rule of _rowstats.lift): the
    # rank's whole sum rescaled below the maximum, its rest and a count of 1 at it (ties on
    # several ranks count: rest = sum + (count - 1) leaves out exactly one maximal element)
    up = _rowstats.lift(local, m)
    cols = [up.rest, up.zy, up.top.to(m.dtype)] + ([up.agap] if up.agap is not None else [])
    buf = torch.stack(cols, dim=1)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=a.group)  # collective 2: [N, k]
    rest_all = buf[:, 0] + (buf[:, 2] - 1.0)
    has_y = t.counted & (t.index >= 0) & (t.index < a.num_classes)
    asum = None if sums is None else sums.sum()
    return RowStats(m, rest_all, buf[:, 1], has_y, asum, buf[:, 3] if smooth else None)


def _loss_rows(a: Agreement, stats: RowStats, t: _Targets) -> tuple[Tensor, Tensor]:
    return _rowstats.finish(stats, counted=t.counted, target_coef=_target_coef(a, t),
                            z_loss=a.options.z_loss)


# --------------------------------------------------------------------------- reduction


def _reduce(a: Agreement, loss: Tensor, t: _Targets) -> tuple[Tensor, Tensor]:
    """``(value, divisor)``: the one torch reduction (:class:`ReductionPlan`), in the
    compute dtype, no host sync; the mean divides by ``sum_i w_{y_i}`` over the counted
    rows.  The gradient of row i is its own gradient times ``grad_out * scale / divisor``.
    """
    o = a.options
    plan = ReductionPlan(o, t.target_weight if o.reduction is Reduction.MEAN else None)
    value = plan.value(loss)
    if o.reduction is Reduction.NONE:
        value = value.reshape(a.rows)
    return value, plan.divisor(loss)


def _row_factor(a: Agreement, grad_out: Tensor, div: Tensor) -> Tensor:
    """``d result / d loss_i`` times grad_out, per row ([N], compute dtype)."""
    f = grad_factor(grad_out, div, a.options)  # divide last (a subnormal divisor stays finite)
    return f if a.options.reduction is Reduction.NONE else f.expand(a.num_rows)


def _grad_block(a: Agreement, x: Tensor, t: _Targets, rows: slice, saved: _Saved,
                f: Tensor) -> Tensor:
    """d result / d x for a ``[n, V_r]`` block of raw logits x (compute dtype)."""
    o = a.options
    cap = o.softcap
    xc = x if cap is None else x.to(a.compute_dtype)
    g = _rowstats.slice_grad(
        softcap(xc, cap), t.index[rows], a.start, counted=t.counted[rows], m=saved.m[rows],
        rest=saved.rest[rows], lse=saved.lse[rows],
        target_coef=_target_coef(a, t)[rows], soft=_soft(a), weight=t.local_weight,
        total_weight=t.total_weight, z_loss=o.z_loss, row_factor=f[rows],
        compensate=_compensate(a), dtype=a.compute_dtype, argmax=saved.argmax[rows],
    )
    if cap is not None:
        g.mul_(softcap_derivative(xc, cap))  # chain rule through z = c tanh(x / c)
    return g


def _block_stats(a: Agreement, x: Tensor, t: _Targets, rows: slice) -> RowStats:
    """The statistics of a block of raw logits (any float dtype: promoted, not copied)."""
    cap = a.options.softcap
    z = x if cap is None else softcap(x.to(a.compute_dtype), cap)
    return _rowstats.slice_stats(z, t.index[rows], a.start, counted=t.counted[rows],
                                 weight=t.local_weight, soft=_soft(a),
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
