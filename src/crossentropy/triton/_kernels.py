r"""Raw Triton kernels (layer 1 of 2: kernels, launchers; the autograd Functions and the
seams are the torch layer's, ``crossentropy/torch/_triton.py``).

Nothing here checks arguments: the launchers in :mod:`crossentropy.triton._launch` do.
Per-element work is float32 whatever the storage dtype; the per-row running statistics
are float64 (a few scalars per row and block: free next to the per-element work).

Row statistics (the merge rule of ``crossentropy/torch/_rowstats.py``, written in-kernel).
For a row of (soft-capped) logits ``z`` with maximum ``m`` reached first at ``k``:

* ``s = sum_{c != k} e^{z_c - m}`` (the *rest*; the maximal term, exactly 1, is left out),
  so ``lse = m + log1p(s)`` and ``-log p_y = (m - z_y) + log1p(s)``: two terms >= 0.  A
  confident row (``-log p_y`` ~ 1e-18) keeps its digits, where ``lse - z_y`` gives 0;
* ``A = sum_c a_c`` and ``B = sum_c a_c (m - z_c)`` (every term >= 0) for the soft part
  of the target, ``a_c`` = ``(eps / C) w_c`` (index targets with label smoothing) or
  ``w_c ((1 - eps) t_c + eps / C)`` (probability targets ``t``), so that
  ``sum_c a_c (lse - z_c) = B + A log1p(s)`` without cancellation.

A block of classes with maximum ``bm`` (first at ``bk``), rest ``bs``, sums ``bA``, ``bB``
joins the running ``(m, s, A, B)`` (all relative to the running maximum) as::

    bm > m:  s <- s f + f + bs,   f = e^{m - bm}   (the old maximum joins the rest)
             B <- B + A (bm - m) + bB,   k <- bk
    else:    s <- s + f (1 + bs), f = e^{bm - m}
             B <- B + bB + bA (m - bm)
    A <- A + bA

so ``s`` never holds the global maximum's term, ``f <= 1`` never overflows and every
update adds terms >= 0.  (Same rule as ``merge`` in ``crossentropy/torch/_rowstats.py``.)

Exponentials: ``tl.exp`` is ``ex2.approx(x log2 e)`` on NVIDIA GPUs, whose rounded
argument costs ``|x|`` ulp (20 ulp at ``x = -20``, exactly the terms of a confident row).
:func:`_exp` is a Cody-Waite range reduction with a degree-7 polynomial (about 1 ulp),
and every difference ``z_c - m`` is taken with TwoSum so that its rounding error ``dl`` is
put back: ``e^{z_c - m} = e^{dh} (1 + dl)``.

Gradient of the loss of a row with respect to ``z_c`` (``p_c = e^{z_c - m} / (1 + s)``;
``T = (1 - eps) w_y`` the weight of an index target ``y``, 0 for probability targets;
``zl`` the z-loss coefficient)::

    dl/dz_c = P p_c - (T [c = y] + a_c),   P = T + A + 2 zl lse

and at the argmax ``k`` (``p_k = 1 / (1 + s)``), without the cancellation of ``P p_k - 1``
when the row is confident::

    dl/dz_k = ((P - (T [k = y] + a_k)) - (T [k = y] + a_k) s) / (1 + s)

times the soft-cap derivative ``sech^2(x / cap) = 4 e / (1 + e)^2``, ``e = e^{-2|x|/cap}``
(the exact derivative; ``1 - tanh^2`` cancels: off by 2x at ``x/cap = 9`` in float32).
The z-loss is ``zl lse^2`` per counted row, unweighted.

``UPCAST_DOT`` casts ``tl.dot`` operands to float32: the Triton interpreter cannot
multiply bfloat16 tiles; the GPU path keeps them in the storage dtype (float32
accumulation either way).
"""

# mypy: ignore-errors
# (Triton kernels take untyped pointer arguments and untyped decorators; the launchers that
# call them are fully typed.)

from __future__ import annotations

import triton
import triton.language as tl

# ----------------------------------------------------------------------------- helpers


@triton.jit
def _two_diff(a, b):
    # TwoSum of a + (-b): h + l == a - b exactly (Knuth; no branch, no FMA needed).
    h = a - b
    bb = h - a
    l = (a - (h - bb)) - (b + bb)
    return h, l


@triton.jit
def _exp(x):
    # e^x for float32 x to about 1 ulp.  x = k ln2 + r with |r| <= ln2/2 (Cody-Waite:
    # LN2_HI = 0x3f317200 has 9 trailing zero bits, so k * LN2_HI is exact for |k| < 512
    # and x - k * LN2_HI is exact); e^r by its Taylor polynomial to r^7 (truncation
    # r^8/8! < 6e-9 relative); 2^k from the exponent bits in two factors, so that a
    # subnormal result is rounded once.  Below -150 the result is 0 (e^-104 < the
    # smallest subnormal).
    x = tl.minimum(tl.maximum(x, -150.0), 88.0)
    kf = tl.floor(x * 1.4426950408889634 + 0.5)
    r = (x - kf * 0.693145751953125) - kf * 1.428606765330187e-06
    p = 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    k = kf.to(tl.int32)
    k1 = k >> 1  # floor(k / 2): both halves in [-108, 64], normal powers of two
    k2 = k - k1
    s1 = ((k1 + 127) << 23).to(tl.float32, bitcast=True)
    s2 = ((k2 + 127) << 23).to(tl.float32, bitcast=True)
    return (p * s1) * s2


@triton.jit
def _exp_diff(z, m):
    # e^{z - m} for z <= m (to rounding), the rounding error of z - m put back by TwoSum:
    # e^{dh + dl} = e^{dh} (1 + dl) (|dl| <= ulp(dh) / 2, so dl^2 is below rounding).
    # z = -inf gives 0 (not NaN from -inf - -inf in the TwoSum).
    dh, dl = _two_diff(z, m)
    dl = tl.where(dh > -150.0, dl, 0.0)
    return tl.where(z == float("-inf"), 0.0, _exp(dh) * (1.0 + dl))


@triton.jit
def _softcap(x, cap):
    # z = cap tanh(u), u = x / cap, and dz/dx = sech^2(u).  With e = e^{-2|u|} <= 1 (no
    # overflow): tanh|u| = (1 - e) / (1 + e) = -em / (2 + em), em = e^{-2|u|} - 1 taken
    # from its Taylor series (to a^9, truncation < 1e-10 relative) where |2u| < ln2/2 so
    # that small u keeps its digits; sech^2 u = 4 e / (1 + e)^2 (exact, no cancellation).
    u = x / cap
    a = -2.0 * tl.abs(u)
    e = _exp(a)
    q = 1.0 / 362880.0
    q = q * a + 1.0 / 40320.0
    q = q * a + 1.0 / 5040.0
    q = q * a + 1.0 / 720.0
    q = q * a + 1.0 / 120.0
    q = q * a + 1.0 / 24.0
    q = q * a + 1.0 / 6.0
    q = q * a + 0.5
    q = q * a + 1.0
    em = tl.where(a > -0.34657359, q * a, e - 1.0)
    t = -em / (2.0 + em)
    t = tl.where(u < 0.0, -t, t)
    one_e = 1.0 + e
    return cap * t, (4.0 * e) / (one_e * one_e)


@triton.jit
def _log1p_f32(r):
    # log1p(r) for r >= 0 (only for the z-loss coefficient 2 zl lse of the gradient; the
    # loss itself is finished in float64 by the launcher).  log1p(r) = 2 atanh(w), w =
    # r / (2 + r): for r < 0.5, w < 0.2 and the odd series to w^17 is exact to ~1e-14.
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
def _rne(x, ROUND_BF16: tl.constexpr):
    # The Triton interpreter converts float32 to bfloat16 by truncation (the GPU rounds to
    # nearest even): under the interpreter (ROUND_BF16) round here, on the bits (add half
    # an ulp of bfloat16 and the parity bit, clear the low 16 bits), so that the
    # truncating cast that follows is exact.  Finite values only.
    if ROUND_BF16:
        b = x.to(tl.int32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
        x = b.to(tl.float32, bitcast=True)
    return x


@triton.jit
def _merge(m, s, k, A, B, bm, bs, bk, bA, bB):
    # The merge rule of the module notes (crossentropy/torch/_rowstats.py: merge).  m, bm
    # float32; s, A, B, bA, bB float64 (bs float32); k, bk int32.  A running m of -inf
    # (nothing seen yet) has s = A = B = 0 and is replaced.
    m64 = m.to(tl.float64)
    bm64 = bm.to(tl.float64)
    up = bm > m
    fresh = m == float("-inf")
    # exact difference in float64; 0 where either side is -inf (no inf - inf, no 0 * inf)
    diff = tl.where(fresh | (bm == float("-inf")), 0.0, bm64 - m64)
    f = tl.exp(-tl.abs(diff))  # float64 exp: accurate; <= 1
    f = tl.where(fresh | (bm == float("-inf")), 0.0, f)
    bs64 = bs.to(tl.float64)
    s_new = tl.where(up, s * f + f + bs64, s + f * (1.0 + bs64))
    shift_old = A * tl.maximum(diff, 0.0)
    shift_blk = bA * tl.maximum(-diff, 0.0)
    B_new = tl.where(up, B + shift_old + bB, B + bB + shift_blk)
    return (
        tl.maximum(m, bm),
        s_new,
        tl.where(up, bk, k),
        A + bA,
        B_new,
    )


@triton.jit
def _merge_ent(m, s, E, bm, bs, bE):
    # The entropy's sum E = sum_c e^{z_c - m} (m - z_c) (terms >= 0, the maximal one 0) of
    # the running range and of a block, joined relative to the larger maximum before
    # _merge moves m: the side below adds f (E_side + d (1 + s_side)), f = e^{-d}, d the
    # gap of the maxima (crossentropy/torch/_rowstats.py: lift).  f = 0 (nothing seen yet,
    # an empty block, or one far below) adds 0, not 0 * inf.  E, s float64; bE float64.
    up = bm > m
    fresh = m == float("-inf")
    none = fresh | (bm == float("-inf"))
    d = tl.where(none, 0.0, tl.abs(bm.to(tl.float64) - m.to(tl.float64)))
    f = tl.where(none, 0.0, tl.exp(-d))
    old = tl.where(f == 0.0, 0.0, f * (E + d * (1.0 + s)))
    blk = tl.where(f == 0.0, 0.0, f * (bE + d * (1.0 + bs.to(tl.float64))))
    return tl.where(up, old + bE, E + blk)


@triton.jit
def _block_ent(z, e, bm, cmask):
    # sum_c e^{z_c - bm} (bm - z_c) of a block (e: the exponentials, 0 at -inf logits,
    # masked columns and the maximal column, whose term is 0 anyway), float32 terms summed
    # to float64
    d = tl.where(cmask[None, :] & (e != 0.0), bm[:, None] - z, 0.0)  # no 0 * inf
    return tl.sum(e * d, 1).to(tl.float64)


@triton.jit
def _soft_weights(cols, cmask, cw_ptr, t, eps, C, IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    # a_c of the module notes for a block of columns (t: the probability targets of the
    # block when IS_PROB, broadcast against cols; ignored otherwise).
    if HAS_WEIGHT:
        w = tl.load(cw_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    else:
        w = tl.where(cmask, 1.0, 0.0)
    if IS_PROB:
        a = w * ((1.0 - eps) * t + eps / C)
    else:
        a = w * (eps / C)
    return a


@triton.jit
def _tile_soft_weights(target_ptr, stride_t, rows, rmask, cols, cmask, cw_ptr, eps, V,
                       IS_PROB: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    # a_c for a (rows, cols) tile of the linear kernels: [BLOCK_N, BLOCK_V] from the tile's
    # probability targets, or one [1, BLOCK_V] row (index targets: the same for every row)
    if IS_PROB:
        t = tl.load(
            target_ptr + rows.to(tl.int64)[:, None] * stride_t + cols[None, :],
            mask=rmask[:, None] & cmask[None, :],
            other=0.0,
        ).to(tl.float32)
        a = _soft_weights(cols[None, :], cmask[None, :], cw_ptr, t, eps, V, IS_PROB,
                          HAS_WEIGHT)
    else:
        a = _soft_weights(cols, cmask, cw_ptr, 0.0, eps, V, IS_PROB, HAS_WEIGHT)[None, :]
    return a


# ----------------------------------------------------------------------------- kernel 1


@triton.jit
def ce_fwd_kernel(
    x_ptr,
    stride_x,
    target_ptr,
    stride_t,
    cw_ptr,
    m_ptr,
    s_ptr,
    k_ptr,
    A_ptr,
    B_ptr,
    zy_ptr,
    C,
    eps,
    softcap,
    BLOCK_C: tl.constexpr,
    IS_PROB: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SOFT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
):
    """One program per row: the row statistics, from one read of the row.

    Folds each block of logits (and of probability targets) into ``(m, s, k, A, B)``
    (module notes); ``z'_y`` is read separately for index targets.  ``HAS_SOFT``: the a_c
    terms exist (probability targets, or label smoothing).  The loss is finished from the
    statistics by the launcher; the gradient is :func:`ce_bwd_kernel`'s.
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    t_row = target_ptr + row * stride_t
    cols0 = tl.arange(0, BLOCK_C)
    m = tl.max(tl.full([BLOCK_C], float("-inf"), tl.float32), 0)
    s = tl.sum(tl.zeros([BLOCK_C], tl.float64), 0)
    A = tl.sum(tl.zeros([BLOCK_C], tl.float64), 0)
    B = tl.sum(tl.zeros([BLOCK_C], tl.float64), 0)
    k = tl.sum(tl.zeros([BLOCK_C], tl.int32), 0)
    for start in range(0, C, BLOCK_C):
        cols = start + cols0
        cmask = cols < C
        z = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            z, _d = _softcap(z, softcap)
        zm = tl.where(cmask, z, float("-inf"))
        bm = tl.max(zm, 0)
        bk = tl.argmax(zm, 0)  # first maximal column of the block
        e = _exp_diff(tl.where(cmask, z, bm), bm)
        e = tl.where(cmask & (cols0 != bk), e, 0.0)  # the maximal term (= 1) stays out
        bs = tl.sum(e, 0)
        if HAS_SOFT:
            if IS_PROB:
                t = tl.load(t_row + cols, mask=cmask, other=0.0).to(tl.float32)
                a = _soft_weights(cols, cmask, cw_ptr, t, eps, C, IS_PROB, HAS_WEIGHT)
            else:
                a = _soft_weights(cols, cmask, cw_ptr, 0.0, eps, C, IS_PROB, HAS_WEIGHT)
            d = tl.where(cmask & (z != bm), bm - z, 0.0)  # >= 0 (no -inf - -inf)
            bA = tl.sum(a, 0).to(tl.float64)
            bB = tl.sum(tl.where(a == 0.0, 0.0, a * d), 0).to(tl.float64)
        else:
            bA = tl.sum(tl.zeros([BLOCK_C], tl.float64), 0)
            bB = tl.sum(tl.zeros([BLOCK_C], tl.float64), 0)
        m, s, k, A, B = _merge(m, s, k, A, B, bm, bs, (start + bk).to(tl.int32), bA, bB)
    tl.store(m_ptr + row, m)
    tl.store(s_ptr + row, s)
    tl.store(k_ptr + row, k)
    tl.store(A_ptr + row, A)
    tl.store(B_ptr + row, B)
    if not IS_PROB:
        y = tl.load(target_ptr + row).to(tl.int64)
        y_safe = tl.where((y >= 0) & (y < C), y, 0)  # ignored / bad rows: finished later
        zy = tl.load(x_row + y_safe).to(tl.float32)
        if HAS_SOFTCAP:
            zy, _dy = _softcap(zy, softcap)
        tl.store(zy_ptr + row, zy)


@triton.jit
def ce_bwd_kernel(
    x_ptr,
    stride_x,
    target_ptr,
    stride_t,
    cw_ptr,
    m_ptr,
    s_ptr,
    k_ptr,
    A_ptr,
    grad_ptr,
    stride_g,
    gscale_ptr,
    stride_gs,
    C,
    ignore_index,
    eps,
    z_loss,
    softcap,
    BLOCK_C: tl.constexpr,
    IS_PROB: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SOFT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    HAS_ZLOSS: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    ROUND_BF16: tl.constexpr,
):
    """One program per row: ``grad = gscale_row * dl/dx`` from the forward's statistics.

    Reads the row of logits (and of probability targets) once more and writes the
    gradient once (``grad_ptr`` may alias ``x_ptr``: each element is read before the same
    program overwrites it).  ``gscale_ptr[row * stride_gs]`` holds the incoming gradient
    times ``d value / d loss_row`` (``stride_gs = 0``: one scalar for every row), read on
    the device.
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    t_row = target_ptr + row * stride_t
    cols0 = tl.arange(0, BLOCK_C)
    m = tl.load(m_ptr + row)
    s32 = tl.load(s_ptr + row).to(tl.float32)
    k = tl.load(k_ptr + row)
    inv = 1.0 / (1.0 + s32)
    P = tl.load(A_ptr + row).to(tl.float32)
    gscale = tl.load(gscale_ptr + row * stride_gs).to(tl.float32)
    if not IS_PROB:
        y = tl.load(target_ptr + row).to(tl.int64)
        in_range = (y >= 0) & (y < C)
        y_safe = tl.where(in_range, y, 0)
        if HAS_IGNORE:
            ignored = y == ignore_index
        else:
            ignored = y < -(2**62)  # never: nothing is ignored
        if HAS_WEIGHT:
            wy = tl.load(cw_ptr + y_safe).to(tl.float32)
        else:
            wy = 1.0
        T = (1.0 - eps) * wy
        P += T
        gscale = tl.where(ignored, 0.0, gscale)
        # an out-of-range target (not ignored) gives a NaN row: no host sync
        gscale = tl.where((~ignored) & (~in_range), float("nan"), gscale)
    zl = 0.0
    if HAS_ZLOSS:
        zl = 2.0 * z_loss * (m + _log1p_f32(s32))
        P += zl
    g_row = grad_ptr + row * stride_g
    # The argmax entry needs P - tgt_k = zl + sum_{c != k} tgt_c, which P - tgt_k itself
    # would form with cancellation (P ~ tgt_k ~ 1 for a confident, smoothed row): the sum
    # of the other coefficients is accumulated while the row is written, and the entry is
    # written last.
    rest = tl.sum(tl.zeros([BLOCK_C], tl.float64), 0)
    tgt_k = 0.0
    dcap_k = 1.0
    for start in range(0, C, BLOCK_C):
        cols = start + cols0
        cmask = cols < C
        z = tl.load(x_row + cols, mask=cmask, other=0.0).to(tl.float32)
        if HAS_SOFTCAP:
            z, dcap = _softcap(z, softcap)
        p = _exp_diff(tl.where(cmask, z, m), m) * inv
        tgt = tl.zeros([BLOCK_C], tl.float32)
        if not IS_PROB:
            tgt += tl.where(cols == y, T, 0.0)
        if HAS_SOFT:
            if IS_PROB:
                t = tl.load(t_row + cols, mask=cmask, other=0.0).to(tl.float32)
                tgt += _soft_weights(cols, cmask, cw_ptr, t, eps, C, IS_PROB, HAS_WEIGHT)
            else:
                tgt += _soft_weights(cols, cmask, cw_ptr, 0.0, eps, C, IS_PROB, HAS_WEIGHT)
        g = P * p - tgt
        at_k = cols == k
        rest += tl.sum(tl.where(cmask & (~at_k), tgt, 0.0), 0).to(tl.float64)
        tgt_k += tl.sum(tl.where(at_k, tgt, 0.0), 0)
        if HAS_SOFTCAP:
            dcap_k = tl.where(tl.sum(at_k.to(tl.int32), 0) > 0,
                              tl.sum(tl.where(at_k, dcap, 0.0), 0), dcap_k)
            g = g * dcap
        g = g * gscale
        if not IS_PROB:
            g = tl.where(ignored, 0.0, g)  # 0, also where the logits are inf
        g = _rne(g, ROUND_BF16)
        tl.store(g_row + cols, g.to(grad_ptr.dtype.element_ty), mask=cmask & (~at_k))
    # the argmax entry: ((P - tgt_k) - tgt_k s) / (1 + s), p_k = 1 / (1 + s)
    gk = (((rest.to(tl.float32) + zl) - tgt_k * s32) * inv) * dcap_k * gscale
    if not IS_PROB:
        gk = tl.where(ignored, 0.0, gk)
    gk = _rne(gk, ROUND_BF16)
    tl.store(g_row + k, gk.to(grad_ptr.dtype.element_ty), mask=(k >= 0) & (k < C))


# ----------------------------------------------------------------------------- kernel 2


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
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """The (BLOCK_N, BLOCK_V) tile ``h[rows] @ W[cols]^T + b[cols]`` in float32, on chip."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    dk0 = tl.arange(0, BLOCK_D)
    # 64-bit row offsets (V * D may exceed 2^31), built once; pointers advance by BLOCK_D
    h_ptrs = h_ptr + rows.to(tl.int64)[:, None] * stride_h + dk0[None, :]
    w_ptrs = w_ptr + cols.to(tl.int64)[:, None] * stride_w + dk0[None, :]
    for d0 in range(0, D, BLOCK_D):
        dmask = (d0 + dk0) < D
        h = tl.load(h_ptrs, mask=rmask[:, None] & dmask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=cmask[:, None] & dmask[None, :], other=0.0)
        if UPCAST_DOT:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision=DOT_PRECISION)
        h_ptrs += BLOCK_D
        w_ptrs += BLOCK_D
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    return acc


@triton.jit
def _read_tile(x_ptr, rows, rmask, cols, cmask, stride_x):
    """The (BLOCK_N, BLOCK_V) tile ``x[rows, cols]`` of a logits tensor, in float32."""
    ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :]
    return tl.load(ptrs, mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)


@triton.jit
def _tile(h_ptr, w_ptr, b_ptr, rows, rmask, cols, cmask, stride_h, stride_w, D, softcap, tau,
          BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
          HAS_BIAS: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
          HAS_SOFTCAP: tl.constexpr, HAS_TEMP: tl.constexpr, FROM_LOGITS: tl.constexpr):
    """The tile of logits the fused kernels work on, ``z' = softcap(z) / tau`` (``z`` read
    from a logits tensor, or ``h W^T + b`` formed on chip), and the soft cap's derivative
    ``sech^2(z / cap)`` (the tile itself where there is no soft cap: unused)."""
    if FROM_LOGITS:
        z = _read_tile(h_ptr, rows, rmask, cols, cmask, stride_h)
    else:
        z = _logits_tile(
            h_ptr, w_ptr, b_ptr, rows, rmask, cols, cmask, stride_h, stride_w, D,
            BLOCK_N, BLOCK_V, BLOCK_D, HAS_BIAS, UPCAST_DOT, DOT_PRECISION,
        )
    dcap = z
    if HAS_SOFTCAP:
        z, dcap = _softcap(z, softcap)
    if HAS_TEMP:
        z = tl.math.div_rn(z, tl.zeros_like(z) + tau)  # correctly rounded
    return z, dcap


@triton.jit
def lce_fwd_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    target_ptr,
    stride_t,
    cw_ptr,
    m_ptr,
    s_ptr,
    k_ptr,
    A_ptr,
    B_ptr,
    zy_ptr,
    ent_ptr,
    N,
    V,
    D,
    stride_h,
    stride_w,
    eps,
    softcap,
    tau,
    SPLIT: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_PROB: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SOFT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HAS_TEMP: tl.constexpr = False,
    HAS_ENT: tl.constexpr = False,
    FROM_LOGITS: tl.constexpr = False,
):
    """Program (i, j): rows block i, the j-th of SPLIT contiguous ranges of vocabulary blocks.

    Each logits tile lives only on chip: it is folded into the running ``(m, s, k, A, B)`` of
    its rows (module notes) and ``z'_y`` is picked from it.  The statistics of each range
    go to ``[SPLIT, N]`` buffers, merged afterwards by the launcher in a fixed order
    (deterministic).  ``HAS_TEMP``: the logits are ``softcap(z) / tau`` (one rounding);
    ``HAS_ENT``: the entropy's sum ``E`` of each range goes to ``ent_ptr`` too;
    ``FROM_LOGITS``: ``h_ptr`` holds the logits themselves (row stride ``stride_h``), read
    a tile at a time instead of formed from ``h`` and ``W``.
    """
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    if IS_PROB:
        y = tl.full([BLOCK_N], -1, tl.int64)
    else:
        y = tl.load(target_ptr + rows, mask=rmask, other=-1).to(tl.int64)
    n_vblocks = tl.cdiv(V, BLOCK_V)
    per = tl.cdiv(n_vblocks, SPLIT)
    v_start = pid_s * per * BLOCK_V
    v_end = tl.minimum(V, v_start + per * BLOCK_V)

    m = tl.full([BLOCK_N], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_N], tl.float64)
    A = tl.zeros([BLOCK_N], tl.float64)
    B = tl.zeros([BLOCK_N], tl.float64)
    k = tl.zeros([BLOCK_N], tl.int32)
    zy = tl.zeros([BLOCK_N], tl.float32)
    E = tl.zeros([BLOCK_N], tl.float64)
    cols0 = tl.arange(0, BLOCK_V)
    for v0 in range(v_start, v_end, BLOCK_V):
        cols = v0 + cols0
        cmask = cols < V
        z, _d = _tile(
            h_ptr, w_ptr, b_ptr, rows, rmask, cols, cmask, stride_h, stride_w, D, softcap,
            tau, BLOCK_N, BLOCK_V, BLOCK_D, HAS_BIAS, UPCAST_DOT, DOT_PRECISION, HAS_SOFTCAP,
            HAS_TEMP, FROM_LOGITS,
        )
        zm = tl.where(cmask[None, :], z, float("-inf"))
        bm = tl.max(zm, 1)
        bk = tl.argmax(zm, 1)
        e = _exp_diff(tl.where(cmask[None, :], z, bm[:, None]), bm[:, None])
        e = tl.where(cmask[None, :] & (cols0[None, :] != bk[:, None]), e, 0.0)
        bs = tl.sum(e, 1)
        if HAS_ENT:
            E = _merge_ent(m, s, E, bm, bs, _block_ent(z, e, bm, cmask))
        zy += tl.sum(tl.where(cols[None, :] == y[:, None], z, 0.0), 1)
        if HAS_SOFT:
            a = _tile_soft_weights(target_ptr, stride_t, rows, rmask, cols, cmask, cw_ptr, eps,
                                   V, IS_PROB, HAS_WEIGHT)
            a = tl.broadcast_to(a, [BLOCK_N, BLOCK_V])
            d = tl.where(cmask[None, :] & (z != bm[:, None]), bm[:, None] - z, 0.0)
            bA = tl.sum(a, 1).to(tl.float64)
            bB = tl.sum(tl.where(a == 0.0, 0.0, a * d), 1).to(tl.float64)
        else:
            bA = tl.zeros([BLOCK_N], tl.float64)
            bB = tl.zeros([BLOCK_N], tl.float64)
        m, s, k, A, B = _merge(m, s, k, A, B, bm, bs, (v0 + bk).to(tl.int32), bA, bB)
    out = pid_s * N + rows
    tl.store(m_ptr + out, m, mask=rmask)
    tl.store(s_ptr + out, s, mask=rmask)
    tl.store(k_ptr + out, k, mask=rmask)
    tl.store(A_ptr + out, A, mask=rmask)
    tl.store(B_ptr + out, B, mask=rmask)
    tl.store(zy_ptr + out, zy, mask=rmask)
    if HAS_ENT:
        tl.store(ent_ptr + out, E, mask=rmask)


@triton.jit
def lce_bwd_logits_kernel(
    h_ptr,
    w_ptr,
    b_ptr,
    target_ptr,
    stride_t,
    cw_ptr,
    m_ptr,
    s_ptr,
    k_ptr,
    cP_ptr,
    cT_ptr,
    cA_ptr,
    cK_ptr,
    cH_ptr,
    g_ptr,
    N,
    V,
    D,
    v_lo,
    v_hi,
    stride_h,
    stride_w,
    eps,
    softcap,
    tau,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    IS_PROB: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SOFT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ROUND_BF16: tl.constexpr,
    HAS_TEMP: tl.constexpr = False,
    HAS_ENT: tl.constexpr = False,
    FROM_LOGITS: tl.constexpr = False,
):
    """Program (i, j): rows block i, vocabulary block j of the chunk ``[v_lo, v_hi)``.

    Recomputes the logits tile and writes ``G = dL/dx`` (module notes; the per-row
    coefficients ``cP = g P``, ``cT = g T``, ``cA = g`` already hold the reduction, the base
    and the incoming gradient ``g``; ``cK = g (P - tgt_k)``, formed by the launcher without
    the cancellation of ``P - tgt_k``, gives the argmax entry) into the chunk buffer
    ``g_ptr`` ``[N, v_hi - v_lo]`` in the storage dtype.  Each element is written once: no atomics.
    ``HAS_TEMP``: logits ``softcap(z) / tau``, derivative ``sech^2 / tau``; ``HAS_ENT``: the
    entropy's term ``cH p_c (z_c - m)`` is added (``cH = -g_H``; 0 at the maximum, so the
    argmax entry is unchanged); ``FROM_LOGITS``: the logits are read from ``h_ptr`` (then
    ``g_ptr`` is their whole gradient, ``v_lo = 0``, ``v_hi = V``).
    """
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    cols = v_lo + pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    cmask = cols < v_hi
    z, dcap = _tile(
        h_ptr, w_ptr, b_ptr, rows, rmask, cols, cmask, stride_h, stride_w, D, softcap, tau,
        BLOCK_N, BLOCK_V, BLOCK_D, HAS_BIAS, UPCAST_DOT, DOT_PRECISION, HAS_SOFTCAP, HAS_TEMP,
        FROM_LOGITS,
    )
    m = tl.load(m_ptr + rows, mask=rmask, other=0.0)
    s = tl.load(s_ptr + rows, mask=rmask, other=0.0)
    kk = tl.load(k_ptr + rows, mask=rmask, other=-1)
    cP = tl.load(cP_ptr + rows, mask=rmask, other=0.0)
    cA = tl.load(cA_ptr + rows, mask=rmask, other=0.0)
    inv = 1.0 / (1.0 + s)
    p = _exp_diff(tl.where(cmask[None, :], z, m[:, None]), m[:, None]) * inv[:, None]
    if IS_PROB:
        tgt = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
    else:
        y = tl.load(target_ptr + rows, mask=rmask, other=-1).to(tl.int64)
        cT = tl.load(cT_ptr + rows, mask=rmask, other=0.0)
        tgt = tl.where(cols[None, :] == y[:, None], cT[:, None], 0.0)
    if HAS_SOFT:
        a = _tile_soft_weights(target_ptr, stride_t, rows, rmask, cols, cmask, cw_ptr, eps, V,
                               IS_PROB, HAS_WEIGHT)
        tgt += cA[:, None] * a
    g = cP[:, None] * p - tgt
    if HAS_ENT:
        # d H / d z_c = -p_c (z_c - m) - p_c Ebar: the second part is in cP
        cH = tl.load(cH_ptr + rows, mask=rmask, other=0.0)
        zd = tl.where(p == 0.0, 0.0, z - m[:, None])  # 0 at a -inf logit, not 0 * inf
        g += cH[:, None] * p * zd
    at_k = cols[None, :] == kk[:, None]
    cK = tl.load(cK_ptr + rows, mask=rmask, other=0.0)
    g = tl.where(at_k, (cK[:, None] - tgt * s[:, None]) * inv[:, None], g)
    if HAS_SOFTCAP:
        g = g * dcap
    if HAS_TEMP:
        g = tl.math.div_rn(g, tl.zeros_like(g) + tau)
    g = tl.where(rmask[:, None] & cmask[None, :], g, 0.0)
    width = v_hi - v_lo
    out = g_ptr + rows.to(tl.int64)[:, None] * width + (cols - v_lo)[None, :]
    g = _rne(g, ROUND_BF16)
    tl.store(out, g.to(g_ptr.dtype.element_ty), mask=rmask[:, None] & cmask[None, :])


@triton.jit
def lce_bwd_weight_kernel(
    g_ptr,
    h_ptr,
    dw_ptr,
    db_ptr,
    N,
    D,
    v_lo,
    v_hi,
    stride_h,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_DW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ROUND_BF16: tl.constexpr,
):
    """Program (j, d): ``dW[cols, dcols] = G[:, cols]^T @ h[:, dcols]`` over all rows.

    A plain GEMM over the chunk buffer (float32 accumulation over the N rows on chip, one
    rounding to ``dw``'s dtype, no atomics); programs with ``d = 0`` also write
    ``db[cols] = sum_rows G`` (float32).
    """
    pid_v = tl.program_id(0)
    pid_d = tl.program_id(1)
    width = v_hi - v_lo
    lcols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # columns of the chunk buffer
    cmask = lcols < width
    dcols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dcols < D
    acc = tl.zeros([BLOCK_V, BLOCK_D], dtype=tl.float32)
    dbacc = tl.zeros([BLOCK_V], dtype=tl.float32)
    r0 = tl.arange(0, BLOCK_N)
    # pointer tiles advanced by BLOCK_N rows per step (64-bit offsets built once)
    g_ptrs = g_ptr + r0.to(tl.int64)[:, None] * width + lcols[None, :]
    h_ptrs = h_ptr + r0.to(tl.int64)[:, None] * stride_h + dcols[None, :]
    for n0 in range(0, N, BLOCK_N):
        rmask = (n0 + r0) < N
        g = tl.load(g_ptrs, mask=rmask[:, None] & cmask[None, :], other=0.0)
        if HAS_BIAS:
            dbacc += tl.sum(g.to(tl.float32), 0)
        if HAS_DW:
            h = tl.load(h_ptrs, mask=rmask[:, None] & dmask[None, :], other=0.0)
            if UPCAST_DOT:
                g = g.to(tl.float32)
                h = h.to(tl.float32)
            acc = tl.dot(tl.trans(g), h, acc, input_precision=DOT_PRECISION)
        g_ptrs += BLOCK_N * width
        h_ptrs += BLOCK_N * stride_h
    vrows = (v_lo + lcols).to(tl.int64)
    if HAS_DW:
        tl.store(
            dw_ptr + vrows[:, None] * D + dcols[None, :],
            _rne(acc, ROUND_BF16).to(dw_ptr.dtype.element_ty),
            mask=cmask[:, None] & dmask[None, :],
        )
    if HAS_BIAS:
        if pid_d == 0:
            tl.store(db_ptr + vrows, dbacc, mask=cmask)


@triton.jit
def lce_bwd_hidden_kernel(
    g_ptr,
    w_ptr,
    dh_ptr,
    N,
    D,
    v_lo,
    v_hi,
    stride_w,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
    FIRST: tl.constexpr,
    UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """Program (i, d): ``dH[rows, dcols] (+)= G[rows, :] @ W[v_lo:v_hi, dcols]``.

    ``dh`` is float32 [N, D]; each tile is owned by one program (read, add the chunk's
    product accumulated in float32 on chip, write back; ``FIRST``: no read): no atomics.
    """
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    width = v_hi - v_lo
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rmask = rows < N
    dcols = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = dcols < D
    acc = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    k0 = tl.arange(0, BLOCK_V)
    # pointer tiles advanced by BLOCK_V columns of the chunk per step
    g_ptrs = g_ptr + rows.to(tl.int64)[:, None] * width + k0[None, :]
    w_ptrs = w_ptr + (v_lo + k0).to(tl.int64)[:, None] * stride_w + dcols[None, :]
    for c0 in range(0, width, BLOCK_V):
        kmask = (c0 + k0) < width
        g = tl.load(g_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=kmask[:, None] & dmask[None, :], other=0.0)
        if UPCAST_DOT:
            g = g.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(g, w, acc, input_precision=DOT_PRECISION)
        g_ptrs += BLOCK_V
        w_ptrs += BLOCK_V * stride_w
    ptrs = dh_ptr + rows.to(tl.int64)[:, None] * D + dcols[None, :]
    tmask = rmask[:, None] & dmask[None, :]
    if not FIRST:
        acc += tl.load(ptrs, mask=tmask, other=0.0)
    tl.store(ptrs, acc, mask=tmask)
