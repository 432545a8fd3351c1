r"""Vocabulary-parallel cross-entropy over ``torch.distributed``.

When the output layer is split along the vocabulary (tensor parallelism), each rank of a
process group holds the logits -- or the weight rows -- of one contiguous slice of the
classes, and every rank holds the same rows (tokens) and the same targets.  The functions
here return the loss over the *whole* vocabulary on every rank without gathering it:

* :func:`cross_entropy` takes the local logits shard ``[..., V_r]``;
* :func:`linear_cross_entropy` takes the full hidden states ``[..., D]`` and the local
  weight shard ``[V_r, D]`` (optionally a bias shard ``[V_r]``) and never holds more than
  ``chunk_size x V_r`` logits at a time.

Shard *r* holds the classes ``[o_r, o_r + V_r)`` with ``o_r = V_0 + ... + V_{r-1}``: the
shards are laid out in rank order, and their sizes may differ (``V`` need not be divisible
by the world size; :func:`shard_sizes` gives the ``torch.tensor_split`` layout).

The loss of row *i* with target :math:`y_i` (index targets), class weights :math:`w`
(1 by default), label smoothing :math:`\varepsilon` over :math:`V` classes and z-loss
coefficient :math:`z` is, with :math:`m` the row maximum over all shards,
:math:`S = \sum_c e^{x_c - m}` and :math:`\mathrm{lse} = m + \log S`,

.. math::

    \ell_i = (1-\varepsilon)\, w_{y}\,\bigl[(m - x_{y}) + \log S\bigr]
           + \frac{\varepsilon}{V}\Bigl[\sum_c w_c (m - x_c) + \log S \sum_c w_c\Bigr]
           + z\, \mathrm{lse}^2 ,

every bracket a sum of terms >= 0 (no cancellation).  Rows whose target equals
``ignore_index`` add nothing.  ``reduction='mean'`` divides the sum by
:math:`\sum_i w_{y_i}` over the counted rows (the number of counted rows without class
weights), as ``torch.nn.functional.cross_entropy`` does, the z-loss term included; a mean over
zero counted rows is NaN with a zero gradient, as in torch and :mod:`crossentropy.torch` (the
NumPy core returns 0.0 there).  ``base`` converts the whole result (z-loss included) from
nats to units of ``base``.  These are the semantics of
:func:`crossentropy.torch.cross_entropy` with index targets and the class axis last.

Collectives per loss (``P`` ranks, ``N`` rows, ``k = 2``, or 3 with label smoothing)
----------------------------------------------------------------------------------
Each rank reduces its shard to per-row statistics relative to its *local* maximum
:math:`m_r`: :math:`S_r = \sum_{c \in r} e^{x_c - m_r}`, the owner's target term
:math:`m_r - x_y`, and (smoothing) :math:`Q_r = \sum_{c\in r} w_c (m_r - x_c)`.  Then

* ``collective="all_gather"`` (default): one all-gather of ``[N, k + 1]`` per rank
  (``[P, N, k+1]`` received); every rank rescales the statistics to the global maximum
  :math:`m = \max_r m_r` (:math:`S_r e^{m_r - m}`, :math:`(m - m_r) + (m_r - x_y)`,
  :math:`Q_r + (m - m_r) \sum_{c\in r} w_c`) and sums them in rank order;
* ``collective="all_reduce"``: one all-reduce MAX of ``N`` floats (the row maximum), the
  same rescaling on each rank, and one all-reduce SUM of an ``[N, k]`` buffer.  Two
  latencies instead of one, but about ``2 N k`` floats moved per rank instead of
  ``(P - 1) N (k + 1)``: the choice for large groups.

The buffers have the compute dtype: float32 for float16/bfloat16/float32 inputs, float64
for float64.  Backward: :func:`cross_entropy` needs **no** collective (rank *r* forms
:math:`\partial\ell/\partial x_c = p_c \sum_{c'} a_{c'} - a_c + 2 z\,\mathrm{lse}\, p_c` for its
own classes from the saved ``lse``); :func:`linear_cross_entropy` needs one all-reduce SUM
of ``[N, D]`` for the gradient of the hidden states (only when they require a gradient);
the weight and bias gradients stay local.

With ``check=True`` (the default) one more collective comes first: an all-gather of 16
int64 per rank that exchanges the shard sizes (so no rank needs to be told the layout) and
checks that every rank agrees -- see :func:`cross_entropy` for the list.  With
``check=False`` and ``shard_sizes`` given, that collective is skipped.
"""

from __future__ import annotations

import math
import numbers
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from crossentropy import _validate as v

__all__ = [
    "ShardMismatchError",
    "all_reduce_grad",
    "cross_entropy",
    "linear_cross_entropy",
    "shard_range",
    "shard_sizes",
]

_DTYPES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}
_REDUCTION_CODES = {"none": 0, "mean": 1, "sum": 2}
_COLLECTIVES = ("all_reduce", "all_gather")

# The metadata row each rank contributes when check=True (16 int64; names for messages).
_FIELDS = (
    "error flag",  # 0: a local argument check failed on this rank
    "loss kind",  # 1: 0 cross_entropy, 1 linear_cross_entropy
    "local vocabulary size",  # 2: V_r (may differ between ranks)
    "dtype",  # 3
    "number of rows",  # 4
    "row shape",  # 5: crc32 of the leading shape
    "target checksum",  # 6
    "hidden size",  # 7 (linear) or -1
    "class weight length",  # 8 (-1: none)
    "ignore_index",  # 9
    "label_smoothing",  # 10 (float64 bits)
    "z_loss",  # 11 (float64 bits)
    "reduction",  # 12
    "base",  # 13 (float64 bits of the scale)
    "collective",  # 14
    "hidden requires grad",  # 15
)
_NO_IGNORE = -(2**62)


class ShardMismatchError(ValueError):
    """The ranks of a vocabulary-parallel loss disagree (or one failed its argument checks)."""


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


# --------------------------------------------------------------------------- checks


def _group_info(group: Any) -> tuple[Any, int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialized: call torch.distributed.init_process_group "
            "before a vocabulary-parallel loss"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("group: this process is not a member of the given process group")
    return group, rank, dist.get_world_size(group)


def _float_bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", float(x)))[0])


def _target_checksum(t: torch.Tensor) -> int:
    """A position-sensitive int64 checksum of the targets (wraps around; O(N), one sync)."""
    if t.numel() == 0:
        return 0
    flat = t.reshape(-1).to(torch.int64)
    mult = torch.arange(flat.numel(), device=flat.device, dtype=torch.int64) % 1_000_003 + 1
    return int((flat * mult).sum().item())


@dataclass
class _Opts:
    """Validated options and the agreed layout (one per call)."""

    kind: int
    group: Any
    rank: int
    world: int
    rows: tuple[int, ...] = ()
    n: int = 0
    v_local: int = 0
    dtype: torch.dtype = torch.float32
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ignore_index: int | None = -100
    eps: float = 0.0
    z: float = 0.0
    reduction: str = "mean"
    scale: float = 1.0
    collective: str = "all_gather"
    chunk: int = 4096
    hidden: int = -1
    sizes: list[int] = field(default_factory=list)
    class_weight: torch.Tensor | None = None  # full [V], compute dtype
    hidden_grad: bool = False

    @property
    def ct(self) -> torch.dtype:
        """Compute dtype: float64 for float64 inputs, float32 otherwise."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    @property
    def V(self) -> int:
        return sum(self.sizes)

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])


def _check_scalar_options(
    o: _Opts,
    ignore_index: Any,
    label_smoothing: Any,
    z_loss: Any,
    reduction: Any,
    base: Any,
    collective: Any,
    chunk_size: Any,
) -> None:
    o.ignore_index = v.check_ignore_index(ignore_index)
    o.eps = v.check_unit_interval(label_smoothing, "label_smoothing")
    if isinstance(z_loss, bool) or not isinstance(z_loss, numbers.Real):
        raise TypeError(f"z_loss must be a real number >= 0, got {z_loss!r}")
    if not (math.isfinite(float(z_loss)) and float(z_loss) >= 0.0):
        raise ValueError(f"z_loss must be finite and >= 0, got {z_loss!r}")
    o.z = float(z_loss)
    o.reduction = v.check_reduction(reduction)
    o.scale = v.log_scale(base)
    if collective not in _COLLECTIVES:
        raise ValueError(f"collective must be one of {_COLLECTIVES}, got {collective!r}")
    o.collective = collective
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    o.chunk = int(chunk_size)


def _check_float_tensor(x: Any, name: str, min_ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise TypeError(
            f"{name} has dtype {x.dtype}; supported: float16, bfloat16, float32, float64"
        )
    if x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got {x.dim()}")
    return x


def _check_target(target: Any, rows: tuple[int, ...], device: torch.device, what: str) -> None:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor of class indices, got "
                        f"{type(target).__name__}")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if tuple(target.shape) != rows:
        raise ValueError(
            f"target holds class indices, so its shape must be the {what} shape without the "
            f"last axis, {rows}; got {tuple(target.shape)}"
        )
    if target.device != device:
        raise ValueError(f"target is on {target.device} but the {what} is on {device}")


def _check_class_weight(w: Any, device: torch.device, name: str) -> torch.Tensor | None:
    if w is None:
        return None
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(w).__name__}")
    if not w.is_floating_point() or w.dim() != 1:
        raise ValueError(f"{name} must be a 1-d floating tensor (one entry per class of the "
                         f"whole vocabulary), got dtype {w.dtype} and shape {tuple(w.shape)}")
    if w.device != device:
        raise ValueError(f"{name} is on {w.device} but the prediction is on {device}")
    bad = ~torch.isfinite(w) | (w < 0)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        raise ValueError(f"{name} must be finite and >= 0; {name}[{i}] = {float(w[i])!r}")
    return w


def _agree(
    o: _Opts,
    local_error: BaseException | None,
    target: Any,
    class_weight: torch.Tensor | None,
    shard_sizes_arg: Any,
    check: bool,
) -> None:
    """Exchange the metadata (one all-gather of 16 int64 per rank) and compare; fill o.sizes."""
    P = o.world
    given: list[int] | None = None
    if local_error is None and shard_sizes_arg is not None:
        try:
            given = [int(s) for s in shard_sizes_arg]
            if len(given) != P or any(s < 0 for s in given):
                raise ValueError(
                    f"shard_sizes must hold {P} sizes >= 0 (one per rank), got {shard_sizes_arg!r}"
                )
            if given[o.rank] != o.v_local:
                raise ValueError(
                    f"shard_sizes[{o.rank}] = {given[o.rank]} but this rank's shard has "
                    f"{o.v_local} classes"
                )
        except (TypeError, ValueError) as exc:
            local_error = exc
    if not check and given is not None:
        if local_error is not None:
            raise local_error
        o.sizes = given
        return
    meta = [-1] * len(_FIELDS)
    meta[0] = 0 if local_error is None else 1
    if local_error is None:
        meta[1] = o.kind
        meta[2] = o.v_local
        meta[3] = _DTYPES[o.dtype]
        meta[4] = o.n
        meta[5] = zlib.crc32(repr(o.rows).encode())
        meta[6] = _target_checksum(target) if check else 0
        meta[7] = o.hidden
        meta[8] = -1 if class_weight is None else int(class_weight.shape[0])
        meta[9] = _NO_IGNORE if o.ignore_index is None else o.ignore_index
        meta[10] = _float_bits(o.eps)
        meta[11] = _float_bits(o.z)
        meta[12] = _REDUCTION_CODES[o.reduction]
        meta[13] = _float_bits(o.scale)
        meta[14] = _COLLECTIVES.index(o.collective)
        meta[15] = int(o.hidden_grad)
    mine = torch.tensor(meta, dtype=torch.int64, device=o.device)
    parts = [torch.empty_like(mine) for _ in range(P)]
    dist.all_gather(parts, mine, group=o.group)
    rows = [p.tolist() for p in parts]
    if local_error is not None:
        raise local_error
    bad_ranks = [r for r in range(P) if rows[r][0] != 0]
    if bad_ranks:
        raise ShardMismatchError(
            f"rank(s) {bad_ranks} failed their argument checks for this vocabulary-parallel "
            "loss (their own error says why); every rank stops instead of hanging"
        )
    for j, name in enumerate(_FIELDS):
        if j == 2:
            continue
        for r in range(P):
            if rows[r][j] != rows[0][j]:
                extra = ""
                if j in (4, 5):
                    extra = f" (this rank, {o.rank}, has row shape {o.rows})"
                raise ShardMismatchError(
                    f"the ranks disagree on the {name}: rank 0 has {rows[0][j]}, rank {r} has "
                    f"{rows[r][j]}{extra}; every rank must pass the same rows, targets and "
                    "options, and only the vocabulary shard may differ"
                )
    sizes = [rows[r][2] for r in range(P)]
    if given is not None and given != sizes:
        raise ShardMismatchError(
            f"shard_sizes={given} but the ranks hold shards of sizes {sizes}"
        )
    o.sizes = sizes


def _finish_checks(o: _Opts, target: torch.Tensor, class_weight: torch.Tensor | None,
                   wname: str) -> None:
    """Checks that need the total vocabulary size (same outcome on every rank)."""
    V = o.V
    if V == 0:
        raise ValueError("the vocabulary is empty: every rank's shard has 0 classes")
    if class_weight is not None:
        if class_weight.shape[0] != V:
            raise ValueError(
                f"{wname} must hold one entry per class of the whole vocabulary ({V}), "
                f"got {class_weight.shape[0]}"
            )
        o.class_weight = class_weight.detach().to(o.ct)
    t = target.reshape(-1)
    _, counted = _row_targets(o, target)
    bad = counted & ((t < 0) | (t >= V))
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0, 0])
        pos = list(torch.unravel_index(torch.tensor(i), o.rows)) if o.rows else []
        where = "[" + ", ".join(str(int(p)) for p in pos) + "]"
        hint = "" if o.ignore_index is None else f" (and is not ignore_index={o.ignore_index})"
        raise ValueError(f"target{where} = {int(t[i])} is out of range [0, {V}){hint}")


# --------------------------------------------------------------------------- the math


@dataclass
class _Stats:
    """Per-row statistics of one rank's shard, relative to its local maximum."""

    m: torch.Tensor  # local row max (-inf for an empty shard or an all -inf row)
    s: torch.Tensor  # sum over the shard of exp(x - m_s), m_s = m with -inf -> 0
    t: torch.Tensor  # m_s - x_y on the rank that owns y (counted rows), else 0
    q: torch.Tensor  # sum over the shard of w_c (m_s - x_c) (label smoothing), else 0


def _row_targets(o: _Opts, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    t = target.reshape(-1).to(torch.int64)
    if o.ignore_index is None:
        return t, torch.ones_like(t, dtype=torch.bool)
    return t, t != o.ignore_index


def _block_stats(o: _Opts, x: torch.Tensor, y: torch.Tensor, counted: torch.Tensor,
                 w_local: torch.Tensor | None) -> _Stats:
    """Statistics of a [n, V_r] block of logits (compute dtype)."""
    n = x.shape[0]
    if x.shape[1] == 0:
        z = x.new_zeros(n)
        return _Stats(x.new_full((n,), -math.inf), z, z, z)
    m = x.amax(dim=1)
    ms = torch.where(m == -math.inf, torch.zeros_like(m), m)
    d = ms[:, None] - x  # >= 0
    s = torch.exp(-d).sum(dim=1)
    start = o.start
    own = counted & (y >= start) & (y < start + o.v_local)
    col = (y - start).clamp(0, o.v_local - 1)
    t = torch.where(own, d.gather(1, col[:, None])[:, 0], torch.zeros_like(m))
    if o.eps:
        q = (d if w_local is None else d * w_local).sum(dim=1)
    else:
        q = torch.zeros_like(m)
    return _Stats(m, s, t, q)


def _shard_weight_sums(o: _Opts) -> torch.Tensor:
    """Sum of the class weights of every shard, [P] (the shard size without weights)."""
    if o.class_weight is None:
        return torch.tensor(o.sizes, dtype=o.ct, device=o.device)
    w, parts, a = o.class_weight, [], 0
    for s in o.sizes:
        parts.append(w[a : a + s].sum())
        a += s
    return torch.stack(parts)


def _combine(o: _Opts, st: _Stats, y: torch.Tensor, counted: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Combine the shards' statistics; return (m, log S, m - x_y, sum_c w_c (m - x_c))."""
    ws = _shard_weight_sums(o)
    smooth = bool(o.eps)
    if o.collective == "all_reduce":
        m = st.m.clone()
        dist.all_reduce(m, op=dist.ReduceOp.MAX, group=o.group)  # collective 1: [N]
        ms = torch.where(st.m == -math.inf, torch.zeros_like(m), st.m)
        # S_r e^{m_r - m}: the shard's sum rescaled to the global maximum (0 for empty shards)
        own = counted & (y >= o.start) & (y < o.start + o.v_local)
        cols = [
            st.s * torch.exp(st.m - m),
            # the owner's m - x_y = (m - m_r) + (m_r - x_y): two terms >= 0
            torch.where(own, st.t + (m - ms), torch.zeros_like(m)),
        ]
        if smooth:
            # sum_{c in r} w_c (m - x_c) = Q_r + (m - m_r) sum_{c in r} w_c
            extra = (m - ms) * ws[o.rank]
            cols.append(st.q + torch.where(extra == 0, torch.zeros_like(extra), extra))
        buf = torch.stack(cols, dim=1)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=o.group)  # collective 2: [N, k]
        s, t = buf[:, 0], buf[:, 1]
        q = buf[:, 2] if smooth else torch.zeros_like(s)
    else:
        cols = [st.m, st.s, st.t] + ([st.q] if smooth else [])
        mine = torch.stack(cols, dim=1).contiguous()
        parts = [torch.empty_like(mine) for _ in range(o.world)]
        dist.all_gather(parts, mine, group=o.group)  # the one collective: [P, N, k + 1]
        g = torch.stack(parts)  # [P, N, k+1]
        mr = g[:, :, 0]
        m = mr.amax(dim=0)
        msr = torch.where(mr == -math.inf, torch.zeros_like(mr), mr)
        s = (g[:, :, 1] * torch.exp(mr - m)).sum(dim=0)
        bounds = torch.tensor([sum(o.sizes[: r + 1]) for r in range(o.world)], device=o.device)
        owner = torch.bucketize(y.clamp(0, o.V - 1), bounds, right=True)
        ms_owner = msr.gather(0, owner[None, :])[0]
        t = torch.where(counted, g[:, :, 2].sum(dim=0) + (m - ms_owner), torch.zeros_like(m))
        if smooth:
            extra = (m[None, :] - msr) * ws[:, None]
            extra = torch.where(extra == 0, torch.zeros_like(extra), extra)
            q = (g[:, :, 3] + extra).sum(dim=0)
        else:
            q = torch.zeros_like(s)
    return m, torch.log(s), t, q


def _row_coeffs(o: _Opts, y: torch.Tensor, counted: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w_y for counted rows else 0, sum_c a_c per row, sum of all class weights)."""
    ct = o.ct
    if o.class_weight is None:
        wy = counted.to(ct)
        wtot = torch.tensor(float(o.V), dtype=ct, device=o.device)
    else:
        wy = torch.where(counted, o.class_weight[y.clamp(0, o.V - 1)], torch.zeros((), dtype=ct,
                                                                                   device=o.device))
        wtot = o.class_weight.sum()
    # sum_c a_c = (1 - eps) w_y + (eps / V) sum_c w_c (counted rows), the coefficient of lse
    arow = torch.where(counted, (1.0 - o.eps) * wy + (o.eps / o.V) * wtot, torch.zeros_like(wy))
    return wy, arow, wtot


def _loss_rows(o: _Opts, y: torch.Tensor, counted: torch.Tensor, m: torch.Tensor,
               logs: torch.Tensor, t: torch.Tensor, q: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row loss (nats, 0 for ignored rows), lse, and the mean's weights omega."""
    wy, _, wtot = _row_coeffs(o, y, counted)
    lse = m + logs
    # (1-eps) w_y [(m - x_y) + log S] + eps/V [sum_c w_c (m - x_c) + log S sum_c w_c]
    loss = (1.0 - o.eps) * wy * (t + logs)
    if o.eps:
        loss = loss + (o.eps / o.V) * (q + logs * wtot)
    if o.z:
        loss = loss + o.z * lse * lse
    loss = torch.where(counted, loss, torch.zeros_like(loss))
    return loss, lse, wy


def _reduce(o: _Opts, loss: torch.Tensor, omega: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Apply the reduction and the unit; return (value in the compute dtype, 1 / divisor)."""
    if o.reduction == "none":
        return (loss * o.scale).reshape(o.rows), 1.0
    total = loss.sum() * o.scale
    if o.reduction == "sum":
        return total, 1.0
    wsum = float(omega.sum())
    if wsum == 0.0:  # nothing counted: NaN with a zero gradient, as in torch
        return torch.full_like(total, math.nan), 0.0
    return total / wsum, 1.0 / wsum


def _row_factor(o: _Opts, grad_out: torch.Tensor, inv: float, counted: torch.Tensor
                ) -> torch.Tensor:
    """d(result)/d(loss_i) times grad_out, per row ([N], compute dtype, 0 for ignored rows)."""
    g = grad_out.to(o.ct)
    g = g.reshape(-1) if o.reduction == "none" else g.reshape(()).expand(o.n)
    return torch.where(counted, g * (o.scale * inv), torch.zeros_like(g))


def _grad_block(o: _Opts, x: torch.Tensor, y: torch.Tensor, counted: torch.Tensor,
                lse: torch.Tensor, f: torch.Tensor, wy: torch.Tensor, arow: torch.Tensor,
                w_local: torch.Tensor | None) -> torch.Tensor:
    """d loss / d x for a [n, V_r] block: f (p (sum a + 2 z lse) - a), p = exp(x - lse)."""
    p = torch.exp(x - lse[:, None])
    g = p * (arow + 2.0 * o.z * lse)[:, None]
    if o.eps:
        # a_c = eps / V w_c for every class ...
        g = g - (o.eps / o.V) * (w_local if w_local is not None else 1.0)
    # ... plus (1 - eps) w_y at the target, on the rank that owns it
    own = counted & (y >= o.start) & (y < o.start + o.v_local)
    if o.v_local:
        col = (y - o.start).clamp(0, o.v_local - 1)[:, None]
        g.scatter_add_(1, col, torch.where(own, -(1.0 - o.eps) * wy, torch.zeros_like(wy))[:, None])
    return g * f[:, None]


def _w_local(o: _Opts) -> torch.Tensor | None:
    if o.class_weight is None:
        return None
    return o.class_weight[o.start : o.start + o.v_local]


# --------------------------------------------------------------------------- autograd


class _LogitsCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, o: _Opts) -> torch.Tensor:
        x = logits.reshape(o.n, o.v_local)
        y, counted = _row_targets(o, target)
        wl = _w_local(o)
        blocks = [
            _block_stats(o, x[a : a + o.chunk].to(o.ct), y[a : a + o.chunk],
                         counted[a : a + o.chunk], wl)
            for a in range(0, o.n, o.chunk)
        ]
        st = _cat_stats(o, blocks)
        m, logs, t, q = _combine(o, st, y, counted)
        loss, lse, wy = _loss_rows(o, y, counted, m, logs, t, q)
        value, inv = _reduce(o, loss, wy)
        ctx.save_for_backward(logits, target, lse)
        ctx.o, ctx.inv = o, inv
        return value.to(logits.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        logits, target, lse = ctx.saved_tensors
        o: _Opts = ctx.o
        if not ctx.needs_input_grad[0]:
            return None, None, None
        x = logits.reshape(o.n, o.v_local)
        y, counted = _row_targets(o, target)
        f = _row_factor(o, grad_out, ctx.inv, counted)
        wy, arow, _ = _row_coeffs(o, y, counted)
        wl = _w_local(o)
        grad = torch.empty_like(x)
        for a in range(0, o.n, o.chunk):
            b = slice(a, a + o.chunk)
            grad[b] = _grad_block(o, x[b].to(o.ct), y[b], counted[b], lse[b], f[b], wy[b],
                                  arow[b], wl).to(grad.dtype)
        return grad.reshape(logits.shape), None, None


def _cat_stats(o: _Opts, blocks: list[_Stats]) -> _Stats:
    if not blocks:
        e = torch.zeros(0, dtype=o.ct, device=o.device)
        return _Stats(e, e, e, e)
    return _Stats(*(torch.cat([getattr(b, k) for b in blocks]) for k in ("m", "s", "t", "q")))


def _logits_block(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
                  ct: torch.dtype) -> torch.Tensor:
    z = h @ w.t() if bias is None else torch.addmm(bias, h, w.t())
    return z.to(ct)


class _LinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                target: torch.Tensor, o: _Opts) -> torch.Tensor:
        h = hidden.reshape(o.n, o.hidden)
        y, counted = _row_targets(o, target)
        wl = _w_local(o)
        blocks = [
            _block_stats(o, _logits_block(h[a : a + o.chunk], weight, bias, o.ct),
                         y[a : a + o.chunk], counted[a : a + o.chunk], wl)
            for a in range(0, o.n, o.chunk)
        ]
        st = _cat_stats(o, blocks)
        m, logs, t, q = _combine(o, st, y, counted)
        loss, lse, wy = _loss_rows(o, y, counted, m, logs, t, q)
        value, inv = _reduce(o, loss, wy)
        ctx.save_for_backward(hidden, weight, bias, target, lse)
        ctx.o, ctx.inv = o, inv
        return value.to(hidden.dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, bias, target, lse = ctx.saved_tensors
        o: _Opts = ctx.o
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        h = hidden.reshape(o.n, o.hidden)
        y, counted = _row_targets(o, target)
        f = _row_factor(o, grad_out, ctx.inv, counted)
        wy, arow, _ = _row_coeffs(o, y, counted)
        wl = _w_local(o)
        ct = o.ct
        gh = torch.zeros(o.n, o.hidden, dtype=ct, device=o.device) if o.hidden_grad else None
        gw = torch.zeros(weight.shape, dtype=ct, device=o.device) if need_w else None  # fp32 acc
        gb = torch.zeros(o.v_local, dtype=ct, device=o.device) if need_b else None
        if gh is not None or gw is not None or gb is not None:
            for a in range(0, o.n, o.chunk):
                b = slice(a, a + o.chunk)
                hb = h[b]
                g = _grad_block(o, _logits_block(hb, weight, bias, ct), y[b], counted[b],
                                lse[b], f[b], wy[b], arow[b], wl)
                if gh is not None:
                    # this shard's part of d loss / d h = g_r @ W_r; the ranks' parts are summed
                    gh[b] = (g.to(weight.dtype) @ weight).to(ct)
                if gw is not None:
                    gw.addmm_(g.t(), hb.to(ct))
                if gb is not None:
                    gb += g.sum(dim=0)
        if gh is not None:
            dist.all_reduce(gh, op=dist.ReduceOp.SUM, group=o.group)  # backward: [N, D]
        return (
            gh.to(hidden.dtype).reshape(hidden.shape) if gh is not None and need_h else None,
            gw.to(weight.dtype) if gw is not None else None,
            gb.to(bias.dtype) if gb is not None and bias is not None else None,
            None,
            None,
        )


class _AllReduceGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        g = grad.contiguous().clone()
        dist.all_reduce(g, op=dist.ReduceOp.SUM, group=ctx.group)
        return g, None


# --------------------------------------------------------------------------- public API


def all_reduce_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Identity in the forward pass; sums the gradient over the ranks in the backward pass.

    Put it between a tensor every rank holds in full (the hidden states) and the
    rank-local projection onto a vocabulary shard, when that projection is written by hand
    and :func:`cross_entropy` is used on its output: each rank's autograd only sees its own
    shard's part of d loss / d hidden, and this sums the parts (one all-reduce SUM of the
    tensor's size in backward; Megatron-LM calls it "copy to tensor-parallel region").
    :func:`linear_cross_entropy` does this itself.

    >>> import torch, torch.distributed as dist
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> h = torch.ones(2, 3, requires_grad=True)
    >>> (all_reduce_grad(h) * 2).sum().backward()
    >>> h.grad
    tensor([[2., 2., 2.],
            [2., 2., 2.]])
    >>> dist.destroy_process_group()
    """
    _group_info(group)
    out: torch.Tensor = _AllReduceGrad.apply(x, group)  # type: ignore[no-untyped-call]
    return out


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Any = None,
    weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    z_loss: float = 0.0,
    base: float | None = None,
    shard_sizes: Sequence[int] | None = None,
    check: bool = True,
    collective: str = "all_gather",
    chunk_size: int = 4096,
) -> torch.Tensor:
    r"""Cross-entropy over logits split along the class (last) axis across a process group.

    Every rank of `group` calls it with its own shard ``logits[..., V_r]`` and the same
    `target`, rows and options; every rank gets the loss over the whole vocabulary
    (formula and collectives: see the module notes), and the gradient of its own shard.
    Values and gradients equal ``torch.nn.functional.cross_entropy`` on the gathered
    logits (class axis last) plus ``z_loss * logsumexp**2`` per counted row.

    Parameters
    ----------
    logits : Tensor
        This rank's shard, shape ``[..., V_r]`` (float16, bfloat16, float32, float64;
        computed in float32, or float64 for float64; the result has the logits' dtype).
        Shards follow rank order; ``V_r`` may differ between ranks (even 0).
    target : Tensor
        Integer class indices into the whole vocabulary, shape ``logits.shape[:-1]``, the
        same on every rank.
    group : ProcessGroup, optional
        The tensor-parallel group (default: the default group).  NCCL for CUDA tensors,
        gloo for CPU tensors.
    weight : Tensor, optional
        Per-class weights for the **whole** vocabulary, shape ``[V]``, the same on every rank
        (each rank slices its own part; ``V`` floats are cheap to replicate).
    ignore_index : int or None
        Rows whose target equals it add nothing (default -100; None disables).
    label_smoothing : float
        :math:`\varepsilon \in [0, 1]`, spread over all ``V`` classes.
    reduction : {'mean', 'sum', 'none'}
        'mean' divides by the summed weight of the counted targets; 'none' returns the
        per-row losses, shape ``target.shape``.
    z_loss : float
        Coefficient *z* of the auxiliary term :math:`z\,\mathrm{lse}^2` added to each counted
        row (PaLM); 0 disables it.
    base : float, optional
        Unit of the result: None for nats, 2 for bits.
    shard_sizes : sequence of int, optional
        The sizes of all shards in rank order.  Not needed: with ``check=True`` they are
        exchanged anyway; with ``check=False`` they save that collective.
    check : bool
        Exchange and compare metadata first (one all-gather of 16 int64 per rank).  Every
        rank then raises :class:`ShardMismatchError` (a ValueError) instead of hanging or
        computing garbage when: a rank failed its own argument checks (that rank raises
        its own TypeError/ValueError naming the argument); the number of rows, the row
        shape, the targets (position-sensitive checksum), the dtype, the class-weight
        length, ignore_index, label_smoothing, z_loss, reduction, base, collective, the
        hidden size or whether the hidden states need a gradient differ between ranks; or
        `shard_sizes` disagrees with the shards.  Also checked on every rank, with the same
        outcome: targets in ``[0, V)`` (or ignore_index) and ``len(weight) == V``.  Not
        checked: the values of the logits, hidden states and class weights, and a rank that
        never calls the loss (that hangs until the process group's timeout).
        Cost: one small collective and one O(N) pass over the targets (a device sync).
    collective : {'all_gather', 'all_reduce'}
        1 all-gather of ``N x (k+1)`` floats per rank (default: one latency; the faster
        on gloo, see ``bench/distributed.py``), or 2 all-reduces of ``N`` and ``N x k``
        floats (less traffic for large groups); ``k`` = 2, or 3 with label smoothing.
    chunk_size : int
        Rows processed at a time (bounds the float32 temporaries to ``chunk_size x V_r``).

    Examples
    --------
    A one-process group shows the call (the tests run 2 and 3 processes):

    >>> import torch, torch.distributed as dist
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> logits = torch.tensor([[9.8, 3.7, 0.2]], dtype=torch.float64, requires_grad=True)
    >>> loss = cross_entropy(logits, torch.tensor([0]), base=2)
    >>> round(loss.item(), 9)
    0.003329641
    >>> loss.backward()
    >>> logits.grad  # (softmax - one_hot) / ln 2
    tensor([[-3.3258e-03,  3.2283e-03,  9.7487e-05]], dtype=torch.float64)
    >>> dist.destroy_process_group()
    """
    grp, rank, world = _group_info(group)
    o = _Opts(0, grp, rank, world)
    err: BaseException | None = None
    try:
        _check_float_tensor(logits, "logits", 1)
        o.rows, o.v_local = tuple(logits.shape[:-1]), int(logits.shape[-1])
        o.n, o.dtype, o.device = math.prod(o.rows), logits.dtype, logits.device
        _check_target(target, o.rows, o.device, "logits'")
        _check_scalar_options(o, ignore_index, label_smoothing, z_loss, reduction, base,
                              collective, chunk_size)
        weight = _check_class_weight(weight, o.device, "weight")
    except (TypeError, ValueError) as exc:
        err = exc
    _agree(o, err, target, weight, shard_sizes, check)
    _finish_checks(o, target, weight, "weight")
    out: torch.Tensor = _LogitsCE.apply(logits, target, o)  # type: ignore[no-untyped-call]
    return out


def linear_cross_entropy(
    input: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    group: Any = None,
    weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    z_loss: float = 0.0,
    base: float | None = None,
    shard_sizes: Sequence[int] | None = None,
    check: bool = True,
    collective: str = "all_gather",
    chunk_size: int = 1024,
) -> torch.Tensor:
    r"""Cross-entropy of ``input @ linear_weight.T (+ linear_bias)``, the weight split by rows.

    .. math:: z = h W_r^\top + b_r \text{ on rank } r, \qquad
              \frac{\partial L}{\partial h} = \sum_r g_r W_r

    Each rank holds the hidden states `input` in full (``[..., D]``, the same on every
    rank) and the rows ``[o_r, o_r + V_r)`` of the output projection (`linear_weight`
    ``[V_r, D]``, `linear_bias` ``[V_r]``); the argument names follow
    :func:`crossentropy.torch.linear_cross_entropy` and torch 2.13.  The logits are formed
    ``chunk_size`` rows at a time, reduced to per-row statistics and discarded, so no rank
    holds more than ``chunk_size x V_r`` of them; the backward pass recomputes them chunk
    by chunk.  Gradients: `linear_weight` and `linear_bias` get their local gradient
    (accumulated in float32, or float64 for float64); `input` gets the full gradient
    :math:`\sum_r g_r W_r` on every rank (one all-reduce SUM of ``[N, D]``, in float32 or
    float64).  Value and gradients equal the single-process loss on ``input @ W.T + b``
    with ``W`` and ``b`` gathered.

    All other parameters are those of :func:`cross_entropy` (`weight` is the per-class
    weight of the whole vocabulary; ``ignore_index=None`` disables ignoring, unlike torch's
    ``linear_cross_entropy`` where None means -100).  The metadata check also compares
    ``D`` and whether `input` requires a gradient (the backward all-reduce runs only then,
    so the ranks must agree).

    Examples
    --------
    >>> import torch, torch.distributed as dist
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> h = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    >>> w = torch.tensor([[9.8, 0.0], [3.7, 0.0], [0.2, 0.0]], dtype=torch.float64)
    >>> round(linear_cross_entropy(h, w, torch.tensor([0]), base=2).item(), 9)  # logits h @ w.T
    0.003329641
    >>> dist.destroy_process_group()
    """
    grp, rank, world = _group_info(group)
    o = _Opts(1, grp, rank, world)
    err: BaseException | None = None
    try:
        _check_float_tensor(input, "input", 1)
        _check_float_tensor(linear_weight, "linear_weight", 2)
        if linear_weight.dim() != 2:
            raise ValueError(
                f"linear_weight must be 2-d [V_r, D], got shape {tuple(linear_weight.shape)}"
            )
        o.rows, o.hidden = tuple(input.shape[:-1]), int(input.shape[-1])
        o.n, o.dtype, o.device = math.prod(o.rows), input.dtype, input.device
        o.v_local = int(linear_weight.shape[0])
        if linear_weight.shape[1] != o.hidden:
            raise ValueError(f"linear_weight has {linear_weight.shape[1]} columns but input has "
                             f"D = {o.hidden} features")
        if linear_weight.dtype != input.dtype or linear_weight.device != input.device:
            raise ValueError(f"linear_weight ({linear_weight.dtype}, {linear_weight.device}) must "
                             f"match input ({input.dtype}, {input.device})")
        if linear_bias is not None:
            _check_float_tensor(linear_bias, "linear_bias", 1)
            if tuple(linear_bias.shape) != (o.v_local,) or linear_bias.dtype != input.dtype:
                raise ValueError(
                    f"linear_bias must have shape ({o.v_local},) and dtype {input.dtype}, got "
                    f"{tuple(linear_bias.shape)} and {linear_bias.dtype}"
                )
        _check_target(target, o.rows, o.device, "input's")
        _check_scalar_options(o, ignore_index, label_smoothing, z_loss, reduction, base,
                              collective, chunk_size)
        weight = _check_class_weight(weight, o.device, "weight")
        o.hidden_grad = bool(input.requires_grad and torch.is_grad_enabled())
    except (TypeError, ValueError) as exc:
        err = exc
    _agree(o, err, target, weight, shard_sizes, check)
    _finish_checks(o, target, weight, "weight")
    out: torch.Tensor = _LinearCE.apply(  # type: ignore[no-untyped-call]
        input, linear_weight, linear_bias, target, o
    )
    return out
