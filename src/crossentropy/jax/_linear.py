r"""Fused linear cross-entropy: the loss of ``input @ linear_weight.T + linear_bias`` without
the [N, V] logits.

The rows (tokens) are cut into blocks of ``token_chunk`` rows and, within a block, the
vocabulary into slices of ``vocab_chunk`` classes; one block's logits exist one slice at a
time.  Forward: for each slice, the block's logits are reduced to row statistics
(:mod:`._merge`) and dropped; the statistics of all slices are merged at once into the
per-row loss of the NumPy core, every option included (class weights, ``ignore_index``,
label smoothing, z-loss, soft cap, base, the three reductions, a normalizer), with the
bounds of :func:`crossentropy.jax.cross_entropy` on the logits as the matmul forms them.

Backward (a ``jax.custom_vjp``): for each block and slice, the logits are formed again, the
gradient of the slice's logits from the saved row statistics, then its products with the
weight slice (into d input) and with the block's hidden states (into the slice of d
weight).  The vocabulary is the inner loop on purpose: each slice of d weight is written
once per block (with the tokens inside, all of d weight would be read and written once
per token chunk: 16 GB of memory traffic at V = 128,256 with 128-row chunks), and every
matmul has large dimensions on all sides.  Four matmuls per slice instead of the unfused
loss's three; measured in ``bench/jax_linear.py``.

``jax.jacfwd`` (forward mode) does not apply to a ``custom_vjp``: differentiate in reverse
mode.  Class weights and a traced normalizer are not differentiated (their cotangent is 0).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crossentropy import _validate as check
from crossentropy._options import CrossEntropyOptions, Reduction
from crossentropy.jax import _arith as ar
from crossentropy.jax import _layout as lay
from crossentropy.jax import _merge as mg
from crossentropy.jax import _reduce as red

__all__ = ["Plan", "linear_cross_entropy", "plan"]

Array = jax.Array

#: logits per slice by default (2^24: 64 MiB of float32), and rows per block at most
SLICE_ELEMENTS = 1 << 24
BLOCK_ROWS = 4096


class Plan(NamedTuple):
    """How the rows and classes are cut: blocks of ``token_chunk`` rows (the rows padded
    to a multiple), ``vocab_chunks`` slices of ``vocab_slice`` classes (the last starts
    earlier and leaves out the classes its neighbour holds)."""

    token_chunk: int
    vocab_chunks: int
    vocab_slice: int


def _positive(name: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


def plan(num_rows: int, num_classes: int, token_chunk: int | None = None,
         vocab_chunk: int | None = None) -> Plan:
    """The :class:`Plan` for `num_rows` tokens and `num_classes` classes: by default blocks
    of at most 4096 rows and slices of about 2^24 logits."""
    _positive("token_chunk", token_chunk)
    _positive("vocab_chunk", vocab_chunk)
    T = min(token_chunk or BLOCK_ROWS, max(num_rows, 1))
    vs = vocab_chunk or max(1, SLICE_ELEMENTS // T)
    vs = min(vs, max(num_classes, 1))
    k = -(-num_classes // vs) if num_classes else 1
    vs = -(-num_classes // k) if num_classes else 0  # as even as the count allows
    return Plan(T, k, vs)


class _Config(NamedTuple):
    """The static part of a call (hashable: a jit and custom_vjp constant).

    ``num_classes`` is the number of classes of the weight given (a shard's, for the
    sharded loss); ``total_classes`` that of the whole vocabulary."""

    plan: Plan
    num_classes: int
    total_classes: int
    ignore_index: int | None
    eps: float
    zeta: float
    cap: float | None
    cdt: Any
    dtypes: tuple[Any, Any, Any]  # of input, linear_weight, linear_bias (None without)
    axis: Any = None  # the mesh axis of the sharded loss (its scan carries vary over it)


def _varying(x: Array, cfg: _Config) -> Array:
    """A scan's initial carry, typed as varying over the sharded loss's mesh axis (inside
    shard_map, a carry that becomes varying must start so)."""
    if cfg.axis is None:
        return x
    if hasattr(lax, "pcast"):  # jax >= 0.9
        out: Array = lax.pcast(x, (cfg.axis,), to="varying")
    else:  # jax 0.8 (pvary: absent from newer jax's type stubs)
        out = getattr(lax, "pvary")(x, (cfg.axis,))  # noqa: B009
    return out


class Targets(NamedTuple):
    """Per-row target information ([N] each): ``local`` the class index into the weight
    given (-1 where the class is not there), ``counted`` the rows that take part,
    ``invalid`` counted rows whose label is out of range (loss NaN), ``wy`` the target's
    class weight (0 where not counted)."""

    local: Array
    counted: Array
    invalid: Array
    wy: Array


def targets(y: Array, w: Array | None, cfg: _Config) -> Targets:
    """The :class:`Targets` of labels for the whole vocabulary (the fused loss)."""
    counted = jnp.ones(y.shape, bool) if cfg.ignore_index is None else y != cfg.ignore_index
    invalid = counted & ((y < 0) | (y >= cfg.total_classes))
    local = jnp.where(counted & ~invalid, y, -1).astype(jnp.int32)
    wy = jnp.ones(y.shape, cfg.cdt) if w is None else w.astype(cfg.cdt)[jnp.maximum(local, 0)]
    return Targets(local, counted, invalid, jnp.where(counted, wy, 0.0))


def _logits(hb: Array, W: Array, b: Array | None, cfg: _Config, j: Array | int,
            limit: Array | None) -> tuple[Array, Array, Array | None, Array]:
    """Slice j of a block's logits: ``(z soft-capped, offset, sech^2 or None, valid)``;
    `limit` (optional) the number of real classes of the weight (the rest padding)."""
    vs = cfg.plan.vocab_slice
    V = cfg.num_classes
    start = jnp.minimum(j * vs, V - vs)  # the last slice starts early ...
    Wj = lax.dynamic_slice_in_dim(W, start, vs, axis=0)
    z = lax.dot_general(hb, Wj, (((1,), (1,)), ((), ())), precision=lax.Precision.HIGHEST,
                        preferred_element_type=cfg.cdt).astype(cfg.cdt)
    if b is not None:
        z = z + lax.dynamic_slice_in_dim(b, start, vs).astype(cfg.cdt)
    dz = None
    if cfg.cap is not None:
        u = z / cfg.cap
        dz = ar.sech2(u)
        z = cfg.cap * ar.tanh(u)
    cls = start + jnp.arange(vs)
    valid = cls >= j * vs  # ... and leaves out what slice j-1 holds
    if limit is not None:
        valid = valid & (cls < limit)
    if _masked(cfg) or limit is not None:
        z = jnp.where(valid[None, :], z, -jnp.inf)
    return z, start, dz, valid


def _masked(cfg: _Config) -> bool:
    return cfg.plan.vocab_chunks * cfg.plan.vocab_slice != cfg.num_classes


def _class_slice(w: Array | None, cfg: _Config, j: Array | int) -> Array | None:
    if w is None:
        return None
    vs = cfg.plan.vocab_slice
    start = jnp.minimum(j * vs, cfg.num_classes - vs)
    return lax.dynamic_slice_in_dim(w, start, vs).astype(cfg.cdt)


def class_weight_sum(w: Array | None, cfg: _Config, limit: Array | None = None) -> Array:
    """The summed class weight of the weight given (its real classes)."""
    n = cfg.num_classes if limit is None else limit
    if w is None:
        return jnp.asarray(n, cfg.cdt)
    keep = jnp.arange(cfg.num_classes) < n
    return jnp.sum(jnp.where(keep, w.astype(cfg.cdt), 0.0))


def _block_totals(hb: Array, local: Array, W: Array, b: Array | None, w: Array | None,
                  cfg: _Config, limit: Array | None) -> mg.RowTotals:
    """The merged row totals of one block over the weight given, slice by slice."""
    vs = cfg.plan.vocab_slice
    cut = _masked(cfg) or limit is not None

    def one(j: Array) -> tuple[mg.SliceStats, Array]:
        z, start, _, valid = _logits(hb, W, b, cfg, j, limit)
        wj = _class_slice(w, cfg, j)
        st = mg.slice_stats(z, local, start, w=wj, smoothing=bool(cfg.eps),
                            cols=valid if cut else None)
        # a class the previous slice holds is not in this one (its logit is -inf here)
        loc = local - start
        mine = (loc >= 0) & (loc < vs) & jnp.take(valid, jnp.clip(loc, 0, vs - 1))
        wsum = (jnp.sum(jnp.where(valid, 1.0 if wj is None else wj, 0.0)).astype(cfg.cdt)
                if cfg.eps else jnp.zeros((), cfg.cdt))
        return st._replace(has=mine, zt=jnp.where(mine, st.zt, 0.0)), wsum

    parts, wsums = lax.map(one, jnp.arange(cfg.plan.vocab_chunks))
    return mg.merge(parts, wsums if cfg.eps else None)


def _blocks(cfg: _Config, h: Array, *rows: Array) -> tuple[Array, list[Array], int]:
    """h [N, D] and per-row arrays [N] padded to whole blocks of rows (zeros; padding
    rows must not be counted by the caller's masks) and reshaped [blocks, rows, ...]."""
    N = h.shape[0]
    T = cfg.plan.token_chunk
    nb = -(-N // T)
    pad = nb * T - N
    if pad:
        h = jnp.pad(h, ((0, pad), (0, 0)))
        rows = tuple(jnp.pad(r, (0, pad)) for r in rows)
    return h.reshape(nb, T, -1), [r.reshape(nb, T) for r in rows], pad


def local_totals(h: Array, W: Array, b: Array | None, w: Array | None, tg: Targets,
                 cfg: _Config, limit: Array | None = None) -> mg.RowTotals:
    """Per-row totals over the weight given (its classes only), block by block ([N])."""
    N = h.shape[0]
    hb, (lb,), _ = _blocks(cfg, h, tg.local)

    def one(args: tuple[Array, Array]) -> mg.RowTotals:
        return _block_totals(args[0], args[1], W, b, w, cfg, limit)

    tot = lax.map(one, (hb, lb))
    out: mg.RowTotals = jax.tree.map(lambda a: a.reshape(-1)[:N], tot)
    return out


def finish_rows(tot: mg.RowTotals, tg: Targets, cfg: _Config, wsum: Array) -> Array:
    """Per-row losses (nats) from the whole rows' totals."""
    loss, _ = mg.finish(tot, wy=tg.wy, counted=tg.counted, eps=cfg.eps,
                        num_classes=cfg.total_classes, wsum=wsum, zeta=cfg.zeta)
    return jnp.where(tg.invalid, jnp.nan, loss)


def backward(h: Array, W: Array, b: Array | None, w: Array | None, tg: Targets, m: Array,
             s: Array, ct: Array, cfg: _Config, wsum: Array, limit: Array | None = None,
             ) -> tuple[Array, Array, Array | None]:
    """``(dh, dW, db)`` over the weight given for per-row cotangents `ct` and the whole
    rows' maximum `m` and sum `s`: the logits formed again, block by block, slice by
    slice (dh: this weight's part only)."""
    N = h.shape[0]
    vs = cfg.plan.vocab_slice
    factor = jnp.where(tg.invalid, jnp.nan, ct)
    hb, blocked, _ = _blocks(cfg, h, tg.local, tg.counted, tg.wy, m, s, factor)
    cut = _masked(cfg) or limit is not None

    def block(carry: tuple[Array, Array | None], args: tuple[Array, ...],
              ) -> tuple[tuple[Array, Array | None], Array]:
        hj, lj, cj, wyj, mj, sj, fj = args
        tot = mg.RowTotals(mj, sj, ar.log1p(sj), jnp.zeros_like(mj), None)

        def piece(inner: tuple[Array, Array, Array | None], j: Array,
                  ) -> tuple[tuple[Array, Array, Array | None], None]:
            dh, dW, db = inner
            z, start, dz, valid = _logits(hj, W, b, cfg, j, limit)
            g = mg.slice_grad(z, lj, start, tot, wy=wyj, counted=cj, row_factor=fj,
                              eps=cfg.eps, num_classes=cfg.total_classes, wsum=wsum,
                              zeta=cfg.zeta, w=_class_slice(w, cfg, j))
            if dz is not None:
                g = g * dz  # chain rule through the soft cap
            if cut:
                g = jnp.where(valid[None, :], g, 0.0)
            Wj = lax.dynamic_slice_in_dim(W, start, vs, axis=0).astype(cfg.cdt)
            dh = dh + lax.dot_general(g, Wj, (((1,), (0,)), ((), ())),
                                      precision=lax.Precision.HIGHEST)
            gW = lax.dot_general(g, hj.astype(cfg.cdt), (((0,), (0,)), ((), ())),
                                 precision=lax.Precision.HIGHEST)
            dW = lax.dynamic_update_slice_in_dim(
                dW, lax.dynamic_slice_in_dim(dW, start, vs, axis=0) + gW, start, axis=0)
            if db is not None:
                gb = jnp.sum(g, axis=0)
                db = lax.dynamic_update_slice_in_dim(
                    db, lax.dynamic_slice_in_dim(db, start, vs) + gb, start, 0)
            return (dh, dW, db), None

        dW, db = carry
        dh0 = _varying(jnp.zeros(hj.shape, cfg.cdt), cfg)
        (dh, dW, db), _ = lax.scan(piece, (dh0, dW, db), jnp.arange(cfg.plan.vocab_chunks))
        return (dW, db), dh

    dW0 = _varying(jnp.zeros(W.shape, cfg.cdt), cfg)
    db0 = None if b is None else _varying(jnp.zeros(b.shape, cfg.cdt), cfg)
    (dW, db), dh = lax.scan(block, (dW0, db0), (hb, *blocked))
    return dh.reshape(-1, h.shape[1])[:N], dW, db


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _rows(h: Array, W: Array, b: Array | None, w: Array | None, y: Array,
          cfg: _Config) -> Array:
    """Per-row losses in nats (a custom_vjp: no logits are kept for the backward pass)."""
    return _rows_fwd(h, W, b, w, y, cfg)[0]


def _rows_fwd(h: Array, W: Array, b: Array | None, w: Array | None, y: Array,
              cfg: _Config) -> tuple[Array, Any]:
    tg = targets(y, w, cfg)
    tot = local_totals(h, W, b, w, tg, cfg)
    loss = finish_rows(tot, tg, cfg, class_weight_sum(w, cfg))
    return loss, (h, W, b, w, y, tot.m, tot.s)


def _rows_bwd(cfg: _Config, res: Any, ct: Array) -> tuple[Any, ...]:
    h, W, b, w, y, m, s = res
    tg = targets(y, w, cfg)
    dh, dW, db = backward(h, W, b, w, tg, m, s, ct.astype(cfg.cdt), cfg,
                          class_weight_sum(w, cfg))
    hdt, Wdt, bdt = cfg.dtypes
    return (dh.astype(hdt), dW.astype(Wdt), None if db is None else db.astype(bdt),
            None, None)


_rows.defvjp(_rows_fwd, _rows_bwd)


# --------------------------------------------------------------------------- public


def linear_cross_entropy(
    input: Any,
    linear_weight: Any,
    target: Any,
    *,
    linear_bias: Any = None,
    weight: Any = None,
    ignore_index: int | None = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
    base: float | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    normalizer: Any = None,
    sample_weight: Any = None,
    token_chunk: int | None = None,
    vocab_chunk: int | None = None,
) -> Array:
    r"""``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)`` without the logits.

    .. math:: z = h W^\top + b, \qquad \ell_i = \text{cross\_entropy}(z_i, y_i)

    Parameters
    ----------
    input : array_like
        Hidden states ``(..., D)``, floating (bfloat16 and float16 are multiplied with
        float32 accumulation and the loss computed in float32).
    linear_weight : array_like
        The output embedding ``(V, D)``.
    target : array_like
        Integer class indices, the shape of `input` without its last axis.
    linear_bias : array_like, optional
        ``(V,)``.
    weight, ignore_index, label_smoothing, reduction, base, z_loss, softcap, normalizer,
    sample_weight
        As for :func:`crossentropy.jax.cross_entropy` (class weights are not
        differentiated).
    token_chunk : int, optional
        Rows per block (default: all of them, at most 4096).
    vocab_chunk : int, optional
        Classes per slice of the vocabulary (default: about 2^24 / token_chunk, i.e. 64 MiB
        of float32 logits per slice).

    Notes
    -----
    Peak memory: one slice of logits and its gradient at a time, besides the inputs and
    the gradients of `linear_weight` and `input`.  See docs/jax.md for the figures.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> import crossentropy.jax as cej
    >>> h = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    >>> W = jnp.array([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    >>> cej.linear_cross_entropy(h, W, jnp.array([0, 2]), reduction="none").round(6).tolist()
    [0.239545, 2.239545]
    """
    norm_num, norm_arr = red.check_normalizer(normalizer, reduction)
    opts = CrossEntropyOptions.create(
        reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
        z_loss=z_loss, softcap=softcap, base=base, normalizer=norm_num,
    )
    h = lay.as_float(input, "input")
    W = lay.as_float(linear_weight, "linear_weight")
    if h.ndim < 1:
        raise ValueError(f"input must have shape (..., in_features), got {h.shape}")
    if W.ndim != 2:
        raise ValueError(f"linear_weight must have shape (V, in_features), got {W.shape}")
    D = h.shape[-1]
    V = W.shape[0]
    if W.shape[1] != D:
        raise ValueError(f"input has in_features={D} but linear_weight has {W.shape[1]}")
    b = None
    if linear_bias is not None:
        b = lay.as_float(linear_bias, "linear_bias")
        if b.shape != (V,):
            raise ValueError(f"linear_bias must have shape ({V},), got {b.shape}")
    y = jnp.asarray(target)
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise TypeError(f"target must hold integer class indices, got dtype {y.dtype}")
    if y.shape != h.shape[:-1]:
        raise ValueError(f"target must have shape {h.shape[:-1]}, got {y.shape}")
    if not isinstance(target, jax.Array):
        check.as_labels(np.asarray(target), V, "target", opts.ignore_index)
    w = None
    if weight is not None:
        if not isinstance(weight, jax.Array):
            check.check_class_weight(weight, V)
        w = lay.as_float(weight, "weight", allow_int=True)
        if w.shape != (V,):
            raise ValueError(f"weight must have shape ({V},), got {w.shape}")
    rows = h.shape[:-1]
    sw = None
    if sample_weight is not None:
        if not isinstance(sample_weight, jax.Array):
            check.check_nonnegative(sample_weight, "sample_weight")
        sw = jnp.broadcast_to(lay.as_float(sample_weight, "sample_weight", allow_int=True),
                              rows)
    out_dtype = jnp.promote_types(h.dtype, W.dtype)
    cdt = lay.compute_dtype(out_dtype)
    N = math.prod(rows)
    cfg = _Config(plan(N, V, token_chunk, vocab_chunk), V, V, opts.ignore_index,
                  opts.label_smoothing, opts.z_loss, opts.softcap, jnp.dtype(cdt),
                  (h.dtype, W.dtype, None if b is None else b.dtype))
    out: Array = _linear_jit(h.reshape(N, D), W, b, w, y.reshape(N),
                       None if sw is None else sw.reshape(N), norm_arr, cfg, opts,
                       rows, jnp.dtype(out_dtype))
    return out


@functools.partial(jax.jit, static_argnums=(7, 8, 9, 10))
def _linear_jit(h: Array, W: Array, b: Array | None, w: Array | None, y: Array,
                sw: Array | None, norm: Array | None, cfg: _Config,
                opts: CrossEntropyOptions, rows: tuple[int, ...], out_dtype: Any) -> Array:
    if h.shape[0] == 0 or cfg.num_classes == 0:
        shape = rows if opts.reduction is Reduction.NONE else ()
        return jnp.zeros(shape, out_dtype)
    loss = _rows(h, W, b, w, y, cfg)
    omega = targets(y, w, cfg).wy
    if sw is not None:
        sw = sw.astype(cfg.cdt)
        loss, omega = loss * sw, omega * sw
    out: Array = red.reduce(loss.reshape(rows), omega.reshape(rows), opts,
                            norm=norm).astype(out_dtype)
    return out
