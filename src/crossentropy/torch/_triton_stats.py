r"""Token statistics on the fused Triton kernels (the host side of ``impl="triton"`` for
:func:`crossentropy.torch.linear_token_stats`, :func:`crossentropy.torch.token_stats` and
the per-token outputs of :func:`crossentropy.torch.linear_cross_entropy`).

Forward: the fused linear kernel (``crossentropy/triton/_kernels.py``: ``lce_fwd_kernel``)
folds each on-chip tile of ``z' = softcap(h W^T + b) / tau`` into the row statistics
(``m``, ``rest``, argmax, ``z'_y``, with ``HAS_ENT`` the entropy's sum
``ent = sum_c e^{z'_c - m}(m - z'_c)``) of a few vocabulary ranges; they are merged by the
one merge rule (:func:`~._rowstats.merge_stacked`) and finished by the token-statistics
engine's own :func:`~._tokenstats.row_outputs` (the loss, ``log p_y``, ``H``) in float64.

Backward: the per-row coefficients of :func:`~._tokenstats.row_coefficients` (the one place
that knows how the outputs' incoming gradients combine) go to the fused backward kernels as

.. math::

    \frac{\partial}{\partial z'_c} = c_P\, p_c - c_T [c = y] - c_A\, a_c
        + c_H\, p_c (z'_c - m), \qquad
    c_P = A,\; c_T = g_\ell a_y - g_{lp},\; c_A = g_\ell,\; c_H = -g_H

(``a_c = (eps / V) w_c``; at the argmax the kernel writes ``(c_K - b_k\, rest) / (1 + rest)``
with ``c_K = A - b_k`` summed from its own terms), times ``sech^2(z / cap) / tau``; the
logits' gradient exists one vocabulary chunk at a time (the chunk from the call's byte
budget).  Per-element arithmetic is float32 (the kernels'), the statistics float64.
From a logits tensor the same two kernels read the logits a tile at a time
(``FROM_LOGITS``) and the backward writes the logits' whole gradient once.

Not on the kernels (the engine of :mod:`._tokenstats` runs them): float64 inputs, the top-k.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from crossentropy.torch import _tokenstats as ts

__all__ = ["reason", "run", "run_rows"]

_F64 = torch.float64


def reason(kind: str, x: Tensor, want: ts.Want) -> str | None:
    """None when the kernels take this call, else why not."""
    from crossentropy.triton import _available

    if not _available.is_available():
        return ("Triton is not installed, or there is no CUDA device and TRITON_INTERPRET=1 "
                "is not set")
    why: str | None = _available.supports(x)
    if why is not None:
        return why
    if want.top_k:
        return "top_k has no Triton kernel (the selection runs on torch's operations)"
    return None


def run_rows(kind: str, a: Tensor, Wm: Tensor | None, b: Tensor | None, t: Tensor | None,
             setup: ts.Setup, impl: str, name: str) -> ts.Outputs:
    """The per-row outputs on the implementation `impl` (checked) asks for: ``"auto"`` the
    fused kernels for CUDA tensors where they take the call, else the blocks of
    :mod:`._tokenstats` (as ``"torch"`` and ``"cpu"``); ``"triton"`` the kernels or
    :class:`~crossentropy.triton.TritonUnavailable` saying why not."""
    if impl == "triton" or (impl == "auto" and a.device.type == "cuda"):
        why = reason(kind, a, setup.want)
        if why is None:
            return run(a, Wm, b, t, setup)
        if impl == "triton":
            from crossentropy.triton._available import TritonUnavailable

            raise TritonUnavailable(f"crossentropy.torch.{name}(impl='triton'): {why}")
    return ts.run(kind, a, Wm, b, t, setup)


def _kernel_target(tg: Any, target: Tensor | None, n: int, dev: torch.device) -> Tensor:
    """The targets the kernels read: the class where it counts, -1 (no column) elsewhere."""
    if target is None:
        return torch.full((n,), -1, dtype=torch.int64, device=dev)
    return torch.where(tg.counted, tg.safe, torch.full_like(tg.safe, -1)).contiguous()


class _Stats(torch.autograd.Function):
    """Hidden states ``h``, embedding ``W`` and bias ``b`` (``W`` None: ``h`` holds the
    logits ``[N, V]``) in, the per-row outputs out."""

    @staticmethod
    def forward(ctx: Any, st: ts.Setup, h: Tensor, W: Tensor | None, b: Tensor | None,
                target: Tensor | None) -> tuple[Tensor, ...]:
        N, dev = h.shape[0], h.device
        V = h.shape[1] if W is None else W.shape[0]
        tg = ts.targets(target, 0, N, V, st, dev)
        kt = _kernel_target(tg, target, N, dev)
        from crossentropy.torch._triton import _row_stats
        from crossentropy.triton import _launch

        cw = None if st.class_weight is None else st.class_weight.to(torch.float32)
        want = st.want
        if W is None:
            ks = _launch.logits_stats_forward(h, kt, cw, st.opts, temperature=st.temperature,
                                              entropy=want.entropy)
        else:
            ks = _launch.lce_forward(h, W, b, kt, cw, st.opts, temperature=st.temperature,
                                     entropy=want.entropy)
        stats, z_y = _row_stats(ks)
        # the kernels report z'_y itself: its gap to the whole row's maximum, in float64
        # (float32 values subtract exactly enough), on the rows that have a target
        zero = torch.zeros_like(stats.m)
        whole = dataclasses.replace(
            stats, zy=torch.where(tg.counted, stats.m - z_y.to(_F64), zero), has_y=tg.counted)
        loss, lse, lp, H = ts.row_outputs(whole, tg, st)
        assert stats.argmax is not None
        pred = stats.argmax.to(torch.int64)
        ctx.st = st
        ctx.save_for_backward(h, W, b, target, stats.m, stats.rest, lse,
                              stats.ent if want.entropy else None, stats.argmax)
        ctx.set_materialize_grads(False)
        empty = torch.empty(0, dtype=_F64, device=dev)
        ctx.mark_non_differentiable(pred)
        return (loss, lse, empty if lp is None else lp, empty if H is None else H,
                pred if want.predicted else torch.empty(0, dtype=torch.int64, device=dev))

    @staticmethod
    def backward(ctx: Any, g_loss: Tensor | None, g_lse: Tensor | None,
                 g_lp: Tensor | None, g_H: Tensor | None, _g_pred: Any
                 ) -> tuple[Tensor | None, ...]:
        h, W, b, target, m, rest, lse, ent, argmax = ctx.saved_tensors
        st: ts.Setup = ctx.st
        N, dev = h.shape[0], h.device
        V = h.shape[1] if W is None else W.shape[0]
        from crossentropy.torch._triton import _kernel_stats
        from crossentropy.triton import _launch

        need = ctx.needs_input_grad
        if not (need[1] or need[2] or need[3]):
            return None, None, None, None, None

        def given(x: Tensor | None) -> Tensor | None:
            return None if x is None or x.numel() == 0 else x.to(_F64)

        gl, gs, gp, gH = given(g_loss), given(g_lse), given(g_lp), given(g_H)
        tg = ts.targets(target, 0, N, V, st, dev)
        r = ts.RowGrads(m, rest, lse, None if ent is None or gH is None else ent / (1.0 + rest),
                        gl, gs, gp, gH, None, None)
        kg = argmax.to(torch.int64).clamp(0, max(V - 1, 0))
        cw = st.class_weight
        eps = st.opts.label_smoothing
        A, A_minus, _ = ts.row_coefficients(
            r, tg, kg, st, eps / V, None if cw is None else cw[kg],
            float(V) if cw is None else cw.sum())
        zero = torch.zeros_like(m)
        # the one-hot part at the target (b_y) and the soft part's coefficient, counted rows
        b_y = zero if gl is None else gl * ((1.0 - eps) * tg.weight)
        if gp is not None:
            b_y = b_y - gp
        b_y = torch.where(tg.counted, b_y, zero)
        c_a = torch.where(tg.counted, gl, zero) if gl is not None else zero
        f32 = torch.float32

        def c(x: Tensor) -> Tensor:
            return x.to(f32).contiguous()

        cwk = None if cw is None else cw.to(f32)
        kt, ks = _kernel_target(tg, target, N, dev), _kernel_stats(m, rest, argmax, zero)
        c_h = None if gH is None else c(-gH)
        if W is None:
            gx = _launch.logits_stats_backward(
                h, kt, cwk, ks, c(A), c(b_y), c(c_a), c(A_minus), st.opts, coef_h=c_h,
                temperature=st.temperature)
            return None, gx, None, None, None
        dh, dW, db = _launch.lce_backward(
            h, W, b, kt, cwk, ks, c(A), c(b_y), c(c_a), c(A_minus), st.opts,
            need_hidden=need[1], need_weight=need[2], need_bias=b is not None and need[3],
            coef_h=c_h, temperature=st.temperature, grad_chunk_bytes=st.plan.budget_bytes)
        return (None,
                dh.to(h.dtype) if dh is not None and need[1] else None,
                dW if need[2] else None,
                db.to(b.dtype) if db is not None and b is not None and need[3] else None,
                None)


def run(h: Tensor, W: Tensor | None, b: Tensor | None, target: Tensor | None, st: ts.Setup
        ) -> ts.Outputs:
    """The per-row outputs (float64; loss, lse, logprobs, entropy differentiable) of the
    logits ``h W^T + b`` (``W`` None: of the logits ``h``) on the fused kernels (rows made
    contiguous)."""
    def rows(t: Tensor) -> Tensor:
        return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()

    loss, lse, lp, H, pred = _Stats.apply(  # type: ignore[no-untyped-call]
        st, rows(h), None if W is None else rows(W), None if b is None else b.contiguous(),
        target)
    want = st.want
    return ts.Outputs(loss, lse, lp if want.logprobs else None,
                      H if want.entropy else None, None, None,
                      pred if want.predicted else None)
