"""Which implementation computes a call: the exact NumPy core or the numba kernels.

The public functions validate their arguments, lay them out, then ask :func:`use_numba`
once, with the facts that decide it: the array, and whether the kernels cover the call
(``supported``: e.g. index targets, no elementwise weights, a finite gradient scale).  The
answer follows the user's setting (:func:`crossentropy.set_backend`):

* ``"numpy"``: always the core;
* ``"numba"``: the kernels for every float32/float64 call they cover;
* ``"auto"`` (default): the kernels for covered calls on at least ``FAST_MIN_SIZE``
  elements when numba can be imported.  When it cannot, the first large call emits one
  :class:`PerformanceHint` saying how to get the fast path.

**Cold start.**  Compiling the kernels takes several seconds the first time (numba then
caches them on disk, and later processes load them in well under a second).  Under
``"auto"``, when the on-disk cache is empty, the first large call starts compiling in a
background thread and is itself computed by the NumPy core, as are the calls that follow
until the kernels are ready: no call waits for the compiler.  With a warm cache the kernels
are loaded at the first large call.  :func:`warm_up` compiles (or loads) them now and
waits; ``"numba"`` always waits.  Both paths meet the same accuracy bounds, but their last
bits may differ: call :func:`crossentropy.warm_up` at start-up for bitwise-reproducible
runs.

There is no other copy of this rule: backends never re-validate and never decline a call
they were given.
"""

from __future__ import annotations

import glob
import os
import threading
import warnings
from typing import Any

import numpy as np

from crossentropy import _config

__all__ = ["PerformanceHint", "kernels_ready", "use_numba", "warm_up"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_hinted: list[bool] = []
_ready = threading.Event()  # the kernels are compiled (or loaded) in this process
_lock = threading.Lock()
_started: list[threading.Thread] = []


class PerformanceHint(UserWarning):
    """A call ran on the slower NumPy path although a faster one could be installed."""


def use_numba(x: Any, *, supported: bool = True) -> bool:
    """Should this call run on the numba kernels?  `x` is the prediction array."""
    backend = _config.get_backend()
    if backend == "numpy" or not supported:
        return False
    if not isinstance(x, np.ndarray) or x.dtype not in _FLOATS:
        return False
    if backend == "numba":
        return True
    if x.size < _config.FAST_MIN_SIZE:
        return False
    if _config.numba_available():
        return _ready.is_set() or _start_kernels()
    if not _hinted:
        _hinted.append(True)
        warnings.warn(
            "crossentropy: numba is not installed, so large arrays run on the exact NumPy "
            "path (several times slower); `pip install numba` enables the fast CPU kernels",
            PerformanceHint,
            stacklevel=3,
        )
    return False


def _compile() -> None:
    from crossentropy import _cpu

    _cpu.compile_all()
    _ready.set()


def _cache_is_warm() -> bool:
    """Does numba's on-disk cache hold compiled kernels (index files of ``_kernels``)?"""
    # numba writes beside the source (``__pycache__``), or under NUMBA_CACHE_DIR when set
    where = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "_cpu", "__pycache__")
    return bool(glob.glob(os.path.join(where, "**", "_kernels.*.nbi"), recursive=True))


def _start_kernels() -> bool:
    """Under "auto", the first large call: load the kernels now when the cache is warm
    (True: use them), else compile them in the background (False: NumPy meanwhile)."""
    with _lock:
        if _ready.is_set():
            return True
        if _started:
            return False
        if _cache_is_warm():
            _compile()
            return True
        t = threading.Thread(target=_compile, name="crossentropy-compile", daemon=True)
        _started.append(t)
        t.start()
        return False


def kernels_ready() -> bool:
    """True once the numba kernels are compiled or loaded in this process."""
    return _ready.is_set()


def warm_up() -> bool:
    """Compile (or load from numba's cache) the CPU kernels now and wait for them.

    Returns False when numba is not installed (nothing to do).  Call it at start-up to
    keep the first large calls of a process on the compiled kernels (see the module
    notes on cold starts).

    >>> import crossentropy as ce
    >>> ce.warm_up()
    True
    """
    if not _config.numba_available():
        return False
    with _lock:
        thread = _started[0] if _started else None
    if thread is not None:
        thread.join()
    if not _ready.is_set():
        _compile()
    return True
