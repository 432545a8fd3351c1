"""The custom operators behind ``crossentropy.torch``, registered with ``torch.library``.

Each has a fake (meta) implementation, so ``torch.compile`` traces it without a graph
break, and an autograd formula.  Options cross an operator by field name: each operator has
one parameter named as each option field it takes (``OPTS``), its inputs are built and read
back by those names (:func:`_by_name`, :func:`_bound`), never by their position in its
schema; chunking crosses as the two integers of a resolved
:class:`~crossentropy.torch._chunks.ChunkPlan`.

``crossentropy::cross_entropy_index``
    (N, C) logits against index targets on the CPU, on the backend the NumPy dispatch
    picks (:func:`crossentropy._dispatch.pick_rows`: the fused kernel, or the exact core
    where the kernels do not take the call).  The forward pass writes the gradient
    (already scaled by the reduction) into a buffer; backward returns it as it is when the
    incoming gradient is 1 and otherwise multiplies it once.

``crossentropy::linear_cross_entropy``
    ``cross_entropy(hidden @ weight.T + bias, target)`` by chunks (:mod:`._chunks`): the (N, V)
    logits never exist.  For 'mean'/'sum' the gradients are computed in the forward pass; for
    'none' ``crossentropy::linear_cross_entropy_backward`` recomputes them chunk by chunk
    with the per-row factors.

Second derivatives: with ``create_graph=True`` the index operator differentiates the
pure-torch reference (:func:`._reference.categorical_rows`, exact in every order); the
linear operator raises ``RuntimeError``.  Under ``torch.func`` transforms the public
functions do not call these operators at all: they decompose into the reference.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from crossentropy._core.reduce import scalar as reduce_scalar
from crossentropy._dispatch import pick_rows
from crossentropy._options import CrossEntropyOptions, Reduction
from crossentropy.torch._chunks import (
    _NO_IGNORE,
    ChunkPlan,
    linear_chunks,
    rows_for,
)
from crossentropy.torch._reduction import ReductionPlan, host_scale, reduce_rows, row_weights
from crossentropy.torch._reference import categorical_rows
from crossentropy.torch._validate import check_index_target

#: The option fields, by name (and in the order of CrossEntropyOptions.to_tuple()).
OPTS = tuple(f.name for f in dataclasses.fields(CrossEntropyOptions))


@functools.lru_cache(maxsize=512)
def _opts(pieces: tuple[Any, ...]) -> CrossEntropyOptions:
    """The options back from their pieces (cached: dataclasses.fields is per-call cost)."""
    return CrossEntropyOptions.from_tuple(pieces)


def pieces(opts: CrossEntropyOptions) -> tuple[Any, ...]:
    """``opts.to_tuple()`` (cached in eager mode; traced once per graph when compiling)."""
    if torch.compiler.is_compiling():
        return opts.to_tuple()
    return _pieces_cached(opts)


@functools.lru_cache(maxsize=512)
def _pieces_cached(opts: CrossEntropyOptions) -> tuple[Any, ...]:
    return opts.to_tuple()


def _parameters(op: Any) -> tuple[str, ...]:
    """A custom operator's parameter names, in its schema's order."""
    return tuple(a.name for a in op._opoverload._schema.arguments)


def _by_name(names: tuple[str, ...], opts: CrossEntropyOptions | None, **others: Any,
             ) -> tuple[Any, ...]:
    """An operator's inputs in the order of `names`: each option field it takes by its
    name (from `opts`), every other input from `others`."""
    args = dict(zip(OPTS, pieces(opts), strict=True)) if opts is not None else {}
    args.update(others)
    return tuple(args[n] for n in names)


def _bound(names: tuple[str, ...], inputs: tuple[Any, ...]) -> dict[str, Any]:
    """An operator's inputs by parameter name."""
    return dict(zip(names, inputs, strict=True))


def _options_of(args: Mapping[str, Any]) -> CrossEntropyOptions:
    """The options back from an operator's inputs (or parameters), by field name."""
    return _opts(tuple(args[f] for f in OPTS))


def _grads(names: tuple[str, ...], **grads: Tensor | None) -> tuple[Tensor | None, ...]:
    """A backward's result: the named inputs' gradients, None for every other input."""
    return tuple(grads.get(n) for n in names)


# --------------------------------------------------------------------------- helpers


def _grad_scale(opts: CrossEntropyOptions, omega: Tensor | None) -> float:
    """The factor of d(row loss) in d(out): scale, / normalizer, or / sum(omega) (host)."""
    return ReductionPlan(opts, omega).host_scale()


def _is_one(g: Tensor) -> bool:
    """True when every element of the incoming gradient is exactly 1 (eager mode only)."""
    # torch < 2.13 leaves is_compiling() False while AOTAutograd traces the backward, where
    # g is a FunctionalTensor or FakeTensor and reading it is data-dependent: only a plain
    # tensor is read (the shortcut is an optimisation; skipping it is always correct)
    if torch.compiler.is_compiling() or type(g) is not torch.Tensor:
        return False
    if g.dim() == 0:
        return float(g) == 1.0
    return bool((g == 1).all())


def _scale_rows(grad: Tensor, g: Tensor) -> Tensor:
    """grad * g, with g a scalar or one factor per row; `grad` itself when g is all ones."""
    if _is_one(g):
        return grad
    g = g.to(grad.dtype)
    return grad * (g.unsqueeze(1) if g.dim() == 1 else g)


def _omega(target: Tensor, weight: Tensor | None, opts: CrossEntropyOptions, C: int) -> Tensor:
    return row_weights(target, weight, opts, C, torch.float64)


# --------------------------------------------------------------------------- index op


@torch.library.custom_op("crossentropy::cross_entropy_index", mutates_args=(), device_types="cpu")
def cross_entropy_index(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    reduction: str,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    scale: float,
    normalizer: float | None,
    empty_mean: float,
    prob_mean: str,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, lse, grad) of (N, C) float32/float64 logits and int64 index targets.

    ``grad`` is ``d out / d logits`` for 'mean'/'sum' and the per-row gradients for
    'none' (an empty tensor when need_grad is False).
    """
    return _index_forward(logits, target, weight, reduction, ignore_index, label_smoothing,
                          z_loss, softcap, scale, normalizer, empty_mean, prob_mean,
                          need_grad)


def _index_forward(
    logits: Tensor, target: Tensor, weight: Tensor | None, reduction: str,
    ignore_index: int | None, label_smoothing: float, z_loss: float, softcap: float | None,
    scale: float, normalizer: float | None, empty_mean: float, prob_mean: str,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Body of the index operator (also run, without the operator dispatch, in eager mode)."""
    opts = _options_of(locals())  # the parameters named as the option fields
    out, lse, grad = index_body(logits, target, weight, opts, need_grad, True)
    assert lse is not None
    return out, lse, grad


# Gradient buffers are NumPy arrays seen as tensors (torch.from_numpy shares the memory and
# keeps the array alive).  NumPy asks the kernel for transparent huge pages (madvise) on
# arrays of 4 MiB and more; torch's CPU allocator does not, and under the usual THP setting
# ("madvise") the first touch of a fresh 1 GiB tensor takes 262,144 page faults of 4 KiB
# instead of 512 of 2 MiB.  Writing the gradient of float32 8192 x 32000 logits into
# torch.empty_like took 4.5x as long as into np.empty_like, and torch.empty_like + fill_
# 3.7-4.8x as long as the same on a NumPy array (AMD Zen 4, 2026-12-02).  Small buffers
# are NumPy arrays too: the kernel writes into the array itself, with no .numpy() view of a
# torch tensor (a microsecond of a 64 x 10 call).  The tensor is an ordinary CPU tensor in
# every other respect.
_HUGE_MIN_BYTES = 1 << 22  # NumPy's threshold for huge pages (its madvise hugepage)


def _fresh_like(x: Tensor) -> tuple[Tensor, np.ndarray]:
    """(tensor, its array): an uninitialised C-contiguous buffer of x's shape and dtype
    (float32/float64, CPU), on huge pages when it is large (see above)."""
    a = np.empty(tuple(x.shape), dtype=np.float32 if x.dtype == torch.float32 else np.float64)
    return torch.from_numpy(a), a


def index_body(
    logits: Tensor, target: Tensor, weight: Tensor | None, opts: CrossEntropyOptions,
    need_grad: bool, want_lse: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """(out, lse or None, grad) of (N, C) float32/float64 CPU logits and int64 targets: the
    one body of the index operator, of its eager Function and of the lean eager path.

    Targets are checked here (ValueError naming the first bad position); ``grad`` is
    ``d out / d logits`` for 'mean'/'sum', the per-row gradients for 'none' (an empty
    tensor when need_grad is False); lse (logits' dtype) only when `want_lse`.
    """
    # contiguous(): the tensor itself when it is already (and no graph: no grad here)
    x = (logits.detach() if logits.requires_grad else logits).contiguous()
    t = target.contiguous()
    C = x.shape[1]
    # the kernels on NumPy views (this body runs on real CPU data only)
    xn, tn = x.numpy(), t.numpy()
    ii = opts.ignore_index
    # one pick for the call (the NumPy dispatch's: the kernels or the core); the targets
    # checked and counted by one kernel pass where the kernels run, else by torch (a
    # reduction and two host reads, then a count where one is needed)
    backend = pick_rows(xn)
    found = backend.index_targets(tn, C, _NO_IGNORE if ii is None else ii)
    counted: int | None = None
    if found is None:
        in_range = check_index_target(t, C, ii)
    else:
        bad, counted = found
        if bad >= 0:
            check_index_target(t, C, ii)  # raises, naming the first bad position
        in_range = bad < 0 and counted == t.shape[0]
    w64 = None if weight is None else weight.detach().to(torch.float64).contiguous()
    denom = _denominator_of(opts, t, w64, C, in_range, counted)
    grad, gn = _fresh_like(x) if need_grad else (x.new_empty(0), None)
    gscale = host_scale(opts.scale, denom)
    w64n = None if w64 is None else w64.numpy()
    loss, lse = backend.ce_rows(xn, tn, w64n, _NO_IGNORE if ii is None else ii,
                                opts.label_smoothing, opts.z_loss, opts.softcap, gn, gscale)
    if opts.reduction is Reduction.NONE:
        out = reduce_rows(torch.from_numpy(loss), None, opts).to(x.dtype)
    else:
        # The core's rule (sum * scale, divided last; an empty mean is opts.empty_mean) on
        # the host: a handful of torch operations on a 0-d tensor cost more than the
        # kernel on small inputs.
        value = reduce_scalar(float(np.add.reduce(loss)), opts.scale, denom or None,
                              opts.empty_mean)
        # scalar_tensor rounds the double once to x's dtype, as torch.tensor(value) does
        out = torch.scalar_tensor(value, dtype=x.dtype)
    return out, (torch.from_numpy(lse).to(x.dtype) if want_lse else None), grad


def _denominator_of(opts: CrossEntropyOptions, t: Tensor, w64: Tensor | None, C: int,
                    in_range: bool, counted: int | None = None) -> float:
    """:meth:`ReductionPlan.host_divisor` of checked index targets, without building omega where the
    count is known: with no class weights the mean divides by the number of counted rows
    (``counted``, when the caller has it), which is N when every target is in [0, C) and
    ignore_index is outside that range."""
    if opts.reduction is not Reduction.MEAN or opts.normalizer is not None:
        return ReductionPlan(opts).host_divisor()
    if w64 is None:
        if counted is not None:
            return float(counted)  # the counted rows (exact below 2^53)
        ii = opts.ignore_index
        if ii is None or (in_range and not 0 <= ii < C):
            return float(t.shape[0])  # sum of N ones (exact)
        return float(int((t != ii).sum()))  # the counted rows (exact below 2^53)
    return ReductionPlan(opts, _omega(t, w64, opts, C)).host_divisor()


#: The index operator's parameters, in its schema's order.
INDEX_ARGS = _parameters(cross_entropy_index)


@cross_entropy_index.register_fake
def _(*inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
    args = _bound(INDEX_ARGS, inputs)
    logits, reduction, need_grad = args["logits"], args["reduction"], args["need_grad"]
    N = logits.shape[0]
    out = logits.new_empty((N,) if reduction == "none" else ())
    grad = logits.new_empty(logits.shape) if need_grad else logits.new_empty(0)
    return out, logits.new_empty(N), grad


def _index_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    args = _bound(INDEX_ARGS, inputs)
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(output[2])
    ctx.save_for_backward(args["logits"], args["target"], args["weight"], output[2])
    ctx.opts = _options_of(args)
    ctx.need = args["need_grad"]


def _index_backward(
    ctx: Any, g_out: Tensor | None, g_lse: Tensor | None, g_grad: Tensor | None
) -> tuple[Tensor | None, ...]:
    return _grads(INDEX_ARGS, logits=_index_grad(ctx, g_out, g_lse))


def _index_grad(ctx: Any, g_out: Tensor | None, g_lse: Tensor | None) -> Tensor | None:
    """d loss / d logits of the index operator and of :class:`_IndexLean` (ctx holds the
    saved (logits, target, weight, grad), ``opts`` and ``need``): the forward pass's
    gradient, scaled by g_out, plus g_lse's term."""
    logits, target, weight, grad = ctx.saved_tensors
    opts: CrossEntropyOptions = ctx.opts
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph=True: differentiate the reference, so that the result is itself
        # differentiable (second derivatives).
        with torch.enable_grad():
            loss, lse = categorical_rows(logits, target, weight, opts)
            omega = row_weights(target, weight, opts, logits.shape[1], logits.dtype)
            out = reduce_rows(loss, omega, opts)
            outs = [o for o, g in ((out, g_out), (lse, g_lse)) if g is not None]
            gos = [g for g in (g_out, g_lse) if g is not None]
            (gref,) = torch.autograd.grad(outs, [logits], gos, create_graph=True)
        return gref
    gx: Tensor | None = None
    if g_out is not None:
        if not ctx.need:
            raise RuntimeError(
                "crossentropy: the gradient was not computed in the forward pass (the "
                "logits did not require grad, or grad mode was off)"
            )
        gx = _scale_rows(grad, g_out)
    if g_lse is not None:
        from crossentropy.torch._chunks import lse_grad

        extra = lse_grad(logits.detach(), opts.softcap) * g_lse.unsqueeze(1).to(logits.dtype)
        gx = extra if gx is None else gx + extra
    return gx


cross_entropy_index.register_autograd(_index_backward, setup_context=_index_setup)


class _IndexEager(torch.autograd.Function):
    """The index operator without the ``torch.library`` dispatch (eager mode: the operator's
    wrapping costs more than the kernel on small inputs); same body, same backward."""

    # the classic forward(ctx, ...) form: Function.apply binds a setup_context-style
    # signature with inspect on every call (torch.func never sees this class: transformed
    # inputs decompose into the reference before they get here)
    @staticmethod
    def forward(ctx: Any, *inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
        out = _index_forward(*inputs)
        _index_setup(ctx, inputs, out)
        return out

    backward = staticmethod(_index_backward)


def cross_entropy_index_call(logits: Tensor, target: Tensor, weight: Tensor | None,
                             opts: CrossEntropyOptions, need_grad: bool,
                             ) -> tuple[Tensor, Tensor, Tensor]:
    """The index operator; on real tensors in eager mode its body in a plain
    autograd.Function (meta and fake tensors take the operator and its fake kernel)."""
    inputs = _by_name(INDEX_ARGS, opts, logits=logits, target=target, weight=weight,
                      need_grad=need_grad)
    x = logits
    if torch.compiler.is_compiling() or x.device.type == "meta" or is_fake(x):
        out: tuple[Tensor, Tensor, Tensor] = torch.ops.crossentropy.cross_entropy_index(*inputs)
        return out
    res: tuple[Tensor, Tensor, Tensor] = _IndexEager.apply(*inputs)  # type: ignore[no-untyped-call]
    return res


class _IndexLean(torch.autograd.Function):
    """:func:`index_body` as an autograd.Function of (logits, target, weight, opts, need,
    want_lse): the lean eager path of ``cross_entropy`` (plain CPU tensors, no transform,
    not compiling; see ``functional._lean``).  The options cross as one object, the
    gradient buffer is saved rather than returned, and lse is an output only when asked
    for: Function.apply's cost grows with every argument and output.  Same body and
    same backward as the operator, so the same values and gradients, bit for bit."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, target: Tensor, weight: Tensor | None,
                opts: CrossEntropyOptions, need: bool, want_lse: bool) -> Any:
        out, lse, grad = index_body(logits, target, weight, opts, need, want_lse)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(logits, target, weight, grad)
        ctx.opts = opts
        ctx.need = need
        return (out, lse) if want_lse else out

    @staticmethod
    def backward(ctx: Any, g_out: Tensor | None, g_lse: Tensor | None = None,
                 ) -> tuple[Tensor | None, ...]:
        return _index_grad(ctx, g_out, g_lse), None, None, None, None, None


def cross_entropy_index_lean(logits: Tensor, target: Tensor, weight: Tensor | None,
                             opts: CrossEntropyOptions, need: bool, want_lse: bool) -> Any:
    """``out`` or ``(out, lse)`` by :class:`_IndexLean` (plain CPU tensors, 2-D logits of
    float32/float64, int64 targets [N], weight None or (C,); eager mode, no transform)."""
    return _lean_apply(logits, target, weight, opts, need, want_lse)


# Function.apply without its Python prologue, which looks for torch.func transforms and
# unwraps dead functorch wrappers: the caller has checked that there are none (no
# transform active, no wrapped tensor), and _IndexLean has no setup_context to bind.
# The C entry point is Function's base class's apply (torch 2.x); else the public one.
_lean_apply: Any = getattr(super(torch.autograd.Function, _IndexLean), "apply",
                           _IndexLean.apply)


# --------------------------------------------------------------------------- linear op


def _empty_grads(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, need: tuple[bool, bool, bool]
) -> tuple[Tensor, Tensor, Tensor]:
    gh = hidden.new_empty(hidden.shape) if need[0] else hidden.new_empty(0)
    gw = weight.new_empty(weight.shape) if need[1] else weight.new_empty(0)
    gb = bias.new_empty(bias.shape) if (need[2] and bias is not None) else weight.new_empty(0)
    return gh, gw, gb


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the linear operator returns its loss and lse in: float32 for
    bfloat16/float16 hidden states (their accumulation dtype), else their own."""
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


def _plan(chunk_rows: int, vocab_chunk: int) -> ChunkPlan:
    return ChunkPlan(rows=chunk_rows, vocab=vocab_chunk or None)


@torch.library.custom_op("crossentropy::linear_cross_entropy", mutates_args=())
def linear_cross_entropy_op(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    reduction: str,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    scale: float,
    normalizer: float | None,
    empty_mean: float,
    prob_mean: str,
    chunk_rows: int,
    vocab_chunk: int,
    need_gh: bool,
    need_gw: bool,
    need_gb: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out, lse, grad_hidden, grad_weight, grad_bias) of the chunked linear cross-entropy.

    Gradients are computed here only for 'mean' and 'sum' (empty tensors otherwise);
    ``vocab_chunk`` 0 means whole logit rows.
    """
    opts = _options_of(locals())  # the parameters named as the option fields
    return linear_forward(hidden, weight, target, bias, class_weight, opts,
                          _plan(chunk_rows, vocab_chunk), (need_gh, need_gw, need_gb))


def linear_forward(
    hidden: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None,
    class_weight: Tensor | None, opts: CrossEntropyOptions, plan: ChunkPlan,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Body of the linear operator."""
    check_index_target(target, weight.shape[0], opts.ignore_index)
    cw = None if class_weight is None else class_weight.detach().to(torch.float64)
    omega = (_omega(target, cw, opts, weight.shape[0])
             if opts.reduction is Reduction.MEAN else None)
    pre = opts.reduction is not Reduction.NONE
    with torch.no_grad():
        loss, lse, gh, gw, gb = linear_chunks(
            hidden.detach(), weight.detach(), target,
            None if bias is None else bias.detach(), cw, opts, plan,
            grad_scale=_grad_scale(opts, omega), row_scale=None, g_lse=None,
            need=(pre and need[0], pre and need[1], pre and need[2]),
            rows_fn=rows_for(hidden.device),
        )
    # the loss and lse stay in the accumulation dtype (float32 for bfloat16/float16): the
    # caller rounds them to the dtype it returns (linear_cross_entropy's ``dtype=``)
    acc = _acc_dtype(hidden.dtype)
    out = reduce_rows(loss, omega, opts).to(acc)
    e_h, e_w, e_b = _empty_grads(hidden, weight, bias, (False, False, False))
    return (
        out,
        lse.to(acc),
        e_h if gh is None else gh.to(hidden.dtype),
        e_w if gw is None else gw.to(weight.dtype),
        e_b if gb is None or bias is None else gb.to(bias.dtype),
    )


#: The linear operators' parameters, in their schemas' order.
LINEAR_ARGS = _parameters(linear_cross_entropy_op)


def linear_call(hidden: Tensor, weight: Tensor, target: Tensor, bias: Tensor | None,
                class_weight: Tensor | None, opts: CrossEntropyOptions, plan: ChunkPlan,
                need: tuple[bool, bool, bool]) -> tuple[Tensor, ...]:
    """The linear operator, its inputs built by name (`plan` resolved)."""
    out: tuple[Tensor, ...] = torch.ops.crossentropy.linear_cross_entropy(*_by_name(
        LINEAR_ARGS, opts, hidden=hidden, weight=weight, target=target, bias=bias,
        class_weight=class_weight, chunk_rows=int(plan.rows or 1),
        vocab_chunk=int(plan.vocab or 0), need_gh=need[0], need_gw=need[1], need_gb=need[2]))
    return out


@linear_cross_entropy_op.register_fake
def _(*inputs: Any) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    args = _bound(LINEAR_ARGS, inputs)
    hidden, weight, bias, reduction = args["hidden"], args["weight"], args["bias"], \
        args["reduction"]
    need_gh, need_gw, need_gb = args["need_gh"], args["need_gw"], args["need_gb"]
    N = hidden.shape[0]
    acc = _acc_dtype(hidden.dtype)
    out = hidden.new_empty((N,) if reduction == "none" else (), dtype=acc)
    pre = reduction != "none"
    gh, gw, gb = _empty_grads(hidden, weight, bias, (pre and need_gh, pre and need_gw,
                                                      pre and need_gb))
    return out, hidden.new_empty(N, dtype=acc), gh, gw, gb


@torch.library.custom_op("crossentropy::linear_cross_entropy_backward", mutates_args=())
def linear_cross_entropy_backward_op(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    row_scale: Tensor,
    g_lse: Tensor | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int,
    vocab_chunk: int,
    need_gh: bool,
    need_gw: bool,
    need_gb: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Recompute the gradients chunk by chunk: row i of d/dz is ``row_scale[i] * d loss_i/dz``
    plus ``g_lse[i] * d lse_i / dz``."""
    opts = CrossEntropyOptions(reduction=Reduction.NONE, ignore_index=ignore_index,
                               label_smoothing=label_smoothing, z_loss=z_loss,
                               softcap=softcap)  # the fields this operator takes
    cw = None if class_weight is None else class_weight.detach().to(torch.float64)
    with torch.no_grad():
        _, _, gh, gw, gb = linear_chunks(
            hidden.detach(), weight.detach(), target,
            None if bias is None else bias.detach(), cw, opts,
            _plan(chunk_rows, vocab_chunk), grad_scale=1.0, row_scale=row_scale.detach(),
            g_lse=None if g_lse is None else g_lse.detach(),
            need=(need_gh, need_gw, need_gb), rows_fn=rows_for(hidden.device),
        )
    e_h, e_w, e_b = _empty_grads(hidden, weight, bias, (False, False, False))
    return (
        e_h if gh is None else gh.to(hidden.dtype),
        e_w if gw is None else gw.to(weight.dtype),
        e_b if gb is None or bias is None else gb.to(bias.dtype),
    )


#: The recomputing backward operator's parameters, in its schema's order.
LINEAR_BACKWARD_ARGS = _parameters(linear_cross_entropy_backward_op)


@linear_cross_entropy_backward_op.register_fake
def _(*inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
    args = _bound(LINEAR_BACKWARD_ARGS, inputs)
    return _empty_grads(args["hidden"], args["weight"], args["bias"],
                        (args["need_gh"], args["need_gw"], args["need_gb"]))


def _linear_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    args = _bound(LINEAR_ARGS, inputs)
    bias = args["bias"]
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(*output[2:])
    ctx.save_for_backward(args["hidden"], args["weight"], args["target"], bias,
                          args["class_weight"], *output[2:])
    ctx.opts = _options_of(args)
    ctx.chunks = (args["chunk_rows"], args["vocab_chunk"])
    ctx.need = (args["need_gh"], args["need_gw"], args["need_gb"] and bias is not None)


def _linear_backward(
    ctx: Any, g_out: Tensor | None, g_lse: Tensor | None, *unused: Tensor | None
) -> tuple[Tensor | None, ...]:
    hidden, weight, target, bias, cw, gh, gw, gb = ctx.saved_tensors
    opts: CrossEntropyOptions = ctx.opts
    need = ctx.need
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(
            "crossentropy.torch.linear_cross_entropy does not support second derivatives "
            "(backward with create_graph=True); use cross_entropy(hidden @ weight.T, ...) "
            "for those"
        )
    if g_out is None and g_lse is None:
        return _grads(LINEAR_ARGS)
    if opts.reduction is not Reduction.NONE and g_lse is None and g_out is not None:
        # gradients were computed in the forward pass: only scale them
        return _grads(LINEAR_ARGS,
                      hidden=_scale_rows(gh, g_out) if need[0] else None,
                      weight=_scale_rows(gw, g_out) if need[1] else None,
                      bias=_scale_rows(gb, g_out) if need[2] else None)
    # recompute chunk by chunk with a factor per row
    N = hidden.shape[0]
    if g_out is None:
        row = torch.zeros(N, dtype=torch.float64, device=hidden.device)
    elif opts.reduction is Reduction.NONE:
        row = g_out.to(torch.float64) * opts.scale
    else:
        omega = (_omega(target, None if cw is None else cw.to(torch.float64), opts,
                        weight.shape[0]) if opts.reduction is Reduction.MEAN else None)
        row = (g_out.to(torch.float64) * _grad_scale(opts, omega)).expand(N)
    rgh, rgw, rgb = linear_cross_entropy_backward_op(*_by_name(
        LINEAR_BACKWARD_ARGS, opts, hidden=hidden, weight=weight, target=target, bias=bias,
        class_weight=cw, row_scale=row.contiguous(), g_lse=g_lse, chunk_rows=ctx.chunks[0],
        vocab_chunk=ctx.chunks[1], need_gh=need[0], need_gw=need[1], need_gb=need[2]))
    return _grads(LINEAR_ARGS, hidden=rgh if need[0] else None,
                  weight=rgw if need[1] else None, bias=rgb if need[2] else None)


linear_cross_entropy_op.register_autograd(_linear_backward, setup_context=_linear_setup)
