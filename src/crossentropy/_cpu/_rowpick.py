# mypy: ignore-errors
# (numba compiles and types this module; its decorators are untyped for mypy)
"""Which implementation of the row statistics a caller compiles: ``_row_stats``.

``_rows`` holds the pieces (the short rows, the two passes, the float32 one passes); this
module picks among them by the row's dtype and, for float32 rows, a constant ``store``, so
that each kernel compiles only the branches its rows can take, and says which rows are
prefetched (``_next_row``).
"""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np
from numba import types
from numba.extending import overload

from ._jit import _cache
from ._llvm import _wide
from ._rows import (
    _ONEPASS_MIN,
    _SHORT,
    _row_stats_1pass32,
    _row_stats_1pass32_stored,
    _row_stats_2pass,
    _row_stats_2pass_inline,
    _row_stats_short,
)

__all__ = ["_ONEPASS_MIN_STORED", "_PREFETCH_MAX_STORED", "_next_row", "_row_stats"]

# Rows longer than this are not prefetched while their exponentials are stored: the row, its
# float64 scratch row and the next row would not fit in L2 together (at 128256 classes the
# prefetch evicted the current row and cost 5-10%; without the scratch row it still pays).
_PREFETCH_MAX_STORED = 1 << 16
_ONEPASS_MIN_STORED = _PREFETCH_MAX_STORED + 1  # (the stored one pass: see above _OBLK)


def _row_stats(xr: Any, buf: Any, store: bool, nxt: Any,
               mb: Any) -> tuple[float, float, int, int]:
    """(m, s, k, kind) of a row: kind 0 finite max, 1 max +inf, 2 all -inf/empty, 3 NaN.

    The numba side of ``crossentropy._core.rows.decompose``.  For kind 0: m = x_k is the
    maximum, k its first index, and sum(exp(x - m)) = 1 + s with s the sum over j != k
    (other maxima add exactly 1 each), so that log-sum-exp = m + log1p(s).  With ``store``
    the exponentials go to ``buf`` (``buf[k] = 1``).  ``nxt``: the next row (same length)
    to prefetch while the exponentials are computed, or an empty array.  ``mb``: scratch
    of ``_one_pass_blocks(n)`` floats for the one pass with ``store`` (else unused).
    float64 rows are summed exactly (``_sum_exp``), float32 rows in float64 without
    error-free sums: the row's dtype decides, when numba compiles the caller.
    """
    raise NotImplementedError  # pragma: no cover  (numba overload below)


# float32 rows: each branch calls with constant flags, and numba compiles the callees
# (down to the exp loops) for those constants.  Passed on as run-time flags they cost
# the one pass 10% (value) and ~45% (stored) per element (bench/onepass.py).  With
# the float32 two pass inlined and exp sums of <= 4096 terms in one call as well, the
# statistics of cached 1000-class rows went from 0.76-0.80 to 0.63-0.64 ns per element
# (an ad-hoc loop, see docs/cpu.md).
# float64 rows keep run-time flags for the two passes: with constant ones the
# cross-entropy kernel measured 1.04-1.06x as long (bench/cpu.py --against, 3 pairs).
# The implementation is chosen by the row's dtype (and, for float32 rows, a constant
# ``store``), so that each caller compiles only the branches its rows can take.
# (The float32 implementations call the compiled one passes themselves, not the stubs
# ``_row_stats_1pass(_stored)``: inlined here, the two stubs' overloads, whose
# implementations share one code object, were confused, and softmax rows took the one
# pass that does not store, tests/test_cpu.py.)


def _row_stats64(xr: Any, buf: Any, store: Any, nxt: Any,
                 mb: Any) -> tuple[float, float, int, int]:
    _wide()  # 512-bit vectors (see _wide)
    n = xr.shape[0]
    if n == 0:
        return -np.inf, 0.0, 0, 2
    if n <= _SHORT:
        return _row_stats_short(xr, 0, True, buf)
    return _row_stats_2pass(xr, True, buf, store, nxt)


def _row_stats32_stored(xr: Any, buf: Any, store: Any, nxt: Any,
                        mb: Any) -> tuple[float, float, int, int]:
    _wide()  # 512-bit vectors (see _wide)
    n = xr.shape[0]
    if n == 0:
        return -np.inf, 0.0, 0, 2
    if n <= _SHORT:
        return _row_stats_short(xr, 0, False, buf)
    if n >= _ONEPASS_MIN_STORED:
        return _row_stats_1pass32_stored(xr, buf, mb)
    return _row_stats_2pass_inline(xr, False, buf, True, nxt)


def _row_stats32_value(xr: Any, buf: Any, store: Any, nxt: Any,
                       mb: Any) -> tuple[float, float, int, int]:
    _wide()  # 512-bit vectors (see _wide)
    n = xr.shape[0]
    if n == 0:
        return -np.inf, 0.0, 0, 2
    if n <= _SHORT:
        return _row_stats_short(xr, 0, False, buf)
    if n >= _ONEPASS_MIN:
        return _row_stats_1pass32(xr, buf, mb)
    return _row_stats_2pass_inline(xr, False, buf, False, nxt)


def _row_stats32(xr: Any, buf: Any, store: Any, nxt: Any,
                 mb: Any) -> tuple[float, float, int, int]:
    _wide()  # 512-bit vectors (see _wide)
    n = xr.shape[0]
    if n == 0:
        return -np.inf, 0.0, 0, 2
    if n <= _SHORT:
        return _row_stats_short(xr, 0, False, buf)
    if store:
        if n >= _ONEPASS_MIN_STORED:
            return _row_stats_1pass32_stored(xr, buf, mb)
        return _row_stats_2pass_inline(xr, False, buf, True, nxt)
    if n >= _ONEPASS_MIN:
        return _row_stats_1pass32(xr, buf, mb)
    return _row_stats_2pass_inline(xr, False, buf, False, nxt)


@overload(_row_stats, inline="always", prefer_literal=True)
def _ov_row_stats(xr: Any, buf: Any, store: Any, nxt: Any, mb: Any) -> Any:
    if xr.dtype == types.float64:
        return _row_stats64
    if isinstance(store, types.BooleanLiteral):
        return _row_stats32_stored if store.literal_value else _row_stats32_value
    return _row_stats32


@nb.njit(**_cache)
def _next_row(x: Any, i: int, hi: int, store: bool) -> Any:
    """Row i + 1 of x to prefetch if this chunk processes it (and it fits), else empty."""
    if i + 1 < hi and not (store and x.shape[1] > _PREFETCH_MAX_STORED):
        return x[i + 1]
    return x[i][:0]
