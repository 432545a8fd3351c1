"""Which torch releases ``crossentropy.torch`` runs on, and the error for what needs a newer one.

The layers import on every torch from :data:`TORCH_FLOOR` on (the floor that
``pyproject.toml``'s ``torch``, ``triton``, ``transformers`` and ``examples`` extras declare,
and the oldest release the torch tests run on).  A name that exists only because a newer
torch has it (torch 2.13's ``torch.nn.LinearCrossEntropyOptions`` and
``torch.nn.LinearCrossEntropyLoss``, which ours subclasses) is looked up when it is used, and
raises :class:`TorchTooOldError` naming the release that added it.

>>> from crossentropy.torch._compat import NEWER_TORCH
>>> NEWER_TORCH["LinearCrossEntropyOptions"]
'2.13'
"""

from __future__ import annotations

import re

__all__ = ["NEWER_TORCH", "TORCH_FLOOR", "TorchTooOldError", "check_torch", "torch_too_old"]

#: The oldest torch the torch, Triton and transformers layers import and run on: the torch
#: tests pass on 2.7.1.  torch 2.4's ``torch.library.custom_op`` cannot read the operators'
#: postponed annotations (the import fails); torch 2.5's ``torch.compile`` cannot trace
#: ``dataclasses.replace`` (a graph break with ``normalizer=``); the FSDP2 of 2.5 and 2.6
#: cannot run on the CPU, where the distributed tests wrap a model in it.
TORCH_FLOOR = "2.7"

#: ``torch.nn`` names that ``crossentropy.torch`` re-exports or subclasses, with the torch
#: release that added each (torch 2.12.1's wheel has neither; 2.13.0's has both).
NEWER_TORCH = {
    "LinearCrossEntropyOptions": "2.13",
    "LinearCrossEntropyLoss": "2.13",
}


class TorchTooOldError(ImportError):
    """The installed torch lacks a name that a ``crossentropy.torch`` feature needs.

    An ImportError, as ``from torch.nn import LinearCrossEntropyOptions`` raises on that torch.
    """


def _release(version: str) -> tuple[int, int]:
    """(major, minor) of a torch version string ("2.5.1+cu124", "2.13.0a0+git..." too)."""
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def check_torch() -> None:
    """Raise :class:`TorchTooOldError` when the installed torch is older than the floor
    (instead of the error torch 2.4 raises deep inside ``torch.library``).

    >>> check_torch()  # the torch installed here is new enough
    """
    import torch

    if _release(str(torch.__version__)) < _release(TORCH_FLOOR):
        raise TorchTooOldError(
            f"crossentropy.torch needs torch >= {TORCH_FLOOR}; the installed torch is "
            f"{torch.__version__}: upgrade it (pip install 'torch>={TORCH_FLOOR}')"
        )


def torch_too_old(ours: str, name: str) -> TorchTooOldError:
    """The error for ``crossentropy.torch.<ours>``, which needs ``torch.nn.<name>``."""
    import torch

    need = NEWER_TORCH[name]
    return TorchTooOldError(
        f"crossentropy.torch.{ours} needs torch.nn.{name}, which torch {need} added; the "
        f"installed torch is {torch.__version__}: upgrade it (pip install 'torch>={need}'). "
        f"crossentropy.torch.linear_cross_entropy works with any torch >= {TORCH_FLOOR}: pass "
        "chunks=ChunkPlan(rows=...) for the options' batch_chunk_size"
    )
