r"""Chunk planning and the chunk loops of the linear cross-entropy (``z = h W^T + b``).

A :class:`ChunkPlan` says how the (N, V) logits are cut: ``rows`` tokens per chunk, and
optionally ``vocab`` classes per vocabulary slice.  :meth:`ChunkPlan.resolve` turns a
(possibly partial) user plan into concrete numbers for given N, V and element size; the
custom operators in :mod:`crossentropy.torch._ops` take the two integers.

Two loops:

* :func:`linear_chunks` -- whole logit rows: each chunk's logits go through a row function
  (the fused numba kernel on the CPU, the pure-torch reference elsewhere) that overwrites
  them with their gradient, which is multiplied straight into grad_h, grad_W, grad_b;
* :func:`_vocab_chunks` -- logits cut into vocabulary slices too (a row does not fit the
  budget, or the plan asks for slices): pass 1 merges per-slice row statistics in the
  log1p form with the rule of ``torch/_rowstats.py`` (the distributed loss uses it too), pass 2
  recomputes each slice and writes its gradient.

Test hook: :func:`watch_buffers` records the shape of every logits buffer allocated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from crossentropy._dispatch import pick_rows
from crossentropy._options import CrossEntropyOptions

__all__ = ["CHUNK_BYTES", "ChunkPlan", "linear_chunks", "watch_buffers"]

#: Default bytes of logits one chunk may hold (tokens x vocabulary slice).
CHUNK_BYTES = 32 << 20
_LOW = (torch.bfloat16, torch.float16)
_NO_IGNORE = -(2**63)  # ignore_index=None: an index no valid target equals
_watchers: list[Callable[[tuple[int, int]], None]] = []


@contextlib.contextmanager
def watch_buffers() -> Iterator[list[tuple[int, int]]]:
    """Test hook: collect the shapes of the logits buffers the chunk loops allocate."""
    shapes: list[tuple[int, int]] = []
    _watchers.append(shapes.append)
    try:
        yield shapes
    finally:
        _watchers.remove(shapes.append)


def _allocated(shape: tuple[int, int]) -> None:
    for w in _watchers:
        w(shape)


@dataclass(frozen=True)
class ChunkPlan:
    """How the linear cross-entropy cuts its logits.

    ``rows``: tokens per chunk (None: as many as fit ``budget_bytes``, at least 16);
    ``vocab``: classes per vocabulary slice (None: whole rows, unless 16 rows of V logits
    exceed the budget; then slices of about ``budget_bytes / (rows * itemsize)`` classes);
    ``budget_bytes``: the logits one chunk may hold (32 MiB).

    >>> ChunkPlan().resolve(1000, 50, 4)
    ChunkPlan(rows=1000, vocab=None, budget_bytes=33554432)
    >>> ChunkPlan(vocab=7).resolve(100, 50, 4).vocab
    7
    >>> ChunkPlan().resolve(64, 1 << 22, 4).vocab  # 16 rows of 4M classes exceed 32 MiB
    524288
    """

    rows: int | None = None
    vocab: int | None = None
    budget_bytes: int = CHUNK_BYTES

    def __post_init__(self) -> None:
        for name in ("rows", "vocab"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"ChunkPlan.{name} must be None or an integer >= 1, got {v!r}")
        b = self.budget_bytes
        if isinstance(b, bool) or not isinstance(b, int) or b < 1:
            raise ValueError(f"ChunkPlan.budget_bytes must be an integer >= 1, got {b!r}")

    def resolve(self, n: int, vocab: int, itemsize: int) -> ChunkPlan:
        """Concrete ``rows`` (1..n) and ``vocab`` (None for whole rows, else 1..V-1)."""
        rows = self.rows
        if rows is None:
            fit = self.budget_bytes // max(1, vocab * itemsize)
            rows = max(16, fit - fit % 16)
        rows = max(1, min(n, rows))
        vs = self.vocab
        if vs is None and 16 * vocab * itemsize > self.budget_bytes:
            vs = self.budget_bytes // max(1, rows * itemsize)
        if vs is not None:
            vs = max(1, min(vocab, vs))
            if vs >= vocab:
                vs = None
        return ChunkPlan(rows, vs, self.budget_bytes)


# --------------------------------------------------------------------------- row functions

RowsFn = Callable[
    [Tensor, Tensor, "Tensor | None", CrossEntropyOptions, "Tensor | None", float],
    tuple[Tensor, Tensor],
]


def cpu_rows(
    x: Tensor, target: Tensor, weight64: Tensor | None, opts: CrossEntropyOptions,
    grad: Tensor | None, grad_scale: float,
) -> tuple[Tensor, Tensor]:
    """The fused CPU kernel on tensors (zero-copy NumPy views); float64 (loss, lse) rows.

    `grad` (may be `x` itself) receives ``grad_scale * d loss / d x``.
    """
    loss, lse = cpu_rows_np(x, target, weight64, opts, grad, grad_scale)
    return torch.from_numpy(loss), torch.from_numpy(lse)


def cpu_rows_np(
    x: Tensor, target: Tensor, weight64: Tensor | None, opts: CrossEntropyOptions,
    grad: Tensor | None, grad_scale: float,
) -> tuple[Any, Any]:
    """:func:`cpu_rows` with the float64 (loss, lse) rows as NumPy arrays."""
    # zero-copy views; .numpy() refuses a tensor that requires grad, so those are detached
    # first (written out: a helper function per tensor costs more than the check)
    return cpu_rows_arrays(
        (x.detach() if x.requires_grad else x).numpy(),
        (target.detach() if target.requires_grad else target).numpy(),
        None if weight64 is None else weight64.detach().numpy(), opts,
        None if grad is None else (grad.detach() if grad.requires_grad else grad).numpy(),
        grad_scale)


def cpu_rows_arrays(x: Any, target: Any, weight64: Any, opts: CrossEntropyOptions,
                    grad: Any, grad_scale: float) -> tuple[Any, Any]:
    """:func:`cpu_rows_np` on the NumPy views themselves, by the backend the NumPy
    dispatch picks (:func:`crossentropy._dispatch.pick_rows`: the kernels or the core)."""
    return pick_rows(x).ce_rows(
        x, target, weight64, _NO_IGNORE if opts.ignore_index is None else opts.ignore_index,
        opts.label_smoothing, opts.z_loss, opts.softcap, grad, grad_scale)


def torch_rows(
    x: Tensor, target: Tensor, weight64: Tensor | None, opts: CrossEntropyOptions,
    grad: Tensor | None, grad_scale: float,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`cpu_rows`, with the pure-torch reference (other devices)."""
    from crossentropy.torch._reference import _forward_rows, _grad_rows

    loss, lse = _forward_rows(x, target, weight64, opts, 1.0)
    if grad is not None:
        g, _ = _grad_rows(x, target, weight64, opts, 1.0,
                          torch.full_like(loss, grad_scale), None)
        grad.copy_(g)
    return loss.to(torch.float64), lse.to(torch.float64)


def rows_for(device: torch.device) -> RowsFn:
    return cpu_rows if device.type == "cpu" else torch_rows


def lse_grad(x: Tensor, softcap: float | None) -> Tensor:
    """``d lse / d x = softmax(z) * dz/dx``, z the soft-capped logits."""
    from crossentropy.torch._rowstats import softcap as cap_
    from crossentropy.torch._rowstats import softcap_derivative

    p = torch.softmax(cap_(x, softcap), dim=1)
    if softcap is not None:
        p = p * softcap_derivative(x, softcap)
    return p


# --------------------------------------------------------------------------- whole rows


def linear_chunks(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    opts: CrossEntropyOptions,
    plan: ChunkPlan,
    *,
    grad_scale: float,
    row_scale: Tensor | None,
    g_lse: Tensor | None,
    need: tuple[bool, bool, bool],
    rows_fn: RowsFn,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The chunk loop shared by the forward and backward of the linear operator.

    For each chunk of ``plan.rows`` tokens: ``z = h W^T + b`` (the compute dtype: float32 for
    bf16/fp16 inputs), the row function turns z into ``grad_scale * d loss / d z`` in place,
    rows are multiplied by `row_scale`, ``g_lse * d lse / dz`` is added, and
    ``grad_h = dz W``, ``grad_W += dz^T h``, ``grad_b += sum dz`` (accumulated in the compute
    dtype, so bf16 weights get float32 accumulation).  `plan` must be resolved.  Returns
    float64 per-row (loss, lse) and the gradients (None where not needed).
    """
    N, D = hidden.shape
    V = weight.shape[0]
    cdt = torch.float32 if hidden.dtype in _LOW else hidden.dtype
    w = weight.to(cdt)  # no copy unless the input is bf16/fp16
    b = None if bias is None else bias.to(cdt)
    cw = None if class_weight is None else class_weight.to(torch.float64)
    need_gh, need_gw, need_gb = need[0], need[1], need[2] and bias is not None
    want_grad = need_gh or need_gw or need_gb
    dev = hidden.device
    loss = torch.empty(N, dtype=torch.float64, device=dev)
    lse = torch.empty(N, dtype=torch.float64, device=dev)
    gh = torch.empty(N, D, dtype=cdt, device=dev) if need_gh else None
    gw = torch.zeros(V, D, dtype=cdt, device=dev) if need_gw else None
    gb = torch.zeros(V, dtype=cdt, device=dev) if need_gb else None
    rows = plan.rows or max(1, N)
    if plan.vocab is not None:
        _vocab_chunks(hidden, w, target, b, cw, opts, ChunkPlan(rows, plan.vocab),
                      _Upstream(grad_scale, row_scale, g_lse), _Sink(loss, lse, gh, gw, gb))
        return loss, lse, gh, gw, gb
    buf = torch.empty(min(rows, N), V, dtype=cdt, device=dev)
    _allocated((buf.shape[0], V))
    for s in range(0, N, rows):
        e = min(N, s + rows)
        hc = hidden[s:e].to(cdt)
        z = buf[: e - s]
        torch.mm(hc, w.t(), out=z)
        if b is not None:
            z.add_(b)
        p = lse_grad(z, opts.softcap) if (g_lse is not None and want_grad) else None
        lc, sc = rows_fn(z, target[s:e], cw, opts, z if want_grad else None, grad_scale)
        loss[s:e] = lc
        lse[s:e] = sc
        if not want_grad:
            continue
        if row_scale is not None:
            z.mul_(row_scale[s:e].to(cdt).unsqueeze(1))
        if p is not None and g_lse is not None:
            z.add_(p.mul_(g_lse[s:e].to(cdt).unsqueeze(1)))
        if gh is not None:
            torch.mm(z, w, out=gh[s:e])
        if gw is not None:
            gw.addmm_(z.t(), hc)
        if gb is not None:
            gb.add_(z.sum(0))
    return loss, lse, gh, gw, gb


# --------------------------------------------------------------------------- vocabulary slices



@dataclass(frozen=True)
class _Upstream:
    """What multiplies each row's gradient: ``grad_scale * row_scale[i]``, plus
    ``g_lse[i] * d lse_i / dz``."""

    grad_scale: float
    row_scale: Tensor | None
    g_lse: Tensor | None


@dataclass(frozen=True)
class _Sink:
    """Where a chunk loop writes: float64 per-row loss and lse, the gradients (or None)."""

    loss: Tensor
    lse: Tensor
    gh: Tensor | None
    gw: Tensor | None
    gb: Tensor | None


def _vocab_chunks(
    hidden: Tensor, w: Tensor, target: Tensor, b: Tensor | None, cw: Tensor | None,
    opts: CrossEntropyOptions, plan: ChunkPlan, up: _Upstream, out: _Sink,
) -> None:
    r""":func:`linear_chunks` with the vocabulary cut into slices ``[v0, v1)`` of
    ``plan.vocab`` classes (``plan.rows`` tokens at a time; `plan` resolved).

    The row statistics and their merge are ``torch/_rowstats.py``'s (the rule the
    distributed loss and the Triton glue use too): pass 1 computes each slice's
    :class:`~._rowstats.RowStats` (max, rest, ``m - z_y``, the soft sums ``A``, ``B``;
    float64) and merges them in class order; :func:`~._rowstats.finish` gives

    .. math:: \ell = (1-\varepsilon) w_y \big((m - z_y) + L\big)
                   + (B + A L) + \zeta\,\mathrm{lse}^2,
              \quad L = \operatorname{log1p}(\text{rest})

    (0 for ignored rows).  Pass 2 recomputes each slice's logits and writes
    :func:`~._rowstats.slice_grad` (``p_c W' - a_c``, the argmax entry without
    cancellation) plus ``g_lse p_c``, times the soft cap's ``sech^2``.
    """
    from crossentropy.torch._rowstats import (
        exp_diff,
        finish,
        index_targets,
        merge,
        slice_grad,
        slice_stats,
        softcap,
        softcap_derivative,
    )

    rows, vs = plan.rows or 1, plan.vocab or w.shape[0]
    loss, lse, gh, gw, gb = out.loss, out.lse, out.gh, out.gw, out.gb
    grad_scale, row_scale, g_lse = up.grad_scale, up.row_scale, up.g_lse
    want_grad = gh is not None or gw is not None or gb is not None

    N = hidden.shape[0]
    V = w.shape[0]
    cdt = w.dtype
    f64 = torch.float64
    dev = hidden.device
    eps, z_loss, cap = opts.label_smoothing, opts.z_loss, opts.softcap
    soft = eps / V  # the soft coefficients a_c = (eps / V) w_c
    # float32 logits are exact in float64, and so are their differences: no TwoSum needed
    comp = cdt == f64
    buf = torch.empty(min(rows, N), vs, dtype=cdt, device=dev)
    _allocated((buf.shape[0], vs))
    wtot: Tensor | float = float(V) if cw is None else cw.sum()

    def logits(hc: Tensor, v0: int, v1: int) -> tuple[Tensor, Tensor | None]:
        z = buf[: hc.shape[0], : v1 - v0]
        torch.mm(hc, w[v0:v1].t(), out=z)
        if b is not None:
            z.add_(b[v0:v1])
        if cap is None:
            return z, None
        dzdx = softcap_derivative(z, cap)
        z.copy_(softcap(z, cap))
        return z, dzdx

    for s in range(0, N, rows):
        e = min(N, s + rows)
        n = e - s
        hc = hidden[s:e].to(cdt)
        tg = index_targets(target[s:e], ignore_index=opts.ignore_index, num_classes=V,
                           weight=cw, dtype=f64)
        counted, ys = tg.counted, tg.safe
        a_y = (1.0 - eps) * tg.weight
        st = None
        for v0 in range(0, V, vs):
            v1 = min(V, v0 + vs)
            z, _ = logits(hc, v0, v1)
            cur = slice_stats(z, ys, v0, counted=counted,
                              weight=None if cw is None else cw[v0:v1], soft=soft,
                              compensate=comp, dtype=f64)
            st = cur if st is None else merge(st, cur)
        assert st is not None
        lc, lse_c = finish(st, counted=counted, target_coef=a_y, z_loss=z_loss)
        loss[s:e] = lc
        lse[s:e] = lse_c
        if not want_grad:
            continue
        # pass 2: gradient slice by slice from the whole row's statistics
        rs = torch.full((n,), grad_scale, dtype=f64, device=dev)
        if row_scale is not None:
            rs = rs * row_scale[s:e].to(f64)
        gl = None if g_lse is None else g_lse[s:e].to(f64)
        if gh is not None:
            gh[s:e].zero_()
        for v0 in range(0, V, vs):
            v1 = min(V, v0 + vs)
            z, dzdx = logits(hc, v0, v1)
            g = slice_grad(z, ys, v0, counted=counted, m=st.m, rest=st.rest, lse=lse_c,
                           target_coef=a_y, soft=soft,
                           weight=None if cw is None else cw[v0:v1], total_weight=wtot,
                           z_loss=z_loss, row_factor=rs, compensate=comp, dtype=f64)
            if gl is not None:
                # d lse / dz_c = p_c = e^{z_c - m} / (1 + rest)
                p = exp_diff(z, st.m[:, None], comp).div_((1.0 + st.rest)[:, None])
                g.add_(p.mul_(gl[:, None]))
            dz = g.to(cdt)
            if dzdx is not None:
                dz.mul_(dzdx)
            if gh is not None:
                gh[s:e].addmm_(dz, w[v0:v1])
            if gw is not None:
                gw[v0:v1].addmm_(dz.t(), hc)
            if gb is not None:
                gb[v0:v1].add_(dz.sum(0))


def resolve_plan(plan: Any, n: int, vocab: int, dtype: torch.dtype) -> ChunkPlan:
    """The concrete plan for `n` tokens, `vocab` classes, logits of `dtype` (compute dtype)."""
    itemsize = 4 if dtype in _LOW else torch.empty(0, dtype=dtype).element_size()
    base = plan if isinstance(plan, ChunkPlan) else ChunkPlan()
    return base.resolve(n, vocab, itemsize)
