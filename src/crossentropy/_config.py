"""Which CPU backend runs the NumPy-facing functions.

``"auto"`` (the default) sends large inputs to the compiled numba kernels when numba is
installed and keeps small ones (the article's 3-element vectors) on the NumPy reference
path.  ``"numpy"`` forces the exact NumPy reference; ``"numba"`` forces the compiled kernels
for every size (the test suite uses it to run the accuracy tests on the fast path).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

Backend = Literal["auto", "numpy", "numba"]
_BACKENDS: tuple[Backend, ...] = ("auto", "numpy", "numba")
_state: dict[str, Backend] = {"backend": "auto"}

__all__ = ["get_backend", "numba_available", "set_backend", "use_backend"]


def numba_available() -> bool:
    """True when numba can be imported (it is not imported here)."""
    return importlib.util.find_spec("numba") is not None


def get_backend() -> Backend:
    """The current backend name: 'auto', 'numpy' or 'numba'."""
    return _state["backend"]


def set_backend(name: Backend) -> None:
    """Set the CPU backend for this process ('auto', 'numpy' or 'numba')."""
    if name not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {name!r}")
    if name == "numba" and not numba_available():
        raise ValueError("backend 'numba' needs numba: pip install 'crossentropy[fast]'")
    _state["backend"] = name


@contextmanager
def use_backend(name: Backend) -> Iterator[None]:
    """Context manager: run the block with the given backend, then restore the previous one.

    >>> import crossentropy as ce
    >>> with ce.use_backend("numpy"):
    ...     float(ce.softmax([0.0, 0.0])[0])
    0.5
    """
    old = _state["backend"]
    set_backend(name)
    try:
        yield
    finally:
        _state["backend"] = old
