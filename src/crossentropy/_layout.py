"""Rows with the class axis last: how the NumPy functions lay an array out for a backend.

Every backend works on rows, contiguous, with the classes along the last axis.  Contiguous:
NumPy sums a contiguous last axis pairwise but a strided one term by term, so without the
copy ``axis=k`` would differ (by up to ~sqrt(C) ulp) from moving k last.

* :func:`moved` / :func:`back`: the class axes (one, several taken together as one, or all)
  moved last, and back, for the activations;
* :func:`rows2d` / :func:`from_rows2d`: one class axis, rows flattened to ``(N, C)``, and
  back, for the losses.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["back", "from_rows2d", "moved", "rows2d"]


def moved(x: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    """`x` as contiguous rows with the axes in `axes` (sorted; None: all) flattened into
    the last.

    >>> moved(np.arange(6.0).reshape(2, 3), (0,)).tolist()
    [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    """
    if axes is None:
        return np.ascontiguousarray(x).reshape(1, x.size)
    if axes == (x.ndim - 1,):
        return np.ascontiguousarray(x)  # (moveaxis costs ~3 us)
    k = len(axes)
    m = np.moveaxis(x, axes, tuple(range(x.ndim - k, x.ndim)))
    classes = math.prod(m.shape[x.ndim - k :])
    return np.ascontiguousarray(m).reshape(*m.shape[: x.ndim - k], classes)


def back(y: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...] | None) -> np.ndarray:
    """Undo :func:`moved` for a result with the input's shape."""
    if axes is None or axes == (len(shape) - 1,):
        return y.reshape(shape)
    k = len(axes)
    rest = [d for i, d in enumerate(shape) if i not in axes]
    m = y.reshape(*rest, *(shape[a] for a in axes))
    return np.moveaxis(m, tuple(range(len(shape) - k, len(shape))), axes)


def rows2d(arr: np.ndarray, ax: int) -> np.ndarray:
    """`arr` as (rows, classes), class axis `ax` last, in its own dtype (a view when
    possible)."""
    C = arr.shape[ax]
    m = np.moveaxis(arr, ax, -1)
    return np.ascontiguousarray(m).reshape(math.prod(m.shape[:-1]), C)


def from_rows2d(a2: np.ndarray, shape: tuple[int, ...], ax: int) -> np.ndarray:
    """Undo :func:`rows2d` for an array of the prediction's shape."""
    m = list(shape)
    m.append(m.pop(ax))
    out = np.moveaxis(a2.reshape(m), -1, ax)
    return out[()] if out.ndim == 0 else out
