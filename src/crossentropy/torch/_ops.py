"""The CPU custom operators behind ``crossentropy.torch``, registered with ``torch.library``.

Two operators, each with a fake (meta) implementation so that ``torch.compile`` traces
them without a graph break, and an autograd formula:

``crossentropy::cross_entropy_index``
    Cross-entropy of (N, C) logits against index targets, through the fused CPU kernel
    :func:`crossentropy._cpu.cross_entropy_rows`.  The forward pass writes the gradient
    (already scaled by the reduction) into a buffer; backward returns it as it is when the
    incoming gradient is 1 and otherwise multiplies it once: no second pass over the logits
    to recompute a softmax.

``crossentropy::linear_cross_entropy``
    ``cross_entropy(hidden @ weight.T + bias, target)`` chunked over the tokens: each chunk's
    logits are computed, turned into their gradient in place by the same kernel, and
    multiplied into ``grad_hidden`` and ``grad_weight`` (accumulated in float32 or float64),
    so the (N, V) logits never exist.  For ``reduction='mean'``/``'sum'`` the gradients are
    computed in the forward pass; for ``'none'`` (each row's weight in the gradient is only
    known in backward) ``crossentropy::linear_cross_entropy_backward`` recomputes them
    chunk by chunk with the per-row factors.

Second derivatives: when backward runs with ``create_graph=True`` the index operator
differentiates the autograd-traceable reference (:func:`._rows.reference_rows`) instead, so
Hessian-vector products are exact; the linear operator raises a ``RuntimeError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from crossentropy.torch._rows import reference_rows, rows_with_grad_, softcap_

REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
_LOW = (torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------- helpers


def check_index_target(target: Tensor, num_classes: int, ignore_index: int) -> None:
    """Raise ValueError naming the first target outside [0, C) that is not ignore_index."""
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        flat = int(torch.nonzero(bad.reshape(-1))[0, 0])
        pos = np.unravel_index(flat, tuple(target.shape)) if target.dim() else ()
        where = "[" + ", ".join(str(int(i)) for i in pos) + "]"
        raise ValueError(
            f"target{where} = {int(target.reshape(-1)[flat])} is out of range "
            f"[0, {num_classes}) (and is not ignore_index={ignore_index})"
        )


def _counted_weight(target: Tensor, weight: Tensor | None, ignore_index: int) -> float:
    """Denominator of torch's mean for index targets: sum of weight[y_i] over counted rows."""
    counted = target != ignore_index
    if weight is None:
        return float(counted.sum())
    safe = torch.where(counted, target, torch.zeros_like(target))
    return float((weight.to(torch.float64)[safe] * counted).sum())


def _reduce(loss64: Tensor, reduction: int, scale: float, wsum: float) -> Tensor:
    """Apply the reduction in float64: 'none' keeps rows, 'sum' adds, 'mean' divides by wsum.

    0/0 gives NaN (an all-ignored batch), as in torch.
    """
    if reduction == 0:
        return loss64 * scale
    total = loss64.sum() * scale
    if reduction == 1:
        return total
    return total / torch.tensor(wsum, dtype=torch.float64)


def _grad_scale(reduction: int, scale: float, wsum: float) -> float:
    if reduction == 2:
        return scale / wsum if wsum != 0.0 else 0.0
    return scale


def _is_one(g: Tensor) -> bool:
    """True when every element of the incoming gradient is exactly 1 (eager mode only)."""
    if torch.compiler.is_compiling():
        return False
    return bool((g == 1).all())


def _scale_rows(grad: Tensor, g: Tensor) -> Tensor:
    """grad * g, with g a scalar or one factor per row; `grad` itself when g is all ones."""
    if _is_one(g):
        return grad
    g = g.to(grad.dtype)
    return grad * (g.unsqueeze(1) if g.dim() == 1 else g)


def _lse_grad(x: Tensor, softcap: float | None) -> Tensor:
    """d lse / d x = softmax(z) * dz/dx, z = softcap(x)."""
    z = softcap_(x, softcap)
    p = torch.softmax(z, dim=1)
    if softcap is not None:
        t = torch.tanh(x / softcap)
        p = p * ((1.0 - t) * (1.0 + t))  # dz/dx = 1 - tanh^2
    return p


def _np(t: Tensor) -> Any:
    return t.detach().numpy()


def _cpu_rows(
    x: Tensor,
    target: Tensor,
    weight64: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad: Tensor | None,
    grad_scale: float,
) -> tuple[Tensor, Tensor]:
    """The fused CPU kernel on tensors (zero-copy NumPy views); returns float64 (loss, lse)."""
    from crossentropy._cpu import cross_entropy_rows

    loss, lse = cross_entropy_rows(
        _np(x),
        _np(target),
        weight=None if weight64 is None else _np(weight64),
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        grad=None if grad is None else _np(grad),
        grad_scale=grad_scale,
    )
    return torch.from_numpy(loss), torch.from_numpy(lse)


# --------------------------------------------------------------------------- index op


@torch.library.custom_op("crossentropy::cross_entropy_index", mutates_args=(), device_types="cpu")
def cross_entropy_index(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    scale: float,
    reduction: int,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """(out, lse, grad) of (N, C) float32/float64 logits and int64 index targets.

    ``grad`` is ``d out / d logits`` for 'mean'/'sum' and the per-row gradients for
    'none' (an empty tensor when need_grad is False).
    """
    x = logits.detach().contiguous()
    t = target.detach().contiguous()
    C = x.shape[1]
    check_index_target(t, C, ignore_index)
    w64 = None if weight is None else weight.detach().to(torch.float64).contiguous()
    wsum = _counted_weight(t, w64, ignore_index) if reduction == 2 else 1.0
    grad = torch.empty_like(x) if need_grad else x.new_empty(0)
    loss, lse = _cpu_rows(
        x, t, w64, ignore_index, label_smoothing, z_loss, softcap,
        grad if need_grad else None, _grad_scale(reduction, scale, wsum),
    )
    out = _reduce(loss, reduction, scale, wsum).to(x.dtype)
    return out, lse.to(x.dtype), grad


@cross_entropy_index.register_fake
def _(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    scale: float,
    reduction: int,
    need_grad: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    N = logits.shape[0]
    out = logits.new_empty((N,) if reduction == 0 else ())
    grad = logits.new_empty(logits.shape) if need_grad else logits.new_empty(0)
    return out, logits.new_empty(N), grad


def _index_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    logits, target, weight, ignore_index, eps, z_loss, softcap, scale, reduction, need = inputs
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(output[2])
    ctx.save_for_backward(logits, target, weight, output[2])
    ctx.opts = (ignore_index, eps, z_loss, softcap, scale, reduction, need)


def _index_backward(
    ctx: Any, g_out: Tensor | None, g_lse: Tensor | None, g_grad: Tensor | None
) -> tuple[Tensor | None, ...]:
    logits, target, weight, grad = ctx.saved_tensors
    ignore_index, eps, z_loss, softcap, scale, reduction, need = ctx.opts
    none = (None,) * 9
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        # create_graph=True: differentiate the autograd reference, so that the result is
        # itself differentiable (second derivatives).
        with torch.enable_grad():
            loss, lse = reference_rows(
                logits, target, prob=False, weight=weight, ignore_index=ignore_index,
                label_smoothing=eps, z_loss=z_loss, softcap=softcap,
            )
            wsum = _counted_weight(target, weight, ignore_index) if reduction == 2 else 1.0
            out = loss * scale if reduction == 0 else loss.sum() * scale
            if reduction == 2:
                out = out / wsum
            outs = [o for o, g in ((out, g_out), (lse, g_lse)) if g is not None]
            gos = [g for g in (g_out, g_lse) if g is not None]
            (gref,) = torch.autograd.grad(outs, [logits], gos, create_graph=True)
        return (gref, *none)
    gx: Tensor | None = None
    if g_out is not None:
        if not need:
            raise RuntimeError(
                "crossentropy: the gradient was not computed in the forward pass (the "
                "logits did not require grad, or grad mode was off)"
            )
        gx = _scale_rows(grad, g_out)
    if g_lse is not None:
        extra = _lse_grad(logits.detach(), softcap) * g_lse.unsqueeze(1).to(logits.dtype)
        gx = extra if gx is None else gx + extra
    return (gx, *none)


cross_entropy_index.register_autograd(_index_backward, setup_context=_index_setup)


# --------------------------------------------------------------------------- linear op

RowsFn = Callable[..., tuple[Tensor, Tensor]]


def _torch_rows(
    x: Tensor,
    target: Tensor,
    weight64: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad: Tensor | None,
    grad_scale: float,
) -> tuple[Tensor, Tensor]:
    """Same contract as :func:`_cpu_rows`, in torch operations (devices without the kernel)."""
    if grad is None:
        loss, lse = reference_rows(
            x, target, prob=False, weight=weight64, ignore_index=ignore_index,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
        )
    else:
        loss, lse = rows_with_grad_(
            x, target, weight=weight64, ignore_index=ignore_index,
            label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
            grad_scale=grad_scale,
        )
    return loss.to(torch.float64), lse.to(torch.float64)


#: Bytes of logits that one chunk may hold (tokens x vocabulary slice).
CHUNK_BYTES = 32 << 20
#: Force vocabulary slices of this many classes (None: only when V is too large for
#: ``CHUNK_BYTES`` at the minimum of 16 rows).  A module-level setting (tests, tuning).
VOCAB_CHUNK: int | None = None
#: Called with the shape of each logits buffer that ``linear_chunks`` allocates (tests).
BUFFER_HOOK: Callable[[tuple[int, int]], None] | None = None


def default_chunk_rows(n: int, vocab: int, itemsize: int = 4) -> int:
    """Tokens per chunk: the chunk's logits take about ``CHUNK_BYTES`` = 32 MiB (at least 16 rows).

    Large enough for the matrix products to run at full speed, small next to the
    (V, D) weight gradient that every method has to hold.
    """
    rows = CHUNK_BYTES // max(1, vocab * itemsize)
    return max(1, min(n, max(16, rows - rows % 16)))


def vocab_slice(rows: int, vocab: int, itemsize: int) -> int | None:
    """Classes per vocabulary slice, or None when whole logit rows fit the budget.

    Slices are used when ``VOCAB_CHUNK`` is set, or when even 16 rows of V logits exceed
    ``CHUNK_BYTES``; then a slice holds about ``CHUNK_BYTES / (rows * itemsize)`` classes.
    """
    if VOCAB_CHUNK is not None:
        return max(1, min(vocab, int(VOCAB_CHUNK)))
    if 16 * vocab * itemsize <= CHUNK_BYTES:
        return None
    return max(1, min(vocab, CHUNK_BYTES // max(1, rows * itemsize)))


def linear_chunks(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int,
    *,
    grad_scale: float,
    row_scale: Tensor | None,
    g_lse: Tensor | None,
    need_gh: bool,
    need_gw: bool,
    need_gb: bool,
    rows_fn: RowsFn,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The chunk loop shared by the forward and backward of the linear operator.

    For each chunk of tokens: ``z = h W^T + b`` (the compute dtype: float32 for bf16/fp16
    inputs), then the kernel turns z into ``grad_scale * d loss / d z`` in place, rows are
    multiplied by `row_scale`, ``g_lse * softmax`` is added, and
    ``grad_h = dz W``, ``grad_W += dz^T h``, ``grad_b += sum dz`` (all in the compute dtype,
    so bf16 weights get float32 accumulation).  Returns float64 per-row (loss, lse) and the
    gradients in the compute dtype.
    """
    N, D = hidden.shape
    V = weight.shape[0]
    cdt = torch.float32 if hidden.dtype in _LOW else hidden.dtype
    w = weight.to(cdt)  # no copy unless the input is bf16/fp16
    b = None if bias is None else bias.to(cdt)
    cw = None if class_weight is None else class_weight.to(torch.float64)
    want_grad = need_gh or need_gw or need_gb
    loss = torch.empty(N, dtype=torch.float64, device=hidden.device)
    lse = torch.empty(N, dtype=torch.float64, device=hidden.device)
    gh = torch.empty(N, D, dtype=cdt, device=hidden.device) if need_gh else None
    gw = torch.zeros(V, D, dtype=cdt, device=hidden.device) if need_gw else None
    gb = torch.zeros(V, dtype=cdt, device=hidden.device) if need_gb else None
    rows = max(1, min(chunk_rows, N))
    vs = vocab_slice(rows, V, torch.empty(0, dtype=cdt).element_size())
    if vs is not None and vs < V:
        _vocab_chunks(
            hidden, w, target, b, cw, ignore_index, label_smoothing, z_loss, softcap,
            rows, vs, grad_scale, row_scale, g_lse, want_grad, loss, lse, gh, gw, gb,
        )
        return loss, lse, gh, gw, gb
    buf = torch.empty(rows, V, dtype=cdt, device=hidden.device)
    if BUFFER_HOOK is not None:
        BUFFER_HOOK(tuple(buf.shape))  # type: ignore[arg-type]
    for s in range(0, N, rows):
        e = min(N, s + rows)
        hc = hidden[s:e].to(cdt)
        z = buf[: e - s]
        torch.mm(hc, w.t(), out=z)
        if b is not None:
            z.add_(b)
        tc = target[s:e]
        p = _lse_grad(z, softcap) if (g_lse is not None and want_grad) else None
        lc, sc = rows_fn(
            z, tc, cw, ignore_index, label_smoothing, z_loss, softcap,
            z if want_grad else None, grad_scale,
        )
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


def _slice_logits(
    buf: Tensor, hc: Tensor, w: Tensor, b: Tensor | None, softcap: float | None, v0: int,
    v1: int,
) -> tuple[Tensor, Tensor | None]:
    """Capped logits ``z = softcap(h W[v0:v1]^T + b[v0:v1])`` in `buf`, and dz/dx (soft cap)."""
    z = buf[: hc.shape[0], : v1 - v0]
    torch.mm(hc, w[v0:v1].t(), out=z)
    if b is not None:
        z.add_(b[v0:v1])
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    z.copy_(t * softcap)
    return z, (1.0 - t) * (1.0 + t)  # dz/dx = 1 - tanh^2, factored as in _rows


def _vocab_chunks(
    hidden: Tensor,
    w: Tensor,
    target: Tensor,
    b: Tensor | None,
    cw: Tensor | None,
    ignore_index: int,
    eps: float,
    z_loss: float,
    softcap: float | None,
    rows: int,
    vs: int,
    grad_scale: float,
    row_scale: Tensor | None,
    g_lse: Tensor | None,
    want_grad: bool,
    loss: Tensor,
    lse: Tensor,
    gh: Tensor | None,
    gw: Tensor | None,
    gb: Tensor | None,
) -> None:
    """:func:`linear_chunks` with the vocabulary cut into slices ``[v0, v1)`` of `vs` classes.

    Pass 1 over the slices keeps, per row, the running max ``m`` and
    ``s = sum_c exp(z_c - m)`` (online log-sum-exp: when the max grows from m to m',
    ``s <- s exp(m - m') + sum exp(z - m')``), the target logit ``z_y`` and, for label
    smoothing, ``sum_c w_c z_c``; all in float64.  Then ``lse = m + log s`` and

        loss = W lse - sum_c a_c z_c + zeta lse^2,   a_c = w_c t'_c,  W = sum_c a_c,

    with ``t' = (1 - eps) onehot(y) + eps / V`` (0 for ignored rows).  Pass 2 (gradients)
    recomputes each slice and writes ``grad_scale (p_c (W + 2 zeta lse) - a_c) dz/dx``
    with ``p_c = exp(z_c - lse)`` and, under a soft cap, ``dz/dx = 1 - tanh^2(x / c)``.
    Outputs are written into `loss`, `lse`, `gh`, `gw`, `gb`.
    """
    N = hidden.shape[0]
    V = w.shape[0]
    cdt = w.dtype
    f64 = torch.float64
    dev = hidden.device
    buf = torch.empty(rows, vs, dtype=cdt, device=dev)
    if BUFFER_HOOK is not None:
        BUFFER_HOOK((rows, vs))
    cw_c = None if cw is None else cw.to(cdt)
    wtot = float(V) if cw is None else float(cw.sum())
    for s in range(0, N, rows):
        e = min(N, s + rows)
        n = e - s
        hc = hidden[s:e].to(cdt)
        y = target[s:e]
        counted = y != ignore_index
        cf = counted.to(f64)
        ys = torch.where(counted, y, torch.zeros_like(y))
        m = torch.full((n,), -torch.inf, dtype=f64, device=dev)
        ssum = torch.zeros(n, dtype=f64, device=dev)
        zy = torch.zeros(n, dtype=f64, device=dev)
        wz = torch.zeros(n, dtype=f64, device=dev)

        # pass 1: online log-sum-exp, target logit, sum_c w_c z_c
        for v0 in range(0, V, vs):
            v1 = min(V, v0 + vs)
            z, _ = _slice_logits(buf, hc, w, b, softcap, v0, v1)
            zd = z.to(f64)
            m_new = torch.maximum(m, zd.max(dim=1).values)
            # s exp(m - m') rescales the old sum to the new max (exp(-inf) = 0 at the start)
            ssum = ssum * torch.exp(m - m_new) + torch.exp(zd - m_new.unsqueeze(1)).sum(1)
            m = m_new
            inside = (ys >= v0) & (ys < v1)
            idx = torch.where(inside, ys - v0, torch.zeros_like(ys)).unsqueeze(1)
            zy = torch.where(inside, zd.gather(1, idx).squeeze(1), zy)
            if eps:
                wz = wz + (zd.sum(1) if cw is None else zd @ cw[v0:v1])
        lse_c = m + torch.log(ssum)  # lse = m + log sum exp(z - m)
        wy = torch.ones(n, dtype=f64, device=dev) if cw is None else cw[ys]
        # W = sum_c a_c = (1 - eps) w_y + eps / V * sum_c w_c ;
        # sum_c a_c z_c = (1 - eps) w_y z_y + eps / V * sum_c w_c z_c
        W = ((1.0 - eps) * wy + (eps / V) * wtot) * cf
        az = ((1.0 - eps) * wy * zy + (eps / V) * wz) * cf
        lc = W * lse_c - az
        if z_loss:
            lc = lc + z_loss * lse_c * lse_c * cf  # z-loss on counted rows
        loss[s:e] = lc
        lse[s:e] = lse_c
        if not want_grad:
            continue
        # pass 2: gradient slice by slice from the known lse
        Wz = (W + 2.0 * z_loss * lse_c * cf) * grad_scale
        rs = None if row_scale is None else row_scale[s:e].to(f64)
        coef = Wz if rs is None else Wz * rs  # factor of p_c
        sub = (1.0 - eps) * grad_scale * wy * cf  # a_y part, times grad_scale
        if rs is not None:
            sub = sub * rs
        smooth = (eps / V) * grad_scale * cf  # times w_c: the smoothing part of a_c
        if rs is not None:
            smooth = smooth * rs
        gl = None if g_lse is None else g_lse[s:e].to(f64)
        pcoef = coef if gl is None else coef + gl  # d lse / dz = p, so g_lse adds g_lse p
        lse_cd = lse_c.to(cdt).unsqueeze(1)
        pcoef_c = pcoef.to(cdt).unsqueeze(1)
        if gh is not None:
            gh[s:e].zero_()
        for v0 in range(0, V, vs):
            v1 = min(V, v0 + vs)
            z, dzdx = _slice_logits(buf, hc, w, b, softcap, v0, v1)
            # p_c = softmax(z)_c = exp(z_c - lse)
            dz = z.sub_(lse_cd).exp_().mul_(pcoef_c)
            if eps:
                sm = smooth.to(cdt).unsqueeze(1)
                dz.sub_(sm if cw_c is None else sm * cw_c[v0:v1])
            inside = (ys >= v0) & (ys < v1) & counted
            if bool(inside.any()):
                r = torch.nonzero(inside).squeeze(1)
                dz[r, ys[r] - v0] -= sub[r].to(cdt)
            if dzdx is not None:
                dz.mul_(dzdx)
            if gh is not None:
                gh[s:e].addmm_(dz, w[v0:v1])
            if gw is not None:
                gw[v0:v1].addmm_(dz.t(), hc)
            if gb is not None:
                gb[v0:v1].add_(dz.sum(0))


def _rows_for(device: torch.device) -> RowsFn:
    return _cpu_rows if device.type == "cpu" else _torch_rows


def _empty_grads(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, need: tuple[bool, bool, bool]
) -> tuple[Tensor, Tensor, Tensor]:
    gh = hidden.new_empty(hidden.shape) if need[0] else hidden.new_empty(0)
    gw = weight.new_empty(weight.shape) if need[1] else weight.new_empty(0)
    gb = bias.new_empty(bias.shape) if (need[2] and bias is not None) else weight.new_empty(0)
    return gh, gw, gb


@torch.library.custom_op("crossentropy::linear_cross_entropy", mutates_args=())
def linear_cross_entropy_op(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    scale: float,
    reduction: int,
    chunk_rows: int,
    need_gh: bool,
    need_gw: bool,
    need_gb: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(out, lse, grad_hidden, grad_weight, grad_bias) of the chunked linear cross-entropy.

    Gradients are computed here only for 'mean' and 'sum' (empty tensors otherwise).
    """
    return linear_forward(
        hidden, weight, target, bias, class_weight, ignore_index, label_smoothing, z_loss,
        softcap, scale, reduction, chunk_rows, (need_gh, need_gw, need_gb),
    )


def linear_forward(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    scale: float,
    reduction: int,
    chunk_rows: int,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Body of the linear operator (also the torch-only path for other devices)."""
    check_index_target(target, weight.shape[0], ignore_index)
    cw = None if class_weight is None else class_weight.detach().to(torch.float64)
    wsum = _counted_weight(target, cw, ignore_index) if reduction == 2 else 1.0
    pre = reduction != 0
    with torch.no_grad():
        loss, lse, gh, gw, gb = linear_chunks(
            hidden.detach(), weight.detach(), target,
            None if bias is None else bias.detach(), cw, ignore_index, label_smoothing,
            z_loss, softcap, chunk_rows, grad_scale=_grad_scale(reduction, scale, wsum),
            row_scale=None, g_lse=None, need_gh=pre and need[0], need_gw=pre and need[1],
            need_gb=pre and need[2] and bias is not None, rows_fn=_rows_for(hidden.device),
        )
    out = _reduce(loss, reduction, scale, wsum).to(hidden.dtype)
    e_h, e_w, e_b = _empty_grads(hidden, weight, bias, (False, False, False))
    return (
        out,
        lse.to(hidden.dtype),
        e_h if gh is None else gh.to(hidden.dtype),
        e_w if gw is None else gw.to(weight.dtype),
        e_b if gb is None or bias is None else gb.to(bias.dtype),
    )


@linear_cross_entropy_op.register_fake
def _(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    scale: float,
    reduction: int,
    chunk_rows: int,
    need_gh: bool,
    need_gw: bool,
    need_gb: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    N = hidden.shape[0]
    out = hidden.new_empty((N,) if reduction == 0 else ())
    pre = reduction != 0
    gh, gw, gb = _empty_grads(hidden, weight, bias, (pre and need_gh, pre and need_gw,
                                                      pre and need_gb))
    return out, hidden.new_empty(N), gh, gw, gb


@torch.library.custom_op("crossentropy::linear_cross_entropy_backward", mutates_args=())
def linear_cross_entropy_backward_op(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    row_scale: Tensor,
    g_lse: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int,
    need_gh: bool,
    need_gw: bool,
    need_gb: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Recompute the gradients chunk by chunk: row i of d/dz is ``row_scale[i] * d loss_i/dz``
    plus ``g_lse[i] * d lse_i / dz``."""
    return linear_backward(
        hidden, weight, target, bias, class_weight, row_scale, g_lse, ignore_index,
        label_smoothing, z_loss, softcap, chunk_rows, (need_gh, need_gw, need_gb),
    )


def linear_backward(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    row_scale: Tensor,
    g_lse: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int,
    need: tuple[bool, bool, bool],
) -> tuple[Tensor, Tensor, Tensor]:
    """Body of the linear backward operator (also the torch-only path for other devices)."""
    cw = None if class_weight is None else class_weight.detach().to(torch.float64)
    with torch.no_grad():
        _, _, gh, gw, gb = linear_chunks(
            hidden.detach(), weight.detach(), target,
            None if bias is None else bias.detach(), cw, ignore_index, label_smoothing,
            z_loss, softcap, chunk_rows, grad_scale=1.0, row_scale=row_scale.detach(),
            g_lse=None if g_lse is None else g_lse.detach(), need_gh=need[0],
            need_gw=need[1], need_gb=need[2] and bias is not None,
            rows_fn=_rows_for(hidden.device),
        )
    e_h, e_w, e_b = _empty_grads(hidden, weight, bias, (False, False, False))
    return (
        e_h if gh is None else gh.to(hidden.dtype),
        e_w if gw is None else gw.to(weight.dtype),
        e_b if gb is None or bias is None else gb.to(bias.dtype),
    )


@linear_cross_entropy_backward_op.register_fake
def _(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None,
    class_weight: Tensor | None,
    row_scale: Tensor,
    g_lse: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    chunk_rows: int,
    need_gh: bool,
    need_gw: bool,
    need_gb: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _empty_grads(hidden, weight, bias, (need_gh, need_gw, need_gb))


def _linear_setup(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    (hidden, weight, target, bias, class_weight, ignore_index, eps, z_loss, softcap, scale,
     reduction, chunk_rows, need_gh, need_gw, need_gb) = inputs
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(*output[2:])
    ctx.save_for_backward(hidden, weight, target, bias, class_weight, *output[2:])
    ctx.opts = (ignore_index, eps, z_loss, softcap, scale, reduction, chunk_rows,
                (need_gh, need_gw, need_gb and bias is not None))


def _linear_backward(
    ctx: Any, g_out: Tensor | None, g_lse: Tensor | None, *unused: Tensor | None
) -> tuple[Tensor | None, ...]:
    hidden, weight, target, bias, cw, gh, gw, gb = ctx.saved_tensors
    ignore_index, eps, z_loss, softcap, scale, reduction, chunk_rows, need = ctx.opts
    if torch.is_grad_enabled() and not torch.compiler.is_compiling():
        raise RuntimeError(
            "crossentropy.torch.linear_cross_entropy does not support second derivatives "
            "(backward with create_graph=True); use cross_entropy(hidden @ weight.T, ...) "
            "for those"
        )
    tail = (None,) * 12
    if g_out is None and g_lse is None:
        return (None, None, None, *tail)
    if reduction != 0 and g_lse is None and g_out is not None:
        # gradients were computed in the forward pass: only scale them
        return (
            _scale_rows(gh, g_out) if need[0] else None,
            _scale_rows(gw, g_out) if need[1] else None,
            None,
            _scale_rows(gb, g_out) if need[2] else None,
            *tail[:-1],
        )
    # recompute chunk by chunk with a factor per row
    N = hidden.shape[0]
    if g_out is None:
        row = torch.zeros(N, dtype=torch.float64, device=hidden.device)
    elif reduction == 0:
        row = g_out.to(torch.float64) * scale
    else:
        wsum = _counted_weight(target, cw, ignore_index) if reduction == 2 else 1.0
        row = (g_out.to(torch.float64) * _grad_scale(reduction, scale, wsum)).expand(N)
    rgh, rgw, rgb = linear_cross_entropy_backward_op(
        hidden, weight, target, bias, cw, row.contiguous(), g_lse, ignore_index, eps,
        z_loss, softcap, chunk_rows, *need,
    )
    return (
        rgh if need[0] else None,
        rgw if need[1] else None,
        None,
        rgb if need[2] else None,
        *tail[:-1],
    )


linear_cross_entropy_op.register_autograd(_linear_backward, setup_context=_linear_setup)
