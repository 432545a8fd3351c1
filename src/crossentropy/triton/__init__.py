r"""Triton GPU kernels for cross-entropy and fused linear cross-entropy.

This package holds the device code only, in layers that import downward: raw
``@triton.jit`` kernels (``_kernels``), typed launchers (``_launch``) and whether they can
run (``_available``).  It imports nothing from :mod:`crossentropy.torch`: the autograd
glue, the host-side row formula and the reduction are the torch layer's
(``crossentropy/torch/_triton.py`` over ``torch/_rowstats.py``).  The functions here are
the front door, whose calls go up to the torch layer lazily.  This module imports without
Triton (and without torch).

The seam used by :mod:`crossentropy.torch` (``impl="triton"``, and ``impl="auto"`` on CUDA),
after it has validated the arguments into a :class:`~crossentropy._options.CrossEntropyOptions`
and reshaped the inputs to 2-D:

* :func:`is_available` -- Triton imports and a CUDA device is there, or
  ``TRITON_INTERPRET=1`` selects the CPU interpreter;
* :func:`supports` -- None when the kernels can take tensors like ``x``, else the reason;
* :func:`cross_entropy_2d`, :func:`linear_cross_entropy_2d` -- the kernels, or
  :class:`TritonUnavailable` with the reason (never a silent fallback); kept here by name,
  they are :mod:`crossentropy.torch._triton`'s.

The user-facing :func:`cross_entropy` and :func:`linear_cross_entropy` are thin aliases
of :func:`crossentropy.torch.cross_entropy` and :func:`crossentropy.torch.linear_cross_entropy`
with ``impl="triton"`` (their validation, options and reduction), on 2-D inputs.

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

from typing import TYPE_CHECKING, Any

from crossentropy.triton._available import TritonUnavailable, is_available, supports

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


# ----------------------------------------------------------------------------- the seam


def cross_entropy_2d(
    x: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: CrossEntropyOptions,
    *,
    inplace_grad: bool = False,
    value_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`crossentropy.torch._triton.cross_entropy_2d` (the autograd glue lives on the
    torch side: this package holds the kernels, their launchers and :func:`supports`)."""
    from crossentropy.torch._triton import cross_entropy_2d as seam

    return seam(x, target, weight, opts, inplace_grad=inplace_grad, value_dtype=value_dtype)


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
    """:func:`crossentropy.torch._triton.linear_cross_entropy_2d` (see :func:`cross_entropy_2d`)."""
    from crossentropy.torch._triton import linear_cross_entropy_2d as seam

    return seam(h, w, b, target, weight, opts, value_dtype=value_dtype)


# ----------------------------------------------------------------------------- public


def _matrix(x: Any, name: str) -> None:
    """The front door's contract, narrower than crossentropy.torch's: a 2-D floating tensor."""
    import torch

    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-d, got shape {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _probabilities(target: Any) -> bool:
    """Floating targets hold class probabilities (``ignore_index`` does not apply)."""
    return bool(getattr(getattr(target, "dtype", None), "is_floating_point", False))


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

    A thin alias: ``crossentropy.torch.cross_entropy(..., impl="triton")`` (its validation,
    its options, its reduction) on 2-D logits.

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
    from crossentropy.torch.functional import cross_entropy as torch_ce

    _matrix(input, "input")
    if _probabilities(target):
        ignore_index = -100  # not used by probability targets (torch refuses another value)
    return torch_ce(input, target, weight, ignore_index=ignore_index,  # type: ignore[arg-type]
                    reduction=reduction, label_smoothing=label_smoothing, base=base,
                    z_loss=z_loss, softcap=softcap, normalizer=normalizer,
                    return_lse=return_lse, impl="triton", inplace_grad=inplace_grad)


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

    A thin alias: ``crossentropy.torch.linear_cross_entropy(..., impl="triton")`` on 2-D
    hidden states with a classifier of their dtype (``ignore_index=None`` is torch's
    meaning there: -100).

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
    from crossentropy.torch.functional import linear_cross_entropy as torch_lce

    _matrix(hidden, "hidden")
    _matrix(linear_weight, "linear_weight")
    if linear_weight.dtype != hidden.dtype:
        raise TypeError(
            f"hidden ({hidden.dtype}) and linear_weight ({linear_weight.dtype}) must have "
            "the same dtype"
        )
    if _probabilities(target):
        ignore_index = None  # not used by probability targets (torch refuses a value)
    return torch_lce(hidden, linear_weight, target, linear_bias=linear_bias, weight=weight,
                     ignore_index=ignore_index, reduction=reduction,
                     label_smoothing=label_smoothing, base=base, z_loss=z_loss,
                     softcap=softcap, normalizer=normalizer, return_lse=return_lse,
                     impl="triton")
