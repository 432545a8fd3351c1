"""The validated options of a loss, built once at each public boundary.

Every path (the NumPy core, the numba kernels, the torch layer, the Triton kernels and the
vocabulary-parallel loss) receives one :class:`CrossEntropyOptions` (or
:class:`BinaryOptions`) and never re-validates it.  The objects are frozen, hashable and
made only of Python scalars, so they can be keys of caches, constants in a traced graph,
and can cross a ``torch.library`` custom op as a flat tuple (:meth:`to_tuple` /
:meth:`from_tuple`).

Two semantic switches record where the NumPy core and PyTorch differ (see the README):

* ``empty_mean``: the value of a mean over zero counted targets -- ``0.0`` in the core
  (the batch carries no signal), ``nan`` in ``torch.nn.functional``;
* ``prob_mean``: what a mean over *probability* targets divides by -- ``"weight"`` (the
  summed weight of the unsmoothed targets, identical to index targets) in the core,
  ``"rows"`` (the number of rows) in torch.

``normalizer`` (when not None) replaces the mean's divisor: the summed loss is divided by
it (for example the global number of target tokens across gradient-accumulation steps
and data-parallel ranks).  It requires ``reduction='sum'`` or ``'mean'`` and wins over both.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Any, Literal

from crossentropy._core.reduce import Reduction
from crossentropy._validate import check_ignore_index, check_unit_interval, log_scale

__all__ = ["BinaryOptions", "CrossEntropyOptions", "Reduction"]


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return float(value)


def _check_z_loss(z_loss: Any) -> float:
    zl = _real(z_loss, "z_loss")
    if not (math.isfinite(zl) and zl >= 0.0):
        raise ValueError(f"z_loss must be a finite number >= 0, got {z_loss!r}")
    return zl


def _check_softcap(softcap: Any) -> float | None:
    if softcap is None:
        return None
    cap = _real(softcap, "softcap")
    if not (math.isfinite(cap) and cap > 0.0):
        raise ValueError(f"softcap must be None or a finite number > 0, got {softcap!r}")
    return cap


def _check_normalizer(normalizer: Any, reduction: Reduction) -> float | None:
    if normalizer is None:
        return None
    n = _real(normalizer, "normalizer")
    if not (math.isfinite(n) and n > 0.0):
        raise ValueError(f"normalizer must be a finite number > 0, got {normalizer!r}")
    if reduction is Reduction.NONE:
        raise ValueError("normalizer divides a summed loss: it needs reduction='sum' or 'mean'")
    return n


@dataclass(frozen=True)
class CrossEntropyOptions:
    """Options of a categorical cross-entropy (index or probability targets).

    Build with :meth:`create`, which validates every field and raises ``TypeError`` /
    ``ValueError`` naming the argument.  Class weights are arrays and travel beside the
    options, not in them.
    """

    reduction: Reduction = Reduction.MEAN
    ignore_index: int | None = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    scale: float = 1.0  # 1 / ln(base): 1.0 for nats
    normalizer: float | None = None
    empty_mean: float = 0.0  # 0.0 (core) or nan (torch)
    prob_mean: Literal["weight", "rows"] = "weight"

    @classmethod
    def create(
        cls,
        *,
        reduction: Any = "mean",
        ignore_index: Any = -100,
        label_smoothing: Any = 0.0,
        z_loss: Any = 0.0,
        softcap: Any = None,
        base: Any = None,
        normalizer: Any = None,
        semantics: Literal["core", "torch"] = "core",
    ) -> CrossEntropyOptions:
        """Validate the public arguments and build the options.

        >>> o = CrossEntropyOptions.create(reduction="sum", base=2, label_smoothing=0.1)
        >>> o.reduction, o.label_smoothing, round(o.scale, 6)
        (<Reduction.SUM: 'sum'>, 0.1, 1.442695)
        >>> CrossEntropyOptions.create(z_loss=-1.0)
        Traceback (most recent call last):
        ...
        ValueError: z_loss must be a finite number >= 0, got -1.0
        """
        red = Reduction.of(reduction)
        if semantics not in ("core", "torch"):
            raise ValueError(f"semantics must be 'core' or 'torch', got {semantics!r}")
        torch_like = semantics == "torch"
        return cls(
            reduction=red,
            ignore_index=check_ignore_index(ignore_index),
            label_smoothing=check_unit_interval(label_smoothing, "label_smoothing"),
            z_loss=_check_z_loss(z_loss),
            softcap=_check_softcap(softcap),
            scale=log_scale(base),
            normalizer=_check_normalizer(normalizer, red),
            empty_mean=math.nan if torch_like else 0.0,
            prob_mean="rows" if torch_like else "weight",
        )

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields as a flat tuple of Python scalars (reduction as its string)."""
        return tuple(
            getattr(self, f.name).value if f.name == "reduction" else getattr(self, f.name)
            for f in fields(self)
        )

    @classmethod
    def from_tuple(cls, values: tuple[Any, ...] | list[Any]) -> CrossEntropyOptions:
        """Inverse of :meth:`to_tuple` (no validation: the tuple came from an instance).

        >>> o = CrossEntropyOptions.create(ignore_index=None, softcap=30.0)
        >>> CrossEntropyOptions.from_tuple(o.to_tuple()) == o
        True
        """
        kw = {f.name: v for f, v in zip(fields(cls), values, strict=True)}
        kw["reduction"] = Reduction(kw["reduction"])
        return cls(**kw)


@dataclass(frozen=True)
class BinaryOptions:
    """Options of a binary cross-entropy (elementwise labels in [0, 1]).

    Elementwise ``weight`` and ``pos_weight`` are arrays and travel beside the options.
    A mean averages over all elements (as PyTorch and Keras); with no elements it is 0.0
    in the core (``empty_mean``) and NaN in torch.
    """

    reduction: Reduction = Reduction.MEAN
    label_smoothing: float = 0.0
    scale: float = 1.0
    normalizer: float | None = None
    empty_mean: float = 0.0

    @classmethod
    def create(
        cls,
        *,
        reduction: Any = "mean",
        label_smoothing: Any = 0.0,
        base: Any = None,
        normalizer: Any = None,
        semantics: Literal["core", "torch"] = "core",
    ) -> BinaryOptions:
        """Validate the public arguments and build the options.

        >>> BinaryOptions.create(reduction="none", base=10).reduction
        <Reduction.NONE: 'none'>
        """
        red = Reduction.of(reduction)
        if semantics not in ("core", "torch"):
            raise ValueError(f"semantics must be 'core' or 'torch', got {semantics!r}")
        return cls(
            reduction=red,
            label_smoothing=check_unit_interval(label_smoothing, "label_smoothing"),
            scale=log_scale(base),
            normalizer=_check_normalizer(normalizer, red),
            empty_mean=math.nan if semantics == "torch" else 0.0,
        )
