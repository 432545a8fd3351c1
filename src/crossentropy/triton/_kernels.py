"""Raw Triton kernels (layer 1 of 4: kernel, launcher, autograd Function, public dispatch).

Nothing here checks arguments: the launchers in :mod:`crossentropy.triton._launch` do.
Every kernel computes in float32 whatever the storage dtype.  Conventions shared by all:

* ``z' = softcap * tanh(z / softcap)`` when ``HAS_SOFTCAP`` (Gemma 2 logit soft-capping),
  with ``dz'/dz = 1 - tanh^2``;
* the online log-sum-exp keeps a running maximum ``m`` and the running sum ``r`` of
  ``exp(z - m)`` over every element *but one maximal one* (whose term is exactly 1); when a
  block with maximum ``bm`` and rest ``br`` arrives, ``f = exp(-|bm - m|)`` and::

      bm > m:   r <- r f + f + br      (the old maximum joins the rest)
      else:     r <- r + f (1 + br)

  so after one read of the row ``lse = m + log1p(r)`` and ``lse - z_y = (m - z_y) +
  log1p(r)``: two terms >= 0, without the cancellation of ``lse - z_y`` in float32 when
  the prediction is confident (a loss of 1e-11 keeps its relative accuracy instead of
  rounding to 0), and no exponential ever overflows;
* the loss of a token with target ``y`` (weight ``w_y``, 0 when ignored), class weights
  ``w_c`` summing to ``W``, label smoothing ``eps`` over ``C`` classes and z-loss
  coefficient ``zl`` is (PyTorch's definition of weighted label smoothing)::

      l = (1 - eps) w_y (lse - z'_y) + (eps / C) (W lse - sum_c w_c z'_c) + zl [y counted] lse^2

  and its gradient with respect to ``z'_c`` (``p_c = exp(z'_c - lse)``) is::

      dl/dz'_c = p_c [(1 - eps) w_y + (eps / C) W + 2 zl lse] - (1 - eps) w_y [c = y]
                 - (eps / C) w_c

  (the smoothing terms are dropped for ignored tokens, whose loss and gradient are 0).
* ``UPCAST_DOT`` casts ``tl.dot`` operands to float32: the Triton interpreter cannot
  multiply bfloat16 tiles, the GPU path keeps them in the storage dtype (float32 accumulation
  either way).
"""

# mypy: ignore-errors
# (Triton kernels take untyped pointer arguments and untyped decorators; the launchers that
# call them are fully typed.)

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _log1p(r):
    # log1p(r) for r >= 0.  log1p(r) = 2 atanh(w) = 2 (w + w^3/3 + w^5/5 + ...) with
    # w = r / (2 + r); for r < 0.5, w < 0.2 and the series to w^17 is exact to ~1e-14
    # (relative).  Above, log(1 + r) >= 0.4 carries no cancellation.
    w = r / (2.0 + r)
    w2 = w * w
    p = 1.0 / 17.0
    p = p * w2 + 1.0 / 15.0
    p = p * w2 + 1.0 / 13.0
    p = p * w2 + 1.0 / 11.0
    p = p * w2 + 1.0 / 9.0
    p = p * w2 + 1.0 / 7.0
    p = p * w2 + 1.0 / 5.0
    p = p * w2 + 1.0 / 3.0
    p = p * w2 + 1.0
    return tl.where(r < 0.5, 2.0 * w * p, tl.log(1.0 + r))


@triton.jit
def _merge(m, r, bm, br):
    # Online log-sum-exp merge of (max m, rest r) with a block's (bm, br); see the module
    # notes.  f = exp(-|bm - m|) <= 1 never overflows (f = 0 while m is still -inf).
    f = tl.exp(-tl.abs(bm - m))
    r_new = tl.where(bm > m, r * f + f + br, r + f * (1.0 + br))
    return tl.maximum(m, bm), r_new


@triton.jit
def _softcap(z, cap):
    # tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|) <= 1: no overflow for any x.
    x = z / cap
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    t = tl.where(x < 0.0, -t, t)
    return cap * t, t


@triton.jit
def ce_fwd_kernel(
    logits_ptr,
    stride_row,
    target_ptr,
    weight_ptr,
    loss_ptr,
    lse_ptr,
    grad_ptr,
    stride_grad_row,
    scale_ptr,
    C,
    ignore_index,
    eps,
    z_loss,
    softcap,
    BLOCK_C: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ZLOSS: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
):
    """One program per row: the loss, the lse and (``WRITE_GRAD``) the scaled gradient.

    Pass 1 reads the row once (online log-sum-exp, weighted logit sum for smoothing); pass 2,
    only when a gradient is wanted, re-reads it and writes ``scale * dl/dz`` into
    ``grad_ptr`` (which may alias ``logits_ptr``: each element is read before it is
    overwritten, by the same program).
    """
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride_row
    y = tl.load(target_ptr + row).to(tl.int64)
    ignored = y == ignore_index
    in_range = (y >= 0) & (y < C)
    bad = (~ignored) & (~in_range)  # out-of-range target: NaN loss and gradient (no sync)
    y_safe = tl.where(in_range, y, 0)
    cols0 = tl.arange(0, BLOCK_C)

    m = float("-inf")
    r = 0.0  # sum of exp(z - m) over the row but one maximal element
    sz = 0.0  # sum_c w_c z'_c
    sw = 0.0  # W = sum_c w_c
    for start in range(0, C, BLOCK_C):
        cols = start + cols0
        cmask = cols < C
        z = tl.load(row_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            z, _t = _softcap(z, softcap)
        if HAS_SMOOTHING:
            if HAS_WEIGHT:
                w = tl.load(weight_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            else:
                w = tl.where(cmask, 1.0, 0.0)
            sz += tl.sum(w * z, 0)  # masked lanes: w = 0 and z = 0
            sw += tl.sum(w, 0)
        z = tl.where(cmask, z, float("-inf"))
        bm = tl.max(z, 0)
        e = tl.exp(z - bm)
        e = tl.where(cols0 == tl.argmax(z, 0), 0.0, e)  # leave one maximal term (= 1) out
        m, r = _merge(m, r, bm, tl.sum(e, 0))
    l1p = _log1p(r)
    lse = m + l1p

    zy = tl.load(row_ptr + y_safe).to(tl.float32)
    if HAS_SOFTCAP:
        zy, _ty = _softcap(zy, softcap)
    if HAS_WEIGHT:
        wy = tl.load(weight_ptr + y_safe).to(tl.float32)
    else:
        wy = 1.0
    wy = tl.where(ignored, 0.0, wy)
    counted = tl.where(ignored, 0.0, 1.0)
    # lse - z'_y = (m - z'_y) + log1p(r): both terms >= 0
    loss = (1.0 - eps) * wy * ((m - zy) + l1p)
    if HAS_SMOOTHING:
        loss += counted * (eps / C) * (sw * lse - sz)
    if HAS_ZLOSS:
        loss += z_loss * counted * lse * lse  # z-loss: not weighted by w_y
    loss = tl.where(bad, float("nan"), loss)
    tl.store(loss_ptr + row, loss)
    tl.store(lse_ptr + row, lse)

    if WRITE_GRAD:
        # ignored rows: scale 0 (a mean over no counted row has scale 1/0 = inf)
        scale = tl.where(ignored, 0.0, tl.load(scale_ptr).to(tl.float32))
        a = (1.0 - eps) * wy  # coefficient of p_c
        if HAS_SMOOTHING:
            a += counted * (eps / C) * sw
        if HAS_ZLOSS:
            a += 2.0 * z_loss * counted * lse
        b = (1.0 - eps) * wy  # subtracted at the target class
        c = counted * (eps / C)  # times w_c, subtracted everywhere
        out_ptr = grad_ptr + row * stride_grad_row
        for start in range(0, C, BLOCK_C):
            cols = start + cols0
            cmask = cols < C
            z = tl.load(row_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            if HAS_SOFTCAP:
                z, t = _softcap(z, softcap)
            p = tl.exp(z - lse)
            g = p * a - tl.where(cols == y, b, 0.0)
            if HAS_SMOOTHING:
                if HAS_WEIGHT:
                    w = tl.load(weight_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
                    g -= c * w
                else:
                    g -= c
            if HAS_SOFTCAP:
                g = g * (1.0 - t * t)  # d softcap(z) / dz = 1 - tanh^2
            g = g * scale
            g = tl.where(ignored, 0.0, g)
            g = tl.where(bad, float("nan"), g)
            tl.store(out_ptr + cols, g.to(grad_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _logits_tile(
    h_ptr,
    w_ptr,
    b_ptr,
    rows,
    rmask,
    cols,
    cmask,
    stride_h,
    stride_w,
    D,
    softcap,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """The (BLOCK_N, BLOCK_V) tile ``softcap(h[rows] @ W[cols]^T + b[cols])`` in float32,
    kept on chip.  (The softcap gradient needs tanh = z' / softcap: not kept, to save
    registers.)"""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    dk0 = tl.arange(0, BLOCK_D)
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * stride_h  # 64-bit: V * D may exceed 2^31
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * stride_w
    for d0 in range(0, D, BLOCK_D):
        dk = d0 + dk0
        dmask = dk < D
        h = tl.load(
            h_rows + dk[None, :],
            mask=rmask[:, None] & dmask[None, :],
            other=0.0,
        )
        w = tl.load(
            w_rows + dk[None, :],
            mask=cmask[:, None] & dmask[None, :],
            other=0.0,
        )
        if UPCAST_DOT:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if HAS_SOFTCAP:
        acc, _t = _softcap(acc, softcap)
    return acc


@triton.jit
def lce_fwd_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    target_ptr,
    cw_ptr,
    m_ptr,
    r_ptr,
    zy_ptr,
    sz_ptr,
    N,
    V,
    D,
    stride_h,
    stride_w,
    softcap,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Program (i, j): rows block i, the j-th of SPLIT contiguous ranges of vocabulary blocks.

    Each logits tile lives only on chip: it is folded into the running (m, s) of its rows,
    the target logit is picked from it and (smoothing) the weighted logit sum accumulated.
    The partial (m, r, z'_y, sum w z') of each range go to ``[SPLIT, N]`` buffers, combined
    afterwards in a fixed order (deterministic).  ``r`` is the rest sum of the module notes.
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    y = tl.load(target_ptr + rows, mask=rmask, other=-1).to(tl.int64)
    n_vblocks = tl.cdiv(V, BLOCK_V)
    per = tl.cdiv(n_vblocks, SPLIT)
    v_start = pid_s * per * BLOCK_V
    v_end = tl.minimum(V, v_start + per * BLOCK_V)

    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    r = tl.zeros([BLOCK_N], tl.float32)
    zy = tl.zeros([BLOCK_N], tl.float32)
    sz = tl.zeros([BLOCK_N], tl.float32)
    cols0 = tl.arange(0, BLOCK_V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + cols0
        cmask = cols < V
        z = _logits_tile(
            h_ptr, w_ptr, b_ptr, rows, rmask, cols, cmask, stride_h, stride_w, D, softcap,
            BLOCK_N, BLOCK_V, BLOCK_D, HAS_BIAS, HAS_SOFTCAP, UPCAST_DOT, DOT_PRECISION,
        )
        zm = tl.where(cmask[None, :], z, float("-inf"))
        bm = tl.max(zm, 1)
        e = tl.exp(zm - bm[:, None])
        # leave one maximal term (= 1) of each row out of the rest sum
        e = tl.where(cols0[None, :] == tl.argmax(zm, 1)[:, None], 0.0, e)
        m, r = _merge(m, r, bm, tl.sum(e, 1))
        zy += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), 1)
        if HAS_SMOOTHING:
            if HAS_WEIGHT:
                cw = tl.load(cw_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            else:
                cw = tl.where(cmask, 1.0, 0.0)
            sz += tl.sum(tl.where(cmask[None, :], z * cw[None, :], 0.0), 1)
    out = pid_s * N + rows
    tl.store(m_ptr + out, m, mask=rmask)
    tl.store(r_ptr + out, r, mask=rmask)
    tl.store(zy_ptr + out, zy, mask=rmask)
    if HAS_SMOOTHING:
        tl.store(sz_ptr + out, sz, mask=rmask)


@triton.jit
def lce_bwd_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    target_ptr,
    cw_ptr,
    lse_ptr,
    a_ptr,
    bcoef_ptr,
    c_ptr,
    dh_ptr,
    dw_ptr,
    db_ptr,
    N,
    V,
    D,
    v_lo,
    v_hi,
    stride_h,
    stride_w,
    softcap,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SMOOTHING: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    COMPUTE_DH: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Program (i, j): rows block i, vocabulary block j of the chunk ``[v_lo, v_hi)``.

    Recomputes the logits tile, forms ``G = a p - b [c = y] - c w`` on chip (the per-row
    coefficients a, b, c already hold the reduction, the base and the incoming gradient),
    then adds ``G @ W[cols]`` into ``dh`` (float32, shape [N, D]), ``G^T @ h[rows]`` into
    ``dw`` (float32, the chunk's rows ``cols - v_lo``) and ``sum_rows G`` into ``db`` with
    float32 atomic adds (``db`` also holds the chunk only, indexed ``cols - v_lo``).
    """
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = v_lo + pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    cmask = cols < v_hi
    z = _logits_tile(
        h_ptr, w_ptr, b_ptr, rows, rmask, cols, cmask, stride_h, stride_w, D, softcap,
        BLOCK_N, BLOCK_V, BLOCK_D, HAS_BIAS, HAS_SOFTCAP, UPCAST_DOT, DOT_PRECISION,
    )
    y = tl.load(target_ptr + rows, mask=rmask, other=-1).to(tl.int64)
    lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
    a = tl.load(a_ptr + rows, mask=rmask, other=0.0)
    b = tl.load(bcoef_ptr + rows, mask=rmask, other=0.0)
    p = tl.exp(z - lse[:, None])
    g = p * a[:, None] - tl.where(cols[None, :] == y[:, None], b[:, None], 0.0)
    if HAS_SMOOTHING:
        c = tl.load(c_ptr + rows, mask=rmask, other=0.0)
        if HAS_WEIGHT:
            cw = tl.load(cw_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
            g -= c[:, None] * cw[None, :]
        else:
            g -= c[:, None]
    if HAS_SOFTCAP:
        t = z / softcap  # tanh(z / softcap) recovered from the capped logit
        g = g * (1.0 - t * t)  # d softcap(z) / dz = 1 - tanh^2
    g = tl.where(rmask[:, None] & cmask[None, :], g, 0.0)
    if COMPUTE_DB:
        tl.atomic_add(db_ptr + (cols - v_lo), tl.sum(g, 0), mask=cmask)
    if UPCAST_DOT:
        gd = g
    else:
        gd = g.to(h_ptr.dtype.element_ty)
    dk0 = tl.arange(0, BLOCK_D)
    rows64 = rows.to(tl.int64)[:, None]  # 64-bit offsets: V * D may exceed 2^31
    cols64 = cols.to(tl.int64)[:, None]
    for d0 in range(0, D, BLOCK_D):
        dk = d0 + dk0
        dmask = dk < D
        if COMPUTE_DH:
            w = tl.load(
                w_ptr + cols64 * stride_w + dk[None, :],
                mask=cmask[:, None] & dmask[None, :],
                other=0.0,
            )
            if UPCAST_DOT:
                w = w.to(tl.float32)
            dh = tl.dot(gd, w, input_precision=DOT_PRECISION)
            tl.atomic_add(
                dh_ptr + rows64 * D + dk[None, :],
                dh,
                mask=rmask[:, None] & dmask[None, :],
            )
        if COMPUTE_DW:
            h = tl.load(
                h_ptr + rows64 * stride_h + dk[None, :],
                mask=rmask[:, None] & dmask[None, :],
                other=0.0,
            )
            if UPCAST_DOT:
                h = h.to(tl.float32)
            dw = tl.dot(tl.trans(gd), h, input_precision=DOT_PRECISION)
            tl.atomic_add(
                dw_ptr + (cols64 - v_lo) * D + dk[None, :],
                dw,
                mask=cmask[:, None] & dmask[None, :],
            )
