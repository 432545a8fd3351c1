r"""Cross-entropy, binary cross-entropy, entropy and KL divergence: the public JAX losses.

The semantics are the NumPy API's (:mod:`crossentropy.losses`): the prediction comes first,
the target second; class indices or probability rows; class weights, ``ignore_index``,
label smoothing, z-loss, soft cap, three reductions, ``base`` and ``normalizer``; a mean
divides by the summed weight of the counted (unsmoothed) targets and is 0.0 over nothing.

Each function reads: check (shapes and dtypes only, static under ``jit``) -> lay out (class
axis last, working dtype) -> compute per-row losses with an exact ``custom_jvp`` rule ->
reduce (:mod:`._reduce`) -> round once to the result dtype.

Values that only exist at run time cannot be checked under ``jit``: a class index out of
range (and not ``ignore_index``) makes its row's loss NaN, so a mean is NaN (optax returns
NaN too); probability rows that do not sum to 1, or negative weights, are used as given.
Host data (NumPy arrays and lists) are checked when the function is called, as in the
NumPy API; inside ``jit`` use :func:`crossentropy.jax.check_labels` and
:func:`crossentropy.jax.check_probabilities` with ``jax.experimental.checkify``.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crossentropy import _validate as check
from crossentropy._options import BinaryOptions, CrossEntropyOptions
from crossentropy.jax import _binary as bce
from crossentropy.jax import _categorical as cat
from crossentropy.jax import _information as info
from crossentropy.jax import _layout as lay
from crossentropy.jax import _reduce as red

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "entropy",
    "kl_divergence",
]

Array = jax.Array


def _host(x: Any) -> bool:
    """Data on the host (NumPy, lists, numbers): values can be checked without a sync."""
    return not isinstance(x, jax.Array)


def _class_axis(arr: Array, axis: Any, name: str) -> int:
    if arr.ndim == 0:
        raise ValueError(f"{name} must have a class axis (at least 1 dimension), got a scalar")
    axes = lay.check_axes(axis, arr.ndim)
    if axes is None or len(axes) != 1:
        raise TypeError(f"axis must be an int, got {axis!r}")
    ax = axes[0]
    C = arr.shape[ax]
    if C == 0 and arr.size == 0 and any(d for i, d in enumerate(arr.shape) if i != ax):
        raise ValueError(f"{name} has rows but no classes: axis={axis} has length 0 in "
                         f"shape {arr.shape}")
    return ax


def _labels(target: Any, rows: tuple[int, ...], C: int, ignore_index: int | None) -> Array:
    """Class-index targets as an integer array (values checked when on the host)."""
    if _host(target):
        check.as_labels(np.asarray(target), C, "target", ignore_index)  # raises, naming it
    t = jnp.asarray(target)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"target holds class indices, so it must be an integer array; got "
                        f"dtype {t.dtype}")
    if t.shape != rows:
        raise ValueError(f"target holds class indices, so its shape must be the prediction's "
                         f"shape without the class axis, {rows}; got {t.shape}")
    return t


def _label_masks(t: Array, C: int, ignore_index: int | None) -> tuple[Array, Array, Array]:
    """``(safe labels, counted, invalid)``: labels out of range (and not ignored) are
    invalid, their rows' losses NaN."""
    counted = jnp.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    invalid = counted & ((t < 0) | (t >= C))
    safe = jnp.where(counted & ~invalid, t, 0).astype(jnp.int32)
    return safe, counted, invalid


def _class_weight(weight: Any, C: int) -> Array | None:
    if weight is None:
        return None
    if _host(weight):
        check.check_class_weight(weight, C)
    w = lay.as_float(weight, "weight", allow_int=True)
    if w.shape != (C,):
        raise ValueError(f"weight must be a 1-d array with one entry per class ({C}), got "
                         f"shape {w.shape}")
    return w


def _sample_weight(sample_weight: Any, rows: tuple[int, ...]) -> Array | None:
    if sample_weight is None:
        return None
    if _host(sample_weight):
        check.check_nonnegative(sample_weight, "sample_weight")
    sw = lay.as_float(sample_weight, "sample_weight", allow_int=True)
    try:
        return jnp.broadcast_to(sw, rows)
    except ValueError:
        raise ValueError(f"sample_weight with shape {sw.shape} cannot be broadcast to the "
                         f"rows {rows}") from None


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
    normalizer: Any = None,
    sample_weight: Any = None,
    where: Any = None,
) -> Array:
    r"""Categorical cross-entropy from logits, every option of the NumPy API, in JAX.

    .. math::

        \ell_i = -\sum_c w_c\, t'_{ic} \log\operatorname{softmax}(z_i)_c
                 + \zeta\,\mathrm{lse}(z_i)^2, \qquad z = c \tanh(x / c) \text{ (soft cap)}

    For an index target, :math:`\ell_i = (m - z_{iy}) + \operatorname{log1p}(s)`: two terms
    >= 0, so the loss of a confident row, 1e-18, keeps its digits.  Within 4 ulp of the
    exact per-row value in float64 and float32 (bfloat16 and float16 are computed in
    float32 and rounded once); the gradient (``jax.grad``) is the exact
    :math:`p\,(W + 2\zeta\,\mathrm{lse}) - a`, 0 at -inf logits and ignored rows.

    Parameters
    ----------
    logits : array_like
        Floating-point scores; the class axis is `axis`.
    target : array_like
        Integer class indices (the shape of `logits` without the class axis), or
        probability rows (the shape of `logits`, floating).
    axis : int
        The class axis (default: the last).
    weight : array_like, optional
        Per-class weights, shape ``(C,)``.
    ignore_index : int or None
        Index targets equal to it count neither in the loss nor in the mean (default -100;
        None: none).
    label_smoothing : float
        :math:`\varepsilon \in [0, 1]`: the target becomes :math:`(1-\varepsilon) t +
        \varepsilon / C`.
    reduction : {'mean', 'sum', 'none'}
        'mean' divides by the summed weight of the counted targets (0.0 over nothing).
    base : float, optional
        Unit: None for nats, 2 for bits, or any positive number other than 1.
    z_loss : float
        :math:`\zeta \ge 0`, PaLM's z-loss, added to each counted row, never weighted.
    softcap : float, optional
        :math:`c > 0`: the logits become :math:`c \tanh(x / c)` first (Gemma 2).
    normalizer : float or 0-d array, optional
        Divide the summed loss by this instead (a traced value is allowed: for example the
        global number of target tokens); needs ``reduction='sum'`` or ``'mean'``.
    sample_weight : array_like, optional
        One weight per sample (broadcastable to the rows): each loss is multiplied by it
        and the mean divides by the summed weight.
    where : array_like of bool, optional
        The classes that take part, broadcastable to `logits`: the others have probability
        0, no target mass and gradient 0.

    Notes
    -----
    The options (all but the arrays and a traced `normalizer`) are static Python values:
    a new value compiles a new program under ``jit``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> x = jnp.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> round(float(cej.cross_entropy(x, jnp.array([0, 1]), base=2)), 6)  # mpmath: 0.459555746
    0.459556
    >>> print(jax.grad(cej.cross_entropy)(x, jnp.array([0, 1])).round(4))  # (p - onehot) / N
    [[-0.1705  0.1212  0.0493]
     [ 0.0543 -0.0988  0.0445]]
    """
    norm_num, norm_arr = red.check_normalizer(normalizer, reduction)
    opts = CrossEntropyOptions.create(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, base=base, normalizer=norm_num,
    )
    arr = lay.as_float(logits, "logits")
    ax = _class_axis(arr, axis, "logits")
    C = arr.shape[ax]
    rows = arr.shape[:ax] + arr.shape[ax + 1 :]
    tnd = np.ndim(target)
    if tnd == arr.ndim - 1:
        t = _labels(target, rows, C, opts.ignore_index)
        out_dtype = arr.dtype
    elif tnd == arr.ndim:
        t = lay.as_float(target, "target", allow_int=True)
        if t.shape != arr.shape:
            raise ValueError(f"target holds probability rows, so its shape must equal the "
                             f"prediction's shape {arr.shape}; got {t.shape}")
        if _host(target):
            t64 = np.asarray(target, dtype=np.float64)
            check.check_probabilities(t64, "target")
            check.check_rows_sum_to_one(np.moveaxis(t64, ax, -1), -1,
                                        np.asarray(target).dtype, "target", None)
        out_dtype = (arr.dtype if jnp.issubdtype(jnp.asarray(target).dtype, jnp.integer)
                     else jnp.promote_types(arr.dtype, t.dtype))
    else:
        raise ValueError(f"target must be class indices with {arr.ndim - 1} dimension(s) or "
                         f"probability rows with {arr.ndim}; got {tnd} dimension(s)")
    w = _class_weight(weight, C)
    sw = _sample_weight(sample_weight, rows)
    mask = lay.as_mask(where, arr.shape)
    out: Array = _cross_entropy_jit(arr, t, w, sw, mask, norm_arr, ax, opts,
                                    jnp.dtype(out_dtype))
    return out


@functools.partial(jax.jit, static_argnums=(6, 7, 8))
def _cross_entropy_jit(arr: Array, t: Array, w: Array | None, sw: Array | None,
                       mask: Array | None, norm: Array | None, ax: int,
                       opts: CrossEntropyOptions, out_dtype: Any) -> Array:
    """The computation of :func:`cross_entropy` after its checks (one jitted program)."""
    C = arr.shape[ax]
    rows = arr.shape[:ax] + arr.shape[ax + 1 :]
    cdt = lay.compute_dtype(out_dtype)
    z = jnp.moveaxis(arr, ax, -1).astype(cdt)
    index = jnp.issubdtype(t.dtype, jnp.integer)
    if index:
        labels, counted, invalid = _label_masks(t, C, opts.ignore_index)
        probs = None
    else:
        labels, probs = None, jnp.moveaxis(t, ax, -1).astype(cdt)
        counted, invalid = jnp.ones(rows, bool), jnp.zeros(rows, bool)
    classes = None if mask is None else jnp.moveaxis(mask, ax, -1)
    if opts.softcap is not None:
        z = cat.softcap(z, opts.softcap)
    if classes is not None:  # left out after the cap: probability exactly 0
        z = jnp.where(classes, z, -jnp.inf)
    wc = None if w is None else w.astype(cdt)
    if arr.size == 0:
        loss = jnp.zeros(rows, cdt)
        omega = jnp.zeros(rows, cdt)
    elif labels is not None and not opts.label_smoothing and classes is None:
        wy = jnp.ones(rows, cdt) if wc is None else wc[labels]
        wy = jnp.where(counted, wy, 0.0)
        loss, _ = cat.index_rows(z, labels, wy, counted, invalid, opts.z_loss)
        omega = wy
    else:
        dist = jax.nn.one_hot(labels, C, dtype=cdt) if probs is None else probs
        if opts.label_smoothing:  # t' = (1 - eps) t + eps / C
            dist = (1.0 - opts.label_smoothing) * dist + opts.label_smoothing / C
        a = dist if wc is None else dist * wc
        keep = counted[..., None] if classes is None else counted[..., None] & classes
        a = jnp.where(keep, a, 0.0)
        loss, _ = cat.dense_rows(z, a, counted, keep, opts.z_loss)
        loss = jnp.where(invalid, jnp.nan, loss)
        if labels is not None:
            omega = jnp.where(counted, 1.0 if wc is None else wc[labels], 0.0).astype(cdt)
        elif wc is None:
            omega = jnp.ones(rows, cdt)
        else:  # the weight of each (unsmoothed) probability row
            assert probs is not None
            omega = jnp.sum(probs * wc, axis=-1)
    if sw is not None:
        sw = sw.astype(cdt)
        loss, omega = loss * sw, omega * sw
    out: Array = red.reduce(loss, omega, opts, norm=norm).astype(out_dtype)
    return out


def binary_cross_entropy_with_logits(
    logits: Any,
    target: Any,
    *,
    weight: Any = None,
    pos_weight: Any = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    base: float | None = None,
    normalizer: Any = None,
) -> Array:
    r"""Binary cross-entropy from logits, elementwise labels in [0, 1], in JAX.

    .. math::

        \ell = p\,y \operatorname{softplus}(-x) + (1 - y)\operatorname{softplus}(x), \qquad
        \frac{\partial\ell}{\partial x} = (1 - y)\,\sigma(x) - p\,y\,\sigma(-x)

    with *p* the pos_weight and *y* the (smoothed) label.  Two terms >= 0: ``x = -40,
    y = 0`` gives 4.25e-18 (optax's ``sigmoid_binary_cross_entropy``, written as
    ``-y log σ(x) - (1 - y) log σ(-x)``, agrees there; ``max(x, 0) - x y + log1p(e^-|x|)``
    gives 0).  Within 2 ulp per element in float64 and float32 for labels 0 and 1.

    Parameters
    ----------
    logits : array_like
        Floating-point logits.
    target : array_like
        Labels in [0, 1] (soft labels allowed), the shape of `logits`.
    weight, pos_weight : array_like, optional
        Elementwise weight and weight of the positive term, broadcastable to `logits`.
    label_smoothing : float
        :math:`\varepsilon`: labels become :math:`(1-\varepsilon) y + \varepsilon/2`.
    reduction : {'mean', 'sum', 'none'}
        'mean' averages over all elements (0.0 when there are none).
    base, normalizer
        As for :func:`cross_entropy`.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> float(cej.binary_cross_entropy_with_logits(jnp.array(-40.0), jnp.array(0.0)))
    4.24835413113866e-18
    """
    norm_num, norm_arr = red.check_normalizer(normalizer, reduction)
    opts = BinaryOptions.create(reduction=reduction, label_smoothing=label_smoothing,
                                base=base, normalizer=norm_num)
    x = lay.as_float(logits, "logits")
    if _host(target):
        check.check_probabilities(np.asarray(target, dtype=np.float64), "target")
    y = lay.as_float(target, "target", allow_int=True)
    if y.shape != x.shape:
        raise ValueError(f"target must have the shape of logits {x.shape}, got {y.shape}")
    int_labels = jnp.issubdtype(jnp.asarray(target).dtype, jnp.integer)
    out_dtype = x.dtype if int_labels else jnp.promote_types(x.dtype, y.dtype)
    ws: list[Array | None] = []
    for arg, name in ((weight, "weight"), (pos_weight, "pos_weight")):
        if arg is None:
            ws.append(None)
            continue
        if _host(arg):
            check.check_nonnegative(arg, name)
        wa = lay.as_float(arg, name, allow_int=True)
        try:
            jnp.broadcast_shapes(wa.shape, x.shape)
        except ValueError:
            raise ValueError(f"{name} with shape {wa.shape} cannot be broadcast to logits "
                             f"with shape {x.shape}") from None
        ws.append(wa)
    out: Array = _bce_jit(x, y, ws[0], ws[1], norm_arr, opts, jnp.dtype(out_dtype))
    return out


@functools.partial(jax.jit, static_argnums=(5, 6))
def _bce_jit(x: Array, y: Array, w: Array | None, pw: Array | None, norm: Array | None,
             opts: BinaryOptions, out_dtype: Any) -> Array:
    cdt = lay.compute_dtype(out_dtype)
    xc, yc = x.astype(cdt), y.astype(cdt)
    if opts.label_smoothing:
        yc = (1.0 - opts.label_smoothing) * yc + 0.5 * opts.label_smoothing
    a = yc if pw is None else jnp.broadcast_to(pw, x.shape).astype(cdt) * yc
    one = jnp.asarray(1.0, cdt)
    loss = bce.bce_terms(xc, a, one - yc) if x.size else jnp.zeros(x.shape, cdt)
    if w is not None:
        loss = loss * jnp.broadcast_to(w, x.shape).astype(cdt)
    out: Array = red.reduce(loss, float(x.size), opts, norm=norm).astype(out_dtype)
    return out


def _prob_rows(p: Any, name: str, axis: int) -> tuple[Array, int]:
    arr = lay.as_float(p, name, allow_int=True)
    ax = _class_axis(arr, axis, name)
    if _host(p):
        p64 = np.asarray(p, dtype=np.float64)
        check.check_probabilities(p64, name)
        check.check_rows_sum_to_one(np.moveaxis(p64, ax, -1), -1, np.asarray(p).dtype, name,
                                    None)
    return arr, ax


def entropy(probs: Any, axis: int = -1, *, base: float | None = None) -> Array:
    r"""Shannon entropy of probability rows, with :math:`0 \log 0 = 0`.

    .. math:: H(p) = -\sum_c p_c \log p_c, \qquad
              \frac{\partial H}{\partial p_c} = -(\log p_c + 1)

    (:math:`+\infty` at :math:`p_c = 0`, the exact one-sided slope.)

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> float(cej.entropy(jnp.array([0.5, 0.5, 0.0]), base=2))
    1.0
    """
    scale = check.log_scale(base)
    arr, ax = _prob_rows(probs, "probs", axis)
    out: Array = _entropy_jit(arr, ax, scale)
    return out


@functools.partial(jax.jit, static_argnums=(1, 2))
def _entropy_jit(arr: Array, ax: int, scale: float) -> Array:
    p = jnp.moveaxis(arr, ax, -1).astype(lay.compute_dtype(arr.dtype))
    h = info.entropy_rows(p) if arr.size else jnp.zeros(p.shape[:-1], p.dtype)
    out: Array = red.scaled(h, scale).astype(arr.dtype)
    return out


def kl_divergence(p: Any, q: Any, axis: int = -1, *, base: float | None = None) -> Array:
    r"""Kullback-Leibler divergence KL(p || q) of probability rows.

    .. math:: D(p\,\|\,q) = \sum_c p_c \log\frac{p_c}{q_c}, \qquad
              \frac{\partial D}{\partial q_c} = -\frac{p_c}{q_c}

    Terms with :math:`p_c = 0` are 0 (their gradient with respect to q too);
    :math:`q_c = 0 < p_c` gives +inf.  Where :math:`p_c / q_c` is within a factor 2 of 1
    the log is ``log1p((p - q) / q)``, so nearly equal rows keep their digits.  (optax's
    ``kl_divergence(log_predictions, targets)`` is :func:`crossentropy.jax.optax.kl_divergence`.)

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> float(cej.kl_divergence(jnp.array([0.5, 0.5]), jnp.array([0.25, 0.75]), base=2))
    0.20751874148845673
    """
    scale = check.log_scale(base)
    parr, ax = _prob_rows(p, "p", axis)
    qarr, _ = _prob_rows(q, "q", axis)
    if parr.shape != qarr.shape:
        raise ValueError(f"p and q must have the same shape, got {parr.shape} and {qarr.shape}")
    out: Array = _kl_jit(parr, qarr, ax, scale)
    return out


@functools.partial(jax.jit, static_argnums=(2, 3))
def _kl_jit(parr: Array, qarr: Array, ax: int, scale: float) -> Array:
    dtype = jnp.promote_types(parr.dtype, qarr.dtype)
    cdt = lay.compute_dtype(dtype)
    pp = jnp.moveaxis(parr, ax, -1).astype(cdt)
    qq = jnp.moveaxis(qarr, ax, -1).astype(cdt)
    d = info.kl_rows(pp, qq) if pp.size else jnp.zeros(pp.shape[:-1], cdt)
    out: Array = red.scaled(d, scale).astype(dtype)
    return out
