r"""The one reduction of the torch layer: per-row losses into the result, and the factor that
multiplies each row's gradient.

.. math::

    \text{none: } s\,\ell_i, \qquad
    \text{sum: } \frac{s \sum_i \ell_i}{d}, \qquad
    \text{mean: } \frac{s \sum_i \ell_i}{\sum_i \omega_i}\ \text{(or } d\text{)}, \qquad
    \frac{\partial\,\text{result}}{\partial \ell_i} = \frac{g\, s}{\text{divisor}}

(``s = opts.scale``, ``d`` the normalizer, ``omega_i`` the mean's row weights, ``g`` the
incoming gradient): the division comes last, so a subnormal divisor stays finite, and
nothing is read on the host.  A mean over zero counted rows is ``opts.empty_mean``
(torch: NaN) with a zero gradient (its divisor is ``+inf`` for the gradient).  The NumPy
API's reduction is the core's (``crossentropy/_core/reduce.py``); this is its torch form,
for every torch path: the pure-torch reference, the CPU kernels' operators (whose scalar
scale is :meth:`ReductionPlan.host_scale`), the Triton glue and the distributed loss.

A normalizer given as a 0-d tensor cannot cross a custom operator or a kernel as an
option (``torch.compile`` would specialise on its value): :meth:`ReductionPlan.inner`
gives the options the operator runs with (a plain sum) and :meth:`ReductionPlan.outer`
divides its result once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from crossentropy._options import CrossEntropyOptions, Reduction
from crossentropy.torch._rowstats import index_targets

__all__ = ["ReductionPlan", "grad_factor", "host_scale", "reduce_rows", "row_weights"]


def row_weights(
    target: Tensor, weight: Tensor | None, opts: CrossEntropyOptions, num_classes: int,
    dtype: torch.dtype,
) -> Tensor:
    """``omega_i``, what the mean divides by: ``w_{y_i}`` on counted index rows (0 when
    ignored); for probability rows 1 (``prob_mean='rows'``, torch) or ``sum_c w_c t_ic``."""
    if target.dim() == 2:
        if opts.prob_mean == "rows" or weight is None:
            return torch.ones(target.shape[0], dtype=dtype, device=target.device)
        return (target.to(dtype) * weight.to(dtype)).sum(dim=1)
    return index_targets(target, ignore_index=opts.ignore_index, num_classes=num_classes,
                         weight=weight, dtype=dtype).weight


@dataclass(frozen=True)
class ReductionPlan:
    """How one call reduces: the options, the mean's row weights, a tensor normalizer.

    Attributes
    ----------
    opts : CrossEntropyOptions
        ``reduction``, ``scale``, ``normalizer`` (a number), ``empty_mean``.
    omega : Tensor or None
        ``[n]`` row weights of a mean (:func:`row_weights`); None when no mean needs them.
    normalizer : Tensor or None
        A 0-d tensor normalizer (wins over ``opts.normalizer``).
    """

    opts: CrossEntropyOptions
    omega: Tensor | None = None
    normalizer: Tensor | None = None

    def _divides_by_omega(self) -> bool:
        o = self.opts
        return o.reduction is Reduction.MEAN and o.normalizer is None \
            and self.normalizer is None

    def value(self, loss: Tensor) -> Tensor:
        """The result from per-row losses ``[n]`` (differentiable; no host synchronisation).

        >>> import torch
        >>> from crossentropy._options import CrossEntropyOptions
        >>> o = CrossEntropyOptions.create(semantics="torch")
        >>> float(ReductionPlan(o, torch.zeros(2)).value(torch.zeros(2)))  # all ignored
        nan
        """
        o = self.opts
        if o.reduction is Reduction.NONE:
            return loss * o.scale if o.scale != 1.0 else loss
        total = loss.sum()
        if o.scale != 1.0:
            total = total * o.scale
        if self.normalizer is not None:
            return total / self.normalizer.to(total.dtype)
        if o.normalizer is not None:
            return total / o.normalizer
        if o.reduction is Reduction.SUM:
            return total
        assert self.omega is not None, "a mean needs its row weights"
        denom = self.omega.sum().to(total.dtype)
        empty = denom == 0
        out = total / torch.where(empty, torch.ones_like(denom), denom)
        # the empty mean is a constant added where nothing is counted: its gradient is 0
        return out + torch.where(empty, o.empty_mean, 0.0)

    def divisor(self, like: Tensor) -> Tensor:
        """The gradient's divisor, 0-d in `like`'s dtype and device: 1, the normalizer or
        ``sum(omega)`` (``+inf`` for a mean over nothing, so that its gradient is 0)."""
        o = self.opts
        if o.reduction is Reduction.NONE:
            return torch.ones((), dtype=like.dtype, device=like.device)
        if self.normalizer is not None:
            return self.normalizer.to(like.dtype).reshape(())
        if o.normalizer is not None:
            return torch.full((), o.normalizer, dtype=like.dtype, device=like.device)
        if o.reduction is Reduction.SUM:
            return torch.ones((), dtype=like.dtype, device=like.device)
        assert self.omega is not None, "a mean needs its row weights"
        denom = self.omega.sum().to(like.dtype)
        return torch.where(denom == 0, torch.full_like(denom, math.inf), denom)

    def host_divisor(self) -> float:
        """:meth:`divisor` on the host, 0 (not ``+inf``) for a mean over nothing (reads
        ``sum(omega)``: a host sync)."""
        o = self.opts
        if o.reduction is Reduction.NONE:
            return 1.0
        if self.normalizer is not None:
            return float(self.normalizer)
        if o.normalizer is not None:
            return o.normalizer
        if o.reduction is Reduction.SUM:
            return 1.0
        assert self.omega is not None, "a mean needs its row weights"
        return float(self.omega.sum())

    def host_scale(self) -> float:
        """``scale / divisor`` on the host (0 for a mean over nothing): the scalar the CPU
        kernels multiply each row's gradient by (a host sync where a mean reads omega)."""
        return host_scale(self.opts.scale, self.host_divisor())

    def inner(self) -> CrossEntropyOptions:
        """The options an operator or kernel runs with: a plain sum when the normalizer is
        a tensor (divided by :meth:`outer`), else the options themselves."""
        if self.normalizer is None:
            return self.opts
        return dataclasses.replace(self.opts, reduction=Reduction.SUM, normalizer=None)

    def outer(self, out: Tensor) -> Tensor:
        """The result of an operator run with :meth:`inner`'s options: divided by the tensor
        normalizer once, if there is one."""
        return out if self.normalizer is None else out / self.normalizer.to(out.dtype)


def host_scale(scale: float, divisor: float) -> float:
    """``scale / divisor``, 0 where the divisor is 0 (a mean over nothing: its gradient)."""
    return scale / divisor if divisor != 0.0 else 0.0


def grad_factor(grad_out: Tensor, divisor: Tensor, opts: CrossEntropyOptions) -> Tensor:
    """``d result / d loss_i`` times the incoming gradient: ``(g * scale) / divisor``, in
    the divisor's dtype, divided last; ``[n]`` for ``reduction='none'``, else ``[1]``
    (the caller broadcasts).  `divisor` is :meth:`ReductionPlan.divisor`'s."""
    g = grad_out.to(divisor.dtype).reshape(-1)
    return (g * opts.scale) / divisor


def reduce_rows(
    loss: Tensor, omega: Tensor | None, opts: CrossEntropyOptions,
    normalizer: Tensor | None = None,
) -> Tensor:
    """The one torch reduction (divide last), no host synchronisation:
    :meth:`ReductionPlan.value`.

    none -> ``loss * scale``; sum -> ``sum * scale`` (divided by the normalizer when given);
    mean -> ``sum * scale / sum(omega)`` (or the normalizer).  A mean over zero counted rows
    is ``opts.empty_mean`` (torch: NaN) with a zero gradient.  `normalizer` (a 0-d tensor)
    wins over ``opts.normalizer``.

    >>> import torch
    >>> from crossentropy._options import CrossEntropyOptions
    >>> o = CrossEntropyOptions.create(semantics="torch")
    >>> float(reduce_rows(torch.zeros(2), torch.zeros(2), o))  # all ignored: torch's NaN
    nan
    """
    return ReductionPlan(opts, omega, normalizer).value(loss)
