r"""Everything a language-model trainer needs from the output layer, in one exact call.

:func:`linear_token_stats` takes hidden states ``h`` ``[..., D]`` and the output embedding
``W`` ``[V, D]`` (optional bias), :func:`token_stats` logits ``[..., V]`` (class axis last,
as a language model's); both return a :class:`TokenStats` with any subset of

* ``loss``: the cross-entropy (every option of :func:`~crossentropy.torch.cross_entropy`:
  class weights, label smoothing, z-loss, soft cap, ``reduction``, ``normalizer``, bits),
  with per-token weights ``sample_weight``;
* ``logprobs``: ``log p(y_t)`` per token (0 where the target is ``ignore_index``);
* ``lse``: the log-sum-exp per token; ``entropy``: ``H_t = -sum_c p_c log p_c``;
* ``predicted_tokens`` (the argmax), ``token_accuracy`` (the fraction of counted tokens
  whose argmax is the target);
* ``z_loss``: the z-loss's part of the loss, reduced as the loss;
* ``top_k_logprobs`` and ``top_k_indices`` ``[..., k]``,

all of ``softmax(softcap(z) / temperature)`` (the loss too), computed from the logits in
chunks (:class:`~crossentropy.torch.ChunkPlan`: tokens x vocabulary slices), so that the
``[N, V]`` logits never exist beyond one chunk, in forward or backward.  Every floating
output is differentiable (reinforcement-learning losses back-propagate through the
log-probabilities and the entropy); the integer ones are not.

.. math::

    \log p_y = -\big((m - z_y) + \operatorname{log1p}(r)\big), \qquad
    H = \operatorname{log1p}(r) + \frac{\sum_c e^{z_c - m}(m - z_c)}{1 + r}

(``m`` the row maximum, ``r = sum_{c != argmax} e^{z_c - m}``): sums of terms of one sign,
so a confident token's ``log p = -1e-18`` and entropy ``4e-17`` keep their digits.

Names for users of other libraries: Liger-Kernel's ``return_z_loss``,
``return_token_accuracy``, ``return_predicted_tokens`` are these keywords, its
``lse_square_scale`` is ``z_loss=`` and its ``CrossEntropyOutput`` fields
(``loss, z_loss, token_accuracy, predicted_tokens``) are fields here; TRL's
``selective_log_softmax(logits, index)`` is ``token_stats(logits, index,
return_logprobs=True).logprobs`` and ``entropy_from_logits(logits)`` is
``token_stats(logits, return_entropy=True).entropy``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor

from crossentropy._options import CrossEntropyOptions, Reduction
from crossentropy.torch import _tokenstats, _triton_stats
from crossentropy.torch._chunks import ChunkPlan
from crossentropy.torch._reduction import ReductionPlan, row_weights
from crossentropy.torch._validate import (
    check_dtype,
    check_impl,
    check_index_dtype,
    check_index_target,
    check_linear,
    check_sample_weight,
    check_shift,
    check_temperature,
    check_top_k,
    check_weight,
    real,
    transformed,
)
from crossentropy.torch.functional import (
    _LOW,
    _ce_options,
    _no_autocast,
    _out_dtype,
    _shift_labels,
    _split_normalizer,
)

__all__ = ["TokenStats", "linear_token_stats", "token_stats"]


class TokenStats(NamedTuple):
    """What :func:`token_stats` and :func:`linear_token_stats` return; a field not asked
    for is None.  Per-token fields have the target's shape (``[..., k]`` for the top-k);
    floating fields are in the loss's unit (``base``) and differentiable."""

    loss: Tensor | None
    lse: Tensor | None
    logprobs: Tensor | None
    entropy: Tensor | None
    predicted_tokens: Tensor | None
    token_accuracy: Tensor | None
    z_loss: Tensor | None
    top_k_logprobs: Tensor | None
    top_k_indices: Tensor | None


def _flags(target: Tensor | None, **asked: bool) -> None:
    if target is None:
        need = [k for k in ("return_logprobs", "return_token_accuracy") if asked.get(k)]
        if need:
            raise ValueError(f"{need[0]} needs target (the tokens whose log-probability or "
                             f"accuracy is asked for)")


def linear_token_stats(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor | None = None,
    *,
    linear_bias: Tensor | None = None,
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
    impl: str = "auto",
    dtype: torch.dtype | None = None,
) -> TokenStats:
    r"""Per-token statistics of ``softmax(softcap(h W^T + b) / temperature)`` without the
    logits (see the module notes for each output).

    `input` ``[..., D]``, `linear_weight` ``[V, D]``, `target` ``[...]`` class indices (or
    None: only the target-free outputs, ``lse``, ``entropy``, ``predicted_tokens``, top-k).
    ``shift=n``: position t predicts label t + n (hidden ``[..., T, D]``, labels ``[..., T]``).
    ``sample_weight`` (the target's shape, finite, >= 0) multiplies each token's loss; the
    mean divides by ``sum_t sample_weight_t w_{y_t}`` over counted tokens (or by
    ``normalizer``).  ``token_accuracy`` is unweighted: correct counted tokens over counted
    tokens (NaN when none counts).  ``chunks`` cuts the work: its ``budget_bytes`` bounds
    the temporaries of one block (default: 128 MiB, or an eighth of the device's free
    memory; :class:`~crossentropy.torch.ChunkPlan`).  bfloat16/float16 inputs
    give float32 outputs (``dtype=`` to choose).  ``impl``: ``"auto"`` (the fused Triton
    kernels for CUDA tensors where they can run, else ``"torch"``), ``"triton"`` (the
    kernels, or :class:`~crossentropy.triton.TritonUnavailable` saying why: float64, top-k),
    ``"torch"`` (blocks of logits on torch's operations, every option; ``"cpu"`` is the
    same).

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> W = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    >>> out = cet.linear_token_stats(h, W, torch.tensor([0, 2]), return_logprobs=True,
    ...                              return_entropy=True, return_token_accuracy=True)
    >>> [round(v, 6) for v in out.logprobs.tolist()]  # 2 - log(e^2 + 2), 0 - log(e^2 + 2)
    [-0.239545, -2.239545]
    >>> round(float(out.entropy[0]), 6), float(out.token_accuracy)  # mpmath: 0.6655731
    (0.665573, 0.5)
    """
    D, V, out_features = check_linear(input, linear_weight, linear_bias)
    if out_features:
        raise ValueError("linear_token_stats takes a 2-D linear_weight (V, in_features)")
    batch = tuple(input.shape[:-1])
    h = input.reshape(math.prod(batch), D)
    Wm, b = linear_weight, linear_bias
    out_dtype = _out_dtype(input)
    if input.device.type != "meta" and torch.is_autocast_enabled(input.device.type):
        adt = torch.get_autocast_dtype(input.device.type)
        h, Wm = h.to(adt), Wm.to(adt)
        b = None if b is None else b.to(adt)
        out_dtype = torch.float32 if adt in _LOW else out_dtype
    return _stats("linear", h, Wm, b, input, target, batch, V, out_dtype, locals())


def token_stats(
    input: Tensor,
    target: Tensor | None = None,
    *,
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
    impl: str = "auto",
    dtype: torch.dtype | None = None,
) -> TokenStats:
    r""":func:`linear_token_stats` of logits ``[..., V]`` (class axis last, as a language
    model's) and targets ``[...]``: the same outputs and keywords, read chunk by chunk
    (nothing logits-sized is allocated but the gradient, in the logits' dtype).

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> z = torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64)
    >>> out = cet.token_stats(z, torch.tensor([0]), return_logprobs=True,
    ...                       return_entropy=True)
    >>> float(out.logprobs[0])  # mpmath: -log1p(2 e^-40) = -8.496708510583e-18
    -8.496708510583e-18
    >>> float(out.entropy[0])  # mpmath: log1p(r) + 40 r / (1 + r), r = 2 e^-40
    3.483650489339e-16
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
    if input.dim() < 1:
        raise ValueError("input must have shape (..., V): logits with the class axis last")
    V = input.shape[-1]
    batch = tuple(input.shape[:-1])
    x = input.reshape(math.prod(batch), V)
    out_dtype = _out_dtype(input)
    return _stats("logits", x, None, None, input, target, batch, V, out_dtype, locals())


def _stats(kind: str, a: Tensor, Wm: Tensor | None, b: Tensor | None, input: Tensor,
           target: Tensor | None, batch: tuple[int, ...], V: int, out_dtype: torch.dtype,
           kw: dict[str, Any]) -> TokenStats:
    """Validate the shared keywords, run the engine, reduce and shape the outputs."""
    _flags(target, return_logprobs=kw["return_logprobs"],
           return_token_accuracy=kw["return_token_accuracy"])
    if transformed(a, Wm, b):
        raise NotImplementedError(
            "token_stats and linear_token_stats do not run under torch.func transforms (grad, "
            "vmap, jacrev...) yet: their backward is written by hand; "
            "linear_cross_entropy(..., return_logprobs=True, return_entropy=True) does")
    reduction = kw["reduction"]
    norm_n, norm_t = _split_normalizer(kw["normalizer"], reduction)
    ii = kw["ignore_index"]
    if isinstance(ii, bool) or not isinstance(ii, int):
        raise TypeError(f"ignore_index must be an integer, got {ii!r}")
    opts = _ce_options(reduction, ii, kw["label_smoothing"], kw["z_loss"], kw["softcap"],
                       kw["base"], norm_n)
    tau = check_temperature(kw["temperature"])
    k = check_top_k(kw["top_k"], V)
    weight = kw["weight"]
    check_weight(weight, V)
    n = check_shift(kw["shift"])
    if a.dtype in _LOW:  # the float32 accumulation, unrounded (as transformers upcasts)
        out_dtype = torch.float32
    if kw["dtype"] is not None:
        out_dtype = check_dtype(kw["dtype"])
    if kw["chunks"] is not None and not isinstance(kw["chunks"], ChunkPlan):
        raise TypeError(f"chunks must be None or a crossentropy.torch.ChunkPlan, got "
                        f"{kw['chunks']!r}")
    t: Tensor | None = None
    sw = None
    if target is not None:
        if not isinstance(target, Tensor):
            raise TypeError(f"target must be None or a torch.Tensor, got "
                            f"{type(target).__name__}")
        check_index_dtype(target, tuple(input.shape))
        if tuple(target.shape) != batch:
            raise ValueError(f"target must have shape {batch} (the input's without its last "
                             f"axis), got {tuple(target.shape)}")
        if n and input.dim() < 2:
            raise ValueError(f"shift={kw['shift']!r} takes input (..., T, ...) and labels "
                             f"(..., T)")
        t = _shift_labels(target, n, ii) if n else target.reshape(-1).to(torch.int64)
        if real(t):
            check_index_target(target[..., n:] if n else target, V, ii, last_offset=n)
        sw = kw["sample_weight"]
        sw = None if sw is None else check_sample_weight(sw, batch)
    elif kw["sample_weight"] is not None:
        raise ValueError("sample_weight weighs the loss of each token: it needs target")
    elif n:
        raise ValueError("shift moves the targets: it needs target")
    want = _tokenstats.Want(
        logprobs=bool(kw["return_logprobs"]), entropy=bool(kw["return_entropy"]), top_k=k,
        predicted=bool(kw["return_predicted_tokens"] or kw["return_token_accuracy"]))
    cdt = torch.float32 if a.dtype in _LOW else a.dtype
    plan = _tokenstats.plan(kw["chunks"], a.shape[0], V, cdt, want, opts, tau, a.device)
    cw = None if weight is None else weight.detach().to(torch.float64)
    setup = _tokenstats.Setup(opts, tau, plan, want, cw)
    with _no_autocast(input):
        rows = _triton_stats.run_rows(kind, a, Wm, b, t, setup, check_impl(kw["impl"]),
                                      _NAMES[kind])
    return _finish(rows, t, sw, weight, opts, norm_t, batch, V, out_dtype, k, kw)


_NAMES = {"linear": "linear_token_stats", "logits": "token_stats"}


def _finish(rows: _tokenstats.Outputs, t: Tensor | None, sw: Tensor | None,
            weight: Tensor | None, opts: CrossEntropyOptions, norm_t: Tensor | None,
            batch: tuple[int, ...], V: int, out_dtype: torch.dtype, k: int,
            kw: dict[str, Any]) -> TokenStats:
    """Reduce the loss (and the z-loss value) and give every output its shape and dtype."""
    f64 = torch.float64
    scale = opts.scale
    ii = kw["ignore_index"]

    def tokens(x: Tensor | None, *extra: int) -> Tensor | None:
        return None if x is None else x.reshape(*batch, *extra)

    def unit(x: Tensor | None, *extra: int) -> Tensor | None:
        if x is None:
            return None
        return tokens(x * scale if scale != 1.0 else x, *extra).to(out_dtype)  # type: ignore

    loss = zl = acc = None
    if t is not None:
        omega = row_weights(t, None if weight is None else weight.to(f64), opts, V, f64)
        per = rows.loss
        if sw is not None:
            per = per * sw.to(f64)
            omega = omega * sw.to(f64)
        plan = ReductionPlan(opts, omega if opts.reduction is Reduction.MEAN else None,
                             norm_t)
        if kw["return_loss"]:
            v = plan.value(per)
            loss = (v.reshape(batch) if opts.reduction is Reduction.NONE else v).to(out_dtype)
        if kw["return_z_loss"]:
            counted = torch.ne(t, ii)
            zrows = torch.where(counted, opts.z_loss * rows.lse * rows.lse,
                                torch.zeros_like(rows.lse))
            if sw is not None:
                zrows = zrows * sw.to(f64)
            v = plan.value(zrows)
            zl = (v.reshape(batch) if opts.reduction is Reduction.NONE else v).to(out_dtype)
        if kw["return_token_accuracy"] and rows.predicted is not None:
            counted = torch.ne(t, ii)
            hits = (counted & (rows.predicted == t)).sum().to(out_dtype)
            acc = hits / counted.sum().to(out_dtype)
    pred = tokens(rows.predicted) if kw["return_predicted_tokens"] else None
    return TokenStats(
        loss, unit(rows.lse) if kw["return_lse"] else None, unit(rows.logprobs),
        unit(rows.entropy), pred, acc, zl, unit(rows.top_values, k),
        tokens(rows.top_indices, k))
