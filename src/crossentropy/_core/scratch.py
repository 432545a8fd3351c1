"""Reusable float64 buffers for a loop over row blocks.

The NumPy path works on row blocks of about 2^15 elements so that its float64 temporaries
stay in cache.  Temporaries of that size (a 32,000-class row is 256 KB) are where glibc's
allocator thrashes: memory freed at the top of the heap beyond the trim threshold goes back
to the system, and the next block's temporaries fault it in again, page by page.  That
alone made the exact float64 path 3-4x slower, and erratically so (the cost depends on the
heap's state).  A :class:`Scratch` made once per public call hands out the same buffers to
every block instead.

It is per call, not global: the core keeps no state.  A buffer taken under a name is
valid until the same name is taken again, so results that must outlive a block are copied
out by the caller (the public functions write each block into their output).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["BLOCK", "Scratch", "row_blocks", "take"]

F64 = npt.NDArray[np.float64]

#: Elements per row block of the NumPy path (its float64 temporaries stay in cache).
BLOCK = 1 << 15


def row_blocks(x2: npt.NDArray[np.generic]) -> list[slice]:
    """Slices of the rows of an (..., C) array (rows: all but the last axis, flattened), of
    about :data:`BLOCK` elements each and at least one row."""
    n = math.prod(x2.shape[:-1])
    step = max(1, BLOCK // max(x2.shape[-1], 1))
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


class Scratch:
    """Named float64 buffers, grown on demand and reused from one row block to the next."""

    def __init__(self) -> None:
        self._bufs: dict[str, F64] = {}

    def take(self, name: str, shape: tuple[int, ...]) -> F64:
        """An uninitialised float64 array of `shape` (C order), the buffer `name` reused."""
        size = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.size < size:
            buf = np.empty(size)
            self._bufs[name] = buf
        return buf[:size].reshape(shape)

    def f64(self, name: str, a: npt.NDArray[np.generic]) -> F64:
        """`a` as float64: `a` itself when it already is, else a copy in the buffer `name`."""
        if a.dtype == np.float64:
            return a  # type: ignore[return-value]
        out = self.take(name, a.shape)
        np.copyto(out, a)
        return out


def take(scratch: Scratch | None, name: str, shape: tuple[int, ...]) -> F64:
    """``scratch.take(name, shape)``, or a fresh array when there is no scratch."""
    return np.empty(shape) if scratch is None else scratch.take(name, shape)
