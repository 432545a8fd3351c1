"""GPU benchmark of crossentropy.triton against PyTorch, torch.compile, Liger and CCE.

One command, meant for one H100 and under 8 minutes::

    python bench/gpu.py --out bench/results/gpu.csv

It first checks correctness at full size (ours against a float32 chunked reference, judged
against torch eager's own bfloat16 error, and with ``torch.cuda.set_sync_debug_mode("error")``
to prove there is no host synchronisation), then times forward, forward+backward (backward
= their difference) and peak memory beyond the inputs for every available implementation:

* ``gemma2``: N=8192, D=2304, V=256000, bf16 (the shape of the Cut Cross-Entropy paper),
  and ``gemma2-softcap30``;
* ``llama3``: N=8192, D=4096, V=128256, bf16;
* ``ce``: cross-entropy alone over [8192, 128256] bf16 logits.

Columns: milliseconds; ``tflops`` = 6 N D V / (forward+backward time) for the linear cases;
for ``ce``, ``gbps_min`` = (read logits + write gradient = 2 N V bytes-per-element) /
(forward+backward time) and, for ours, ``gbps_kernel`` = the bytes the forward kernel
really moves (two reads of the logits and one write of the gradient) / forward time.
Liger-Kernel and cut-cross-entropy are imported when installed (``--wheels DIR`` installs
wheels from DIR with ``pip --no-deps`` first) and skipped with a note otherwise.

``--dry-run`` works without a GPU: it prints the plan and which peers import, then exits.
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
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CASES: dict[str, dict[str, Any]] = {
    "gemma2": {"N": 8192, "D": 2304, "V": 256000, "softcap": None},
    "gemma2-softcap30": {"N": 8192, "D": 2304, "V": 256000, "softcap": 30.0},
    "llama3": {"N": 8192, "D": 4096, "V": 128256, "softcap": None},
    "ce": {"N": 8192, "D": 0, "V": 128256, "softcap": None},
}
LINEAR_IMPLS = ["ours", "torch-eager", "torch-compile", "torch-lce", "liger", "cce"]
CE_IMPLS = ["ours", "ours-inplace", "torch-eager", "torch-compile", "liger"]
GOALS = (
    "goals (H100): kernel 1 >= 85% of HBM bandwidth; fused linear CE at gemma2 <= 50 ms "
    "forward+backward with <= 1.5 GB peak memory beyond the inputs"
)
TIME_LIMIT_S = 7.5 * 60


def _peers() -> dict[str, str]:
    """Version (or 'missing') of each optional peer."""
    out = {}
    for mod, dist in (("liger_kernel", "liger-kernel"), ("cut_cross_entropy", "cut-cross-entropy")):
        if importlib.util.find_spec(mod) is None:
            out[mod] = "missing"
            continue
        try:
            from importlib.metadata import version

            out[mod] = version(dist)
        except Exception:  # pragma: no cover - metadata missing
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


def _plan(args: argparse.Namespace) -> None:
    print("plan:")
    for name in args.cases:
        c = CASES[name]
        impls = CE_IMPLS if name == "ce" else LINEAR_IMPLS
        shape = f"N={c['N']} D={c['D']} V={c['V']} bf16 softcap={c['softcap']}"
        print(f"  {name}: {shape} -> {', '.join(impls)}")
    for mod, ver in _peers().items():
        print(f"  peer {mod}: {ver}")
    print("  " + GOALS)
    print("  every GPU figure: not yet measured (run this script on a GPU machine)")


# ----------------------------------------------------------------------------- timing


def _time(fn: Callable[[], Any], warmup: int, iters: int) -> float:
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) / iters


def _peak_beyond(fn: Callable[[], Any]) -> float:
    """Peak bytes allocated during one call, above what was allocated before it (MiB)."""
    import torch

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


# ----------------------------------------------------------------------------- impls


def _linear_impl(name: str, softcap: float | None) -> Callable[..., Any] | None:
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
        return torch.compile(eager)
    if name == "torch-lce":
        if softcap is not None or not hasattr(F, "linear_cross_entropy"):
            return None  # no soft-capping option
        return lambda h, W, t: F.linear_cross_entropy(h, W, t)
    if name == "liger":
        if importlib.util.find_spec("liger_kernel") is None:
            return None
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss,
        )

        mod = LigerFusedLinearCrossEntropyLoss(softcap=softcap)
        return lambda h, W, t: mod(W, h, t)
    if name == "cce":
        if importlib.util.find_spec("cut_cross_entropy") is None:
            return None
        from cut_cross_entropy import linear_cross_entropy as cce

        return lambda h, W, t: cce(h, W, t, softcap=softcap)
    raise ValueError(name)


def _ce_impl(name: str) -> Callable[..., Any] | None:
    import torch
    import torch.nn.functional as F

    if name == "ours":
        from crossentropy.triton import cross_entropy

        return lambda x, t: cross_entropy(x, t)
    if name == "ours-inplace":
        from crossentropy.triton import cross_entropy

        return lambda x, t: cross_entropy(x, t, inplace_grad=True)
    if name == "torch-eager":
        return lambda x, t: F.cross_entropy(x, t)
    if name == "torch-compile":
        return torch.compile(lambda x, t: F.cross_entropy(x, t))
    if name == "liger":
        if importlib.util.find_spec("liger_kernel") is None:
            return None
        from liger_kernel.transformers.cross_entropy import LigerCrossEntropyLoss

        mod = LigerCrossEntropyLoss()
        return lambda x, t: mod(x, t)
    raise ValueError(name)


# ----------------------------------------------------------------------------- checks


def _reference_linear(
    h: Any, W: Any, t: Any, softcap: float | None, rows: int = 512
) -> tuple[Any, Any, Any]:
    """float32 loss, grad_hidden, grad_weight, computed in row chunks (mean reduction)."""
    import torch
    import torch.nn.functional as F

    Wf = W.float().requires_grad_()
    total = torch.zeros((), device=h.device)
    gh = torch.empty(h.shape, dtype=torch.float32, device=h.device)
    count = (t != -100).sum().float()
    for i in range(0, h.shape[0], rows):
        hi = h[i : i + rows].float().requires_grad_()
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
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _check_linear(case: str, c: dict[str, Any], gen: Any) -> list[str]:
    import torch

    N, D, V, cap = c["N"], c["D"], c["V"], c["softcap"]
    h = (torch.randn(N, D, device="cuda", generator=gen) * 0.5).bfloat16()
    W = (torch.randn(V, D, device="cuda", generator=gen) * D**-0.5).bfloat16()
    t = torch.randint(0, V, (N,), device="cuda", generator=gen)
    ref_loss, ref_gh, ref_gw = _reference_linear(h, W, t, cap)
    lines = []
    errs: dict[str, tuple[float, float, float]] = {}
    for impl in ("ours", "torch-eager"):
        fn = _linear_impl(impl, cap)
        assert fn is not None
        hh, WW = h.clone().requires_grad_(), W.clone().requires_grad_()
        fn(hh, WW, t).backward()  # warm-up (autotuning synchronises)
        hh.grad = WW.grad = None
        if impl == "ours":
            torch.cuda.set_sync_debug_mode("error")  # raises on any host synchronisation
        try:
            loss = fn(hh, WW, t)
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        errs[impl] = (
            abs(float(loss) - float(ref_loss)) / abs(float(ref_loss)),
            _rel(hh.grad, ref_gh),
            _rel(WW.grad, ref_gw),
        )
        del hh, WW, loss
    ok = all(o <= e + 4e-3 for o, e in zip(errs["ours"], errs["torch-eager"], strict=True))
    lines.append(
        f"check {case}: rel. errors vs float32 reference (loss, grad_hidden, grad_weight) "
        f"ours={tuple(f'{x:.2e}' for x in errs['ours'])} "
        f"torch-eager={tuple(f'{x:.2e}' for x in errs['torch-eager'])} "
        f"no host sync: yes -> {'PASS' if ok else 'FAIL'}"
    )
    return lines


def _check_ce(c: dict[str, Any], gen: Any) -> list[str]:
    import torch
    import torch.nn.functional as F

    from crossentropy.triton import cross_entropy

    N, V = c["N"], c["V"]
    x = (torch.randn(N, V, device="cuda", generator=gen) * 2).bfloat16()
    t = torch.randint(0, V, (N,), device="cuda", generator=gen)
    t[::17] = -100
    xr = x.float().requires_grad_()
    ref = F.cross_entropy(xr, t)
    ref.backward()
    errs = {}
    for impl in ("ours", "torch-eager"):
        xx = x.clone().requires_grad_()
        if impl == "ours":
            cross_entropy(xx, t).backward()
            xx.grad = None
            torch.cuda.set_sync_debug_mode("error")
            try:
                loss = cross_entropy(xx, t)
                loss.backward()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        else:
            loss = F.cross_entropy(xx, t)
            loss.backward()
        errs[impl] = (abs(float(loss) - float(ref)) / abs(float(ref)), _rel(xx.grad, xr.grad))
    ok = all(o <= e + 4e-3 for o, e in zip(errs["ours"], errs["torch-eager"], strict=True))
    return [
        f"check ce: rel. errors vs float32 (loss, grad) ours={errs['ours']} "
        f"torch-eager={errs['torch-eager']} no host sync: yes -> {'PASS' if ok else 'FAIL'}"
    ]


# ----------------------------------------------------------------------------- main


def _show(row: dict[str, Any]) -> None:
    skip = ("case", "impl", "N", "D", "V", "softcap")
    print(f"  {row['case']:18s} {row['impl']:14s} " + " ".join(
        f"{k}={v}" for k, v in row.items() if k not in skip
    ))


def _linear_calls(fn: Any, h: Any, W: Any, t: Any) -> tuple[Callable[[], None], Callable[[], None]]:
    def fwd() -> None:
        fn(h, W, t)

    def both() -> None:
        h.grad = W.grad = None
        fn(h, W, t).backward()

    return fwd, both


def _ce_calls(
    fn: Any, x0: Any, t: Any, inplace: bool
) -> tuple[Callable[[], None], Callable[[], None], Any]:
    x = x0.clone().requires_grad_()
    if inplace:
        # the logits are overwritten: each call gets a fresh non-leaf copy
        def fwd() -> None:
            fn(x0.clone().requires_grad_() * 1, t)

        def both() -> None:
            fn(x0.clone().requires_grad_() * 1, t).backward()

        return fwd, both, x

    def fwd2() -> None:
        fn(x, t)

    def both2() -> None:
        x.grad = None
        fn(x, t).backward()

    return fwd2, both2, x


def _bench_linear(
    case: str, c: dict[str, Any], args: argparse.Namespace, gen: Any
) -> list[dict[str, Any]]:
    import torch

    N, D, V, cap = c["N"], c["D"], c["V"], c["softcap"]
    h = (torch.randn(N, D, device="cuda", generator=gen) * 0.5).bfloat16().requires_grad_()
    W = (torch.randn(V, D, device="cuda", generator=gen) * D**-0.5).bfloat16().requires_grad_()
    t = torch.randint(0, V, (N,), device="cuda", generator=gen)
    rows = []
    for impl in LINEAR_IMPLS:
        row: dict[str, Any] = {"case": case, "impl": impl, "N": N, "D": D, "V": V, "softcap": cap}
        fn = _linear_impl(impl, cap)
        if fn is None:
            row["note"] = "not available (missing package or option)"
            rows.append(row)
            _show(row)
            continue
        if time.time() - args.t0 > TIME_LIMIT_S:
            row["note"] = "skipped: time limit"
            rows.append(row)
            continue
        try:
            fwd, both = _linear_calls(fn, h, W, t)

            both()  # compile / autotune outside the timing
            f_ms = _time(fwd, args.warmup, args.iters)
            fb_ms = _time(both, args.warmup, args.iters)
            h.grad = W.grad = None
            peak = _peak_beyond(both)
            h.grad = W.grad = None
            row.update(
                fwd_ms=round(f_ms, 3),
                fwd_bwd_ms=round(fb_ms, 3),
                bwd_ms=round(fb_ms - f_ms, 3),
                tflops=round(6 * N * D * V / (fb_ms * 1e-3) / 1e12, 1),
                peak_mib_beyond_inputs=round(peak, 1),
            )
        except Exception as exc:  # OOM or a peer's failure: recorded, not fatal
            row["note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            h.grad = W.grad = None
            torch.cuda.empty_cache()
        rows.append(row)
        _show(row)
    return rows


def _bench_ce(c: dict[str, Any], args: argparse.Namespace, gen: Any) -> list[dict[str, Any]]:
    import torch

    N, V = c["N"], c["V"]
    x0 = (torch.randn(N, V, device="cuda", generator=gen) * 2).bfloat16()
    t = torch.randint(0, V, (N,), device="cuda", generator=gen)
    nbytes = x0.element_size() * N * V
    rows = []
    for impl in CE_IMPLS:
        row: dict[str, Any] = {"case": "ce", "impl": impl, "N": N, "D": 0, "V": V, "softcap": None}
        fn = _ce_impl(impl)
        if fn is None:
            row["note"] = "not available (missing package)"
            rows.append(row)
            _show(row)
            continue
        if time.time() - args.t0 > TIME_LIMIT_S:
            row["note"] = "skipped: time limit"
            rows.append(row)
            continue
        try:
            fwd, both, x = _ce_calls(fn, x0, t, impl == "ours-inplace")

            both()
            f_ms = _time(fwd, args.warmup, args.iters)
            fb_ms = _time(both, args.warmup, args.iters)
            x.grad = None
            peak = _peak_beyond(both)
            row.update(
                fwd_ms=round(f_ms, 3),
                fwd_bwd_ms=round(fb_ms, 3),
                bwd_ms=round(fb_ms - f_ms, 3),
                gbps_min=round(2 * nbytes / (fb_ms * 1e-3) / 1e9, 1),
                peak_mib_beyond_inputs=round(peak, 1),
            )
            if impl == "ours":
                # forward with grad: two reads of the logits and one write of the gradient
                row["gbps_kernel"] = round(3 * nbytes / (f_ms * 1e-3) / 1e9, 1)
            if impl == "ours-inplace":
                row["note"] = "times include one clone of the logits per call"
        except Exception as exc:
            row["note"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            torch.cuda.empty_cache()
        rows.append(row)
        _show(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--out", default="bench/results/gpu.csv", help="CSV file to write")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--iters", type=int, default=5, help="timed iterations per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--skip-check", action="store_true", help="skip the full-size correctness check")
    p.add_argument(
        "--no-autotune",
        action="store_true",
        help="use the first tile configuration of each fused kernel (saves compile/tune time)",
    )
    p.add_argument("--wheels", default=None, help="folder of peer wheels to pip-install first")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan and the peers (no GPU needed)"
    )
    args = p.parse_args(argv)
    args.t0 = time.time()
    if args.wheels:
        _install_wheels(args.wheels)
    if args.dry_run:
        _plan(args)
        return 0
    import torch
    import triton

    if not torch.cuda.is_available():
        print("no CUDA device: nothing measured (try --dry-run)")
        return 2
    gpu = torch.cuda.get_device_name()
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
    if args.no_autotune:
        from crossentropy.triton import _launch

        _launch.AUTOTUNE = False
    gen = torch.Generator(device="cuda").manual_seed(0)
    if not args.skip_check:
        for case in args.cases:
            c = CASES[case]
            lines = _check_ce(c, gen) if case == "ce" else _check_linear(case, c, gen)
            for line in lines:
                print(line)
            torch.cuda.empty_cache()
    rows: list[dict[str, Any]] = []
    for case in args.cases:
        if case == "ce":
            rows += _bench_ce(CASES[case], args, gen)
        else:
            rows += _bench_linear(case, CASES[case], args, gen)
        torch.cuda.empty_cache()
    fields = [
        *meta, "case", "impl", "N", "D", "V", "softcap", "fwd_ms", "bwd_ms", "fwd_bwd_ms",
        "tflops", "gbps_min", "gbps_kernel", "peak_mib_beyond_inputs", "note",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({**meta, **r})
    print(f"wrote {out} ({len(rows)} rows) in {time.time() - args.t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
