"""Triton's interpreter for a test module: ``enter()`` at the top of the module, before
torch and triton are imported there, and the ``interpreter`` fixture (module scope).

The interpreter mode is fixed when triton is first imported (its own ``@triton.jit``
helpers such as ``tl.max`` are decorated then): if another module of the same worker
imported triton in compiled mode already, a fresh copy is imported in interpreter mode.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator

import numpy as np

_OLD = os.environ.get("TRITON_INTERPRET")


def enter() -> None:
    """Set ``TRITON_INTERPRET=1`` and drop a compiled-mode triton already imported."""
    os.environ["TRITON_INTERPRET"] = "1"
    if "triton" in sys.modules:
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction

        if not isinstance(tl.standard.max, InterpretedFunction):
            for name in [m for m in sys.modules if m == "triton" or m.startswith("triton.")]:
                del sys.modules[name]
            sys.modules.pop("crossentropy.triton._kernels", None)


def restore() -> None:
    if _OLD is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _OLD


def interpreting() -> Iterator[None]:
    """Fixture body: TRITON_INTERPRET=1 while the module runs, the kernels module in
    interpreter mode, and no ``inf - inf``, ``0 * inf``, ``x / 0`` or overflow inside a
    kernel (underflow is legitimate)."""
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime.interpreter import InterpretedFunction

    kernels = sys.modules.get("crossentropy.triton._kernels")
    if kernels is not None and not isinstance(kernels.ce_fwd_kernel, InterpretedFunction):
        importlib.reload(kernels)
    with np.errstate(invalid="raise", divide="raise", over="raise"):
        try:
            yield
        finally:
            restore()
