r"""Drop-in replacements for ``torch.nn.functional``'s cross-entropy losses.

Same signatures and semantics as torch 2.13, plus keyword-only options:

* ``base``: unit of the loss (None for nats, 2 for bits);
* ``z_loss``: coefficient :math:`\zeta` of :math:`\mathrm{lse}^2` added to each counted
  row's loss (PaLM's z-loss, which keeps the softmax normaliser near 1);
* ``softcap``: logits are replaced by :math:`c \tanh(x / c)` first (Gemma 2);
* ``return_lse``: also return the log-sum-exp of each row (of the soft-capped logits).

Where torch's numbers are wrong we give the true value (see the README, section torch).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from crossentropy._validate import log_scale
from crossentropy.torch import _ops
from crossentropy.torch._rows import reference_rows

__all__ = [
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


def _options(
    reduction: Any, label_smoothing: Any, z_loss: Any, softcap: Any, base: Any
) -> tuple[int, float, float, float | None, float]:
    if reduction not in _ops.REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum'; got {reduction!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    zl = float(z_loss)
    if not (math.isfinite(zl) and zl >= 0.0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    cap = None if softcap is None else float(softcap)
    if cap is not None and not (math.isfinite(cap) and cap > 0.0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")
    return _ops.REDUCTIONS[reduction], eps, zl, cap, log_scale(base)


def _eager() -> bool:
    return not torch.compiler.is_compiling()


def _gpu_kernel(name: str, x: Tensor) -> Any:
    """``crossentropy.triton.<name>`` for CUDA tensors when triton and a GPU are there;
    None otherwise (with a one-time warning for CUDA tensors)."""
    if x.device.type != "cuda":
        return None
    fn = None
    try:
        import crossentropy.triton as tr

        fn = getattr(tr, name, None)
    except ImportError:
        fn = None
    if fn is None and name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"crossentropy.torch.{name}: the Triton kernels are not available, running the "
            "chunked torch path on the GPU instead",
            RuntimeWarning,
            stacklevel=3,
        )
    return fn


def _out_dtype(x: Tensor) -> torch.dtype:
    """torch.autocast runs losses in float32: bf16/fp16 inputs give float32 results."""
    if x.dtype in _LOW and torch.is_autocast_enabled(x.device.type):
        return torch.float32
    return x.dtype


# --------------------------------------------------------------------------- cross_entropy


def _flatten(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...], bool]:
    """(M, C) rows of `input`, the matching targets, the batch shape, and whether the
    targets are probabilities (torch's rule: target.shape == input.shape)."""
    if input.dim() == 0:
        raise ValueError("input must have a class dimension: shape (C), (N, C) or (N, C, ...)")
    prob = target.shape == input.shape
    if prob and not target.is_floating_point():
        raise TypeError(
            f"target has the shape of input, so it holds class probabilities and must be "
            f"floating point; got dtype {target.dtype}"
        )
    C = input.shape[0] if input.dim() == 1 else input.shape[1]
    batch: tuple[int, ...] = () if input.dim() == 1 else (input.shape[0], *input.shape[2:])
    if not prob:
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(
                f"target holds class indices (its shape {tuple(target.shape)} is not the "
                f"input's {tuple(input.shape)}), so it must be an integer tensor; got "
                f"dtype {target.dtype}"
            )
        if tuple(target.shape) != batch:
            raise ValueError(
                f"target holds class indices, so its shape must be the input's shape without "
                f"the class dimension, {batch}; got {tuple(target.shape)}"
            )
    x = input.reshape(1, C) if input.dim() == 1 else input
    t = target.reshape(1, C) if (prob and input.dim() == 1) else target
    if x.dim() > 2:  # (N, C, d1..dK) -> (N d1..dK, C)
        x = x.movedim(1, -1).reshape(-1, C)
        t = t.movedim(1, -1).reshape(-1, C) if prob else t
    if not prob:
        t = t.reshape(-1).to(torch.int64)
    return x, t, batch, prob


def _check_weight(weight: Tensor | None, C: int) -> None:
    if weight is not None and tuple(weight.shape) != (C,):
        raise ValueError(
            f"weight must have shape ({C},) (one per class), got {tuple(weight.shape)}"
        )


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
) -> Any:
    r"""Cross-entropy between logits and class indices or class probabilities (as torch's).

    .. math::

        z = c\tanh(x/c)\ (\text{softcap } c), \quad
        \ell_i = -\sum_c w_c t'_{ic} \log\operatorname{softmax}(z_i)_c + \zeta\,\mathrm{lse}_i^2,
        \quad t' = (1-\varepsilon) t + \varepsilon / C

    'mean' divides by :math:`\sum_i w_{y_i}` over the counted rows for index targets and by
    the number of rows for probability targets (torch's rule); a batch with every target
    ignored gives NaN, as in torch.  The result is divided by :math:`\ln(\text{base})`.

    Parameters are those of :func:`torch.nn.functional.cross_entropy`, plus ``base``,
    ``z_loss``, ``softcap`` and ``return_lse`` (then ``(loss, lse)`` is returned, lse with
    the batch shape).  On the CPU, index targets go to the fused kernel, which computes the
    gradient in the forward pass; backward only scales it.

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
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    red, eps, zl, cap, scale = _options(reduction, label_smoothing, z_loss, softcap, base)
    gpu = _gpu_kernel("cross_entropy", input)
    if gpu is not None:
        return gpu(
            input, target, weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, base=base, z_loss=z_loss, softcap=softcap,
            return_lse=return_lse,
        )
    x, t, batch, prob = _flatten(input, target)
    if prob and ignore_index != -100:
        raise ValueError("ignore_index is not supported for probability targets (as in torch)")
    C = x.shape[1]
    _check_weight(weight, C)
    out_dtype = _out_dtype(input)
    if not prob and _eager():
        _ops.check_index_target(target, C, ignore_index)
    with torch.autocast(input.device.type, enabled=False):
        if not prob and x.device.type == "cpu":
            xk = x if x.dtype in (torch.float32, torch.float64) else x.float()
            need = xk.requires_grad and torch.is_grad_enabled()
            out, lse, _ = torch.ops.crossentropy.cross_entropy_index(
                xk, t, weight, ignore_index, eps, zl, cap, scale, red, need
            )
        else:
            cdt = torch.float64 if x.device.type == "cpu" else torch.float32
            if x.dtype == torch.float64:
                cdt = torch.float64
            loss, lse = reference_rows(
                x.to(cdt), t, prob=prob, weight=weight, ignore_index=ignore_index,
                label_smoothing=eps, z_loss=zl, softcap=cap,
            )
            if red == 0:
                out = loss * scale
            elif red == 1:
                out = loss.sum() * scale
            elif prob:
                out = loss.sum() * scale / x.shape[0]  # torch: probability targets / N
            else:
                counted = t != ignore_index
                wy = counted.to(cdt)
                if weight is not None:
                    wy = weight.to(cdt)[torch.where(counted, t, 0)] * wy
                out = loss.sum() * scale / wy.sum()
    out = out.to(out_dtype)
    if red == 0:
        out = out.reshape(batch)
    if return_lse:
        return out, lse.to(out_dtype).reshape(batch)
    return out


# --------------------------------------------------------------------------- binary


def _binary_prep(
    input: Tensor, target: Tensor, reduction: str, base: Any
) -> tuple[Tensor, Tensor, float, torch.dtype]:
    if reduction not in _ops.REDUCTIONS:
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum'; got {reduction!r}")
    if target.shape != input.shape:
        raise ValueError(
            f"target must have the shape of input {tuple(input.shape)}, got "
            f"{tuple(target.shape)}"
        )
    out_dtype = _out_dtype(input)
    cdt = torch.float64 if input.dtype == torch.float64 else torch.float32
    return input.to(cdt), target.to(cdt), log_scale(base), out_dtype


def _binary_finish(
    loss: Tensor, weight: Tensor | None, reduction: str, scale: float, dtype: torch.dtype
) -> Tensor:
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.mean()
    if scale != 1.0:
        loss = loss * scale
    return loss.to(dtype)


def _term(coef: Tensor, value: Tensor) -> Tensor:
    """coef * value, exactly 0 where coef is 0 (a label with no mass adds nothing)."""
    return torch.where(coef == 0, torch.zeros_like(value), coef * value)


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
) -> Tensor:
    r"""Binary cross-entropy from logits (as torch's), with no underflow to 0.

    .. math:: \ell = p\,y \operatorname{softplus}(-x) + (1-y)\operatorname{softplus}(x),
              \qquad \operatorname{softplus}(x) = -\log\sigma(-x)

    (p the pos_weight).  Two non-negative terms: no cancellation, so ``x = -40, y = 0``
    gives 4.25e-18 where torch gives 0.

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> x, y = torch.tensor([-40.0], dtype=torch.float64), torch.tensor([0.0], dtype=torch.float64)
    >>> float(cet.binary_cross_entropy_with_logits(x, y))
    4.248354255291589e-18
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    x, y, scale, dtype = _binary_prep(input, target, reduction, base)
    with torch.autocast(input.device.type, enabled=False):
        py = y if pos_weight is None else pos_weight.to(x.dtype) * y
        logsig = torch.nn.functional.logsigmoid
        # softplus(-x) = -log sigmoid(x),  softplus(x) = -log sigmoid(-x)
        loss = _term(py, -logsig(x)) + _term(1.0 - y, -logsig(-x))
        return _binary_finish(loss, weight, reduction, scale, dtype)


def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    base: float | None = None,
) -> Tensor:
    r"""Binary cross-entropy from probabilities (as torch's), without the log clamp at -100.

    .. math:: \ell = -\big(y \log q + (1-y)\operatorname{log1p}(-q)\big), \qquad
              \frac{\partial\ell}{\partial q} = \frac{1-y}{1-q} - \frac{y}{q}

    A term whose coefficient is 0 adds exactly 0 (q = 0, y = 0 gives 0 and gradient 1).
    ``q = 1e-300, y = 1`` gives 690.78 (torch: 100).

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> q, y = torch.tensor([1e-300], dtype=torch.float64), torch.tensor([1.0], dtype=torch.float64)
    >>> float(cet.binary_cross_entropy(q, y))
    690.7755278982137
    """
    reduction = _legacy_reduction(size_average, reduce, reduction)
    q, y, scale, dtype = _binary_prep(input, target, reduction, base)
    if _eager():
        bad = (q < 0) | (q > 1)
        if bool(bad.any()):
            flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
            raise ValueError(
                f"input must hold probabilities in [0, 1]; element {flat} (flat index) is "
                f"{float(q.reshape(-1)[flat])!r}"
            )
    with torch.autocast(input.device.type, enabled=False):
        ny = 1.0 - y
        one = torch.ones_like(q)
        # the log's argument is replaced by 1 where its coefficient is 0, so that neither
        # the value nor the gradient sees log(0) * 0
        lq = torch.log(torch.where(y == 0, one, q))
        l1q = torch.log1p(-torch.where(ny == 0, torch.zeros_like(q), q))
        loss = -(_term(y, lq) + _term(ny, l1q))
        return _binary_finish(loss, weight, reduction, scale, dtype)


# --------------------------------------------------------------------------- linear


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
) -> Any:
    r"""``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` without the logits.

    .. math:: z = h W^\top + b, \qquad \ell_i = \text{cross\_entropy}(z_i, y_i)

    Same signature and semantics as torch 2.13's ``F.linear_cross_entropy``
    (``ignore_index=None`` means -100 for index targets).  The (N, V) logits are never
    materialised: tokens are processed in chunks (``options.batch_chunk_size`` when given,
    else about 32 MiB of logits per chunk), each chunk's gradient is computed by the fused
    kernel and multiplied straight into grad_input and grad_weight, accumulated in float32
    for bfloat16 inputs.  ``reduction='none'`` recomputes the chunks in backward, so the
    weight gradient is right for any per-row upstream gradient.  Probability targets and
    K-dimensional ``linear_weight`` (shape (C, d1, ..., in_features)) compute the logits
    and call :func:`cross_entropy`.

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    >>> W = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64)
    >>> loss = cet.linear_cross_entropy(h, W, torch.tensor([0, 2]), reduction="none")
    >>> [round(v, 6) for v in loss.tolist()]  # log(e^2 + 2) - 2 and log(e^2 + 2) - 0
    [0.239545, 2.239545]
    """
    red, eps, zl, cap, scale = _options(reduction, label_smoothing, z_loss, softcap, base)
    if input.dim() not in (1, 2):
        raise ValueError(f"input must have shape (in_features) or (N, in_features), got "
                         f"{tuple(input.shape)}")
    if linear_weight.dim() < 2:
        raise ValueError("linear_weight must have shape (C, in_features) or "
                         f"(C, d1, ..., in_features), got {tuple(linear_weight.shape)}")
    D = input.shape[-1]
    if linear_weight.shape[-1] != D:
        raise ValueError(f"input has in_features={D} but linear_weight has "
                         f"{linear_weight.shape[-1]}")
    C = linear_weight.shape[0]
    out_features = tuple(linear_weight.shape[1:-1])
    if linear_bias is not None and tuple(linear_bias.shape) != (C, *out_features):
        raise ValueError(f"linear_bias must have shape {(C, *out_features)}, got "
                         f"{tuple(linear_bias.shape)}")
    if out_features and input.dim() == 1:
        raise ValueError("a K-dimensional linear_weight needs batched input (N, in_features)")
    logits_shape = (*input.shape[:-1], C, *out_features)
    prob = tuple(target.shape) == logits_shape
    if prob and ignore_index is not None:
        raise ValueError("ignore_index cannot be given when target holds probabilities")
    ii = -100 if ignore_index is None else int(ignore_index)
    extra: dict[str, Any] = {"base": base, "z_loss": z_loss, "softcap": softcap,
                             "return_lse": return_lse}
    gpu = _gpu_kernel("linear_cross_entropy", input)
    if gpu is not None:
        return gpu(
            input, linear_weight, target, linear_bias=linear_bias, weight=weight,
            reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
            options=options, **extra,
        )
    if prob or out_features:
        # materialise the logits (documented): the chunked path takes index targets
        W2 = linear_weight.reshape(-1, D)
        b2 = None if linear_bias is None else linear_bias.reshape(-1)
        logits = torch.nn.functional.linear(input, W2, b2).reshape(logits_shape)
        return cross_entropy(logits, target, weight, ignore_index=ii, reduction=reduction,
                             label_smoothing=label_smoothing, **extra)
    _check_weight(weight, C)
    if target.is_floating_point() or target.dtype == torch.bool:
        raise TypeError(f"target holds class indices, so it must be an integer tensor; got "
                        f"dtype {target.dtype}")
    batch = tuple(input.shape[:-1])
    if tuple(target.shape) != batch:
        raise ValueError(f"target must have shape {batch}, got {tuple(target.shape)}")
    out_dtype = _out_dtype(input)
    h, Wm, b = input.reshape(-1, D), linear_weight, linear_bias
    if torch.is_autocast_enabled(input.device.type):
        adt = torch.get_autocast_dtype(input.device.type)
        h, Wm = h.to(adt), Wm.to(adt)
        b = None if b is None else b.to(adt)
        out_dtype = torch.float32 if adt in _LOW else out_dtype
    t = target.reshape(-1).to(torch.int64)
    if _eager():
        _ops.check_index_target(target, C, ii)
    N = h.shape[0]
    chunk = getattr(options, "batch_chunk_size", None) or _ops.default_chunk_rows(N, C)
    grad_on = torch.is_grad_enabled()
    with torch.autocast(input.device.type, enabled=False):
        out, lse, *_ = torch.ops.crossentropy.linear_cross_entropy(
            h, Wm, t, b, weight, ii, eps, zl, cap, scale, red, int(chunk),
            h.requires_grad and grad_on, Wm.requires_grad and grad_on,
            b is not None and b.requires_grad and grad_on,
        )
    out = out.to(out_dtype)
    if red == 0:
        out = out.reshape(batch)
    if return_lse:
        return out, lse.to(out_dtype).reshape(batch)
    return out
