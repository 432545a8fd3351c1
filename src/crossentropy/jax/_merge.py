r"""Row statistics of a cross-entropy whose classes are cut into slices, and their merge.

The fused linear loss (:mod:`._linear`) cuts the vocabulary into chunks, the sharded loss
(:mod:`._sharded`) into the devices' shards.  Each slice of a row of logits *z* (already
soft-capped) is reduced to a few numbers relative to the slice maximum; the numbers of all
slices merge, at once, into those of the whole row; they give the loss.  The rule of
:mod:`crossentropy.torch._rowstats`, written for JAX with the compensated arithmetic of
:mod:`._arith`:

* :class:`SliceStats` of a slice: its maximum ``m_i``, ``s_i`` = the sum of its terms
  :math:`e^{z_c - m_i}` but one maximum's, the target logit ``zt`` where the target is in
  the slice, and (label smoothing) :math:`\sum_c w_c (m_i - z_c) \ge 0`;
* :func:`merge`: with :math:`M = \max_i m_i` and :math:`t_i = e^{m_i - M}` (1 for the
  slices that reach M), :math:`s = \sum_i (t_i + t_i s_i) - 1`: every term >= 0, the
  slice of the maximum contributes exactly 1 + s_i, and all slices are summed at once
  (not merged pairwise, whose roundings would add up), by the extraction of :mod:`._rows`;
* :func:`finish`: :math:`\ell = (1-\varepsilon) w_y [(M - z_y) + \operatorname{log1p}(s)]
  + \frac{\varepsilon}{V}[\sum_c w_c (M - z_c) + \operatorname{log1p}(s) \sum_c w_c]
  + \zeta\,\mathrm{lse}^2`, each bracket a sum of terms >= 0 (``M - z_y`` by TwoSum, as
  the NumPy core forms -log softmax);
* :func:`slice_grad`: :math:`\partial\ell/\partial z_c = p_c (W + 2\zeta\,\mathrm{lse}) -
  a_c` for one slice from the whole row's M, s and lse, with the cancellation-free form
  at the maximum.

Special values as the NumPy core: +inf logits share the mass (a slice of maximum +inf
counts each +inf entry as 1, every finite one as 0); a slice of all -inf (or an empty
slice) has ``m = -inf``, ``s = 0`` and adds nothing; a row of all -inf, or with a NaN,
gives NaN.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from crossentropy.jax import _arith as ar
from crossentropy.jax import _rows as rw

__all__ = ["RowTotals", "SliceStats", "finish", "merge", "slice_grad", "slice_stats"]

Array = jax.Array


class SliceStats(NamedTuple):
    """Per-row numbers of one slice of classes (shape [n] each).

    ``m``: the slice maximum (-inf for an empty slice or one of all -inf; NaN with a NaN);
    ``s``: the sum of the slice's terms e^(z - m) but one maximum's (for m = +inf: the
    number of other +inf entries); ``zt``: the target's logit where the target is in this
    slice, else 0; ``has``: the target is in this slice; ``wz``: sum_c w_c (m - z_c) >= 0
    (only with label smoothing, else None).
    """

    m: Array
    s: Array
    zt: Array
    has: Array
    wz: Array | None


class RowTotals(NamedTuple):
    """The merged numbers of whole rows: maximum, s, L = log1p(s), target logit, and the
    smoothing sum (or None)."""

    m: Array
    s: Array
    L: Array
    zt: Array
    wz: Array | None

    @property
    def lse(self) -> Array:
        out: Array = jnp.where(self.m == jnp.inf, jnp.inf, self.m + self.L)
        return out


def slice_stats(z: Array, y: Array, offset: int | Array, *, w: Array | None = None,
                smoothing: bool = False, cols: Array | None = None) -> SliceStats:
    """The :class:`SliceStats` of an [n, V_s] block of logits holding the classes
    ``[offset, offset + V_s)``; `y` [n] holds class indices into the whole row (any value
    outside the block: not here); `w` [V_s] the block's class weights (None: 1); `cols`
    [V_s] (optional) the columns that are classes of this slice (the others: padding,
    their logits -inf, left out of the smoothing sum too)."""
    n, vs = z.shape
    local = y - offset
    has = (local >= 0) & (local < vs)
    if vs == 0:
        zero = jnp.zeros((n,), z.dtype)
        return SliceStats(jnp.full((n,), -jnp.inf, z.dtype), zero, zero, has,
                          zero if smoothing else None)
    st = rw.row_stats(z)
    m = jnp.where(st.pos_inf, jnp.inf, st.m)[..., 0]
    idx = jnp.clip(local, 0, vs - 1)[..., None]
    zt = jnp.where(has, jnp.take_along_axis(z, idx, axis=-1)[..., 0], 0.0)
    wz = None
    if smoothing:
        mm = m[..., None]
        d = jnp.where(z == mm, 0.0, mm - z)  # m - z_c >= 0 (0 at the maxima, also +inf)
        wd = d if w is None else jnp.where(w == 0, 0.0, w * d)
        if cols is not None:
            wd = jnp.where(cols[None, :], wd, 0.0)
        wz = ar.sum_nonneg(wd, axis=-1)
    return SliceStats(m, jnp.where(st.bad[..., 0], 0.0, st.s[..., 0]), zt, has, wz)


def _exp_to(m_i: Array, M: Array) -> Array:
    """t = e^(m_i - M) <= 1 with the difference's rounding put back (TwoSum); 1 where
    m_i == M (also +-inf), 0 for an empty slice below a finite M."""
    dh, dl = ar.two_sum(m_i, -M)
    dl = jnp.where(jnp.isfinite(dl), dl, 0.0)
    t = ar.exp(jnp.where(jnp.isfinite(dh), dh, -jnp.inf), dl)
    return jnp.where(m_i == M, 1.0, t)


def _sum_minus_one(terms: Array) -> Array:
    """sum(terms) - 1 over the first axis, terms >= 0 of which one is exactly 1: the
    extraction of :mod:`._rows` (tau exact, so tau - 1 too), sigma per row."""
    k = terms.shape[0]
    top = jnp.max(terms, axis=0)
    top = jnp.where(jnp.isfinite(top) & (top > 0), top, 1.0)
    _, E = jnp.frexp(top)
    g = ar.ldexp(jnp.ones_like(top), E + (2 * k).bit_length() + 1 - ar.consts(top.dtype).mant)
    q = ar.split_at(terms, g)
    one = jnp.sign(jnp.abs(top) + 1.0)  # 1, from the data (a constant could be reassociated)
    tau = jnp.sum(q, axis=0)
    rest = jnp.sum(terms - q, axis=0)
    out = (tau - one) + rest
    return jnp.where(jnp.isfinite(out), out, jnp.sum(terms, axis=0) - 1.0)


def merge(parts: SliceStats, wsums: Array | None = None) -> RowTotals:
    """Merge stacked slice statistics (leading axis: the slices, in class order) into the
    whole rows' :class:`RowTotals`.  `wsums` [k] (smoothing): each slice's sum of class
    weights."""
    M = jnp.max(parts.m, axis=0)  # NaN if a slice holds a NaN
    t = _exp_to(parts.m, M[None])
    # every slice contributes t (1 + s) = t + t s, two terms >= 0; the slice(s) holding the
    # maximum contribute exactly 1 + s_i, and the one 1 of the maximum itself goes
    s = _sum_minus_one(jnp.concatenate([t, t * parts.s], axis=0))
    finite_rows = jnp.isfinite(M) | (M == jnp.inf)
    s = jnp.where(finite_rows, s, 0.0)
    zt = jnp.sum(jnp.where(parts.has, parts.zt, 0.0), axis=0)  # one slice holds it: exact
    wz = None
    if parts.wz is not None:
        assert wsums is not None
        # sum_c w_c (M - z_c) = sum_i [wz_i + (M - m_i) W_i], terms >= 0 (0 for empty slices)
        shift = jnp.where(parts.m == M[None], 0.0, M[None] - parts.m)
        extra = jnp.where(wsums[:, None] == 0, 0.0, shift * wsums[:, None])
        wz = ar.sum_nonneg(jnp.concatenate([parts.wz, extra], axis=0), axis=0)
    return RowTotals(M, s, ar.log1p(s), zt, wz)


def _nls_target(tot: RowTotals) -> Array:
    """-log softmax at the target: (L - dh) - dl with z_y - M = dh + dl (TwoSum)."""
    dh, dl = ar.two_sum(tot.zt, -tot.m)
    dl = jnp.where(jnp.isfinite(dl), dl, 0.0)
    out = jnp.where(tot.zt == tot.m, tot.L, (tot.L - dh) - dl)
    return jnp.where(tot.m == jnp.inf, jnp.where(tot.zt == jnp.inf, tot.L, jnp.inf), out)


def finish(tot: RowTotals, *, wy: Array, counted: Array, eps: float = 0.0,
           num_classes: int = 1, wsum: Array | float = 1.0, zeta: float = 0.0,
           ) -> tuple[Array, Array]:
    """Per-row ``(loss, lse)`` in nats from the whole rows' totals.

    `wy` [n] is the target's class weight (0 where not counted), `counted` the rows that
    take part, `eps` the label smoothing over `num_classes` classes of summed weight
    `wsum`, `zeta` the z-loss coefficient.  Rows not counted: 0; bad rows (all -inf, a
    NaN) counted: NaN.
    """
    lse = tot.lse
    nls = _nls_target(tot)
    loss = jnp.where(wy == 0, 0.0, (1.0 - eps) * wy * nls)
    if eps:
        assert tot.wz is not None
        smooth = tot.wz + tot.L * wsum  # sum_c w_c (-log p_c), two terms >= 0
        loss = loss + jnp.where(counted, (eps / num_classes) * smooth, 0.0)
    if zeta:
        loss = loss + jnp.where(counted, zeta * lse * lse, 0.0)
    bad = jnp.isnan(tot.m) | (tot.m == -jnp.inf)
    return jnp.where(counted & bad, jnp.nan, jnp.where(counted, loss, 0.0)), lse


def slice_grad(z: Array, y: Array, offset: int | Array, tot: RowTotals, *, wy: Array,
               counted: Array, row_factor: Array, lse_factor: Array | None = None,
               eps: float = 0.0, num_classes: int = 1, wsum: Array | float = 1.0,
               zeta: float = 0.0, w: Array | None = None) -> Array:
    """``row_factor * d loss / d z (+ lse_factor * d lse / d z)`` for an [n, V_s] slice,
    from the whole rows' totals (the soft cap's sech^2 is the caller's).

    a_c = (1 - eps) w_y [c = y] + (eps / V) w_c on counted rows; W = sum_c a_c;
    d loss / d z_c = p_c (W + 2 zeta lse) - a_c, at a maximum of the row
    ((W - a_c + 2 zeta lse) - a_c s) / (1 + s) (no cancellation where p_c ~ 1).
    """
    n, vs = z.shape
    M = tot.m[:, None]
    mz = jnp.where(M == jnp.inf, 0.0, M)
    ze = jnp.where(M == jnp.inf, jnp.where(z == jnp.inf, 0.0, -jnp.inf), z)
    dh, dl = ar.two_sum(ze, -mz)
    dl = jnp.where(jnp.isfinite(dl), dl, 0.0)
    top = ze == mz
    e = jnp.where(top, 1.0, ar.exp(dh, dl))
    one = ar.opaque(1.0, z)
    S, S_lo = ar.two_sum(one, tot.s[:, None])
    q = e / S
    p = q - q * (S_lo / S)
    zl = jnp.where(counted, 2.0 * zeta * tot.lse, 0.0)[:, None] if zeta else 0.0
    iota = lax.broadcasted_iota(jnp.int32, (n, vs), 1) + offset
    wyc = wy[:, None]
    a = jnp.where(iota == y[:, None], (1.0 - eps) * wyc, 0.0)
    Wrow = (1.0 - eps) * wyc
    if eps:
        wc = jnp.ones((vs,), z.dtype) if w is None else w
        a = a + jnp.where(counted[:, None], (eps / num_classes) * wc[None, :], 0.0)
        Wrow = Wrow + jnp.where(counted[:, None], (eps / num_classes) * wsum, 0.0)
    g = p * (Wrow + zl) - a
    gk = (((Wrow - a) + zl) - a * tot.s[:, None]) / (one + tot.s[:, None])
    g = jnp.where(top, gk, g)
    bad = jnp.isnan(M) | (M == -jnp.inf)
    g = jnp.where(bad, jnp.nan, g)
    g = jnp.where(counted[:, None], g, 0.0) * row_factor[:, None]
    if lse_factor is not None:  # d lse / d z = p
        g = g + jnp.where(bad, jnp.nan, p) * lse_factor[:, None]
    return g
