"""What the installed torch has, for tests that also run on the declared floor (torch 2.7).

torch 2.13 added ``torch.nn.functional.linear_cross_entropy``, ``torch.nn.LinearCrossEntropyLoss``
and ``torch.nn.LinearCrossEntropyOptions`` (torch 2.12.1's wheel has none of them).  A test that
compares with torch's own implementation is skipped on an older torch, naming the release; a
test that only passes the options to say how many rows a chunk holds passes the same count as
``chunks=ChunkPlan(rows=...)`` there instead (:func:`rows_kwargs`).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from crossentropy.torch import ChunkPlan

#: torch >= 2.13: torch's linear cross-entropy (functional, module and options) exists.
HAS_TORCH_LINEAR_CE = all(
    hasattr(mod, name)
    for mod, name in ((torch.nn, "LinearCrossEntropyOptions"),
                      (torch.nn, "LinearCrossEntropyLoss"),
                      (torch.nn.functional, "linear_cross_entropy"))
)

needs_torch_linear_ce = pytest.mark.skipif(
    not HAS_TORCH_LINEAR_CE,
    reason=f"compares with torch's linear_cross_entropy / LinearCrossEntropyLoss, which torch "
    f"2.13 added (installed: torch {torch.__version__})",
)


def _takes_1d_target_of_1d_logits() -> bool:
    try:
        torch.nn.functional.cross_entropy(torch.zeros(2), torch.zeros(1, dtype=torch.long))
    except RuntimeError:  # torch 2.7.1: "size mismatch (got input: [2], target: [1])"
        return False
    return True


#: torch 2.13.0 reads a (1,) index target of unbatched (C,) logits as the 0-d target (as
#: crossentropy.torch does on every torch); torch 2.7.1 raises RuntimeError for it.
TORCH_TAKES_1D_TARGET_OF_1D_LOGITS = _takes_1d_target_of_1d_logits()


def torch_linear_cross_entropy(input: torch.Tensor, linear_weight: torch.Tensor,
                               target: torch.Tensor, *, linear_bias: torch.Tensor | None = None,
                               **kw: Any) -> torch.Tensor:
    """torch's ``F.linear_cross_entropy`` (torch >= 2.13) for a 2-D ``linear_weight`` and
    index targets; on an older torch its definition, ``F.cross_entropy(F.linear(...))``, with
    torch's own functions (an independent reference either way)."""
    F = torch.nn.functional
    if HAS_TORCH_LINEAR_CE:
        out: torch.Tensor = F.linear_cross_entropy(input, linear_weight, target,
                                                   linear_bias=linear_bias, **kw)
        return out
    return F.cross_entropy(F.linear(input, linear_weight, linear_bias), target, **kw)


def rows_kwargs(rows: int | None, plan: ChunkPlan | None = None) -> dict[str, Any]:
    """Keywords that cut the tokens into chunks of ``rows``: torch's
    ``LinearCrossEntropyOptions(batch_chunk_size=rows)`` where torch has it (torch >= 2.13),
    else ``chunks=ChunkPlan(rows=rows)``; ``plan`` supplies the other ChunkPlan fields."""
    if rows is None:
        return {} if plan is None else {"chunks": plan}
    if HAS_TORCH_LINEAR_CE:
        kw: dict[str, Any] = {"options": torch.nn.LinearCrossEntropyOptions(batch_chunk_size=rows)}
        if plan is not None:
            kw["chunks"] = plan
        return kw
    base = plan if plan is not None else ChunkPlan()
    return {"chunks": ChunkPlan(rows, base.vocab, base.budget_bytes)}
