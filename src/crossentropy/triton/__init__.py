r"""Triton GPU kernels for cross-entropy and fused linear cross-entropy.

Four layers, each in its own module: raw ``@triton.jit`` kernels (``_kernels``), typed
launchers (``_launch``), ``torch.autograd.Function`` classes (``_autograd``) and the
functions here.  This module imports without Triton (and without torch).

The seam used by :mod:`crossentropy.torch` (``impl="triton"``, and ``impl="auto"`` on CUDA),
after it has validated the arguments into a :class:`~crossentropy._options.CrossEntropyOptions`
and reshaped the inputs to 2-D:

* :func:`is_available` -- Triton imports and a CUDA device is there, or
  ``TRITON_INTERPRET=1`` selects the CPU interpreter;
* :func:`supports` -- None when the kernels can take tensors like ``x``, else the reason;
* :func:`cross_entropy_2d`, :func:`linear_cross_entropy_2d` -- the kernels, or
  :class:`TritonUnavailable` with the reason (never a silent fallback).

The user-facing :func:`cross_entropy` and :func:`linear_cross_entropy` check their
arguments, build the options with torch semantics and call the seam.

Loss of row *i* (logits ``z``, soft-capped ``z' = s tanh(z / s)`` when ``softcap=s``; index
target ``y`` or probability row ``t``; class weights ``w``; label smoothing ``eps`` over
``C`` classes; z-loss ``zeta``):

.. math::

    \ell_i = (1-\varepsilon) w_{y} (\mathrm{lse}_i - z'_{iy})
      + \tfrac{\varepsilon}{C} \textstyle\sum_c w_c (\mathrm{lse}_i - z'_{ic})
      + \zeta\, \mathrm{lse}_i^2
    \quad\text{or}\quad
    \ell_i = \textstyle\sum_c w_c \big((1-\varepsilon) t_{ic} + \tfrac{\varepsilon}{C}\big)
      (\mathrm{lse}_i - z'_{ic}) + \zeta\, \mathrm{lse}_i^2

which is :func:`torch.nn.functional.cross_entropy` plus the z-loss (``zeta lse^2`` per
counted row, not weighted).  ``lse - z`` is never formed: the kernels keep
``lse - z_c = (m - z_c) + log1p(rest)`` (two terms >= 0), so a confident row keeps its
relative accuracy (float32 per-row loss within 4 ulp of the float64 value of the same
float32 logits, rows with losses of 1e-18 included; see ``_kernels``).  ``base`` divides the
loss by ``ln(base)``.  float64 tensors are refused (:func:`supports` says so): the kernels
compute in float32, and the torch path is exact in float64.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from crossentropy._options import CrossEntropyOptions

__all__ = [
    "TritonUnavailable",
    "cross_entropy",
    "cross_entropy_2d",
    "is_available",
    "linear_cross_entropy",
    "linear_cross_entropy_2d",
    "supports",
]


class TritonUnavailable(RuntimeError):
    """The Triton kernels cannot take this call; the message says why.

    >>> issubclass(TritonUnavailable, RuntimeError)
    True
    """


def _triton_reason() -> str | None:
    """None when triton imports and kernels can run here (a GPU or the interpreter)."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken installation
        return f"triton does not import ({type(exc).__name__}: {exc})"
    from crossentropy.triton._launch import interpreting

    if interpreting():
        return None
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU)"
    return None


def is_available() -> bool:
    """True when the Triton kernels can run here: Triton imports and either a CUDA device
    is present or ``TRITON_INTERPRET=1`` selects the CPU interpreter.

    >>> isinstance(is_available(), bool)
    True
    """
    return _triton_reason() is None


def supports(x: torch.Tensor) -> str | None:
    """None if the kernels can take tensors like `x`, else the reason (one sentence).

    Kernels take float16, bfloat16 and float32 tensors on a CUDA device, or on the CPU
    under ``TRITON_INTERPRET=1``.  float64 is refused: the kernels compute in float32
    (the torch path is exact in float64).

    >>> import torch
    >>> supports(torch.zeros(2, 3, dtype=torch.float64))
    'float64 tensors: the Triton kernels compute in float32'
    """
    import torch

    if x.dtype == torch.float64:
        return "float64 tensors: the Triton kernels compute in float32"  # torch path: exact
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the Triton kernels take float16, bfloat16 or float32 tensors, not {x.dtype}"
    reason = _triton_reason()
    if reason is not None:
        return reason
    from crossentropy.triton._launch import interpreting

    if x.device.type == "cuda":
        return None
    if x.device.type == "cpu" and interpreting():
        return None
    return (
        f"tensors on {x.device} cannot run the Triton kernels "
        "(CUDA, or CPU under TRITON_INTERPRET=1)"
    )


def _require(x: torch.Tensor) -> None:
    reason = supports(x)
    if reason is not None:
        raise TritonUnavailable(reason)


def _no_classes(z: torch.Tensor, target: torch.Tensor, opts: CrossEntropyOptions,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The seams' result for (N, 0) logits: torch's values (each row 0, 'mean' NaN; see
    :func:`crossentropy.torch._reference.zero_class_rows`), lse -inf in float32."""
    import torch

    from crossentropy.torch._reference import zero_class_rows

    out, lse = zero_class_rows(z, target, target.dim() == 2, opts)
    return out.to(z.dtype), lse.to(torch.float32)


def _rows_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.dim() < 2 or t.shape[1] <= 1 or t.stride(1) == 1 else t.contiguous()


def cross_entropy_2d(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: CrossEntropyOptions,
    *,
    inplace_grad: bool = False,
    value_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The seam: cross-entropy of 2-D logits with validated options, on the kernels.

    .. math:: \ell_i = \sum_c a_{ic} \big((m_i - z'_{ic}) + \operatorname{log1p}(s_i)\big)
              + \zeta\,\mathrm{lse}_i^2, \qquad
              \frac{\partial \ell_i}{\partial z'_{ic}} = P_i\, p_{ic} - a_{ic}

    (``a_ic`` the target weights of class ``c``, ``P_i = sum_c a_ic + 2 zeta lse_i``).

    Parameters
    ----------
    x : torch.Tensor
        (N, C) float16/bfloat16/float32 logits (rows are made contiguous if needed).
    target : torch.Tensor
        int64 [N] class indices, or floating [N, C] probability rows (not differentiated).
    weight : torch.Tensor or None
        [C] class weights.
    opts : CrossEntropyOptions
        Validated options (not checked again).
    inplace_grad : bool
        Write the gradient into ``x``'s memory during backward (the logits are destroyed;
        ignored for a leaf tensor and for logits without contiguous rows).
    value_dtype : torch.dtype or None
        The dtype of the returned loss: the float32 accumulation rounded once to it (None:
        x's dtype; ``torch.float32`` keeps a bfloat16 loss unrounded).

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        The loss reduced per ``opts`` in ``value_dtype`` (shape [N] for 'none') and the float32
        lse [N] (of the soft-capped logits, nats, not differentiable).  Autograd-capable;
        no host synchronisation.  Raises :class:`TritonUnavailable` (why) when the
        kernels cannot take the call.

    Examples
    --------
    >>> import torch
    >>> from crossentropy._options import CrossEntropyOptions
    >>> o = CrossEntropyOptions.create(semantics="torch")
    >>> x = torch.zeros(2, 3, dtype=torch.float64)
    >>> cross_entropy_2d(x, torch.tensor([0, 1]), None, o)
    Traceback (most recent call last):
    ...
    crossentropy.triton.TritonUnavailable: float64 tensors: the Triton kernels compute in float32
    """
    _require(x)
    vdt = x.dtype if value_dtype is None else value_dtype
    if x.shape[1] == 0:  # no classes: torch's values (the kernels need a class to read)
        out, lse = _no_classes(x, target, opts)
        return out.to(vdt), lse
    from crossentropy.triton._autograd import CrossEntropyFunction

    xc = _rows_contiguous(x)
    inplace = bool(inplace_grad) and xc is x and not x.is_leaf  # never a leaf's own memory
    t = target.contiguous() if target.dim() == 1 else _rows_contiguous(target)
    w = weight.contiguous() if weight is not None else None
    loss, lse = CrossEntropyFunction.apply(  # type: ignore[no-untyped-call]
        xc, t, w, opts, inplace, vdt)
    return loss, lse


def linear_cross_entropy_2d(
    h: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: CrossEntropyOptions,
    *,
    value_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The seam: fused ``cross_entropy_2d(h @ w.T + b, target, weight, opts)``.

    .. math:: z = h W^\top + b, \qquad
              \frac{\partial L}{\partial h} = G W, \quad
              \frac{\partial L}{\partial W} = G^\top h, \quad
              \frac{\partial L}{\partial b} = \textstyle\sum_i G_i

    with ``G = dL/dz``.  The logits never exist in memory: the forward folds each on-chip
    tile into the row statistics; the backward recomputes them one vocabulary chunk at a
    time, writes that chunk of ``G`` once and forms both gradients by GEMMs (no atomics;
    ``docs/gpu.md`` has the roofline).  Logits and products accumulate in float32.

    Parameters
    ----------
    h : torch.Tensor
        (N, D) hidden states, float16/bfloat16/float32.
    w : torch.Tensor
        (V, D) classifier weight, same dtype and device.
    b : torch.Tensor or None
        (V,) classifier bias.
    target, weight, opts
        As for :func:`cross_entropy_2d` (with ``C = V``); probability targets are [N, V].

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Loss (reduced per ``opts``, in ``value_dtype`` as for :func:`cross_entropy_2d`;
        None: h's dtype) and float32 lse [N].

    Examples
    --------
    >>> import torch
    >>> from crossentropy._options import CrossEntropyOptions
    >>> o = CrossEntropyOptions.create(ignore_index=None, semantics="torch")
    >>> h = torch.zeros(2, 4, dtype=torch.float64)
    >>> linear_cross_entropy_2d(h, torch.zeros(5, 4, dtype=torch.float64), None,
    ...                         torch.tensor([0, 1]), None, o)
    Traceback (most recent call last):
    ...
    crossentropy.triton.TritonUnavailable: float64 tensors: the Triton kernels compute in float32
    """
    _require(h)
    vdt = h.dtype if value_dtype is None else value_dtype
    if w.shape[0] == 0:  # no classes: the (N, 0) logits cost nothing
        import torch

        out, lse = _no_classes(torch.nn.functional.linear(h, w, b), target, opts)
        return out.to(vdt), lse
    from crossentropy.triton._autograd import LinearCrossEntropyFunction

    t = target.contiguous() if target.dim() == 1 else _rows_contiguous(target)
    loss, lse = LinearCrossEntropyFunction.apply(  # type: ignore[no-untyped-call]
        _rows_contiguous(h),
        _rows_contiguous(w),
        b.contiguous() if b is not None else None,
        t,
        weight.contiguous() if weight is not None else None,
        opts,
        vdt,
    )
    return loss, lse


# ----------------------------------------------------------------------------- public


def _check_tensor(x: Any, name: str) -> None:
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def _check_matrix(x: Any, name: str) -> None:
    _check_tensor(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-d, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_target(target: Any, n: int, num_classes: int, ignore_index: int | None,
                  device: Any) -> None:
    """Shape, dtype and device of the targets; on the CPU also the values of index targets
    (first bad position named).  On a GPU the values are not read (no host sync): an index
    outside ``[0, C)`` that is not ``ignore_index`` gives a NaN loss and gradient row."""
    import torch

    _check_tensor(target, "target")
    if target.device != device:
        raise ValueError(f"target is on {target.device} but the input is on {device}")
    if target.dtype.is_floating_point:
        if target.shape != (n, num_classes):
            raise ValueError(
                f"probability targets must have shape ({n}, {num_classes}), "
                f"got {tuple(target.shape)}"
            )
        return
    if target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(
            f"target must hold integer class indices or probabilities, got dtype {target.dtype}"
        )
    if target.shape != (n,):
        raise ValueError(
            f"target must have shape ({n},) (one class index per row), got {tuple(target.shape)}"
        )
    if target.device.type == "cpu" and n:
        bad = (target < 0) | (target >= num_classes)
        if ignore_index is not None:
            bad &= target != ignore_index
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0, 0])
            raise ValueError(
                f"target[{i}] = {int(target[i])} is out of range [0, {num_classes}) "
                f"(and is not ignore_index={ignore_index})"
            )


def _check_vector(x: Any, name: str, size: int, device: Any) -> None:
    if x is None:
        return
    _check_tensor(x, name)
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},), got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the input is on {device}")


def _long(target: torch.Tensor) -> torch.Tensor:
    import torch

    return target if target.dtype.is_floating_point else target.to(torch.int64)


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    base: float | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: float | None = None,
    return_lse: bool = False,
    inplace_grad: bool = False,
) -> Any:
    r"""Cross-entropy of logits ``input`` [N, C] on the Triton kernels.

    .. math:: \ell_i = (1-\varepsilon) w_y (\mathrm{lse}_i - z'_{iy})
              + \tfrac{\varepsilon}{C}\textstyle\sum_c w_c (\mathrm{lse}_i - z'_{ic})
              + \zeta\,\mathrm{lse}_i^2

    (for probability targets ``t``: ``sum_c w_c ((1-eps) t_c + eps/C)(lse - z'_c)``).
    Same values as ``torch.nn.functional.cross_entropy`` when ``z_loss=0``,
    ``softcap=None`` and ``base=None``.  The forward kernel reads each row once; the
    backward kernel reads it once more and writes the gradient once (three passes over
    the logits in all).  Raises :class:`TritonUnavailable` when the kernels cannot run
    (use ``crossentropy.torch.cross_entropy`` for automatic dispatch).

    Parameters
    ----------
    input : torch.Tensor
        Logits [N, C], float16/bfloat16/float32 (float64 is refused).
    target : torch.Tensor
        Integer class indices [N], or probability rows [N, C] (floating).
    weight : torch.Tensor, optional
        Class weights [C].
    ignore_index : int or None
        Index targets equal to it contribute nothing (default -100; None: none ignored).
    reduction : {'mean', 'sum', 'none'}
        'mean' divides by the summed weight of the counted targets (probability targets:
        by N); NaN over nothing, with a zero gradient, as torch.
    label_smoothing : float
        In [0, 1], PyTorch's definition (weighted by ``w_c`` when weights are given).
    base : float, optional
        Unit: None for nats, 2 for bits (the loss is divided by ``ln(base)``).
    z_loss : float
        Coefficient ``zeta`` of ``lse^2`` per counted row (unweighted; 0 disables).
    softcap : float, optional
        Logits are replaced by ``softcap * tanh(logits / softcap)`` first.
    normalizer : float, optional
        Divides the summed loss instead of the mean's divisor ('sum'/'mean' only).
    return_lse : bool
        Also return the float32 log-sum-exp of each row (not differentiable).
    inplace_grad : bool
        Write the gradient into ``input``'s memory during backward (saves one [N, C]
        buffer; the logits are destroyed, and autograd refuses to reuse them elsewhere;
        ignored for a leaf tensor).

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        The loss (dtype of ``input``; shape [N] for 'none', else a scalar), and the lse.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.triton import cross_entropy, supports
    >>> x = torch.tensor([[9.8, 3.7, 0.2]])  # the article's cat image
    >>> x = x.cuda() if torch.cuda.is_available() else x
    >>> runs = supports(x) is None  # a GPU, or TRITON_INTERPRET=1
    >>> t = torch.tensor([0], device=x.device)
    >>> bits = float(cross_entropy(x, t, base=2)) if runs else None
    >>> bits is None or round(bits, 7) == 0.0033296
    True
    """
    from crossentropy._options import CrossEntropyOptions

    _check_matrix(input, "input")
    opts = CrossEntropyOptions.create(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, base=base, normalizer=normalizer, semantics="torch",
    )
    N, C = input.shape
    _check_target(target, N, C, opts.ignore_index, input.device)
    _check_vector(weight, "weight", C, input.device)
    loss, lse = cross_entropy_2d(input, _long(target), weight, opts, inplace_grad=inplace_grad)
    return (loss, lse) if return_lse else loss


def linear_cross_entropy(
    hidden: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    base: float | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: float | None = None,
    return_lse: bool = False,
) -> Any:
    r"""Fused ``cross_entropy(hidden @ linear_weight.T + linear_bias, target, ...)``.

    .. math:: z = h W^\top + b, \qquad \ell_i \text{ as in } :func:`cross_entropy`

    The logits never exist in memory (see :func:`linear_cross_entropy_2d`); they are
    accumulated in float32, so the result is more accurate than materialising bfloat16
    logits.  Raises :class:`TritonUnavailable` when the kernels cannot run.

    Parameters
    ----------
    hidden : torch.Tensor
        [N, D] activations.
    linear_weight : torch.Tensor
        [V, D] classifier (the ``weight`` of ``torch.nn.Linear(D, V)``), same dtype.
    target : torch.Tensor
        Integer class indices [N] or probability rows [N, V].
    linear_bias : torch.Tensor, optional
        [V] classifier bias.
    weight, ignore_index, reduction, label_smoothing, base, z_loss, softcap, normalizer, return_lse
        As for :func:`cross_entropy` (with ``C = V``).

    Examples
    --------
    >>> import torch
    >>> from crossentropy.triton import linear_cross_entropy, supports
    >>> h = torch.tensor([[1.0, 0.0]])
    >>> W = torch.tensor([[9.8, 0.0], [3.7, 0.0], [0.2, 0.0]])
    >>> runs = supports(h) is None  # CPU tensors: only under TRITON_INTERPRET=1
    >>> bits = float(linear_cross_entropy(h, W, torch.tensor([0]), base=2)) if runs else None
    >>> bits is None or round(bits, 7) == 0.0033296
    True
    """
    from crossentropy._options import CrossEntropyOptions

    _check_matrix(hidden, "hidden")
    _check_matrix(linear_weight, "linear_weight")
    opts = CrossEntropyOptions.create(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, base=base, normalizer=normalizer, semantics="torch",
    )
    N, D = hidden.shape
    V = linear_weight.shape[0]
    if linear_weight.shape[1] != D:
        raise ValueError(
            f"linear_weight must have shape (V, {D}) to match hidden's {D} features, "
            f"got {tuple(linear_weight.shape)}"
        )
    if linear_weight.dtype != hidden.dtype:
        raise TypeError(
            f"hidden ({hidden.dtype}) and linear_weight ({linear_weight.dtype}) must have "
            "the same dtype"
        )
    if linear_weight.device != hidden.device:
        raise ValueError(
            f"linear_weight is on {linear_weight.device} but hidden is on {hidden.device}"
        )
    _check_target(target, N, V, opts.ignore_index, hidden.device)
    _check_vector(weight, "weight", V, hidden.device)
    _check_vector(linear_bias, "linear_bias", V, hidden.device)
    loss, lse = linear_cross_entropy_2d(
        hidden, linear_weight, linear_bias, _long(target), weight, opts
    )
    return (loss, lse) if return_lse else loss
