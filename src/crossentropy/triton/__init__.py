r"""Triton GPU kernels for cross-entropy and fused linear cross-entropy.

Four layers, each in its own module: raw ``@triton.jit`` kernels (``_kernels``), typed
launchers (``_launch``), ``torch.autograd.Function`` classes (``_autograd``) and the public
functions here, which validate their arguments and dispatch.  ``crossentropy.torch`` sends
CUDA tensors here.

Dispatch: float16/bfloat16/float32 tensors on a CUDA device run the Triton kernels; so do
CPU tensors when ``TRITON_INTERPRET=1`` (the Triton interpreter, used by the tests).
Anything else (CPU tensors without the interpreter, float64, or Triton not installed) runs
the pure-PyTorch implementation in ``_reference`` (float32, or float64 for float64 input),
which has the same semantics.

Loss of token *i* (logits ``z``, target ``y``, class weights ``w``, smoothing ``eps``, ``C``
classes, z-loss ``lambda``, optional soft-capping ``z' = s tanh(z / s)``):

.. math::

    \ell_i = (1-\varepsilon) w_{y} (\mathrm{lse}_i - z'_{iy})
      + \tfrac{\varepsilon}{C} \textstyle\sum_c w_c (\mathrm{lse}_i - z'_{ic})
      + \lambda\, w_{y}\, \mathrm{lse}_i^2

which is :func:`torch.nn.functional.cross_entropy` (index targets) plus the z-loss; the
z-loss of a token carries its target weight, so that 'mean' (``sum_i l_i / sum_i w_{y_i}``
over the counted tokens) averages it over the same tokens.  Ignored tokens add nothing; a
mean over none is NaN, as in PyTorch.  ``base`` divides the whole loss by ``ln(base)``.
"""

from __future__ import annotations

import importlib.util
import math
import numbers
from typing import TYPE_CHECKING, Any

from crossentropy import _validate as v

if TYPE_CHECKING:
    import torch

__all__ = ["cross_entropy", "is_available", "linear_cross_entropy"]


def is_available() -> bool:
    """True when the Triton kernels can run here: Triton is installed and either a CUDA
    device is present or ``TRITON_INTERPRET=1`` selects the CPU interpreter.

    >>> isinstance(is_available(), bool)
    True
    """
    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None:
        return False
    from crossentropy.triton._launch import interpreting

    if interpreting():
        return True
    import torch

    return bool(torch.cuda.is_available())


def _use_kernels(t: torch.Tensor) -> bool:
    import torch

    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return False
    if importlib.util.find_spec("triton") is None:
        return False
    from crossentropy.triton._launch import interpreting

    return t.is_cuda or (t.device.type == "cpu" and interpreting())


def _check_tensor(x: Any, name: str) -> None:
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def _check_options(
    reduction: Any, label_smoothing: Any, base: Any, z_loss: Any, softcap: Any, ignore_index: Any
) -> tuple[str, float, float, float, float | None, int]:
    red = v.check_reduction(reduction)
    eps = v.check_unit_interval(label_smoothing, "label_smoothing")
    inv_ln = v.log_scale(base)
    if isinstance(z_loss, bool) or not isinstance(z_loss, numbers.Real):
        raise TypeError(f"z_loss must be a real number >= 0, got {z_loss!r}")
    if not (math.isfinite(float(z_loss)) and float(z_loss) >= 0.0):
        raise ValueError(f"z_loss must be finite and >= 0, got {z_loss!r}")
    cap: float | None = None
    if softcap is not None:
        if isinstance(softcap, bool) or not isinstance(softcap, numbers.Real):
            raise TypeError(f"softcap must be None or a real number > 0, got {softcap!r}")
        cap = float(softcap)
        if not (math.isfinite(cap) and cap > 0.0):
            raise ValueError(f"softcap must be finite and > 0, got {softcap!r}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer, got {ignore_index!r}")
    return red, eps, inv_ln, float(z_loss), cap, int(ignore_index)


def _check_target(target: Any, n: int, num_classes: int, ignore_index: int, device: Any) -> None:
    """Shape, dtype and device of the targets; on the CPU also their values (first bad
    position named).  On a GPU the values are not read (no host synchronisation): a target
    outside ``[0, C)`` that is not ``ignore_index`` gives a NaN loss and gradient row."""
    import torch

    _check_tensor(target, "target")
    if target.dtype.is_floating_point or target.dtype.is_complex or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.shape != (n,):
        raise ValueError(
            f"target must have shape ({n},) (one class index per row), got {tuple(target.shape)}"
        )
    if target.device != device:
        raise ValueError(f"target is on {target.device} but the input is on {device}")
    if target.device.type == "cpu" and n:
        bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
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


def _check_matrix(x: Any, name: str) -> None:
    _check_tensor(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-d, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    base: float | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
    inplace_grad: bool = False,
) -> Any:
    r"""Cross-entropy of logits ``input`` [N, C] against class indices ``target`` [N].

    .. math:: \ell_i = (1-\varepsilon) w_y (\mathrm{lse}_i - z'_{iy})
              + \tfrac{\varepsilon}{C}\textstyle\sum_c w_c (\mathrm{lse}_i - z'_{ic})
              + \lambda w_y \mathrm{lse}_i^2, \qquad
              \frac{\partial \ell_i}{\partial z'_{ic}} = p_{ic} \Big[(1-\varepsilon) w_y
              + \tfrac{\varepsilon}{C} \textstyle\sum_{c'} w_{c'} + 2\lambda w_y
              \mathrm{lse}_i\Big] - (1-\varepsilon) w_y [c = y] - \tfrac{\varepsilon}{C} w_c

    Same values as ``torch.nn.functional.cross_entropy(input, target, weight=weight,
    ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)``
    when ``z_loss=0``, ``softcap=None`` and ``base=None``.  On the GPU the kernel reads each
    row once for the loss (online log-sum-exp) and, when the input requires a gradient,
    once more to write the gradient during the forward pass; backward only scales it.

    Parameters
    ----------
    input : torch.Tensor
        Logits, shape [N, C], float16/bfloat16/float32 (float64 runs the PyTorch path).
        Rows must be contiguous for the kernels (a copy is made otherwise).
    target : torch.Tensor
        Integer class indices, shape [N].
    weight : torch.Tensor, optional
        Class weights, shape [C].
    ignore_index : int
        Targets equal to it contribute nothing (default -100).
    reduction : {'mean', 'sum', 'none'}
        'mean' divides by the summed weight of the counted targets (NaN when there is none).
    label_smoothing : float
        In [0, 1], PyTorch's definition (weighted by ``w_c`` when weights are given).
    base : float, optional
        Unit: None for nats, 2 for bits (the whole loss is divided by ``ln(base)``).
    z_loss : float
        Coefficient of ``w_y lse^2`` (auxiliary z-loss; 0 disables).
    softcap : float, optional
        Logits are replaced by ``softcap * tanh(logits / softcap)`` first.
    return_lse : bool
        Also return the float32 log-sum-exp of each row (of the soft-capped logits, in
        nats; not differentiable).
    inplace_grad : bool
        Write the gradient into ``input``'s memory (saves one [N, C] buffer; the logits are
        destroyed, and autograd refuses to reuse them elsewhere).  Kernel path only.

    Returns
    -------
    torch.Tensor or (torch.Tensor, torch.Tensor)
        The loss (dtype of ``input``; shape [N] for 'none', else a scalar), and the lse.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.triton import cross_entropy
    >>> x = torch.tensor([[9.8, 3.7, 0.2]])
    >>> round(float(cross_entropy(x, torch.tensor([0]), base=2)), 7)  # the article's cat image
    0.0033296
    """
    _check_matrix(input, "input")
    red, eps, inv_ln, zl, cap, ign = _check_options(
        reduction, label_smoothing, base, z_loss, softcap, ignore_index
    )
    N, C = input.shape
    _check_target(target, N, C, ign, input.device)
    _check_vector(weight, "weight", C, input.device)
    if not _use_kernels(input):
        from crossentropy.triton._reference import cross_entropy_reference

        return cross_entropy_reference(
            input, target, weight=weight, ignore_index=ign, reduction=red,
            label_smoothing=eps, base=base, z_loss=zl, softcap=cap, return_lse=return_lse,
        )
    from crossentropy.triton._autograd import CrossEntropyFunction

    x = input if input.stride(-1) == 1 else input.contiguous()
    inplace = bool(inplace_grad) and x is input
    w = weight.contiguous() if weight is not None else None
    loss, lse = CrossEntropyFunction.apply(  # type: ignore[no-untyped-call]
        x, target.contiguous(), w, ign, red, eps, inv_ln, zl, cap, inplace
    )
    return (loss, lse) if return_lse else loss


def linear_cross_entropy(
    hidden: torch.Tensor,
    linear_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    linear_bias: torch.Tensor | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    base: float | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_lse: bool = False,
) -> Any:
    r"""Fused ``cross_entropy(hidden @ linear_weight.T + linear_bias, target, ...)``.

    .. math:: z = h W^\top + b, \qquad \ell_i \text{ as in } :func:`cross_entropy`, \qquad
              \frac{\partial L}{\partial h} = G W, \quad
              \frac{\partial L}{\partial W} = G^\top h, \quad
              \frac{\partial L}{\partial b} = \textstyle\sum_i G_i

    with ``G = dL/dz``.  On the GPU the logits are never written to memory: the forward
    folds each on-chip tile into a running log-sum-exp and picks the target logit; the
    backward recomputes each tile and forms ``G`` on chip.  Exact (no tile skipping);
    logits are accumulated in float32, so it is more accurate than materialising bfloat16
    logits.

    Parameters
    ----------
    hidden : torch.Tensor
        [N, D] activations.
    linear_weight : torch.Tensor
        [V, D] classifier (the ``weight`` of ``torch.nn.Linear(D, V)``), same dtype.
    target : torch.Tensor
        Integer class indices, shape [N].
    linear_bias : torch.Tensor, optional
        [V] classifier bias.
    weight, ignore_index, reduction, label_smoothing, base, z_loss, softcap, return_lse
        As for :func:`cross_entropy` (with ``C = V``).

    Examples
    --------
    >>> import torch
    >>> from crossentropy.triton import linear_cross_entropy
    >>> h = torch.tensor([[1.0, 0.0]])
    >>> W = torch.tensor([[9.8, 0.0], [3.7, 0.0], [0.2, 0.0]])
    >>> round(float(linear_cross_entropy(h, W, torch.tensor([0]), base=2)), 7)
    0.0033296
    """
    _check_matrix(hidden, "hidden")
    _check_matrix(linear_weight, "linear_weight")
    red, eps, inv_ln, zl, cap, ign = _check_options(
        reduction, label_smoothing, base, z_loss, softcap, ignore_index
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
    _check_target(target, N, V, ign, hidden.device)
    _check_vector(weight, "weight", V, hidden.device)
    _check_vector(linear_bias, "linear_bias", V, hidden.device)
    if not _use_kernels(hidden):
        from crossentropy.triton._reference import linear_cross_entropy_reference

        return linear_cross_entropy_reference(
            hidden, linear_weight, target, linear_bias=linear_bias, weight=weight,
            ignore_index=ign, reduction=red, label_smoothing=eps, base=base, z_loss=zl,
            softcap=cap, return_lse=return_lse,
        )
    from crossentropy.triton._autograd import LinearCrossEntropyFunction

    loss, lse = LinearCrossEntropyFunction.apply(  # type: ignore[no-untyped-call]
        hidden if hidden.stride(-1) == 1 else hidden.contiguous(),
        linear_weight if linear_weight.stride(-1) == 1 else linear_weight.contiguous(),
        linear_bias.contiguous() if linear_bias is not None else None,
        target.contiguous(),
        weight.contiguous() if weight is not None else None,
        ign,
        red,
        eps,
        inv_ln,
        zl,
        cap,
    )
    return (loss, lse) if return_lse else loss
