"""Exceptions of ``crossentropy.torch`` that are also the ones torch raises.

A drop-in must raise what torch raises on the same bad input, so that ``except`` clauses
written for torch keep working; this library raises ValueError/TypeError naming the
argument.  Each class here is both: torch's class (RuntimeError for most shape and dtype
checks of its C++ kernels, IndexError for a class index out of bounds) and ours.

>>> issubclass(TorchValueError, RuntimeError) and issubclass(TorchValueError, ValueError)
True
>>> issubclass(TargetIndexError, IndexError) and issubclass(TargetIndexError, ValueError)
True
"""

from __future__ import annotations

__all__ = ["TargetIndexError", "TorchTypeError", "TorchValueError"]


class TorchValueError(ValueError, RuntimeError):
    """A bad shape or value where torch raises RuntimeError (a ValueError here)."""


class TorchTypeError(TypeError, RuntimeError):
    """A bad dtype where torch raises RuntimeError (a TypeError here)."""


class TargetIndexError(ValueError, IndexError):
    """A class index outside ``[0, C)`` that is not ``ignore_index`` (torch: IndexError)."""
