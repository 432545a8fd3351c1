"""Typed launchers (layer 2 of 4): check shapes and strides, allocate outputs, pick blocks.

On a GPU the fused linear cross-entropy kernels are autotuned over a few Hopper-sized tile
configurations; the cross-entropy kernel uses a fixed heuristic (autotuning it would rerun
a kernel that may overwrite its own input).  Under the Triton interpreter
(``TRITON_INTERPRET=1``, CPU tensors) every kernel runs once with the small blocks in
:data:`INTERPRETER_BLOCKS`, which tests may change to exercise several tilings.
"""

from __future__ import annotations

import importlib
import math
import os
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "INTERPRETER_BLOCKS",
    "ce_forward",
    "interpreting",
    "lce_backward",
    "lce_forward",
]

#: Block sizes used under the interpreter (small: the interpreter runs each program in
#: NumPy, about 10^4 times slower than the GPU).  Not powers of two of the test shapes on
#: purpose: tests use sizes that are not multiples of them.
INTERPRETER_BLOCKS: dict[str, int] = {
    "BLOCK_C": 64,
    "BLOCK_N": 16,
    "BLOCK_V": 32,
    "BLOCK_D": 16,
    "SPLIT": 2,
    "V_CHUNK": 0,  # vocabulary chunk of the backward (0: all of it at once)
}

#: Bytes of the float32 scratch that accumulates one chunk of grad_weight on the GPU.
GRAD_WEIGHT_CHUNK_BYTES = 128 * 2**20

_cache: dict[str, Any] = {}

#: Autotuning candidates on the GPU: (BLOCK_N, BLOCK_V, BLOCK_D, num_warps, num_stages).
#: Chosen for Hopper from what ptxas reports when the kernels are compiled for sm_90a
#: without a GPU (bf16, smoothing and class weights on, with and without softcap): spill
#: stores of 0 bytes (64-row tiles), 20-48 bytes (forward 128 x 128) and 32-308 bytes
#: (backward 128 x 128 and 64 x 256), against 1-4 KiB for 128 x 256 x 64 tiles, which were
#: dropped.  None of them has been timed on a GPU yet.
LCE_FWD_CONFIGS: list[tuple[int, int, int, int, int]] = [
    (64, 256, 32, 8, 3),
    (128, 128, 32, 8, 3),
    (64, 256, 32, 8, 4),
    (128, 128, 32, 8, 4),
]
LCE_BWD_CONFIGS: list[tuple[int, int, int, int, int]] = [
    (64, 128, 32, 8, 3),
    (128, 128, 32, 8, 3),
    (64, 256, 32, 8, 3),
    (64, 128, 32, 8, 4),
]

#: False: use the first entry of each table above without autotuning (no benchmarking
#: runs, one compilation per kernel variant; ``bench/gpu.py --no-autotune``).
AUTOTUNE = True


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET`` asks Triton to interpret kernels on the CPU."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _kernels() -> ModuleType:
    """The kernels module (imported on first use).

    Whether Triton interprets kernels is fixed when ``triton`` is first imported (its own
    ``@triton.jit`` helpers are decorated then): set ``TRITON_INTERPRET=1`` before that.
    """
    return importlib.import_module("crossentropy.triton._kernels")


def _dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` precision for float32 operands: TF32 only where torch allows it."""
    import torch

    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _lce_autotuned(
    name: str, reset: list[str] | None = None, restore: list[str] | None = None
) -> Any:
    """The autotuned GPU wrapper of a fused linear cross-entropy kernel (built once)."""
    import triton

    key = f"tuned_{name}_{AUTOTUNE}"
    if key not in _cache:
        table = LCE_FWD_CONFIGS if name == "lce_fwd_kernel" else LCE_BWD_CONFIGS
        configs = [
            triton.Config({"BLOCK_N": n, "BLOCK_V": v, "BLOCK_D": d}, num_warps=w, num_stages=s)
            for n, v, d, w, s in (table if AUTOTUNE else table[:1])
        ]
        _cache[key] = triton.autotune(
            configs=configs, key=["N", "V", "D"], reset_to_zero=reset, restore_value=restore
        )(getattr(_kernels(), name))
    return _cache[key]


def _check_rows(t: torch.Tensor, name: str) -> None:
    if t.dim() != 2 or t.stride(1) != 1:
        raise ValueError(f"{name} must be 2-d with contiguous rows, got strides {t.stride()}")


def ce_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    grad_out: torch.Tensor | None,
    grad_scale: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the cross-entropy kernel; return float32 ``(loss_per_row, lse)``, both [N].

    ``loss_per_row`` is in nats, unreduced.  When ``grad_out`` (same shape as ``logits``,
    may be ``logits`` itself) is given, ``grad_scale * dloss_row/dlogits`` is written into
    it (``grad_scale``: a float32 tensor with one element, read on the device).
    """
    import torch

    _check_rows(logits, "logits")
    N, C = logits.shape
    if target.shape != (N,) or not target.is_contiguous():
        raise ValueError(f"target must be a contiguous tensor of shape ({N},)")
    if weight is not None and (weight.shape != (C,) or not weight.is_contiguous()):
        raise ValueError(f"weight must be a contiguous tensor of shape ({C},)")
    if grad_out is not None:
        _check_rows(grad_out, "grad_out")
        if grad_out.shape != logits.shape:
            raise ValueError("grad_out must have the shape of logits")
    kern = _kernels().ce_fwd_kernel
    loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    lse = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N == 0:
        return loss, lse
    if interpreting():
        block_c, warps = INTERPRETER_BLOCKS["BLOCK_C"], 4
    else:
        # A few KiB of each row per iteration; 16 warps keep enough loads in flight.
        cap = 8192 if logits.element_size() <= 2 else 4096
        block_c = min(cap, max(128, 1 << (C - 1).bit_length()))
        warps = 16 if block_c >= 4096 else 8
    dummy = loss  # a valid pointer for absent optional tensors (never read)
    kern[(N,)](
        logits,
        logits.stride(0),
        target,
        weight if weight is not None else dummy,
        loss,
        lse,
        grad_out if grad_out is not None else dummy,
        grad_out.stride(0) if grad_out is not None else 0,
        grad_scale,
        C,
        ignore_index,
        float(label_smoothing),
        float(z_loss),
        float(softcap) if softcap is not None else 1.0,
        BLOCK_C=block_c,
        HAS_WEIGHT=weight is not None,
        HAS_SMOOTHING=label_smoothing > 0.0,
        HAS_SOFTCAP=softcap is not None,
        HAS_ZLOSS=z_loss > 0.0,
        WRITE_GRAD=grad_out is not None,
        num_warps=warps,
    )
    return loss, lse


def _check_linear(
    hidden: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
) -> tuple[int, int, int]:
    _check_rows(hidden, "hidden")
    _check_rows(linear_weight, "linear_weight")
    N, D = hidden.shape
    V = linear_weight.shape[0]
    if linear_weight.shape[1] != D:
        raise ValueError(f"linear_weight must have {D} columns, got shape {linear_weight.shape}")
    if target.shape != (N,) or not target.is_contiguous():
        raise ValueError(f"target must be a contiguous tensor of shape ({N},)")
    for t, name in ((linear_bias, "linear_bias"), (weight, "weight")):
        if t is not None and (t.shape != (V,) or not t.is_contiguous()):
            raise ValueError(f"{name} must be a contiguous tensor of shape ({V},)")
    return N, D, V


def lce_forward(
    hidden: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    *,
    label_smoothing: float,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the fused forward; return float32 ``(m, r, z'_y, sum_c w_c z'_c)``, each [N].

    ``m`` is the row maximum of the (soft-capped) logits and ``r`` the sum of ``exp(z' - m)``
    over all classes but one maximal one, so ``lse = m + log1p(r)`` and ``lse - z'_y =
    (m - z'_y) + log1p(r)`` without cancellation.  The last is zeros without label
    smoothing.  Targets outside ``[0, V)`` give
    ``z'_y = 0`` (the caller marks their loss NaN).
    """
    import torch

    N, D, V = _check_linear(hidden, linear_weight, linear_bias, target, weight)
    dev = hidden.device
    interp = interpreting()
    if interp:
        split = INTERPRETER_BLOCKS["SPLIT"]
    else:
        # enough programs to fill the GPU: rows blocks x vocabulary ranges >= 2 per SM
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        split = max(1, min(32, math.ceil(2 * sms / max(1, math.ceil(N / 128)))))
    m = torch.empty((split, N), dtype=torch.float32, device=dev)
    r = torch.empty_like(m)
    zy = torch.empty_like(m)
    sz = torch.zeros_like(m)
    if N == 0:
        z = torch.zeros(N, dtype=torch.float32, device=dev)
        return z, z, z, z
    dummy = m
    args = (
        hidden,
        linear_weight,
        linear_bias if linear_bias is not None else dummy,
        target,
        weight if weight is not None else dummy,
        m,
        r,
        zy,
        sz,
        N,
        V,
        D,
        hidden.stride(0),
        linear_weight.stride(0),
        float(softcap) if softcap is not None else 1.0,
    )
    flags = {
        "SPLIT": split,
        "HAS_BIAS": linear_bias is not None,
        "HAS_WEIGHT": weight is not None,
        "HAS_SMOOTHING": label_smoothing > 0.0,
        "HAS_SOFTCAP": softcap is not None,
        "UPCAST_DOT": interp,
        "DOT_PRECISION": _dot_precision(hidden.dtype),
    }
    if interp:
        b = INTERPRETER_BLOCKS
        grid = (math.ceil(N / b["BLOCK_N"]), split)
        _kernels().lce_fwd_kernel[grid](
            *args, BLOCK_N=b["BLOCK_N"], BLOCK_V=b["BLOCK_V"], BLOCK_D=b["BLOCK_D"], **flags
        )
    else:
        _lce_autotuned("lce_fwd_kernel")[lambda meta: (math.ceil(N / meta["BLOCK_N"]), split)](
            *args, **flags
        )
    # Combine the SPLIT partials (m_j, r_j) in a fixed order, on the device.  With
    # M = max_j m_j reached at j*: R = r_j* + sum_{j != j*} exp(m_j - M) (1 + r_j), the
    # maximal element of range j* staying out of the rest sum.  (A range with no column
    # has m_j = -inf and adds 0.)
    top = m.max(dim=0)
    terms = torch.exp(m - top.values) * (1.0 + r)
    terms.scatter_(0, top.indices[None, :], r.gather(0, top.indices[None, :]))
    return top.values, terms.sum(dim=0), zy.sum(dim=0), sz.sum(dim=0)


def lce_backward(
    hidden: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    lse: torch.Tensor,
    coef_a: torch.Tensor,
    coef_b: torch.Tensor,
    coef_c: torch.Tensor,
    *,
    softcap: float | None,
    smoothing: bool,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Launch the fused backward; return ``(grad_hidden, grad_weight, grad_bias)``.

    The gradient of the logits is ``G = a p - b [c = y] - c w`` per row (float32 [N]
    coefficients ``coef_a``, ``coef_b``, ``coef_c``); it is never stored.  Accumulation is
    in float32 with atomic adds (the order of the additions, hence the last bits, may vary
    between runs on a GPU); grad_weight is accumulated one vocabulary chunk at a time in a
    float32 scratch of at most :data:`GRAD_WEIGHT_CHUNK_BYTES` and then rounded once to its
    dtype.
    """
    import torch

    N, D, V = _check_linear(hidden, linear_weight, linear_bias, target, weight)
    dev = hidden.device
    interp = interpreting()
    dh = torch.zeros((N, D), dtype=torch.float32, device=dev) if need_hidden else None
    dw = torch.empty_like(linear_weight) if need_weight else None
    db = torch.empty(V, dtype=torch.float32, device=dev) if need_bias else None
    if N == 0 or V == 0:
        if dw is not None:
            dw.zero_()
        if db is not None:
            db.zero_()
        return dh, dw, db
    if interp:
        chunk = INTERPRETER_BLOCKS.get("V_CHUNK", V) or V
    else:
        chunk = max(256, (GRAD_WEIGHT_CHUNK_BYTES // (4 * max(D, 1))) // 256 * 256)
    dummy = lse
    flags = {
        "HAS_BIAS": linear_bias is not None,
        "HAS_WEIGHT": weight is not None,
        "HAS_SMOOTHING": smoothing,
        "HAS_SOFTCAP": softcap is not None,
        "COMPUTE_DH": need_hidden,
        "COMPUTE_DW": need_weight,
        "COMPUTE_DB": need_bias,
        "UPCAST_DOT": interp,
        "DOT_PRECISION": _dot_precision(hidden.dtype),
    }
    for v_lo in range(0, V, chunk):
        v_hi = min(V, v_lo + chunk)
        # float32 accumulators.  dh accumulates over all chunks: autotuning (first call
        # only) restores it after each trial run; the chunk's dw and db are zeroed instead.
        # An absent output gets its own 1-element scratch (the autotuner's hooks write to
        # whatever tensor is passed, which must not be an input).
        f32 = torch.float32
        dh_c = dh if dh is not None else torch.zeros((1, D), dtype=f32, device=dev)
        dw_c = torch.zeros(((v_hi - v_lo) if need_weight else 1, D), dtype=f32, device=dev)
        db_c = torch.zeros((v_hi - v_lo) if need_bias else 1, dtype=f32, device=dev)
        args = (
            hidden,
            linear_weight,
            linear_bias if linear_bias is not None else dummy,
            target,
            weight if weight is not None else dummy,
            lse,
            coef_a,
            coef_b,
            coef_c,
            dh_c,
            dw_c,
            db_c,
            N,
            V,
            D,
            v_lo,
            v_hi,
            hidden.stride(0),
            linear_weight.stride(0),
            float(softcap) if softcap is not None else 1.0,
        )
        if interp:
            b = INTERPRETER_BLOCKS
            grid_i = (math.ceil(N / b["BLOCK_N"]), math.ceil((v_hi - v_lo) / b["BLOCK_V"]))
            _kernels().lce_bwd_kernel[grid_i](
                *args, BLOCK_N=b["BLOCK_N"], BLOCK_V=b["BLOCK_V"], BLOCK_D=b["BLOCK_D"], **flags
            )
        else:
            width = v_hi - v_lo

            def grid(meta: dict[str, int], w: int = width) -> tuple[int, int]:
                return math.ceil(N / meta["BLOCK_N"]), math.ceil(w / meta["BLOCK_V"])

            tuned = _lce_autotuned(
                "lce_bwd_kernel", reset=["dw_ptr", "db_ptr"], restore=["dh_ptr"]
            )
            tuned[grid](*args, **flags)
        if dw is not None:
            dw[v_lo:v_hi].copy_(dw_c)  # one rounding from the float32 sum
        if db is not None:
            db[v_lo:v_hi].copy_(db_c)
    return dh, dw, db
