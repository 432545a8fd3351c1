# mypy: ignore-errors
# (numba compiles and types this module; its decorators are untyped for mypy)
"""The cross-entropy of index targets, per row: loss, log-sum-exp and gradient.

The compiled body (``_ce_chunk``: a range of rows, which the entry points run on several
threads, ``_pool``) and the check of index targets; the entry points ``ce_rows`` /
``ce_rows_into`` are in ``_kernels``.
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np

from ._exp import exp_le0, two_diff
from ._jit import _FAST, _STRICT, _cache
from ._llvm import (
    _LINE,
    _grad_line,
    _inline,
    _is_f64,
    _line_head,
    _store_fence,
    _stream_line,
    _stream_row,
    _wide,
)
from ._rowpick import _next_row, _row_stats
from ._rows import (
    _SHORT,
    _SUMBLK64,
    _at,
    _one_pass_blocks,
    _one_plus,
    _row_stats_short,
)

# --------------------------------------------------------------------------- cross-entropy
#
# The numba side of ``crossentropy._core.categorical.logits_rows`` for index targets, in the
# same pieces and with the same names for the same quantities.  For row i with logits x,
# soft-capped logits z = c tanh(x / c) (z = x without a cap), target y, smoothing eps, class
# weights w (1 without weights) and C classes:
#
#   row statistics  m = max z, k = first argmax, s = sum_{c != k} e^{z_c - m}, L = log1p(s)
#                   (``_row_stats``; lse = m + L)
#   coefficients    a_c = w_c t'_c with t' = (1 - eps) onehot(y) + eps / C, W = sum_c a_c
#                   (``_row_coefficients``)
#   loss            -log softmax_c = (L - dh_c) - dl_c (two terms >= 0, ``_nls``), so
#                   an index target costs a_y ((m - z_y) + L) and smoothing and weights
#                   sum_c a_c ((L - dh_c) - dl_c)  (``_row_loss``), plus the z-loss
#                   zeta lse^2 of every counted row, never weighted
#   gradient        dl/dz_c = p_c W' - a_c with W' = W + 2 zeta lse, and at the argmax
#                   ((W' - a_k) - a_k s) / (1 + s)  (``_row_grad``), times the soft cap's
#                   dz/dx = sech^2(x / c) (``_softcap_row``)
#
# Rows whose maximum is +inf (the +inf entries share the mass), all -inf, or with a NaN are
# handled apart (``_row_loss_special``, ``_row_grad_special``), as in the core.


@nb.njit(fastmath=_STRICT, **_cache)
def _nls(v: float, m: float, L: float, exact: bool) -> float:
    """-log softmax_c = (L - dh) - dl for z_c = v, two terms >= 0 (dh + dl = v - m, TwoSum).

    (float32 logits: v - m is exact in float64, so dl = 0.)
    """
    if exact:
        dh, dl = two_diff(v, m)
        return (L - dh) - dl
    return L - (v - m)


@nb.njit(fastmath=_FAST, **_cache)
def _smooth_sum(z: Any, i: int, m: float, L: float, exact: bool, weight: Any,
                has_w: bool) -> float:
    """sum_c w_c (-log softmax_c): the smoothing term, before its factor eps / C (of row i
    of z, or of the row z: see _at)."""
    _inline()  # into the short-row loop of _ce_chunk (see _inline)
    _wide()  # 512-bit vectors (see _wide)
    acc = 0.0
    for j in range(z.shape[-1]):
        t = _nls(np.float64(_at(z, i, j)), m, L, exact)
        if has_w:
            acc += weight[j] * t if weight[j] != 0.0 else 0.0  # 0 * inf = 0 (no term)
        else:
            acc += t
    return acc


@nb.njit(fastmath=_STRICT, **_cache)
def _row_coefficients(wy: float, eps: float, C: int, wsum: float) -> tuple[float, float, float]:
    """(a_y, sm, W) of an index target, ``_core.categorical.target_coefficients`` per row.

    t' = (1 - eps) onehot(y) + eps / C gives a_y = w_y ((1 - eps) + eps / C), a_c = w_c sm
    for c != y with sm = eps / C, and W = sum_c a_c = w_y (1 - eps) + sm sum_c w_c.
    """
    sm = eps / C
    return wy * ((1.0 - eps) + sm), sm, wy * (1.0 - eps) + sm * wsum


@nb.njit(**_cache)
def _row_loss(z: Any, i: int, zy: float, m: float, L: float, exact: bool, wy: float,
              eps: float, sm: float, weight: Any, has_w: bool) -> float:
    """sum_c a_c (-log softmax_c) of a row with a finite maximum (no z-loss): row i of z,
    or the row z (see _at).

    Index target: a_y ((m - z_y) + L), written (L - dh_y) - dl_y.  With smoothing,
    a_y = w_y (1 - eps) + sm w_y: the w_y (1 - eps) part multiplies -log softmax_y, the sm
    w_y part joins the others in sm sum_c w_c (-log softmax_c).  A zero coefficient adds
    nothing, even against an infinite -log softmax (0 * inf = 0).
    """
    _inline()  # into the short-row loop of _ce_chunk (see _inline)
    _wide()  # 512-bit vectors (see _wide)
    nly = _nls(zy, m, L, exact)
    if eps == 0.0:
        return wy * nly if wy != 0.0 else 0.0
    hard = wy * (1.0 - eps)
    tot = _smooth_sum(z, i, m, L, exact, weight, has_w)
    return (hard * nly if hard != 0.0 else 0.0) + sm * tot


@nb.njit(**_cache)
def _row_loss_special(zr: Any, kind: int, y: int, wy: float, eps: float, sm: float,
                      weight: Any, has_w: bool) -> float:
    """Loss of a row whose maximum is +inf (kind 1) or that has no distribution (NaN).

    +inf maximum: the cnt entries at +inf share the mass, -log softmax_c = log(cnt) there
    and +inf elsewhere (``_core.rows.inf_share``).
    """
    _wide()  # 512-bit vectors (see _wide)
    if kind != 1:
        return np.nan
    C = zr.shape[0]
    cnt = 0
    for j in range(C):
        if zr[j] == np.inf:
            cnt += 1
    li = 0.0
    for j in range(C):
        aj = (weight[j] if has_w else 1.0) * sm + (wy * (1.0 - eps) if j == y else 0.0)
        if aj != 0.0:
            li += aj * (math.log(cnt) if zr[j] == np.inf else np.inf)
    return li


@nb.njit(fastmath=_STRICT, **_cache)
def _g1(e: float, d: float, c: float, exact: bool, Wz: float, b: float, f: float, t: float,
        capped: bool) -> float:
    # grad_c = f (p_c W' - a_c) with p_c = e_c / (1 + s): exact, d = 1 + s rounded and c its
    # rounding error over d (one division, 0.5 ulp); float32 output, d = 1 / (1 + s).
    # a_c = b.  Under a soft cap, times t = dz/dx = sech^2(x_c / cap).
    if exact:
        q = e / d
        p = q - q * c
    else:
        p = e * d
    g = (p * Wz - b) * f
    return g * t if capped else g


@nb.njit(fastmath=_FAST, **_cache)
def _grad_write(buf: Any, d: float, c: float, exact: bool, Wz: float, base: float, f: float,
                weight: Any, has_w: bool, db: Any, capped: bool, grow: Any) -> None:
    """grow[c] = f (p_c W' - a_c) dz/dx for every class with a_c = base w_c (the classes
    other than y; the caller then writes the target and the argmax entries)."""
    _inline()  # into the short-row loop of _ce_chunk (see _inline)
    _wide()  # 512-bit vectors (see _wide)
    if has_w:
        for j in range(grow.shape[0]):
            t = db[j] if capped else 0.0
            grow[j] = _g1(buf[j], d, c, exact, Wz, base * weight[j], f, t, capped)
    else:
        for j in range(grow.shape[0]):
            t = db[j] if capped else 0.0
            grow[j] = _g1(buf[j], d, c, exact, Wz, base, f, t, capped)


@nb.njit(**_cache)
def _row_grad(buf: Any, s: float, k: int, y: int, exact: bool, W: float, ay: float,
              sm: float, wsum: float, wy: float, zl2: float, weight: Any, has_w: bool,
              scale: float, capped: bool, db: Any, grow: Any, stream: bool, sc: Any) -> None:
    """scale d loss / dx of a row with a finite maximum, ``_core.categorical._logits_grad``.

    buf holds e_c = e^{z_c - m} (buf[k] = 1); zl2 = 2 zeta lse (0 without z-loss), so that
    W' = W + zl2 (d(zeta lse^2)/dz_c = 2 zeta lse p_c).  ``stream`` (no class weights, no
    soft cap): the whole cache lines of grow are stored non-temporally (``_stream_grad``;
    sc: its one-line scratch).
    """
    _inline()  # into the short-row loop of _ce_chunk (see _inline)
    _wide()  # 512-bit vectors (see _wide)
    Wz = W + zl2
    # float64: divide by 1 + s = S + S_lo (0.5 ulp); float32 output: times 1 / (1 + s)
    S, cS = _one_plus(s)
    d = S if exact else 1.0 / (1.0 + s)
    if not stream:
        _grad_write(buf, d, cS, exact, Wz, sm, scale, weight, has_w, db, capped, grow)
    # the target class: p_y W' - a_y
    ak = ay if k == y else (weight[k] if has_w else 1.0) * sm
    qy = buf[y] / S
    gy = ((qy - qy * cS) * Wz - ay) * scale
    # the argmax k: p_k = 1 / (1 + s), so p_k W' - a_k = ((W' - a_k) - a_k s) / (1 + s),
    # with W' - a_k summed directly: exact for one-hot targets and confident rows
    # (p_k - 1 = -s / (1 + s), not 1 - 1 + tiny).
    if k == y:  # the smoothing shares of the other classes
        rest = sm * (wsum - wy) + zl2
    else:
        rest = (W - ak) + zl2
    gk = ((rest - ak * s) / (1.0 + s)) * scale
    if capped:
        gy *= db[y]
        gk *= db[k]
    if stream:
        _stream_grad(buf, d, cS, exact, Wz, sm, scale, y, gy, k, gk, grow, sc)
    else:
        grow[y] = gy
        grow[k] = gk


@nb.njit(**_cache)
def _stream_grad(buf: Any, d: float, c: float, exact: bool, Wz: float, base: float,
                 f: float, y: int, gy: float, k: int, gk: float, grow: Any, sc: Any) -> None:
    """``_grad_write`` without class weights or soft cap, then grow[y] = gy and grow[k] =
    gk, with the whole cache lines of grow stored non-temporally.  The lines of y and k
    are formed in a one-line scratch, patched there and streamed from it: an ordinary
    store into a line of a large result would first read the line from memory.  (sc: 64
    bytes of grow's dtype.)"""
    n = grow.shape[0]
    w = _LINE // grow.itemsize
    e0 = buf[:0]
    j = _line_head(grow)
    _grad_write(buf[:j], d, c, exact, Wz, base, f, e0, False, e0, False, grow[:j])
    while j + w <= n:
        if j <= y < j + w or j <= k < j + w:
            _grad_write(buf[j : j + w], d, c, exact, Wz, base, f, e0, False, e0, False, sc)
            if j <= y < j + w:
                sc[y - j] = gy
            if j <= k < j + w:
                sc[k - j] = gk
            _stream_line(sc, 0, grow, j)
        else:
            _grad_line(buf, j, grow, j, d, c, Wz, base, f)
        j += w
    _grad_write(buf[j:n], d, c, exact, Wz, base, f, e0, False, e0, False, grow[j:])
    if y < _line_head(grow) or y >= j:  # y or k in the partial lines at either end
        grow[y] = gy
    if k < _line_head(grow) or k >= j:
        grow[k] = gk


@nb.njit(**_cache)
def _row_grad_special(zr: Any, kind: int, y: int, wy: float, eps: float, sm: float,
                      Wz: float, weight: Any, has_w: bool, scale: float, capped: bool,
                      db: Any, grow: Any) -> None:
    """Gradient of a +inf-maximum row (share_c W' - a_c, the +inf entries sharing the
    mass) or NaN for a row with no distribution."""
    _wide()  # 512-bit vectors (see _wide)
    C = grow.shape[0]
    if kind != 1:
        for j in range(C):
            grow[j] = np.nan
        return
    cnt = 0
    for j in range(C):
        if zr[j] == np.inf:
            cnt += 1
    for j in range(C):
        share = 1.0 / cnt if zr[j] == np.inf else 0.0
        aj = (weight[j] if has_w else 1.0) * sm + (wy * (1.0 - eps) if j == y else 0.0)
        g = (share * Wz - aj) * scale
        grow[j] = g * db[j] if capped else g


@nb.njit(fastmath=_STRICT, **_cache)
def _softcap_row(xr: Any, cap: float, zb: Any, db: Any) -> None:
    """zb = cap tanh(u) and db = dz/dx = sech^2 u = 4 q / (1 + q)^2, q = e^{-2|u|}, u = x / cap.

    ``_core.categorical.softcap``: with q <= 1 nothing cancels (1 - tanh^2 u loses every
    digit once tanh rounds to 1; (1 - t)(1 + t) is off by 2x at u = 9 in float32) and
    nothing overflows (cosh does at |u| = 710).  A NaN gives db = 0 here, but its row is
    a NaN row whose gradient is NaN anyway.
    """
    _wide()  # 512-bit vectors (see _wide)
    for j in range(xr.shape[0]):
        u = np.float64(xr[j]) / cap
        zb[j] = cap * math.tanh(u)
        q = exp_le0(-2.0 * abs(u))
        db[j] = 4.0 * q / ((1.0 + q) * (1.0 + q))


@nb.njit(**_cache)
def index_targets(target: Any, C: int, ignore_index: int) -> tuple[int, int]:
    """(first position i with target[i] outside [0, C) and not ignore_index, or -1; the
    number of targets other than ignore_index): the check and the count of a mean's
    divisor in one pass (the torch layer's CPU path: three torch calls cost more)."""
    counted = 0
    for i in range(target.shape[0]):
        y = target[i]
        if y == ignore_index:
            continue
        if y < 0 or y >= C:
            return i, counted
        counted += 1
    return -1, counted


@nb.njit(**_cache)
def _weight_sum(weight: Any, has_w: bool, C: int) -> float:
    """sum_c w_c (C without weights), in class order."""
    _wide()  # 512-bit vectors (see _wide)
    if not has_w:
        return float(C)
    wsum = 0.0
    for j in range(C):
        wsum += weight[j]
    return wsum


# Gradient rows of at least this many classes are streamed line by line from registers
# (``_stream_grad``); shorter ones through a scratch row, as before: at 1000-4096 classes
# the direct write's per-row set-up (the partial lines at both ends, the two patched
# lines) cost more than the scratch row's extra pass over cache (float32 ce_grad_out
# 1.15-1.30x the scratch row's time at 1000 and 2048 classes, 0.90 at 32,000 and 128,256;
# bench/cpu.py --against, 5 pairs, AMD Zen 4, 2026-12-02).
_DIRECT_GRAD_MIN = 8192


@nb.njit(nogil=True, **_cache)
def _ce_chunk(x: Any, target: Any, weight: Any, has_w: bool, ignore_index: int, eps: float,
              z_loss: float, cap: float, grad: Any, want_grad: bool, grad_scale: float,
              loss: Any, lse: Any, lo: int, hi: int, stream: bool, wsum: float) -> None:
    """ce_rows on rows lo..hi-1 (one thread); wsum = sum_c w_c.  ``stream``: the gradient
    goes to memory by non-temporal stores, line by line from registers (``_stream_grad``)
    or, with class weights or a soft cap, formed in a scratch row (in cache) first."""
    _wide()  # 512-bit vectors (see _wide)
    exact = _is_f64(x)  # (a constant: each callee is compiled for x's dtype only)
    C = x.shape[1]
    capped = cap > 0.0
    # (else through the scratch row: also for rows shorter than _DIRECT_GRAD_MIN)
    direct = stream and not capped and not has_w and C >= _DIRECT_GRAD_MIN
    short = C <= _SHORT and not capped  # (rows read in place: see _at)
    # the exponentials (want_grad or short rows: exactly C long, see _row_stats_short),
    # else the block buffer
    buf = np.empty(C if want_grad or short else _SUMBLK64)
    mb = np.empty(_one_pass_blocks(C) if want_grad else 0)
    db = np.empty(C if capped else 0)
    zb = np.empty(C if capped else 0)
    grow_s = np.empty(C if stream and not direct else 0, dtype=grad.dtype)
    line_s = np.empty(_LINE // grad.itemsize, dtype=grad.dtype)  # (_stream_grad)
    for i in range(lo, hi):
        y = target[i]
        # row statistics of z (soft-capped into zb, float64) or of the logits themselves
        if capped:
            _softcap_row(x[i], cap, zb, db)
            m, s, k, kind = _row_stats(zb, buf, want_grad, zb[:0], mb)
        elif short:
            m, s, k, kind = _row_stats_short(x, i, exact, buf)
        else:
            m, s, k, kind = _row_stats(x[i], buf, want_grad, _next_row(x, i, hi, want_grad),
                                       mb)
        L = math.log1p(s)
        lse[i] = m + L if kind == 0 else (np.nan if kind == 3 else m)
        if y == ignore_index:
            loss[i] = 0.0
            if want_grad and stream and not direct:
                grow_s[:] = 0.0
                _stream_row(grow_s, grad[i])
            elif want_grad:
                grad[i] = 0.0
            continue
        wy = weight[y] if has_w else 1.0
        ay, sm, W = _row_coefficients(wy, eps, C, wsum)
        # (zb and x differ in dtype for float32 logits: numba types each call apart)
        if kind == 0 and capped:  # zb is float64: TwoSum differences
            li = _row_loss(zb, 0, zb[y], m, L, True, wy, eps, sm, weight, has_w)
        elif kind == 0:
            li = _row_loss(x, i, np.float64(x[i, y]), m, L, exact, wy, eps, sm, weight,
                           has_w)
        elif capped:
            li = _row_loss_special(zb, kind, y, wy, eps, sm, weight, has_w)
        else:
            li = _row_loss_special(x[i], kind, y, wy, eps, sm, weight, has_w)
        if z_loss != 0.0:
            li += z_loss * lse[i] * lse[i]  # PaLM z-loss, unweighted
        loss[i] = li
        if not want_grad:
            continue
        zl2 = 2.0 * z_loss * lse[i] if z_loss != 0.0 else 0.0
        # the row is formed in grad[i] itself, or in grow_s and streamed from there (the
        # view grad[i] made in each call, not held in a variable: see _at)
        if kind != 0 and capped:
            _row_grad_special(zb, kind, y, wy, eps, sm, W + zl2, weight, has_w, grad_scale,
                              True, db, grad[i] if direct or not stream else grow_s)
        elif kind != 0:
            _row_grad_special(x[i], kind, y, wy, eps, sm, W + zl2, weight, has_w, grad_scale,
                              False, db, grad[i] if direct or not stream else grow_s)
        elif direct or not stream:
            _row_grad(buf, s, k, y, exact or capped, W, ay, sm, wsum, wy, zl2, weight,
                      has_w, grad_scale, capped, db, grad[i], direct, line_s)
        else:
            _row_grad(buf, s, k, y, exact or capped, W, ay, sm, wsum, wy, zl2, weight,
                      has_w, grad_scale, capped, db, grow_s, False, line_s)
        if stream and not direct:
            _stream_row(grow_s, grad[i])
    if stream:
        _store_fence()
