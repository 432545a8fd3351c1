r"""The one reduction of per-sample losses, and the factor its gradient takes.

For per-sample losses :math:`\ell_i` with mean weights :math:`\omega_i` and scale
:math:`s = 1/\ln(\text{base})`:

* ``none``: :math:`s\,\ell_i`;
* ``sum``: :math:`s \sum_i \ell_i`;
* ``mean``: :math:`s \sum_i \ell_i / \sum_i \omega_i` (for categorical losses
  :math:`\omega_i` is the weight of row *i*'s unsmoothed target; ``prob_mean='rows'`` and
  binary losses divide by the number of samples instead);
* with a ``normalizer`` *n* (sum or mean): :math:`s \sum_i \ell_i / n`.

A mean over zero counted samples is ``empty_mean`` (0.0 in the core, NaN under torch
semantics) with a zero gradient.

**Divide last.**  The gradient of sample *i* is :math:`(g_i\,f_i) / D` with the factor
:math:`f_i` and the divisor :math:`D` returned separately (a :class:`Factor`, whose
:meth:`Factor.apply` scales): forming :math:`s / D` first overflows to inf when :math:`D` is a
subnormal summed weight, although the gradient itself, :math:`w (p - t) / D`, is of order 1.
Fused kernels that need one number use :attr:`Factor.grad_scale` and must check that it is
finite.  :func:`factor` gives the factor before the losses exist (a kernel scales the gradient
while it computes them); :func:`reduce` gives the same factor with the value.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "Factor",
    "Reduced",
    "Reduction",
    "divisor",
    "factor",
    "reduce",
    "scalar",
]

F64 = npt.NDArray[np.float64]


class Reduction(str, enum.Enum):
    """How per-sample losses are combined."""

    NONE = "none"
    SUM = "sum"
    MEAN = "mean"

    @classmethod
    def of(cls, value: object) -> Reduction:
        """The member for ``'none'``, ``'sum'``, ``'mean'`` (or a member); ValueError else."""
        if isinstance(value, Reduction):
            return value
        if isinstance(value, str):
            try:
                return cls(value)
            except ValueError:
                pass
        raise ValueError(f"reduction must be one of 'none', 'mean', 'sum'; got {value!r}")


@dataclass(frozen=True)
class Factor:
    """How the per-sample gradients are scaled to match a reduction: factor, divisor last."""

    factor: float  # multiply each per-sample gradient by this ...
    divisor: float  # ... then divide by this (1.0 when there is nothing to divide)

    @property
    def grad_scale(self) -> float:
        """``factor / divisor`` in one number (may overflow: check ``math.isfinite``)."""
        with np.errstate(over="ignore"):
            return float(np.float64(self.factor) / np.float64(self.divisor))

    def apply(self, g: F64) -> F64:
        """``(g * factor) / divisor``: the per-sample gradients `g` scaled, divided last
        (beyond the float64 range: +-inf, as rounded)."""
        with np.errstate(over="ignore", invalid="ignore"):
            out: F64 = (g * self.factor) / self.divisor
        return out


@dataclass(frozen=True)
class Reduced(Factor):
    """A reduced value and how the per-sample gradients are scaled to match it."""

    value: F64  # 0-d for sum/mean, the per-sample shape for none


def divisor(reduction: Reduction, omega: F64 | float, normalizer: float | None) -> float | None:
    """What the summed loss is divided by: 1, the normalizer or the summed weight; None
    for a mean over zero counted samples."""
    if reduction is Reduction.NONE or (reduction is Reduction.SUM and normalizer is None):
        return 1.0
    if normalizer is not None:
        return float(normalizer)
    wsum = float(np.add.reduce(omega, axis=None))  # np.sum's pairwise sum, its wrapper skipped
    return None if wsum == 0.0 else wsum


def factor(
    reduction: Reduction, omega: F64 | float, scale: float, *, normalizer: float | None = None
) -> Factor:
    """The gradient factor of :func:`reduce` for these mean weights, without the losses:
    ``(scale, D)``, or ``(0, 1)`` for a mean over nothing (zero gradient)."""
    if reduction is Reduction.NONE:
        return Factor(scale, 1.0)
    D = divisor(reduction, omega, normalizer)
    return Factor(0.0, 1.0) if D is None else Factor(scale, D)


def reduce(
    loss: F64,
    omega: F64,
    reduction: Reduction,
    scale: float,
    *,
    normalizer: float | None = None,
    empty_mean: float = 0.0,
) -> Reduced:
    """Reduce per-sample losses (nats) by the rule in the module docstring."""
    if reduction is Reduction.NONE:
        return Reduced(scale, 1.0, loss * scale)
    D = divisor(reduction, omega, normalizer)
    total, grow = _total(loss)
    value = scalar(total, scale, D, empty_mean)
    if D is None:  # a mean over nothing: zero gradient
        return Reduced(0.0, 1.0, np.asarray(value))
    # (total * s / D) * 2^64: the power of two applied last is exact unless the result
    # itself overflows (then inf is its correctly rounded value)
    return Reduced(scale, D, np.asarray(value * grow))


# 2^-64 and 2^64: scaling by a power of two is exact (terms below 2^-1010 lose bits, but
# they are below the rounding of any sum that overflowed)
_SHRINK, _GROW = 2.0**-64, 2.0**64


def _total(loss: F64) -> tuple[float, float]:
    """(t, g): the sum of `loss` is t * g.  np.sum's pairwise sum; where it overflows
    although the mean may not (two losses of 1e308: the mean is 1e308, not inf), the
    terms are summed scaled by 2^-64 and g = 2^64."""
    with np.errstate(over="ignore"):  # an overflow is handled here, not warned about
        total = float(np.add.reduce(loss, axis=None))
        if math.isinf(total):
            return float(np.add.reduce(loss * _SHRINK, axis=None)), _GROW
    return total, 1.0


def scalar(total: float, scale: float, D: float | None, empty_mean: float) -> float:
    """The value of a sum or mean from the summed per-sample losses: ``total * scale / D``
    (divided last), or for a mean over nothing (``D`` None) `empty_mean`, NaN staying NaN.

    In Python floats (IEEE double, as np.float64): an overflow is inf without a warning
    (a subnormal divisor: the true mean overflows) and needs no np.errstate, which costs
    microseconds a call.  The torch layer's CPU operator uses this rule on the host too.
    """
    t = total * scale
    if D is None:
        return math.nan if math.isnan(t) else empty_mean
    return t / D
