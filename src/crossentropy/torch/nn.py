"""``crossentropy.torch.nn``: a whole ``torch.nn`` whose loss modules are this library's.

Change one import::

    import torch.nn as nn                  # before
    import crossentropy.torch.nn as nn     # after: nn.CrossEntropyLoss() is exact and fused

:class:`CrossEntropyLoss`, :class:`BCELoss`, :class:`BCEWithLogitsLoss` and
:class:`LinearCrossEntropyLoss` are :mod:`crossentropy.torch.modules`' (subclasses of
torch's, so ``isinstance`` checks and state dicts are unchanged); every other name is
``torch.nn``'s own.

>>> import torch
>>> import crossentropy.torch.nn as nn
>>> nn.Linear is torch.nn.Linear
True
>>> nn.CrossEntropyLoss()(torch.rand(5, 0), torch.rand(5, 0))  # no classes: torch's value
tensor(nan)
"""

from __future__ import annotations

from typing import Any

import torch.nn as _torch_nn

from crossentropy.torch.modules import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    LinearCrossEntropyLoss,
)

__all__ = ["BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss", "LinearCrossEntropyLoss"]


def __getattr__(name: str) -> Any:
    """Every name we do not define is ``torch.nn``'s own."""
    if not name.startswith("__"):
        try:
            return getattr(_torch_nn, name)
        except AttributeError:
            pass
    raise AttributeError(f"module 'crossentropy.torch.nn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(__all__) | {n for n in dir(_torch_nn) if not n.startswith("_")})
