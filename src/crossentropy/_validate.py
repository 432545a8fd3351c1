"""Argument checks at the public boundary.

Every public function validates and promotes its arguments here, then hands plain
NumPy arrays to a private worker.  Each check raises ``TypeError`` (wrong kind of
argument) or ``ValueError`` (right kind, bad value) with a message that names the
argument and, for labels, the first bad position.  ``assert`` is never used for
user input.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import numpy.typing as npt

#: Floating dtypes that are computed natively (results keep the input dtype).
_FLOAT_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def as_float_array(x: Any, name: str) -> tuple[npt.NDArray[np.float64], np.dtype[Any]]:
    """Return ``(x64, out_dtype)``: `x` as a float64 array, and the dtype of the result.

    float16/float32/float64 inputs keep their dtype in the result (they are computed in
    float64 internally, then rounded once).  Integers (Python ints, lists of ints, integer
    arrays) are promoted to float64, as NumPy and SciPy do.  Booleans, complex numbers,
    strings and objects are rejected: a boolean array of logits is almost always a bug.
    """
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array of real numbers: {exc}") from None
    kind = arr.dtype.kind
    if kind == "f":
        if arr.dtype not in _FLOAT_DTYPES:  # longdouble
            raise TypeError(
                f"{name} has dtype {arr.dtype}; supported float dtypes are float16, float32 "
                "and float64"
            )
        return arr.astype(np.float64, copy=False), arr.dtype
    if kind in "iu":
        return arr.astype(np.float64), np.dtype(np.float64)
    if kind == "b":
        raise TypeError(f"{name} must be real numbers, not booleans (got dtype bool)")
    raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")


def real_array(x: Any, name: str) -> tuple[np.ndarray, np.dtype[Any]]:
    """Return ``(arr, out_dtype)``: `x` as an ndarray that is float16/32/64 (integers are
    promoted to float64; no other copy is made), and the dtype of the result.

    Raises as :func:`as_float_array` does for booleans, complex numbers, strings, objects
    and longdouble.
    """
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array of real numbers: {exc}") from None
    if arr.dtype in _FLOAT_DTYPES:
        return arr, arr.dtype
    x64, dtype = as_float_array(arr, name)
    return x64, dtype


def check_out(out: Any, shape: tuple[int, ...], dtype: Any, name: str = "out") -> None:
    """`out` must be a writable ndarray of the result's shape and dtype."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != np.dtype(dtype):
        raise ValueError(
            f"{name} must have shape {tuple(shape)} and dtype {np.dtype(dtype)}; got shape "
            f"{out.shape} and dtype {out.dtype}"
        )
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")


def write_out(result: Any, out: Any, name: str = "out") -> Any:
    """Return `result`, or copy it into the caller's `out` array and return that."""
    if out is None:
        return result
    check_out(out, np.shape(result), np.asarray(result).dtype, name)
    np.copyto(out, result)
    return out


def result_dtype(*dtypes: np.dtype[Any]) -> np.dtype[Any]:
    """The widest of the float dtypes of the inputs (float16 < float32 < float64)."""
    return max(dtypes, key=lambda d: d.itemsize)


def cast_out(x: npt.NDArray[np.float64], dtype: np.dtype[Any]) -> Any:
    """Round a float64 result once to `dtype`; 0-d results become NumPy scalars."""
    if x.dtype == dtype:  # nothing to round (np.errstate alone costs about 2 us)
        out = x
    else:
        with np.errstate(over="ignore"):  # beyond the range of `dtype`: +-inf, rounded
            out = x.astype(dtype, copy=False)
    return out[()] if out.ndim == 0 else out


def check_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """Normalise an integer axis; raise a ValueError naming it when out of bounds."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {axis!r}")
    if ndim == 0:
        raise ValueError(
            f"{name}={axis} is out of bounds for a 0-d input; a class axis is needed "
            "(softmax-like functions accept axis=None to use all elements)"
        )
    ax = int(axis)
    if not -ndim <= ax < ndim:
        raise ValueError(f"{name}={ax} is out of bounds for an input with {ndim} dimensions")
    return ax % ndim


def log_scale(base: Any) -> float:
    """Return the factor 1/ln(base) that turns nats into units of `base` (1.0 for None)."""
    if base is None:
        return 1.0
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(f"base must be a real number (2 for bits, e for nats), got {base!r}")
    b = float(base)
    if not math.isfinite(b) or b <= 0.0 or b == 1.0:
        raise ValueError(f"base must be a finite positive number other than 1, got {base!r}")
    if b == math.e:
        return 1.0
    return 1.0 / math.log(b)


def check_unit_interval(value: Any, name: str) -> float:
    """A scalar in [0, 1] (label smoothing)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {value!r}")
    v = float(value)
    if not 0.0 <= v <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    return v


def first_index(mask: npt.NDArray[np.bool_]) -> tuple[int, ...]:
    """Multi-index of the first True element of `mask` (C order)."""
    flat = int(np.flatnonzero(mask.ravel())[0])
    return tuple(int(i) for i in np.unravel_index(flat, mask.shape))


def where_str(index: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(i) for i in index) + "]"


def check_probabilities(p: npt.NDArray[np.float64], name: str) -> None:
    """Probabilities must lie in [0, 1]; NaN passes through (it propagates to the result)."""
    bad = (p < 0.0) | (p > 1.0)
    if bad.any():
        idx = first_index(bad)
        raise ValueError(f"{name} must lie in [0, 1]; {name}{where_str(idx)} = {p[idx]!r}")


def row_sum_tolerance(num_classes: int, dtype: np.dtype[Any]) -> float:
    """Tolerance on |sum(row) - 1| for probability rows.

    Rows are accepted when they sum to 1 within ``max(num_classes, 16) * eps`` of the
    array's own dtype: enough for rows produced by a softmax in that precision (each term
    carries at most about one rounding), far below any real mistake.
    """
    return max(num_classes, 16) * float(np.finfo(dtype).eps)


def precision_dtype(p: npt.NDArray[np.float64], dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The precision the values of `p` were computed in: float32 when `dtype` is float64 but
    every value is a float32 number (a float32 softmax cast to float64), else `dtype`."""
    if dtype != np.float64 or p.size == 0:
        return dtype
    with np.errstate(over="ignore", invalid="ignore"):
        narrow = p.astype(np.float32)
        if np.array_equal(narrow.astype(np.float64), p, equal_nan=True):
            return np.dtype(np.float32)
    return dtype


def check_tolerance(tol: Any) -> float | None:
    """A probability-row tolerance: None (automatic) or a finite number >= 0."""
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"prob_tol must be None or a real number >= 0, got {tol!r}")
    t = float(tol)
    if not (math.isfinite(t) and t >= 0.0):
        raise ValueError(f"prob_tol must be None or a finite number >= 0, got {tol!r}")
    return t


def check_rows_sum_to_one(
    p: npt.NDArray[np.float64],
    axis: int,
    dtype: np.dtype[Any],
    name: str,
    tol: float | None = None,
) -> None:
    """Rows along `axis` must sum to 1 within `tol` (None: :func:`row_sum_tolerance` of the
    precision the values were computed in, see :func:`precision_dtype`); never renormalised.
    """
    # An axis of length 0 sums to 0, so rows with no classes are rejected too.
    given = tol is not None
    if tol is None:
        prec = precision_dtype(p, dtype)
        tol = row_sum_tolerance(p.shape[axis], prec)
    err = np.abs(np.sum(p, axis=axis) - 1.0)
    bad = err > tol  # NaN rows are not flagged: NaN propagates to their result
    if bad.any():
        idx = first_index(bad)
        total = float(np.sum(p, axis=axis)[idx])
        if given:
            raise ValueError(
                f"rows of {name} must sum to 1 (tolerance {tol:.3g}, from prob_tol=); the row "
                f"at {where_str(idx)} sums to {total!r}"
            )
        raise ValueError(
            f"rows of {name} must sum to 1 (tolerance {tol:.3g}: max(C, 16) {prec.name} "
            f"epsilons, the default of prob_tol=); the row at {where_str(idx)} sums to "
            f"{total!r}; to accept rounded probabilities pass prob_tol= (the largest "
            "|row sum - 1| to allow), or divide each row by its sum"
        )


def as_labels(
    labels: Any,
    num_classes: int,
    name: str = "target",
    ignore_index: int | None = None,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.bool_]]:
    """Validate class indices; return ``(labels_as_intp, counted_mask)``.

    Integer arrays are taken as they are; float arrays are accepted when every value is a
    whole number (``1.0`` but not ``1.5``).  Labels equal to `ignore_index` are masked out
    (and replaced by 0 so that they can index safely).  Anything else outside
    ``[0, num_classes)`` raises, naming the first bad position.
    """
    try:
        arr = np.asarray(labels)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{name} must be an array of integer class indices: {exc}") from None
    kind = arr.dtype.kind
    if kind == "b":
        raise TypeError(f"{name} must hold integer class indices, not booleans")
    if kind == "f":
        arr = arr.astype(np.float64)  # float16 cannot hold the 2**62 bound below
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            idx = first_index(bad)
            raise ValueError(
                f"{name} must hold whole-number class indices; {name}{where_str(idx)} = "
                f"{arr[idx]!r}"
            )
        if arr.size and (np.abs(arr) > 2.0**62).any():
            idx = first_index(np.abs(arr) > 2.0**62)
            raise ValueError(
                f"{name}{where_str(idx)} = {arr[idx]!r} is out of range [0, {num_classes})"
            )
        arr = arr.astype(np.int64)
    elif kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    counted = np.ones(arr.shape, dtype=bool) if ignore_index is None else arr != ignore_index
    bad = counted & ((arr < 0) | (arr >= num_classes))
    if bad.any():
        idx = first_index(bad)
        hint = "" if ignore_index is None else f" (and is not ignore_index={ignore_index})"
        raise ValueError(
            f"{name}{where_str(idx)} = {int(arr[idx])} is out of range [0, {num_classes}){hint}"
        )
    safe = np.where(counted, arr, 0).astype(np.intp, copy=False)
    return safe, counted


def check_nonnegative(x: Any, name: str) -> npt.NDArray[np.float64]:
    """A float64 array of finite values >= 0 (weights), or a ValueError naming the first bad one."""
    w, _ = as_float_array(x, name)
    bad = ~np.isfinite(w) | (w < 0)
    if bad.any():
        idx = first_index(bad)
        raise ValueError(f"{name} must be finite and >= 0; {name}{where_str(idx)} = {w[idx]!r}")
    return w


def check_ignore_index(ignore_index: Any) -> int | None:
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
        raise TypeError(f"ignore_index must be an integer or None, got {ignore_index!r}")
    return int(ignore_index)


def check_class_weight(weight: Any, num_classes: int) -> npt.NDArray[np.float64] | None:
    """Per-class weights: a 1-d array of `num_classes` finite, non-negative numbers."""
    if weight is None:
        return None
    shape = np.shape(weight)
    if len(shape) != 1 or shape[0] != num_classes:
        raise ValueError(
            f"weight must be a 1-d array with one entry per class ({num_classes}), "
            f"got shape {shape}"
        )
    return check_nonnegative(weight, "weight")


def broadcast_to_shape(
    x: Any, shape: tuple[int, ...], name: str, other: str
) -> npt.NDArray[np.float64]:
    """Broadcast `x` to `shape`, or raise a ValueError naming both arguments."""
    arr = np.asarray(x)
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(
            f"{name} with shape {arr.shape} cannot be broadcast to the shape {shape} of {other}"
        ) from None
