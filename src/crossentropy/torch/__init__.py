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

It imports and runs on torch 2.7 and newer.  Two names need torch 2.13, which added them:
``LinearCrossEntropyOptions`` (torch's own class, looked up when first used) and
``LinearCrossEntropyLoss`` (a subclass of torch's); with an older torch, using either raises
an ImportError naming that release; :func:`linear_cross_entropy` works on every supported torch.

>>> import crossentropy.torch as F
>>> F.relu is __import__("torch").nn.functional.relu
True
"""

from __future__ import annotations

from typing import Any

try:
    import torch.nn as _torch_nn
    import torch.nn.functional as _torch_functional
except ModuleNotFoundError as _exc:
    if (_exc.name or "").partition(".")[0] != "torch":
        raise
    raise ModuleNotFoundError(
        "crossentropy.torch needs PyTorch (torch >= 2.7): pip install torch (on a machine "
        "without a GPU, the CPU wheel: --index-url https://download.pytorch.org/whl/cpu), or "
        'pip install ".[torch]" in a clone of the crossentropy repository', name="torch",
    ) from None

from crossentropy.torch._compat import check_torch, torch_too_old

check_torch()  # before the operators are registered: torch 2.4 fails there, obscurely

from crossentropy.torch._chunks import ChunkPlan  # noqa: E402
from crossentropy.torch.functional import (  # noqa: E402
    LinearCrossEntropyOutput,
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    linear_cross_entropy,
)
from crossentropy.torch.modules import (  # noqa: E402
    BCELoss,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    LinearCrossEntropyLoss,
)
from crossentropy.torch.stats import TokenStats, linear_token_stats, token_stats  # noqa: E402

__all__ = [
    "BCELoss",
    "BCEWithLogitsLoss",
    "ChunkPlan",
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "LinearCrossEntropyOptions",
    "LinearCrossEntropyOutput",
    "TokenStats",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
    "linear_token_stats",
    "token_stats",
]


if not hasattr(_torch_nn, "LinearCrossEntropyOptions"):
    # torch < 2.13: the name stays documented but is not exported (``import *`` skips it)
    __all__.remove("LinearCrossEntropyOptions")


def __getattr__(name: str) -> Any:
    """``LinearCrossEntropyOptions`` is torch's own (2.13 on), looked up when used so that
    the module imports on older torch; every other name we do not define is
    ``torch.nn.functional``'s own."""
    if name == "LinearCrossEntropyOptions":
        try:
            return getattr(_torch_nn, name)
        except AttributeError:
            raise torch_too_old(name, name) from None
    if not name.startswith("__"):
        try:
            return getattr(_torch_functional, name)
        except AttributeError:
            pass
    raise AttributeError(f"module 'crossentropy.torch' has no attribute {name!r}")


def __dir__() -> list[str]:
    ours = {*__all__, "functional", "modules", "stats"}
    names = ours | {n for n in dir(_torch_functional) if not n.startswith("_")}
    return sorted(names)
