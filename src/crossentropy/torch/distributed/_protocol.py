"""The agreement protocol of the vocabulary-parallel loss: validate locally, then agree.

Every rank validates its own arguments (building one :class:`CrossEntropyOptions` with
torch semantics), then -- with ``check=True`` -- all ranks exchange one row of int64
metadata (11 call fields and one per option field: 20; one all-gather) and compare it, so
that a rank with a bad argument or a rank that disagrees makes *every* rank raise instead
of hanging in the next collective or computing garbage.  The exchange also tells every
rank the shard sizes, so no rank needs to be told the layout.  The result is an
:class:`Agreement`: the layout and the validated call, passed unchanged to the arithmetic
(``_arithmetic.py``).
"""

from __future__ import annotations

import math
import numbers
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.distributed as dist

from crossentropy._options import CrossEntropyOptions, Reduction

__all__ = [
    "COLLECTIVES",
    "Agreement",
    "ShardMismatchError",
    "agree",
    "check_class_weight",
    "check_float_tensor",
    "check_target",
    "check_targets_in_range",
    "group_info",
    "option_code",
    "shard_range",
    "shard_sizes",
    "validate_call_options",
]

_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}
COLLECTIVES = ("all_gather", "all_reduce")
_KINDS = ("cross_entropy", "linear_cross_entropy", "token_stats", "linear_token_stats")
_NONE = -(2**62)  # the metadata code of an option that is None

# The metadata each rank contributes (int64 each), by name for the messages; then one entry
# per field of CrossEntropyOptions (reduction, ignore_index, label_smoothing, ...).
_CALL_FIELDS = (
    "error flag",  # 0: a local argument check failed on this rank
    "loss kind",  # cross_entropy or linear_cross_entropy
    "local vocabulary size",  # V_r (the one entry that may differ between ranks)
    "dtype",
    "number of rows",
    "row shape",  # crc32 of the leading shape
    "target checksum",
    "hidden size",  # linear only, else -1
    "class weight length",  # -1: none
    "collective",
    "hidden requires grad",
)
_OPTION_FIELDS = tuple(f.name for f in fields(CrossEntropyOptions))
_FIELDS = _CALL_FIELDS + _OPTION_FIELDS
_LOCAL_SIZE = _CALL_FIELDS.index("local vocabulary size")


class ShardMismatchError(ValueError):
    """The ranks of a vocabulary-parallel loss disagree (or one failed its argument checks)."""


@dataclass(frozen=True)
class Agreement:
    """What every rank of one call agreed on: the layout and the validated arguments."""

    kind: str  # one of _KINDS
    group: Any
    rank: int
    world_size: int
    shard_sizes: tuple[int, ...]  # every rank's V_r, in rank order
    options: CrossEntropyOptions
    collective: str  # "all_gather" or "all_reduce"
    chunk_size: int
    rows: tuple[int, ...]  # the leading (row) shape
    dtype: torch.dtype
    device: torch.device
    hidden_size: int = -1
    hidden_requires_grad: bool = False
    #: the codes of the call's own fields (named by ``agree``'s `extra_fields`): options
    #: the loss does not have (the token statistics' temperature, top-k, outputs...)
    extra: tuple[int, ...] = ()

    @property
    def num_rows(self) -> int:
        return math.prod(self.rows)

    @property
    def num_classes(self) -> int:
        """V, the size of the whole vocabulary."""
        return sum(self.shard_sizes)

    @property
    def start(self) -> int:
        """The first class of this rank's shard."""
        return sum(self.shard_sizes[: self.rank])

    @property
    def local_size(self) -> int:
        return self.shard_sizes[self.rank]

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 on CPU (every input dtype: one rounding at the end); on CUDA float64 for
        float64 inputs, float32 otherwise."""
        if self.device.type == "cpu" or self.dtype == torch.float64:
            return torch.float64
        return torch.float32


# --------------------------------------------------------------------------- layout helpers


def shard_sizes(num_classes: int, world_size: int) -> list[int]:
    """Sizes of the ``torch.tensor_split`` layout: the first ``V % P`` shards get one more.

    >>> shard_sizes(10, 3)
    [4, 3, 3]
    """
    for name, val in (("num_classes", num_classes), ("world_size", world_size)):
        if isinstance(val, bool) or not isinstance(val, numbers.Integral):
            raise TypeError(f"{name} must be an integer, got {val!r}")
    if num_classes < 0:
        raise ValueError(f"num_classes must be >= 0, got {num_classes}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    q, r = divmod(int(num_classes), int(world_size))
    return [q + (1 if i < r else 0) for i in range(int(world_size))]


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """``(start, stop)`` of rank `rank`'s classes in the :func:`shard_sizes` layout.

    >>> [shard_range(10, r, 3) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    sizes = shard_sizes(num_classes, world_size)
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"rank must be an integer, got {rank!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    start = sum(sizes[:rank])
    return start, start + sizes[rank]


# --------------------------------------------------------------------------- local checks


def group_info(group: Any) -> tuple[int, int]:
    """``(rank, world size)`` of this process in `group`; RuntimeError without a group."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group "
            "before a vocabulary-parallel loss"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("group: this process is not a member of the given process group")
    return rank, dist.get_world_size(group)


def validate_call_options(
    *,
    reduction: Any,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    base: Any,
    normalizer: Any,
    collective: Any,
    chunk_size: Any,
) -> tuple[CrossEntropyOptions, str, int]:
    """The validated options (torch semantics), collective and chunk size."""
    options = CrossEntropyOptions.create(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, base=base, normalizer=normalizer, semantics="torch",
    )
    if collective not in COLLECTIVES:
        raise ValueError(f"collective must be one of {COLLECTIVES}, got {collective!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return options, str(collective), int(chunk_size)


def check_float_tensor(x: Any, name: str, min_ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPE_CODES:
        raise TypeError(
            f"{name} has dtype {x.dtype}; supported: float16, bfloat16, float32, float64"
        )
    if x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got {x.dim()}")
    return x


def check_target(target: Any, rows: tuple[int, ...], device: torch.device, what: str) -> None:
    if not isinstance(target, torch.Tensor):
        raise TypeError(
            f"target must be a torch.Tensor of class indices, got {type(target).__name__}"
        )
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if tuple(target.shape) != rows:
        raise ValueError(
            f"target holds class indices, so its shape must be the {what} shape without the "
            f"last axis, {rows}; got {tuple(target.shape)}"
        )
    if target.device != device:
        raise ValueError(f"target is on {target.device} but the {what} is on {device}")


def check_class_weight(w: Any, device: torch.device) -> torch.Tensor | None:
    if w is None:
        return None
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None, got {type(w).__name__}")
    if not w.is_floating_point() or w.dim() != 1:
        raise ValueError(
            "weight must be a 1-d floating tensor (one entry per class of the whole "
            f"vocabulary), got dtype {w.dtype} and shape {tuple(w.shape)}"
        )
    if w.device != device:
        raise ValueError(f"weight is on {w.device} but the prediction is on {device}")
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"weight must be finite and >= 0; weight[{i}] = {float(w[i])!r}")
    return w


def check_targets_in_range(agreement: Agreement, target: torch.Tensor,
                           class_weight: torch.Tensor | None) -> None:
    """Checks that need the whole vocabulary size (the same outcome on every rank)."""
    V = agreement.num_classes
    if V == 0:
        raise ValueError("the vocabulary is empty: every rank's shard has 0 classes")
    if class_weight is not None and class_weight.shape[0] != V:
        raise ValueError(
            f"weight must hold one entry per class of the whole vocabulary ({V}), "
            f"got {class_weight.shape[0]}"
        )
    t = target.reshape(-1)
    ignore = agreement.options.ignore_index
    counted = torch.ones_like(t, dtype=torch.bool) if ignore is None else t != ignore
    bad = counted & ((t < 0) | (t >= V))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        rows = agreement.rows
        pos = list(torch.unravel_index(torch.tensor(i), rows)) if rows else []
        where = "[" + ", ".join(str(int(p)) for p in pos) + "]"
        hint = "" if ignore is None else f" (and is not ignore_index={ignore})"
        raise ValueError(f"target{where} = {int(t[i])} is out of range [0, {V}){hint}")


# --------------------------------------------------------------------------- the exchange


def _float_bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", float(x)))[0])


def option_code(value: Any) -> int:
    """One int64 for an option value (floats by their bits, so equal means identical)."""
    if value is None:
        return _NONE
    if isinstance(value, Reduction):
        return list(Reduction).index(value)
    if isinstance(value, str):
        return zlib.crc32(value.encode())
    if isinstance(value, bool | int):
        return int(value)
    return _float_bits(value)


def _target_checksum(t: torch.Tensor) -> int:
    """A position-sensitive int64 checksum of the targets (wraps around; O(N), one sync)."""
    if t.numel() == 0:
        return 0
    flat = t.reshape(-1).to(torch.int64)
    mult = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64) % 1_000_003 + 1
    return int((flat * mult).sum().item())


def _given_sizes(sizes: Any, world: int, rank: int, local: int) -> list[int]:
    given = [int(s) for s in sizes]
    if len(given) != world or any(s < 0 for s in given):
        raise ValueError(
            f"shard_sizes must hold {world} sizes >= 0 (one per rank), got {sizes!r}"
        )
    if given[rank] != local:
        raise ValueError(
            f"shard_sizes[{rank}] = {given[rank]} but this rank's shard has {local} classes"
        )
    return given


def agree(
    proposal: Agreement | None,
    local_error: BaseException | None,
    *,
    group: Any,
    rank: int,
    world_size: int,
    device: torch.device,
    target: Any,
    class_weight: torch.Tensor | None,
    shard_sizes_arg: Sequence[int] | None,
    check: bool,
    extra_fields: tuple[str, ...] = (),
) -> Agreement:
    """Exchange and compare the metadata (one all-gather of int64); the agreed layout.

    `proposal` is this rank's call (its ``shard_sizes`` hold only its own size), None when
    `local_error` says why it could not be built; `extra_fields` names the call's own
    fields (``proposal.extra``, compared as the others; every rank passes the same names).
    `target` may be None (no targets: checksum 0).  Raises on every rank alike: the local
    error on the rank that had it, :class:`ShardMismatchError` on the others.
    """
    given: list[int] | None = None
    if proposal is not None and shard_sizes_arg is not None:
        try:
            given = _given_sizes(shard_sizes_arg, world_size, rank, proposal.local_size)
        except (TypeError, ValueError) as exc:
            local_error, proposal = exc, None
    if not check and shard_sizes_arg is not None:  # no exchange: the caller knows the layout
        if local_error is not None:
            raise local_error
        assert proposal is not None and given is not None  # no local error: both were built
        return replace(proposal, shard_sizes=tuple(given))
    names = _FIELDS + tuple(extra_fields)
    meta = [-1] * len(names)
    meta[0] = 0 if proposal is not None else 1
    if proposal is not None:
        call = [
            0,
            _KINDS.index(proposal.kind),
            proposal.local_size,
            _DTYPE_CODES[proposal.dtype],
            proposal.num_rows,
            zlib.crc32(repr(proposal.rows).encode()),
            _target_checksum(target) if check and target is not None else 0,
            proposal.hidden_size,
            -1 if class_weight is None else int(class_weight.shape[0]),
            COLLECTIVES.index(proposal.collective),
            int(proposal.hidden_requires_grad),
        ]
        opts = [option_code(getattr(proposal.options, f)) for f in _OPTION_FIELDS]
        assert len(proposal.extra) == len(extra_fields)
        meta = call + opts + list(proposal.extra)
    mine = torch.tensor(meta, dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(parts, mine, group=group)  # the check's one collective: P x 20 (+ extra)
    rows = [p.tolist() for p in parts]
    if local_error is not None:
        raise local_error
    assert proposal is not None  # built whenever there was no local error
    bad_ranks = [r for r in range(world_size) if rows[r][0] != 0]
    if bad_ranks:
        raise ShardMismatchError(
            f"rank(s) {bad_ranks} failed their argument checks for this vocabulary-parallel "
            "loss (their own error says why); every rank stops instead of hanging"
        )
    for j, name in enumerate(names):
        if j == _LOCAL_SIZE:
            continue
        for r in range(world_size):
            if rows[r][j] != rows[0][j]:
                extra = ""
                if name in ("number of rows", "row shape"):
                    extra = f" (this rank, {rank}, has row shape {proposal.rows})"
                raise ShardMismatchError(
                    f"the ranks disagree on the {name}: rank 0 has {rows[0][j]}, rank {r} has "
                    f"{rows[r][j]}{extra}; every rank must pass the same rows, targets and "
                    "options, and only the vocabulary shard may differ"
                )
    sizes = [rows[r][_LOCAL_SIZE] for r in range(world_size)]
    if given is not None and given != sizes:
        raise ShardMismatchError(f"shard_sizes={given} but the ranks hold shards of sizes {sizes}")
    return replace(proposal, shard_sizes=tuple(sizes))
