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

There is no other copy of this rule: backends never re-validate and never decline a call
they were given.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from crossentropy import _config

__all__ = ["PerformanceHint", "use_numba"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_hinted: list[bool] = []


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
        return True
    if not _hinted:
        _hinted.append(True)
        warnings.warn(
            "crossentropy: numba is not installed, so large arrays run on the exact NumPy "
            "path (several times slower); `pip install numba` enables the fast CPU kernels",
            PerformanceHint,
            stacklevel=3,
        )
    return False
