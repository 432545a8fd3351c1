r"""Token statistics of a vocabulary-parallel output layer: :func:`token_stats` and
:func:`linear_token_stats`, the distributed forms of :func:`crossentropy.torch.token_stats`
and :func:`crossentropy.torch.linear_token_stats`.

Every rank holds the same tokens (and targets) and one contiguous shard of the classes
(rank order, any sizes, even 0): logits ``[..., V_r]``, or the output embedding's rows
``[V_r, D]`` with the full hidden states ``[..., D]``.  Each returns the single-process
:class:`~crossentropy.torch.TokenStats` of the **whole** vocabulary on every rank -- loss,
``log p(y)``, log-sum-exp, entropy, predicted tokens and accuracy (global class indices),
the z-loss value, top-k log-probabilities and global indices -- with every keyword of the
single-process functions, without gathering the logits.

Read as: validate locally -> agree (the metadata all-gather of :mod:`._protocol`, which
also tells every rank the shard sizes) -> the checks that need the whole vocabulary (the
same outcome on every rank) -> the engine of :mod:`crossentropy.torch._tokenstats` on this
rank's shard at its global class offset, its partial statistics merged across the ranks by
:class:`._ranks.VocabRanks` (one all-gather) -> the single-process reduction and shapes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from crossentropy._options import CrossEntropyOptions
from crossentropy.torch import _tokenstats
from crossentropy.torch._chunks import ChunkPlan
from crossentropy.torch._validate import (
    check_dtype,
    check_index_dtype,
    check_index_target,
    check_sample_weight,
    check_shift,
    check_temperature,
    check_top_k,
    transformed,
)
from crossentropy.torch.distributed._protocol import (
    Agreement,
    agree,
    check_class_weight,
    check_float_tensor,
    check_targets_in_range,
    group_info,
    option_code,
)
from crossentropy.torch.distributed._ranks import VocabRanks
from crossentropy.torch.functional import (
    _LOW,
    _ce_options,
    _no_autocast,
    _out_dtype,
    _shift_labels,
    _split_normalizer,
)
from crossentropy.torch.stats import TokenStats, _finish, _flags

__all__ = ["linear_token_stats", "token_stats"]

_RETURNS = ("return_loss", "return_lse", "return_logprobs", "return_entropy",
            "return_predicted_tokens", "return_token_accuracy", "return_z_loss")

#: The call's own metadata fields (compared across the ranks after the loss's fields).
_EXTRA_FIELDS = ("temperature", "top_k", "outputs asked (return_* flags)", "target given",
                 "shift", "sample_weight checksum", "normalizer", "dtype=")


@dataclass(frozen=True)
class _Call:
    """One rank's validated call (what needs no other rank)."""

    arrays: tuple[Tensor, Tensor | None, Tensor | None]  # (h, W, b) or (logits, None, None)
    target: Tensor | None  # [N] int64, shifted
    sample_weight: Tensor | None  # [N]
    opts: CrossEntropyOptions
    normalizer: Tensor | None  # a 0-d tensor normalizer (a number is in opts)
    temperature: float
    top_k: int
    weight: Tensor | None  # the whole vocabulary's class weights
    shift: int
    out_dtype: torch.dtype
    batch: tuple[int, ...]


def _bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", float(x)))[0])


def _checksum(x: Tensor | None) -> int:
    """A position-sensitive checksum of float values (their float64 sum, by its bits)."""
    if x is None:
        return option_code(None)
    if x.numel() == 0:
        return 0
    flat = x.detach().reshape(-1).to(torch.float64)
    mult = torch.arange(flat.numel(), device=flat.device, dtype=torch.float64) % 1009 + 1
    return _bits(float((flat * mult).sum()))


def linear_token_stats(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor | None = None,
    *,
    linear_bias: Tensor | None = None,
    group: Any = None,
    return_loss: bool = True,
    return_lse: bool = False,
    return_logprobs: bool = False,
    return_entropy: bool = False,
    return_predicted_tokens: bool = False,
    return_token_accuracy: bool = False,
    return_z_loss: bool = False,
    top_k: int = 0,
    temperature: float = 1.0,
    weight: Tensor | None = None,
    sample_weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float | None = None,
    normalizer: float | Tensor | None = None,
    shift: bool | int = False,
    chunks: ChunkPlan | None = None,
    dtype: torch.dtype | None = None,
    shard_sizes: Sequence[int] | None = None,
    check: bool = True,
    collective: str = "all_gather",
) -> TokenStats:
    r"""Token statistics of ``softmax(softcap(h W^T + b) / temperature)`` over the whole
    vocabulary, the output embedding split by rows across `group`.

    Rank *r* passes the full hidden states `input` ``[..., D]`` (the same on every rank),
    its rows ``[o_r, o_r + V_r)`` of the embedding, `linear_weight` ``[V_r, D]`` (and of
    the bias, `linear_bias` ``[V_r]``), and the same `target` and keywords.  Every rank
    gets the :class:`~crossentropy.torch.TokenStats` of
    :func:`crossentropy.torch.linear_token_stats` on the gathered ``W`` and ``b``: with
    ``z'`` the transformed logits of the whole row, ``m`` its maximum and
    ``r = sum_{c != argmax} e^{z'_c - m}`` (merged across the shards),

    .. math::

        \log p_y = -\big((m - z'_y) + \operatorname{log1p}(r)\big), \qquad
        H = \operatorname{log1p}(r) + \frac{\sum_c e^{z'_c - m} (m - z'_c)}{1 + r}

    and the top-k and predicted tokens as **global** class indices (ties: the lower index
    first).  Each rank forms only its own logits, a block at a time (`chunks`, as the
    single-process function); nothing ``[N, V]`` is gathered.

    Gradients (of every floating output): `linear_weight` and `linear_bias` get their own
    shard's, `input` the whole ``sum_r (dL/dz_r) W_r`` on every rank.  Every rank must
    back-propagate the same function of the outputs (as any tensor-parallel loss).

    Collectives: the metadata check (``check=True``: one all-gather of 28 int64 per rank;
    skipped with ``check=False`` and `shard_sizes` given), one all-gather of the per-row
    partial statistics in forward (``N x c`` float64 per rank, ``c = 3`` + 1 with label
    smoothing + 1 with the entropy + 1 for the argmax without top-k + ``2 top_k``), and in
    backward one all-reduce SUM of ``N x D`` when `input` requires a gradient.

    Parameters are those of :func:`crossentropy.torch.linear_token_stats` (`weight`: the
    class weights of the **whole** vocabulary ``[V]`` on every rank; ``top_k <= V``), and
    of :func:`crossentropy.torch.distributed.linear_cross_entropy`: `group`,
    `shard_sizes`, `check` (which also compares the temperature, top_k, the outputs asked,
    shift, sample_weight, normalizer and dtype= across the ranks: a mismatch raises
    :class:`~crossentropy.torch.distributed.ShardMismatchError` on every rank), and
    `collective`, whose one value ``"all_gather"`` is the exchange above (the top-k
    candidates need an all-gather anyway).

    Examples
    --------
    A one-process group shows the call (each rank passes its own rows of ``W``):

    >>> import torch, torch.distributed as dist
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> W = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    >>> out = linear_token_stats(h, W, torch.tensor([0, 2]), return_logprobs=True,
    ...                          top_k=2)
    >>> [round(v, 6) for v in out.logprobs.tolist()]  # 2 - log(e^2 + 2), 0 - log(e^2 + 2)
    [-0.239545, -2.239545]
    >>> out.top_k_indices.tolist()  # global class indices; ties: the lower index first
    [[0, 1], [1, 0]]
    >>> dist.destroy_process_group()
    """
    kw = dict(locals())
    rank, world = group_info(group)
    err: BaseException | None = None
    proposal: Agreement | None = None
    call: _Call | None = None
    device = input.device if isinstance(input, Tensor) else torch.device("cpu")
    try:
        check_float_tensor(input, "input", 1)
        check_float_tensor(linear_weight, "linear_weight", 2)
        D = int(input.shape[-1])
        if linear_weight.dim() != 2 or linear_weight.shape[1] != D:
            raise ValueError(f"linear_weight must have shape (V_r, D) = (this rank's classes, "
                             f"{D}), got {tuple(linear_weight.shape)}")
        if linear_weight.dtype != input.dtype or linear_weight.device != input.device:
            raise ValueError(f"linear_weight ({linear_weight.dtype}, {linear_weight.device}) "
                             f"must match input ({input.dtype}, {input.device})")
        local = int(linear_weight.shape[0])
        if linear_bias is not None:
            check_float_tensor(linear_bias, "linear_bias", 1)
            if tuple(linear_bias.shape) != (local,) or linear_bias.dtype != input.dtype:
                raise ValueError(f"linear_bias must have shape ({local},) (this rank's "
                                 f"classes) and dtype {input.dtype}, got "
                                 f"{tuple(linear_bias.shape)} and {linear_bias.dtype}")
        batch = tuple(input.shape[:-1])
        h = input.reshape(math.prod(batch), D)
        Wm, b = linear_weight, linear_bias
        out_dtype = _out_dtype(input)
        if input.device.type != "meta" and torch.is_autocast_enabled(input.device.type):
            adt = torch.get_autocast_dtype(input.device.type)
            h, Wm = h.to(adt), Wm.to(adt)
            b = None if b is None else b.to(adt)
            out_dtype = torch.float32 if adt in _LOW else out_dtype
        call = _validate("linear_token_stats", (h, Wm, b), input, target, batch, out_dtype,
                         kw)
        proposal = _proposal("linear_token_stats", call, kw, group, rank, world, input,
                             local, D, bool(input.requires_grad and torch.is_grad_enabled()))
    except (TypeError, ValueError, NotImplementedError) as exc:
        err = exc
    return _run("linear", proposal, err, call, group, rank, world, device, kw)


def token_stats(
    input: Tensor,
    target: Tensor | None = None,
    *,
    group: Any = None,
    return_loss: bool = True,
    return_lse: bool = False,
    return_logprobs: bool = False,
    return_entropy: bool = False,
    return_predicted_tokens: bool = False,
    return_token_accuracy: bool = False,
    return_z_loss: bool = False,
    top_k: int = 0,
    temperature: float = 1.0,
    weight: Tensor | None = None,
    sample_weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float | None = None,
    normalizer: float | Tensor | None = None,
    shift: bool | int = False,
    chunks: ChunkPlan | None = None,
    dtype: torch.dtype | None = None,
    shard_sizes: Sequence[int] | None = None,
    check: bool = True,
    collective: str = "all_gather",
) -> TokenStats:
    r""":func:`linear_token_stats` of a logits shard: rank *r* passes its classes
    ``[o_r, o_r + V_r)`` of the logits, `input` ``[..., V_r]`` (class axis last), and the
    same `target` ``[...]`` and keywords; every rank gets the
    :class:`~crossentropy.torch.TokenStats` of :func:`crossentropy.torch.token_stats` on
    the gathered logits (the same formulas, global class indices), and the gradient of
    its own shard (backward needs no collective).  Collectives: the metadata check and one
    all-gather of ``N x c`` float64 per rank (see :func:`linear_token_stats`).

    Examples
    --------
    >>> import torch, torch.distributed as dist
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> z = torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64)
    >>> out = token_stats(z, torch.tensor([0]), return_logprobs=True, return_entropy=True)
    >>> float(out.logprobs[0])  # mpmath: -log1p(2 e^-40) = -8.496708510583e-18
    -8.496708510583e-18
    >>> float(out.entropy[0])  # mpmath: log1p(r) + 40 r / (1 + r), r = 2 e^-40
    3.483650489339e-16
    >>> dist.destroy_process_group()
    """
    kw = dict(locals())
    rank, world = group_info(group)
    err: BaseException | None = None
    proposal: Agreement | None = None
    call: _Call | None = None
    device = input.device if isinstance(input, Tensor) else torch.device("cpu")
    try:
        check_float_tensor(input, "input", 1)
        V_r = int(input.shape[-1])
        batch = tuple(input.shape[:-1])
        x = input.reshape(math.prod(batch), V_r)
        call = _validate("token_stats", (x, None, None), input, target, batch,
                         _out_dtype(input), kw)
        proposal = _proposal("token_stats", call, kw, group, rank, world, input, V_r)
    except (TypeError, ValueError, NotImplementedError) as exc:
        err = exc
    return _run("logits", proposal, err, call, group, rank, world, device, kw)


def _validate(name: str, arrays: tuple[Tensor, Tensor | None, Tensor | None], input: Tensor,
              target: Tensor | None, batch: tuple[int, ...], out_dtype: torch.dtype,
              kw: dict[str, Any]) -> _Call:
    """This rank's checks of the keywords (those that need no other rank)."""
    a = arrays[0]
    _flags(target, return_logprobs=kw["return_logprobs"],
           return_token_accuracy=kw["return_token_accuracy"])
    if transformed(*arrays):
        raise NotImplementedError(f"{name} does not run under torch.func transforms")
    if kw["collective"] != "all_gather":
        raise ValueError(f"collective must be 'all_gather' for the token statistics (the "
                         f"top-k candidates and the argmax are gathered), got "
                         f"{kw['collective']!r}")
    reduction = kw["reduction"]
    norm_n, norm_t = _split_normalizer(kw["normalizer"], reduction)
    ii = kw["ignore_index"]
    if isinstance(ii, bool) or not isinstance(ii, int):
        raise TypeError(f"ignore_index must be an integer, got {ii!r}")
    opts = _ce_options(reduction, ii, kw["label_smoothing"], kw["z_loss"], kw["softcap"],
                       kw["base"], norm_n)
    tau = check_temperature(kw["temperature"])
    k = check_top_k(kw["top_k"], None)
    weight = check_class_weight(kw["weight"], input.device)
    n = check_shift(kw["shift"])
    if a.dtype in _LOW:  # the float32 accumulation, unrounded (as the single process)
        out_dtype = torch.float32
    if kw["dtype"] is not None:
        out_dtype = check_dtype(kw["dtype"])
    if kw["chunks"] is not None and not isinstance(kw["chunks"], ChunkPlan):
        raise TypeError(f"chunks must be None or a crossentropy.torch.ChunkPlan, got "
                        f"{kw['chunks']!r}")
    t = sw = None
    if target is not None:
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be None or a torch.Tensor, got "
                            f"{type(target).__name__}")
        check_index_dtype(target, tuple(input.shape))
        if tuple(target.shape) != batch:
            raise ValueError(f"target must have shape {batch} (the input's without its last "
                             f"axis), got {tuple(target.shape)}")
        if target.device != input.device:
            raise ValueError(f"target is on {target.device} but input is on {input.device}")
        if n and input.dim() < 2:
            raise ValueError(f"shift={kw['shift']!r} takes input (..., T, ...) and labels "
                             f"(..., T)")
        t = _shift_labels(target, n, ii) if n else target.reshape(-1).to(torch.int64)
        sw = kw["sample_weight"]
        sw = None if sw is None else check_sample_weight(sw, batch)
    elif kw["sample_weight"] is not None:
        raise ValueError("sample_weight weighs the loss of each token: it needs target")
    elif n:
        raise ValueError("shift moves the targets: it needs target")
    return _Call(arrays, t, sw, opts, norm_t, tau, k, weight, n, out_dtype, batch)


def _proposal(kind: str, c: _Call, kw: dict[str, Any], group: Any, rank: int,
              world: int, input: Tensor, local: int, hidden: int = -1,
              hidden_grad: bool = False) -> Agreement:
    """This rank's side of the agreement: the loss's fields and the call's own."""
    sizes = [0] * world
    sizes[rank] = local
    asked = sum(1 << i for i, f in enumerate(_RETURNS) if kw[f])
    extra = (_bits(c.temperature), c.top_k, asked, int(c.target is not None), c.shift,
             _checksum(c.sample_weight),
             option_code(None) if c.normalizer is None else _bits(float(c.normalizer)),
             option_code(str(c.out_dtype)))
    return Agreement(kind=kind, group=group, rank=rank, world_size=world,
                     shard_sizes=tuple(sizes), options=c.opts, collective="all_gather",
                     chunk_size=1, rows=c.batch, dtype=input.dtype, device=input.device,
                     hidden_size=hidden, hidden_requires_grad=hidden_grad, extra=extra)


def _run(kind: str, proposal: Agreement | None, err: BaseException | None,
         call: _Call | None, group: Any, rank: int, world: int,
         device: torch.device, kw: dict[str, Any]) -> TokenStats:
    """Agree, check what needs the whole vocabulary, run the engine, reduce."""
    a = agree(proposal, err, group=group, rank=rank, world_size=world, device=device,
              target=None if call is None else call.target,
              class_weight=None if call is None else call.weight,
              shard_sizes_arg=kw["shard_sizes"], check=kw["check"], extra_fields=_EXTRA_FIELDS)
    assert call is not None  # agree raised on the rank that had an error
    (x, Wm, b), t, k = call.arrays, call.target, call.top_k
    opts, weight = call.opts, call.weight
    V = a.num_classes
    # the same outcome on every rank: the whole vocabulary's bounds
    check_targets_in_range(a, torch.empty(0, dtype=torch.int64, device=device), weight)
    if k > V:
        raise ValueError(f"top_k must be between 0 and the number of classes of the whole "
                         f"vocabulary, {V} (all shards), got {k}")
    target = kw["target"]
    if t is not None:
        n = call.shift
        check_index_target(target[..., n:] if n else target, V, opts.ignore_index,
                           last_offset=n)
    want = _tokenstats.Want(
        logprobs=bool(kw["return_logprobs"]), entropy=bool(kw["return_entropy"]), top_k=k,
        predicted=bool(kw["return_predicted_tokens"] or kw["return_token_accuracy"]))
    cdt = torch.float32 if x.dtype in _LOW else x.dtype
    tau = call.temperature
    plan = _tokenstats.plan(kw["chunks"], x.shape[0], a.local_size, cdt, want, opts, tau,
                            x.device)
    cw = None if weight is None else weight.detach().to(torch.float64)
    setup = _tokenstats.Setup(opts, tau, plan, want, cw, offset=a.start, num_classes=V,
                              ranks=VocabRanks(a))
    with _no_autocast(kw["input"]):
        rows = _tokenstats.run(kind, x, Wm, b, t, setup)
    return _finish(rows, t, call.sample_weight, weight, opts, call.normalizer, call.batch, V,
                   call.out_dtype, k, kw)
