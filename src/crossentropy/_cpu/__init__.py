"""Fast CPU kernels (numba), imported lazily, and the low-level row-wise cross-entropy.

Nothing here imports numba at import time: the kernels in ``crossentropy._cpu._kernels``
are compiled (or loaded from numba's on-disk cache) on the first call that needs them.

The public functions (``crossentropy.softmax`` and friends) call :func:`wants` at their
top: under the backend ``"numba"`` every float32/float64 array goes to the kernels, under
``"auto"`` only arrays of at least ``FAST_MIN_SIZE`` elements, and only when numba is
installed.  The kernels are deterministic: the result does not depend on the number of
threads (each row is reduced by one thread in a fixed order).
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from crossentropy import _config
from crossentropy import _validate as v

__all__ = ["cross_entropy_rows", "deliver", "kernels", "wants"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_mod: dict[str, ModuleType] = {}
_have_numba: dict[str, bool] = {}


def kernels() -> ModuleType:
    """Import (on first use) the numba kernels and apply the thread setting."""
    mod = _mod.get("k")
    if mod is None:
        # lazy: importing the kernels imports numba (about 0.5 s)
        from crossentropy._cpu import _kernels

        mod = _mod["k"] = _kernels
    import numba  # already imported by _kernels

    most = int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]
    n = _config.get_num_threads()
    numba.set_num_threads(most if n is None else min(n, most))
    return mod


def wants(x: Any, min_size: int | None = None) -> bool:
    """Should `x` go to the numba kernels under the current backend?

    Only float32/float64 ndarrays qualify (other inputs take the NumPy path, which
    validates and promotes them).
    """
    backend = _config.get_backend()
    if backend == "numpy" or not isinstance(x, np.ndarray) or x.dtype not in _FLOATS:
        return False
    if backend == "numba":
        return True
    limit = _config.FAST_MIN_SIZE if min_size is None else min_size
    return x.size >= limit and _numba_ok()


def _numba_ok() -> bool:
    if "ok" not in _have_numba:
        _have_numba["ok"] = _config.numba_available()
    return _have_numba["ok"]


def cross_entropy_rows(
    logits: npt.NDArray[np.floating],
    target: npt.NDArray[np.integer],
    *,
    weight: npt.NDArray[np.float64] | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad: npt.NDArray[np.floating] | None = None,
    grad_scale: float = 1.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    r"""Per-row cross-entropy from logits and the rows' log-sum-exp, optionally the gradient.

    .. math::

        z = c \tanh(x / c) \text{ (if softcap } c\text{)}, \quad
        \mathrm{lse}_i = \log\sum_c e^{z_{ic}}, \quad
        \ell_i = \sum_c w_c t'_{ic} (\mathrm{lse}_i - z_{ic}) + \zeta\, \mathrm{lse}_i^2

    with :math:`t' = (1-\varepsilon)\,\mathrm{onehot}(y_i) + \varepsilon / C`.

    Parameters
    ----------
    logits : (N, C) float32 or float64, C-contiguous.
    target : (N,) int64 class indices.  Range checks are the caller's job.
    weight : (C,) float64 class weights, or None.
    ignore_index : rows with ``target == ignore_index`` get loss 0 (and gradient 0).
    label_smoothing : :math:`\varepsilon`.
    z_loss : :math:`\zeta`, the coefficient of lse^2 added to each counted row (PaLM z-loss);
        lse is that of the (soft-capped) logits.
    softcap : None or c > 0: logits are replaced by c tanh(logits / c) before everything
        (Gemma 2).
    grad : None (value only) or an (N, C) array of the logits' dtype into which
        ``grad_scale * d loss[i] / d logits[i]`` is written (ignored rows get 0).  It may be
        `logits` itself: the gradient then overwrites the logits, still correctly.
    grad_scale : factor applied to the gradient (e.g. 1 / sum of weights for a mean).

    Returns
    -------
    loss : float64[N]
        Per-row loss in nats, weight, smoothing and z-loss applied; 0 for ignored rows.
    lse : float64[N]
        Log-sum-exp of each row of the (soft-capped) logits, ignored rows included.

    Examples
    --------
    >>> import numpy as np
    >>> from crossentropy._cpu import cross_entropy_rows
    >>> x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    >>> g = np.empty_like(x)
    >>> loss, lse = cross_entropy_rows(x, np.array([2, -100]), grad=g)
    >>> loss
    array([0.40760596, 0.        ])
    >>> lse
    array([3.40760596, 1.09861229])
    >>> g
    array([[ 0.09003057,  0.24472847, -0.33475904],
           [ 0.        ,  0.        ,  0.        ]])
    """
    result: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] = _impl(logits)(
        logits,
        target,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        grad=grad,
        grad_scale=grad_scale,
    )
    return result


def _impl(logits: Any) -> Any:
    backend = _config.get_backend()
    if backend == "numba" or (
        backend == "auto" and logits.size >= _config.FAST_MIN_SIZE and _numba_ok()
    ):
        return _cross_entropy_rows_numba
    from crossentropy._cpu.reference import cross_entropy_rows_numpy

    return cross_entropy_rows_numpy


def _cross_entropy_rows_numba(
    logits: npt.NDArray[np.floating],
    target: npt.NDArray[np.integer],
    *,
    weight: npt.NDArray[np.float64] | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad: npt.NDArray[np.floating] | None = None,
    grad_scale: float = 1.0,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    assert logits.ndim == 2 and logits.dtype in _FLOATS and logits.flags.c_contiguous
    N = logits.shape[0]
    assert softcap is None or softcap > 0
    k = kernels()
    loss = np.empty(N)
    lse = np.empty(N)
    want = grad is not None
    if grad is not None:
        assert grad.shape == logits.shape and grad.dtype == logits.dtype
        assert grad.flags.c_contiguous
    g = grad if grad is not None else np.empty((1, 1), dtype=logits.dtype)
    w = np.ascontiguousarray(weight, dtype=np.float64) if weight is not None else np.ones(1)
    k.ce_rows(
        logits, np.ascontiguousarray(target, dtype=np.int64), w, weight is not None,
        int(ignore_index), float(label_smoothing), float(z_loss),
        float(softcap) if softcap is not None else 0.0, g, want, float(grad_scale),
        logits.dtype == np.float64, loss, lse, k._chunks(N),
    )
    return loss, lse


# --------------------------------------------------------------------------- public glue


def deliver(result: Any, out: Any, name: str = "out") -> Any:
    """Return `result`, or copy it into the caller's `out` array and return that."""
    if out is None:
        return result
    check_out(out, np.shape(result), np.asarray(result).dtype, name)
    np.copyto(out, result)
    return out


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


def _rows_of(a: np.ndarray, axis: int | None) -> tuple[np.ndarray, int | None, bool]:
    """(x2, ax, direct): `a` as C-contiguous (rows, classes) with the class axis last.

    `direct` is True when x2 is a view of `a` laid out in the order of `a` (so an output of
    `a`'s shape and C order can be written through the same reshape).
    """
    if axis is None:
        direct = a.flags.c_contiguous
        x2 = np.ascontiguousarray(a).reshape(1, -1)
        return x2, None, direct
    ax = v.check_axis(axis, a.ndim)
    xm = np.moveaxis(a, ax, -1)
    direct = ax == a.ndim - 1 and a.flags.c_contiguous
    x2 = np.ascontiguousarray(xm).reshape(-1, xm.shape[-1]) if xm.size else xm.reshape(
        -1, xm.shape[-1])
    return x2, ax, direct


def softmax(x: np.ndarray, axis: int | None, *, log: bool, out: Any = None) -> Any:
    """softmax / log_softmax of a float32/float64 array by the numba kernels."""
    if out is not None:
        check_out(out, x.shape, x.dtype)
    x2, ax, direct = _rows_of(x, axis)
    N, C = x2.shape
    if N * C == 0:
        res = np.empty_like(x)
        return deliver(res, out)
    k = kernels()
    if out is not None and direct and out.flags.c_contiguous:
        o2 = out.reshape(N, C)
        k.softmax_rows(x2, x.dtype == np.float64, log, o2, k._chunks(N))
        return out
    # x2 is a fresh copy when the class axis was moved: the kernel can overwrite it
    o2 = x2 if not np.may_share_memory(x2, x) else np.empty_like(x2)
    k.softmax_rows(x2, x.dtype == np.float64, log, o2, k._chunks(N))
    if ax is None:
        res = o2.reshape(x.shape)
    else:
        moved = list(x.shape)
        moved.append(moved.pop(ax))
        res = np.moveaxis(o2.reshape(moved), -1, ax)
    if out is not None:
        np.copyto(out, res)
        return out
    return res[()] if res.ndim == 0 else res


def logsumexp(x: np.ndarray, axis: int | None, keepdims: bool) -> Any:
    """log-sum-exp over `axis` (no weights) by the numba kernels."""
    x2, ax, _ = _rows_of(x, axis)
    N, C = x2.shape
    if C == 0:
        res = np.full(N, -np.inf)
    elif N == 0:
        res = np.zeros(0)
    else:
        k = kernels()
        res = np.empty(N)
        k.logsumexp_rows(x2, x.dtype == np.float64, res, k._chunks(N))
    if ax is None:
        shape: tuple[int, ...] = (1,) * x.ndim if keepdims else ()
    else:
        shp = list(x.shape)
        if keepdims:
            shp[ax] = 1
        else:
            del shp[ax]
        shape = tuple(shp)
    out = res.reshape(shape).astype(x.dtype, copy=False)
    return out[()] if out.ndim == 0 else out


def sigmoid(x: np.ndarray, *, log: bool, return_grad: bool, out: Any = None) -> Any:
    """sigmoid / log_sigmoid (and derivative) elementwise by the numba kernels."""
    if out is not None:
        check_out(out, x.shape, x.dtype)
    k = kernels()
    flat = np.ascontiguousarray(x).reshape(-1)
    direct = out is not None and out.flags.c_contiguous
    o = out.reshape(-1) if direct else np.empty_like(flat)
    d = np.empty_like(flat) if return_grad else np.empty(0, dtype=x.dtype)
    k.sigmoid_flat(flat, o, d, return_grad, log)
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


def _moved_back(r2: np.ndarray, shape: tuple[int, ...], ax: int) -> np.ndarray:
    moved = list(shape)
    moved.append(moved.pop(ax))
    return np.moveaxis(r2.reshape(moved), -1, ax)


def cross_entropy(
    x: np.ndarray,
    target: Any,
    *,
    axis: int,
    weight: Any,
    ignore_index: Any,
    label_smoothing: Any,
    reduction: Any,
    base: Any,
    return_grad: bool,
    grad_out: Any,
) -> Any:
    """Cross-entropy from logits with class-index targets by the numba kernels.

    Returns ``NotImplemented`` for what the kernels do not cover (probability targets,
    empty inputs, malformed targets), which the caller then hands to the NumPy path.
    """
    from crossentropy.losses import _reduce

    red = v.check_reduction(reduction)
    scale = v.log_scale(base)
    if x.ndim == 0 or x.size == 0:
        return NotImplemented
    ax = v.check_axis(axis, x.ndim)
    tarr = np.asarray(target)
    rows = x.shape[:ax] + x.shape[ax + 1 :]
    if tarr.ndim != x.ndim - 1 or tarr.shape != rows:
        return NotImplemented
    C = x.shape[ax]
    eps = v.check_unit_interval(label_smoothing, "label_smoothing")
    w = v.check_class_weight(weight, C)
    ignore = v.check_ignore_index(ignore_index)
    idx, counted = v.as_labels(tarr, C, "target", ignore)
    if grad_out is not None:
        if not return_grad:
            raise ValueError("grad_out is only used with return_grad=True")
        check_out(grad_out, x.shape, x.dtype, "grad_out")
    x2, _, direct = _rows_of(x, ax)
    N = x2.shape[0]
    t = np.where(counted, idx, -1).reshape(-1).astype(np.int64, copy=False)
    omega = np.where(counted, 1.0 if w is None else w[idx], 0.0)
    if red == "mean":
        wsum = float(np.sum(omega))
        factor = scale / wsum if wsum != 0.0 else 0.0
        if not math.isfinite(factor):  # subnormal summed weight: the NumPy path divides last
            return NotImplemented
    else:
        factor = scale
    g2 = None
    into_out = False
    if return_grad:
        if grad_out is not None and direct and grad_out.flags.c_contiguous:
            g2 = grad_out.reshape(N, C)
            into_out = True
        elif not np.may_share_memory(x2, x):
            g2 = x2  # x2 is our own copy (class axis moved): overwrite it
        else:
            g2 = np.empty_like(x2)
    loss, _ = _cross_entropy_rows_numba(
        x2, t, weight=w, ignore_index=-1, label_smoothing=eps, grad=g2, grad_scale=factor
    )
    value, _, _ = _reduce(loss.reshape(rows), omega, red, scale)
    val = v.cast_out(value, x.dtype)
    if g2 is None:
        return val
    if grad_out is not None:
        if not into_out:
            np.copyto(grad_out, _moved_back(g2, x.shape, ax))
        return val, grad_out
    return val, _moved_back(g2, x.shape, ax)


def bce_with_logits(
    x: np.ndarray,
    target: Any,
    *,
    weight: Any,
    pos_weight: Any,
    label_smoothing: Any,
    reduction: Any,
    base: Any,
    return_grad: bool,
    grad_out: Any,
) -> Any:
    """Binary cross-entropy with logits by the numba kernels (no `weight`; a scalar or
    absent `pos_weight`); ``NotImplemented`` otherwise."""
    red = v.check_reduction(reduction)
    scale = v.log_scale(base)
    if weight is not None or (pos_weight is not None and np.ndim(pos_weight) != 0):
        return NotImplemented
    y = np.asarray(target)
    if y.shape != x.shape or x.size == 0:
        return NotImplemented
    if y.dtype not in _FLOATS:
        y, ydt = v.as_float_array(y, "target")
    else:
        ydt = y.dtype
    v.check_probabilities(y, "target")
    eps = v.check_unit_interval(label_smoothing, "label_smoothing")
    pw = 1.0
    if pos_weight is not None:
        pw = float(v.check_nonnegative(pos_weight, "pos_weight"))
    dtype = v.result_dtype(x.dtype, ydt)
    if grad_out is not None:
        if not return_grad:
            raise ValueError("grad_out is only used with return_grad=True")
        check_out(grad_out, x.shape, x.dtype, "grad_out")
    k = kernels()
    xf = np.ascontiguousarray(x).reshape(-1)
    yf = np.ascontiguousarray(y).reshape(-1)
    n = xf.size
    factor = scale if red != "mean" else scale / n
    loss = np.empty(n) if red == "none" else np.empty(0)
    g = np.empty(0, dtype=x.dtype)  # the gradient keeps the logits' dtype
    into_out = False
    if return_grad:
        if grad_out is not None and grad_out.flags.c_contiguous:
            g = grad_out.reshape(-1)
            into_out = True
        else:
            g = np.empty(n, dtype=x.dtype)
    partial = np.empty((n + k._BLOCK - 1) // k._BLOCK)
    k.bce_logits_flat(xf, yf, pw, eps, red == "none", loss, return_grad, g, factor, partial)
    if red == "none":
        value: Any = (loss * scale).reshape(x.shape)
    elif red == "sum":
        value = np.asarray(np.sum(partial) * scale)
    else:
        value = np.asarray(np.sum(partial) * scale / n)
    val = v.cast_out(value, dtype)
    if not return_grad:
        return val
    if grad_out is not None:
        if not into_out:
            np.copyto(grad_out, g.reshape(x.shape))
        return val, grad_out
    gg = g.reshape(x.shape)
    return val, gg[()] if gg.ndim == 0 else gg
