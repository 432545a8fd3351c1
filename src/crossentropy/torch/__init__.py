"""``crossentropy.torch``: drop-in cross-entropy losses for PyTorch.

Change one import::

    import torch.nn.functional as F        # before
    import crossentropy.torch as F         # after: same calls, exact values, fused kernels

The functions and modules have the signatures and semantics of torch 2.13's (see
:mod:`crossentropy.torch.functional`), with keyword-only extras ``base``, ``z_loss``,
``softcap``, ``return_lse``, ``normalizer``, ``shift`` and ``impl``.  Every other name of
:mod:`torch.nn.functional` is torch's own (``F.relu``, ``F.softmax``, ``F.nll_loss`` ...), so
the module is a whole ``torch.nn.functional``.  Importing it imports torch and registers the
``crossentropy::*`` custom operators (so ``torch.compile`` sees no graph break).

>>> import crossentropy.torch as F
>>> F.relu is __import__("torch").nn.functional.relu
True
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as _torch_functional
from torch.nn import LinearCrossEntropyOptions

from crossentropy.torch._chunks import ChunkPlan
from crossentropy.torch.functional import (
    LinearCrossEntropyOutput,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    linear_cross_entropy,
)
from crossentropy.torch.modules import (
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    LinearCrossEntropyLoss,
)

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "ChunkPlan",
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "LinearCrossEntropyOptions",
    "LinearCrossEntropyOutput",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
]


def __getattr__(name: str) -> Any:
    """Every name we do not define is ``torch.nn.functional``'s own."""
    if not name.startswith("__"):
        try:
            return getattr(_torch_functional, name)
        except AttributeError:
            pass
    raise AttributeError(f"module 'crossentropy.torch' has no attribute {name!r}")


def __dir__() -> list[str]:
    ours = {*__all__, "functional", "modules"}
    names = ours | {n for n in dir(_torch_functional) if not n.startswith("_")}
    return sorted(names)
