"""Loss modules: subclasses of torch's, whose forward calls :mod:`crossentropy.torch.functional`.

They take the same constructor arguments as torch's modules (so state dicts, ``isinstance``
checks and ``repr`` are unchanged) plus the keyword-only options ``base``, ``z_loss``,
``softcap`` where they apply, and ``impl`` (see :func:`crossentropy.torch.cross_entropy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from crossentropy.torch import functional as F
from crossentropy.torch._compat import torch_too_old

__all__ = ["BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "LinearCrossEntropyLoss"]


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """:class:`torch.nn.CrossEntropyLoss` computed by :func:`crossentropy.torch.cross_entropy`.

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> loss = cet.CrossEntropyLoss(base=2)
    >>> float(loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1])))
    1.0
    """

    def __init__(
        self,
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
        impl: str = "auto",
    ) -> None:
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.base, self.z_loss, self.softcap, self.impl = base, z_loss, softcap, impl

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        out: Tensor = F.cross_entropy(
            input, target, self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing, base=self.base,
            z_loss=self.z_loss, softcap=self.softcap, impl=self.impl,
        )
        return out


class BCELoss(torch.nn.BCELoss):
    """:class:`torch.nn.BCELoss` computed by :func:`binary_cross_entropy`: each log clamped
    at ``log_clamp`` (-100, torch's; value and gradient equal to torch's), or the exact
    form with ``log_clamp=None``.

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> float(cet.BCELoss()(torch.tensor([0.5]), torch.tensor([1.0])))  # ln 2
    0.693147
    >>> float(cet.BCELoss()(torch.tensor([0.0]), torch.tensor([1.0])))  # -max(log 0, -100)
    100.0
    >>> float(cet.BCELoss(log_clamp=None)(torch.tensor([0.0]), torch.tensor([1.0])))
    inf
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        *,
        base: float | None = None,
        log_clamp: float | None = -100.0,
        impl: str = "auto",
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction)
        self.base, self.log_clamp, self.impl = base, log_clamp, impl

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(
            input, target, self.weight, reduction=self.reduction, base=self.base,
            log_clamp=self.log_clamp, impl=self.impl,
        )


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    """:class:`torch.nn.BCEWithLogitsLoss` with no underflow
    (:func:`binary_cross_entropy_with_logits`).

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> float(cet.BCEWithLogitsLoss(base=2)(torch.tensor([0.0]), torch.tensor([1.0])))
    1.0
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
        *,
        base: float | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__(weight, size_average, reduce, reduction, pos_weight)
        self.base, self.impl = base, impl

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(
            input, target, self.weight, reduction=self.reduction,
            pos_weight=self.pos_weight, base=self.base, impl=self.impl,
        )


if TYPE_CHECKING or hasattr(torch.nn, "LinearCrossEntropyLoss"):
    _TorchLinearCrossEntropyLoss = torch.nn.LinearCrossEntropyLoss
else:

    class _TorchLinearCrossEntropyLoss(torch.nn.Module):
        """torch < 2.13 has no LinearCrossEntropyLoss: the class imports, constructing it
        raises the error that names the release to install."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            raise torch_too_old("LinearCrossEntropyLoss", "LinearCrossEntropyLoss")


class LinearCrossEntropyLoss(_TorchLinearCrossEntropyLoss):
    """:class:`torch.nn.LinearCrossEntropyLoss` computed by the chunked
    :func:`crossentropy.torch.linear_cross_entropy` (the logits are never materialised).

    Examples
    --------
    >>> import torch
    >>> import crossentropy.torch as cet
    >>> _ = torch.manual_seed(0)
    >>> head = cet.LinearCrossEntropyLoss(8, 11)
    >>> loss = head(torch.randn(5, 8), torch.tensor([0, 3, 10, 2, 7]))
    >>> loss.shape
    torch.Size([])
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        *,
        base: float | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        impl: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(in_features, num_classes, **kwargs)
        self.base, self.z_loss, self.softcap, self.impl = base, z_loss, softcap, impl

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        linear_weight = self.linear.weight.reshape(
            (self.num_classes, *self.out_features, self.linear.in_features)
        )
        bias = self.linear.bias
        linear_bias = None if bias is None else bias.reshape((self.num_classes,
                                                               *self.out_features))
        out: Tensor = F.linear_cross_entropy(
            input, linear_weight, target, linear_bias=linear_bias, weight=self.weight,
            reduction=self.reduction, ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing, options=self.options, base=self.base,
            z_loss=self.z_loss, softcap=self.softcap, impl=self.impl,
        )
        return out
