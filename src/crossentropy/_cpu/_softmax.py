# mypy: ignore-errors
# (numba compiles and types this module; its decorators are untyped for mypy)
"""The softmax family: log-sum-exp, softmax and log-softmax of each row.

The compiled bodies (``_*_chunk``: a range of rows); the entry points, which run them on
several threads for large inputs (``_pool``), are in ``_kernels``.
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np

from ._exp import two_diff
from ._jit import _FAST, _STRICT, _cache
from ._llvm import (
    _LINE,
    _inline,
    _is_f64,
    _line_head,
    _log_softmax_line,
    _softmax_line,
    _store_fence,
    _wide,
)
from ._rowpick import _next_row, _row_stats
from ._rows import _SUMBLK64, _one_pass_blocks, _one_plus

# --------------------------------------------------------------------------- softmax family


@nb.njit(nogil=True, **_cache)
def _logsumexp_chunk(x: Any, out: Any, lo: int, hi: int) -> None:
    """logsumexp_rows on rows lo..hi-1 (one thread)."""
    _wide()  # 512-bit vectors (see _wide)
    dummy = np.empty(_SUMBLK64)  # the block buffer of float64 rows
    for i in range(lo, hi):
        m, s, _k, kind = _row_stats(x[i], dummy, False, _next_row(x, i, hi, False), dummy[:0])
        if kind == 0:
            out[i] = m + math.log1p(s)
        elif kind == 3:
            out[i] = np.nan
        else:
            out[i] = m  # +inf or -inf


@nb.njit(fastmath=_STRICT, **_cache)
def _softmax_special(xr: Any, kind: int, log: bool, orow: Any) -> None:
    _wide()  # 512-bit vectors (see _wide)
    n = xr.shape[0]
    if kind == 1:  # +inf entries share the mass equally
        cnt = 0
        for j in range(n):
            if xr[j] == np.inf:
                cnt += 1
        for j in range(n):
            if xr[j] == np.inf:
                orow[j] = -math.log(cnt) if log else 1.0 / cnt
            else:
                orow[j] = -np.inf if log else 0.0
    else:  # no distribution
        for j in range(n):
            orow[j] = np.nan


@nb.njit(fastmath=_FAST, **_cache)
def _softmax_write(buf: Any, inv: float, orow: Any) -> None:
    _wide()  # 512-bit vectors (see _wide)
    for j in range(orow.shape[0]):
        orow[j] = buf[j] * inv


@nb.njit(fastmath=_STRICT, **_cache)
def _div1(e: float, d: float, c: float) -> float:
    # e / (S + S_lo) = q (1 - S_lo / S) with q = e / S: the rounding of 1 + s put back
    q = e / d
    return q - q * c


@nb.njit(fastmath=_FAST, **_cache)
def _softmax_write_div(buf: Any, d: float, c: float, orow: Any) -> None:
    _wide()  # 512-bit vectors (see _wide)
    for j in range(orow.shape[0]):
        orow[j] = _div1(buf[j], d, c)


@nb.njit(fastmath=_STRICT, **_cache)
def _lsm1(v: float, m: float, L: float, exact: bool) -> float:
    # log p_j = (x_j - m) - log1p(s) = (dh - L) + dl: two terms <= 0, then the TwoSum error
    if exact:
        dh, dl = two_diff(v, m)
        return (dh - L) + dl
    return (v - m) - L


@nb.njit(fastmath=_FAST, **_cache)
def _log_softmax_write(xr: Any, m: float, L: float, exact: bool, orow: Any) -> None:
    _wide()  # 512-bit vectors (see _wide)
    for j in range(orow.shape[0]):
        orow[j] = _lsm1(np.float64(xr[j]), m, L, exact)


@nb.njit(nogil=True, **_cache)
def _softmax_chunk(x: Any, log: bool, out: Any, lo: int, hi: int, stream: bool) -> None:
    """softmax_rows on rows lo..hi-1 (one thread); ``stream``: the whole lines of each
    row are written by non-temporal stores straight from registers (``_stream_log_softmax``,
    ``_stream_softmax``), the rest (and rows without a distribution) by ordinary ones."""
    _wide()  # 512-bit vectors (see _wide)
    exact = _is_f64(x)  # (a constant: each callee is compiled for x's dtype only)
    C = x.shape[1]
    buf = np.empty(_SUMBLK64 if log else C)  # log: only the block buffer
    mb = np.empty(0 if log else _one_pass_blocks(C))
    for i in range(lo, hi):
        xr = x[i]
        m, s, _k, kind = _row_stats(xr, buf, not log, _next_row(x, i, hi, not log), mb)
        orow = out[i]
        if kind != 0:
            _softmax_special(xr, kind, log, orow)
        elif log:
            if stream:
                _stream_log_softmax(xr, m, math.log1p(s), exact, orow)
            else:
                _log_softmax_write(xr, m, math.log1p(s), exact, orow)
        else:
            if stream:
                _stream_softmax(buf, s, exact, orow)
            else:
                _softmax_row(buf, s, exact, orow)
    if stream:
        _store_fence()


@nb.njit(**_cache)
def _stream_log_softmax(xr: Any, m: float, L: float, exact: bool, orow: Any) -> None:
    """``_log_softmax_write`` with the whole cache lines of orow stored non-temporally."""
    n = orow.shape[0]
    w = _LINE // orow.itemsize
    j = _line_head(orow)
    _log_softmax_write(xr[:j], m, L, exact, orow[:j])
    while j + w <= n:
        _log_softmax_line(xr, j, orow, j, m, L)
        j += w
    _log_softmax_write(xr[j:], m, L, exact, orow[j:])


@nb.njit(fastmath=_STRICT, **_cache)
def _softmax_scale(s: float, exact: bool) -> tuple[float, float]:
    """(d, c) of p_j = e_j / (1 + s).  A division per element is exact to 0.5 ulp: float64
    rows divide by d = S with c = S_lo / S (1 + s = S + S_lo, ``_one_plus``).  For float32
    output the product with d = 1 / (1 + s) (two float64 roundings) is still far below
    float32's half-ulp, and vectorises better (c = 0)."""
    if exact:
        return _one_plus(s)
    return 1.0 / (1.0 + s), 0.0


@nb.njit(**_cache)
def _softmax_row(buf: Any, s: float, exact: bool, orow: Any) -> None:
    """orow = softmax from the float64 exponentials buf (``_softmax_write_div`` for
    float64 rows, ``_softmax_write`` for float32; see ``_softmax_scale``)."""
    _inline()  # into the row loop of _softmax_chunk (see _inline)
    d, c = _softmax_scale(s, exact)
    if exact:
        _softmax_write_div(buf, d, c, orow)
    else:
        _softmax_write(buf, d, orow)


@nb.njit(**_cache)
def _stream_softmax(buf: Any, s: float, exact: bool, orow: Any) -> None:
    """``_softmax_row`` with the whole cache lines of orow stored non-temporally."""
    n = orow.shape[0]
    w = _LINE // orow.itemsize
    d, c = _softmax_scale(s, exact)
    h = _line_head(orow)
    if exact:
        _softmax_write_div(buf[:h], d, c, orow[:h])
    else:
        _softmax_write(buf[:h], d, orow[:h])
    j = h
    while j + w <= n:
        _softmax_line(buf, j, orow, j, d, c)
        j += w
    if exact:
        _softmax_write_div(buf[j:n], d, c, orow[j:])
    else:
        _softmax_write(buf[j:n], d, orow[j:])
