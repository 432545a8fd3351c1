r"""The row formula of the torch layer, written once: every torch path that finishes a loss
from row statistics calls it (the vocabulary slices, the Triton glue, the distributed loss).

Target bookkeeping (:func:`index_targets`), the soft cap and its exact derivative, one
:class:`RowStats`, the statistics of a slice of classes, one merge rule (pairwise and
stacked; the distributed all-reduce sums its :func:`lift` terms), :func:`finish` and the
gradient coefficients.  The Triton kernels keep their own device code (held to this module
by ``tests/test_path_matrix.py``); :mod:`._reference` is the dense form of the same
formula (exact in every derivative) and takes its soft cap, target bookkeeping and
coefficients from here.

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
:func:`index_targets` ``(target, *, ignore_index, num_classes, weight, dtype) -> IndexTargets``
    Which rows count, a safe index, ``w_y``, and the rows whose index is out of range.
:func:`softcap`, :func:`softcap_derivative`
    ``c tanh(x / c)`` and its exact ``sech^2(x / c)``.
:class:`RowStats` ``(m, rest, zy, has_y, asum=None, agap=None, argmax=None)``
    The statistics of one slice, see the class.
:func:`slice_stats` ``(z, target, offset, *, counted, weight=None, soft=0.0,
compensate=True, dtype=None) -> RowStats``
    The statistics of a ``[n, V_s]`` block of logits holding the classes
    ``[offset, offset + V_s)``; `target` holds indices into the *whole* row.
:func:`lift` ``(stats, m) -> Lifted``
    A slice's terms relative to a maximum ``m >=`` its own: what every merge adds up.
:func:`merge` ``(a, b) -> RowStats``, :func:`merge_stacked` ``(parts) -> RowStats``
    The statistics of the union of disjoint slices (two, or ``[P, n]`` stacked ones; any
    order gives the same value up to rounding; callers merge in class order for
    reproducibility).  :func:`merge_all` folds :func:`merge` over a sequence.
:func:`finish` ``(stats, *, counted, target_coef, z_loss=0.0, invalid=None) -> (loss, lse)``
    Per-row loss in nats (0 for rows not counted, NaN for rows of all ``-inf``) and the
    log-sum-exp, from the statistics of the whole row.
:func:`index_coefficients`, :func:`dense_coefficients`
    ``W = sum_c a_c + 2 zeta lse`` and ``W - a_k`` summed from its own terms (the argmax
    step of every gradient).
:func:`slice_grad` ``(z, target, offset, *, counted, m, rest, lse, target_coef, soft=0.0,
weight=None, total_weight, z_loss=0.0, row_factor, compensate=True, dtype=None,
argmax=None) -> Tensor``
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
>>> loss, lse = finish(merge_all(parts), counted=counted, target_coef=torch.ones(1))
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
(torch's weighted label smoothing), each bracket a sum of terms >= 0.  The *soft* part
``eps w_c / V`` (or, for probability targets, ``w_c ((1-eps) t_c + eps / V)``: the Triton
kernels' statistics) is carried as ``A = sum_c a_c`` and ``B = sum_c a_c (m - z_c)``, so
that ``sum_c a_c (-log p_c) = B + A log1p(rest)``; the one-hot part ``a_y = (1-eps) w_y``
(:attr:`IndexTargets.weight` times ``1 - eps``) as ``m - z_y``.

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
    "IndexTargets",
    "Lifted",
    "RowStats",
    "dense_coefficients",
    "entropy",
    "exp_diff",
    "finish",
    "index_coefficients",
    "index_targets",
    "lift",
    "log_prob",
    "merge",
    "merge_all",
    "merge_stacked",
    "slice_grad",
    "slice_stats",
    "softcap",
    "softcap_derivative",
]


# --------------------------------------------------------------------------- targets


@dataclass(frozen=True)
class IndexTargets:
    """What the row formula needs of index targets, all ``[n]``.

    Attributes
    ----------
    counted : Tensor bool
        The row counts (its target is not ``ignore_index``).
    safe : Tensor int64
        The target where it is counted and in ``[0, C)``, else 0: an index that may be used
        to gather whatever the row holds.
    invalid : Tensor bool
        Counted but outside ``[0, C)``: a NaN row where nothing has checked the values
        (the GPU paths, which never synchronise with the host).
    weight : Tensor
        ``w_y`` (1 without class weights) on counted rows, 0 on the others: the weight of
        the row in a mean, and ``a_y / (1 - eps)``.
    """

    counted: Tensor
    safe: Tensor
    invalid: Tensor
    weight: Tensor


def index_targets(target: Tensor, *, ignore_index: int | None, num_classes: int,
                  weight: Tensor | None, dtype: torch.dtype) -> IndexTargets:
    """The :class:`IndexTargets` of int64 `target` ``[n]`` (`weight` ``[C]`` or None).

    >>> import torch
    >>> t = index_targets(torch.tensor([2, -100, 7]), ignore_index=-100, num_classes=3,
    ...                   weight=None, dtype=torch.float64)
    >>> t.counted.tolist(), t.safe.tolist(), t.invalid.tolist(), t.weight.tolist()
    ([True, False, True], [2, 0, 0], [False, False, True], [1.0, 0.0, 1.0])
    """
    counted = torch.ones_like(target, dtype=torch.bool) if ignore_index is None \
        else target != ignore_index
    in_range = (target >= 0) & (target < num_classes)
    safe = torch.where(counted & in_range, target, torch.zeros_like(target))
    if weight is None:
        wy = counted.to(dtype)
    else:
        wy = torch.where(counted, weight.to(dtype)[safe], torch.zeros((), dtype=dtype,
                                                                      device=target.device))
    return IndexTargets(counted, safe, counted & ~in_range, wy)


# --------------------------------------------------------------------------- soft cap


def softcap(x: Tensor, cap: float | None, *, inplace: bool = False) -> Tensor:
    """``cap * tanh(x / cap)`` (Gemma 2 soft capping); `x` itself when cap is None.
    ``inplace=True`` overwrites `x` (a scratch copy; not for autograd)."""
    if cap is None:
        return x
    if inplace:
        return x.div_(cap).tanh_().mul_(cap)
    return torch.tanh(x / cap) * cap


def softcap_derivative(x: Tensor, cap: float, *, inplace: bool = False) -> Tensor:
    r"""``d/dx [c tanh(x/c)] = sech^2(x/c)``, exactly.

    .. math:: \operatorname{sech}^2 u = \frac{4 e^{-2|u|}}{(1 + e^{-2|u|})^2}

    has no cancellation and no overflow (``(1 - t)(1 + t)`` with ``t = tanh u`` is off by 2x
    at u = 9 in float32 and gives 0 at u = 12); 0 at ``x = +-inf``.  Differentiable (the
    reference's second derivatives go through it); ``inplace=True`` overwrites `x` (a
    scratch copy).

    >>> import torch
    >>> float(softcap_derivative(torch.tensor([12.0]), 1.0)[0])  # 4 e^-24 / (1 + e^-24)^2
    1.5100537487100496e-10
    """
    if inplace:  # the same expression in x's storage and one temporary (no autograd)
        t = x.div_(cap).abs_().mul_(-2.0).exp_()
        u = t + 1.0
        return t.mul_(4.0).div_(u.mul_(u))
    t = torch.exp(-2.0 * torch.abs(x / cap))
    return 4.0 * t / ((1.0 + t) * (1.0 + t))


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class RowStats:
    """Per-row statistics of one slice of the classes, relative to the slice maximum ``m``.

    The fields are ``[n]`` (or ``[P, n]`` for the stacked slices of :func:`merge_stacked`).

    Attributes
    ----------
    m : Tensor
        Maximum of the slice's logits (-inf for an empty slice or a slice of all -inf).
    rest : Tensor
        ``sum_{c in slice, c != k} e^{z_c - m}`` with ``k`` one maximal element (>= 0;
        0 when ``m = -inf``; the number of other +inf logits when ``m = +inf``).
    zy : Tensor
        ``m - z_y`` (>= 0) where the target lies in this slice (`has_y`), else 0.
    has_y : Tensor bool
        The row is counted and its target lies in this slice.
    asum : Tensor (0-d, [n] or [P, n]) or None
        ``A = sum_{c in slice} a_c`` over the soft coefficients (module notes); None without
        a soft part.
    agap : Tensor or None
        ``B = sum_{c in slice} a_c (m - z_c)`` (>= 0; terms with ``a_c = 0`` are 0).
    argmax : Tensor int or None
        Index of the maximal element left out of ``rest`` (within the slice from
        :func:`slice_stats`, dropped by :func:`merge`); :func:`slice_grad` can reuse it.
    ent : Tensor or None
        ``sum_{c in slice} e^{z_c - m} (m - z_c)`` (terms >= 0; the maximal elements add 0):
        the entropy's sum, see :func:`entropy`.  None unless asked for.
    """

    m: Tensor
    rest: Tensor
    zy: Tensor
    has_y: Tensor
    asum: Tensor | None = None
    agap: Tensor | None = None
    argmax: Tensor | None = None
    ent: Tensor | None = None


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
    soft: float = 0.0,
    compensate: bool = True,
    dtype: torch.dtype | None = None,
    entropy: bool = False,
) -> RowStats:
    """The :class:`RowStats` of a ``[n, V_s]`` block holding classes ``[offset, offset+V_s)``.

    `target` ``[n]`` int64 holds class indices into the whole row; `counted` ``[n]`` bool
    marks the rows that count (not ``ignore_index``); `weight` ``[V_s]`` is this slice's part
    of the class weights (None: all 1); `soft` is the label smoothing's ``eps / V``: the
    soft coefficients are ``a_c = soft * w_c`` (0: no soft part, ``asum``/``agap`` None);
    `compensate` see :func:`exp_diff` (False only when the compute dtype is wider than the
    result's); `dtype` is the compute dtype (default: z's): a narrower `z` is promoted
    inside each operation, never copied; `entropy` adds :attr:`RowStats.ent`.
    """
    n, vs = z.shape
    dt = z.dtype if dtype is None else dtype
    zero = torch.zeros(n, dtype=dt, device=z.device)
    if vs == 0:  # an empty slice: contributes nothing (m = -inf, rest = 0)
        asum = zero.new_zeros(()) if soft else None
        return RowStats(torch.full_like(zero, -math.inf), zero, zero,
                        torch.zeros(n, dtype=torch.bool, device=z.device),
                        asum, zero if soft else None, ent=zero if entropy else None)
    m, k = z.max(dim=1)  # NaN (and its index) if the row holds a NaN
    m = m.to(dt)  # exact
    mm = m[:, None]
    asum = agap = None
    if compensate:
        dh, dl = _two_diff(z, mm)  # z_c - m = dh + dl exactly
    else:
        # converted once, then in place (an operation that promotes as it goes is several
        # times slower than a copy and a float64 one)
        dh, dl = z.to(dt, copy=True).sub_(mm), None
    if soft:
        # B = soft sum_c w_c (m - z_c) = -soft sum_c w_c (z_c - m): terms >= 0 (+inf for -inf
        # logits); nansum drops +inf - +inf and -inf - -inf (z_c == m, a term 0) and 0 * inf
        # (a weight-0 class, a term 0); NaN rows are caught through m below
        if weight is None:
            agap = torch.nansum(dh, dim=1).mul_(-soft)
            asum = zero.new_tensor(soft * vs)
        else:
            w = weight.to(dt)
            agap = torch.nansum(dh * w, dim=1).mul_(-soft)
            asum = w.sum() * soft
    # e^{z_c - m} = e^{dh} (1 + dl) (see exp_diff); e = 1 at ties and at every +inf when
    # m = +inf (NaN differences), 0 for finite logits next to +inf; dh is kept for the
    # entropy's sum (the TwoSum tail is below its ulp)
    e = dh.exp() if entropy else dh.exp_()
    if dl is not None:
        e = dl.mul_(e).add_(e)
    e.nan_to_num_(1.0, math.inf, 0.0)
    e.scatter_(1, k[:, None], 0.0)  # leave out one maximal element
    rest = e.sum(dim=1)
    # m = -inf: no element carries mass (a slice of all -inf behaves as an empty one);
    # m = NaN: the row is NaN
    rest = torch.where(m == -math.inf, zero, rest)
    rest = torch.where(torch.isnan(m), m, rest)
    ent = None
    if entropy:
        # sum_c e^{z_c - m} (m - z_c) = -sum_c (z_c - m) e^{z_c - m}: terms of one sign;
        # 0 * inf (a -inf logit, or a finite one next to +inf) and the NaN difference of a
        # +inf logit at m = +inf are 0 (p log p -> 0; the +inf logits share the mass, each
        # at difference 0)
        ent = dh.mul_(e).nan_to_num_(0.0, 0.0, 0.0).sum(dim=1).neg_()
        ent = torch.where(m == -math.inf, zero, ent)
        ent = torch.where(torch.isnan(m), m, ent)
    has_y = counted & (target >= offset) & (target < offset + vs)
    col = (target - offset).clamp(0, vs - 1)[:, None]
    # m - z_y >= 0 (0 at ties, +inf for a finite target next to +inf or a -inf target)
    zy = torch.where(has_y, _shift(z.gather(1, col)[:, 0].to(dt), m), zero)
    return RowStats(m, rest, zy, has_y, asum, agap, argmax=k, ent=ent)


# --------------------------------------------------------------------------- the merge rule


@dataclass(frozen=True)
class Lifted:
    """A slice's terms relative to a maximum ``m`` at least its own (see :func:`lift`)."""

    rest: Tensor  # rest_s where m_s = m (top), else (1 + rest_s) e^{m_s - m}
    top: Tensor  # bool: the slice reaches m
    zy: Tensor  # m - z_y on the slice holding the target, else 0
    agap: Tensor | None  # B_s + (m - m_s) A_s
    ent: Tensor | None = None  # ent_s (top), else e^{m_s - m} (ent_s + (m - m_s)(1 + rest_s))


def lift(st: RowStats, m: Tensor) -> Lifted:
    """The terms of slice `st` relative to ``m >= st.m``: the one merge rule.

    The statistics of a union of disjoint slices are the sums of their lifted terms, plus
    ``(number of slices reaching m) - 1`` in ``rest``:

    * a slice below ``m`` adds its whole sum ``(1 + rest_s)`` rescaled by ``e^{m_s - m}``
      (:func:`exp_diff`; written ``f + f rest_s`` so that a tiny ``rest_s`` is not rounded
      away in ``1 + rest_s``); an empty slice (``m_s = -inf``) adds ``e^{-inf} = 0``;
    * a slice reaching ``m`` adds its ``rest_s`` (without its maximal element), and counts
      1: all but one of the maximal elements of the slices reaching ``m`` belong to ``rest``
      (so ``rest`` never includes the merged maximum and ``log1p(rest)`` stays exact);
    * ``m - z_y`` and ``B`` move to the new maximum by adding ``(m - m_s) >= 0`` (times
      ``A_s`` for the latter): every term stays >= 0; an empty (or weight-0) slice adds 0,
      not ``0 * inf``;
    * the entropy's sum: ``e^{z_c - m} (m - z_c) = f e^{z_c - m_s} ((m - m_s) + (m_s - z_c))``
      with ``f = e^{m_s - m}``, so a slice below ``m`` adds
      ``f (ent_s + (m - m_s)(1 + rest_s))`` (its maximal element included), one reaching
      ``m`` its ``ent_s``: sums of terms >= 0.
    """
    top = st.m == m
    f = exp_diff(st.m, m)  # e^{m_s - m} in [0, 1]
    rest = torch.where(top, st.rest, f + f * st.rest)
    sh = _shift(st.m, m)  # m - m_s >= 0, 0 on the top slices
    # the owner's m - z_y = (m - m_s) + (m_s - z_y): two terms >= 0
    zy = torch.where(st.has_y, st.zy + sh, torch.zeros_like(sh))
    agap = None
    if st.agap is not None and st.asum is not None:
        agap = st.agap + torch.where(st.asum == 0, torch.zeros_like(sh), sh * st.asum)
    ent = None
    if st.ent is not None:
        # f = 0 (an empty slice, or one far below m) adds 0, not 0 * inf
        below = f * (st.ent + sh * (1.0 + st.rest))
        ent = torch.where(top, st.ent, torch.where(f == 0, torch.zeros_like(f), below))
    return Lifted(rest, top, zy, agap, ent)


def merge(a: RowStats, b: RowStats) -> RowStats:
    """The statistics of the union of two disjoint slices ``a`` and ``b`` (:func:`lift`).

    ``m = max(m_a, m_b)``; ``rest = lifted_a + lifted_b (+ 1 when both reach m)``.
    """
    m = torch.maximum(a.m, b.m)  # NaN propagates
    la, lb = lift(a, m), lift(b, m)
    rest = la.rest + lb.rest
    # both reach m: one of the two maximal elements joins the rest
    rest = torch.where(la.top & lb.top, rest + 1.0, rest)
    asum = agap = None
    if la.agap is not None and lb.agap is not None and a.asum is not None \
            and b.asum is not None:
        asum, agap = a.asum + b.asum, la.agap + lb.agap
    ent = None if la.ent is None or lb.ent is None else la.ent + lb.ent
    return RowStats(m, rest, la.zy + lb.zy, a.has_y | b.has_y, asum, agap, ent=ent)


def merge_all(parts: Sequence[RowStats]) -> RowStats:
    """:func:`merge` folded left over `parts` (in the given order, for reproducibility)."""
    if not parts:
        raise ValueError("merge_all needs at least one RowStats")
    out = parts[0]
    for p in parts[1:]:
        out = merge(out, p)
    return out


def merge_stacked(p: RowStats) -> RowStats:
    """The statistics of the union of ``P`` disjoint slices stacked as ``[P, n]`` fields.

    ``m = max_j m_j``; the lifted terms (:func:`lift`) summed over the slices, in slice
    order, plus the count of slices reaching ``m`` less one.  ``argmax`` (when the slices
    carry comparable ones) is that of the first slice reaching ``m``.
    """
    top = p.m.max(dim=0)
    m = top.values
    lifted = lift(p, m[None, :])
    count = lifted.top.sum(dim=0).to(lifted.rest.dtype)
    rest = lifted.rest.sum(dim=0) + (count - 1.0).clamp_min_(0.0)
    argmax = None if p.argmax is None else p.argmax.gather(0, top.indices[None, :])[0]
    asum = None if p.asum is None else p.asum.sum(dim=0)
    agap = None if lifted.agap is None else lifted.agap.sum(dim=0)
    ent = None if lifted.ent is None else lifted.ent.sum(dim=0)
    return RowStats(m, rest, lifted.zy.sum(dim=0), p.has_y.any(dim=0), asum, agap, argmax,
                    ent)


# --------------------------------------------------------------------------- finish


def _lse_parts(m: Tensor, log1p_rest: Tensor) -> tuple[Tensor, Tensor]:
    """``m + log1p(rest) = hi + lo`` (TwoSum), so that ``lse**2`` keeps its digits near 0."""
    hi = m + log1p_rest
    bb = hi - m
    lo = (m - (hi - bb)) + (log1p_rest - bb)
    return hi, torch.where(torch.isfinite(lo), lo, torch.zeros_like(lo))


def finish(
    stats: RowStats,
    *,
    counted: Tensor,
    target_coef: Tensor | None,
    z_loss: float = 0.0,
    invalid: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-row ``(loss, lse)`` in nats from the statistics of whole rows.

    `target_coef` ``[n]`` is ``a_y = (1 - eps) w_y`` of index targets (any value on rows not
    counted; None for probability targets, whose coefficients are all in the soft part);
    the soft part is ``stats.agap + stats.asum log1p(rest)`` when the statistics carry it.
    Rows not `counted` get loss 0; rows of all ``-inf`` and `invalid` rows (a target out of
    range, see :class:`IndexTargets`) NaN.
    """
    L = torch.log1p(stats.rest)  # log(1 + rest), exact for tiny rest
    zero = torch.zeros_like(L)
    loss = zero
    if target_coef is not None:
        # a_y [(m - z_y) + log1p(rest)]; a weight-0 target costs 0 even at +inf
        a_y = target_coef.to(L.dtype)
        loss = torch.where(a_y == 0, zero, a_y * (stats.zy + L))
    if stats.agap is not None and stats.asum is not None:
        # sum_c a_c (-log p_c) over the soft part = B + A log1p(rest): terms >= 0
        loss = loss + (stats.agap + stats.asum * L)
    hi, lo = _lse_parts(stats.m, L)
    if z_loss:
        # zeta lse^2 = zeta (hi + lo)^2 = zeta (hi^2 + 2 hi lo) (lo^2 is below an ulp)
        loss = loss + z_loss * (hi * hi + 2.0 * hi * lo)
    # a row of all -inf is no distribution (its m is -inf): NaN, as in the NumPy core
    nan = stats.m == -math.inf
    if invalid is not None:
        nan = nan | invalid
    loss = torch.where(nan, torch.full_like(loss, math.nan), loss)
    loss = torch.where(counted, loss, zero)
    return loss, hi


def entropy(stats: RowStats) -> Tensor:
    r"""Per-row entropy (nats) of the softmax, from the statistics of whole rows (with
    :attr:`RowStats.ent`).

    .. math:: H = -\sum_c p_c \log p_c = \sum_c p_c \big((m - z_c) + L\big)
                = L + \frac{\text{ent}}{1 + \text{rest}},
              \qquad L = \operatorname{log1p}(\text{rest})

    (``p_c = e^{z_c - m} / (1 + rest)``, ``-log p_c = (m - z_c) + L``): two terms >= 0, so a
    confident row keeps its tiny entropy.  NaN for a row of all ``-inf`` (no
    distribution) or holding a NaN; ``log n`` for ``n`` tied ``+inf`` logits.
    """
    assert stats.ent is not None, "slice_stats(..., entropy=True) carries the entropy"
    L = torch.log1p(stats.rest)
    h = L + stats.ent / (1.0 + stats.rest)
    return torch.where(stats.m == -math.inf, torch.full_like(h, math.nan), h)


def log_prob(stats: RowStats, gap: Tensor) -> Tensor:
    """``log p_c = -((m - z_c) + log1p(rest))`` of classes whose ``m - z_c >= 0`` is `gap`
    (broadcast against ``[n, 1]``), from the whole row's statistics: two terms >= 0, so
    ``log p`` of a confident row keeps its digits (``z_c - lse`` would round to 0)."""
    L = torch.log1p(stats.rest)
    if gap.dim() == 2:
        L = L[:, None]
    return -(gap + L)


# --------------------------------------------------------------------------- gradient


def index_coefficients(
    *, a_y: Tensor, k_is_y: Tensor, counted: Tensor, soft: float, total_weight: Tensor | float,
    w_k: Tensor | None, zl: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(W, W - a_k, a_k)`` of index targets, per row (the argmax step of the gradient).

    With ``a_c = a_y [c = y] + soft w_c`` and ``zl = 2 zeta lse`` (None: no z-loss),
    ``W = sum_c a_c + zl`` is the coefficient of ``p_c`` in ``d loss / d z_c = p_c W - a_c``.
    At the argmax ``k`` (``p_k = 1 / (1 + rest)``) the gradient is
    ``((W - a_k) - a_k rest) / (1 + rest)``, with ``W - a_k`` summed from its own terms

    .. math:: W - a_k = a_y [k \ne y] + \mathrm{soft}\,(\textstyle\sum_c w_c - w_k) + zl

    (``W`` rounded first and ``a_k`` subtracted would cancel: a one-hot target on a confident
    row gives ``1 - 1``; with the z-loss ``(1 + 2 zeta lse) - 1`` loses ``2 zeta lse``'s
    digits).  `a_y` is 0 on rows not counted; `w_k` the class weight at ``k`` (None: 1);
    every term is 0 on rows not `counted`.
    """
    zero = torch.zeros_like(a_y)
    w_minus = torch.where(k_is_y, zero, a_y)
    a_k = torch.where(k_is_y, a_y, zero)
    W = a_y
    if soft:
        wk = torch.ones_like(a_y) if w_k is None else w_k
        W = W + torch.where(counted, soft * total_weight, zero)
        a_k = a_k + torch.where(counted, soft * wk, zero)
        w_minus = w_minus + torch.where(counted, soft * (total_weight - wk), zero)
    if zl is not None:
        zt = torch.where(counted, zl, zero)  # d (zeta lse^2) = 2 zeta lse p
        W = W + zt
        w_minus = w_minus + zt
    return W, w_minus, a_k


def dense_coefficients(a: Tensor, k: Tensor, zl: Tensor | None
                       ) -> tuple[Tensor, Tensor, Tensor]:
    """``(W, W - a_k, a_k)`` of dense coefficients ``a`` ``[n, C]`` (probability targets),
    ``k`` ``[n, 1]`` the argmax, each ``[n, 1]``: :func:`index_coefficients`'s rule, with
    ``W - a_k = sum_{c != k} a_c + zl`` summed from its own terms."""
    W = a.sum(dim=1, keepdim=True)
    a_k = a.gather(1, k)
    w_minus = a.scatter(1, k, 0.0).sum(dim=1, keepdim=True)
    if zl is not None:
        W = W + zl
        w_minus = w_minus + zl
    return W, w_minus, a_k


def slice_grad(
    z: Tensor,
    target: Tensor,
    offset: int,
    *,
    counted: Tensor,
    m: Tensor,
    rest: Tensor,
    lse: Tensor,
    target_coef: Tensor,
    soft: float = 0.0,
    weight: Tensor | None = None,
    total_weight: Tensor | float = 0.0,
    z_loss: float = 0.0,
    row_factor: Tensor,
    compensate: bool = True,
    dtype: torch.dtype | None = None,
    argmax: Tensor | None = None,
) -> Tensor:
    r"""``row_factor * d loss / d z`` for a ``[n, V_s]`` slice, from the whole row's stats.

    With ``a_c = a_y [c = y] + soft w_c`` (``a_y`` = `target_coef`, ``soft = eps / V``) and
    ``W = sum_c a_c + 2 zeta lse`` (:func:`index_coefficients`),
    ``d loss / d z_c = p_c W - a_c``, ``p_c = e^{z_c - m} / (1 + rest)``.  At a maximal
    element ``p_c = 1 / (1 + rest)`` exactly, so there
    ``p_c W - a_c = ((W - a_c) - a_c rest) / (1 + rest)`` with ``W - a_c`` summed from its
    terms: ``-rest / (1 + rest)`` for a one-hot target on a confident row, not ``1 - 1``.
    (Only one maximal element needs it: with a tie ``rest >= 1`` and ``p_c <= 1/2``.)
    `row_factor` ``[n]`` is ``d result / d loss_i``.  `weight` is this slice's part of the
    class weights; `total_weight` the whole row's sum (used with `soft`).  Rows not
    `counted` get 0; rows of all ``-inf`` (``m = -inf``) and NaN rows get NaN.  `dtype` is
    the compute dtype (default: z's; a narrower `z` is promoted inside each operation);
    `argmax` the slice's :attr:`RowStats.argmax` if at hand.  Returns a new tensor of the
    compute dtype.
    """
    n, vs = z.shape
    dt = z.dtype if dtype is None else dtype
    if vs == 0:
        return torch.zeros(n, 0, dtype=dt, device=z.device)
    zero = torch.zeros_like(m)
    a_y = torch.where(counted, target_coef.to(dt), zero)
    has_y = counted & (target >= offset) & (target < offset + vs)
    col = (target - offset).clamp(0, vs - 1)[:, None]
    # the maximal element k of this slice, where it is a maximum of the whole row
    k = z.argmax(dim=1) if argmax is None else argmax
    zk = z.gather(1, k[:, None])[:, 0].to(dt)
    w = None if weight is None else weight.to(dt)
    W, w_minus, a_k = index_coefficients(
        a_y=a_y, k_is_y=has_y & (k == col[:, 0]), counted=counted, soft=soft,
        total_weight=total_weight, w_k=None if w is None else w[k],
        zl=2.0 * z_loss * lse if z_loss else None)
    denom = 1.0 + rest
    # rows of all -inf: no distribution, NaN (as the NumPy core); the factor d result / d loss
    # is folded into every term: f (p_c W - a_c)
    f = torch.where((m == -math.inf) | torch.isnan(m), torch.full_like(m, math.nan),
                    row_factor.to(dt))
    # f p_c W = e^{z_c - m} (f W / (1 + rest))
    g = exp_diff(z, m[:, None], compensate).mul_((f * W / denom)[:, None])
    if soft:
        # - f soft w_c
        if w is None:
            g.sub_((soft * f)[:, None])
        else:
            g.addcmul_((-soft * f)[:, None], w[None, :])
    g.scatter_add_(1, col, torch.where(has_y, -a_y * f, zero)[:, None])  # - f a_y
    g_k = f * ((w_minus - a_k * rest) / denom)
    at_max = (zk == m) & torch.isfinite(m)  # (+inf rows: p_k W - a_k is already exact)
    g.scatter_(1, k[:, None], torch.where(at_max, g_k, g.gather(1, k[:, None])[:, 0])[:, None])
    # rows not counted: 0, whatever their logits (inf * 0 would be NaN)
    return g.masked_fill_(~counted[:, None], 0.0)
