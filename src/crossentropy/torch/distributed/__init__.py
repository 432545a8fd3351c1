r"""Vocabulary-parallel cross-entropy over ``torch.distributed``.

When the output layer is split along the vocabulary (tensor parallelism), each rank of a
process group holds the logits -- or the weight rows -- of one contiguous slice of the
classes, and every rank holds the same rows (tokens) and the same targets.  The functions
here return the loss over the *whole* vocabulary on every rank without gathering it:

* :func:`cross_entropy` takes the local logits shard ``[..., V_r]``;
* :func:`linear_cross_entropy` takes the full hidden states ``[..., D]`` and the local
  weight shard ``[V_r, D]`` (optionally a bias shard ``[V_r]``) and never holds more than
  ``chunk_size x V_r`` logits at a time;
* :func:`token_stats` and :func:`linear_token_stats` return the per-token statistics of
  :func:`crossentropy.torch.token_stats` (log-probabilities, entropy, top-k with global
  indices, predicted tokens, accuracy, loss, z-loss) from the same shards (``_stats.py``,
  ``_ranks.py``).

Shard *r* holds the classes ``[o_r, o_r + V_r)`` with ``o_r = V_0 + ... + V_{r-1}``: the
shards are laid out in rank order, and their sizes may differ (``V`` need not be divisible
by the world size, a shard may be empty; :func:`shard_sizes` gives the
``torch.tensor_split`` layout).

The loss of row *i* with target :math:`y` (index targets), class weights :math:`w`
(1 by default), label smoothing :math:`\varepsilon` over :math:`V` classes, z-loss
coefficient :math:`\zeta` and soft cap :math:`c` (logits :math:`z = c \tanh(x / c)`, or
:math:`z = x`) is, with :math:`m` the row maximum over all shards (reached at :math:`k`)
and :math:`\text{rest} = \sum_{c \ne k} e^{z_c - m}`,

.. math::

    \ell_i = (1-\varepsilon)\, w_{y}\,\bigl[(m - z_{y}) + \operatorname{log1p}(\text{rest})\bigr]
           + \frac{\varepsilon}{V}\Bigl[\sum_c w_c (m - z_c)
                  + \operatorname{log1p}(\text{rest}) \sum_c w_c\Bigr]
           + \zeta\, \mathrm{lse}^2 , \qquad \mathrm{lse} = m + \operatorname{log1p}(\text{rest}),

every bracket a sum of terms >= 0 (no cancellation; ``log1p`` keeps the loss of a confident
row, 1e-18, where ``lse - z_y`` gives 0).  These are the semantics of
:func:`crossentropy.torch.cross_entropy` with index targets and the class axis last:
rows whose target equals ``ignore_index`` add nothing; ``reduction='mean'`` divides the sum
by :math:`\sum_i w_{y_i}` over the counted rows (the z-loss term included), and a mean over
zero counted rows is NaN with a zero gradient (the NumPy core returns 0.0 there);
``normalizer`` replaces that divisor; ``base`` converts the whole result from nats.

Accuracy: on CPU everything is computed in float64 and rounded once to the input dtype, so
the per-row loss and the gradient are within 4 ulp (float64) and 1 ulp (float32) of the
exact values, as the NumPy core (``tests/test_distributed.py`` measures it against mpmath).
On CUDA, float16/bfloat16/float32 inputs are computed in float32 (the loss is then within a
few float32 ulp of the exact value, like torch's own float32 loss), float64 in float64.
With a soft cap the result is that of the soft-capped logits as computed (``tanh`` is
rounded once); the linear form forms its logits in the input dtype (float32 for
float16/bfloat16), as :func:`crossentropy.torch.linear_cross_entropy` does, and the bounds
hold for the logits as formed.

Collectives per loss (``P`` ranks, ``N`` rows; ``k = 3``, or 4 with label smoothing)
-----------------------------------------------------------------------------------
Each rank reduces its shard to per-row statistics relative to its *local* maximum
(:mod:`crossentropy.torch._rowstats`: ``m_r``, ``rest_r``, ``m_r - z_y`` on the owner of the
target, ``sum_c w_c (m_r - z_c)`` with smoothing).  Then

* ``collective="all_gather"`` (default): one all-gather of ``[N, k]`` per rank
  (``[P, N, k]`` received); every rank merges the statistics in rank order;
* ``collective="all_reduce"``: one all-reduce MAX of ``N`` floats (the row maximum) and
  one all-reduce SUM of an ``[N, k]`` buffer of statistics rescaled to it.  Two latencies
  instead of one, but about ``2 N k`` floats moved per rank instead of ``(P - 1) N k``:
  the choice for large groups.

The buffers have the compute dtype.  Backward: :func:`cross_entropy` needs **no**
collective (rank *r* forms the gradient of its own classes from the saved row statistics);
:func:`linear_cross_entropy` needs one all-reduce SUM of ``[N, D]`` for the gradient of the
hidden states (only when they require a gradient); the weight and bias gradients stay local.

With ``check=True`` (the default) one more collective comes first: an all-gather of 20
int64 per rank that exchanges the shard sizes (so no rank needs to be told the layout) and
checks that every rank agrees -- see :func:`cross_entropy` for the list.  With
``check=False`` and ``shard_sizes`` given, that collective is skipped.

The package's parts: ``_protocol.py`` (validation, the metadata exchange and
:class:`ShardMismatchError`), ``_arithmetic.py`` (the loss's statistics, merge, gradients),
``_stats.py`` (the token statistics' public functions) and ``_ranks.py`` (their exchange,
on the single-process engine :mod:`crossentropy.torch._tokenstats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from crossentropy.torch.distributed import _arithmetic
from crossentropy.torch.distributed._protocol import (
    Agreement,
    ShardMismatchError,
    agree,
    check_class_weight,
    check_float_tensor,
    check_target,
    check_targets_in_range,
    group_info,
    shard_range,
    shard_sizes,
    validate_call_options,
)
from crossentropy.torch.distributed._stats import linear_token_stats, token_stats

__all__ = [
    "ShardMismatchError",
    "all_reduce_grad",
    "cross_entropy",
    "linear_cross_entropy",
    "linear_token_stats",
    "shard_range",
    "shard_sizes",
    "token_stats",
]


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
    group_info(group)
    out: torch.Tensor = _arithmetic.AllReduceGrad.apply(x, group)  # type: ignore[no-untyped-call]
    return out


def _proposal(kind: str, group: Any, rank: int, world: int, x: torch.Tensor, local_size: int,
              options: Any, collective: str, chunk: int, hidden: int = -1,
              hidden_grad: bool = False) -> Agreement:
    sizes = [0] * world
    sizes[rank] = local_size
    return Agreement(kind=kind, group=group, rank=rank, world_size=world,
                     shard_sizes=tuple(sizes), options=options, collective=collective,
                     chunk_size=chunk, rows=tuple(x.shape[:-1]), dtype=x.dtype,
                     device=x.device, hidden_size=hidden, hidden_requires_grad=hidden_grad)


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
    softcap: float | None = None,
    base: float | None = None,
    normalizer: float | None = None,
    shard_sizes: Sequence[int] | None = None,
    check: bool = True,
    collective: str = "all_gather",
    chunk_size: int = 4096,
) -> torch.Tensor:
    r"""Cross-entropy over logits split along the class (last) axis across a process group.

    Every rank of `group` calls it with its own shard ``logits[..., V_r]`` and the same
    `target`, rows and options; every rank gets the loss over the whole vocabulary
    (formula, accuracy and collectives: see the module notes), and the gradient of its own
    shard.  Values and gradients equal :func:`crossentropy.torch.cross_entropy` (and
    ``torch.nn.functional.cross_entropy`` plus ``z_loss * logsumexp**2`` per counted row)
    on the gathered logits, class axis last.

    Parameters
    ----------
    logits : Tensor
        This rank's shard, shape ``[..., V_r]`` (float16, bfloat16, float32, float64; the
        result has the logits' dtype).  Shards follow rank order; ``V_r`` may differ
        between ranks (even 0).
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
        Coefficient :math:`\zeta` of the auxiliary term :math:`\zeta\,\mathrm{lse}^2` added
        to each counted row (PaLM); 0 disables it.
    softcap : float, optional
        Soft cap *c*: the loss sees ``c * tanh(logits / c)`` (Gemma 2); None disables it.
        The gradient uses the exact derivative
        :math:`\operatorname{sech}^2 u = 4 e^{-2|u|} / (1 + e^{-2|u|})^2`.
    base : float, optional
        Unit of the result: None for nats, 2 for bits.
    normalizer : float, optional
        Divide the summed loss by it instead (``reduction`` 'sum' or 'mean'; for example
        the global number of target tokens across gradient-accumulation steps).
    shard_sizes : sequence of int, optional
        The sizes of all shards in rank order.  Not needed: with ``check=True`` they are
        exchanged anyway; with ``check=False`` they save that collective.
    check : bool
        Exchange and compare metadata first (one all-gather of 20 int64 per rank).  Every
        rank then raises :class:`ShardMismatchError` (a ValueError) instead of hanging or
        computing garbage when: a rank failed its own argument checks (that rank raises
        its own TypeError/ValueError naming the argument); the number of rows, the row
        shape, the targets (position-sensitive checksum), the dtype, the class-weight
        length, any option (ignore_index, label_smoothing, z_loss, softcap, reduction,
        base, normalizer), the collective, the hidden size or whether the hidden states
        need a gradient differ between ranks; or `shard_sizes` disagrees with the shards.
        Also checked on every rank, with the same outcome: targets in ``[0, V)`` (or
        ignore_index) and ``len(weight) == V``.  Not checked: the values of the logits,
        hidden states and class weights, and a rank that never calls the loss (that hangs
        until the process group's timeout).  Cost: one small collective and one O(N) pass
        over the targets (a device sync).
    collective : {'all_gather', 'all_reduce'}
        1 all-gather of ``N x k`` floats per rank (default: one latency; the faster on
        gloo, see ``bench/distributed.py``), or 2 all-reduces of ``N`` and ``N x k`` floats
        (less traffic for large groups); ``k`` = 3, or 4 with label smoothing.
    chunk_size : int
        Rows processed at a time (bounds the temporaries to ``chunk_size x V_r``).

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

    A confident row keeps its digits (``lse - z_y`` would give 0):

    >>> cross_entropy(torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64),
    ...               torch.tensor([0]), reduction="none")
    tensor([8.4967e-18], dtype=torch.float64)
    >>> dist.destroy_process_group()
    """
    rank, world = group_info(group)
    proposal: Agreement | None = None
    err: BaseException | None = None
    device = logits.device if isinstance(logits, torch.Tensor) else torch.device("cpu")
    try:
        check_float_tensor(logits, "logits", 1)
        check_target(target, tuple(logits.shape[:-1]), device, "logits'")
        options, coll, chunk = validate_call_options(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
            z_loss=z_loss, softcap=softcap, base=base, normalizer=normalizer,
            collective=collective, chunk_size=chunk_size)
        weight = check_class_weight(weight, device)
        proposal = _proposal("cross_entropy", group, rank, world, logits,
                             int(logits.shape[-1]), options, coll, chunk)
    except (TypeError, ValueError) as exc:
        err = exc
    agreement = agree(proposal, err, group=group, rank=rank, world_size=world, device=device,
                      target=target, class_weight=weight, shard_sizes_arg=shard_sizes,
                      check=check)
    check_targets_in_range(agreement, target, weight)
    out: torch.Tensor = _arithmetic.LogitsCrossEntropy.apply(  # type: ignore[no-untyped-call]
        logits, target, weight, agreement
    )
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
    softcap: float | None = None,
    base: float | None = None,
    normalizer: float | None = None,
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
    ``chunk_size`` rows at a time (the matmuls in the input dtype, float32 for
    float16/bfloat16; the row arithmetic in the compute dtype), reduced to per-row
    statistics and discarded, so no rank holds more than ``chunk_size x V_r`` of them; the
    backward pass recomputes them chunk by chunk.  Gradients: `linear_weight` and
    `linear_bias` get their local gradient; `input` gets the full gradient
    :math:`\sum_r g_r W_r` on every rank (one all-reduce SUM of ``[N, D]``).  Value and
    gradients equal the single-process loss on ``input @ W.T + b`` with ``W`` and ``b``
    gathered.

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
    rank, world = group_info(group)
    proposal: Agreement | None = None
    err: BaseException | None = None
    device = input.device if isinstance(input, torch.Tensor) else torch.device("cpu")
    try:
        check_float_tensor(input, "input", 1)
        check_float_tensor(linear_weight, "linear_weight", 2)
        if linear_weight.dim() != 2:
            raise ValueError(
                f"linear_weight must be 2-d [V_r, D], got shape {tuple(linear_weight.shape)}"
            )
        hidden = int(input.shape[-1])
        local = int(linear_weight.shape[0])
        if linear_weight.shape[1] != hidden:
            raise ValueError(f"linear_weight has {linear_weight.shape[1]} columns but input has "
                             f"D = {hidden} features")
        if linear_weight.dtype != input.dtype or linear_weight.device != input.device:
            raise ValueError(f"linear_weight ({linear_weight.dtype}, {linear_weight.device}) must "
                             f"match input ({input.dtype}, {input.device})")
        if linear_bias is not None:
            check_float_tensor(linear_bias, "linear_bias", 1)
            if tuple(linear_bias.shape) != (local,) or linear_bias.dtype != input.dtype:
                raise ValueError(
                    f"linear_bias must have shape ({local},) and dtype {input.dtype}, got "
                    f"{tuple(linear_bias.shape)} and {linear_bias.dtype}"
                )
        check_target(target, tuple(input.shape[:-1]), device, "input's")
        options, coll, chunk = validate_call_options(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
            z_loss=z_loss, softcap=softcap, base=base, normalizer=normalizer,
            collective=collective, chunk_size=chunk_size)
        weight = check_class_weight(weight, device)
        proposal = _proposal("linear_cross_entropy", group, rank, world, input, local,
                             options, coll, chunk, hidden,
                             bool(input.requires_grad and torch.is_grad_enabled()))
    except (TypeError, ValueError) as exc:
        err = exc
    agreement = agree(proposal, err, group=group, rank=rank, world_size=world, device=device,
                      target=target, class_weight=weight, shard_sizes_arg=shard_sizes,
                      check=check)
    check_targets_in_range(agreement, target, weight)
    out: torch.Tensor = _arithmetic.LinearCrossEntropy.apply(  # type: ignore[no-untyped-call]
        input, linear_weight, linear_bias, target, weight, agreement
    )
    return out
