r"""The one row-statistics merge rule of a softmax cross-entropy split along the classes.

A row of logits ``z`` (already soft-capped) may be cut into slices of classes -- the
vocabulary slices of :func:`crossentropy.torch.linear_cross_entropy`, the shards of the
ranks in :mod:`crossentropy.torch.distributed`.  Each slice is reduced to a few numbers per
row, relative to the *slice* maximum; the numbers of two slices merge into the numbers of
their union; the merged numbers of the whole row give the loss.  Every quantity is a sum of
terms >= 0, so nothing cancels, and the log-sum-exp is kept in the log1p form

.. math::

    \mathrm{lse} = m + \operatorname{log1p}(\text{rest}), \qquad
    \text{rest} = \sum_{c \ne k} e^{z_c - m}

(``m`` the row maximum, reached at ``k``): ``-log p_y = (m - z_y) + log1p(rest)`` keeps its
digits when it is 1e-18 (a confident row), where ``lse - z_y`` or ``log(1 + rest)`` give 0.

API (stable; the Triton kernels' in-kernel ``_merge`` mirrors it)
------------------------------------------------------------------
:class:`RowStats` ``(m, rest, zy, has_y, wz=None, wsum=None, argmax=None)``
    The statistics of one slice, see the class.
:func:`slice_stats` ``(z, target, offset, *, counted, weight=None, smoothing=False,
compensate=True, dtype=None) -> RowStats``
    The statistics of a ``[n, V_s]`` block of logits holding the classes
    ``[offset, offset + V_s)``; `target` holds indices into the *whole* row.
:func:`merge` ``(a, b) -> RowStats``
    The statistics of the union of two disjoint slices (any order gives the same value up
    to rounding; callers merge in class order for reproducibility).
:func:`merge_all` ``(parts) -> RowStats``
    :func:`merge` folded left over a sequence.
:func:`finish` ``(stats, *, target_weight, counted, label_smoothing=0.0, num_classes,
total_weight=None, z_loss=0.0) -> (loss, lse)``
    Per-row loss in nats (0 for rows not counted, NaN for rows of all ``-inf``) and the
    log-sum-exp, from the statistics of the whole row.
:func:`slice_grad` ``(z, target, offset, *, counted, m, rest, lse, target_weight,
label_smoothing=0.0, num_classes, weight=None, total_weight=None, z_loss=0.0, row_factor,
compensate=True, dtype=None, argmax=None) -> Tensor``
    ``row_factor * d loss / d z`` for one slice, from the whole row's ``m``, ``rest`` and
    ``lse`` (the soft cap's ``sech^2`` is the caller's).
:func:`exp_diff` ``(a, b, compensate=True) -> Tensor``
    ``e^{a - b}`` to within an ulp even where ``a - b`` is rounded (TwoSum).

``compensate`` (TwoSum in ``e^{z - m}``) is needed when the result keeps the compute
precision; ``False`` when, say, float32 inputs are computed in float64 and rounded once.
``dtype`` is the compute dtype when `z` is narrower (promoted inside each operation).

Example: two slices of one row give the loss of the whole row

>>> import torch
>>> z = torch.tensor([[40.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
>>> y, counted = torch.tensor([0]), torch.tensor([True])
>>> parts = [slice_stats(z[:, :2], y, 0, counted=counted),
...          slice_stats(z[:, 2:], y, 2, counted=counted)]
>>> loss, lse = finish(merge_all(parts), target_weight=torch.ones(1), counted=counted,
...                    num_classes=4)
>>> loss  # log1p(e^-40 (2 + e)) = 2.00449e-17 (mpmath); lse - z_y gives 0
tensor([2.0045e-17], dtype=torch.float64)

The loss (index targets ``y``, class weights ``w`` (1 without), label smoothing
:math:`\varepsilon` over ``V`` classes, z-loss coefficient :math:`\zeta`) is

.. math::

    \ell = (1-\varepsilon)\, w_y \bigl[(m - z_y) + \operatorname{log1p}(\text{rest})\bigr]
         + \frac{\varepsilon}{V}\Bigl[\sum_c w_c (m - z_c)
                                      + \operatorname{log1p}(\text{rest}) \sum_c w_c\Bigr]
         + \zeta\, \mathrm{lse}^2 ,

which is ``sum_c a_c (-log p_c) + zeta lse^2`` with ``a_c = (1-eps) w_y [c = y] + eps w_c / V``
(torch's weighted label smoothing), each bracket a sum of terms >= 0.

Special values follow the NumPy core (``docs/special-values.md``): ``+inf`` logits share the
mass equally (statistics relative to ``m = +inf`` count each ``+inf`` as ``e^0 = 1`` and
every finite logit as 0); ``-inf`` logits get probability 0; an empty slice has
``m = -inf``, ``rest = 0`` and contributes nothing to a merge with a finite slice; a row of
all ``-inf`` has loss and gradient NaN; a NaN logit makes its row NaN.

All functions work in the dtype of their inputs (callers pass float64 on CPU, float32 or
float64 on CUDA) and never synchronise with the host.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "RowStats",
    "exp_diff",
    "finish",
    "merge",
    "merge_all",
    "slice_grad",
    "slice_stats",
]


@dataclass(frozen=True)
class RowStats:
    """Per-row statistics of one slice of the classes, relative to the slice maximum ``m``.

    Attributes
    ----------
    m : Tensor [n]
        Maximum of the slice's logits (-inf for an empty slice or a slice of all -inf).
    rest : Tensor [n]
        ``sum_{c in slice, c != k} e^{z_c - m}`` with ``k`` one maximal element (>= 0;
        0 when ``m = -inf``; the number of other +inf logits when ``m = +inf``).
    zy : Tensor [n]
        ``m - z_y`` (>= 0) where the target lies in this slice (`has_y`), else 0.
    has_y : Tensor [n] bool
        The row is counted and its target lies in this slice.
    wz : Tensor [n] or None
        ``sum_{c in slice} w_c (m - z_c)`` (>= 0; terms with ``w_c = 0`` are 0), only with
        label smoothing.
    wsum : Tensor (0-d or [n]) or None
        ``sum_{c in slice} w_c`` (the slice size without class weights), only with label
        smoothing.
    argmax : Tensor [n] int64 or None
        Index within the slice of the maximal element left out of ``rest`` (set by
        :func:`slice_stats`, dropped by :func:`merge`); :func:`slice_grad` can reuse it.
    """

    m: Tensor
    rest: Tensor
    zy: Tensor
    has_y: Tensor
    wz: Tensor | None = None
    wsum: Tensor | None = None
    argmax: Tensor | None = None


def _two_diff(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """``a - b = hi + lo`` exactly (TwoSum, Knuth); ``lo = 0`` where a term is not finite."""
    hi = a - b
    bb = hi - a
    lo = (a - (hi - bb)) + (-b - bb)
    return hi, lo.nan_to_num_(0.0, 0.0, 0.0)


def exp_diff(a: Tensor, b: Tensor, compensate: bool = True) -> Tensor:
    """``e^{a - b}`` for ``a <= b`` (broadcast), 1 where ``a == b`` (also for ``+-inf``).

    ``a - b`` is rounded when the two are far apart; with ``a - b = dh + dl`` (TwoSum),
    ``e^{a - b} = e^{dh} e^{dl} = e^{dh} + e^{dh} dl`` to within half an ulp (``|dl|`` is
    below half an ulp of ``dh``).  Without it ``e^{-40 + err}`` is off by ``40 err``: 40 ulp.
    ``compensate=False`` skips the correction: for float32 inputs computed in float64 the
    rounding of ``a - b`` is far below the final float32 rounding.  Where ``a - b`` is NaN
    (``+inf - +inf``, ``-inf - -inf``; also NaN inputs, which callers catch per row) the
    result is 1.
    """
    if compensate:
        dh, dl = _two_diff(a, b)
        e = dh.exp_()
        e = dl.mul_(e).add_(e)  # e^{dh} + e^{dh} dl
    else:
        e = (a - b).exp_()
    return e.nan_to_num_(1.0, math.inf, 0.0)


def _shift(m_side: Tensor, m: Tensor) -> Tensor:
    """``m - m_side >= 0``, 0 where they are equal (also for infinities, where it is NaN)."""
    return torch.where(m_side == m, torch.zeros_like(m), m - m_side)


def slice_stats(
    z: Tensor,
    target: Tensor,
    offset: int,
    *,
    counted: Tensor,
    weight: Tensor | None = None,
    smoothing: bool = False,
    compensate: bool = True,
    dtype: torch.dtype | None = None,
) -> RowStats:
    """The :class:`RowStats` of a ``[n, V_s]`` block holding classes ``[offset, offset+V_s)``.

    `target` ``[n]`` int64 holds class indices into the whole row; `counted` ``[n]`` bool
    marks the rows that count (not ``ignore_index``); `weight` ``[V_s]`` is this slice's part
    of the class weights (None: all 1); `smoothing` asks for ``wz`` and ``wsum``;
    `compensate` see :func:`exp_diff` (False only when the compute dtype is wider than the
    result's); `dtype` is the compute dtype (default: z's): a narrower `z` is promoted
    inside each operation, never copied.
    """
    n, vs = z.shape
    dt = z.dtype if dtype is None else dtype
    zero = torch.zeros(n, dtype=dt, device=z.device)
    if vs == 0:  # an empty slice: contributes nothing (m = -inf, rest = 0)
        wsum = zero.new_zeros(()) if smoothing else None
        return RowStats(torch.full_like(zero, -math.inf), zero, zero,
                        torch.zeros(n, dtype=torch.bool, device=z.device),
                        zero if smoothing else None, wsum)
    m, k = z.max(dim=1)  # NaN (and its index) if the row holds a NaN
    m = m.to(dt)  # exact
    mm = m[:, None]
    wz = wsum = None
    if compensate:
        dh, dl = _two_diff(z, mm)  # z_c - m = dh + dl exactly
    else:
        dh, dl = z - mm, None
    if smoothing:
        # sum_c w_c (m - z_c) = -sum_c w_c (z_c - m): terms >= 0 (+inf for -inf logits);
        # nansum drops +inf - +inf and -inf - -inf (z_c == m, a term 0) and 0 * inf (a
        # weight-0 class, a term 0); NaN rows are caught through m below
        if weight is None:
            wz = -torch.nansum(dh, dim=1)
            wsum = zero.new_tensor(float(vs))
        else:
            w = weight.to(dt)
            wz = -torch.nansum(dh * w, dim=1)
            wsum = w.sum()
    # e^{z_c - m} = e^{dh} (1 + dl) (see exp_diff); e = 1 at ties and at every +inf when
    # m = +inf (NaN differences), 0 for finite logits next to +inf
    e = dh.exp_()
    if dl is not None:
        e = dl.mul_(e).add_(e)
    e.nan_to_num_(1.0, math.inf, 0.0)
    e.scatter_(1, k[:, None], 0.0)  # leave out one maximal element
    rest = e.sum(dim=1)
    # m = -inf: no element carries mass (a slice of all -inf behaves as an empty one);
    # m = NaN: the row is NaN
    rest = torch.where(m == -math.inf, zero, rest)
    rest = torch.where(torch.isnan(m), m, rest)
    has_y = counted & (target >= offset) & (target < offset + vs)
    col = (target - offset).clamp(0, vs - 1)[:, None]
    # m - z_y >= 0 (0 at ties, +inf for a finite target next to +inf or a -inf target)
    zy = torch.where(has_y, _shift(z.gather(1, col)[:, 0].to(dt), m), zero)
    return RowStats(m, rest, zy, has_y, wz, wsum, argmax=k)


def merge(a: RowStats, b: RowStats) -> RowStats:
    """The statistics of the union of two disjoint slices ``a`` and ``b``.

    ``m = max(m_a, m_b)``.  The larger side keeps its excluded maximal element; the smaller
    side's whole sum ``1 + rest`` is rescaled by ``e^{m_small - m}`` (:func:`exp_diff`) and
    added to the larger side's ``rest``, so ``rest`` never includes the merged maximum and
    ``log1p(rest)`` stays exact.  ``m - z_y`` and ``sum_c w_c (m - z_c)`` move to the new
    maximum by adding ``(m - m_side) >= 0`` (times ``sum_c w_c`` for the latter): every term
    stays >= 0.  An empty side (``m = -inf``) adds ``e^{-inf} = 0``.
    """
    m = torch.maximum(a.m, b.m)  # NaN propagates
    a_big = a.m >= b.m
    fa = exp_diff(a.m, m)  # e^{m_a - m} in (0, 1], 1 on the larger side
    fb = exp_diff(b.m, m)
    # rest = rest_big + (1 + rest_small) e^{m_small - m}, written fs + fs rest_small so that
    # a tiny rest_small is not rounded away in 1 + rest_small
    rest = torch.where(a_big, a.rest + (fb + fb * b.rest), b.rest + (fa + fa * a.rest))
    sa, sb = _shift(a.m, m), _shift(b.m, m)
    # the owner's m - z_y = (m - m_side) + (m_side - z_y): two terms >= 0
    zy = torch.where(a.has_y, a.zy + sa, torch.where(b.has_y, b.zy + sb, torch.zeros_like(m)))
    wz = wsum = None
    if a.wz is not None and b.wz is not None and a.wsum is not None and b.wsum is not None:
        # sum_{c in side} w_c (m - z_c) = wz_side + (m - m_side) sum_{c in side} w_c; an empty
        # (or weight-0) side adds 0, not 0 * inf
        ta = torch.where(a.wsum == 0, torch.zeros_like(sa), sa * a.wsum)
        tb = torch.where(b.wsum == 0, torch.zeros_like(sb), sb * b.wsum)
        wz = (a.wz + ta) + (b.wz + tb)
        wsum = a.wsum + b.wsum
    return RowStats(m, rest, zy, a.has_y | b.has_y, wz, wsum)


def merge_all(parts: Sequence[RowStats]) -> RowStats:
    """:func:`merge` folded left over `parts` (in the given order, for reproducibility)."""
    if not parts:
        raise ValueError("merge_all needs at least one RowStats")
    out = parts[0]
    for p in parts[1:]:
        out = merge(out, p)
    return out


def _lse_parts(m: Tensor, log1p_rest: Tensor) -> tuple[Tensor, Tensor]:
    """``m + log1p(rest) = hi + lo`` (TwoSum), so that ``lse**2`` keeps its digits near 0."""
    hi = m + log1p_rest
    bb = hi - m
    lo = (m - (hi - bb)) + (log1p_rest - bb)
    return hi, torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))


def finish(
    stats: RowStats,
    *,
    target_weight: Tensor,
    counted: Tensor,
    label_smoothing: float = 0.0,
    num_classes: int,
    total_weight: Tensor | float | None = None,
    z_loss: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Per-row ``(loss, lse)`` in nats from the statistics of whole rows.

    `target_weight` ``[n]`` is ``w_y`` (1 without class weights; any value on rows not
    counted); `total_weight` is ``sum_c w_c`` over the whole row (needed with smoothing;
    None: `num_classes`).  Rows not `counted` get loss 0; rows of all ``-inf`` NaN.
    """
    eps = float(label_smoothing)
    L = torch.log1p(stats.rest)  # log(1 + rest), exact for tiny rest
    zero = torch.zeros_like(L)
    # (1 - eps) w_y [(m - z_y) + log1p(rest)]; a weight-0 target costs 0 even at +inf
    a_y = (1.0 - eps) * target_weight.to(L.dtype)
    loss = torch.where(a_y == 0, zero, a_y * (stats.zy + L))
    if eps:
        if stats.wz is None:
            raise ValueError("finish: label smoothing needs RowStats made with smoothing=True")
        wtot = float(num_classes) if total_weight is None else total_weight
        # (eps / V) [sum_c w_c (m - z_c) + log1p(rest) sum_c w_c]: terms >= 0
        loss = loss + (eps / num_classes) * (stats.wz + wtot * L)
    hi, lo = _lse_parts(stats.m, L)
    if z_loss:
        # zeta lse^2 = zeta (hi + lo)^2 = zeta (hi^2 + 2 hi lo) (lo^2 is below an ulp)
        loss = loss + z_loss * (hi * hi + 2.0 * hi * lo)
    # a row of all -inf is no distribution (its m is -inf): NaN, as in the NumPy core
    loss = torch.where(stats.m == -math.inf, torch.full_like(loss, math.nan), loss)
    loss = torch.where(counted, loss, zero)
    return loss, hi


def slice_grad(
    z: Tensor,
    target: Tensor,
    offset: int,
    *,
    counted: Tensor,
    m: Tensor,
    rest: Tensor,
    lse: Tensor,
    target_weight: Tensor,
    label_smoothing: float = 0.0,
    num_classes: int,
    weight: Tensor | None = None,
    total_weight: Tensor | float | None = None,
    z_loss: float = 0.0,
    row_factor: Tensor,
    compensate: bool = True,
    dtype: torch.dtype | None = None,
    argmax: Tensor | None = None,
) -> Tensor:
    r"""``row_factor * d loss / d z`` for a ``[n, V_s]`` slice, from the whole row's stats.

    With ``a_c`` the target coefficients (see the module notes) and
    ``W = sum_c a_c + 2 zeta lse`` (the coefficient of ``p_c``),
    ``d loss / d z_c = p_c W - a_c``, ``p_c = e^{z_c - m} / (1 + rest)``.  At a maximal
    element ``p_c = 1 / (1 + rest)`` exactly, so there
    ``p_c W - a_c = ((W - a_c) - a_c rest) / (1 + rest)`` with ``W - a_c`` summed from its
    terms: ``-rest / (1 + rest)`` for a one-hot target on a confident row, not ``1 - 1``.
    (Only one maximal element needs it: with a tie ``rest >= 1`` and ``p_c <= 1/2``.)
    `row_factor` ``[n]`` is ``d result / d loss_i``.  `weight` is this slice's part of the
    class weights; `total_weight` the whole row's sum.  Rows not `counted` get 0; rows of
    all ``-inf`` (``m = -inf``) and NaN rows get NaN.  `dtype` is the compute dtype
    (default: z's; a narrower `z` is promoted inside each operation); `argmax` the slice's
    :attr:`RowStats.argmax` if at hand.  Returns a new tensor of the compute dtype.
    """
    n, vs = z.shape
    dt = z.dtype if dtype is None else dtype
    if vs == 0:
        return torch.zeros(n, 0, dtype=dt, device=z.device)
    eps = float(label_smoothing)
    zero = torch.zeros_like(m)
    a_y = torch.where(counted, (1.0 - eps) * target_weight.to(dt), zero)
    wtot = float(num_classes) if total_weight is None else total_weight
    a_smooth = eps / num_classes  # a_c = eps w_c / V off the target
    zl = 2.0 * z_loss * lse if z_loss else zero  # d(zeta lse^2) / d lse
    W = a_y + a_smooth * wtot + zl
    denom = 1.0 + rest
    # rows of all -inf: no distribution, NaN (as the NumPy core); the factor d result / d loss
    # is folded into every term: f (p_c W - a_c)
    f = torch.where((m == -math.inf) | torch.isnan(m), torch.full_like(m, math.nan),
                    row_factor.to(dt))
    # f p_c W = e^{z_c - m} (f W / (1 + rest))
    g = exp_diff(z, m[:, None], compensate).mul_((f * W / denom)[:, None])
    w = None if weight is None else weight.to(dt)
    if eps:
        # - f eps w_c / V
        if w is None:
            g.sub_((a_smooth * f)[:, None])
        else:
            g.addcmul_((-a_smooth * f)[:, None], w[None, :])
    has_y = counted & (target >= offset) & (target < offset + vs)
    col = (target - offset).clamp(0, vs - 1)[:, None]
    g.scatter_add_(1, col, torch.where(has_y, -a_y * f, zero)[:, None])  # - f (1 - eps) w_y
    # the maximal element k of this slice, where it is a maximum of the whole row
    k = z.argmax(dim=1) if argmax is None else argmax
    zk = z.gather(1, k[:, None])[:, 0].to(dt)
    k_is_y = has_y & (k == col[:, 0])
    w_k = (w[k] if w is not None else torch.ones_like(m)) if eps else zero
    a_k = a_smooth * w_k + torch.where(k_is_y, a_y, zero)
    # W - a_k = (1 - eps) w_y [k != y] + (eps / V)(sum_c w_c - w_k) + 2 zeta lse
    w_minus = torch.where(k_is_y, zero, a_y) + zl
    if eps:
        w_minus = w_minus + a_smooth * (wtot - w_k)
    g_k = f * ((w_minus - a_k * rest) / denom)
    at_max = (zk == m) & torch.isfinite(m)  # (+inf rows: p_k W - a_k is already exact)
    g.scatter_(1, k[:, None], torch.where(at_max, g_k, g.gather(1, k[:, None])[:, 0])[:, None])
    # rows not counted: 0, whatever their logits (inf * 0 would be NaN)
    return g.masked_fill_(~counted[:, None], 0.0)
