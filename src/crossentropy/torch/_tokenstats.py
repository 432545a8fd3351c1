r"""Per-token statistics of the output layer, chunk by chunk: the engine behind
:func:`crossentropy.torch.token_stats`, :func:`crossentropy.torch.linear_token_stats`,
the per-token outputs of :func:`crossentropy.torch.linear_cross_entropy` and, on a
vocabulary shard, :func:`crossentropy.torch.distributed.token_stats`.

Forward is :func:`accumulate` (the source's classes, possibly a shard at a global class
offset: a :class:`Partial` of slice statistics, top-k candidates and the argmax), then,
on a vocabulary-parallel group, :class:`Ranks` merges the ranks' partials, then
:func:`finish_rows` (the one per-row finish, :func:`row_outputs`).

The logits come from a *source*: hidden states times the output embedding (``z = h W^T + b``,
:class:`LinearSource`) or a logits tensor (:class:`LogitsSource`).  They are cut into
``rows`` tokens by ``vocab`` classes (a resolved :class:`~._chunks.ChunkPlan`); each block is
turned into ``z' = softcap(z) / tau`` (float64 on every device, as the vocabulary slices
of the linear loss) and reduced to the row statistics of :mod:`._rowstats`, merged in class
order.  From the merged statistics of a row (``m``, ``rest``, ``m - z_y``, the entropy's sum
``ent``; ``L = log1p(rest)``):

.. math::

    \ell &= \text{the loss of } :func:`~._rowstats.finish` \\
    \log p_y &= -\big((m - z'_y) + L\big), \qquad
    H = L + \frac{\text{ent}}{1 + \text{rest}}, \qquad
    \log p_{i_j} = -\big((m - z'_{i_j}) + L\big)

every one a sum of terms of one sign (no cancellation).  The top-k classes are those of
``z'`` (ties: the lower index first; ``predicted`` is the first of them, the argmax).

Backward recomputes each block's logits (nothing logits-sized is kept between forward and
backward) and writes, per block, with ``p_c = e^{z'_c - m} / (1 + rest)`` and the incoming
gradients ``g_loss, g_lse, g_lp, g_H, g_j`` of the per-row outputs,

.. math::

    \frac{\partial}{\partial z'_c} = g_\text{loss} \frac{\partial \ell}{\partial z'_c}
        + g_\text{lse}\, p_c
        - g_\text{lp} \big(p_c - [c = y]\big)
        - g_H\, p_c \big((z'_c - m) + \bar E\big)
        - \sum_j g_j \big(p_c - [c = i_j]\big),
    \qquad \bar E = \frac{\text{ent}}{1 + \text{rest}} = m - \textstyle\sum_c p_c z'_c

(:math:`\partial H / \partial z'_c = -p_c (z'_c - \sum_d p_d z'_d)`); each ``p_c - [c = i]``
is :func:`~._rowstats.slice_grad` of a one-hot target (exact at the argmax:
``rest / (1 + rest)``, not ``1 - p``), then ``dz'/dz = sech^2(z / c) / tau``, multiplied
into the source's gradients (``grad_h = dz W``, ``grad_W += dz^T h``, ``grad_b += sum dz``,
or the logits' gradient itself).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from crossentropy._options import CrossEntropyOptions
from crossentropy.torch import _rowstats as rs
from crossentropy.torch._chunks import ChunkPlan, _allocated

__all__ = ["LinearSource", "LogitsSource", "Outputs", "Partial", "Ranks", "Want", "run"]

_LOW = (torch.bfloat16, torch.float16)
_F64 = torch.float64


@dataclass(frozen=True)
class Want:
    """Which per-row outputs to compute (the loss and lse always are: they cost nothing)."""

    logprobs: bool = False
    entropy: bool = False
    top_k: int = 0
    predicted: bool = False


class Outputs:
    """The per-row outputs of :func:`run`, float64 ``[N]`` (top-k ``[N, k]``)."""

    def __init__(self, loss: Tensor, lse: Tensor, logprobs: Tensor | None,
                 entropy: Tensor | None, top_values: Tensor | None, top_indices: Tensor | None,
                 predicted: Tensor | None) -> None:
        self.loss, self.lse, self.logprobs, self.entropy = loss, lse, logprobs, entropy
        self.top_values, self.top_indices, self.predicted = top_values, top_indices, predicted


# --------------------------------------------------------------------------- sources


class LinearSource:
    """Logits ``z = h W^T + b`` of hidden states `h` ``[N, D]``, embedding `W` ``[V, D]``,
    in the compute dtype (float32 for bfloat16/float16 inputs)."""

    def __init__(self, h: Tensor, W: Tensor, b: Tensor | None) -> None:
        self.h, self.W, self.b = h, W, b
        self.cdt = torch.float32 if h.dtype in _LOW else h.dtype
        self.N, self.V = h.shape[0], W.shape[0]
        self._w = W.to(self.cdt)
        self._b = None if b is None else b.to(self.cdt)
        self.gh: Tensor | None = None
        self.gW: Tensor | None = None
        self.gb: Tensor | None = None

    def logits(self, s: int, e: int, v0: int, v1: int, buf: Tensor) -> Tensor:
        z = buf[: e - s, : v1 - v0]
        torch.mm(self.h[s:e].to(self.cdt), self._w[v0:v1].t(), out=z)
        if self._b is not None:
            z.add_(self._b[v0:v1])
        return z

    def start_grads(self, need: tuple[bool, ...]) -> None:
        dev, D = self.h.device, self.h.shape[1]
        self.gh = torch.zeros(self.N, D, dtype=self.cdt, device=dev) if need[0] else None
        self.gW = torch.zeros(self.V, D, dtype=self.cdt, device=dev) if need[1] else None
        self.gb = torch.zeros(self.V, dtype=self.cdt, device=dev) \
            if len(need) > 2 and need[2] and self.b is not None else None

    def add_grad(self, s: int, e: int, v0: int, v1: int, dz64: Tensor) -> None:
        dz = dz64.to(self.cdt)
        if self.gh is not None:
            self.gh[s:e].addmm_(dz, self._w[v0:v1])
        if self.gW is not None:
            self.gW[v0:v1].addmm_(dz.t(), self.h[s:e].to(self.cdt))
        if self.gb is not None:
            self.gb[v0:v1].add_(dz.sum(0))

    def grads(self) -> tuple[Tensor | None, ...]:
        gh = None if self.gh is None else self.gh.to(self.h.dtype)
        gW = None if self.gW is None else self.gW.to(self.W.dtype)
        gb = None if self.gb is None or self.b is None else self.gb.to(self.b.dtype)
        return gh, gW, gb


class LogitsSource:
    """Logits given as a ``[N, V]`` tensor (read in blocks; never copied whole)."""

    def __init__(self, x: Tensor) -> None:
        self.x = x
        self.cdt = torch.float32 if x.dtype in _LOW else x.dtype
        self.N, self.V = x.shape
        self.gx: Tensor | None = None

    def logits(self, s: int, e: int, v0: int, v1: int, buf: Tensor) -> Tensor:
        z = buf[: e - s, : v1 - v0]
        z.copy_(self.x[s:e, v0:v1])
        return z

    def start_grads(self, need: tuple[bool, ...]) -> None:
        self.gx = torch.empty(self.N, self.V, dtype=self.x.dtype, device=self.x.device) \
            if need[0] else None

    def add_grad(self, s: int, e: int, v0: int, v1: int, dz64: Tensor) -> None:
        if self.gx is not None:
            self.gx[s:e, v0:v1] = dz64  # one rounding, to the logits' dtype

    def grads(self) -> tuple[Tensor | None, ...]:
        return (self.gx,)


Source = LinearSource | LogitsSource


# --------------------------------------------------------------------------- the budget

#: The largest default budget for one block's temporaries (bytes).
DEFAULT_BUDGET = 128 << 20


def block_bytes(cdt: torch.dtype, want: Want, softcap: bool, temperature: bool) -> int:
    """Bytes one logit of a block costs at the peak of forward or backward: the logits
    buffer and the gradient in the compute dtype, two float64 temporaries (``e^{z - m}``
    and ``z - m`` or the entropy's terms); ``z' = softcap(z) / tau`` in float64 when either
    transforms the logits; for a soft cap its derivative and the one temporary of computing
    it; for the top-k the selection's masks and keys (three bools and two int64).  (Checked
    against the resident memory by ``tests/test_token_stats.py``.)"""
    item = torch.empty(0, dtype=cdt).element_size()
    b = 2 * item + 2 * 8
    if softcap or temperature:
        b += 8
    if softcap:
        b += 2 * 8
    if want.top_k:
        b += 3 + 2 * 8
    return b


def default_budget(device: torch.device) -> int:
    """:data:`DEFAULT_BUDGET`, or an eighth of the device's free memory if that is less
    (at least 16 MiB): CUDA's ``mem_get_info``, the CPU's ``MemAvailable``."""
    free = None
    try:
        if device.type == "cuda":
            free = int(torch.cuda.mem_get_info(device)[0])
        elif device.type == "cpu":
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        free = int(line.split()[1]) * 1024
                        break
    except (OSError, RuntimeError, ValueError):
        free = None
    if free is None:
        return DEFAULT_BUDGET
    return max(16 << 20, min(DEFAULT_BUDGET, free // 8))


def plan(chunks: ChunkPlan | None, n: int, V: int, cdt: torch.dtype, want: Want,
         opts: CrossEntropyOptions, temperature: float, device: torch.device) -> ChunkPlan:
    """The resolved plan: `chunks`' rows and vocabulary slice where given, else as many as
    fit its ``budget_bytes`` (default :func:`default_budget`) at :func:`block_bytes` per
    logit, so that the temporaries of one block stay within the budget."""
    per = block_bytes(cdt, want, opts.softcap is not None, temperature != 1.0)
    base = chunks if chunks is not None else ChunkPlan(budget_bytes=default_budget(device))
    if base.budget_bytes < per:
        raise ValueError(
            f"chunks.budget_bytes={base.budget_bytes} is too small for the temporaries of one "
            f"logit ({per} bytes for these outputs in {cdt}); give at least {per}")
    return base.resolve(n, V, per)


# --------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Setup:
    """One call's constants: options (ignore_index, smoothing, z-loss, soft cap), the
    temperature, the resolved chunk plan, the outputs wanted, the class weights."""

    opts: CrossEntropyOptions
    temperature: float
    plan: ChunkPlan
    want: Want
    class_weight: Tensor | None  # float64 [V] or None (the whole vocabulary's)
    #: the whole vocabulary's first class held by the source (a vocabulary shard's start)
    offset: int = 0
    #: the whole vocabulary's size (None: the source's own, a single process)
    num_classes: int | None = None
    #: the ranks of a vocabulary-parallel group (:class:`Ranks`), None in one process
    ranks: Ranks | None = None

    def classes(self, src: Source) -> int:
        """``V``, the number of classes of the whole vocabulary."""
        return src.V if self.num_classes is None else self.num_classes


class Ranks(Protocol):
    """What a vocabulary-parallel group adds to the engine (one implementation:
    :class:`crossentropy.torch.distributed._ranks.VocabRanks`)."""

    def merge(self, part: Partial, tg: rs.IndexTargets, st: Setup) -> Partial:
        """The whole vocabulary's :class:`Partial` from this rank's (collectives)."""

    def sum_hidden_grad(self, gh: Tensor) -> None:
        """Sum the hidden states' gradient over the ranks, in place."""


def _transformed(z: Tensor, st: Setup, derivative: bool = False
                 ) -> tuple[Tensor, Tensor | float | None]:
    """``z' = softcap(z) / tau`` in float64 and, if asked, ``dz'/dz``: a tensor under a soft
    cap, the number ``1 / tau`` for a temperature alone, None where it is 1."""
    cap, tau = st.opts.softcap, st.temperature
    if cap is None and tau == 1.0:
        return z, None
    z64 = z.to(_F64, copy=True)  # a scratch copy: transformed in place
    d = None
    if cap is not None:
        if derivative:
            d = rs.softcap_derivative(z64.clone(), cap, inplace=True)
        z64 = rs.softcap(z64, cap, inplace=True)
    if tau != 1.0:
        z64.div_(tau)  # z / tau: one rounding, in float64
    if not derivative:
        return z64, None
    # d/dz (softcap(z) / tau) = sech^2(z / c) / tau
    return z64, (1.0 / tau if d is None else d.div_(tau) if tau != 1.0 else d)


def _top_first(z: Tensor, k: int, offset: int) -> tuple[Tensor, Tensor]:
    """The ``min(k, V_s)`` largest of a ``[n, V_s]`` block, values descending and ties in
    index order (``torch.topk`` leaves the order of ties unspecified), as global indices."""
    vs = z.shape[1]
    k = min(k, vs)
    t = torch.topk(z, k, dim=1).values[:, -1:]  # the k-th largest value
    gt, eq = z > t, z == t
    room = k - gt.sum(dim=1, keepdim=True)  # how many ties at t are taken: the first ones
    take = gt | (eq & (eq.cumsum(dim=1) <= room))
    # the taken columns in increasing order: the largest keys vs - col (no host sync)
    col = torch.arange(vs, device=z.device)
    key = torch.where(take, vs - col, torch.zeros_like(col))
    idx = (vs - torch.topk(key, k, dim=1).values).clamp_(0, vs - 1)
    vals = z.gather(1, idx)
    vals, order = torch.sort(vals, dim=1, descending=True, stable=True)
    return vals, idx.gather(1, order) + offset


def top_merge(cur: tuple[Tensor, Tensor] | None, new: tuple[Tensor, Tensor], k: int
               ) -> tuple[Tensor, Tensor]:
    """The top `k` of two candidate lists, the first holding the lower classes: a stable
    sort keeps ties in index order."""
    if cur is None:
        return new
    v = torch.cat([cur[0], new[0]], dim=1)
    i = torch.cat([cur[1], new[1]], dim=1)
    v, order = torch.sort(v, dim=1, descending=True, stable=True)
    return v[:, :k], i.gather(1, order[:, :k])


def targets(target: Tensor | None, s: int, e: int, V: int, st: Setup,
            device: torch.device) -> rs.IndexTargets:
    """The :class:`~._rowstats.IndexTargets` of rows ``[s, e)`` of `target` over the whole
    vocabulary's `V` classes (None: every row counts, no target, weight 0)."""
    if target is None:  # no targets: every row counts for the target-free outputs
        n = e - s
        ones = torch.ones(n, dtype=torch.bool, device=device)
        z = torch.zeros(n, dtype=torch.int64, device=device)
        return rs.IndexTargets(ones, z, ~ones, torch.zeros(n, dtype=_F64, device=device))
    return rs.index_targets(target[s:e], ignore_index=st.opts.ignore_index, num_classes=V,
                            weight=st.class_weight, dtype=_F64)


def _blocks(V: int, plan: ChunkPlan) -> list[tuple[int, int]]:
    vs = plan.vocab or max(V, 1)
    return [(v0, min(V, v0 + vs)) for v0 in range(0, max(V, 1), vs)] if V else [(0, 0)]


def _buffer(src: Source, plan: ChunkPlan) -> Tensor:
    rows = min(plan.rows or max(src.N, 1), max(src.N, 1))
    vs = min(plan.vocab or src.V, src.V)
    _allocated((rows, vs))
    return torch.empty(rows, vs, dtype=src.cdt, device=_device(src))


def _device(src: Source) -> torch.device:
    return src.h.device if isinstance(src, LinearSource) else src.x.device


@dataclass
class Saved:
    """What backward needs of each row: the merged statistics and the top-k indices."""

    m: Tensor
    rest: Tensor
    lse: Tensor
    ent: Tensor | None
    top_indices: Tensor | None


def row_outputs(stats: rs.RowStats, tg: rs.IndexTargets, st: Setup
                ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(loss, lse, log p_y, H)`` per row from the merged statistics of whole rows: the one
    finish of every path (the blocks here, the Triton kernels, the vocabulary-parallel
    ranks).  ``stats.zy`` is ``m - z'_y``; ``log p_y`` is 0 on rows not counted; the last
    two are None where not asked (module notes for the formulas)."""
    eps = st.opts.label_smoothing
    loss, lse = rs.finish(stats, counted=tg.counted, target_coef=(1.0 - eps) * tg.weight,
                          z_loss=st.opts.z_loss, invalid=tg.invalid)
    lp = H = None
    if st.want.logprobs:
        # log p_y = -((m - z'_y) + L); 0 at rows not counted; NaN on a row of all -inf (no
        # distribution, as its loss and entropy; -log1p(rest) would depend on how many
        # slices or ranks the row was cut into)
        lp = rs.log_prob(stats, stats.zy)
        lp = torch.where(stats.m == -math.inf, torch.full_like(lp, math.nan), lp)
        lp = torch.where(tg.counted, lp, torch.zeros_like(loss))
    if st.want.entropy and stats.ent is not None:
        H = rs.entropy(stats)
    return loss, lse, lp, H


@dataclass(frozen=True)
class Partial:
    """The statistics of the classes a source holds, per row: a whole row's in one process,
    a vocabulary shard's on a rank (merged across the ranks by :class:`Ranks`).

    ``stats`` holds ``[N]`` fields (``argmax``: the global index of the first maximum, when
    the predicted token is asked without top-k; ``ent`` with the entropy); ``top`` the
    top-k candidates, ``z'`` values descending ``[N, min(k, V_s)]`` and their global
    indices (ties: the lower index first)."""

    stats: rs.RowStats
    top: tuple[Tensor, Tensor] | None


def argmax_merge(best: tuple[Tensor, Tensor] | None, m: Tensor, at: Tensor
                 ) -> tuple[Tensor, Tensor]:
    """``(max, first argmax)`` of the classes so far (`best`) and of a part of higher classes
    (maximum `m`, reached first at `at`): the later part wins only with a larger maximum (a
    NaN, as ``torch.topk``'s, counts as the largest)."""
    if best is None:
        return m, at
    up = (m > best[0]) | (torch.isnan(m) & ~torch.isnan(best[0]))
    return torch.where(up, m, best[0]), torch.where(up, at, best[1])


def accumulate(src: Source, target: Tensor | None, st: Setup) -> Partial:
    """The :class:`Partial` of the source's classes ``[st.offset, st.offset + V_s)``, block
    by block: slice statistics merged in class order, top-k candidates, the argmax."""
    N, Vs, dev = src.N, src.V, _device(src)
    V, off, want = st.classes(src), st.offset, st.want
    soft = st.opts.label_smoothing / V if V else 0.0
    comp = src.cdt == _F64  # float32 logits are exact in float64: no TwoSum needed

    def f64(*shape: int) -> Tensor:
        return torch.empty(*shape, dtype=_F64, device=dev)

    m, rest, zy = f64(N), f64(N), f64(N)
    has_y = torch.empty(N, dtype=torch.bool, device=dev)
    agap = f64(N) if soft else None
    ent = f64(N) if want.entropy else None
    k = want.top_k
    kk = min(k, Vs)
    topv = torch.empty(N, kk, dtype=src.cdt if st.opts.softcap is None
                       and st.temperature == 1.0 else _F64, device=dev) if k else None
    topi = torch.empty(N, kk, dtype=torch.int64, device=dev) if k else None
    pred = torch.empty(N, dtype=torch.int64, device=dev) if want.predicted and not k else None
    asum: Tensor | None = None
    buf = _buffer(src, st.plan)
    rows = st.plan.rows or max(N, 1)
    cw = st.class_weight
    for s in range(0, N, rows):
        e = min(N, s + rows)
        tg = targets(target, s, e, V, st, dev)
        stats: rs.RowStats | None = None
        top: tuple[Tensor, Tensor] | None = None
        best: tuple[Tensor, Tensor] | None = None  # (max, first argmax) so far, no top-k
        for v0, v1 in _blocks(Vs, st.plan):
            g0 = off + v0  # the block's first class in the whole vocabulary
            zc, _ = _transformed(src.logits(s, e, v0, v1, buf), st)
            cur = rs.slice_stats(zc, tg.safe, g0, counted=tg.counted,
                                 weight=None if cw is None else cw[g0:off + v1], soft=soft,
                                 compensate=comp, dtype=_F64, entropy=want.entropy)
            stats = cur if stats is None else rs.merge(stats, cur)
            if k and v1 > v0:
                top = top_merge(top, _top_first(zc, k, g0), k)
            elif pred is not None and cur.argmax is not None:
                # the argmax from the slice statistics (no top-k selection)
                best = argmax_merge(best, cur.m, cur.argmax + g0)
        assert stats is not None
        m[s:e], rest[s:e], zy[s:e], has_y[s:e] = stats.m, stats.rest, stats.zy, stats.has_y
        asum = stats.asum
        if agap is not None and stats.agap is not None:
            agap[s:e] = stats.agap
        if ent is not None and stats.ent is not None:
            ent[s:e] = stats.ent
        if topv is not None and topi is not None and top is not None:
            topv[s:e], topi[s:e] = top
        if pred is not None:
            # an empty source has no argmax: its first class (any index; it loses every
            # merge, and a single process has no empty source with rows)
            pred[s:e] = off if best is None else best[1]
    if soft and asum is None:  # no rows: A = (eps / V) sum_c w_c over the source's classes
        asum = torch.tensor(soft * Vs, dtype=_F64, device=dev) if cw is None \
            else cw[off:off + Vs].sum() * soft
    stats = rs.RowStats(m, rest, zy, has_y, asum, agap, pred, ent)
    return Partial(stats, None if topv is None or topi is None else (topv, topi))


def finish_rows(part: Partial, tg: rs.IndexTargets, st: Setup) -> tuple[Outputs, Saved]:
    """Every per-row output from the whole vocabulary's :class:`Partial` (module notes)."""
    stats, want = part.stats, st.want
    loss, lse, lp, H = row_outputs(stats, tg, st)
    topv = topi = None
    if want.top_k and part.top is not None:
        # log p of the top classes: -((m - z'_i) + L), m - z'_i >= 0
        gap = (stats.m[:, None] - part.top[0].to(_F64)).clamp_min_(0.0)
        topv, topi = rs.log_prob(stats, gap), part.top[1]
    pred = None
    if want.predicted:
        pred = topi[:, 0].clone() if topi is not None else stats.argmax
    outs = Outputs(loss, lse, lp, H, topv, topi, pred)
    return outs, Saved(stats.m, stats.rest, lse, stats.ent if want.entropy else None, topi)


def forward(src: Source, target: Tensor | None, st: Setup) -> tuple[Outputs, Saved]:
    """Every per-row output: the source's :class:`Partial` (:func:`accumulate`), merged
    across the ranks of a vocabulary-parallel group (``st.ranks``), finished
    (:func:`finish_rows`)."""
    part = accumulate(src, target, st)
    tg = targets(target, 0, src.N, st.classes(src), st, _device(src))
    if st.ranks is not None:
        part = st.ranks.merge(part, tg, st)
    return finish_rows(part, tg, st)


@dataclass(frozen=True)
class RowGrads:
    """One token chunk's incoming gradients (float64 ``[n]``, top ``[n, k]``; None where
    nothing flows) and its saved statistics."""

    m: Tensor
    rest: Tensor
    lse: Tensor
    ebar: Tensor | None  # ent / (1 + rest) = m - sum_c p_c z'_c
    loss: Tensor | None
    lse_g: Tensor | None
    lp: Tensor | None
    H: Tensor | None
    top: Tensor | None
    top_i: Tensor | None


def row_coefficients(r: RowGrads, tg: rs.IndexTargets, kg: Tensor, st: Setup, soft: float,
                     w_k: Tensor | None, wtot: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(A, A - b_k, b_k)`` per row: the gradient's coefficients (:func:`_block_grad`) at a
    maximal element ``kg`` (global class index; ``w_k`` its class weight, None without
    weights), ``A - b_k`` summed from its own terms.  The one place that knows how the
    incoming gradients of the outputs combine; every path's backward (the blocks here, the
    Triton kernels) writes ``g_c = p_c A - b_c - g_H p_c (z'_c - m)`` from these.  NaN in
    ``A`` on rows of all ``-inf`` or holding a NaN (no distribution)."""
    m = r.m
    zero = torch.zeros_like(m)
    A, A_minus, b_k = zero.clone(), zero.clone(), zero.clone()
    y_is_k = tg.counted & (tg.safe == kg)
    if r.loss is not None:
        a_y = (1.0 - st.opts.label_smoothing) * tg.weight  # 0 on rows not counted
        W, w_minus, a_k = rs.index_coefficients(
            a_y=a_y, k_is_y=y_is_k, counted=tg.counted, soft=soft, total_weight=wtot,
            w_k=w_k, zl=2.0 * st.opts.z_loss * r.lse if st.opts.z_loss else None)
        A, A_minus, b_k = A + r.loss * W, A_minus + r.loss * w_minus, b_k + r.loss * a_k
    if r.lse_g is not None:
        A, A_minus = A + r.lse_g, A_minus + r.lse_g
    if r.lp is not None:
        glp = torch.where(tg.counted, r.lp, zero)  # log p of an ignored row is 0
        A = A - glp
        A_minus = A_minus - torch.where(y_is_k, zero, glp)
        b_k = b_k - torch.where(y_is_k, glp, zero)
    if r.top is not None and r.top_i is not None:
        hit = r.top_i == kg[:, None]
        A = A - r.top.sum(dim=1)
        A_minus = A_minus - torch.where(hit, 0.0, r.top).sum(dim=1)
        b_k = b_k - torch.where(hit, r.top, 0.0).sum(dim=1)
    if r.H is not None and r.ebar is not None:
        A, A_minus = A - r.H * r.ebar, A_minus - r.H * r.ebar
    # a row of all -inf (no distribution) or holding a NaN: NaN wherever a gradient flows
    bad = (m == -math.inf) | torch.isnan(m)
    A = torch.where(bad, torch.full_like(A, math.nan), A)
    return A, A_minus, b_k


def _block_grad(zc: Tensor, tg: rs.IndexTargets, v0: int, r: RowGrads, st: Setup,
                soft: float, wslice: Tensor | None, wtot: Tensor | float, comp: bool
                ) -> Tensor:
    r"""``d (sum of the outputs times their incoming gradients) / d z'`` for one block
    ``[n, V_s]`` of classes ``[v0, v0 + V_s)``, float64, in one expression:

    .. math::

        g_c = p_c A - b_c - g_H\, p_c (z'_c - m), \qquad
        A = g_\ell W + g_\text{lse} - g_\text{lp} - \sum_j g_j - g_H \bar E

    with ``W = sum_c a_c + 2 zeta lse`` the loss's coefficient
    (:func:`~._rowstats.index_coefficients`) and ``b_c`` the one-hot and smoothing parts:
    ``g_l a_y - g_lp`` at the target, ``-g_j`` at each top-k class, ``g_l eps w_c / V``
    everywhere.  At the row's maximal element ``k`` (``p_k = 1 / (1 + rest)``) the entry is written
    ``((A - b_k) - b_k rest) / (1 + rest)`` with ``A - b_k`` summed from its own terms (the
    one-hot parts that cancel dropped), so a confident target's ``1 - p_y`` is
    ``rest / (1 + rest)``, not a difference of two numbers near 1 (as the loss's gradient
    in :func:`~._rowstats.slice_grad`).  Two float64 temporaries of the block's size.
    """
    vs = zc.shape[1]
    m, rest = r.m, r.rest
    denom = 1.0 + rest
    zero = torch.zeros_like(m)
    in_slice = (tg.safe >= v0) & (tg.safe < v0 + vs)
    # this block's maximal element, where it is the row's maximum (finite)
    k = zc.argmax(dim=1)
    at_max = (zc.gather(1, k[:, None])[:, 0] == m) & torch.isfinite(m)
    kg = k + v0
    A, A_minus, b_k = row_coefficients(r, tg, kg, st, soft,
                                       None if wslice is None else wslice[k], wtot)
    # e_c = e^{z'_c - m} = p_c (1 + rest) (1 at ties, also at +inf; see exp_diff), and for
    # the entropy t_c = (z'_c - m) e_c (0 at a -inf logit, not 0 * inf)
    mm = m[:, None]
    t = None
    if comp:  # float64 logits: TwoSum in the difference (exp_diff)
        e = rs.exp_diff(zc, mm, True)
        if r.H is not None:
            t = (zc - mm).mul_(e).nan_to_num_(0.0, 0.0, 0.0)
    else:  # float32 logits are exact in float64: one conversion, then in place
        d = zc.to(_F64, copy=True).sub_(mm)
        if r.H is not None:
            e = d.exp().nan_to_num_(1.0, math.inf, 0.0)
            t = d.mul_(e).nan_to_num_(0.0, 0.0, 0.0)
        else:
            e = d.exp_().nan_to_num_(1.0, math.inf, 0.0)
    g = e.mul_((A / denom)[:, None])
    if t is not None and r.H is not None:
        g.addcmul_(t, (-r.H / denom)[:, None])
        del t
    if r.loss is not None and soft:
        # - g_l (eps / V) w_c
        f = torch.where(tg.counted, r.loss * soft, zero)
        if wslice is None:
            g.sub_(f[:, None])
        else:
            g.addcmul_(f[:, None], wslice[None, :].to(g.dtype), value=-1.0)
    # the one-hot parts: - (g_l a_y - g_lp) at the target, + g_j at each top-k class
    col = (tg.safe - v0).clamp(0, max(vs - 1, 0))[:, None]
    at_y = zero
    if r.loss is not None:
        at_y = at_y - r.loss * (1.0 - st.opts.label_smoothing) * tg.weight
    if r.lp is not None:
        at_y = at_y + torch.where(tg.counted, r.lp, zero)
    g.scatter_add_(1, col, torch.where(tg.counted & in_slice, at_y, zero)[:, None])
    if r.top is not None and r.top_i is not None:
        ti = r.top_i - v0
        ok = (ti >= 0) & (ti < vs)
        g.scatter_add_(1, ti.clamp(0, max(vs - 1, 0)), torch.where(ok, r.top, 0.0))
    # the maximal element, exactly: ((A - b_k) - b_k rest) / (1 + rest)
    g_k = (A_minus - b_k * rest) / denom
    g.scatter_(1, k[:, None], torch.where(at_max, g_k, g.gather(1, k[:, None])[:, 0])[:, None])
    return g


def backward(src: Source, target: Tensor | None, st: Setup, saved: Saved,
             g: dict[str, Tensor | None], need: tuple[bool, ...]) -> tuple[Tensor | None, ...]:
    """The sources' gradients from the incoming ones `g` (keys ``loss``, ``lse``,
    ``logprobs``, ``entropy``, ``top``; None where nothing flows), block by block."""
    V, cw = st.classes(src), st.class_weight
    soft = st.opts.label_smoothing / V if V else 0.0
    comp = src.cdt == _F64
    wtot: Tensor | float = float(V) if cw is None else cw.sum()
    src.start_grads(need)
    if any(need) and src.V and src.N:
        _blocks_grad(src, target, st, saved, g, soft, wtot, comp)
    if st.ranks is not None and isinstance(src, LinearSource) and src.gh is not None:
        # every rank holds the part sum_{c in its shard} dz_c W_c of the hidden states'
        # gradient: one all-reduce SUM, before the rounding to the input's dtype
        st.ranks.sum_hidden_grad(src.gh)
    return src.grads()


def _blocks_grad(src: Source, target: Tensor | None, st: Setup, saved: Saved,
                 g: dict[str, Tensor | None], soft: float, wtot: Tensor | float,
                 comp: bool) -> None:
    """:func:`backward`'s blocks: each recomputed, its gradient added to the source's."""
    N, dev = src.N, _device(src)
    V, off, cw = st.classes(src), st.offset, st.class_weight
    buf = _buffer(src, st.plan)
    rows = st.plan.rows or max(N, 1)

    def part(name: str, s: int, e: int) -> Tensor | None:
        x = g.get(name)
        return None if x is None else x[s:e].to(_F64)

    for s in range(0, N, rows):
        e = min(N, s + rows)
        tg = targets(target, s, e, V, st, dev)
        m, rest = saved.m[s:e], saved.rest[s:e]
        r = RowGrads(
            m, rest, saved.lse[s:e],
            None if saved.ent is None else saved.ent[s:e] / (1.0 + rest),
            part("loss", s, e), part("lse", s, e), part("logprobs", s, e),
            part("entropy", s, e), part("top", s, e),
            None if saved.top_indices is None else saved.top_indices[s:e])
        for v0, v1 in _blocks(src.V, st.plan):
            g0 = off + v0  # the block's first class in the whole vocabulary
            zc, dzdx = _transformed(src.logits(s, e, v0, v1, buf), st, derivative=True)
            gz = _block_grad(zc, tg, g0, r, st, soft,
                             None if cw is None else cw[g0:off + v1], wtot, comp)
            del zc
            src.add_grad(s, e, v0, v1, gz if dzdx is None else gz.mul_(dzdx))


class _Fn(torch.autograd.Function):
    """Autograd of :func:`forward`: per-row outputs in, the sources' gradients out."""

    @staticmethod
    def forward(ctx: Any, st: Setup, kind: str, a: Tensor, b: Tensor | None,
                c: Tensor | None, target: Tensor | None) -> tuple[Tensor, ...]:
        src = _source(kind, a, b, c)
        outs, saved = forward(src, target, st)
        ctx.st, ctx.kind, ctx.saved_rows = st, kind, saved
        ctx.save_for_backward(a, b, c, target)
        ctx.set_materialize_grads(False)
        empty = torch.empty(0, dtype=_F64, device=a.device)
        res = (outs.loss, outs.lse,
               empty if outs.logprobs is None else outs.logprobs,
               empty if outs.entropy is None else outs.entropy,
               empty if outs.top_values is None else outs.top_values,
               torch.empty(0, dtype=torch.int64, device=a.device) if outs.top_indices is None
               else outs.top_indices,
               torch.empty(0, dtype=torch.int64, device=a.device) if outs.predicted is None
               else outs.predicted)
        ctx.mark_non_differentiable(res[5], res[6])
        return res

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        a, b, c, target = ctx.saved_tensors
        src = _source(ctx.kind, a, b, c)
        names = ("loss", "lse", "logprobs", "entropy", "top")
        # an output not asked for is an empty tensor: no gradient flows through it
        g = {n: (x if x is not None and x.numel() else None)
             for n, x in zip(names, grads[:5], strict=True)}
        if ctx.kind == "linear":
            need = tuple(ctx.needs_input_grad[2:5])
            gh, gW, gb = backward(src, target, ctx.st, ctx.saved_rows, g, need)
            return None, None, gh, gW, gb, None
        (gx,) = backward(src, target, ctx.st, ctx.saved_rows, g, (ctx.needs_input_grad[2],))
        return None, None, gx, None, None, None


def _source(kind: str, a: Tensor, b: Tensor | None, c: Tensor | None) -> Source:
    if kind == "linear":
        assert b is not None
        return LinearSource(a, b, c)
    return LogitsSource(a)


def run(kind: str, a: Tensor, b: Tensor | None, c: Tensor | None, target: Tensor | None,
        st: Setup) -> Outputs:
    """The per-row outputs (float64, differentiable where floating) of the logits of
    ``kind='linear'`` (``a`` hidden ``[N, D]``, ``b`` embedding ``[V, D]``, ``c`` bias) or
    ``kind='logits'`` (``a`` ``[N, V]``)."""
    res = _Fn.apply(st, kind, a, b, c, target)  # type: ignore[no-untyped-call]
    loss, lse, lp, H, tv, ti, pred = res
    want = st.want
    return Outputs(loss, lse, lp if want.logprobs else None, H if want.entropy else None,
                   tv if want.top_k else None, ti if want.top_k else None,
                   pred if want.predicted else None)

