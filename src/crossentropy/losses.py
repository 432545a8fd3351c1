r"""Cross-entropy, binary cross-entropy, entropy and KL divergence: the exact NumPy reference.

One pattern for every loss:

* the prediction comes first, the target second; the kind of prediction is in the function
  name (``cross_entropy`` takes logits, ``cross_entropy_from_probs`` probabilities,
  ``cross_entropy_from_log_probs`` log-probabilities; ``binary_cross_entropy_with_logits``
  and ``binary_cross_entropy`` as in PyTorch);
* ``return_grad=True`` returns ``(value, grad)``, the gradient with respect to the
  prediction, computed in the same pass as the value, with weights, label smoothing,
  ignore_index, reduction and base applied;
* ``base`` gives the unit: ``None`` (nats), ``2`` (bits, as in the article), ``10``, or any
  positive number other than 1.

How targets and weights combine (categorical losses)
----------------------------------------------------
Targets are class indices (an integer array with the class axis removed) or probability
rows (an array with the shape of the prediction: one-hot rows or soft labels).  Write
:math:`t_{ic}` for sample *i*'s target distribution, :math:`t'_{ic} = (1-\varepsilon)t_{ic} +
\varepsilon/C` for it after label smoothing and :math:`w_c` for the class weights
(1 by default).  Then

.. math::

    \ell_i = -\sum_c w_c\, t'_{ic} \log q_{ic}, \qquad
    \omega_i = \sum_c w_c\, t_{ic}, \qquad
    \text{mean} = \frac{\sum_i \ell_i}{\sum_i \omega_i}.

:math:`\omega_i` is the weight of sample *i*'s (unsmoothed) target: ``weight[y_i]`` for an
index target, so index targets and the equivalent one-hot rows give the same loss, with or
without weights.  (PyTorch divides by ``sum(weight[y_i])`` for index targets but by the
number of samples for probability targets; ``crossentropy.torch`` reproduces that, this
module does not.)  Samples whose label equals ``ignore_index`` count neither in the sum nor
in the weight.  A mean over zero counted samples (everything ignored, an empty batch, or
all weights 0) is **0.0** with a zero gradient: the batch carries no signal, so it asks for
no update.  (PyTorch returns NaN.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from crossentropy import _cpu
from crossentropy import _validate as v
from crossentropy.activations import _inf_share, _probs, _rows, _sigmoid64, _softplus64

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "cross_entropy_from_log_probs",
    "cross_entropy_from_probs",
    "entropy",
    "kl_divergence",
]

F64 = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- helpers


class _Targets:
    """Categorical targets laid out along the last axis, with weights and smoothing applied.

    ``a[..., c] = w_c t'_c`` (the coefficient of -log q_c in the loss), ``omega`` the
    per-sample weight of the mean, ``dtype`` the float dtype the targets ask for.
    """

    def __init__(
        self,
        target: Any,
        shape: tuple[int, ...],
        axis: int,
        weight: Any,
        ignore_index: Any,
        label_smoothing: Any,
    ) -> None:
        C = shape[-1]
        eps = v.check_unit_interval(label_smoothing, "label_smoothing")
        w = v.check_class_weight(weight, C)
        ignore = v.check_ignore_index(ignore_index)
        tarr = np.asarray(target)
        ndim = len(shape)
        self.dtype: np.dtype[Any] | None = None
        if tarr.ndim == ndim - 1:  # class indices
            rows = shape[:-1]
            if tarr.shape != rows:
                raise ValueError(
                    f"target holds class indices, so its shape must be the prediction's "
                    f"shape without the class axis, {rows}; got {tarr.shape}"
                )
            idx, counted = v.as_labels(tarr, C, "target", ignore)
            wy = np.ones(rows) if w is None else w[idx]
            self.omega: F64 = np.where(counted, wy, 0.0)
            onehot = np.zeros(shape)
            np.put_along_axis(onehot, idx[..., None], 1.0, axis=-1)
            t = onehot
        elif tarr.ndim == ndim:  # probability rows
            want = (*shape[:axis], shape[-1], *shape[axis:-1])  # the caller's axis order
            if tarr.shape != want:
                raise ValueError(
                    f"target holds probability rows, so its shape must equal the "
                    f"prediction's shape {want}; got {tarr.shape}"
                )
            t64, tdtype = v.as_float_array(tarr, "target")
            t = np.ascontiguousarray(np.moveaxis(t64, axis, -1))  # as in _prediction
            v.check_probabilities(t64, "target")  # positions in the caller's layout
            v.check_rows_sum_to_one(t, -1, tdtype, "target")
            if tarr.dtype.kind not in "iu":  # integer rows (one-hot) are exact: no widening
                self.dtype = tdtype
            counted = np.ones(shape[:-1], dtype=bool)
            with np.errstate(invalid="ignore"):
                self.omega = np.ones(shape[:-1]) if w is None else np.sum(t * w, axis=-1)
        else:
            raise ValueError(
                f"target must be class indices with {ndim - 1} dimension(s) or probability "
                f"rows with {ndim}; got an array with {tarr.ndim} dimension(s)"
            )
        if eps and C:  # (no classes: nothing to smooth, and no eps / 0)
            # label smoothing: t' = (1 - eps) t + eps / C
            t = (1.0 - eps) * t + eps / C
        a = t if w is None else t * w
        # ignored samples: no term at all
        self.a: F64 = np.where(counted[..., None], a, 0.0)
        self.counted = counted


def _reduce(
    loss: F64, omega: F64, reduction: str, scale: float
) -> tuple[F64, F64, float]:
    """Apply the reduction; return ``(value, per-sample gradient factor, divisor)``.

    ``value`` is 0-d for mean/sum.  d loss_i / d input is multiplied by the factor, then
    divided by the divisor: ``scale`` and 1 for 'none' and 'sum', ``scale`` and
    ``sum(omega)`` for 'mean' (factor 0 when nothing is counted).  Dividing last keeps a
    subnormal summed weight from overflowing ``scale / sum(omega)`` to inf when the
    gradient itself, w_c (p - t) / sum(omega), is of order 1.
    """
    if reduction == "none":
        return loss * scale, np.full(loss.shape, scale), 1.0
    total = np.sum(loss) * scale
    if reduction == "sum":
        return np.asarray(total), np.full(loss.shape, scale), 1.0
    wsum = float(np.sum(omega))
    if wsum == 0.0:  # nothing counted: 0 with a zero gradient (documented)
        return np.asarray(0.0 if not np.isnan(total) else np.nan), np.zeros(loss.shape), 1.0
    with np.errstate(over="ignore"):  # a subnormal summed weight: the true mean overflows
        return np.asarray(total / wsum), np.full(loss.shape, scale), wsum


def _finish(
    value: F64,
    grad: F64 | None,
    dtype: np.dtype[Any],
    grad_dtype: np.dtype[Any],
    axis: int | None,
) -> Any:
    out = v.cast_out(value, dtype)
    if grad is None:
        return out
    g = grad if axis is None else np.moveaxis(grad, -1, axis)
    return out, v.cast_out(g, grad_dtype)


def _prediction(x: Any, name: str, axis: Any) -> tuple[F64, np.dtype[Any], int]:
    x64, dtype = v.as_float_array(x, name)
    ax = v.check_axis(axis, x64.ndim)
    if x64.shape[ax] == 0 and int(np.prod(np.delete(x64.shape, ax))) > 0:
        # rows with no classes hold no distribution (an empty batch of rows is fine)
        raise ValueError(
            f"{name} has rows but no classes: axis={axis} has length 0 in shape {x64.shape}"
        )
    # contiguous rows, so that axis=k sums in the same (pairwise) order as moving k last
    return np.ascontiguousarray(np.moveaxis(x64, ax, -1)), dtype, ax


def _xlogy_terms(a: F64, nl: F64) -> F64:
    """a * nl with 0 * anything = 0 (a class with no target mass adds nothing, even if its
    log is infinite); NaN in `a` still propagates."""
    with np.errstate(invalid="ignore"):
        return np.where(a == 0.0, 0.0, a * nl)


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def _options(text: str) -> Callable[[_Fn], _Fn]:
    """Decorator: put the shared option descriptions where a docstring says <ce-options>."""

    def deco(f: _Fn) -> _Fn:
        doc = f.__doc__ or ""
        f.__doc__ = doc.replace("    <ce-options>\n", text).replace("    <bce-options>\n", text)
        return f

    return deco


# --------------------------------------------------------------------------- categorical


_CE_PARAMS = """    axis : int
        The class axis of the prediction (default: the last).
    weight : array_like, optional
        Per-class weights, shape ``(C,)``, finite and >= 0.
    ignore_index : int or None
        Index targets equal to it are left out (default -100, as in PyTorch; None disables).
        Applies to index targets only.
    label_smoothing : float
        :math:`\\varepsilon \\in [0, 1]`: the target becomes :math:`(1-\\varepsilon) t +
        \\varepsilon / C`.
    reduction : {'mean', 'sum', 'none'}
        'mean' divides by the summed weight of the counted targets (see the module notes).
    base : float, optional
        Unit of the result: None for nats, 2 for bits, 10, or any positive number other than 1.
    return_grad : bool
        Also return the gradient with respect to the prediction (same shape and dtype).
        With ``reduction='none'`` each row holds the gradient of its own loss.
"""


@_options(_CE_PARAMS)
def cross_entropy(
    logits: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    base: float | None = None,
    return_grad: bool = False,
    grad_out: Any = None,
) -> Any:
    r"""Categorical cross-entropy from logits (unnormalised scores).

    .. math::

        \ell_i = -\sum_c w_c\, t'_{ic} \log\operatorname{softmax}(z_i)_c, \qquad
        \frac{\partial \ell_i}{\partial z_{ic}} = \operatorname{softmax}(z_i)_c
        \sum_{c'} w_{c'} t'_{ic'} - w_c\, t'_{ic}

    For an index target without smoothing, :math:`\ell_i = (m - z_{iy}) + \log1p(s)` with
    *m* the row maximum and *s* the sum of the other shifted exponentials: two terms
    >= 0, so the result is exact to a few ulp even when it is tiny.

    Parameters
    ----------
    logits : array_like
        Scores, at least 1-d.  The class axis is `axis`.
    target : array_like
        Class indices (integers; shape of `logits` without the class axis) or probability
        rows (same shape as `logits`; one-hot or soft, each row summing to 1).
    <ce-options>
    grad_out : ndarray, optional
        With ``return_grad=True``, the array (the logits' shape and dtype) that receives
        the gradient and is returned as it; pass `logits` itself to overwrite the logits
        with their gradient, allocating nothing.

    Examples
    --------
    The article's cat image: scores [9.8, 3.7, 0.2], target "cat" (class 0), in bits:

    >>> import crossentropy as ce
    >>> float(ce.cross_entropy([9.8, 3.7, 0.2], 0, base=2))  # mpmath: 0.00332964080008
    0.00332964080008
    >>> float(ce.cross_entropy([9.8, 3.7, 0.2], [1.0, 0.0, 0.0], base=2))  # one-hot target
    0.00332964080008
    >>> loss, grad = ce.cross_entropy([[1.0, 2.0, 3.0]], [2], return_grad=True)
    >>> grad  # softmax - one_hot
    array([[ 0.09003057,  0.24472847, -0.33475904]])
    """
    if _cpu.wants(logits):  # large float arrays: the numba kernels (crossentropy._cpu)
        res = _cpu.cross_entropy(
            logits, target, axis=axis, weight=weight, ignore_index=ignore_index,
            label_smoothing=label_smoothing, reduction=reduction, base=base,
            return_grad=return_grad, grad_out=grad_out,
        )
        if res is not NotImplemented:
            return res
    if grad_out is not None:
        if not return_grad:
            raise ValueError("grad_out is only used with return_grad=True")
        got = cross_entropy(
            logits, target, axis=axis, weight=weight, ignore_index=ignore_index,
            label_smoothing=label_smoothing, reduction=reduction, base=base,
            return_grad=return_grad,
        )
        return got[0], _cpu.deliver(got[1], grad_out, "grad_out")
    red = v.check_reduction(reduction)
    scale = v.log_scale(base)
    x, dtype, ax = _prediction(logits, "logits", axis)
    gdtype = dtype  # the gradient keeps the prediction's dtype
    tg = _Targets(target, x.shape, ax, weight, ignore_index, label_smoothing)
    if tg.dtype is not None:
        dtype = v.result_dtype(dtype, tg.dtype)
    a = tg.a
    if x.size == 0:
        loss = np.zeros(x.shape[:-1])
        value, _, _ = _reduce(loss, tg.omega, red, scale)
        return _finish(value, np.zeros(x.shape) if return_grad else None, dtype, gdtype, ax)
    r = _rows(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        # -log softmax_c = (L - dh_c) - dl_c, both terms >= 0 (see activations._Rows)
        nls = (r.L - r.dh) - r.dl
        share = _inf_share(x)
        nls = np.where(r.pos_inf, -np.log(share), nls)
        nls = np.where(r.neg_inf, np.nan, nls)
        loss = np.sum(_xlogy_terms(a, nls), axis=-1)
        # A NaN anywhere in a counted row (its max is NaN) makes its loss NaN, even in a
        # class with no target mass; ignored rows are not looked at (as if sliced out).
        nan_row = np.isnan(r.m[..., 0]) & tg.counted
        loss = np.where(nan_row, np.nan, loss)
    value, factor, div = _reduce(loss, tg.omega, red, scale)
    if not return_grad:
        return _finish(value, None, dtype, dtype, ax)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        W = np.sum(a, axis=-1, keepdims=True)
        p = _probs(r)  # e^(x - m) / (1 + s)
        g = p * W - a
        # At the argmax k, p_k = 1 / (1 + s), so p_k W - a_k = ((W - a_k) - a_k s) / (1 + s)
        # with W - a_k summed directly: exact where a one-hot target meets a confident
        # prediction (p_k - 1 = -s / (1 + s) instead of 1 - 1 + tiny).
        ak = np.take_along_axis(a, r.k, axis=-1)
        a_rest = np.sum(a, axis=-1, keepdims=True, where=np.arange(x.shape[-1]) != r.k)
        gk = (a_rest - ak * r.s) / (1.0 + r.s)
        np.put_along_axis(g, r.k, gk, axis=-1)
        g = np.where(r.pos_inf, share * W - a, g)
        g = np.where(r.neg_inf, np.nan, g)
        g = np.where(nan_row[..., None], np.nan, g)
        g = np.where(tg.counted[..., None], g, 0.0)  # ignored rows: zero gradient
        g = (g * factor[..., None]) / div
    return _finish(value, g, dtype, gdtype, ax)


def _from_normalised(
    pred: Any,
    target: Any,
    name: str,
    is_log: bool,
    axis: int,
    weight: Any,
    ignore_index: Any,
    label_smoothing: Any,
    reduction: str,
    base: Any,
    return_grad: bool,
) -> Any:
    red = v.check_reduction(reduction)
    scale = v.log_scale(base)
    q, dtype, ax = _prediction(pred, name, axis)
    gdtype = dtype  # the gradient keeps the prediction's dtype
    if is_log:
        qc = np.moveaxis(q, -1, ax)  # the caller's layout, so the position is theirs
        bad = qc > 0.0
        if bad.any():
            idx = v.first_index(bad)
            raise ValueError(f"{name} must be <= 0; {name}{v.where_str(idx)} = {qc[idx]!r}")
        with np.errstate(under="ignore"):
            v.check_rows_sum_to_one(np.exp(q), -1, dtype, f"exp({name})")
    else:
        v.check_probabilities(np.moveaxis(q, -1, ax), name)  # positions in the caller's layout
        v.check_rows_sum_to_one(q, -1, dtype, name)
    tg = _Targets(target, q.shape, ax, weight, ignore_index, label_smoothing)
    if tg.dtype is not None:
        dtype = v.result_dtype(dtype, tg.dtype)
    a = tg.a
    with np.errstate(divide="ignore", invalid="ignore"):
        nl = -q if is_log else -np.log(q)  # -log q_c (+inf where q_c = 0)
        loss = np.sum(_xlogy_terms(a, nl), axis=-1)
        # a NaN anywhere in a counted row makes its loss NaN (ignored rows are not looked at)
        nan_row = np.isnan(q).any(axis=-1) & tg.counted
        loss = np.where(nan_row, np.nan, loss)
    value, factor, div = _reduce(loss, tg.omega, red, scale)
    if not return_grad:
        return _finish(value, None, dtype, dtype, ax)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # d/dq (-a log q) = -a / q;  d/dlq (-a lq) = -a;  0 where a = 0.
        # -a / q overflows to -inf for a subnormal q: the true value is beyond the range.
        g = np.where(a == 0.0, 0.0, -a if is_log else -a / q)
        g = np.where(nan_row[..., None], np.nan, g)
        g = (g * factor[..., None]) / div
    return _finish(value, g, dtype, gdtype, ax)


@_options(_CE_PARAMS)
def cross_entropy_from_probs(
    probs: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    base: float | None = None,
    return_grad: bool = False,
) -> Any:
    r"""Categorical cross-entropy from predicted probabilities.

    .. math:: \ell_i = -\sum_c w_c\, t'_{ic} \log q_{ic}, \qquad
              \frac{\partial \ell_i}{\partial q_{ic}} = -\frac{w_c t'_{ic}}{q_{ic}}

    No hidden clipping: ``q = 1e-300`` for the true class gives 690.78 nats (PyTorch's
    BCE says 100, scikit-learn 36.04, Keras 16.12); ``q = 0`` for the true class gives
    +inf; a class with target 0 adds exactly 0 whatever its ``q``.

    Parameters
    ----------
    probs : array_like
        Probabilities in [0, 1] whose rows sum to 1 (within ``max(C, 16)`` machine epsilons
        of their dtype; rows are never renormalised).
    target : array_like
        Class indices or probability rows, as for :func:`cross_entropy`.
    <ce-options>

    Examples
    --------
    >>> import crossentropy as ce
    >>> p = [0.997694, 0.002237, 0.000069]  # mpmath: -log2(0.997694) = 0.00333069653505
    >>> float(ce.cross_entropy_from_probs(p, 0, base=2))
    0.00333069653505
    """
    return _from_normalised(
        probs, target, "probs", False, axis, weight, ignore_index, label_smoothing,
        reduction, base, return_grad,
    )


@_options(_CE_PARAMS)
def cross_entropy_from_log_probs(
    log_probs: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    base: float | None = None,
    return_grad: bool = False,
) -> Any:
    r"""Categorical cross-entropy from log-probabilities (for example a log_softmax output).

    .. math:: \ell_i = -\sum_c w_c\, t'_{ic}\, \log q_{ic}, \qquad
              \frac{\partial \ell_i}{\partial \log q_{ic}} = -w_c t'_{ic}

    Parameters
    ----------
    log_probs : array_like
        Values <= 0 whose exponentials sum to 1 along the class axis.
    target : array_like
        Class indices or probability rows, as for :func:`cross_entropy`.
    <ce-options>

    Examples
    --------
    >>> import crossentropy as ce
    >>> lp = ce.log_softmax([9.8, 3.7, 0.2])
    >>> float(ce.cross_entropy_from_log_probs(lp, 0, base=2))  # mpmath: 0.00332964080008
    0.00332964080008
    """
    return _from_normalised(
        log_probs, target, "log_probs", True, axis, weight, ignore_index, label_smoothing,
        reduction, base, return_grad,
    )


# --------------------------------------------------------------------------- binary


def _binary_args(
    pred: Any, target: Any, name: str, weight: Any, pos_weight: Any, label_smoothing: Any
) -> tuple[F64, F64, F64 | None, F64 | None, np.dtype[Any], np.dtype[Any]]:
    """``(x, y, weight, pos_weight, value dtype, gradient dtype = the prediction's)``."""
    x, dtype = v.as_float_array(pred, name)
    y, ydtype = v.as_float_array(target, "target")
    if np.asarray(target).dtype.kind in "iu":  # integer labels are exact: no widening
        ydtype = dtype
    if y.shape != x.shape:
        raise ValueError(
            f"target must have the shape of {name} {x.shape}, got {y.shape}"
        )
    v.check_probabilities(y, "target")
    eps = v.check_unit_interval(label_smoothing, "label_smoothing")
    if eps:
        # label smoothing for two classes: y' = (1 - eps) y + eps / 2
        y = (1.0 - eps) * y + 0.5 * eps
    ws: list[F64 | None] = []
    for arg, argname in ((weight, "weight"), (pos_weight, "pos_weight")):
        if arg is None:
            ws.append(None)
            continue
        w = v.check_nonnegative(arg, argname)
        ws.append(np.asarray(v.broadcast_to_shape(w, x.shape, argname, name), dtype=np.float64))
    return x, y, ws[0], ws[1], v.result_dtype(dtype, ydtype), dtype


def _binary_reduce(
    loss: F64, grad: F64 | None, weight: F64 | None, reduction: str, scale: float
) -> tuple[F64, F64 | None]:
    if weight is not None:
        loss = loss * weight
        if grad is not None:
            grad = grad * weight
    n = loss.size
    if reduction == "none":
        value = loss * scale
        factor = scale
    elif reduction == "sum":
        value = np.asarray(np.sum(loss) * scale)
        factor = scale
    else:  # mean over elements, as PyTorch and Keras; 0 for no elements
        value = np.asarray(np.sum(loss) * scale / n) if n else np.asarray(0.0)
        factor = scale / n if n else 0.0
    return value, None if grad is None else grad * factor


_BCE_PARAMS = """    weight : array_like, optional
        Elementwise rescaling, broadcastable to the prediction; finite and >= 0.
    pos_weight : array_like, optional
        Weight of the positive term (PyTorch's ``pos_weight``), broadcastable (typically one
        per class along the last axis); finite and >= 0.
    label_smoothing : float
        :math:`\\varepsilon \\in [0, 1]`: labels become :math:`(1-\\varepsilon) y + \\varepsilon/2`.
    reduction : {'mean', 'sum', 'none'}
        'mean' averages over all elements (as PyTorch and Keras; 0.0 when there are none).
    base : float, optional
        None for nats, 2 for bits, 10, or any positive number other than 1.
    return_grad : bool
        Also return the gradient with respect to the prediction.
"""


@_options(_BCE_PARAMS)
def binary_cross_entropy_with_logits(
    logits: Any,
    target: Any,
    *,
    weight: Any = None,
    pos_weight: Any = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    base: float | None = None,
    return_grad: bool = False,
    grad_out: Any = None,
) -> Any:
    r"""Binary cross-entropy from logits, elementwise labels in [0, 1].

    .. math::

        \ell = -\big(p\, y \log\sigma(x) + (1 - y)\log(1 - \sigma(x))\big)
             = p\, y \operatorname{softplus}(-x) + (1 - y)\operatorname{softplus}(x),

        \frac{\partial\ell}{\partial x} = (1 - y)\,\sigma(x) - p\, y\, \sigma(-x)
        \quad(= \sigma(x) - y \text{ for } p = 1)

    with *p* the pos_weight.  Written as two non-negative softplus terms there is no
    cancellation, so ``x = -40, y = 0`` gives 4.25e-18 (PyTorch's
    ``max(x, 0) - x y + log1p(exp(-|x|))`` form gives 0).

    Parameters
    ----------
    logits : array_like
    target : array_like
        Labels in [0, 1] (soft labels allowed), same shape as `logits`.
    <bce-options>
    grad_out : ndarray, optional
        With ``return_grad=True``, the array (the logits' shape and dtype) that receives
        the gradient and is returned as it; it may be `logits` itself.

    Examples
    --------
    >>> import crossentropy as ce
    >>> float(ce.binary_cross_entropy_with_logits(-40.0, 0.0))
    4.248354255291589e-18
    """
    if _cpu.wants(logits):  # large float arrays: the numba kernels (crossentropy._cpu)
        res = _cpu.bce_with_logits(
            logits, target, weight=weight, pos_weight=pos_weight,
            label_smoothing=label_smoothing, reduction=reduction, base=base,
            return_grad=return_grad, grad_out=grad_out,
        )
        if res is not NotImplemented:
            return res
    if grad_out is not None:
        if not return_grad:
            raise ValueError("grad_out is only used with return_grad=True")
        got = binary_cross_entropy_with_logits(
            logits, target, weight=weight, pos_weight=pos_weight,
            label_smoothing=label_smoothing, reduction=reduction, base=base,
            return_grad=return_grad,
        )
        return got[0], _cpu.deliver(got[1], grad_out, "grad_out")
    red = v.check_reduction(reduction)
    scale = v.log_scale(base)
    x, y, w, pw, dtype, gdtype = _binary_args(
        logits, target, "logits", weight, pos_weight, label_smoothing
    )
    with np.errstate(invalid="ignore", over="ignore"):
        py = y if pw is None else pw * y
        ny = 1.0 - y
        loss = _xlogy_terms(py, _softplus64(-x)) + _xlogy_terms(ny, _softplus64(x))
        grad = None
        if return_grad:
            # d softplus(x)/dx = sigmoid(x);  d softplus(-x)/dx = -sigmoid(-x)
            grad = _xlogy_terms(ny, _sigmoid64(x)) - _xlogy_terms(py, _sigmoid64(-x))
    value, g = _binary_reduce(loss, grad, w, red, scale)
    out = v.cast_out(value, dtype)
    return (out, v.cast_out(g, gdtype)) if return_grad and g is not None else out


@_options(_BCE_PARAMS)
def binary_cross_entropy(
    probs: Any,
    target: Any,
    *,
    weight: Any = None,
    pos_weight: Any = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    base: float | None = None,
    return_grad: bool = False,
) -> Any:
    r"""Binary cross-entropy from probabilities, with no hidden clipping.

    .. math:: \ell = -\big(p\, y \log q + (1 - y)\operatorname{log1p}(-q)\big), \qquad
              \frac{\partial\ell}{\partial q} = -\frac{p\, y}{q} + \frac{1 - y}{1 - q}

    A term whose coefficient is 0 adds exactly 0 (``q = 0, y = 0`` gives loss 0, and the
    gradient is the true 1/(1-q) = 1, not NaN).  ``q = 1e-300, y = 1`` gives 690.78 nats
    (PyTorch clamps the log at -100, scikit-learn and Keras clip q); ``q = 0, y = 1`` gives
    +inf, and its gradient -inf.

    Parameters
    ----------
    probs : array_like
        Predicted probabilities in [0, 1].
    target : array_like
        Labels in [0, 1], same shape as `probs`.
    <bce-options>

    Examples
    --------
    The article's cat (p = 0.997694, y = 1) and dog (p = 0.002237, y = 0), in bits:

    >>> import crossentropy as ce
    >>> # mpmath: -log2(0.997694) = 0.00333069653505, -log2(1 - 0.002237) = 0.00323092394375
    >>> ce.binary_cross_entropy([0.997694, 0.002237], [1.0, 0.0], base=2, reduction="none")
    array([0.0033307 , 0.00323092])
    """
    red = v.check_reduction(reduction)
    scale = v.log_scale(base)
    q, y, w, pw, dtype, gdtype = _binary_args(
        probs, target, "probs", weight, pos_weight, label_smoothing
    )
    v.check_probabilities(q, "probs")
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        py = y if pw is None else pw * y
        ny = 1.0 - y
        # log(1 - q) = log1p(-q): exact for small q, and -q is exact
        loss = _xlogy_terms(py, -np.log(q)) + _xlogy_terms(ny, -np.log1p(-q))
        grad = None
        if return_grad:
            # (1 - y) / (1 - q) - p y / q, each a single division (y / q stays exact where
            # 1 / q would overflow), and 0 where its coefficient is 0
            grad = np.where(ny == 0.0, 0.0, ny / (1.0 - q)) - np.where(py == 0.0, 0.0, py / q)
    value, g = _binary_reduce(loss, grad, w, red, scale)
    out = v.cast_out(value, dtype)
    return (out, v.cast_out(g, gdtype)) if return_grad and g is not None else out


# --------------------------------------------------------------------------- information


def entropy(
    probs: Any, axis: int = -1, *, base: float | None = None, return_grad: bool = False
) -> Any:
    r"""Shannon entropy of probability rows, with :math:`0 \log 0 = 0`.

    .. math:: H(p) = -\sum_c p_c \log p_c, \qquad
              \frac{\partial H}{\partial p_c} = -(\log p_c + 1)

    Examples
    --------
    >>> import crossentropy as ce
    >>> float(ce.entropy([0.5, 0.5, 0.0], base=2))
    1.0
    """
    scale = v.log_scale(base)
    p, dtype, ax = _prediction(probs, "probs", axis)
    v.check_probabilities(np.moveaxis(p, -1, ax), "probs")  # positions in the caller's layout
    v.check_rows_sum_to_one(p, -1, dtype, "probs")
    with np.errstate(divide="ignore", invalid="ignore"):
        logp = np.log(p)
        h = np.sum(_xlogy_terms(p, -logp), axis=-1) * scale
        g = -(logp + 1.0) * scale if return_grad else None
        if g is not None:  # a NaN anywhere in a row: the whole gradient row is NaN
            g = np.where(np.isnan(p).any(axis=-1, keepdims=True), np.nan, g)
    return _finish(h, g, dtype, dtype, ax)


def kl_divergence(
    p: Any, q: Any, axis: int = -1, *, base: float | None = None, return_grad: bool = False
) -> Any:
    r"""Kullback-Leibler divergence KL(p || q) of probability rows.

    .. math:: D(p\,\|\,q) = \sum_c p_c \log\frac{p_c}{q_c}, \qquad
              \frac{\partial D}{\partial q_c} = -\frac{p_c}{q_c}

    Terms with :math:`p_c = 0` are 0; :math:`q_c = 0 < p_c` gives +inf.  Where
    :math:`p_c/q_c` is within a factor 2 of 1 the log is taken as
    ``log1p((p - q) / q)`` (``p - q`` is then exact), so nearly equal rows keep their digits.
    The gradient is with respect to `q`.

    Examples
    --------
    >>> import crossentropy as ce
    >>> float(ce.kl_divergence([0.5, 0.5], [0.25, 0.75], base=2))
    0.2075187496394219
    """
    scale = v.log_scale(base)
    pp, pdtype, ax = _prediction(p, "p", axis)
    qq, qdtype, _ = _prediction(q, "q", axis)
    if pp.shape != qq.shape:
        raise ValueError(f"p and q must have the same shape, got {pp.shape} and {qq.shape}")
    for arr, name, dt in ((pp, "p", pdtype), (qq, "q", qdtype)):
        v.check_probabilities(np.moveaxis(arr, -1, ax), name)  # the caller's layout
        v.check_rows_sum_to_one(arr, -1, dt, name)
    dtype = v.result_dtype(pdtype, qdtype)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = pp / qq
        close = (ratio > 0.5) & (ratio < 2.0)
        # log(p / q): log1p((p - q) / q) near 1 (Sterbenz: p - q exact), else log p - log q
        lr = np.where(close, np.log1p((pp - qq) / qq), np.log(pp) - np.log(qq))
        d = np.sum(_xlogy_terms(pp, lr), axis=-1) * scale
        # -p / q as one division (p = q = 5e-324 gives -1, not -inf), 0 where p = 0
        g = np.where(pp == 0.0, 0.0, -pp / qq) * scale if return_grad else None
        # a NaN anywhere in p or q makes the row's value and gradient NaN (even where p = 0)
        nan_row: npt.NDArray[np.bool_] = np.any(np.isnan(pp) | np.isnan(qq), axis=-1)
        d = np.where(nan_row, np.nan, d)
        if g is not None:
            g = np.where(nan_row[..., None], np.nan, g)
    return _finish(d, g, dtype, qdtype, ax)
