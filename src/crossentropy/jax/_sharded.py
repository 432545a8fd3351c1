r"""Vocabulary-parallel linear cross-entropy: the output embedding sharded over a mesh axis.

Call :func:`sharded_linear_cross_entropy` inside ``jax.shard_map`` with the weight
``[V, D]`` sharded along the vocabulary over the mesh axis `axis_name` (``P(axis, None)``)
and the hidden states and labels the same on every member of that axis.  Each member holds
the classes ``[r V_r, (r + 1) V_r)``; the loss over the *whole* vocabulary comes back on
every member, equal to the unsharded :func:`crossentropy.jax.linear_cross_entropy` within
the same bounds.

How (the vocabulary-parallel rule of :mod:`crossentropy.torch.distributed`):

* each member reduces its shard to per-row statistics relative to its own maximum
  (:mod:`._merge`, with the fused loss's blocks and slices inside: no [N, V_r] logits);
* **one collective**: an all-gather of those statistics ([P, 6, N] floats, the torch
  loss's default), after which every member merges the P shards at once, in shard
  order -- the same merge as the slices of one member, so the result does not depend on
  the number of devices beyond the rounding of that merge;
* backward: each member forms the gradient of its own classes from the saved row
  statistics (d weight stays local) and one ``psum`` of its part of d input [N, D].

Uneven vocabularies: ``shard_map`` needs the weight's rows to divide evenly over the axis,
so pad it (with any rows, e.g. zeros) to a multiple and pass the true `num_classes`: the
padding classes are left out of every sum (their logits are -inf) and get zero gradient.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crossentropy import _validate as check
from crossentropy._options import CrossEntropyOptions
from crossentropy.jax import _layout as lay
from crossentropy.jax import _linear as lin
from crossentropy.jax import _merge as mg
from crossentropy.jax import _reduce as red

__all__ = ["sharded_linear_cross_entropy"]

Array = jax.Array
_psum: Any = lax.psum  # (untyped in jax: typed here as Any)


def _shard_targets(y: Array, w: Array | None, cfg: lin._Config, offset: Array,
                   limit: Array) -> lin.Targets:
    """Targets with ``local`` indexing this shard (-1 elsewhere) and ``wy`` this shard's
    part of the target weight (0 elsewhere: the parts are summed after the gather)."""
    counted = jnp.ones(y.shape, bool) if cfg.ignore_index is None else y != cfg.ignore_index
    invalid = counted & ((y < 0) | (y >= cfg.total_classes))
    loc = y - offset
    here = counted & ~invalid & (loc >= 0) & (loc < limit)
    local = jnp.where(here, loc, -1).astype(jnp.int32)
    wy = jnp.ones(y.shape, cfg.cdt) if w is None else w.astype(cfg.cdt)[jnp.maximum(local, 0)]
    return lin.Targets(local, counted, invalid, jnp.where(here, wy, 0.0))


def _gather_invariant(x: Array, axis_name: Any) -> Array:
    """``all_gather`` typed as the same on every member (what out_specs=P() needs)."""
    if hasattr(lax, "pcast"):  # jax >= 0.9
        out: Array = lax.all_gather(x, axis_name, to="invarying")
    else:  # jax 0.8 (absent from newer jax's type stubs)
        out = getattr(lax, "all_gather_invariant")(x, axis_name)  # noqa: B009
    return out


def _gathered(tot: mg.RowTotals, tg: lin.Targets, wsum: Array, axis_name: Any,
              smoothing: bool) -> tuple[mg.RowTotals, Array, Array]:
    """One all-gather of every shard's row statistics; merged in shard order.  Returns
    the whole rows' totals, the target weights and the summed class weight."""
    N = tot.m.shape[0]
    has = tg.local >= 0
    fields = [tot.m, tot.s, jnp.where(has, tot.zt, 0.0), has.astype(tot.m.dtype), tg.wy,
              tot.wz if smoothing and tot.wz is not None else jnp.zeros_like(tot.m)]
    payload = jnp.stack(fields)  # [6, N]
    payload = jnp.concatenate([payload, jnp.broadcast_to(wsum, (6, 1))], axis=1)
    # the one collective; "invariant": every member gets the same array, so what is
    # computed from it (the loss) is the same on every member, as out_specs=P() needs
    every = _gather_invariant(payload, axis_name)  # [P, 6, N + 1]
    rows, wsums = every[:, :, :N], every[:, 0, N]
    parts = mg.SliceStats(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3] > 0,
                          rows[:, 5] if smoothing else None)
    merged = mg.merge(parts, wsums if smoothing else None)
    return merged, jnp.sum(rows[:, 4], axis=0), jnp.sum(wsums)


def _make(cfg: lin._Config, axis_name: Any) -> Any:
    """The custom_vjp per-row loss of one shard for this configuration."""

    def parts(h: Array, W: Array, b: Array | None, w: Array | None, y: Array,
              ) -> tuple[Array, Any]:
        V_r = cfg.num_classes
        offset = lax.axis_index(axis_name) * V_r
        limit = jnp.clip(cfg.total_classes - offset, 0, V_r)
        tg = _shard_targets(y, w, cfg, offset, limit)
        tot = lin.local_totals(h, W, b, w, tg, cfg, limit)
        wsum_here = lin.class_weight_sum(w, cfg, limit)
        merged, wy, wsum = _gathered(tot, tg, wsum_here, axis_name, bool(cfg.eps))
        whole = tg._replace(wy=wy)
        loss = lin.finish_rows(merged, whole, cfg, wsum)
        return loss, (tg, whole, merged.m, merged.s, wsum, limit)

    @jax.custom_vjp
    def rows(h: Array, W: Array, b: Array | None, w: Array | None, y: Array) -> Array:
        return parts(h, W, b, w, y)[0]

    def fwd(h: Array, W: Array, b: Array | None, w: Array | None, y: Array,
            ) -> tuple[Array, Any]:
        loss, (tg, whole, m, s, wsum, limit) = parts(h, W, b, w, y)
        return loss, (h, W, b, w, tg, whole, m, s, wsum, limit)

    def bwd(res: Any, ct: Array) -> tuple[Any, ...]:
        h, W, b, w, tg, whole, m, s, wsum, limit = res
        # this shard's classes, with the whole rows' target weight and statistics
        mine = whole._replace(local=tg.local)
        dh, dW, db = lin.backward(h, W, b, w, mine, m, s, ct.astype(cfg.cdt), cfg, wsum,
                                  limit)
        dh = _psum(dh, axis_name)  # d input: every shard's classes contribute
        hdt, Wdt, bdt = cfg.dtypes
        return (dh.astype(hdt), dW.astype(Wdt), None if db is None else db.astype(bdt),
                None, None)

    rows.defvjp(fwd, bwd)
    return rows


def sharded_linear_cross_entropy(
    input: Any,
    linear_weight: Any,
    target: Any,
    *,
    axis_name: Any,
    num_classes: int | None = None,
    linear_bias: Any = None,
    weight: Any = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    base: float | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: Any = None,
    token_chunk: int | None = None,
    vocab_chunk: int | None = None,
) -> Array:
    r"""The loss of :func:`crossentropy.jax.linear_cross_entropy` with `linear_weight`
    sharded over the vocabulary; call it inside ``jax.shard_map``.

    .. math:: \ell_i = \text{cross\_entropy}(h_i W^\top + b, y_i), \qquad
              W = [W_0; W_1; \dots; W_{P-1}] \text{ over the mesh axis}

    Parameters
    ----------
    input : array_like
        Hidden states ``(..., D)``, the same on every member of `axis_name`.
    linear_weight : array_like
        This member's shard of the output embedding, ``(V_r, D)``; member r holds the
        classes ``[r V_r, (r + 1) V_r)`` (``in_specs=P(axis_name, None)``).
    target : array_like
        Integer class indices into the whole vocabulary, ``input``'s shape without ``D``.
    axis_name : hashable
        The mesh axis the vocabulary is sharded over.
    num_classes : int, optional
        The true vocabulary size, when the shards are padded to divide evenly (default:
        ``V_r`` times the axis size); the padding classes are left out.
    linear_bias, weight : array_like, optional
        This member's shards of the bias ``(V_r,)`` and of the class weights ``(V_r,)``.
    ignore_index, label_smoothing, reduction, base, z_loss, softcap, normalizer,
    token_chunk, vocab_chunk
        As for :func:`crossentropy.jax.linear_cross_entropy` (chunks within a shard).

    Returns
    -------
    Array
        The loss, the same on every member (``out_specs=P()``).

    Notes
    -----
    Collectives: one all-gather of per-row statistics forward, one psum of d input
    backward (and, with class weights, one psum of [N] floats for the mean's divisor).

    Examples
    --------
    A mesh of one device (the docs show four):

    >>> import jax, jax.numpy as jnp
    >>> from jax.sharding import PartitionSpec as P
    >>> import crossentropy.jax as cej
    >>> mesh = jax.make_mesh((1,), ("vocab",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> h = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> W = jnp.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    >>> f = jax.jit(jax.shard_map(lambda h, W, y: cej.sharded_linear_cross_entropy(
    ...     h, W, y, axis_name="vocab"), mesh=mesh,
    ...     in_specs=(P(), P("vocab", None), P()), out_specs=P()))
    >>> round(float(f(h, W, jnp.array([0, 2]))), 6)  # (0.239545 + 2.239545) / 2
    1.239545
    """
    norm_num, norm_arr = red.check_normalizer(normalizer, reduction)
    opts = CrossEntropyOptions.create(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, base=base, normalizer=norm_num,
    )
    h = lay.as_float(input, "input")
    W = lay.as_float(linear_weight, "linear_weight")
    if h.ndim < 1 or W.ndim != 2 or W.shape[1] != h.shape[-1]:
        raise ValueError(f"input (..., D) and linear_weight (V_r, D) must agree; got "
                         f"{h.shape} and {W.shape}")
    V_r = W.shape[0]
    try:
        P = lax.axis_size(axis_name)
    except NameError:
        raise ValueError(f"axis_name={axis_name!r} is not a mesh axis here: call "
                         "sharded_linear_cross_entropy inside jax.shard_map") from None
    V = V_r * P if num_classes is None else num_classes
    if isinstance(V, bool) or not isinstance(V, int) or not 0 < V <= V_r * P:
        raise ValueError(f"num_classes must be an int in (0, {V_r * P}] (the shards hold "
                         f"{V_r} x {P} rows), got {num_classes!r}")
    b = None if linear_bias is None else lay.as_float(linear_bias, "linear_bias")
    w = None if weight is None else lay.as_float(weight, "weight", allow_int=True)
    for arr, name in ((b, "linear_bias"), (w, "weight")):
        if arr is not None and arr.shape != (V_r,):
            raise ValueError(f"{name} must be this shard's ({V_r},), got {arr.shape}")
    y = jnp.asarray(target)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"target must hold integer class indices, got dtype {y.dtype}")
    if y.shape != h.shape[:-1]:
        raise ValueError(f"target must have shape {h.shape[:-1]}, got {y.shape}")
    if not isinstance(target, jax.Array):
        check.as_labels(np.asarray(target), V, "target", opts.ignore_index)
    rows = h.shape[:-1]
    N, D = math.prod(rows), h.shape[-1]
    out_dtype = jnp.promote_types(h.dtype, W.dtype)
    cdt = lay.compute_dtype(out_dtype)
    cfg = lin._Config(lin.plan(N, V_r, token_chunk, vocab_chunk), V_r, V, opts.ignore_index,
                      opts.label_smoothing, opts.z_loss, opts.softcap, jnp.dtype(cdt),
                      (h.dtype, W.dtype, None if b is None else b.dtype), axis_name)
    hh, yy = h.reshape(N, D), y.reshape(N)
    loss = _make(cfg, axis_name)(hh, W, b, w, yy)
    counted = jnp.ones(N, bool) if opts.ignore_index is None else yy != opts.ignore_index
    # the mean's divisor: the target weights, each on its shard, summed over the axis
    offset = lax.axis_index(axis_name) * V_r
    tg = _shard_targets(yy, w, cfg, offset, jnp.clip(V - offset, 0, V_r))
    omega = _psum(tg.wy, axis_name) if w is not None else counted.astype(cdt)
    out: Array = red.reduce(loss.reshape(rows), omega.reshape(rows), opts,
                            norm=norm_arr).astype(out_dtype)
    return out
