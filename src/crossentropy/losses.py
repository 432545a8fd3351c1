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

import math
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from crossentropy import _validate as check
from crossentropy._core import binary as core_bce
from crossentropy._core import categorical as core_ce
from crossentropy._core import information as core_info
from crossentropy._core.reduce import Factor, Reduced, factor, reduce
from crossentropy._dispatch import pick
from crossentropy._options import BinaryOptions, CrossEntropyOptions, Reduction

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "cross_entropy_from_log_probs",
    "cross_entropy_from_probs",
    "entropy",
    "kl_divergence",
    "nll_loss",
]

F64 = npt.NDArray[np.float64]


# --------------------------------------------------------------------------- layout


def _prediction(x: Any, name: str, axis: Any) -> tuple[np.ndarray, np.dtype[Any], int]:
    """``(arr, result dtype, class axis)`` of a prediction; `arr` keeps a float dtype."""
    arr, dtype = check.real_array(x, name)
    ax = check.check_axis(axis, arr.ndim)
    if arr.shape[ax] == 0 and math.prod(arr.shape[:ax] + arr.shape[ax + 1 :]) > 0:
        # rows with no classes hold no distribution (an empty batch of rows is fine)
        raise ValueError(
            f"{name} has rows but no classes: axis={axis} has length 0 in shape {arr.shape}"
        )
    return arr, dtype, ax


def _last(arr: np.ndarray, ax: int) -> F64:
    """float64 rows with the class axis last, contiguous (so that axis=k sums in the same
    pairwise order as moving k last)."""
    return np.ascontiguousarray(np.moveaxis(arr.astype(np.float64, copy=False), ax, -1))


def _target(
    target: Any,
    shape: tuple[int, ...],
    ax: int,
    ignore_index: int | None,
    tol: float | None = None,
    classes: Any = None,
) -> tuple[core_ce.Target, np.dtype[Any] | None]:
    """Validate categorical targets for a prediction of `shape` (class axis `ax`).

    Returns the core's :class:`~crossentropy._core.categorical.Target` (class axis last) and
    the float dtype probability targets ask the result to have (None for index targets and
    integer one-hot rows, which are exact).
    """
    C = shape[ax]
    rows = shape[:ax] + shape[ax + 1 :]
    tarr = np.asarray(target)
    if tarr.ndim == len(shape) - 1:  # class indices
        if tarr.shape != rows:
            raise ValueError(
                f"target holds class indices, so its shape must be the prediction's "
                f"shape without the class axis, {rows}; got {tarr.shape}"
            )
        idx, counted = check.as_labels(tarr, C, "target", ignore_index)
        return core_ce.Target(counted=counted, labels=idx, classes=classes), None
    if tarr.ndim == len(shape):  # probability rows
        if tarr.shape != shape:
            raise ValueError(
                f"target holds probability rows, so its shape must equal the "
                f"prediction's shape {shape}; got {tarr.shape}"
            )
        t64, tdtype = check.as_float_array(tarr, "target")
        check.check_probabilities(t64, "target")  # positions in the caller's layout
        t = np.ascontiguousarray(np.moveaxis(t64, ax, -1))
        check.check_rows_sum_to_one(t, -1, tdtype, "target", tol)
        counted = np.ones(rows, dtype=bool)
        exact = tarr.dtype.kind in "iu"  # integer rows (one-hot) are exact: no widening
        return core_ce.Target(counted=counted, probs=t, classes=classes), (
            None if exact else tdtype)
    raise ValueError(
        f"target must be class indices with {len(shape) - 1} dimension(s) or probability "
        f"rows with {len(shape)}; got an array with {tarr.ndim} dimension(s)"
    )


def _categorical(
    arr: np.ndarray,
    ax: int,
    dtype: np.dtype[Any],
    target: Any,
    weight: Any,
    sample_weight: Any,
    classes: npt.NDArray[np.bool_] | None,
    tol: float | None,
    opts: CrossEntropyOptions,
) -> tuple[core_ce.Target, np.dtype[Any], F64 | None, F64 | None]:
    """``(targets, result dtype, class weights, sample weights)`` of a categorical loss on
    the prediction `arr` (class axis `ax`, result dtype so far `dtype`)."""
    tg, tdtype = _target(target, arr.shape, ax, opts.ignore_index, tol, classes)
    if tdtype is not None:
        dtype = check.result_dtype(dtype, tdtype)
    w = check.check_class_weight(weight, arr.shape[ax])
    return tg, dtype, w, _sample_weight(sample_weight, tg.counted.shape)


def _classes(where: Any, shape: tuple[int, ...], ax: int) -> npt.NDArray[np.bool_] | None:
    """A `where` mask over the prediction (True: the class takes part), class axis last."""
    if where is None:
        return None
    m = np.asarray(where)
    if m.dtype != np.bool_:
        raise TypeError(f"where must be a boolean array, got dtype {m.dtype}")
    try:
        m = np.broadcast_to(m, shape)
    except ValueError:
        raise ValueError(
            f"where with shape {m.shape} cannot be broadcast to the prediction's shape {shape}"
        ) from None
    return np.ascontiguousarray(np.moveaxis(m, ax, -1))


def _sample_weight(sample_weight: Any, rows: tuple[int, ...]) -> F64 | None:
    """Per-sample weights: finite, >= 0, one per row (broadcastable to the row shape)."""
    if sample_weight is None:
        return None
    sw = check.check_nonnegative(sample_weight, "sample_weight")
    return np.asarray(check.broadcast_to_shape(sw, rows, "sample_weight", "the rows"),
                      dtype=np.float64)


def _omega(t: core_ce.Target, weight: F64 | None, opts: CrossEntropyOptions) -> Any:
    """What a mean divides by: the rows' target weights, or (torch's rule for probability
    targets) the number of rows."""
    if t.probs is not None and opts.prob_mean == "rows":
        return float(t.counted.size)
    return core_ce.row_weights(t, weight)


def _reduced(loss: F64, omega: Any, opts: CrossEntropyOptions | BinaryOptions) -> Reduced:
    """The core's reduction (:func:`crossentropy._core.reduce.reduce`) under `opts`."""
    return reduce(loss, omega, opts.reduction, opts.scale, normalizer=opts.normalizer,
                  empty_mean=opts.empty_mean)


def _factor(omega: Any, opts: CrossEntropyOptions | BinaryOptions) -> Factor:
    """How the gradient is scaled to match :func:`_reduced` (factor first, divisor last),
    known before the losses are: a kernel scales the gradient while computing them."""
    return factor(opts.reduction, omega, opts.scale, normalizer=opts.normalizer)


def _reduce_rows(
    loss: F64, g64: F64 | None, omega: Any, sw: F64 | None, opts: CrossEntropyOptions
) -> tuple[Reduced, F64 | None]:
    """Sample weights (each loss and its share of the mean), then the reduction, and the
    per-row gradients scaled to match (factor first, divisor last)."""
    if sw is not None:
        loss, omega = loss * sw, omega * sw
        g64 = None if g64 is None else g64 * sw[..., None]
    reduced = _reduced(loss, omega, opts)
    return reduced, None if g64 is None else reduced.apply(g64)


def _check_grad_out(grad_out: Any, return_grad: bool, shape: tuple[int, ...],
                    dtype: np.dtype[Any]) -> None:
    """`grad_out`, when given: only with `return_grad`, the prediction's shape and dtype."""
    if grad_out is not None:
        if not return_grad:
            raise ValueError("grad_out is only used with return_grad=True")
        check.check_out(grad_out, shape, dtype, "grad_out")


def _finish(
    value: F64,
    grad: Any,
    dtype: np.dtype[Any],
    grad_dtype: np.dtype[Any],
    axis: int | None,
    grad_out: Any = None,
) -> Any:
    """Round the value once to `dtype`; put the gradient (class axis last, float64, or
    already placed by a kernel when `axis` is None) back in the caller's layout."""
    out = check.cast_out(value, dtype)
    if grad is None:
        return out
    g = grad if axis is None else check.cast_out(np.moveaxis(grad, -1, axis), grad_dtype)
    if grad_out is not None and g is not grad_out:
        np.copyto(grad_out, g)
        g = grad_out
    return out, g


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
    normalizer : float, optional
        Divide the summed loss by this number instead (for example the number of target
        tokens of a whole batch split into parts); needs ``reduction='sum'`` or ``'mean'``.
    sample_weight : array_like, optional
        One weight per sample (the prediction's shape without the class axis), finite and
        >= 0, as scikit-learn's and Keras' ``sample_weight``: each loss is multiplied by it
        and the mean divides by the summed weight (``sum_i s_i l_i / sum_i s_i omega_i``).
    where : array_like of bool, optional
        The classes that take part, broadcastable to the prediction (optax's ``where``):
        the others are left out of the softmax and of the sum, with gradient 0.
    prob_tol : float, optional
        Tolerance on the row sums of probability targets (None: ``max(C, 16)`` machine
        epsilons of the precision the rows were computed in -- float32 rows cast to
        float64 get float32's).
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
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: float | None = None,
    sample_weight: Any = None,
    where: Any = None,
    prob_tol: float | None = None,
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
    z_loss : float
        :math:`\zeta \ge 0`: adds :math:`\zeta\,\mathrm{lse}_i^2` to each counted
        row's loss (PaLM's z-loss), never weighted.
    softcap : float, optional
        :math:`c > 0`: the logits become :math:`c \tanh(x / c)` first (Gemma 2).
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
    opts = CrossEntropyOptions.create(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, base=base, normalizer=normalizer,
    )
    arr, dtype, ax = _prediction(logits, "logits", axis)
    gdtype = dtype  # the gradient keeps the prediction's dtype
    tol = check.check_tolerance(prob_tol)
    classes = _classes(where, arr.shape, ax)
    tg, dtype, w, sw = _categorical(arr, ax, dtype, target, weight, sample_weight, classes,
                                    tol, opts)
    _check_grad_out(grad_out, return_grad, arr.shape, gdtype)
    omega = _omega(tg, w, opts)
    if sw is not None:  # sample weights scale each loss and its share of the mean
        omega = omega * sw
    gf = _factor(omega, opts) if return_grad else None
    index = tg.labels is not None and classes is None
    be = pick(  # a subnormal summed weight overflows factor / divisor: the core divides last
        arr, numba=index and arr.size > 0 and (gf is None or math.isfinite(gf.grad_scale)),
        plain=index and gf is None and w is None and sw is None and not opts.label_smoothing
        and not opts.z_loss and opts.softcap is None,
    )
    loss, g = be.categorical(arr, ax, tg, w, sw, opts, gf, grad_out)
    return _finish(_reduced(loss, omega, opts).value, g, dtype, gdtype, None, grad_out)


def _from_normalised(
    pred: Any,
    target: Any,
    name: str,
    is_log: bool,
    axis: int,
    weight: Any,
    opts: CrossEntropyOptions,
    return_grad: bool,
    sample_weight: Any,
    where: Any,
    prob_tol: Any,
) -> Any:
    arr, dtype, ax = _prediction(pred, name, axis)
    gdtype = dtype  # the gradient keeps the prediction's dtype
    q = _last(arr, ax)
    tol = check.check_tolerance(prob_tol)
    classes = _classes(where, arr.shape, ax)
    qc = np.moveaxis(q, -1, ax)  # the caller's layout, so that positions are theirs
    # with `where`, the rows are normalised over the classes that take part
    qs = q if classes is None else np.where(classes, q, -np.inf if is_log else 0.0)
    if is_log:
        bad = qc > 0.0
        if bad.any():
            idx = check.first_index(bad)
            raise ValueError(f"{name} must be <= 0; {name}{check.where_str(idx)} = {qc[idx]!r}")
        with np.errstate(under="ignore"):
            check.check_rows_sum_to_one(np.exp(qs), -1, dtype, f"exp({name})", tol)
    else:
        check.check_probabilities(qc, name)
        check.check_rows_sum_to_one(qs, -1, dtype, name, tol)
    tg, dtype, w, sw = _categorical(arr, ax, dtype, target, weight, sample_weight, classes,
                                    tol, opts)
    loss, g64 = core_ce.normalised_rows(
        q, tg, w, log=is_log, label_smoothing=opts.label_smoothing, want_grad=return_grad
    )
    reduced, g = _reduce_rows(loss, g64, _omega(tg, w, opts), sw, opts)
    return _finish(reduced.value, g, dtype, gdtype, ax)


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
    normalizer: float | None = None,
    sample_weight: Any = None,
    where: Any = None,
    prob_tol: float | None = None,
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
    opts = CrossEntropyOptions.create(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        base=base, normalizer=normalizer,
    )
    return _from_normalised(probs, target, "probs", False, axis, weight, opts, return_grad,
                            sample_weight, where, prob_tol)


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
    normalizer: float | None = None,
    sample_weight: Any = None,
    where: Any = None,
    prob_tol: float | None = None,
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
    opts = CrossEntropyOptions.create(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        base=base, normalizer=normalizer,
    )
    return _from_normalised(
        log_probs, target, "log_probs", True, axis, weight, opts, return_grad, sample_weight,
        where, prob_tol,
    )


def nll_loss(
    log_probs: Any,
    target: Any,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    base: float | None = None,
    normalizer: float | None = None,
    sample_weight: Any = None,
    return_grad: bool = False,
) -> Any:
    r"""The negative log-likelihood loss of PyTorch's ``nll_loss``: ``-w_y x_y`` per sample.

    .. math:: \ell_i = -w_{y_i}\, x_{i y_i}, \qquad
              \text{mean} = \frac{\sum_i \ell_i}{\sum_i w_{y_i}}

    `log_probs` is used as it is (as in PyTorch, it is not checked to be normalised; use
    :func:`cross_entropy_from_log_probs` for that check, or :func:`cross_entropy` on
    logits).  Targets are class indices.

    Parameters
    ----------
    log_probs : array_like
        Log-probabilities, for example the output of :func:`log_softmax`.
    target : array_like
        Class indices, the shape of `log_probs` without the class axis.
    axis, weight, ignore_index, reduction, base, normalizer, sample_weight, return_grad
        As for :func:`cross_entropy`.

    Examples
    --------
    >>> import crossentropy as ce
    >>> lp = ce.log_softmax([[9.8, 3.7, 0.2]])
    >>> float(ce.nll_loss(lp, [0], base=2))  # mpmath: 0.00332964080008
    0.00332964080008
    """
    opts = CrossEntropyOptions.create(
        reduction=reduction, ignore_index=ignore_index, base=base, normalizer=normalizer
    )
    arr, dtype, ax = _prediction(log_probs, "log_probs", axis)
    x = _last(arr, ax)
    tg, _ = _target(target, arr.shape, ax, opts.ignore_index)
    if tg.labels is None:
        raise ValueError("nll_loss takes class indices; for probability rows use "
                         "cross_entropy_from_log_probs")
    w = check.check_class_weight(weight, arr.shape[ax])
    sw = _sample_weight(sample_weight, tg.counted.shape)
    loss, g64 = core_ce.nll_rows(x, tg, w, want_grad=return_grad)
    reduced, g = _reduce_rows(loss, g64, _omega(tg, w, opts), sw, opts)
    return _finish(reduced.value, g, dtype, dtype, ax)


# --------------------------------------------------------------------------- binary


def _binary_args(
    pred: Any, target: Any, name: str, weight: Any, pos_weight: Any, opts: BinaryOptions
) -> tuple[np.ndarray, F64, F64 | None, F64 | None, np.dtype[Any], np.dtype[Any]]:
    """``(x, y, weight, pos_weight, value dtype, gradient dtype = the prediction's)``;
    x keeps its float dtype, y is float64 and smoothed."""
    x, dtype = check.real_array(pred, name)
    y, ydtype = check.as_float_array(target, "target")
    if np.asarray(target).dtype.kind in "iu":  # integer labels are exact: no widening
        ydtype = dtype
    if y.shape != x.shape:
        raise ValueError(f"target must have the shape of {name} {x.shape}, got {y.shape}")
    check.check_probabilities(y, "target")
    y = core_bce.smooth_labels(y, opts.label_smoothing)
    ws: list[F64 | None] = []
    for arg, argname in ((weight, "weight"), (pos_weight, "pos_weight")):
        if arg is None:
            ws.append(None)
            continue
        w = check.check_nonnegative(arg, argname)
        ws.append(np.asarray(check.broadcast_to_shape(w, x.shape, argname, name), dtype=np.float64))
    return x, y, ws[0], ws[1], check.result_dtype(dtype, ydtype), dtype


def _binary_finish(
    loss: F64, grad: Any, opts: BinaryOptions, dtype: np.dtype[Any], size: int
) -> Any:
    """Reduce (a mean is over all `size` elements) and round once; the gradient comes
    scaled and placed."""
    out = check.cast_out(_reduced(loss, float(size), opts).value, dtype)
    return out if grad is None else (out, grad)


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
    normalizer : float, optional
        Divide the summed loss by this number instead of the element count.
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
    normalizer: float | None = None,
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
    opts = BinaryOptions.create(
        reduction=reduction, label_smoothing=label_smoothing, base=base, normalizer=normalizer
    )
    x, y, w, pw, dtype, gdtype = _binary_args(logits, target, "logits", weight, pos_weight, opts)
    _check_grad_out(grad_out, return_grad, x.shape, gdtype)
    gf = _factor(float(x.size), opts)
    one_pos = pw is None or pw.size == 0 or bool(np.all(pw == pw.flat[0]))
    be = pick(x, numba=w is None and one_pos and x.size > 0 and math.isfinite(gf.grad_scale))
    loss, g = be.bce_with_logits(x, y, w, pw, gf if return_grad else None, grad_out,
                                 per_element=opts.reduction is Reduction.NONE)
    return _binary_finish(loss, g, opts, dtype, x.size)


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
    normalizer: float | None = None,
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
    opts = BinaryOptions.create(
        reduction=reduction, label_smoothing=label_smoothing, base=base, normalizer=normalizer
    )
    q, y, w, pw, dtype, gdtype = _binary_args(probs, target, "probs", weight, pos_weight, opts)
    q64 = q.astype(np.float64, copy=False)
    check.check_probabilities(q64, "probs")
    loss, grad = core_bce.from_probs(q64, y, pw, want_grad=return_grad)
    if w is not None:
        loss = loss * w
        grad = None if grad is None else grad * w
    gf = _factor(float(q.size), opts)
    g = None if grad is None else check.cast_out(gf.apply(grad), gdtype)
    return _binary_finish(loss, g, opts, dtype, q.size)


# --------------------------------------------------------------------------- information


def entropy(
    probs: Any,
    axis: int = -1,
    *,
    base: float | None = None,
    prob_tol: float | None = None,
    return_grad: bool = False,
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
    scale = check.log_scale(base)
    arr, dtype, ax = _prediction(probs, "probs", axis)
    p = _last(arr, ax)
    check.check_probabilities(np.moveaxis(p, -1, ax), "probs")  # positions in the caller's layout
    check.check_rows_sum_to_one(p, -1, dtype, "probs", check.check_tolerance(prob_tol))
    h, g = core_info.entropy(p, want_grad=return_grad)
    return _finish(h * scale, None if g is None else g * scale, dtype, dtype, ax)


def kl_divergence(
    p: Any,
    q: Any,
    axis: int = -1,
    *,
    base: float | None = None,
    prob_tol: float | None = None,
    return_grad: bool = False,
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
    scale = check.log_scale(base)
    parr, pdtype, ax = _prediction(p, "p", axis)
    qarr, qdtype, _ = _prediction(q, "q", axis)
    if parr.shape != qarr.shape:
        raise ValueError(f"p and q must have the same shape, got {parr.shape} and {qarr.shape}")
    pp, qq = _last(parr, ax), _last(qarr, ax)
    tol = check.check_tolerance(prob_tol)
    for arr, name, dt in ((pp, "p", pdtype), (qq, "q", qdtype)):
        check.check_probabilities(np.moveaxis(arr, -1, ax), name)  # the caller's layout
        check.check_rows_sum_to_one(arr, -1, dt, name, tol)
    d, g = core_info.kl_divergence(pp, qq, want_grad=return_grad)
    return _finish(d * scale, None if g is None else g * scale,
                   check.result_dtype(pdtype, qdtype), qdtype, ax)
