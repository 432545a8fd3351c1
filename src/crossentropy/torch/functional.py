r"""Drop-in replacements for ``torch.nn.functional``'s cross-entropy losses.

Same signatures and semantics as torch 2.13, plus keyword-only options:

* ``base``: unit of the loss (None for nats, 2 for bits);
* ``z_loss``: coefficient :math:`\zeta` of :math:`\mathrm{lse}^2` added to each counted
  row's loss (PaLM's z-loss, which keeps the softmax normaliser near 1);
* ``softcap``: logits are replaced by :math:`c \tanh(x / c)` first (Gemma 2);
* ``return_lse``: also return the log-sum-exp of each row (of the soft-capped logits);
* ``impl``: ``"auto"`` (default), ``"triton"``, ``"torch"`` or ``"cpu"`` (see
  :func:`cross_entropy`);
* ``normalizer``: divide the summed loss by this count (a number or a 0-d tensor) instead
  of the mean's own divisor (gradient accumulation, data-parallel ranks);
* ``shift``: next-token prediction (position t predicts label t + n; ``True`` is n = 1);
* ``log_clamp`` (:func:`binary_cross_entropy`): torch's clamp of each log at -100 by
  default, ``None`` for the exact form.

Where torch's numbers are wrong we give the true value (see the README, section torch).
Bad input raises what torch raises (``crossentropy.torch._errors``: each class is torch's
exception class and a ValueError/TypeError naming the argument).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor

from crossentropy._options import BinaryOptions, CrossEntropyOptions, Reduction
from crossentropy.torch import _ops
from crossentropy.torch._chunks import ChunkPlan, resolve_plan
from crossentropy.torch._errors import TorchTypeError, TorchValueError
from crossentropy.torch._reduction import ReductionPlan
from crossentropy.torch._reference import (
    categorical_rows,
    clamped_binary_rows,
    entropy_rows,
    reduce_rows,
    row_weights,
    zero_class_rows,
)
from crossentropy.torch._validate import (
    check_dtype,
    check_impl,
    check_index_dtype,
    check_index_shape,
    check_index_target,
    check_linear,
    check_log_clamp,
    check_prob_dtype,
    check_sample_weight,
    check_shift,
    check_temperature,
    check_weight,
    real,
    transformed,
)
from crossentropy.triton._available import TritonUnavailable

__all__ = [
    "LinearCrossEntropyOutput",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
]

_LOW = (torch.bfloat16, torch.float16)
_warned: set[str] = set()


# --------------------------------------------------------------------------- checks


def _legacy_reduction(size_average: Any, reduce: Any, reduction: str) -> str:
    if size_average is not None or reduce is not None:
        return str(torch.nn._reduction.legacy_get_string(size_average, reduce))
    return reduction


def _create_options(reduction: Any, ignore_index: Any, label_smoothing: Any, z_loss: Any,
                    softcap: Any, base: Any, normalizer: Any) -> CrossEntropyOptions:
    try:
        return CrossEntropyOptions.create(
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
            z_loss=z_loss, softcap=softcap, base=base, normalizer=normalizer,
            semantics="torch",
        )
    except ValueError as exc:  # torch: RuntimeError for label_smoothing, ValueError for reduction
        raise TorchValueError(str(exc)) from None


#: Validated options by their arguments and the arguments' types (at most 512 entries).
_options_cache: dict[tuple[Any, ...], CrossEntropyOptions] = {}


def _ce_options(reduction: Any, ignore_index: Any, label_smoothing: Any, z_loss: Any,
                softcap: Any, base: Any, normalizer: Any) -> CrossEntropyOptions:
    """The validated options, cached on the arguments (validation is per-call overhead).

    The key holds the arguments and their types written out (1, 1.0 and True hash alike
    but validate differently); a dict lookup on it costs less than an lru_cache call with a
    tuple of types built per call, which mattered at 64 x 10.  An invalid argument raises
    and is not cached; an unhashable one is validated (and raises) without the cache.
    """
    if torch.compiler.is_compiling():  # traced once per graph: no cache needed
        return _create_options(reduction, ignore_index, label_smoothing, z_loss, softcap,
                               base, normalizer)
    key = (reduction, ignore_index, label_smoothing, z_loss, softcap, base, normalizer,
           type(reduction), type(ignore_index), type(label_smoothing), type(z_loss),
           type(softcap), type(base), type(normalizer))
    try:
        opts = _options_cache.get(key)
    except TypeError:
        return _create_options(reduction, ignore_index, label_smoothing, z_loss, softcap,
                               base, normalizer)
    if opts is None:
        opts = _create_options(reduction, ignore_index, label_smoothing, z_loss, softcap,
                               base, normalizer)
        if len(_options_cache) >= 512:
            _options_cache.clear()
        _options_cache[key] = opts
    return opts


def _split_normalizer(normalizer: Any, reduction: str) -> tuple[Any, Tensor | None]:
    """(number or None for the options, 0-d tensor or None)."""
    if isinstance(normalizer, Tensor):
        if normalizer.dim() != 0:
            raise ValueError(f"normalizer must be a number or a 0-d tensor, got shape "
                             f"{tuple(normalizer.shape)}")
        if Reduction.of(reduction) is Reduction.NONE:
            raise ValueError("normalizer divides a summed loss: it needs reduction='sum' or "
                             "'mean'")
        return None, normalizer.detach()
    return normalizer, None


def _triton() -> Any:
    """The torch side of the Triton kernels (its seams), imported on first use."""
    from crossentropy.torch import _triton as seam

    return seam


def _triton_reason(x: Tensor) -> str | None:
    """None when the Triton kernels can take tensors like `x`, else why not."""
    try:
        from crossentropy.triton import _available as tr
    except ImportError as exc:  # pragma: no cover - the package is part of the wheel
        return f"crossentropy.triton cannot be imported ({exc})"
    if not tr.is_available():
        return ("Triton is not installed, or there is no CUDA device and TRITON_INTERPRET=1 "
                "is not set")
    reason: str | None = tr.supports(x)
    return reason


def _resolve_impl(impl: str, x: Tensor, name: str, *others: Tensor | None) -> str:
    """'triton', 'torch' or 'cpu' for this call (impl checked by :func:`check_impl`)."""
    if impl == "auto":
        if transformed(x, *others):
            return "torch"  # torch.func: the custom ops decompose into the reference
        if x.device.type == "cuda":
            reason = _triton_reason(x)
            if reason is None:
                return "triton"
            if name not in _warned:
                _warned.add(name)
                warnings.warn(
                    f"crossentropy.torch.{name}: the Triton kernels cannot run ({reason}); "
                    "using the pure-torch path on the GPU instead",
                    RuntimeWarning, stacklevel=3,
                )
            return "torch"
        return "cpu" if x.device.type == "cpu" else "torch"
    if impl == "triton":
        reason = _triton_reason(x)
        if reason is not None:
            raise TritonUnavailable(
                f"crossentropy.torch.{name}(impl='triton'): {reason}")
        return "triton"
    if impl == "cpu":
        if x.device.type not in ("cpu", "meta"):
            raise ValueError(f"impl='cpu' needs CPU tensors; the input is on {x.device}")
        return "torch" if transformed(x, *others) else "cpu"
    return "torch"


def _no_autocast(x: Tensor) -> Any:
    """Autocast off for the loss (it runs in float32 or float64 itself); meta tensors have
    no autocast."""
    if x.device.type == "meta" or not torch.is_autocast_enabled(x.device.type):
        return contextlib.nullcontext()  # nothing to switch off (and no enter/exit cost)
    return torch.autocast(x.device.type, enabled=False)


def _out_dtype(x: Tensor) -> torch.dtype:
    """torch.autocast runs losses in float32: bf16/fp16 inputs give float32 results."""
    if x.dtype in _LOW and x.device.type != "meta" and torch.is_autocast_enabled(x.device.type):
        return torch.float32
    return x.dtype


def _ref_dtype(x: Tensor) -> torch.dtype:
    """Float64 on the CPU (the core's bounds: computed in float64, rounded once); else
    float32, or float64 for float64 inputs."""
    if x.device.type == "cpu" or x.dtype == torch.float64:
        return torch.float64
    return torch.float32


# --------------------------------------------------------------------------- cross_entropy


def _flatten(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...], bool]:
    """(M, C) rows of `input`, the matching targets, the batch shape, and whether the
    targets are probabilities (torch's rule: target.shape == input.shape)."""
    for t, name in ((input, "input"), (target, "target")):
        if not isinstance(t, Tensor):
            raise TorchTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if input.dim() == 0:
        raise TorchValueError(
            "input must have a class dimension: shape (C), (N, C) or (N, C, ...)")
    prob = target.shape == input.shape
    check_prob_dtype(target, prob)
    C = input.shape[0] if input.dim() == 1 else input.shape[1]
    batch: tuple[int, ...] = () if input.dim() == 1 else (input.shape[0], *input.shape[2:])
    if not prob:
        check_index_shape(target, tuple(input.shape), batch)
    x = input.reshape(1, C) if input.dim() == 1 else input
    t = target.reshape(1, C) if (prob and input.dim() == 1) else target
    if x.dim() > 2:  # (N, C, d1..dK) -> (N d1..dK, C)
        M = math.prod(batch)  # not -1: ambiguous for a tensor of 0 elements (C = 0)
        x = x.movedim(1, -1).reshape(M, C)
        t = t.movedim(1, -1).reshape(M, C) if prob else t
    if not prob:
        t = t.reshape(-1)
        if t.dtype != torch.int64:
            t = t.to(torch.int64)
    return x, t, batch, prob


def _shifted(input: Tensor, target: Tensor, ignore_index: int, n: int, shift: Any
             ) -> tuple[Tensor, Tensor]:
    """Rows of n-th next token prediction: (..., T, C) logits (class axis last) -> (M, C);
    labels [..., T] shifted left by n, the last n positions padded with ignore_index (the
    labels are copied, never the logits)."""
    if input.dim() < 2 or tuple(target.shape) != tuple(input.shape[:-1]):
        raise ValueError(
            f"shift={shift!r} takes logits (..., T, C) (class axis last) and labels (..., T); "
            f"got input {tuple(input.shape)} and target {tuple(target.shape)}"
        )
    check_index_dtype(target, tuple(input.shape))
    rows = input.reshape(math.prod(input.shape[:-1]), input.shape[-1])  # C = 0 too
    return rows, _shift_labels(target, n, ignore_index)


def _shift_labels(target: Tensor, n: int, ignore_index: int) -> Tensor:
    """[M] int64 labels: position t gets label t + n (transformers' ForCausalLMLoss for
    n = 1, Cut Cross-Entropy's ``shift``), the last n positions of each sequence (all of
    them when n >= T) ignore_index."""
    T = target.shape[-1]
    t = torch.nn.functional.pad(target[..., n:], (0, min(n, T)), value=ignore_index)
    return t.reshape(-1).to(torch.int64)


def _rows_2d(
    x: Tensor, t: Tensor, weight: Tensor | None, opts: CrossEntropyOptions, impl: str,
    norm_t: Tensor | None, prob: bool, inplace_grad: bool = False,
) -> tuple[Tensor, Tensor]:
    """(out, lse) of 2-D rows on the chosen implementation."""
    red = ReductionPlan(opts, normalizer=norm_t)  # a tensor normalizer divides outside
    if impl == "triton":
        # the float32 accumulation unrounded (the caller rounds once, to its dtype)
        vdt = torch.promote_types(x.dtype, torch.float32)
        out, lse = _triton().cross_entropy_2d(x, t, weight, red.inner(), value_dtype=vdt,
                                              inplace_grad=inplace_grad)
        return red.outer(out), lse
    if impl == "cpu" and not prob:
        xk = x if x.dtype in (torch.float32, torch.float64) else x.float()
        need = xk.requires_grad and torch.is_grad_enabled()
        out, lse, _ = _ops.cross_entropy_index_call(xk, t, weight, red.inner(), need)
        return red.outer(out), lse
    cdt = _ref_dtype(x)
    tt = t.to(cdt) if prob else t
    w = None if weight is None else weight.to(cdt)
    # TwoSum only where nothing was widened (float32 in float64 needs no correction)
    loss, lse = categorical_rows(x.to(cdt), tt, w, opts, compensate=x.dtype == cdt)
    omega = row_weights(tt, w, opts, x.shape[1], cdt) if opts.reduction is Reduction.MEAN \
        else None
    return reduce_rows(loss, omega, opts, norm_t), lse


_KERNEL_DTYPES = (torch.float32, torch.float64)
_I64, _STRIDED = torch.int64, torch.strided
_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
_transforms_active = torch._C._are_functorch_transforms_active
_autocast = torch.is_autocast_enabled
_grad_on = torch.is_grad_enabled


def _lean(input: Tensor, target: Tensor, weight: Tensor | None, reduction: Any,
          ignore_index: Any, label_smoothing: Any, base: Any, z_loss: Any, softcap: Any,
          return_lse: Any) -> Any:
    """The common call of :func:`cross_entropy` with its per-call overhead cut, or None
    when the call is not that one (then the general path runs, and raises what it raises).

    That call: plain CPU tensors (no subclass, no fake or meta tensor, no torch.func
    wrapper, no transform active, not compiling, no CPU autocast), logits (N, C) float32 or
    float64 in the strided layout, int64 targets (N,), weight None or (C,) on the CPU, no
    normalizer, no shift, impl 'auto' or 'cpu'.  It runs the operator's body
    (:func:`._ops.index_body`, which checks the targets) in :class:`._ops._IndexLean`:
    the same numbers as the general path, bit for bit.  Options are validated once per
    distinct argument tuple (``_ce_options``' cache, shared with the general path)."""
    xs, ts = input.shape, target.shape
    if (len(xs) != 2 or len(ts) != 1 or ts[0] != xs[0] or not xs[1] or not input.is_cpu
            or not target.is_cpu or input.dtype not in _KERNEL_DTYPES or target.dtype != _I64
            or input.layout != _STRIDED or target.layout != _STRIDED
            or torch.compiler.is_compiling() or _transforms_active()
            or _autocast("cpu") or _wrapped(input) or _wrapped(target)):
        return None
    if weight is not None and (weight.shape != xs[1:] or not weight.is_cpu
                               or weight.layout != _STRIDED or _wrapped(weight)):
        return None
    opts = _ce_options(reduction, ignore_index, label_smoothing, z_loss, softcap, base, None)
    need = input.requires_grad and _grad_on()
    return _ops.cross_entropy_index_lean(input, target, weight, opts, need, bool(return_lse))


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    base: float | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    normalizer: float | Tensor | None = None,
    shift: bool | int = False,
    impl: str = "auto",
    dtype: torch.dtype | None = None,
    inplace_grad: bool = False,
    sample_weight: Tensor | None = None,
) -> Any:
    r"""Cross-entropy between logits and class indices or class probabilities (as torch's).

    .. math::

        z = c\tanh(x/c)\ (\text{softcap } c), \quad
        \ell_i = -\sum_c w_c t'_{ic} \log\operatorname{softmax}(z_i)_c + \zeta\,\mathrm{lse}_i^2,
        \quad t' = (1-\varepsilon) t + \varepsilon / C

    'mean' divides by :math:`\sum_i w_{y_i}` over the counted rows for index targets and by
    the number of rows for probability targets (torch's rule); a batch with every target
    ignored gives NaN, as in torch.  The result is divided by :math:`\ln(\text{base})`.
    Zero classes (C = 0) give torch's values: each row 0 (NaN for index targets with
    label smoothing), 'sum' 0, 'mean' NaN; lse is -inf (docs/torch.md).

    Parameters are those of :func:`torch.nn.functional.cross_entropy`, plus:

    * ``base``, ``z_loss``, ``softcap``; ``return_lse`` (then ``(loss, lse)`` is returned,
      lse with the batch shape);
    * ``normalizer``: 'sum' or 'mean' divide the summed loss by it (a number, or a 0-d
      tensor: no host synchronisation, no recompilation per value);
    * ``sample_weight``: per-sample weights (the shape of the per-sample loss, floating,
      finite, >= 0) multiplying each sample's loss; 'mean' divides by
      :math:`\sum_i s_i \omega_i` (:math:`\omega_i = w_{y_i}` on counted samples, 0 on
      ignored ones; 1 per probability row) unless ``normalizer`` is given;
    * ``shift=n`` (an integer >= 0, ``True`` = 1, ``False`` = 0): n-th next token
      prediction on ``(..., T, C)`` logits (class axis *last*) and labels ``(..., T)``:
      position t is scored against label t + n, the last n positions of each sequence
      count for nothing (the labels are shifted, the logits never copied); the same as
      ``cross_entropy(z[..., :-n, :], y[..., n:])`` with the class axis moved to 1;
    * ``impl``: ``"auto"`` (the Triton kernels for CUDA tensors when they can run, with a
      one-time warning when they cannot; the CPU path otherwise), ``"triton"`` (the kernels,
      or an error saying why not; CPU tensors run in the Triton interpreter when
      ``TRITON_INTERPRET=1``), ``"torch"`` (the pure-torch reference, float64 on the CPU)
      or ``"cpu"`` (the fused numba kernel for index targets, which computes the gradient
      in the forward pass).  Under ``torch.func`` transforms every implementation but
      ``"triton"`` runs the reference;
    * ``dtype``: the floating dtype of the returned loss (and lse).  None (the default) is
      torch's rule: the logits' dtype, float32 under autocast.  The computation does not
      change (bfloat16/float16 logits are accumulated in float32 or wider), only the final
      rounding: ``dtype=torch.float32`` for bfloat16 logits returns the float32 value
      unrounded, as transformers' loss does (it upcasts the logits), on every path
      (Triton's included);
    * ``inplace_grad``: on the Triton kernels, write the gradient into the memory of 2-D
      logits with contiguous rows during backward (saves one [N, C] buffer; the logits are
      destroyed, autograd refuses to reuse them elsewhere; ignored for a leaf tensor and
      by the other implementations).

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> x = torch.tensor([[9.8, 3.7, 0.2]], dtype=torch.float64)
    >>> float(cet.cross_entropy(x, torch.tensor([0]), base=2))  # the article's cat, in bits
    0.00332964080008
    >>> loss, lse = cet.cross_entropy(x, torch.tensor([0]), return_lse=True)
    >>> round(float(lse[0]), 6)
    9.802309
    >>> logits = torch.zeros(1, 3, 4, dtype=torch.float64)  # (B, T, C)
    >>> float(cet.cross_entropy(logits, torch.tensor([[5, 1, 2]]), shift=True))  # log 4
    1.3862943611198906
    >>> float(cet.cross_entropy(logits, torch.tensor([[5, 1, 2]]), shift=2))  # 0 -> 2
    1.3862943611198906
    >>> z = torch.tensor([[2.0, 0.5, -1.0]], dtype=torch.bfloat16)
    >>> cet.cross_entropy(z, torch.tensor([1]), dtype=torch.float32).dtype  # not rounded
    torch.float32
    """
    if sample_weight is not None:
        return _sample_weighted(
            "cross_entropy", input, target, sample_weight,
            dict(weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing,
                 z_loss=z_loss, softcap=softcap, return_lse=return_lse, shift=shift,
                 impl=impl, dtype=dtype),
            _legacy_reduction(size_average, reduce, reduction), normalizer, base)
    if (size_average is None and reduce is None and normalizer is None and shift is False
            and dtype is None
            and type(input) is Tensor and type(target) is Tensor
            and (weight is None or type(weight) is Tensor)
            and type(impl) is str and (impl == "auto" or impl == "cpu")):
        lean = _lean(input, target, weight, reduction, ignore_index, label_smoothing, base,
                     z_loss, softcap, return_lse)
        if lean is not None:
            return lean
    reduction = _legacy_reduction(size_average, reduce, reduction)
    norm_n, norm_t = _split_normalizer(normalizer, reduction)
    opts = _ce_options(reduction, ignore_index, label_smoothing, z_loss, softcap, base, norm_n)
    impl = check_impl(impl)
    n = check_shift(shift)
    if n:
        x, t = _shifted(input, target, ignore_index, n, shift)
        batch, prob = tuple(target.shape), False
    else:
        x, t, batch, prob = _flatten(input, target)
    if prob and ignore_index != -100:  # torch: RuntimeError
        raise TorchValueError(
            "ignore_index is not supported for probability targets (as in torch)")
    C = x.shape[1]
    check_weight(weight, C)
    out_dtype = _out_dtype(input) if dtype is None else check_dtype(dtype)
    which = _resolve_impl(impl, x, "cross_entropy", t, weight)
    # the CPU operator checks 2-D targets itself (same positions): no second pass
    own_check = which == "cpu" and input.dim() == 2 and not n and C > 0
    if not prob and not own_check and real(x, target):
        # with shift=n the first n labels of each sequence are never targets
        used = target[..., n:] if n else target
        check_index_target(used, C, ignore_index, last_offset=n)
    with _no_autocast(input):
        if C == 0:  # no classes: torch's values on every implementation
            out, lse = zero_class_rows(x, t, prob, opts, norm_t)
        else:
            out, lse = _rows_2d(x, t, weight, opts, which, norm_t, prob, bool(inplace_grad))
    if out.dtype != out_dtype:
        out = out.to(out_dtype)
    if opts.reduction is Reduction.NONE:
        out = out.reshape(batch)
    if return_lse:
        return out, lse.to(out_dtype).reshape(batch)
    return out


# --------------------------------------------------------------------------- binary


@functools.lru_cache(maxsize=64)
def _binary_options(reduction: str, base: Any, kinds: tuple[type, type]) -> BinaryOptions:
    return BinaryOptions.create(reduction=reduction, base=base, semantics="torch")


def _binary_prep(
    input: Tensor, target: Tensor, reduction: str, base: Any, impl: str, name: str
) -> tuple[Tensor, Tensor, BinaryOptions, torch.dtype]:
    try:
        if torch.compiler.is_compiling():
            raise TypeError  # traced once per graph: no cache
        opts = _binary_options(reduction, base, (type(reduction), type(base)))
    except TypeError:
        opts = BinaryOptions.create(reduction=reduction, base=base, semantics="torch")
    impl = check_impl(impl)
    if impl == "triton":
        raise TritonUnavailable(
            f"crossentropy.torch.{name}(impl='triton'): there is no Triton kernel for the "
            "binary losses (elementwise: the torch path is already one fused pass); use "
            "impl='auto' or 'torch'")
    if impl == "cpu" and input.device.type not in ("cpu", "meta"):
        raise ValueError(f"impl='cpu' needs CPU tensors; the input is on {input.device}")
    if target.shape != input.shape:
        raise ValueError(
            f"target must have the shape of input {tuple(input.shape)}, got "
            f"{tuple(target.shape)}"
        )
    out_dtype = _out_dtype(input)
    cdt = torch.float64 if (input.dtype == torch.float64 or input.device.type == "cpu") \
        else torch.float32
    return input.to(cdt), target.to(cdt), opts, out_dtype


def _binary_finish(
    loss: Tensor, weight: Tensor | None, opts: BinaryOptions, dtype: torch.dtype
) -> Tensor:
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    if opts.reduction is Reduction.SUM:
        loss = loss.sum()
    elif opts.reduction is Reduction.MEAN:
        loss = loss.mean()  # NaN for no elements, as torch
    if opts.scale != 1.0:
        loss = loss * opts.scale
    return loss.to(dtype)


def _term(coef: Tensor, value: Tensor) -> Tensor:
    """coef * value, exactly 0 where coef is 0 (a label with no mass adds nothing)."""
    safe = torch.where(coef == 0, torch.zeros_like(value), value)  # no 0 * inf in grad
    return coef * safe


def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
    *,
    base: float | None = None,
    impl: str = "auto",
) -> Tensor:
    r"""Binary cross-entropy from logits (as torch's), with no underflow to 0.

    .. math:: \ell = p\,y \operatorname{softplus}(-x) + (1-y)\operatorname{softplus}(x),
              \qquad \operatorname{softplus}(x) = -\log\sigma(-x)

    (p the pos_weight).  Two non-negative terms: no cancellation, so ``x = -40, y = 0``
    gives 4.25e-18 where torch gives 0.  ``impl`` is accepted for symmetry: every choice
    but ``"triton"`` (which raises: there is no kernel) runs the same torch operations.

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> x, y = torch.tensor([-40.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    >>> float(cet.binary_cross_entropy_with_logits(x, y))
    4.248354255291589e-18
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    x, y, opts, dtype = _binary_prep(input, target, reduction, base, impl,
                                     "binary_cross_entropy_with_logits")
    with _no_autocast(input):
        py = y if pos_weight is None else pos_weight.to(x.dtype) * y
        logsig = torch.nn.functional.logsigmoid
        # softplus(-x) = -log sigmoid(x),  softplus(x) = -log sigmoid(-x)
        loss = _term(py, -logsig(x)) + _term(1.0 - y, -logsig(-x))
        return _binary_finish(loss, weight, opts, dtype)


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    base: float | None = None,
    log_clamp: float | None = -100.0,
    impl: str = "auto",
) -> Tensor:
    r"""Binary cross-entropy from probabilities, as torch's: each log clamped at -100.

    .. math:: \ell = -\big(y \max(\log q, c) + (1-y)\max(\operatorname{log1p}(-q), c)\big),
              \qquad \frac{\partial\ell}{\partial q} = \frac{q - y}{\max(q(1-q), \delta)}

    with ``c = log_clamp`` (-100, torch's BCELoss) and the gradient torch computes
    (``delta`` = float32 1e-12; ``d loss / d y = log1p(-q) - log q``, unclamped): ``q = 0``
    or ``1`` give a finite loss (100 for a wrong certain answer) and finite gradients, the
    same values as torch.  ``log_clamp=None`` is the exact form of the NumPy API:

    .. math:: \ell = -\big(y \log q + (1-y)\operatorname{log1p}(-q)\big), \qquad
              \frac{\partial\ell}{\partial q} = \frac{1-y}{1-q} - \frac{y}{q}

    where a term whose coefficient is 0 adds exactly 0 (q = 0, y = 0 gives 0 and gradient
    1), ``q = 1e-300, y = 1`` gives 690.78 and ``q = 0, y = 1`` gives inf.  ``impl`` as for
    :func:`binary_cross_entropy_with_logits`.

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> q, y = torch.tensor([1e-300], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    >>> float(cet.binary_cross_entropy(q, y))  # torch's clamp: -max(log q, -100)
    100.0
    >>> float(cet.binary_cross_entropy(q, y, log_clamp=None))  # exact: -log(1e-300)
    690.7755278982137
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    clamp = check_log_clamp(log_clamp)
    q, y, opts, dtype = _binary_prep(input, target, reduction, base, impl,
                                     "binary_cross_entropy")
    if real(input):
        bad = (q < 0) | (q > 1)
        if bool(bad.any()):
            flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
            raise TorchValueError(  # torch: RuntimeError
                f"input must hold probabilities in [0, 1]; element {flat} (flat index) is "
                f"{float(q.reshape(-1)[flat])!r}"
            )
    with _no_autocast(input):
        if clamp is not None:
            return _binary_finish(clamped_binary_rows(q, y, clamp), weight, opts, dtype)
        ny = 1.0 - y
        one = torch.ones_like(q)
        # the log's argument is replaced by 1 where its coefficient is 0, so that neither
        # the value nor the gradient sees log(0) * 0
        lq = torch.log(torch.where(y == 0, one, q))
        l1q = torch.log1p(-torch.where(ny == 0, torch.zeros_like(q), q))
        loss = -(_term(y, lq) + _term(ny, l1q))
        return _binary_finish(loss, weight, opts, dtype)


# --------------------------------------------------------------------------- sample weights


def _sample_weighted(name: str, input: Tensor, target: Tensor, sample_weight: Any,
                     kw: dict[str, Any], reduction: str, normalizer: Any, base: Any) -> Any:
    r"""``name`` with per-sample weights: its per-sample losses (``reduction='none'``, in
    nats, any path) times ``s``, reduced by the one reduction (:class:`ReductionPlan`) with
    the mean's row weights ``s_i omega_i``:

    .. math:: \text{mean} = \frac{\sum_i s_i \ell_i}{\sum_i s_i \omega_i}

    (the normalizer, when given, divides instead); gradients through autograd of the
    weighted sum of the differentiable per-sample losses."""
    fn = cross_entropy if name == "cross_entropy" else linear_cross_entropy
    norm_n, norm_t = _split_normalizer(normalizer, reduction)
    ii = kw["ignore_index"]
    ii = -100 if ii is None else ii
    opts = _ce_options(reduction, ii, kw["label_smoothing"], kw["z_loss"], kw["softcap"],
                       base, norm_n)
    # the per-sample losses unrounded (float32 for bf16/fp16), the result as the call's
    final = kw["dtype"] if kw["dtype"] is not None else _out_dtype(input)
    inner = dict(kw, dtype=kw["dtype"] if kw["dtype"] is not None or input.dtype not in _LOW
                 else torch.float32)
    W = inner.pop("linear_weight", None)
    if name == "cross_entropy":
        res = fn(input, target, reduction="none", **inner)
    else:
        res = fn(input, W, target, reduction="none", **inner)
    rows = res[0] if isinstance(res, tuple) else res
    s = check_sample_weight(sample_weight, tuple(rows.shape))
    # the targets of each row, in the rows' order (torch's layout rules, as the call did)
    n = check_shift(kw.get("shift", False))
    if name == "cross_entropy":
        C = input.shape[-1] if n else (input.shape[0] if input.dim() == 1 else input.shape[1])
        prob = not n and target.shape == input.shape
    else:
        C = W.shape[0]
        prob = tuple(target.shape) == (*input.shape[:-1], C, *W.shape[1:-1])
        if prob:
            raise ValueError("sample_weight takes index targets in linear_cross_entropy")
    if prob:
        t = target.reshape(1, C) if input.dim() == 1 else target.movedim(1, -1).reshape(-1, C)
    elif n:
        t = _shift_labels(target, n, ii)
    else:
        t = target.reshape(-1).to(torch.int64)
    w = kw.get("weight")
    rdt = torch.promote_types(rows.dtype, torch.float32)
    omega = row_weights(t, w, opts, C, rdt) if opts.reduction is Reduction.MEAN else None
    sw = s.to(rdt)
    plan = ReductionPlan(opts, None if omega is None else omega * sw, norm_t)
    value = plan.value(rows.reshape(-1).to(rdt) * sw)
    if opts.reduction is Reduction.NONE:
        value = value.reshape(rows.shape)
    value = value.to(final)
    if isinstance(res, tuple):
        return type(res)(value, *res[1:]) if hasattr(res, "_fields") else (value, *res[1:])
    return value


# --------------------------------------------------------------------------- linear


class LinearCrossEntropyOutput(NamedTuple):
    """What :func:`linear_cross_entropy` returns when per-token outputs are asked for.

    ``loss`` (reduced as asked), ``lse`` (per token), ``logprobs`` (per token
    ``log softmax(z / temperature)_y``, 0 at ignored positions) and ``entropy`` (per token
    entropy of ``softmax(z / temperature)``); a field not asked for is None.  All in the
    loss's unit (``base``) and differentiable.
    """

    loss: Tensor
    lse: Tensor | None
    logprobs: Tensor | None
    entropy: Tensor | None


def _linear_materialised(input: Tensor, linear_weight: Tensor, target: Tensor,
                         linear_bias: Tensor | None, prob: bool,
                         out_features: tuple[int, ...], weight: Tensor | None, **kw: Any
                         ) -> Any:
    """:func:`cross_entropy` of the logits themselves (probability targets, K-dimensional
    weights).  Hidden states (..., T, D) with two or more leading axes give logits
    (..., T, C) whose class axis is the last, not cross_entropy's axis 1: those are
    flattened to (M, C) rows and the per-token outputs take the leading shape back."""
    D, C = input.shape[-1], linear_weight.shape[0]
    b2 = None if linear_bias is None else linear_bias.reshape(-1)
    W2 = linear_weight.reshape(math.prod(linear_weight.shape[:-1]), D)
    z = torch.nn.functional.linear(input, W2, b2)
    lead = tuple(input.shape[:-1])
    if out_features or len(lead) <= 1:
        return cross_entropy(z.reshape(*lead, C, *out_features), target, weight, **kw)
    M = math.prod(lead)
    res = cross_entropy(z.reshape(M, C), target.reshape(M, C), weight, **kw)
    outs = res if isinstance(res, tuple) else (res,)
    back = tuple(o.reshape(lead) if o.dim() == 1 else o for o in outs)
    return back if isinstance(res, tuple) else back[0]


def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    options: Any = None,
    base: float | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    normalizer: float | Tensor | None = None,
    shift: bool | int = False,
    chunks: ChunkPlan | None = None,
    temperature: float = 1.0,
    return_logprobs: bool = False,
    return_entropy: bool = False,
    impl: str = "auto",
    dtype: torch.dtype | None = None,
    sample_weight: Tensor | None = None,
) -> Any:
    r"""``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` without the logits.

    .. math:: z = h W^\top + b, \qquad \ell_i = \text{cross\_entropy}(z_i, y_i)

    Same signature and semantics as torch 2.13's ``F.linear_cross_entropy``
    (``ignore_index=None`` means -100 for index targets), with ``input`` of any shape
    ``(..., in_features)`` and ``target`` ``(...)``.  The (N, V) logits are never
    materialised: tokens are processed in chunks (``options.batch_chunk_size`` or
    ``chunks.rows`` when given, else about 32 MiB of logits per chunk), and the vocabulary is
    cut into slices when ``chunks.vocab`` is set or 16 rows do not fit the budget
    (:class:`~crossentropy.torch.ChunkPlan`).  Each chunk's gradient is computed by the
    fused kernel and multiplied straight into grad_input and grad_weight (float32
    accumulation for bf16).  ``reduction='none'`` recomputes the chunks in backward.
    Probability targets and K-dimensional ``linear_weight`` (shape (C, d1, ..., in_features))
    compute the logits and call :func:`cross_entropy`.

    Extra keywords: ``base``, ``z_loss``, ``softcap``, ``return_lse``, ``normalizer``,
    ``sample_weight``, ``shift``, ``impl`` and ``dtype`` as in :func:`cross_entropy`
    (``dtype=torch.float32`` with bfloat16/float16 hidden states returns the float32
    accumulation of the loss unrounded; the gradients keep the inputs' dtypes; ``shift=n``
    takes hidden states ``(..., T, in_features)`` and labels ``(..., T)``: position t
    predicts label t + n).
    ``linear_weight`` with zero rows (C = 0) gives torch's values, as :func:`cross_entropy`
    of (..., 0) logits.  For reinforcement learning:
    ``temperature`` (every output is that of ``softmax(softcap(z) / temperature)``),
    ``return_logprobs`` and ``return_entropy``: then a :class:`LinearCrossEntropyOutput`
    ``(loss, lse, logprobs, entropy)`` is returned, per-token fields with the target's shape,
    each differentiable (computed block by block by the engine of
    :func:`linear_token_stats`, which has more outputs: the logits of one block exist at a
    time, in forward and backward).

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> W = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    >>> loss = cet.linear_cross_entropy(h, W, torch.tensor([0, 2]), reduction="none")
    >>> [round(v, 6) for v in loss.tolist()]  # log(e^2 + 2) - 2 and log(e^2 + 2) - 0
    [0.239545, 2.239545]
    >>> out = cet.linear_cross_entropy(h, W, torch.tensor([0, 2]), return_entropy=True,
    ...                                return_logprobs=True)
    >>> [round(v, 6) for v in out.logprobs.tolist()]
    [-0.239545, -2.239545]
    """
    if sample_weight is not None:
        return _sample_weighted(
            "linear_cross_entropy", input, target, sample_weight,
            dict(linear_weight=linear_weight, linear_bias=linear_bias, weight=weight,
                 ignore_index=ignore_index, label_smoothing=label_smoothing, options=options,
                 z_loss=z_loss, softcap=softcap, return_lse=return_lse, shift=shift,
                 chunks=chunks, temperature=temperature, return_logprobs=return_logprobs,
                 return_entropy=return_entropy, impl=impl, dtype=dtype),
            reduction, normalizer, base)
    norm_n, norm_t = _split_normalizer(normalizer, reduction)
    ii = -100 if ignore_index is None else ignore_index
    impl = check_impl(impl)
    tau = check_temperature(temperature)
    rl = return_logprobs or return_entropy or tau != 1.0
    D, C, out_features = check_linear(input, linear_weight, linear_bias)
    n = check_shift(shift)
    if n and out_features:
        raise ValueError("shift takes a 2-D linear_weight (C, in_features), not a "
                         "K-dimensional one")
    logits_shape = (*input.shape[:-1], C, *out_features)
    # torch's rule: the target holds probabilities when it has the logits' shape
    prob = not n and tuple(target.shape) == logits_shape
    check_prob_dtype(target, prob)
    if prob and ignore_index is not None:  # torch: RuntimeError
        raise TorchValueError("ignore_index cannot be given when target holds probabilities")
    if (prob or out_features) and not rl:
        # materialise the logits (documented): the chunked path takes index targets
        return _linear_materialised(
            input, linear_weight, target, linear_bias, prob, out_features, weight,
            ignore_index=ii, reduction=reduction, label_smoothing=label_smoothing, base=base,
            z_loss=z_loss, softcap=softcap, return_lse=return_lse, normalizer=normalizer,
            impl=impl, dtype=dtype)
    if prob or out_features:
        raise ValueError("temperature, return_logprobs and return_entropy take index targets "
                         "and a 2-D linear_weight")
    opts = _ce_options(reduction, ii, label_smoothing, z_loss, softcap, base, norm_n)
    check_weight(weight, C)
    batch = tuple(input.shape[:-1])
    if n:
        check_index_dtype(target, logits_shape)
        if input.dim() < 2 or tuple(target.shape) != batch:
            raise ValueError(
                f"shift={shift!r} takes hidden states (..., T, in_features) and labels "
                f"(..., T); got input {tuple(input.shape)} and target {tuple(target.shape)}")
        t = _shift_labels(target, n, ii)  # label t + n at position t
    else:
        check_index_shape(target, logits_shape, batch)
        t = target.reshape(-1)
        if t.dtype != torch.int64:
            t = t.to(torch.int64)
    out_dtype = _out_dtype(input)
    h, Wm, b = input.reshape(math.prod(batch), D), linear_weight, linear_bias
    if input.device.type != "meta" and torch.is_autocast_enabled(input.device.type):
        adt = torch.get_autocast_dtype(input.device.type)
        h, Wm = h.to(adt), Wm.to(adt)
        b = None if b is None else b.to(adt)
        out_dtype = torch.float32 if adt in _LOW else out_dtype
    if dtype is not None:
        out_dtype = check_dtype(dtype)
    if real(h, target):
        used = target[..., n:] if n else target
        check_index_target(used, C, ii, last_offset=n)
    which = _resolve_impl(impl, h, "linear_cross_entropy", Wm, t, b, weight)
    cdt = torch.float32 if h.dtype in _LOW else h.dtype
    rows = getattr(options, "batch_chunk_size", None)
    asked = chunks
    if rows is not None and (chunks is None or chunks.rows is None):
        asked = ChunkPlan(int(rows), None if chunks is None else chunks.vocab,
                          ChunkPlan().budget_bytes if chunks is None else chunks.budget_bytes)
    plan = resolve_plan(asked if asked is not None else ChunkPlan(), h.shape[0], C, cdt)
    extras: tuple[Tensor | None, ...] = ()
    with _no_autocast(input):
        if C == 0:  # no classes: torch's values (the (M, 0) logits cost nothing)
            z = torch.nn.functional.linear(h, Wm, b)
            out, lse = zero_class_rows(z, t, False, opts, norm_t)
            # log p_y at (necessarily ignored) positions and the entropy of no class: 0
            extras = (z.sum(dim=1) if return_logprobs else None,
                      z.sum(dim=1) if return_entropy else None)
        elif rl and not transformed(h, Wm, b):
            # the token-statistics engine: blocks of logits, exact backward by formula
            out, lse, lp, ent = _linear_stats(h, Wm, b, t, weight, opts, asked, tau, norm_t,
                                              return_logprobs, return_entropy, impl)
            extras = (lp, ent)
        elif rl:  # under torch.func: the reference, whose graph the transform owns
            out, lse, lp, ent = _linear_rl(h, Wm, b, t, weight, opts, plan, tau, norm_t,
                                           return_logprobs, return_entropy)
            extras = (lp, ent)
        elif which == "triton":
            red = ReductionPlan(opts, normalizer=norm_t)  # a tensor normalizer divides outside
            # the float32 accumulation unrounded (rounded once below, to out_dtype)
            out, lse = _triton().linear_cross_entropy_2d(
                h, Wm, b, t, weight, red.inner(),
                value_dtype=torch.promote_types(h.dtype, torch.float32))
            out = red.outer(out)
        elif which == "torch":
            out, lse = _linear_reference(h, Wm, b, t, weight, opts, plan, norm_t)
        else:
            out, lse = _linear_op(h, Wm, b, t, weight, opts, plan, norm_t)
    out = out.to(out_dtype)
    if opts.reduction is Reduction.NONE:
        out = out.reshape(batch)
    lse_out = lse.to(out_dtype).reshape(batch)
    if rl:
        lp, ent = (None if e is None else e.to(out_dtype).reshape(batch) for e in extras)
        return LinearCrossEntropyOutput(out, lse_out if return_lse else None, lp, ent)
    if return_lse:
        return out, lse_out
    return out


def _linear_op(h: Tensor, Wm: Tensor, b: Tensor | None, t: Tensor, weight: Tensor | None,
               opts: CrossEntropyOptions, plan: ChunkPlan, norm_t: Tensor | None,
               ) -> tuple[Tensor, Tensor]:
    """The chunked custom operator (CPU kernel on the CPU, torch row functions elsewhere)."""
    grad_on = torch.is_grad_enabled()
    red = ReductionPlan(opts, normalizer=norm_t)  # a tensor normalizer divides outside
    out, lse, *_ = _ops.linear_call(
        h, Wm, t, b, weight, red.inner(), plan,
        (h.requires_grad and grad_on, Wm.requires_grad and grad_on,
         b is not None and b.requires_grad and grad_on))
    return red.outer(out), lse


def _chunk_logits(hc: Tensor, Wm: Tensor, b: Tensor | None) -> Tensor:
    """One chunk's logits in the matmul dtype, then float64 on the CPU for the row math."""
    mdt = torch.float32 if hc.dtype in _LOW else hc.dtype
    z = torch.nn.functional.linear(hc.to(mdt), Wm.to(mdt), None if b is None else b.to(mdt))
    return z.to(_ref_dtype(z))


def _linear_reference(h: Tensor, Wm: Tensor, b: Tensor | None, t: Tensor,
                      weight: Tensor | None, opts: CrossEntropyOptions, plan: ChunkPlan,
                      norm_t: Tensor | None) -> tuple[Tensor, Tensor]:
    """impl='torch': the reference, chunk by chunk (checkpointed when grad is on)."""
    out, lse, _, _ = _linear_rl(h, Wm, b, t, weight, opts, plan, 1.0, norm_t, False, False)
    return out, lse


def _linear_stats(
    h: Tensor, Wm: Tensor, b: Tensor | None, t: Tensor, weight: Tensor | None,
    opts: CrossEntropyOptions, chunks: ChunkPlan | None, tau: float, norm_t: Tensor | None,
    want_lp: bool, want_ent: bool, impl: str,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """:func:`_linear_rl`'s outputs from the token-statistics engine
    (:mod:`crossentropy.torch._tokenstats`): no autograd graph of the logits, the backward
    by formula, one block of logits at a time (`chunks` as the caller gave it: the engine
    sizes its blocks by its own temporaries)."""
    from crossentropy.torch import _tokenstats, _triton_stats

    cw = None if weight is None else weight.detach().to(torch.float64)
    want = _tokenstats.Want(want_lp, want_ent)
    cdt = torch.float32 if h.dtype in _LOW else h.dtype
    plan = _tokenstats.plan(chunks, h.shape[0], Wm.shape[0], cdt, want, opts, tau, h.device)
    setup = _tokenstats.Setup(opts, tau, plan, want, cw)
    rows = _triton_stats.run_rows("linear", h, Wm, b, t, setup, impl, "linear_cross_entropy")
    omega = row_weights(t, cw, opts, Wm.shape[0], torch.float64) \
        if opts.reduction is Reduction.MEAN else None
    out = reduce_rows(rows.loss, omega, opts, norm_t)
    lp = None if rows.logprobs is None else rows.logprobs * opts.scale
    ent = None if rows.entropy is None else rows.entropy * opts.scale
    return out, rows.lse, lp, ent


def _linear_rl(
    h: Tensor, Wm: Tensor, b: Tensor | None, t: Tensor, weight: Tensor | None,
    opts: CrossEntropyOptions, plan: ChunkPlan, tau: float, norm_t: Tensor | None,
    want_lp: bool, want_ent: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """Loss, lse, target log-probabilities and entropies of softmax(softcap(z) / tau),
    chunk by chunk with the pure-torch reference; each chunk is checkpointed, so backward
    recomputes its logits instead of keeping them."""
    import dataclasses

    from torch.utils.checkpoint import checkpoint

    cdt = _ref_dtype(h)
    comp = cdt == (torch.float32 if h.dtype in _LOW else h.dtype)  # nothing widened
    w = None if weight is None else weight.to(cdt)
    plain = dataclasses.replace(CrossEntropyOptions(), ignore_index=opts.ignore_index,
                                softcap=opts.softcap, reduction=Reduction.NONE)

    def rows(hc: Tensor, tc: Tensor) -> tuple[Tensor, ...]:
        z = _chunk_logits(hc, Wm, b)
        loss, lse = categorical_rows(z, tc, w, opts, temperature=tau, compensate=comp)
        outs = [loss, lse]
        if want_lp:
            nll, _ = categorical_rows(z, tc, None, plain, temperature=tau, compensate=comp)
            outs.append(-nll)
        if want_ent:
            outs.append(entropy_rows(z, opts.softcap, tau, comp))
        return tuple(outs)

    # checkpointing keeps one chunk's logits; under torch.func the transform owns the graph
    grad = torch.is_grad_enabled() and not transformed(h, Wm, b) and any(
        x is not None and x.requires_grad for x in (h, Wm, b))
    pieces: list[tuple[Tensor, ...]] = []
    N = h.shape[0]
    step = plan.rows or max(1, N)
    for s in range(0, max(N, 1), step):
        hc, tc = h[s:s + step], t[s:s + step]
        if grad and N > step:
            pieces.append(checkpoint(rows, hc, tc, use_reentrant=False))
        else:
            pieces.append(rows(hc, tc))
    cols = [torch.cat([p[i] for p in pieces]) for i in range(len(pieces[0]))]
    loss, lse = cols[0], cols[1]
    omega = row_weights(t, w, opts, Wm.shape[0], cdt) if opts.reduction is Reduction.MEAN \
        else None
    out = reduce_rows(loss, omega, opts, norm_t)
    i = 2
    lp = ent = None
    if want_lp:
        lp, i = cols[i] * opts.scale, i + 1
    if want_ent:
        ent = cols[i] * opts.scale
    return out, lse, lp, ent
