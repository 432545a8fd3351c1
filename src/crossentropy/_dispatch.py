"""The one NumPy dispatch: three backends behind one interface, and the pick between them.

Each public NumPy function reads validate -> lay out -> :func:`pick` -> compute (a method of
the backend picked) -> reduce -> finish.  The backends:

* :data:`PLAIN`: plain Python floats (:mod:`crossentropy._small`) for inputs of at most
  ``_small.SMALL`` elements, where NumPy's per-call overhead is most of the cost (the
  article's 3-element vectors).  It covers finite values only: a call with a NaN or an
  infinity it hands on to the backend :func:`pick` gives without it;
* :data:`CORE`: the exact float64 core (:mod:`crossentropy._core`) over row blocks of about
  2^15 elements, whose temporaries stay in cache (:mod:`crossentropy._core.scratch`);
* :data:`NUMBA`: the compiled kernels (:mod:`crossentropy._cpu`).

They share one interface (:class:`Backend`), on arrays already validated: ``softmax``,
``logsumexp``, ``sigmoid``, ``categorical`` (cross-entropy of logits and index targets) and
``bce_with_logits``.  :data:`PLAIN` implements the first two and ``categorical``
without a gradient; :func:`pick` never gives a backend a call it does not cover, and a
backend never re-validates.

**The pick** (:func:`pick`), from the facts of the call:

1. ``plain`` (the options are ones the plain path covers) and at most ``SMALL`` elements:
   :data:`PLAIN`, before the kernels -- unless ``kernels_first`` (see 3);
2. the kernels, when :func:`crossentropy._backends.use_numba` says so from the backend
   setting, the dtype, the size and the kernels' state (compiled, loading, or not
   installed), given ``numba`` (the kernels cover the call's options);
3. ``plain`` with ``kernels_first`` (a call with ``out``, ``where``, ``keepdims``: under the
   ``"numba"`` setting the kernels take it, else plain Python does) and at most ``SMALL``
   elements: :data:`PLAIN`;
4. else :data:`CORE`.

The torch layer's CPU path asks the same question with ``min_size=0``
(:func:`pick_rows`): its own per-call costs are its own, so the kernels pay off at every
size.  It computes on the backend picked as well: two more methods, ``ce_rows`` (per-row
loss, log-sum-exp and gradient of index targets, the contract of
:func:`crossentropy._backends.cross_entropy_rows`) and ``index_targets`` (the targets
checked and counted in one pass, where the backend has such a pass), implemented by
:data:`CORE` and :data:`NUMBA`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from crossentropy import _small
from crossentropy._backends import rows_by_core, use_numba
from crossentropy._core import binary as core_bce
from crossentropy._core import categorical as core_ce
from crossentropy._core import rows as core_rows
from crossentropy._core import sigmoid as core_sigmoid
from crossentropy._core.reduce import Factor
from crossentropy._core.scratch import Scratch, row_blocks
from crossentropy._layout import back, from_rows2d, moved, rows2d
from crossentropy._options import CrossEntropyOptions
from crossentropy._validate import cast_out, write_out

__all__ = ["CORE", "NUMBA", "PLAIN", "Backend", "pick", "pick_rows"]

F64 = npt.NDArray[np.float64]
Axes = tuple[int, ...] | None


def pick(
    x: np.ndarray,
    *,
    numba: bool = True,
    plain: bool = False,
    kernels_first: bool = False,
    min_size: int | None = None,
) -> Backend:
    """The backend that computes a call on the prediction `x` (the rule in the module notes).

    Parameters
    ----------
    x : ndarray
        The prediction, validated (its size and dtype decide).
    numba : bool
        The kernels cover the call's options (e.g. index targets, no elementwise weights,
        a finite gradient scale).
    plain : bool
        The plain-Python backend covers the call's options.
    kernels_first : bool
        Under the ``"numba"`` setting the kernels take the call even when it is small.
    min_size : int, optional
        Replaces ``FAST_MIN_SIZE`` under ``"auto"`` (the torch layer passes 0).

    Examples
    --------
    >>> import numpy as np
    >>> pick(np.zeros(3), plain=True).name
    'plain'
    >>> pick(np.zeros(3)).name  # 'numba' under the "numba" setting
    'core'
    """
    small = plain and 0 < x.size <= _small.SMALL
    if small and not kernels_first:
        return PLAIN
    if use_numba(x, supported=numba, min_size=min_size):
        return NUMBA
    return PLAIN if small else CORE


def pick_rows(logits: np.ndarray) -> Backend:
    """The backend of the per-row cross-entropy of (N, C) `logits` (``ce_rows``,
    ``index_targets``): the torch layer's CPU path and
    :func:`crossentropy._backends.cross_entropy_rows`.  :func:`pick` with ``min_size=0``
    (the kernels at every size where the setting lets them take the call); empty logits:
    :data:`CORE`.

    >>> import numpy as np
    >>> pick_rows(np.zeros((0, 3))).name
    'core'
    """
    return pick(logits, min_size=0) if logits.size else CORE


class Backend:
    """The interface: one implementation of the arithmetic of the public NumPy functions.

    Arrays come validated and float (float16/32/64); results come back in the caller's
    layout.  A method a backend lacks is one :func:`pick` never sends it.
    """

    name = ""

    def softmax(self, arr: np.ndarray, axes: Axes, *, log: bool, dtype: np.dtype[Any],
                out: Any) -> Any:
        """softmax (log-softmax) over `axes` (None: all) of `arr` (non-empty but for the
        core): in float64 or `dtype`, or written into `out` and returned as it where the
        backend can."""
        raise NotImplementedError

    def logsumexp(self, arr: np.ndarray, axes: Axes) -> F64:
        """float64 log-sum-exp of the rows over `axes` of a non-empty `arr`, flat."""
        raise NotImplementedError

    def sigmoid(self, arr: np.ndarray, dtype: np.dtype[Any], *, log: bool,
                return_grad: bool, out: Any) -> Any:
        """sigmoid (log-sigmoid) elementwise, rounded to `dtype`, and its derivative."""
        raise NotImplementedError

    def categorical(self, arr: np.ndarray, ax: int, tg: core_ce.Target, w: F64 | None,
                    sw: F64 | None, opts: CrossEntropyOptions, gf: Factor | None,
                    grad_out: Any) -> tuple[F64, Any]:
        """Cross-entropy of logits `arr` (class axis `ax`): the per-row losses (row shape,
        times the sample weights `sw`) and, with the gradient factor `gf`, the gradient
        scaled by it in the caller's layout and dtype (in `grad_out` where it can)."""
        raise NotImplementedError

    def bce_with_logits(self, x: np.ndarray, y: F64, w: F64 | None, pw: F64 | None,
                        gf: Factor | None, grad_out: Any, *, per_element: bool
                        ) -> tuple[F64, Any]:
        """Binary cross-entropy of logits `x`, smoothed labels `y`, times the weights `w`:
        the losses (x's shape with `per_element`, else any array whose sum is the total)
        and, with the gradient factor `gf`, the gradient scaled by it, in x's shape and
        dtype (`grad_out` itself when given)."""
        raise NotImplementedError

    def ce_rows(self, logits: np.ndarray, target: np.ndarray, weight: F64 | None,
                ignore_index: int, label_smoothing: float, z_loss: float,
                softcap: float | None, grad: np.ndarray | None, grad_scale: float
                ) -> tuple[F64, F64]:
        """Per-row loss and log-sum-exp (float64) of (N, C) logits and int64 targets (in
        range or `ignore_index`, already checked), the gradient times `grad_scale` written
        into `grad` when given: :func:`crossentropy._backends.cross_entropy_rows`."""
        raise NotImplementedError

    def index_targets(self, target: np.ndarray, num_classes: int,
                      ignore_index: int) -> tuple[int, int] | None:
        """(first position of a target outside [0, C) that is not `ignore_index`, or -1;
        the number of targets other than `ignore_index`) in one pass, or None where the
        backend has no such pass (the caller checks the targets its own way)."""
        return None


# --------------------------------------------------------------------------- plain Python


def _rows(arr: np.ndarray, axes: Axes) -> tuple[list[list[float]], tuple[int, ...]]:
    """The rows of :func:`~crossentropy._layout.moved` as Python floats, and the moved
    shape (a 1-d array is one row whichever the axes: read as it is)."""
    if arr.ndim == 1:
        return [arr.tolist()], arr.shape
    xm = moved(arr, axes)
    return xm.reshape(-1, xm.shape[-1]).tolist(), xm.shape


class _Plain(Backend):
    """Plain Python floats: no NumPy call per element (:mod:`crossentropy._small`)."""

    name = "plain"

    def softmax(self, arr: np.ndarray, axes: Axes, *, log: bool, dtype: np.dtype[Any],
                out: Any) -> Any:
        rows, shape = _rows(arr, axes)
        if not _small.finite(rows):
            return pick(arr).softmax(arr, axes, log=log, dtype=dtype, out=out)
        plain = _small.log_softmax_rows if log else _small.softmax_rows
        return back(np.array(plain(rows)).reshape(shape), arr.shape, axes)

    def logsumexp(self, arr: np.ndarray, axes: Axes) -> F64:
        rows, _ = _rows(arr, axes)
        if not _small.finite(rows):
            return pick(arr).logsumexp(arr, axes)
        return np.array(_small.logsumexp_rows(rows))

    def categorical(self, arr: np.ndarray, ax: int, tg: core_ce.Target, w: F64 | None,
                    sw: F64 | None, opts: CrossEntropyOptions, gf: Factor | None,
                    grad_out: Any) -> tuple[F64, Any]:
        """Index targets, no options, no gradient."""
        rows = rows2d(arr, ax).tolist()
        if not _small.finite(rows):
            return pick(arr).categorical(arr, ax, tg, w, sw, opts, gf, grad_out)
        assert tg.labels is not None
        per = _small.cross_entropy_rows(rows, tg.labels.reshape(-1).tolist())
        loss = np.where(tg.counted.reshape(-1), np.array(per), 0.0)
        return loss.reshape(tg.counted.shape), None


# --------------------------------------------------------------------------- the core


class _Core(Backend):
    """The exact float64 core, over row blocks (the same temporaries for every block)."""

    name = "core"

    def softmax(self, arr: np.ndarray, axes: Axes, *, log: bool, dtype: np.dtype[Any],
                out: Any) -> Any:
        xm = moved(arr, axes)
        x2 = xm.reshape(math.prod(xm.shape[:-1]), xm.shape[-1])
        exact = arr.dtype == np.float64  # float32/16 inputs are rounded to their own dtype
        r2 = np.empty(x2.shape, dtype=dtype)
        if not x2.size:
            return back(r2.reshape(xm.shape), arr.shape, axes)
        core = core_rows.log_softmax if log else core_rows.softmax
        scratch = Scratch()
        for sl in row_blocks(x2):  # row blocks: the float64 temporaries stay in cache
            with np.errstate(over="ignore"):  # beyond float16's range: rounded to inf
                r2[sl] = core(scratch.f64("x", x2[sl]), exact, scratch)
        return back(r2.reshape(xm.shape), arr.shape, axes)

    def logsumexp(self, arr: np.ndarray, axes: Axes) -> F64:
        xm = moved(arr, axes)
        x2 = xm.reshape(math.prod(xm.shape[:-1]), xm.shape[-1])
        out = np.empty(x2.shape[0])
        scratch = Scratch()
        for sl in row_blocks(x2):
            out[sl] = core_rows.logsumexp(scratch.f64("x", x2[sl]), arr.dtype == np.float64,
                                          scratch)
        return out

    def sigmoid(self, arr: np.ndarray, dtype: np.dtype[Any], *, log: bool,
                return_grad: bool, out: Any) -> Any:
        x64 = arr.astype(np.float64, copy=False)
        f = core_sigmoid.log_sigmoid if log else core_sigmoid.sigmoid
        value = write_out(cast_out(f(x64), dtype), out)
        if not return_grad:
            return value
        # d/dx log sigmoid(x) = sigmoid(-x); d/dx sigmoid(x) = sigmoid(x) sigmoid(-x)
        d = core_sigmoid.sigmoid(-x64) if log else core_sigmoid.sigmoid_prime(x64)
        return value, cast_out(d, dtype)

    def categorical(self, arr: np.ndarray, ax: int, tg: core_ce.Target, w: F64 | None,
                    sw: F64 | None, opts: CrossEntropyOptions, gf: Factor | None,
                    grad_out: Any) -> tuple[F64, Any]:
        exact = arr.dtype == np.float64  # float32/16 inputs are rounded to their own dtype
        x2 = rows2d(arr, ax)
        loss2 = np.zeros(x2.shape[0])
        g2 = None if gf is None else np.zeros(x2.shape, dtype=arr.dtype)
        sw2 = None if sw is None else sw.reshape(-1)
        scratch = Scratch()
        for sl in row_blocks(x2):
            loss_b, _, g_b = core_ce.logits_rows(
                scratch.f64("x", x2[sl]), tg.rows(sl), w, label_smoothing=opts.label_smoothing,
                z_loss=opts.z_loss, cap=opts.softcap, want_grad=gf is not None, exact=exact,
                scratch=scratch,
            )
            if sw2 is not None:  # sample weights scale each loss and its gradient row
                loss_b = loss_b * sw2[sl]
                g_b = None if g_b is None else g_b * sw2[sl, None]
            loss2[sl] = loss_b
            if g2 is not None and g_b is not None and gf is not None:
                with np.errstate(over="ignore"):  # beyond float16's range: +-inf, as rounded
                    g2[sl] = gf.apply(g_b)
        loss = loss2.reshape(tg.counted.shape)
        return loss, None if g2 is None else from_rows2d(g2, arr.shape, ax)

    def bce_with_logits(self, x: np.ndarray, y: F64, w: F64 | None, pw: F64 | None,
                        gf: Factor | None, grad_out: Any, *, per_element: bool
                        ) -> tuple[F64, Any]:
        loss, grad = core_bce.from_logits(x.astype(np.float64, copy=False), y, pw,
                                          want_grad=gf is not None)
        if w is not None:
            loss = loss * w
            grad = None if grad is None else grad * w
        if grad is None or gf is None:
            return loss, None
        return loss, write_out(cast_out(gf.apply(grad), x.dtype), grad_out, "grad_out")

    def ce_rows(self, logits: np.ndarray, target: np.ndarray, weight: F64 | None,
                ignore_index: int, label_smoothing: float, z_loss: float,
                softcap: float | None, grad: np.ndarray | None, grad_scale: float
                ) -> tuple[F64, F64]:
        return rows_by_core(logits, target, weight, ignore_index, label_smoothing, z_loss,
                            softcap, grad, grad_scale)


# --------------------------------------------------------------------------- the kernels


class _Numba(Backend):
    """The compiled kernels (:mod:`crossentropy._cpu`, imported on first use)."""

    name = "numba"

    def softmax(self, arr: np.ndarray, axes: Axes, *, log: bool, dtype: np.dtype[Any],
                out: Any) -> Any:
        from crossentropy import _cpu

        if axes is None or len(axes) == 1:  # the kernels lay one axis out themselves
            return _cpu.softmax(arr, None if axes is None else axes[0], log=log, out=out)
        return back(_cpu.softmax(moved(arr, axes), -1, log=log), arr.shape, axes)

    def logsumexp(self, arr: np.ndarray, axes: Axes) -> F64:
        from crossentropy import _cpu

        if axes is None or len(axes) == 1:
            return _cpu.logsumexp(arr, None if axes is None else axes[0])
        return _cpu.logsumexp(moved(arr, axes), -1)

    def sigmoid(self, arr: np.ndarray, dtype: np.dtype[Any], *, log: bool,
                return_grad: bool, out: Any) -> Any:
        from crossentropy import _cpu

        return _cpu.sigmoid(arr, log=log, return_grad=return_grad, out=out)

    def categorical(self, arr: np.ndarray, ax: int, tg: core_ce.Target, w: F64 | None,
                    sw: F64 | None, opts: CrossEntropyOptions, gf: Factor | None,
                    grad_out: Any) -> tuple[F64, Any]:
        """Index targets, a finite gradient scale."""
        from crossentropy import _cpu

        assert tg.labels is not None
        loss, g = _cpu.categorical(
            arr, ax, tg.labels, tg.counted, w, label_smoothing=opts.label_smoothing,
            z_loss=opts.z_loss, softcap=opts.softcap, grad_out=grad_out,
            want_grad=gf is not None, grad_scale=1.0 if gf is None else gf.grad_scale,
        )
        if sw is not None:  # sample weights scale each loss and its gradient row
            loss = loss * sw
            if g is not None:
                g *= np.expand_dims(sw, ax).astype(g.dtype)
        return loss, g

    def bce_with_logits(self, x: np.ndarray, y: F64, w: F64 | None, pw: F64 | None,
                        gf: Factor | None, grad_out: Any, *, per_element: bool
                        ) -> tuple[F64, Any]:
        """No weights, one pos_weight for every element, a finite gradient scale."""
        from crossentropy import _cpu

        g = None
        if gf is not None:
            direct = grad_out is not None and grad_out.flags.c_contiguous
            g = grad_out.reshape(-1) if direct else np.empty(x.size, dtype=x.dtype)
        # y is already smoothed: the kernel's own smoothing is off (eps = 0)
        pos = 1.0 if pw is None or pw.size == 0 else float(pw.flat[0])
        part = _cpu.bce_with_logits(x, y, pos, 0.0, per_element=per_element, grad=g,
                                    grad_scale=1.0 if gf is None else gf.grad_scale)
        loss = part.reshape(x.shape) if per_element else part
        if not per_element and np.isinf(part).any():
            # a block's partial sum overflowed, although the mean may not (two losses of
            # 1e308): the per-element losses again, summed by the core's reduction, which
            # rescales an overflowing sum (rare: only for losses near the float64 maximum)
            loss = _cpu.bce_with_logits(x, y, pos, 0.0, per_element=True, grad=None,
                                        grad_scale=1.0)
        if g is None:
            return loss, None
        gg = g.reshape(x.shape)
        if grad_out is not None:
            if not np.shares_memory(gg, grad_out):
                np.copyto(grad_out, gg)
            gg = grad_out
        return loss, gg[()] if gg.ndim == 0 else gg


    def ce_rows(self, logits: np.ndarray, target: np.ndarray, weight: F64 | None,
                ignore_index: int, label_smoothing: float, z_loss: float,
                softcap: float | None, grad: np.ndarray | None, grad_scale: float
                ) -> tuple[F64, F64]:
        from crossentropy import _cpu

        return _cpu.ce_rows_kernel(logits, target, weight, ignore_index, label_smoothing,
                                   z_loss, softcap, grad, grad_scale)

    def index_targets(self, target: np.ndarray, num_classes: int,
                      ignore_index: int) -> tuple[int, int] | None:
        from crossentropy import _cpu

        return _cpu.index_targets(target, num_classes, ignore_index)


#: The backends (stateless: one instance each).
PLAIN: Backend = _Plain()
CORE: Backend = _Core()
NUMBA: Backend = _Numba()
