r"""The ranks of a vocabulary-parallel group, as the token statistics' engine sees them.

:class:`VocabRanks` is the engine's :class:`~crossentropy.torch._tokenstats.Ranks`: each
rank accumulates the :class:`~crossentropy.torch._tokenstats.Partial` of its own shard
(slice statistics relative to the shard maximum, top-k candidates and the argmax, with
global class indices), then :meth:`VocabRanks.merge` exchanges them in **one** all-gather
of a float64 ``[N, c]`` buffer per rank,

``c = 3`` (``m, rest, m - z'_y``) ``+ 1`` with label smoothing (``B``) ``+ 1`` with the
entropy (``ent``) ``+ 1`` for the argmax without top-k ``+ 2k`` for the top-k candidates
(values and indices; integers below ``2^53`` are exact in float64),

and every rank merges the ``P`` partials alike: the statistics by the one merge rule
(:func:`~crossentropy.torch._rowstats.merge_stacked`), the top-k candidates by
:func:`~crossentropy.torch._tokenstats.top_merge` folded in rank order (class order:
ties go to the lower index) and the argmax by
:func:`~crossentropy.torch._tokenstats.argmax_merge`.  Every rank then finishes
the same rows by the same formula (``row_outputs``), so every output is identical on
every rank.  Backward recomputes each rank's own blocks from the merged statistics; the
hidden states' gradient needs one all-reduce SUM (:meth:`VocabRanks.sum_hidden_grad`).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist
from torch import Tensor

from crossentropy.torch import _rowstats as rs
from crossentropy.torch import _tokenstats as ts
from crossentropy.torch.distributed._protocol import Agreement

__all__ = ["VocabRanks"]

_F64 = torch.float64


class VocabRanks:
    """The agreed layout of one call (:class:`~._protocol.Agreement`) and its collectives."""

    def __init__(self, agreement: Agreement) -> None:
        self.a = agreement

    def merge(self, part: ts.Partial, tg: rs.IndexTargets, st: ts.Setup) -> ts.Partial:
        """The whole vocabulary's partial from every rank's: one all-gather."""
        a, s, want = self.a, part.stats, st.want
        N, k = s.m.shape[0], want.top_k
        cols = [s.m, s.rest, s.zy]
        if s.agap is not None:
            cols.append(s.agap)
        if s.ent is not None:
            cols.append(s.ent)
        if s.argmax is not None:
            cols.append(s.argmax.to(_F64))
        width = len(cols)
        mine = torch.stack(cols, dim=1) if cols else s.m.new_empty(N, 0)
        if k:
            # this shard's min(k, V_r) candidates, padded to k (the padding is cut below)
            assert part.top is not None
            v, i = part.top
            pad = k - v.shape[1]
            vals = torch.cat([v.to(_F64), v.new_full((N, pad), -torch.inf, dtype=_F64)], 1)
            idx = torch.cat([i.to(_F64), i.new_zeros(N, pad, dtype=_F64)], 1)
            mine = torch.cat([mine, vals, idx], dim=1)
        mine = mine.contiguous()
        got = [torch.empty_like(mine) for _ in range(a.world_size)]
        dist.all_gather(got, mine, group=a.group)  # the forward's one collective: P x N x c
        p = torch.stack(got)  # [P, N, c]
        sizes, starts = a.shard_sizes, [sum(a.shard_sizes[:r]) for r in range(a.world_size)]
        # which rank's shard holds the target: slice_stats' has_y on every rank
        own = torch.stack([tg.counted & (tg.safe >= o) & (tg.safe < o + n)
                           for o, n in zip(starts, sizes, strict=True)])
        j = 3
        agap = ent = asum = None
        if s.agap is not None:
            agap, j = p[:, :, j], j + 1
            soft = st.opts.label_smoothing / a.num_classes
            cw = st.class_weight
            # A_r = (eps / V) sum of rank r's class weights, as its slice statistics
            per = [float(n) * soft for n in sizes] if cw is None else \
                [cw[o:o + n].sum() * soft for o, n in zip(starts, sizes, strict=True)]
            asum = torch.stack([torch.as_tensor(x, dtype=_F64, device=p.device)
                                for x in per])[:, None]
        if s.ent is not None:
            ent, j = p[:, :, j], j + 1
        stats = rs.merge_stacked(rs.RowStats(p[:, :, 0], p[:, :, 1], p[:, :, 2], own, asum,
                                             agap, None, ent))
        live = [r for r in range(a.world_size) if sizes[r]]  # an empty shard adds nothing
        if s.argmax is not None:
            best: tuple[Tensor, Tensor] | None = None
            for r in live:  # rank order: the first maximum of the whole row
                best = ts.argmax_merge(best, p[r, :, 0], p[r, :, j].to(torch.int64))
            stats = replace(stats, argmax=None if best is None else best[1])
            j += 1
        assert j == width
        top = None
        if k:
            for r in live:  # rank order (class order): ties keep the lower index first
                n = min(k, sizes[r])
                cand = (p[r, :, width:width + n], p[r, :, width + k:width + k + n])
                top = ts.top_merge(top, (cand[0], cand[1].to(torch.int64)), k)
        return ts.Partial(stats, top)

    def sum_hidden_grad(self, gh: Tensor) -> None:
        """``dL/dh = sum_r (dL/dz_r) W_r``: one all-reduce SUM of ``[N, D]``, in place."""
        dist.all_reduce(gh, op=dist.ReduceOp.SUM, group=self.a.group)
