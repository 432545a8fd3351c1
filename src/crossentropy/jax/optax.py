r"""optax's classification losses with optax's names, arguments and semantics, computed exactly.

Changing one import is the whole migration::

    from optax import losses               # before
    from crossentropy.jax import optax as losses   # after

Every function returns per-example values (no reduction), as optax's do, and takes the same
positional and keyword arguments (``axis`` an int, a tuple of ints or None where optax
accepts them; ``where`` a mask of the logits' shape or, for a single class axis, of the
rows' shape: a row mask).  The differences, all where optax's value is NaN or not the
exact one, are listed in ``docs/jax.md`` ("optax migration"); in short:

* exact to a few ulp (optax: ``log_softmax`` as ``x - logsumexp(x)`` loses up to 10^7 ulp
  near 0; float32 ``kl_divergence`` near 0 loses every digit);
* a class with logit -inf and label 0 adds 0, never NaN (so ``softmax_cross_entropy`` is
  ``safe_softmax_cross_entropy``);
* a class index outside ``[0, C)`` gives NaN (optax takes -1 as the last class);
* gradients at zero probabilities, -inf logits and masked rows are finite and exact.

The functions are thin: they lay the arrays out and call the rows of
:mod:`crossentropy.jax._categorical`, :mod:`._binary` and :mod:`._information`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp

from crossentropy.jax import _binary as bce
from crossentropy.jax import _categorical as cat
from crossentropy.jax import _information as info
from crossentropy.jax import _layout as lay

__all__ = [
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "smooth_labels",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]

Array = jax.Array

# Each function runs as one jitted program (eagerly, JAX would compile every operation on
# its own); the checks of shapes and dtypes happen while it is traced.
_jit = functools.partial(jax.jit, static_argnames=("axis",))


def _ordered_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """optax's axis argument: an int, a tuple (kept in the order given) or None (all)."""
    if axis is None:
        return tuple(range(ndim))
    items = axis if isinstance(axis, tuple) else (axis,)
    lay.check_axes(items, ndim)  # types, range, repeats
    return tuple(int(a) % ndim for a in items)


def _to_last(x: Array, axes: tuple[int, ...]) -> Array:
    """Move `axes` (in that order) last and flatten them into one axis."""
    batch = tuple(i for i in range(x.ndim) if i not in axes)
    moved = jnp.transpose(x, batch + axes)
    return moved.reshape(*moved.shape[: len(batch)], -1)


def _mask(where: Any, shape: tuple[int, ...], axes: tuple[int, ...]) -> Array | None:
    """optax's `where`: the logits' shape, or (one class axis) the rows' shape."""
    if where is None:
        return None
    m = jnp.asarray(where)
    if m.dtype != jnp.bool_:
        raise TypeError(f"where must be a boolean array, got dtype {m.dtype}")
    if m.ndim != len(shape):
        if len(axes) != 1:
            raise ValueError("a row mask (where without the class axes) needs one class axis")
        m = jnp.expand_dims(m, axes[0])
    out = lay.as_mask(m, shape)
    assert out is not None
    return out


def _logits(logits: Any) -> Array:
    return lay.as_float(logits, "logits")


@_jit
def softmax_cross_entropy(
    logits: Any,
    labels: Any,
    axis: int | tuple[int, ...] | None = -1,
    where: Any = None,
) -> Array:
    r"""optax's ``softmax_cross_entropy``: :math:`-\sum_c y_c \log\operatorname{softmax}(x)_c`.

    `labels` are probability rows broadcastable to `logits`; `where` masks classes (the
    logits' shape) or rows (their shape without `axis`).  A masked row gives 0.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from crossentropy.jax import optax as losses
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> labels = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> losses.softmax_cross_entropy(logits, labels).round(4).tolist()
    [0.2761, 2.9518]
    """
    x = _logits(logits)
    axes = _ordered_axes(axis, x.ndim)
    y = lay.as_float(labels, "labels", allow_int=True)
    try:
        y = jnp.broadcast_to(y, x.shape)
    except ValueError:
        raise ValueError(f"labels with shape {y.shape} cannot be broadcast to logits with "
                         f"shape {x.shape}") from None
    dtype = jnp.promote_types(x.dtype, y.dtype)
    cdt = lay.compute_dtype(dtype)
    mask = _mask(where, x.shape, axes)
    z = _to_last(x, axes).astype(cdt)
    a = _to_last(y, axes).astype(cdt)
    if z.shape[-1] == 0:
        return jnp.zeros(z.shape[:-1], dtype)
    if mask is None:
        keep = jnp.ones(z.shape, bool)
    else:
        keep = _to_last(mask, axes)
        z = jnp.where(keep, z, -jnp.inf)
    counted = jnp.any(keep, axis=-1)
    keep = keep & counted[..., None]
    loss, _ = cat.dense_rows(z, jnp.where(keep, a, 0.0), counted, keep, 0.0)
    return loss.astype(dtype)


def safe_softmax_cross_entropy(logits: Any, labels: Any) -> Array:
    r"""optax's ``safe_softmax_cross_entropy``: :func:`softmax_cross_entropy` over the last
    axis (which here already takes :math:`0 \log 0 = 0` where a logit is -inf).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from crossentropy.jax import optax as losses
    >>> float(losses.safe_softmax_cross_entropy(jnp.array([-jnp.inf, 0.0, 0.0]),
    ...                                         jnp.array([0.0, 0.5, 0.5])))
    0.6931471824645996
    """
    out: Array = softmax_cross_entropy(logits, labels)
    return out


@_jit
def softmax_cross_entropy_with_integer_labels(
    logits: Any,
    labels: Any,
    axis: int | tuple[int, ...] = -1,
    where: Any = None,
) -> Array:
    r"""optax's ``softmax_cross_entropy_with_integer_labels``: :math:`\mathrm{lse}(x) - x_y`.

    With a tuple `axis` the label is a flat index into those axes, in the order given (as
    in optax).  `where` masks classes or rows; a masked row gives 0.  A label outside
    ``[0, C)`` gives NaN (optax: NaN above, the last classes for -1, -2 ...); a label whose
    class is masked out gives 0, as its one-hot row does in :func:`softmax_cross_entropy`
    (optax: the log-sum-exp of the other classes minus the label's logit).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from crossentropy.jax import optax as losses
    >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
    >>> losses.softmax_cross_entropy_with_integer_labels(logits, jnp.array([0, 1])
    ...                                                  ).round(4).tolist()
    [0.2761, 2.9518]
    """
    x = _logits(logits)
    if axis is None or not isinstance(axis, (int, tuple)) or isinstance(axis, bool):
        raise ValueError("Keyword argument 'axis' must be of type 'int' or 'tuple[int, ...]' "
                         f"but actual type is {type(axis)}.")
    axes = _ordered_axes(axis, x.ndim)
    y = jnp.asarray(labels)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"labels must be integer class indices, got dtype {y.dtype}")
    rows = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    if y.shape != rows:
        raise ValueError(f"labels must have the shape of logits without the class axes, "
                         f"{rows}; got {y.shape}")
    cdt = lay.compute_dtype(x.dtype)
    z = _to_last(x, axes).astype(cdt)
    C = z.shape[-1]
    if C == 0:
        return jnp.zeros(rows, x.dtype)
    invalid = (y < 0) | (y >= C)
    safe = jnp.where(invalid, 0, y).astype(jnp.int32)
    mask = _mask(where, x.shape, axes)
    if mask is None:
        counted = jnp.ones(rows, bool)
        wy = jnp.ones(rows, cdt)
        loss, _ = cat.index_rows(z, safe, wy, counted, invalid, 0.0)
        return loss.astype(x.dtype)
    keep = _to_last(mask, axes)
    z = jnp.where(keep, z, -jnp.inf)
    counted = jnp.any(keep, axis=-1)
    keep = keep & counted[..., None]
    a = jnp.where(keep, jax.nn.one_hot(safe, C, dtype=cdt), 0.0)
    loss, _ = cat.dense_rows(z, a, counted, keep, 0.0)
    return jnp.where(invalid & counted, jnp.nan, loss).astype(x.dtype)


@jax.jit
def sigmoid_binary_cross_entropy(logits: Any, labels: Any) -> Array:
    r"""optax's ``sigmoid_binary_cross_entropy``:
    :math:`-y \log\sigma(x) - (1 - y)\log\sigma(-x)`, elementwise, labels cast to the
    logits' dtype and broadcast as optax does.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from crossentropy.jax import optax as losses
    >>> losses.sigmoid_binary_cross_entropy(jnp.array([-40.0, 0.0]),
    ...                                     jnp.array([0.0, 1.0])).tolist()
    [4.24835413113866e-18, 0.6931471824645996]
    """
    x = _logits(logits)
    y = jnp.asarray(labels).astype(x.dtype)
    x, y = jnp.broadcast_arrays(x, y)
    cdt = lay.compute_dtype(x.dtype)
    xc, yc = x.astype(cdt), y.astype(cdt)
    if not x.size:
        return jnp.zeros(x.shape, x.dtype)
    return bce.bce_terms(xc, yc, jnp.asarray(1.0, cdt) - yc).astype(x.dtype)


def _info_args(a: Any, b: Any, names: tuple[str, str], axis: Any, where: Any,
               ) -> tuple[Array, Array, Any, Array | None]:
    pa = lay.as_float(a, names[0])
    pb = lay.as_float(b, names[1])
    pa, pb = jnp.broadcast_arrays(pa, pb)
    dtype = jnp.promote_types(pa.dtype, pb.dtype)
    axes = _ordered_axes(axis, pa.ndim)
    mask = lay.as_mask(where, pa.shape)  # optax: jnp.sum(..., where=where), broadcast
    cdt = lay.compute_dtype(dtype)
    ta, tb = _to_last(pa, axes).astype(cdt), _to_last(pb, axes).astype(cdt)
    m = None if mask is None else _to_last(mask, axes)
    return ta, tb, dtype, m


@_jit
def kl_divergence(log_predictions: Any, targets: Any, axis: int | tuple[int, ...] | None = -1,
                  where: Any = None) -> Array:
    r"""optax's ``kl_divergence``: :math:`\sum_c t_c (\log t_c - \log q_c)`, log q given.

    ``log t_c - log q_c`` is formed as one log of the ratio (no cancellation: optax's
    float32 value for nearly equal rows has no correct digit); :math:`t_c = 0` adds 0 and
    has derivative :math:`-\infty` with respect to :math:`t_c` (optax: NaN).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from crossentropy.jax import optax as losses
    >>> lq = jnp.log(jnp.array([0.25, 0.75]))
    >>> round(float(losses.kl_divergence(lq, jnp.array([0.5, 0.5]))), 6)  # 0.143841 nats
    0.143841
    """
    lq, t, dtype, m = _info_args(log_predictions, targets, ("log_predictions", "targets"),
                                 axis, where)
    if m is not None:
        t = jnp.where(m, t, 0.0)
    if not t.size:
        return jnp.zeros(t.shape[:-1], dtype)
    return info.kl_log_rows(t, lq).astype(dtype)


@_jit
def kl_divergence_with_log_targets(log_predictions: Any, log_targets: Any,
                                   axis: int | tuple[int, ...] | None = -1,
                                   where: Any = None) -> Array:
    r"""optax's ``kl_divergence_with_log_targets``:
    :math:`\sum_c e^{\log t_c} (\log t_c - \log q_c)`; a log-target of -inf adds 0 (optax:
    NaN).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from crossentropy.jax import optax as losses
    >>> lq, lt = jnp.log(jnp.array([0.25, 0.75])), jnp.log(jnp.array([0.5, 0.5]))
    >>> round(float(losses.kl_divergence_with_log_targets(lq, lt)), 6)
    0.143841
    """
    lq, lt, dtype, m = _info_args(log_predictions, log_targets,
                                  ("log_predictions", "log_targets"), axis, where)
    if m is not None:
        lt = jnp.where(m, lt, -jnp.inf)
    if not lt.size:
        return jnp.zeros(lt.shape[:-1], dtype)
    return info.kl_logt_rows(lt, lq).astype(dtype)


@_jit
def smooth_labels(labels: Any, alpha: Any, *, axis: int | tuple[int, ...] | None = -1,
                  where: Any = None) -> Array:
    r"""optax's ``smooth_labels``: :math:`(1 - \alpha)\,y + \alpha / K`, K the number of
    categories along `axis` (or the number `where` keeps).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from crossentropy.jax import optax as losses
    >>> losses.smooth_labels(jnp.array([0.0, 1.0, 0.0, 0.0]), 0.2).tolist()
    [0.05000000074505806, 0.8500000238418579, 0.05000000074505806, 0.05000000074505806]
    """
    y = lay.as_float(labels, "labels")
    axes = _ordered_axes(axis, y.ndim)
    if where is None:
        k = jnp.asarray(float(math.prod(y.shape[a] for a in axes)), y.dtype)
    else:
        m = jnp.asarray(where)
        k = jnp.sum(m, axis=axes, keepdims=True).astype(y.dtype)
    out: Array = ((1.0 - alpha) * y + alpha / k).astype(y.dtype)
    return out
