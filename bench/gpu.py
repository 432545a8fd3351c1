"""GPU benchmark of crossentropy.triton against PyTorch, torch.compile, Liger and CCE.

One command, meant for one H100 or H200 and under 8 minutes::

    python bench/gpu.py --out bench/results/gpu.csv

1. Correctness at full size: ours against a float32 reference computed in row chunks,
   judged against torch eager's own bfloat16 error, with
   ``torch.cuda.set_sync_debug_mode("error")`` around our forward and backward (any host
   synchronisation raises).
2. Timings (CUDA events, median of ``--iters`` calls after ``--warmup``) of forward,
   forward+backward (backward = their difference) and the peak memory beyond the inputs
   of one forward+backward, for every available implementation:

   * linear cases ``gemma2`` (N=8192, D=2304, V=256000, bf16; the shape of the Cut
     Cross-Entropy paper), ``gemma2-softcap30`` and ``llama3`` (N=8192, D=4096,
     V=128256): ours, torch eager (bf16 logits, float32 loss), torch.compile of it,
     ``F.linear_cross_entropy`` (where torch has it), Liger-Kernel and Cut Cross-Entropy
     (imported when installed; ``--wheels DIR`` pip-installs wheels from DIR first;
     skipped with a note otherwise);
   * ``ce``: cross-entropy alone over [8192, 128256] bf16 logits: ours, ours in place,
     torch eager, torch.compile, Liger;
   * ``grpo-stats``: a GRPO step's per-token statistics at the llama3 shape (log p of the
     targets and the entropy at temperature 0.7, forward and backward of their sum): ours
     (``linear_token_stats(impl="triton")``), torch eager (bf16 logits, float32
     ``log_softmax``), torch.compile of it.
3. The floors, timed in the same run: ``gemm-floor`` = the three bf16 GEMMs of a linear
   cross-entropy (``h W^T``, ``G W``, ``G^T h``, torch.mm / cuBLAS, each timed) and
   ``copy`` = a device-to-device copy of the logits (the bandwidth a memory-bound kernel
   can reach).  The figures are the ratios: ``ratio_to_floor`` = time / gemm-floor time
   (forward: 1 GEMM, backward: 2, both: 3) for the linear cases; for ``ce``,
   ``frac_of_copy_bw`` = (bytes the loss must move: read logits, write gradient) / time,
   over the copy's bandwidth.

CSV columns: machine and versions, case, impl, shape, ``fwd_ms``, ``bwd_ms``,
``fwd_bwd_ms``, the ratios, ``peak_mib_beyond_inputs``, ``note``.

``--dry-run`` needs no GPU: the same code at tiny shapes on the CPU with the kernels in the
Triton interpreter (``TRITON_INTERPRET=1`` is set), checks included; it times nothing and
writes "not measured" in every figure's place.  ``--compile-only`` compiles every kernel for
sm_90 (H100/H200) without a GPU and prints what ptxas says about registers and spills.
No number is printed or written unless it was measured on this run.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import glob
import importlib
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, dict[str, Any]] = {
    "gemma2": {"N": 8192, "D": 2304, "V": 256000, "softcap": None},
    "gemma2-softcap30": {"N": 8192, "D": 2304, "V": 256000, "softcap": 30.0},
    "llama3": {"N": 8192, "D": 4096, "V": 128256, "softcap": None},
    "ce": {"N": 8192, "D": 0, "V": 128256, "softcap": None},
    # a GRPO step's statistics: log p of the sampled tokens and the entropy at temperature
    # 0.7, forward and backward of their sum
    "grpo-stats": {"N": 8192, "D": 4096, "V": 128256, "softcap": None, "stats": 0.7},
}
#: the same cases at interpreter size (shapes that are not multiples of any block)
DRY_CASES: dict[str, dict[str, Any]] = {
    "gemma2": {"N": 19, "D": 24, "V": 70, "softcap": None},
    "gemma2-softcap30": {"N": 19, "D": 24, "V": 70, "softcap": 30.0},
    "llama3": {"N": 11, "D": 20, "V": 45, "softcap": None},
    "ce": {"N": 7, "D": 0, "V": 90, "softcap": None},
    "grpo-stats": {"N": 9, "D": 12, "V": 41, "softcap": None, "stats": 0.7},
}
LINEAR_IMPLS = ["ours", "torch-eager", "torch-compile", "torch-lce", "liger", "cce"]
CE_IMPLS = ["ours", "ours-inplace", "torch-eager", "torch-compile", "liger"]
STATS_IMPLS = ["ours", "torch-eager", "torch-compile"]
GOALS = (
    "goals: ce kernel >= 85% of the copy bandwidth; fused linear CE forward+backward "
    "<= 1.25x its GEMM floor (the design's bound is 4/3, docs/gpu.md) and faster than every "
    "peer, at <= 1.5 GB beyond the inputs"
)
TIME_LIMIT_S = 7.5 * 60
NOT_MEASURED = "not measured"
FIELDS = [
    "gpu", "torch", "triton", "liger_kernel", "cut_cross_entropy", "python", "date",
    "case", "impl", "N", "D", "V", "softcap", "fwd_ms", "bwd_ms", "fwd_bwd_ms",
    "ratio_to_floor", "frac_of_copy_bw", "peak_mib_beyond_inputs", "note",
]


def _peers() -> dict[str, str]:
    """Version (or 'missing') of each optional peer."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for mod, dist in (("liger_kernel", "liger-kernel"), ("cut_cross_entropy", "cut-cross-entropy")):
        if importlib.util.find_spec(mod) is None:
            out[mod] = "missing"
            continue
        try:
            out[mod] = version(dist)
        except PackageNotFoundError:  # pragma: no cover - metadata missing
            out[mod] = "unknown"
    return out


def _install_wheels(folder: str) -> None:
    wheels = sorted(glob.glob(os.path.join(folder, "*.whl")))
    if not wheels:
        print(f"note: no wheels in {folder}")
        return
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", *wheels]
    print("installing:", " ".join(os.path.basename(w) for w in wheels))
    subprocess.run(cmd, check=False)
    importlib.invalidate_caches()


# ----------------------------------------------------------------------------- timing


class Clock:
    """CUDA-event timing on a GPU; on a dry run, calls once and measures nothing."""

    def __init__(self, dry: bool, warmup: int, iters: int) -> None:
        self.dry, self.warmup, self.iters = dry, warmup, iters

    def ms(self, fn: Callable[[], Any]) -> float | None:
        """Median milliseconds of one call (None on a dry run)."""
        if self.dry:
            fn()
            return None
        import torch

        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.iters):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(float(start.elapsed_time(end)))
        return statistics.median(times)

    def peak_mib(self, fn: Callable[[], Any]) -> float | None:
        """Peak MiB allocated during one call above what was allocated before it."""
        if self.dry:
            fn()
            return None
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20


def _fmt(x: float | None, nd: int = 3) -> Any:
    return NOT_MEASURED if x is None else round(x, nd)


# ----------------------------------------------------------------------------- impls


def _linear_impl(name: str, softcap: float | None, dry: bool) -> Callable[..., Any] | str:
    """The callable ``(h, W, t) -> loss`` of an implementation, or why it is skipped."""
    import torch
    import torch.nn.functional as F

    def eager(h: Any, W: Any, t: Any) -> Any:
        logits = F.linear(h, W).float()  # the usual recipe: bf16 matmul, float32 loss
        if softcap is not None:
            logits = softcap * torch.tanh(logits / softcap)
        return F.cross_entropy(logits, t)

    if name == "ours":
        from crossentropy.triton import linear_cross_entropy

        return lambda h, W, t: linear_cross_entropy(h, W, t, softcap=softcap)
    if name == "torch-eager":
        return eager
    if name == "torch-compile":
        if dry:
            return "skipped in a dry run (inductor compiles for minutes on a CPU)"
        return torch.compile(eager)
    if name == "torch-lce":
        if not hasattr(F, "linear_cross_entropy"):
            return "torch has no F.linear_cross_entropy"
        if softcap is not None:
            return "F.linear_cross_entropy has no soft-capping option"
        return lambda h, W, t: F.linear_cross_entropy(h, W, t)
    if name == "liger":
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger-kernel not installed"
        if dry:
            return "skipped in a dry run (GPU only)"
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss,
        )

        mod = LigerFusedLinearCrossEntropyLoss(softcap=softcap)
        return lambda h, W, t: mod(W, h, t)
    if name == "cce":
        if importlib.util.find_spec("cut_cross_entropy") is None:
            return "cut-cross-entropy not installed"
        if dry:
            return "skipped in a dry run (GPU only)"
        from cut_cross_entropy import linear_cross_entropy as cce

        return lambda h, W, t: cce(h, W, t, softcap=softcap)
    raise ValueError(name)


def _stats_impl(name: str, tau: float, dry: bool) -> Callable[..., Any] | str:
    """``(h, W, t) -> sum(log p_t) + sum(H)`` at temperature `tau` (a GRPO step's per-token
    statistics), or why it is skipped."""
    import torch

    def eager(h: Any, W: Any, t: Any) -> Any:
        logp = torch.log_softmax(torch.nn.functional.linear(h, W).float() / tau, dim=-1)
        lp = logp.gather(1, t[:, None])[:, 0]
        return lp.sum() - (logp.exp() * logp).sum()

    if name == "ours":
        from crossentropy.torch import linear_token_stats

        def ours(h: Any, W: Any, t: Any) -> Any:
            o = linear_token_stats(h, W, t, return_loss=False, return_logprobs=True,
                                   return_entropy=True, temperature=tau, impl="triton")
            return o.logprobs.sum() + o.entropy.sum()

        return ours
    if name == "torch-eager":
        return eager
    if name == "torch-compile":
        if dry:
            return "skipped in a dry run (inductor compiles for minutes on a CPU)"
        return torch.compile(eager)
    raise ValueError(name)


def _ce_impl(name: str, dry: bool) -> Callable[..., Any] | str:
    import torch
    import torch.nn.functional as F

    if name in ("ours", "ours-inplace"):
        from crossentropy.triton import cross_entropy

        inplace = name == "ours-inplace"
        return lambda x, t: cross_entropy(x, t, inplace_grad=inplace)
    if name == "torch-eager":
        return lambda x, t: F.cross_entropy(x, t)
    if name == "torch-compile":
        if dry:
            return "skipped in a dry run (inductor compiles for minutes on a CPU)"
        return torch.compile(lambda x, t: F.cross_entropy(x, t))
    if name == "liger":
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger-kernel not installed"
        if dry:
            return "skipped in a dry run (GPU only)"
        from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss

        mod = LigerCrossEntropyLoss()
        return lambda x, t: mod(x, t)
    raise ValueError(name)


# ----------------------------------------------------------------------------- checks


class _NoSync:
    """``torch.cuda.set_sync_debug_mode("error")`` inside the block (GPU only)."""

    def __init__(self, on: bool) -> None:
        self.on = on

    def __enter__(self) -> None:
        if self.on:
            import torch

            torch.cuda.set_sync_debug_mode("error")  # raises on any host synchronisation

    def __exit__(self, *exc: object) -> None:
        if self.on:
            import torch

            torch.cuda.set_sync_debug_mode("default")


def _reference_linear(
    h: Any, W: Any, t: Any, softcap: float | None, dtype: Any, rows: int = 512
) -> tuple[Any, Any, Any]:
    """Loss, grad_hidden, grad_weight in `dtype` (float32 on a GPU, float64 on a dry run),
    computed in row chunks (mean reduction)."""
    import torch
    import torch.nn.functional as F

    Wf = W.to(dtype).requires_grad_()
    total = torch.zeros((), device=h.device, dtype=dtype)
    gh = torch.empty(h.shape, dtype=dtype, device=h.device)
    count = (t != -100).sum().to(dtype)
    for i in range(0, h.shape[0], rows):
        hi = h[i : i + rows].to(dtype).requires_grad_()
        z = hi @ Wf.T
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        part = F.cross_entropy(z, t[i : i + rows], reduction="sum") / count
        part.backward()
        total += part.detach()
        assert hi.grad is not None
        gh[i : i + rows] = hi.grad
    return total, gh, Wf.grad


def _rel(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _verdict(errs: dict[str, tuple[float, ...]], tol: float) -> str:
    ok = all(o <= e + tol for o, e in zip(errs["ours"], errs["torch-eager"], strict=True))
    return "PASS" if ok else "FAIL"


def _check_linear(case: str, c: dict[str, Any], dev: str, gen: Any, dry: bool) -> str:
    import torch

    N, D, V, cap = c["N"], c["D"], c["V"], c["softcap"]
    h = (torch.randn(N, D, device=dev, generator=gen) * 0.5).bfloat16()
    W = (torch.randn(V, D, device=dev, generator=gen) * D**-0.5).bfloat16()
    t = torch.randint(0, V, (N,), device=dev, generator=gen)
    ref_loss, ref_gh, ref_gw = _reference_linear(
        h, W, t, cap, torch.float64 if dry else torch.float32
    )
    errs: dict[str, tuple[float, ...]] = {}
    for impl in ("ours", "torch-eager"):
        fn = _linear_impl(impl, cap, dry)
        assert callable(fn)
        hh, WW = h.clone().requires_grad_(), W.clone().requires_grad_()
        fn(hh, WW, t).backward()  # warm-up (autotuning synchronises)
        hh.grad = WW.grad = None
        with _NoSync(impl == "ours" and not dry):
            loss = fn(hh, WW, t)
            loss.backward()
        errs[impl] = (
            abs(float(loss.detach()) - float(ref_loss)) / abs(float(ref_loss)),
            _rel(hh.grad, ref_gh),
            _rel(WW.grad, ref_gw),
        )
    sync = "no host sync: checked" if not dry else "host sync: not checked (CPU)"
    return (
        f"check {case}: rel. errors (loss, grad_hidden, grad_weight) "
        f"ours={tuple(f'{x:.2e}' for x in errs['ours'])} "
        f"torch-eager={tuple(f'{x:.2e}' for x in errs['torch-eager'])} {sync} "
        f"-> {_verdict(errs, 4e-3)}"
    )


def _check_stats(case: str, c: dict[str, Any], dev: str, gen: Any, dry: bool) -> str:
    """Our statistics' objective and its gradients against the float32 (float64 on a dry
    run) computation in row chunks, next to torch eager's bf16-logits error."""
    import torch

    N, D, V, tau = c["N"], c["D"], c["V"], c["stats"]
    h = (torch.randn(N, D, device=dev, generator=gen) * 0.5).bfloat16()
    W = (torch.randn(V, D, device=dev, generator=gen) * D**-0.5).bfloat16()
    t = torch.randint(0, V, (N,), device=dev, generator=gen)
    dt = torch.float64 if dry else torch.float32
    Wf = W.to(dt).requires_grad_()
    gh = torch.empty(h.shape, dtype=dt, device=dev)
    total = 0.0
    for i in range(0, N, 512):
        hi = h[i : i + 512].to(dt).requires_grad_()
        logp = torch.log_softmax((hi @ Wf.T) / tau, dim=-1)
        part = logp.gather(1, t[i : i + 512, None]).sum() - (logp.exp() * logp).sum()
        part.backward()
        total += float(part.detach())
        assert hi.grad is not None
        gh[i : i + 512] = hi.grad
    errs: dict[str, tuple[float, ...]] = {}
    for impl in ("ours", "torch-eager"):
        fn = _stats_impl(impl, tau, dry)
        assert callable(fn)
        hh, WW = h.clone().requires_grad_(), W.clone().requires_grad_()
        out = fn(hh, WW, t)
        out.backward()
        errs[impl] = (abs(float(out.detach()) - total) / abs(total), _rel(hh.grad, gh),
                      _rel(WW.grad, Wf.grad))
    return (
        f"check {case}: rel. errors (sum log p + sum H, grad_hidden, grad_weight) "
        f"ours={tuple(f'{x:.2e}' for x in errs['ours'])} "
        f"torch-eager={tuple(f'{x:.2e}' for x in errs['torch-eager'])} "
        f"(one host sync: the targets' range check) -> {_verdict(errs, 4e-3)}"
    )


def _check_ce(c: dict[str, Any], dev: str, gen: Any, dry: bool) -> str:
    import torch
    import torch.nn.functional as F

    from crossentropy.triton import cross_entropy

    N, V = c["N"], c["V"]
    x = (torch.randn(N, V, device=dev, generator=gen) * 2).bfloat16()
    t = torch.randint(0, V, (N,), device=dev, generator=gen)
    t[::17] = -100
    xr = x.double().requires_grad_() if dry else x.float().requires_grad_()
    ref = F.cross_entropy(xr, t)
    ref.backward()
    errs: dict[str, tuple[float, ...]] = {}
    for impl in ("ours", "torch-eager"):
        xx = x.clone().requires_grad_()
        if impl == "ours":
            cross_entropy(xx, t).backward()
            xx.grad = None
            with _NoSync(not dry):
                loss = cross_entropy(xx, t)
                loss.backward()
        else:
            loss = F.cross_entropy(xx, t)
            loss.backward()
        errs[impl] = (
            abs(float(loss.detach()) - float(ref.detach())) / abs(float(ref.detach())),
            _rel(xx.grad, xr.grad),
        )
    return (
        f"check ce: rel. errors (loss, grad) ours={tuple(f'{x:.2e}' for x in errs['ours'])} "
        f"torch-eager={tuple(f'{x:.2e}' for x in errs['torch-eager'])} -> {_verdict(errs, 4e-3)}"
    )


# ----------------------------------------------------------------------------- benches


def _row(case: str, impl: str, c: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"case": case, "impl": impl, "N": c["N"], "D": c["D"], "V": c["V"],
            "softcap": c["softcap"], **kw}


def _show(row: dict[str, Any]) -> None:
    skip = ("case", "impl", "N", "D", "V", "softcap")
    print(f"  {row['case']:18s} {row['impl']:14s} " + " ".join(
        f"{k}={v}" for k, v in row.items() if k not in skip
    ))


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _gemm_floor(case: str, c: dict[str, Any], dev: str, clock: Clock, gen: Any
                ) -> tuple[dict[str, Any], tuple[float | None, float | None]]:
    """The three bf16 GEMMs of a linear cross-entropy, each timed: (fwd, bwd) floors."""
    import torch

    N, D, V = c["N"], c["D"], c["V"]
    h = torch.randn(N, D, device=dev, generator=gen).bfloat16()
    W = torch.randn(V, D, device=dev, generator=gen).bfloat16()
    G = torch.randn(N, V, device=dev, generator=gen).bfloat16()
    t_z = clock.ms(lambda: h @ W.T)  # logits [N, V]
    t_dh = clock.ms(lambda: G @ W)  # grad_hidden [N, D]
    t_dw = clock.ms(lambda: G.T @ h)  # grad_weight [V, D]
    fwd = t_z
    bwd = None if t_dh is None or t_dw is None else t_dh + t_dw
    both = None if fwd is None or bwd is None else fwd + bwd
    row = _row(case, "gemm-floor", c, fwd_ms=_fmt(fwd), bwd_ms=_fmt(bwd), fwd_bwd_ms=_fmt(both),
               ratio_to_floor=_fmt(1.0 if both is not None else None),
               note=f"h@W^T {_fmt(t_z)} ms, G@W {_fmt(t_dh)} ms, G^T@h {_fmt(t_dw)} ms "
                    "(torch.mm, bf16)")
    return row, (fwd, bwd)


def _bench_linear(case: str, c: dict[str, Any], dev: str, clock: Clock, gen: Any,
                  t0: float) -> list[dict[str, Any]]:
    import torch

    dry = clock.dry
    floor_row, (f_floor, b_floor) = _gemm_floor(case, c, dev, clock, gen)
    rows = [floor_row]
    _show(floor_row)
    both_floor = None if f_floor is None or b_floor is None else f_floor + b_floor
    N, D, V, cap = c["N"], c["D"], c["V"], c["softcap"]
    h = (torch.randn(N, D, device=dev, generator=gen) * 0.5).bfloat16().requires_grad_()
    W = (torch.randn(V, D, device=dev, generator=gen) * D**-0.5).bfloat16().requires_grad_()
    t = torch.randint(0, V, (N,), device=dev, generator=gen)
    tau = c.get("stats")
    for impl in (LINEAR_IMPLS if tau is None else STATS_IMPLS):
        fn = _linear_impl(impl, cap, dry) if tau is None else _stats_impl(impl, tau, dry)
        if isinstance(fn, str):
            row = _row(case, impl, c, note=f"skipped: {fn}")
        elif time.time() - t0 > TIME_LIMIT_S:
            row = _row(case, impl, c, note="skipped: time limit")
        else:
            try:
                def fwd(f: Any = fn) -> None:
                    f(h, W, t)

                def both(f: Any = fn) -> None:
                    h.grad = W.grad = None
                    f(h, W, t).backward()

                both()  # compile / autotune outside the timing
                f_ms = clock.ms(fwd)
                fb_ms = clock.ms(both)
                h.grad = W.grad = None
                peak = clock.peak_mib(both)
                h.grad = W.grad = None
                b_ms = None if f_ms is None or fb_ms is None else fb_ms - f_ms
                row = _row(
                    case, impl, c, fwd_ms=_fmt(f_ms), bwd_ms=_fmt(b_ms), fwd_bwd_ms=_fmt(fb_ms),
                    ratio_to_floor=_fmt(_div(fb_ms, both_floor)),
                    peak_mib_beyond_inputs=_fmt(peak, 1),
                    note=(f"fwd/floor {_fmt(_div(f_ms, f_floor))}, "
                          f"bwd/floor {_fmt(_div(b_ms, b_floor))}"),
                )
            except Exception as exc:  # OOM or a peer's failure: recorded, not fatal
                row = _row(case, impl, c,
                           note=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                h.grad = W.grad = None
                if not dry:
                    torch.cuda.empty_cache()
        rows.append(row)
        _show(row)
    return rows


def _copy_ms(x0: Any, clock: Clock) -> float | None:
    """A device-to-device copy of the logits (its buffer is freed on return)."""
    import torch

    dst = torch.empty_like(x0)
    return clock.ms(lambda: dst.copy_(x0))


def _bench_ce(c: dict[str, Any], dev: str, clock: Clock, gen: Any,
              t0: float) -> list[dict[str, Any]]:
    import torch

    dry = clock.dry
    N, V = c["N"], c["V"]
    x0 = (torch.randn(N, V, device=dev, generator=gen) * 2).bfloat16()
    t = torch.randint(0, V, (N,), device=dev, generator=gen)
    nbytes = x0.element_size() * N * V
    copy_ms = _copy_ms(x0, clock)
    copy_bw = None if copy_ms is None else 2 * nbytes / (copy_ms * 1e-3) / 1e9
    rows = [_row("ce", "copy", c, fwd_ms=_fmt(copy_ms), frac_of_copy_bw=_fmt(
        1.0 if copy_ms is not None else None),
        note=f"device-to-device copy of the logits: {_fmt(copy_bw, 1)} GB/s (read + write)")]
    _show(rows[0])
    for impl in CE_IMPLS:
        fn = _ce_impl(impl, dry)
        if isinstance(fn, str):
            row = _row("ce", impl, c, note=f"skipped: {fn}")
        elif time.time() - t0 > TIME_LIMIT_S:
            row = _row("ce", impl, c, note="skipped: time limit")
        else:
            try:
                inplace = impl == "ours-inplace"
                x = x0.clone().requires_grad_()

                def fwd(f: Any = fn, ip: bool = inplace, xx: Any = x) -> None:
                    # in place: the logits are overwritten, each call gets a fresh non-leaf
                    f(x0.clone().requires_grad_() * 1 if ip else xx, t)

                def both(f: Any = fn, ip: bool = inplace, xx: Any = x) -> None:
                    xx.grad = None
                    f(x0.clone().requires_grad_() * 1 if ip else xx, t).backward()

                both()
                f_ms = clock.ms(fwd)
                fb_ms = clock.ms(both)
                x.grad = None
                peak = clock.peak_mib(both)
                # the least a loss+gradient must move: read the logits, write the gradient
                bw = None if fb_ms is None else 2 * nbytes / (fb_ms * 1e-3) / 1e9
                b_ms = None if f_ms is None or fb_ms is None else fb_ms - f_ms
                note = "includes one clone of the logits per call" if inplace else ""
                if impl == "ours":
                    # what our kernels move: read the logits twice, write the gradient once
                    kbw = None if fb_ms is None else 3 * nbytes / (fb_ms * 1e-3) / 1e9
                    note = f"kernel bytes (3 passes) / copy bandwidth {_fmt(_div(kbw, copy_bw))}"
                row = _row("ce", impl, c, fwd_ms=_fmt(f_ms), bwd_ms=_fmt(b_ms),
                           fwd_bwd_ms=_fmt(fb_ms), frac_of_copy_bw=_fmt(_div(bw, copy_bw)),
                           peak_mib_beyond_inputs=_fmt(peak, 1), note=note)
            except Exception as exc:
                row = _row("ce", impl, c,
                           note=f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                if not dry:
                    torch.cuda.empty_cache()
        rows.append(row)
        _show(row)
    return rows


# ----------------------------------------------------------------------------- compile


def compile_sm90(report: bool) -> int:
    """Compile every kernel (bf16, every option on, index and probability targets) for
    sm_90 without a GPU; with `report`, print ptxas's register and spill counts."""
    import re
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from crossentropy.triton import _kernels as K
    from crossentropy.triton import _launch as L

    target = GPUTarget("cuda", 90, 32)
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas = next((p for p in (bindir / "ptxas-blackwell", bindir / "ptxas") if p.exists()), None)
    if not report:
        ptxas = None

    def build(fn: Any, sig: dict[str, str], consts: dict[str, Any], warps: int,
              stages: int) -> None:
        sig = {**sig, **{k: "constexpr" for k in consts}}
        src = ASTSource(fn=fn, signature=sig, constexprs=consts)
        k = triton.compile(src, target=target, options={"num_warps": warps, "num_stages": stages})
        assert k.asm["cubin"], fn.__name__
        info = ""
        if ptxas is not None:
            with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
                f.write(k.asm["ptx"])
            res = subprocess.run([str(ptxas), "-v", "--gpu-name=sm_90a", f.name, "-o",
                                  os.devnull], capture_output=True, text=True)
            os.unlink(f.name)
            found = re.findall(r"Used \d+ registers|\d+ bytes spill stores", res.stderr)
            info = ", ".join(found)
        flags = ",".join(k for k in ("HAS_TEMP", "HAS_ENT", "FROM_LOGITS") if consts.get(k))
        print(f"compiled {fn.__name__} ({consts.get('IS_PROB', '-')}{',' + flags if flags else ''})"
              f" sm_90: {info}")

    every = {"HAS_WEIGHT": True, "HAS_SOFT": True, "HAS_SOFTCAP": True}
    dot = {"UPCAST_DOT": False, "DOT_PRECISION": "tf32"}
    stats = {"m_ptr": "*fp32", "s_ptr": "*fp64", "k_ptr": "*i32", "A_ptr": "*fp64",
             "B_ptr": "*fp64", "zy_ptr": "*fp32"}
    for prob in (False, True):
        tptr = "*bf16" if prob else "*i64"
        ce_common = {"x_ptr": "*bf16", "stride_x": "i32", "target_ptr": tptr, "stride_t": "i32",
                     "cw_ptr": "*fp32"}
        build(K.ce_fwd_kernel,
              {**ce_common, **stats, "C": "i32", "eps": "fp32", "softcap": "fp32"},
              {"BLOCK_C": 8192, "IS_PROB": prob, **every}, 16, 3)
        build(K.ce_bwd_kernel,
              {**ce_common, "m_ptr": "*fp32", "s_ptr": "*fp64", "k_ptr": "*i32",
               "A_ptr": "*fp64", "grad_ptr": "*bf16", "stride_g": "i32",
               "gscale_ptr": "*fp32", "stride_gs": "i32", "C": "i32", "ignore_index": "i32",
               "eps": "fp32", "z_loss": "fp32", "softcap": "fp32"},
              {"BLOCK_C": 8192, "IS_PROB": prob, **every, "HAS_ZLOSS": True,
               "HAS_IGNORE": True, "ROUND_BF16": False}, 16, 3)
        lin = {"h_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*fp32", "target_ptr": tptr,
               "stride_t": "i32", "cw_ptr": "*fp32"}
        # the token statistics' variants (index targets): temperature and entropy, from
        # hidden states and from a logits tensor
        off = {"HAS_TEMP": False, "HAS_ENT": False, "FROM_LOGITS": False}
        variants: list[dict[str, Any]] = [off]
        if not prob:
            variants += [{**off, "HAS_TEMP": True, "HAS_ENT": True},
                         {"HAS_TEMP": True, "HAS_ENT": True, "FROM_LOGITS": True}]
        for extra in variants:
            tail = "/logits" if extra["FROM_LOGITS"] else ""
            n, v, d, w, s = L.CONFIGS["lce_fwd_kernel" + tail][0]
            build(K.lce_fwd_kernel,
                  {**lin, **stats, "ent_ptr": "*fp64", "N": "i32", "V": "i32", "D": "i32",
                   "stride_h": "i32", "stride_w": "i32", "eps": "fp32", "softcap": "fp32",
                   "tau": "fp32"},
                  {"SPLIT": 4, "BLOCK_N": n, "BLOCK_V": v, "BLOCK_D": d, "IS_PROB": prob,
                   "HAS_BIAS": True, **every, **dot, **extra}, w, s)
            n, v, d, w, s = L.CONFIGS["lce_bwd_logits_kernel" + tail][0]
            build(K.lce_bwd_logits_kernel,
                  {**lin, "m_ptr": "*fp32", "s_ptr": "*fp32", "k_ptr": "*i32",
                   "cP_ptr": "*fp32", "cT_ptr": "*fp32", "cA_ptr": "*fp32", "cK_ptr": "*fp32",
                   "cH_ptr": "*fp32", "g_ptr": "*bf16", "N": "i32", "V": "i32", "D": "i32",
                   "v_lo": "i32", "v_hi": "i32", "stride_h": "i32", "stride_w": "i32",
                   "eps": "fp32", "softcap": "fp32", "tau": "fp32"},
                  {"BLOCK_N": n, "BLOCK_V": v, "BLOCK_D": d, "IS_PROB": prob,
                   "HAS_BIAS": True, **every, **dot, "ROUND_BF16": False, **extra}, w, s)
    n, v, d, w, s = L.CONFIGS["lce_bwd_weight_kernel"][0]
    build(K.lce_bwd_weight_kernel,
          {"g_ptr": "*bf16", "h_ptr": "*bf16", "dw_ptr": "*bf16", "db_ptr": "*fp32",
           "N": "i32", "D": "i32", "v_lo": "i32", "v_hi": "i32", "stride_h": "i32"},
          {"BLOCK_N": n, "BLOCK_V": v, "BLOCK_D": d, "HAS_DW": True, "HAS_BIAS": True, **dot,
           "ROUND_BF16": False}, w, s)
    n, v, d, w, s = L.CONFIGS["lce_bwd_hidden_kernel"][0]
    build(K.lce_bwd_hidden_kernel,
          {"g_ptr": "*bf16", "w_ptr": "*bf16", "dh_ptr": "*fp32", "N": "i32", "D": "i32",
           "v_lo": "i32", "v_hi": "i32", "stride_w": "i32"},
          {"BLOCK_N": n, "BLOCK_V": v, "BLOCK_D": d, "FIRST": False, **dot}, w, s)
    return 0


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", default=None,
                   help="CSV file to write (default bench/results/gpu.csv; a dry run: a "
                   "temporary file)")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--iters", type=int, default=5, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--skip-check", action="store_true", help="skip the full-size correctness check")
    p.add_argument(
        "--autotune",
        action="store_true",
        help="autotune the fused kernels over _launch.CONFIGS (compiles 3x more kernels: "
        "may not fit in 8 minutes); default: the first configuration of each",
    )
    p.add_argument("--wheels", default=None, help="folder of peer wheels to pip-install first")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny shapes on the CPU in the Triton interpreter; measures nothing")
    p.add_argument("--compile-only", action="store_true",
                   help="compile the kernels for sm_90 (no GPU needed) and exit")
    p.add_argument("--ptxas-report", action="store_true",
                   help="with --compile-only: registers and spills of each kernel (ptxas -v)")
    args = p.parse_args(argv)
    t0 = time.time()
    if args.compile_only:
        return compile_sm90(args.ptxas_report)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    if args.wheels:
        _install_wheels(args.wheels)
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    import triton

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: nothing measured (try --dry-run)")
        return 2
    dev = "cpu" if args.dry_run else "cuda"
    cases = DRY_CASES if args.dry_run else CASES
    gpu = (
        "none (dry run: CPU, Triton interpreter)" if args.dry_run else torch.cuda.get_device_name()
    )
    peers = _peers()
    meta = {
        "gpu": gpu,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "liger_kernel": peers["liger_kernel"],
        "cut_cross_entropy": peers["cut_cross_entropy"],
        "python": platform.python_version(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    print(" ".join(f"{k}={v}" for k, v in meta.items()))
    print(GOALS)
    from crossentropy.triton import _launch

    _launch.AUTOTUNE = bool(args.autotune)
    print(f"autotune: {_launch.AUTOTUNE} (tile configurations: {_launch.CONFIGS})")
    gen = torch.Generator(device=dev).manual_seed(0)
    clock = Clock(args.dry_run, args.warmup, args.iters)
    if not args.skip_check:
        for case in args.cases:
            c = cases[case]
            if case == "ce":
                print(_check_ce(c, dev, gen, args.dry_run))
            elif c.get("stats"):
                print(_check_stats(case, c, dev, gen, args.dry_run))
            else:
                print(_check_linear(case, c, dev, gen, args.dry_run))
            if not args.dry_run:
                torch.cuda.empty_cache()
    rows: list[dict[str, Any]] = []
    for case in args.cases:
        if case == "ce":
            rows += _bench_ce(cases[case], dev, clock, gen, t0)
        else:
            rows += _bench_linear(case, cases[case], dev, clock, gen, t0)
        if not args.dry_run:
            torch.cuda.empty_cache()
    if args.out is None:
        import tempfile

        args.out = (os.path.join(tempfile.mkdtemp(), "gpu-dry-run.csv") if args.dry_run
                    else str(ROOT / "bench" / "results" / "gpu.csv"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({**meta, **r})
    print(f"wrote {out} ({len(rows)} rows) in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
