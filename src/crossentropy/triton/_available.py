"""Whether the Triton kernels can run here, and whether they can take a tensor.

The one place that answers it: :func:`is_available`, :func:`supports` and the exception
:class:`TritonUnavailable` that every caller raises with the reason (never a silent
fallback).  Imports without Triton and without torch.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["TritonUnavailable", "is_available", "require", "supports"]


class TritonUnavailable(RuntimeError):
    """The Triton kernels cannot take this call; the message says why.

    >>> issubclass(TritonUnavailable, RuntimeError)
    True
    """


# its public home (what tracebacks and the docs name): the front door re-exports it
TritonUnavailable.__module__ = "crossentropy.triton"


def _triton_reason() -> str | None:
    """None when triton imports and kernels can run here (a GPU or the interpreter)."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    try:
        import triton  # noqa: F401
    except Exception as exc:  # a broken installation
        return f"triton does not import ({type(exc).__name__}: {exc})"
    from crossentropy.triton._launch import interpreting

    if interpreting():
        return None
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on the CPU)"
    return None


def is_available() -> bool:
    """True when the Triton kernels can run here: Triton imports and either a CUDA device
    is present or ``TRITON_INTERPRET=1`` selects the CPU interpreter.

    >>> isinstance(is_available(), bool)
    True
    """
    return _triton_reason() is None


def supports(x: torch.Tensor) -> str | None:
    """None if the kernels can take tensors like `x`, else the reason (one sentence).

    Kernels take float16, bfloat16 and float32 tensors on a CUDA device, or on the CPU
    under ``TRITON_INTERPRET=1``.  float64 is refused: the kernels compute in float32
    (the torch path is exact in float64).

    >>> import torch
    >>> supports(torch.zeros(2, 3, dtype=torch.float64))
    'float64 tensors: the Triton kernels compute in float32'
    """
    import torch

    if x.dtype == torch.float64:
        return "float64 tensors: the Triton kernels compute in float32"  # torch path: exact
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return f"the Triton kernels take float16, bfloat16 or float32 tensors, not {x.dtype}"
    reason = _triton_reason()
    if reason is not None:
        return reason
    from crossentropy.triton._launch import interpreting

    if x.device.type == "cuda":
        return None
    if x.device.type == "cpu" and interpreting():
        return None
    return (
        f"tensors on {x.device} cannot run the Triton kernels "
        "(CUDA, or CPU under TRITON_INTERPRET=1)"
    )


def require(x: torch.Tensor) -> None:
    """Raise :class:`TritonUnavailable` with :func:`supports`'s reason, if it has one."""
    reason = supports(x)
    if reason is not None:
        raise TritonUnavailable(reason)
