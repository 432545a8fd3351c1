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

__all__ = [
    "FAST_MIN_SIZE",
    "get_backend",
    "get_num_threads",
    "numba_available",
    "set_backend",
    "set_num_threads",
    "use_backend",
]

#: Under "auto", arrays with at least this many elements go to the numba kernels.
FAST_MIN_SIZE = 2**14
_threads: dict[str, int | None] = {"n": None}  # None: all cores


def set_num_threads(n: int | None) -> None:
    """Threads used by the numba kernels (None: all cores).  Results do not depend on it.

    >>> import crossentropy as ce
    >>> ce.set_num_threads(1); ce.get_num_threads()
    1
    >>> ce.set_num_threads(None)
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)):
        raise TypeError(f"n must be a positive integer or None, got {n!r}")
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive integer or None, got {n!r}")
    _threads["n"] = n


def get_num_threads() -> int | None:
    """The thread count set by :func:`set_num_threads` (None: all cores)."""
    return _threads["n"]


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
        # numba is a dependency of crossentropy (the 'fast' extra is an empty alias now): the
        # package itself is what is missing from this environment
        raise ValueError("backend 'numba' needs numba, which is not installed: pip install numba")
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
