"""Argument checks and array layout of the JAX layer: dtypes, axes, masks.

Everything here looks at shapes and dtypes only -- static under ``jit`` -- and never at
values, so no check synchronises with the host.  Errors are ``TypeError`` (wrong kind of
argument) or ``ValueError`` (right kind, bad shape) naming the argument.

The dtype rule: float64 inputs are computed in float64 (which needs ``jax_enable_x64``;
without it JAX itself makes every array float32), float32 in float32, and bfloat16 and
float16 in float32, rounded once to their own dtype at the end.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "Axes",
    "as_float",
    "as_mask",
    "check_axes",
    "compute_dtype",
    "from_rows",
    "to_rows",
]

Array = jax.Array
Axes = tuple[int, ...]

_FLOATS = tuple(jnp.dtype(d) for d in (jnp.bfloat16, jnp.float16, jnp.float32, jnp.float64))


def compute_dtype(dtype: Any) -> np.dtype[Any]:
    """The dtype the arithmetic runs in: float32 for bfloat16, float16 and float32."""
    wide = jnp.dtype(dtype) == jnp.float64
    return np.dtype(np.float64) if wide else np.dtype(np.float32)


def as_float(x: Any, name: str, *, allow_int: bool = False) -> Array:
    """`x` as a JAX array of a float dtype (bfloat16, float16, float32, float64).

    Integers become JAX's default float dtype when `allow_int` (as ``jax.nn`` does for
    activations); else, and always for booleans and complex numbers, ``TypeError``: logits
    of a loss must be floating (as optax requires).
    """
    try:
        arr = jnp.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array of real numbers: {exc}") from None
    dt = arr.dtype
    if jnp.issubdtype(dt, jnp.floating):
        if dt not in _FLOATS:
            raise TypeError(f"{name} has dtype {dt}; supported float dtypes are bfloat16, "
                            "float16, float32 and float64")
        return arr
    if jnp.issubdtype(dt, jnp.integer) and allow_int:
        return arr.astype(jnp.result_type(float))
    if dt == jnp.bool_:
        raise TypeError(f"{name} must be real numbers, not booleans (got dtype bool)")
    raise TypeError(f"{name} must be a floating-point array, got dtype {dt}")


def check_axes(axis: Any, ndim: int, name: str = "axis") -> Axes | None:
    """Normalise `axis`: an int, a tuple of ints (the axes taken together as one, as SciPy
    does), or None (every axis).  Returns the sorted axes, or None for all."""
    if axis is None:
        return None
    items = axis if isinstance(axis, tuple) else (axis,)
    if not items:
        raise ValueError(f"{name}=() names no axis; pass None to use every axis")
    out = []
    for a in items:
        if isinstance(a, bool) or not isinstance(a, (int, np.integer)):
            raise TypeError(f"{name} must be an int, a tuple of ints or None, got {axis!r}")
        if not -ndim <= int(a) < ndim:
            raise ValueError(f"{name}={axis} is out of range for an array with {ndim} "
                             f"dimension(s)")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        raise ValueError(f"{name}={axis} repeats an axis")
    return tuple(sorted(out))


def to_rows(x: Array, axes: Axes | None) -> Array:
    """`x` with the axes in `axes` (None: all) moved last and flattened into one."""
    if axes is None:
        return x.reshape(1, x.size) if x.ndim != 1 else x.reshape(1, -1)
    if axes == (x.ndim - 1,):
        return x
    k = len(axes)
    moved = jnp.moveaxis(x, axes, tuple(range(x.ndim - k, x.ndim)))
    classes = math.prod(moved.shape[x.ndim - k :])
    return moved.reshape(*moved.shape[: x.ndim - k], classes)


def from_rows(y: Array, shape: tuple[int, ...], axes: Axes | None) -> Array:
    """Undo :func:`to_rows` for a result with the input's shape."""
    if axes is None or axes == (len(shape) - 1,):
        return y.reshape(shape)
    k = len(axes)
    rest = [d for i, d in enumerate(shape) if i not in axes]
    moved = y.reshape(*rest, *(shape[a] for a in axes))
    return jnp.moveaxis(moved, tuple(range(len(shape) - k, len(shape))), axes)


def as_mask(where: Any, shape: tuple[int, ...], name: str = "where") -> Array | None:
    """A boolean mask broadcast to `shape` (True: the entry takes part), or None."""
    if where is None:
        return None
    m = jnp.asarray(where)
    if m.dtype != jnp.bool_:
        raise TypeError(f"{name} must be a boolean array, got dtype {m.dtype}")
    try:
        return jnp.broadcast_to(m, shape)
    except ValueError:
        raise ValueError(
            f"{name} with shape {m.shape} cannot be broadcast to the shape {shape}"
        ) from None
