"""Validation of the torch layer's arguments: the one place where a bad argument becomes an
exception that names it (torch's exception class where torch raises one, see
:mod:`._errors`), shared by :mod:`.functional`, :mod:`.stats`, the modules and the
vocabulary-parallel functions.  Nothing here computes a loss.

Value checks (target ranges, sample weights) read the data only where it is real
(:func:`real`: not meta, fake, traced or inside a ``torch.func`` transform), so compiled and
transformed calls do not synchronise with the host.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch._subclasses.fake_tensor import is_fake

from crossentropy.torch._errors import TargetIndexError, TorchTypeError, TorchValueError

__all__ = [
    "IMPLS", "check_dtype", "check_impl", "check_index_dtype", "check_index_shape",
    "check_index_target", "check_linear", "check_log_clamp", "check_prob_dtype",
    "check_sample_weight", "check_shift", "check_temperature", "check_top_k",
    "check_weight", "real", "transformed",
]

#: The values of ``impl=``.
IMPLS = ("auto", "triton", "torch", "cpu")


def transformed(*ts: Tensor | None) -> bool:
    """True when a torch.func transform (grad, vmap, jacrev...) wraps one of the tensors."""
    if torch.compiler.is_compiling():
        return False
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(t is not None and wrapped(t) for t in ts)


def real(*ts: Tensor | None) -> bool:
    """True when the tensors hold real data we may read (no meta / fake / functorch tensor,
    not tracing): only then do value checks run (no host synchronisation otherwise)."""
    if torch.compiler.is_compiling():
        return False
    for t in ts:
        if t is None:
            continue
        if t.device.type == "meta" or is_fake(t) or transformed(t):
            return False
    return True


def check_shift(shift: Any) -> int:
    """The positions of ``shift=``: False/True are 0/1, else a non-negative integer (as
    Cut Cross-Entropy's ``shift``); anything else is refused, naming ``shift``."""
    if isinstance(shift, (bool, np.bool_)):
        return int(shift)
    if not isinstance(shift, numbers.Integral):  # int and NumPy integers, not 2.0 or "1"
        raise TypeError(f"shift must be a bool or an integer >= 0 (positions), got {shift!r} "
                        f"of type {type(shift).__name__}")
    n = int(shift)
    if n < 0:
        raise ValueError(f"shift must be >= 0 (position t predicts label t + shift), got {n}")
    return n


def check_impl(impl: Any) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of 'auto', 'triton', 'torch', 'cpu'; got {impl!r}")
    return str(impl)


def check_dtype(dtype: Any) -> torch.dtype:
    """``dtype=``: a floating torch.dtype for the returned loss."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype.is_complex:
        raise TypeError(f"dtype must be None or a floating torch.dtype (the dtype of the "
                        f"returned loss), got {dtype!r}")
    return dtype


def check_prob_dtype(target: Tensor, prob: bool) -> None:
    if prob and not target.is_floating_point():  # torch: RuntimeError
        raise TorchTypeError(
            f"target has the shape of the logits, {tuple(target.shape)}, so it holds class "
            f"probabilities and must be floating point; got dtype {target.dtype}"
        )


def check_index_shape(target: Tensor, shape: tuple[int, ...], batch: tuple[int, ...]
                       ) -> None:
    """Index targets against logits of `shape` (target shape `batch`), in torch's order and
    with its exception classes: the batch size (ValueError), a target of two or more
    dimensions for (N, C) logits (RuntimeError), the dtype (RuntimeError), the rest of the
    shape (RuntimeError; for a 1-D target of unbatched logits torch 2.13.0 raises ValueError,
    torch 2.7.1 RuntimeError)."""
    ts = tuple(target.shape)
    if len(shape) >= 2 and (not ts or ts[0] != shape[0]):
        raise ValueError(
            f"target's batch size {ts[0] if ts else 0} does not match the logits' {shape[0]}: "
            f"target {ts}, logits {shape} (index targets have the logits' shape without the "
            f"class dimension, {batch})"
        )
    if len(ts) >= 2 and len(shape) <= 2:
        raise TorchValueError(
            f"target of shape {ts} for logits {shape}: index targets must have shape "
            f"{batch}, probability targets the logits' shape"
        )
    check_index_dtype(target, shape)
    # torch 2.13 takes a (1,) target of (C,) logits (torch 2.7.1 raised RuntimeError); any
    # other shape raises both classes: for a 1-D target of (C,) logits torch 2.13.0 raises
    # ValueError, torch 2.7.1 RuntimeError ("size mismatch")
    if ts != batch and not (len(shape) == 1 and ts == (1,)):
        raise TorchValueError(
            f"target holds class indices, so its shape must be the logits' shape without "
            f"the class dimension, {batch}; got {ts} (logits {shape})"
        )


def check_index_dtype(target: Tensor, shape: tuple[int, ...]) -> None:
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TorchTypeError(
            f"target holds class indices (its shape {tuple(target.shape)} is not the "
            f"logits' {shape}, which class probabilities need), so it must be an integer "
            f"tensor; got dtype {target.dtype}"
        )


def check_weight(weight: Tensor | None, C: int) -> None:
    if weight is not None and tuple(weight.shape) != (C,):  # torch: RuntimeError
        raise TorchValueError(
            f"weight must have shape ({C},) (one per class), got {tuple(weight.shape)}"
        )


def check_log_clamp(log_clamp: Any) -> float | None:
    if log_clamp is None:
        return None
    if isinstance(log_clamp, bool) or not isinstance(log_clamp, numbers.Real):
        raise TypeError(f"log_clamp must be None (the exact form) or a real number <= 0, got "
                        f"{log_clamp!r}")
    c = float(log_clamp)
    if not (math.isfinite(c) and c <= 0.0):
        raise ValueError(f"log_clamp must be a finite number <= 0 (torch: -100) or None, got "
                         f"{log_clamp!r}")
    return c


def check_sample_weight(sw: Any, shape: tuple[int, ...]) -> Tensor:
    """``sample_weight``: a floating tensor of the per-sample loss's `shape`, finite and
    >= 0 (the first bad position named); returned flattened."""
    if not isinstance(sw, Tensor) or not sw.is_floating_point():
        what = f"a tensor of dtype {sw.dtype}" if isinstance(sw, Tensor) else type(sw).__name__
        raise TypeError(f"sample_weight must be a floating tensor of the per-sample loss's "
                        f"shape {shape}, got {what}")
    if tuple(sw.shape) != shape:
        raise ValueError(f"sample_weight must have the per-sample loss's shape {shape} (one "
                         f"weight per sample or token), got {tuple(sw.shape)}")
    if real(sw) and sw.numel():
        bad = ~(torch.isfinite(sw) & (sw >= 0))
        if bool(bad.any()):
            pos = [int(i) for i in bad.nonzero()[0]]
            raise ValueError(f"sample_weight must be finite and >= 0; sample_weight{pos} = "
                             f"{float(sw[tuple(pos)])}")
    return sw.reshape(-1)


def check_linear(input: Tensor, linear_weight: Tensor, linear_bias: Tensor | None,
                  ) -> tuple[int, int, tuple[int, ...]]:
    # torch raises RuntimeError for each of these
    if input.dim() < 1:
        raise TorchValueError(
            f"input must have shape (..., in_features), got {tuple(input.shape)}")
    if linear_weight.dim() < 2:
        raise TorchValueError("linear_weight must have shape (C, in_features) or "
                              f"(C, d1, ..., in_features), got {tuple(linear_weight.shape)}")
    D = input.shape[-1]
    if linear_weight.shape[-1] != D:
        raise TorchValueError(f"input has in_features={D} but linear_weight has "
                              f"{linear_weight.shape[-1]}")
    C = linear_weight.shape[0]
    out_features = tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (C, *out_features):
        raise TorchValueError(f"linear_bias must have shape {(C, *out_features)}, got "
                              f"{tuple(linear_bias.shape)}")
    if out_features and input.dim() != 2:
        raise TorchValueError(
            "a K-dimensional linear_weight needs input of shape (N, in_features)")
    return D, C, out_features


def check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number > 0, got {temperature!r}")
    tau = float(temperature)
    if not (math.isfinite(tau) and tau > 0.0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return tau


def check_index_target(target: Tensor, num_classes: int, ignore_index: int | None,
                       last_offset: int = 0) -> bool:
    """Raise :class:`~._errors.TargetIndexError` (a ValueError and torch's IndexError)
    naming the first target outside [0, C) that is not ignore_index (`last_offset` is added
    to the position on the last axis: a slice of the labels).

    Returns True when every target is in [0, C) (so none equals an ignore_index outside
    that range), False when some are ignore_index or there are none."""
    if target.numel():
        lo, hi = torch.aminmax(target)
        if int(lo) >= 0 and int(hi) < num_classes:  # the common case: one reduction
            return True
    bad = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        bad &= target != ignore_index
    if bool(bad.any()):
        flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
        pos = [int(i) for i in np.unravel_index(flat, tuple(target.shape))] \
            if target.dim() else []
        if pos:
            pos[-1] += last_offset
        where = "[" + ", ".join(str(i) for i in pos) + "]"
        raise TargetIndexError(
            f"target{where} = {int(target.reshape(-1)[flat])} is out of range "
            f"[0, {num_classes}) (and is not ignore_index={ignore_index})"
        )
    return False


def check_top_k(top_k: Any, V: int | None) -> int:
    """``top_k``: an integer in ``[0, V]`` (``V`` None: only ``>= 0``, the bound checked
    later, as the vocabulary-parallel functions do once the ranks know the whole ``V``)."""
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral):
        raise TypeError(f"top_k must be an integer >= 0, got {top_k!r}")
    k = int(top_k)
    if k < 0 or (V is not None and k > V):
        bound = f"between 0 and the number of classes {V}" if V is not None else ">= 0"
        raise ValueError(f"top_k must be {bound}, got {k}")
    return k
