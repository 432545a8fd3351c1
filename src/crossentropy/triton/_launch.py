"""Typed launchers (layer 2 of 2): check shapes and strides, allocate outputs, pick blocks.

On a GPU the fused linear cross-entropy kernels are autotuned over a few Hopper-sized tile
configurations (all of them pure writers: autotuning reruns them safely, except the
accumulating grad-hidden kernel, which is not autotuned); the cross-entropy kernel uses a
fixed heuristic (it may overwrite its own input).  Under the Triton interpreter
(``TRITON_INTERPRET=1``, CPU tensors) every kernel runs once with the small blocks in
:data:`INTERPRETER_BLOCKS`, which tests may change to exercise several tilings.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from crossentropy._options import CrossEntropyOptions

__all__ = [
    "INTERPRETER_BLOCKS",
    "KernelStats",
    "ce_backward",
    "ce_forward",
    "interpreting",
    "lce_backward",
    "lce_forward",
    "logits_stats_backward",
    "logits_stats_forward",
]

#: Block sizes used under the interpreter (small: the interpreter runs each program in
#: NumPy, about 10^4 times slower than the GPU).  Tests use sizes that are not multiples
#: of them.
INTERPRETER_BLOCKS: dict[str, int] = {
    "BLOCK_C": 64,
    "BLOCK_N": 16,
    "BLOCK_V": 32,
    "BLOCK_D": 16,
    "SPLIT": 2,
    "V_CHUNK": 0,  # vocabulary chunk of the backward (0: all of it at once)
}

#: Bytes of the gradient-of-the-logits chunk buffer of the fused backward on the GPU
#: (``N x V_chunk`` in the storage dtype; 128 MiB gives V_chunk = 8192 at N = 8192 bf16).
GRAD_CHUNK_BYTES = 128 * 2**20

_cache: dict[str, Any] = {}

#: GPU tile configurations (BLOCK_N, BLOCK_V, BLOCK_D, num_warps, num_stages) per kernel;
#: the first entry is used without autotuning.  Chosen from what ptxas (bundled with the
#: triton wheel) reports when the kernels are compiled for sm_90a without a GPU (bf16,
#: every option on): spill stores of 0-8 bytes (backward logits, grad-weight 64x128x256),
#: 72 bytes (grad-hidden 128x32x128), 600 bytes (forward 64x256x32, index targets; 6 KB
#: with probability targets).  None has been timed on a GPU yet.
CONFIGS: dict[str, list[tuple[int, int, int, int, int]]] = {
    "lce_fwd_kernel": [(64, 256, 32, 8, 3), (128, 128, 32, 8, 3), (128, 128, 64, 8, 3)],
    "lce_bwd_logits_kernel": [(64, 128, 32, 8, 3), (128, 128, 32, 8, 3), (64, 256, 32, 8, 3)],
    # (BLOCK_N = the K step over rows, BLOCK_V, BLOCK_D)
    "lce_bwd_weight_kernel": [(64, 128, 256, 8, 3), (32, 128, 128, 4, 4), (64, 128, 128, 8, 3)],
    # (BLOCK_N, BLOCK_V = the K step over the chunk, BLOCK_D); not autotuned (accumulates)
    "lce_bwd_hidden_kernel": [(128, 32, 128, 8, 3)],
    # the token statistics of a logits tensor (FROM_LOGITS: tiles read, not multiplied;
    # BLOCK_D unused): narrow row blocks keep the float64 row statistics in registers
    # (ptxas, sm_90a, every option on: 612 bytes of spill stores forward, 0 backward; a
    # 64 x 256 tile spilled 54 KB)
    "lce_fwd_kernel/logits": [(8, 512, 16, 4, 3)],
    "lce_bwd_logits_kernel/logits": [(8, 512, 16, 4, 3)],
}

#: False: use the first entry of each table above without autotuning (no benchmarking
#: runs, one compilation per kernel variant; what ``bench/gpu.py`` uses unless ``--autotune``).
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


def _launch(name: str, grid: Any, args: tuple[Any, ...], flags: dict[str, Any],
            tiles: tuple[str, str, str] = ("BLOCK_N", "BLOCK_V", "BLOCK_D"),
            config: str | None = None) -> None:
    """Run kernel `name`: interpreter blocks, one fixed GPU config, or the autotuner.

    `grid` is a callable of the block-size dict; `config` the :data:`CONFIGS` entry (the
    kernel's name by default).
    """
    kern = getattr(_kernels(), name)
    if interpreting():
        b = INTERPRETER_BLOCKS
        meta = {t: b[t] for t in tiles}
        kern[grid(meta)](*args, **meta, **flags)
        return
    config = config or name
    table = CONFIGS[config]
    if not AUTOTUNE or len(table) == 1:
        n, v, d, w, st = table[0]
        meta = dict(zip(tiles, (n, v, d), strict=True))
        kern[grid(meta)](*args, **meta, **flags, num_warps=w, num_stages=st)
        return
    import triton

    key = f"tuned_{config}"
    if key not in _cache:
        configs = [
            triton.Config(dict(zip(tiles, (n, v, d), strict=True)), num_warps=w, num_stages=st)
            for n, v, d, w, st in table
        ]
        keys = ["N", "D"] if name == "lce_bwd_weight_kernel" else ["N", "V", "D"]
        _cache[key] = triton.autotune(configs=configs, key=keys)(kern)
    _cache[key][grid](*args, **flags)


def _round_bf16(t: torch.Tensor) -> bool:
    """Round float32 to bfloat16 in-kernel (the interpreter's own cast truncates)."""
    import torch

    return interpreting() and t.dtype == torch.bfloat16


def _check_rows(t: torch.Tensor, name: str) -> None:
    if t.dim() != 2 or (t.shape[1] > 1 and t.stride(1) != 1):
        raise ValueError(f"{name} must be 2-d with contiguous rows, got strides {t.stride()}")


@dataclass
class KernelStats:
    """The kernels' row-statistics buffers (module notes of ``_kernels``), all [N] (or
    [SPLIT, N]): what the kernels write and read, not the formula (the torch layer turns
    them into its ``RowStats``).

    ``m`` float32 maximum, ``k`` int32 its first column, ``s`` float64 rest sum,
    ``A``/``B`` float64 soft-target sums, ``zy`` float32 target logit (index targets; 0
    outside the range holding it), ``ent`` float64 the entropy's sum
    ``sum_c e^{z_c - m} (m - z_c)`` (None unless asked).
    """

    m: torch.Tensor
    s: torch.Tensor
    k: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    zy: torch.Tensor
    ent: torch.Tensor | None = None


def _empty_stats(n: int, dev: Any, split: int | None = None, entropy: bool = False
                 ) -> KernelStats:
    import torch

    shape = (n,) if split is None else (split, n)
    f32, f64 = torch.float32, torch.float64
    return KernelStats(
        m=torch.empty(shape, dtype=f32, device=dev),
        s=torch.empty(shape, dtype=f64, device=dev),
        k=torch.empty(shape, dtype=torch.int32, device=dev),
        A=torch.zeros(shape, dtype=f64, device=dev),
        B=torch.zeros(shape, dtype=f64, device=dev),
        zy=torch.zeros(shape, dtype=f32, device=dev),
        ent=torch.zeros(shape, dtype=f64, device=dev) if entropy else None,
    )


def _flags(target: torch.Tensor, weight: torch.Tensor | None,
           opts: CrossEntropyOptions) -> dict[str, Any]:
    prob = target.dim() == 2
    return {
        "IS_PROB": prob,
        "HAS_WEIGHT": weight is not None,
        "HAS_SOFT": prob or opts.label_smoothing > 0.0,
        "HAS_SOFTCAP": opts.softcap is not None,
    }


def _check_ce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
              ) -> tuple[int, int]:
    _check_rows(logits, "logits")
    N, C = logits.shape
    if target.dim() == 2:
        _check_rows(target, "target")
        if target.shape != (N, C):
            raise ValueError(f"probability targets must have shape ({N}, {C})")
    elif target.shape != (N,) or not target.is_contiguous():
        raise ValueError(f"target must be a contiguous tensor of shape ({N},)")
    if weight is not None and (weight.shape != (C,) or not weight.is_contiguous()):
        raise ValueError(f"weight must be a contiguous tensor of shape ({C},)")
    return N, C


def _ce_blocks(logits: torch.Tensor, C: int) -> tuple[int, int]:
    if interpreting():
        return INTERPRETER_BLOCKS["BLOCK_C"], 4
    # A few KiB of each row per iteration; 16 warps keep enough loads in flight.
    cap = 8192 if logits.element_size() <= 2 else 4096
    block_c = min(cap, max(128, 1 << (C - 1).bit_length()))
    return block_c, (16 if block_c >= 4096 else 8)


def ce_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: CrossEntropyOptions,
) -> KernelStats:
    """Launch the cross-entropy forward kernel (one read of each row); the row statistics.

    `target` is int64 [N] or a [N, C] tensor of probability rows (contiguous rows).
    """
    N, C = _check_ce(logits, target, weight)
    st = _empty_stats(N, logits.device)
    if N == 0:
        return st
    block_c, warps = _ce_blocks(logits, C)
    _kernels().ce_fwd_kernel[(N,)](
        logits,
        logits.stride(0),
        target,
        target.stride(0) if target.dim() == 2 else 0,
        weight if weight is not None else st.m,  # a valid pointer, never read
        st.m,
        st.s,
        st.k,
        st.A,
        st.B,
        st.zy,
        C,
        float(opts.label_smoothing),
        float(opts.softcap) if opts.softcap is not None else 1.0,
        BLOCK_C=block_c,
        **_flags(target, weight, opts),
        num_warps=warps,
    )
    return st


def ce_backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: CrossEntropyOptions,
    st: KernelStats,
    grad_scale: torch.Tensor,
    grad_out: torch.Tensor,
) -> torch.Tensor:
    """Launch the cross-entropy gradient kernel: ``grad_out = grad_scale * dloss/dlogits``.

    ``grad_scale`` is float32 with one element (every row) or N (one per row), read on the
    device; ``grad_out`` has the shape of ``logits`` and may be ``logits`` itself.
    """
    N, C = _check_ce(logits, target, weight)
    _check_rows(grad_out, "grad_out")
    if grad_out.shape != logits.shape:
        raise ValueError("grad_out must have the shape of logits")
    if N == 0:
        return grad_out
    block_c, warps = _ce_blocks(logits, C)
    _kernels().ce_bwd_kernel[(N,)](
        logits,
        logits.stride(0),
        target,
        target.stride(0) if target.dim() == 2 else 0,
        weight if weight is not None else st.m,
        st.m,
        st.s,
        st.k,
        st.A,
        grad_out,
        grad_out.stride(0),
        grad_scale,
        1 if grad_scale.numel() > 1 else 0,
        C,
        opts.ignore_index if opts.ignore_index is not None else 0,
        float(opts.label_smoothing),
        float(opts.z_loss),
        float(opts.softcap) if opts.softcap is not None else 1.0,
        BLOCK_C=block_c,
        **_flags(target, weight, opts),
        HAS_ZLOSS=opts.z_loss > 0.0,
        HAS_IGNORE=opts.ignore_index is not None,
        ROUND_BF16=_round_bf16(logits),
        num_warps=warps,
    )
    return grad_out


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
    if target.dim() == 2:
        _check_rows(target, "target")
        if target.shape != (N, V):
            raise ValueError(f"probability targets must have shape ({N}, {V})")
    elif target.shape != (N,) or not target.is_contiguous():
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
    opts: CrossEntropyOptions,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
) -> KernelStats:
    """Launch the fused forward; return the row statistics of ``hidden @ W^T + b``.

    The kernel leaves the statistics of SPLIT contiguous vocabulary ranges, ``[SPLIT, N]``
    each (``[N]`` when N = 0); the caller merges them (the torch layer's merge rule,
    ``crossentropy/torch/_rowstats.py``: ``merge_stacked``).  The logits are
    ``softcap(z) / temperature``; ``entropy`` adds the entropy's sums (``KernelStats.ent``).
    """

    N, D, V = _check_linear(hidden, linear_weight, linear_bias, target, weight)
    return _fwd(hidden, linear_weight, linear_bias, target, weight, opts, N, V, D,
                temperature, entropy, False)


def logits_stats_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    opts: CrossEntropyOptions,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
) -> KernelStats:
    """:func:`lce_forward`'s statistics of a logits tensor ``[N, V]`` (contiguous rows, index
    targets ``[N]``), read a tile at a time by the same kernel (``FROM_LOGITS``)."""
    N, V = _check_ce(logits, target, weight)
    if target.dim() != 1:
        raise ValueError("logits_stats_forward takes index targets")
    return _fwd(logits, logits, None, target, weight, opts, N, V, 0, temperature, entropy,
                True)


def _fwd(hidden: torch.Tensor, linear_weight: torch.Tensor, linear_bias: torch.Tensor | None,
         target: torch.Tensor, weight: torch.Tensor | None, opts: CrossEntropyOptions,
         N: int, V: int, D: int, temperature: float, entropy: bool, from_logits: bool
         ) -> KernelStats:
    import torch

    dev = hidden.device
    interp = interpreting()
    if interp:
        split = INTERPRETER_BLOCKS["SPLIT"]
    else:
        # enough programs to fill the GPU: rows blocks x vocabulary ranges >= 2 per SM
        sms = torch.cuda.get_device_properties(dev).multi_processor_count
        split = max(1, min(32, math.ceil(2 * sms / max(1, math.ceil(N / 128)))))
    if N == 0:
        return _empty_stats(0, dev, entropy=entropy)
    part = _empty_stats(N, dev, split, entropy)
    dummy = part.m
    args = (
        hidden,
        linear_weight,
        linear_bias if linear_bias is not None else dummy,
        target,
        target.stride(0) if target.dim() == 2 else 0,
        weight if weight is not None else dummy,
        part.m,
        part.s,
        part.k,
        part.A,
        part.B,
        part.zy,
        part.ent if part.ent is not None else part.s,  # a valid pointer, never written
        N,
        V,
        D,
        hidden.stride(0),
        0 if from_logits else linear_weight.stride(0),
        float(opts.label_smoothing),
        float(opts.softcap) if opts.softcap is not None else 1.0,
        float(temperature),
    )
    flags = {
        "SPLIT": split,
        "HAS_BIAS": linear_bias is not None,
        **_flags(target, weight, opts),
        "UPCAST_DOT": interp,
        "DOT_PRECISION": _dot_precision(hidden.dtype),
        "HAS_TEMP": temperature != 1.0,
        "HAS_ENT": entropy,
        "FROM_LOGITS": from_logits,
    }
    _launch("lce_fwd_kernel", lambda meta: (math.ceil(N / meta["BLOCK_N"]), split), args, flags,
            config="lce_fwd_kernel/logits" if from_logits else None)
    return part


def logits_stats_backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    stats: KernelStats,
    coef_p: torch.Tensor,
    coef_t: torch.Tensor,
    coef_a: torch.Tensor,
    coef_k: torch.Tensor,
    opts: CrossEntropyOptions,
    *,
    coef_h: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """The gradient of a logits tensor ``[N, V]`` (its dtype) from per-row coefficients:
    :func:`lce_backward`'s first kernel reading the logits (``FROM_LOGITS``), writing the
    whole gradient once."""
    import torch

    N, V = _check_ce(logits, target, weight)
    grad = torch.empty((N, V), dtype=logits.dtype, device=logits.device)
    if N == 0 or V == 0:
        return grad
    interp = interpreting()
    dummy = stats.s
    args = (
        logits, logits, dummy, target, 0, weight if weight is not None else dummy,
        stats.m.contiguous(), stats.s.to(torch.float32).contiguous(), stats.k,
        coef_p, coef_t, coef_a, coef_k, coef_h if coef_h is not None else coef_p,
        grad, N, V, 0, 0, V, logits.stride(0), 0,
        float(opts.label_smoothing),
        float(opts.softcap) if opts.softcap is not None else 1.0,
        float(temperature),
    )
    flags = {
        "HAS_BIAS": False,
        **_flags(target, weight, opts),
        "UPCAST_DOT": interp,
        "DOT_PRECISION": _dot_precision(logits.dtype),
        "HAS_TEMP": temperature != 1.0,
        "HAS_ENT": coef_h is not None,
        "FROM_LOGITS": True,
        "ROUND_BF16": _round_bf16(logits),
    }

    def grid(meta: dict[str, int]) -> tuple[int, int]:
        return math.ceil(N / meta["BLOCK_N"]), math.ceil(V / meta["BLOCK_V"])

    _launch("lce_bwd_logits_kernel", grid, args, flags, config="lce_bwd_logits_kernel/logits")
    return grad


def lce_backward(
    hidden: torch.Tensor,
    linear_weight: torch.Tensor,
    linear_bias: torch.Tensor | None,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    stats: KernelStats,
    coef_p: torch.Tensor,
    coef_t: torch.Tensor,
    coef_a: torch.Tensor,
    coef_k: torch.Tensor,
    opts: CrossEntropyOptions,
    *,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    coef_h: torch.Tensor | None = None,
    temperature: float = 1.0,
    grad_chunk_bytes: int = GRAD_CHUNK_BYTES,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Launch the fused backward; return ``(grad_hidden, grad_weight, grad_bias)``.

    For each vocabulary chunk ``[v_lo, v_hi)`` (``GRAD_CHUNK_BYTES`` of ``G`` in the storage
    dtype): kernel 1 recomputes the logits tiles and writes ``G = dL/dlogits`` of the chunk
    (per-row float32 coefficients ``coef_p``, ``coef_t``, ``coef_a``, see
    ``lce_bwd_logits_kernel``); kernel 2 writes ``grad_weight[v_lo:v_hi] = G^T h`` (and the
    bias gradient), complete, in one rounding from float32; kernel 3 adds ``G W[v_lo:v_hi]``
    into a float32 grad_hidden.  No atomics; deterministic.  ``coef_h`` (float32 [N]) adds
    the entropy's term ``coef_h p_c (z_c - m)``; the logits are ``softcap(z) / temperature``;
    ``G`` is cut into chunks of about ``grad_chunk_bytes`` (at least 256 columns).
    """
    import torch

    N, D, V = _check_linear(hidden, linear_weight, linear_bias, target, weight)
    dev = hidden.device
    interp = interpreting()
    f32 = torch.float32
    dh = torch.zeros((N, D), dtype=f32, device=dev) if need_hidden else None
    dw = torch.zeros_like(linear_weight) if need_weight else None
    db = torch.zeros(V, dtype=f32, device=dev) if need_bias else None
    if N == 0 or V == 0 or not (need_hidden or need_weight or need_bias):
        return dh, dw, db
    if interp:
        chunk = INTERPRETER_BLOCKS.get("V_CHUNK", V) or V
    else:
        per = grad_chunk_bytes // (hidden.element_size() * N)
        chunk = max(256, per // 256 * 256)
    chunk = min(chunk, V)
    gbuf = torch.empty(N * chunk, dtype=hidden.dtype, device=dev)
    dummy = stats.s
    flags = {
        "HAS_BIAS": linear_bias is not None,
        **_flags(target, weight, opts),
        "UPCAST_DOT": interp,
        "DOT_PRECISION": _dot_precision(hidden.dtype),
        "HAS_TEMP": temperature != 1.0,
        "HAS_ENT": coef_h is not None,
    }
    dot = {"UPCAST_DOT": interp, "DOT_PRECISION": _dot_precision(hidden.dtype)}
    rne = {"ROUND_BF16": _round_bf16(hidden)}
    m32 = stats.m.contiguous()
    s32 = stats.s.to(f32).contiguous()
    for v_lo in range(0, V, chunk):
        v_hi = min(V, v_lo + chunk)
        width = v_hi - v_lo
        g = gbuf[: N * width]
        args = (
            hidden, linear_weight,
            linear_bias if linear_bias is not None else dummy,
            target,
            target.stride(0) if target.dim() == 2 else 0,
            weight if weight is not None else dummy,
            m32, s32, stats.k, coef_p, coef_t, coef_a, coef_k,
            coef_h if coef_h is not None else coef_p,  # a valid pointer, never read
            g, N, V, D, v_lo, v_hi, hidden.stride(0), linear_weight.stride(0),
            float(opts.label_smoothing),
            float(opts.softcap) if opts.softcap is not None else 1.0,
            float(temperature),
        )

        def grid_g(meta: dict[str, int], w: int = width) -> tuple[int, int]:
            return math.ceil(N / meta["BLOCK_N"]), math.ceil(w / meta["BLOCK_V"])

        _launch("lce_bwd_logits_kernel", grid_g, args, {**flags, **rne})
        if need_weight or need_bias:

            def grid_w(meta: dict[str, int], w: int = width) -> tuple[int, int]:
                cols = math.ceil(w / meta["BLOCK_V"])
                return cols, (math.ceil(D / meta["BLOCK_D"]) if need_weight else 1)

            _launch(
                "lce_bwd_weight_kernel", grid_w,
                (g, hidden, dw if dw is not None else dummy, db if db is not None else dummy,
                 N, D, v_lo, v_hi, hidden.stride(0)),
                {"HAS_DW": need_weight, "HAS_BIAS": need_bias, **dot, **rne},
            )
        if dh is not None:

            def grid_h(meta: dict[str, int]) -> tuple[int, int]:
                return math.ceil(N / meta["BLOCK_N"]), math.ceil(D / meta["BLOCK_D"])

            _launch(
                "lce_bwd_hidden_kernel", grid_h,
                (g, linear_weight, dh, N, D, v_lo, v_hi, linear_weight.stride(0)),
                {"FIRST": v_lo == 0, **dot},
            )
    return dh, dw, db
