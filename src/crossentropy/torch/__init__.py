"""``crossentropy.torch``: drop-in cross-entropy losses for PyTorch.

Change one import::

    import torch.nn.functional as F        # before
    import crossentropy.torch as F         # after: same calls, exact values, fused kernels

The functions and modules have the signatures and semantics of torch 2.13's (see
:mod:`crossentropy.torch.functional`), with keyword-only extras ``base``, ``z_loss``,
``softcap`` and ``return_lse``.  Importing this module imports torch and registers the
``crossentropy::*`` custom operators (so ``torch.compile`` sees no graph break).
"""

from __future__ import annotations

from torch.nn import LinearCrossEntropyOptions

from crossentropy.torch.functional import (
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
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "LinearCrossEntropyOptions",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
]
