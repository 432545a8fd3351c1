"""The numba backend: an adapter from validated arrays to the compiled kernels.

Nothing here imports numba at import time: the kernels in ``crossentropy._cpu._kernels`` are
compiled (or loaded from numba's on-disk cache) on the first call that needs them.  Nothing
here validates either: the public functions check every argument, decide with
:func:`crossentropy._backends.use_numba` that the kernels take the call, and hand over
float32/float64 arrays, checked labels and a finite gradient scale.  The adapter only lays
the arrays out as C-contiguous ``(rows, classes)`` and writes results where the caller wants
them.  The kernels are deterministic: the result does not depend on the number of threads
(each row is reduced by one thread in a fixed order).

The per-row entry point of the torch layer's CPU path,
:func:`crossentropy._backends.cross_entropy_rows`, runs :func:`ce_rows_kernel` when the
backend setting allows, else the exact core.

Compiling the kernels ahead of their first call, shared by every process that compiles into
the same cache: :mod:`crossentropy._cpu._compile`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from crossentropy import _config

__all__ = [
    "bce_with_logits",
    "categorical",
    "ce_rows_kernel",
    "index_targets",
    "kernels",
    "logsumexp",
    "sigmoid",
    "softmax",
]

F64 = npt.NDArray[np.float64]
_mod: dict[str, ModuleType] = {}
# the kernels' weight argument when there are no class weights (never read: has_w False);
# one array for every call (a fresh np.ones(1) costs more than a small kernel call; not
# made read-only: numba would compile the kernels again for a read-only array type)
_NO_WEIGHT = np.ones(1)


class _Memory:
    """Holds an array interface for :func:`_kernel_input` (and the array it describes)."""

    __slots__ = ("__array_interface__", "_owner")

    def __init__(self, a: np.ndarray) -> None:
        iface = dict(a.__array_interface__)
        iface["data"] = (iface["data"][0], False)  # (address, read-only flag)
        self.__array_interface__ = iface
        self._owner = a  # the memory stays alive as long as the alias


def _kernel_input(a: np.ndarray) -> np.ndarray:
    """`a` itself, or for a read-only array a writable alias of the same memory.

    numba types a read-only array apart from a writable one and compiles every kernel again
    for it (5-20 s each, at the first call, with the caller waiting) although the kernels
    never write their inputs.  Read-only arrays are common: pyarrow's ``to_numpy``,
    ``np.frombuffer``, read-only memory maps, ``np.broadcast_to``.  The alias lets the
    signatures :func:`compile_all` cached take them (nothing writes through it).
    """
    if a.flags.writeable:
        return a
    return np.asarray(_Memory(a))


def kernels() -> ModuleType:
    """Import (on first use) the numba kernels.  (Their threads are Python threads,
    ``_cpu._pool``, sized by ``ce.set_num_threads`` at each call: numba's threading layer,
    whose OpenMP start set the OpenMP thread count torch shares, is never started.)"""
    mod = _mod.get("k")
    if mod is None:
        # lazy: importing the kernels imports numba (about 0.5 s)
        from crossentropy._cpu import _kernels

        mod = _mod["k"] = _kernels
    pool = getattr(mod, "_pool", None)  # (the kernel files of old commits lack it: bench/)
    if pool is not None:
        pool.requested = _config.get_num_threads()
    return mod


# --------------------------------------------------------------------------- layout


def _rows_of(a: np.ndarray, axis: int | None) -> tuple[np.ndarray, bool]:
    """``(x2, direct)``: `a` as C-contiguous (rows, classes) with the class axis last.

    `axis` is normalised (or None: all elements form one row).  `direct` is True when x2 is
    a view of `a` in `a`'s own order, so that an output of `a`'s shape and C order can be
    written through the same reshape.
    """
    if axis is None:
        return np.ascontiguousarray(a).reshape(1, -1), a.flags.c_contiguous
    xm = np.moveaxis(a, axis, -1)
    direct = axis == a.ndim - 1 and a.flags.c_contiguous
    return np.ascontiguousarray(xm).reshape(-1, xm.shape[-1]), direct


def _moved_back(r2: np.ndarray, shape: tuple[int, ...], ax: int | None) -> np.ndarray:
    """Undo :func:`_rows_of` for a result with the input's shape."""
    if ax is None:
        return r2.reshape(shape)
    moved = list(shape)
    moved.append(moved.pop(ax))
    return np.moveaxis(r2.reshape(moved), -1, ax)


def _result_buffer(x2: np.ndarray, x: np.ndarray, out: Any, direct: bool) -> tuple[Any, bool]:
    """Where a kernel writes an (N, C) result: `out` itself when its layout allows, our own
    copy `x2` when it is one, else a new array.  Returns ``(buffer, written_into_out)``."""
    if out is not None and direct and out.flags.c_contiguous:
        return out.reshape(x2.shape), True
    if not np.may_share_memory(x2, x):
        return x2, False  # x2 is our own copy (class axis moved): overwrite it
    return np.empty_like(x2), False


def _stream(k: ModuleType, buf: np.ndarray, x2: np.ndarray, into_out: bool) -> bool:
    """Non-temporal stores for a result: into a large caller's buffer, or (the kernels'
    own rule) over the input itself; never into an array just allocated."""
    if into_out:
        return bool(buf.flags.c_contiguous and buf.nbytes >= k._STREAM_MIN_BYTES)
    return bool(k._streams(buf, x2))


def _place(buf: np.ndarray, x: np.ndarray, ax: int | None, out: Any, into_out: bool) -> Any:
    if into_out:
        return out
    res = _moved_back(buf, x.shape, ax)
    if out is not None:
        np.copyto(out, res)
        return out
    return res[()] if res.ndim == 0 else res


# --------------------------------------------------------------------------- softmax family


def softmax(x: np.ndarray, axis: int | None, *, log: bool, out: Any = None) -> Any:
    """softmax / log_softmax of a float32/float64 array with at least one element."""
    x2, direct = _rows_of(x, axis)
    k = kernels()
    buf, into_out = _result_buffer(x2, x, out, direct)
    # the caller's `out` is a buffer already in use: large results are written with
    # non-temporal stores (no read of each line before it is overwritten)
    k.softmax_rows_into(_kernel_input(x2), x.dtype == np.float64, log, buf, k._chunks(x2.shape[0]),
                        _stream(k, buf, x2, into_out))
    return _place(buf, x, axis, out, into_out)


def logsumexp(x: np.ndarray, axis: int | None) -> F64:
    """float64 log-sum-exp of the rows (rows with at least one class), shape (rows,)."""
    x2, _ = _rows_of(x, axis)
    k = kernels()
    res = np.empty(x2.shape[0])
    k.logsumexp_rows(_kernel_input(x2), x.dtype == np.float64, res, k._chunks(x2.shape[0]))
    return res


def sigmoid(x: np.ndarray, *, log: bool, return_grad: bool, out: Any = None) -> Any:
    """sigmoid / log_sigmoid (and derivative) elementwise by the kernels."""
    k = kernels()
    flat = np.ascontiguousarray(x).reshape(-1)
    direct = out is not None and out.flags.c_contiguous
    o = out.reshape(-1) if direct else np.empty_like(flat)
    d = np.empty_like(flat) if return_grad else np.empty(0, dtype=x.dtype)
    k.sigmoid_flat(_kernel_input(flat), o, d, return_grad, log)
    if out is not None:
        if not direct:
            np.copyto(out, o.reshape(x.shape))
        val: Any = out
    else:
        val = o.reshape(x.shape)
        val = val[()] if val.ndim == 0 else val
    if return_grad:
        dd = d.reshape(x.shape)
        return val, dd[()] if dd.ndim == 0 else dd
    return val


# --------------------------------------------------------------------------- cross-entropy


def index_targets(target: np.ndarray, num_classes: int, ignore_index: int) -> tuple[int, int]:
    """(first position of a target outside [0, C) that is not ignore_index, or -1; the
    number of targets other than ignore_index), by the kernel of one pass."""
    t = np.ascontiguousarray(target, dtype=np.int64)
    bad, counted = kernels().index_targets(_kernel_input(t), int(num_classes), int(ignore_index))
    return int(bad), int(counted)


def ce_rows_kernel(
    x2: np.ndarray,
    target: np.ndarray,
    weight: F64 | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad: np.ndarray | None,
    grad_scale: float,
    stream: bool | None = None,
) -> tuple[F64, F64]:
    """The numba kernel on (N, C) rows; `stream` (None: the kernels' own rule) chooses
    non-temporal stores for the gradient."""
    N = x2.shape[0]
    k = kernels()
    loss = np.empty(N)
    lse = np.empty(N)
    g = grad if grad is not None else np.empty((1, 1), dtype=x2.dtype)
    w = np.ascontiguousarray(weight, dtype=np.float64) if weight is not None else _NO_WEIGHT
    # the part count only matters where the kernel runs in parallel (k._chunks reads the
    # thread setting: a microsecond, more than a small kernel call's own work).
    # (getattr: the kernel files of old commits that bench/cpu.py --kernels loads lack it.)
    serial = getattr(k, "_serial", None)
    nchunks = 1 if serial is not None and serial(x2) else k._chunks(N)
    args = (
        _kernel_input(x2), _kernel_input(np.ascontiguousarray(target, dtype=np.int64)),
        _kernel_input(w), weight is not None,
        int(ignore_index), float(label_smoothing), float(z_loss),
        float(softcap) if softcap is not None else 0.0, g, grad is not None,
        float(grad_scale), x2.dtype == np.float64, loss, lse, nchunks,
    )
    if stream is None:  # the kernels' own rule (k.ce_rows), without its extra call
        rule = getattr(k, "_streams", None)  # (old kernel files: see above)
        if rule is None:
            k.ce_rows(*args)
            return loss, lse
        stream = grad is not None and rule(g, x2)
    k.ce_rows_into(*args, stream and grad is not None)
    return loss, lse


def categorical(
    x: np.ndarray,
    axis: int,
    labels: np.ndarray,
    counted: np.ndarray,
    weight: F64 | None,
    *,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad_out: Any,
    want_grad: bool,
    grad_scale: float,
) -> tuple[F64, Any]:
    """Per-row loss (the row shape) of index targets, and the gradient times `grad_scale`
    in `x`'s layout (written into `grad_out` when given)."""
    x2, direct = _rows_of(x, axis)
    t = np.where(counted, labels, -1).reshape(-1)
    buf = None
    into_out = False
    if want_grad:
        buf, into_out = _result_buffer(x2, x, grad_out, direct)
    stream = buf is not None and _stream(kernels(), buf, x2, into_out)
    loss, _ = ce_rows_kernel(x2, t, weight, -1, label_smoothing, z_loss, softcap, buf,
                             grad_scale, stream=stream)
    rows = counted.shape
    if buf is None:
        return loss.reshape(rows), None
    return loss.reshape(rows), _place(buf, x, axis, grad_out, into_out)


def bce_with_logits(
    x: np.ndarray,
    y: np.ndarray,
    pos_weight: float,
    label_smoothing: float,
    *,
    per_element: bool,
    grad: np.ndarray | None,
    grad_scale: float,
) -> F64:
    """Binary cross-entropy with logits by the kernels: the per-element losses (flat,
    ``per_element``) or per-block partial sums, and ``grad_scale * dloss/dx`` into `grad`
    (a flat C-contiguous array of x's dtype)."""
    k = kernels()
    xf = np.ascontiguousarray(x).reshape(-1)
    yf = np.ascontiguousarray(y).reshape(-1)
    n = xf.size
    loss = np.empty(n) if per_element else np.empty(0)
    g = grad if grad is not None else np.empty(0, dtype=x.dtype)
    partial = np.empty((n + k._BLOCK - 1) // k._BLOCK)
    k.bce_logits_flat(_kernel_input(xf), _kernel_input(yf), pos_weight, label_smoothing,
                      per_element, loss, grad is not None, g, grad_scale, partial)
    return loss if per_element else partial
