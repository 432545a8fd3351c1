# mypy: ignore-errors
# (numba compiles and types this module; its decorators are untyped for mypy)
"""Row pieces: the statistics of a row (max, first argmax, sum of the other exponentials).

``_row_stats`` is ``crossentropy._core.rows.decompose`` (max m, first argmax k, the rest
s = sum_{c != k} e^{x_c - m}, log-sum-exp = m + log1p(s)); the softmax family and the
cross-entropy build on it.

* Each row is read from memory once: a max pass brings it into cache (L2 holds a row of
  128k float32 classes), then the exp pass and, for a gradient or a softmax, the write pass
  work on the cached row and on a per-thread float64 scratch row that holds the
  exponentials.  While the (compute-bound) exp pass runs, the *next* row is prefetched into
  L2 line by line, so the next max pass does not wait on memory.
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np
from numba import types
from numba.extending import overload

from ._exp import exp_le0, exp_shift, exp_shift32
from ._jit import _FAST, _STRICT, _cache
from ._llvm import _LINE, _i32_as_f32, _i64_as_f64, _inline, _prefetch, _wide

# --------------------------------------------------------------------------- row pieces


def _row_max(xr: Any) -> tuple[float, int, bool]:
    """(max, index of its first occurrence, has NaN) of a float row, by integer compares
    (a float max reduction does not vectorise)."""
    raise NotImplementedError  # pragma: no cover  (numba overload below)


_BLK = 256  # block of the max pass: the first block whose maximum is the row's holds k
_SCAN = 64  # span of the search for k within its block (see _make_row_max)


def _make_row_max(ity: Any, bits: int, tofloat: Any) -> Any:
    sh = bits - 1
    mag = (1 << sh) - 1
    inf_bits = {32: 0x7F800000, 64: 0x7FF0000000000000}[bits]
    lowest = -(1 << sh)

    def impl(xr: Any) -> tuple[float, int, bool]:
        # Floats ordered as sign-magnitude integers: flipping the magnitude bits of negative
        # numbers makes the integer order the float order (-0.0 just below +0.0).  NaN
        # shows in the maximum of the magnitude bits (above the bits of inf).
        _wide()  # 512-bit vectors (see _wide)
        xi = xr.view(ity)
        n = xi.shape[0]
        best = ity(lowest)
        bestlo = 0
        ma = ity(0)
        # (Loops index slices from 0: with a variable start numba must allow negative
        # indices, and the wrap-around test stops LLVM from vectorising.)
        for lo in range(0, n, _BLK):
            xs = xi[lo : min(n, lo + _BLK)]
            bm = ity(lowest)
            for j in range(xs.shape[0]):
                b = xs[j]
                # (numba widens integer arithmetic to 64 bits; the casts back to ity let
                # LLVM keep float32 rows in 16 lanes of 32 bits instead of 8 of 64)
                o = ity(b ^ ity(ity(b >> sh) & mag))
                bm = o if o > bm else bm
                a = ity(b & mag)
                ma = a if a > ma else ma
            if bm > best:  # strictly: an equal maximum in a later block is not the first
                best = bm
                bestlo = lo
        # the first index of the maximum in its block: each span of _SCAN is first tested
        # by a vectorised or-reduction, and only the span that holds it scanned one by one
        # (a scalar scan of the block cost ~0.1 ns per element of 1000-class rows)
        k = bestlo
        xs = xi[bestlo : min(n, bestlo + _BLK)]
        found = False
        for c0 in range(0, xs.shape[0], _SCAN):
            seg = xs[c0 : min(xs.shape[0], c0 + _SCAN)]
            hit = 0
            for j in range(seg.shape[0]):
                b = seg[j]
                hit |= 1 if ity(b ^ ity(ity(b >> sh) & mag)) == best else 0
            if hit != 0:
                for j in range(seg.shape[0]):
                    b = seg[j]
                    if ity(b ^ ity(ity(b >> sh) & mag)) == best:
                        k = bestlo + c0 + j
                        found = True
                        break
            if found:
                break
        fbits = best if best >= 0 else best ^ mag
        return np.float64(tofloat(ity(fbits))), k, ma > inf_bits

    return impl


@overload(_row_max, jit_options={"fastmath": _STRICT})
def _ov_row_max(xr: Any) -> Any:
    if xr.dtype == types.float32:
        return _make_row_max(np.int32, 32, _i32_as_f32)
    return _make_row_max(np.int64, 64, _i64_as_f64)


@nb.njit(fastmath=_FAST, **_cache)
def _sum_exp_block32(xr: Any, m: float, buf: Any, store: bool) -> float:
    """sum_j exp(xr[j] - m) of float32 logits over a block (vectorised; the terms go to
    buf if asked).  The plain vectorised sum of 512 terms errs by < 2^-44 relative, far
    below float32's half-ulp.

    (xr and buf are slices: loops from 0 let LLVM drop numba's negative-index test.)
    """
    _wide()  # 512-bit vectors (see _wide)
    s = 0.0
    n = xr.shape[0]
    if store:
        for j in range(n):
            e = exp_shift32(np.float64(xr[j]), m)
            buf[j] = e
            s += e
    else:
        for j in range(n):
            s += exp_shift32(np.float64(xr[j]), m)
    return s


@nb.njit(fastmath=_FAST, **_cache)
def _exp_block(xr: Any, m: float, dst: Any) -> float:
    """dst[j] = exp(xr[j] - m) for float64 logits (vectorised); returns their plain
    (vectorised, reassociated) sum, a bound for ``_split_sum``'s sigma.  (A float max
    would be the natural bound, but its reduction does not vectorise.)"""
    _wide()  # 512-bit vectors (see _wide)
    s = 0.0
    for j in range(xr.shape[0]):
        e = exp_shift(xr[j], m)
        dst[j] = e
        s += e
    return s


@nb.njit(fastmath=_STRICT, **_cache)
def _extract(e: float, sigma: float) -> tuple[float, float]:
    """(q, r) with q = (sigma + e) - sigma and r = e - q, both exact for a power of two
    sigma >= |e| (Rump, Ogita & Oishi 2008, ExtractScalar): q is e rounded to a multiple
    of 2^-53 sigma, r the rest, |r| <= 2^-53 sigma.  (Compiled without reassoc: the loop
    that inlines this must not fold (sigma + e) - sigma into e.)"""
    q = (sigma + e) - sigma
    return q, e - q


@nb.njit(fastmath=_FAST, **_cache)
def _split_sum(e: Any, sigma: float) -> tuple[float, float]:
    """(sum q_j, sum r_j) of the extraction of every e_j against sigma (vectorised): the
    q's are multiples of 2^-53 sigma whose partial sums stay below sigma, so their sum is
    exact in any order; the r's are so small that their rounding errors do not count."""
    _wide()  # 512-bit vectors (see _wide)
    sq = 0.0
    sr = 0.0
    for j in range(e.shape[0]):
        q, r = _extract(e[j], sigma)
        sq += q
        sr += r
    return sq, sr


@nb.njit(**_cache)
def _exact_sum(e: Any, bound: float) -> tuple[float, float]:
    """``_split_sum`` of the float64 terms e against sigma = 2^(E + 1), where their plain
    sum ``bound`` is S' < 2^E (see the comment above ``_SUMBLK64``; S' = 0 gives E = 0)."""
    _, E = math.frexp(bound)
    return _split_sum(e, math.ldexp(1.0, E + _SIGMA_SHIFT))


@nb.njit(fastmath=_STRICT, **_cache)
def _two_sum(a: float, b: float) -> tuple[float, float]:
    """(s, err) with s = fl(a + b) and s + err = a + b exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


@nb.njit(fastmath=_STRICT, **_cache)
def _one_plus(s: float) -> tuple[float, float]:
    """(S, S_lo / S) with S + S_lo = 1 + s exactly (TwoSum)."""
    S, lo = _two_sum(1.0, s)
    return S, lo / S


# float64 rows: the exponentials of a block of _SUMBLK64 go to a cached block buffer, with
# their plain sum S' (vectorised, within 2^-44 of the true sum S).  The terms are then split
# error-free (``_extract``) against sigma = 2^(E + 1) where S' < 2^E, so sigma >= 2 S' > S:
# every q is a multiple of 2^-53 sigma and no partial sum of q's reaches sigma, so sum(q) is
# exact in any order; each remainder is <= 2^-53 sigma <= 2^-50 S, so the plain sum of the
# 256 remainders errs by < 2^-85 S.  The block sums are added with TwoSum and the errors
# kept aside: the row's sum is within about half an ulp whatever its length or the spread
# of its terms (confident rows, where every term is tiny, included).  (Blocks of 16 summed
# by the vectorised loop, the previous scheme, erred by up to 3.5 ulp in softmax, and ran
# in the scalar remainder loop once vectors grew to 8 lanes.)  float32 rows: blocks of 512,
# plain vectorised sums (see _sum_exp_block32).
_SUMBLK64 = 256
_SIGMA_SHIFT = 1  # sigma = 2^(E + 1) with S' < 2^E
_SUMBLK32 = 512
_SUMWHOLE32 = 4096


@nb.njit(**_cache)
def _prefetch_span(nxt: Any, n: int) -> None:
    """Prefetch the lines of nxt[:n] (float32)."""
    for p in range(0, n, _LINE // 4):
        _prefetch(nxt, p)
    if n > 0:
        _prefetch(nxt, n - 1)


@nb.njit(**_cache)
def _sum_exp(xr: Any, m: float, exact: bool, buf: Any, store: bool, nxt: Any) -> float:
    """sum_j exp(xr[j] - m) by blocks, the block sums added with TwoSum and the errors
    kept aside (see the comment above), so the row's sum is accurate to about an ulp.

    With ``store`` the terms go to ``buf`` (a span of the row's length); otherwise a
    float64 row uses ``buf[:_SUMBLK64]`` as its block buffer.  ``nxt`` is the same span of
    the *next* row (or empty): while this (compute-bound) pass runs on the cached row, the
    next row's lines are prefetched block by block, so that its max pass reads from L2
    instead of waiting on memory.
    """
    _wide()  # 512-bit vectors (see _wide)
    n = xr.shape[0]
    blk = _SUMBLK64 if exact else _SUMBLK32
    ahead = nxt.shape[0] >= n and n > 0
    if not exact and n <= _SUMWHOLE32:
        # float32 rows of up to a few thousand classes in one call: the plain vectorised
        # sum of 4096 terms errs by < 2^-40 relative, far below float32's half-ulp, and the
        # block loop's per-block calls cost 20-25% at 1000 classes.  The next row's lines
        # (at most 256) are requested in one burst.
        if ahead:
            _prefetch_span(nxt, n)
        return _sum_exp_block32(xr, m, buf, store)
    if n <= blk and not ahead:  # one block (short rows): no loop, no TwoSum
        dst = buf[:n]
        sq, sr = _exact_sum(dst, _exp_block(xr, m, dst))
        return sq + sr
    s = 0.0
    comp = 0.0
    step = _LINE // 8 if exact else _LINE // 4  # elements per line (float64 or float32 rows)
    for lo in range(0, n, blk):
        hi = min(n, lo + blk)
        if exact:
            dst = buf[lo:hi] if store else buf[: hi - lo]
            sq, sr = _exact_sum(dst, _exp_block(xr[lo:hi], m, dst))
            s, err = _two_sum(s, sq)
            comp += err + sr
        else:
            bsum = _sum_exp_block32(xr[lo:hi], m, buf[lo:hi] if store else buf, store)
            s, err = _two_sum(s, bsum)
            comp += err
        if ahead:
            for p in range(lo, hi, step):
                _prefetch(nxt, p)
    return s + comp


# Rows of at most this many classes take ``_row_stats_short``: one plain loop for the
# maximum and one for the exponentials, without the blocked passes' per-call set-up (which
# cost ~200 ns a row: most of a 64 x 10 batch's time).
_SHORT = 64


@nb.njit(fastmath=_FAST, **_cache)
def _short_sum(e: Any, n: int, exact: bool) -> float:
    """sum_j e_j of the first n entries of e, a short row of exponentials whose maximum's
    entry the caller zeroed."""
    _inline()  # into the short-row loop of _ce_chunk (see _inline)
    s = 0.0
    for j in range(n):
        s += e[j]
    if not exact:
        return s  # float32 rows: the plain sum of <= 64 terms errs by < 2^-46
    sq, sr = _exact_sum(e[:n], s)  # float64: as in _sum_exp
    return sq + sr


def _at(a: Any, i: int, j: int) -> Any:
    """a[i, j] of a 2-D array, a[j] of a 1-D one (a row passed as itself, i ignored)."""
    raise NotImplementedError  # pragma: no cover  (numba overload below)


# Row i of a 2-D array is read in place, not through the view x[i]: each view a kernel
# makes takes a reference on the array's memory and gives it back (two atomic operations),
# as does each array argument of a non-trivial numba function (inlining does not cancel
# them); a 64 x 10 cross-entropy with its gradient made 20 a row, now 15, and they were
# 30% of its time (perf, gdb on NRT_incref, Zen 4).
@overload(_at, inline="always")
def _ov_at(a: Any, i: Any, j: Any) -> Any:
    def at2(a: Any, i: Any, j: Any) -> Any:
        return a[i, j]

    def at1(a: Any, i: Any, j: Any) -> Any:
        return a[j]

    return at2 if a.ndim == 2 else at1


@nb.njit(fastmath=_STRICT, **_cache)
def _row_stats_short(a: Any, i: int, exact: bool, buf: Any) -> tuple[float, float, int, int]:
    """``_row_stats`` of a row of 1.._SHORT classes, row i of the 2-D array a or the 1-D
    row a itself (see _at); the same results (m, s, k, kind).  The exponentials go to
    buf (at least n long)."""
    _inline()  # into the short-row loop of _ce_chunk (see _inline)
    n = a.shape[-1]
    m = -np.inf
    k = 0
    for j in range(n):
        v = np.float64(_at(a, i, j))
        if v != v:
            return np.nan, np.nan, 0, 3
        if v > m:  # strictly: the first maximum
            m = v
            k = j
    if m == -np.inf:
        return m, 0.0, 0, 2
    if m == np.inf:
        return m, 0.0, k, 1
    for j in range(n):  # the row's exponentials (no view buf[:n]: see _at)
        v = np.float64(_at(a, i, j))
        buf[j] = exp_shift(v, m) if exact else exp_shift32(v, m)
    buf[k] = 0.0  # s is the sum of the other terms
    s = _short_sum(buf, n, exact)
    buf[k] = 1.0
    return m, s, k, 0


# float32 rows whose exponentials are not kept (the value passes of ``cross_entropy``,
# ``logsumexp`` and ``log_softmax``), of at least _ONEPASS_MIN classes, take one pass over
# memory instead of two: each block of _OBLK logits is read once, its maximum found while
# it sits in L1, and its exponentials summed against the running maximum.  When a block
# raises the maximum from m to m' the sum so far is rescaled:
# sum_j e^(x_j - m') = f sum_j e^(x_j - m) with f = e^(m - m') (float64 exp, < 1 ulp), and the
# old maximum's own term, 1 before, becomes f.  Each rescale adds three float64 roundings
# (f's included: < 1.5 2^-52 relative); one per block of a sorted 256,000-class row stays
# below 2^-41, far under float32's half-ulp, next to the 1.9e-9 of each float32-work
# exponential.  The two-pass scheme read each row from memory for the max pass and again
# (from L2) for the exp pass, and the prefetch of the next row did not hide the first read
# (``python bench/onepass.py``, one thread: one pass / two passes 0.76 at 32,000 classes,
# 0.49 / 0.64 ns per element, 2026-12-02).  (Blocks of 512, 1024 and 2048 measured 0.50, 0.53 and
# 0.67 ns per element against 0.47-0.48 for 256; of 128, 0.54.)  float64 rows keep the two
# passes: each rescale would cost their error-free sum an ulp.  Rows shorter than
# _ONEPASS_MIN keep them too: there the per-block set-up costs more than the second read
# saves (bench/onepass.py: 1.16 at 1000 classes, 1.01 at 2000, 0.93 at 3000, 0.87 at 4096).
# (_block_max32 and _first_of32 repeat _make_row_max's block loops for float32 rows.)
#
# Rows whose exponentials are kept (softmax, the cross-entropy gradient) take the one pass
# too once they are longer than _PREFETCH_MAX_STORED (_ONEPASS_MIN_STORED, defined beside
# it): each block's exponentials are stored against the maximum at the time, and the
# blocks before the last rise are rescaled at the end (``_rescale_blocks``).  Shorter
# stored rows keep two passes, because there the exp pass prefetches the next row into L2
# and the next max pass does not wait on memory: on one thread the one pass is still 0.90
# of two passes at 32,000 classes (``python bench/onepass.py``), but in the two-thread
# kernels with their write pass, softmax(x, out=) and the gradient took 1.09-1.10x as long
# (bench/cpu.py --against, 4 pairs).  At 128,256 classes, where nothing is prefetched, the
# one pass is 0.78 of two passes on one thread and 0.87-0.92 in the kernels.
_OBLK = 256
_ONEPASS_MIN = 4096


def _row_stats_1pass(xr: Any, buf: Any, mb: Any) -> tuple[float, float, int, int]:
    """``_row_stats`` of a float32 row without stored exponentials, in one pass (see above;
    ``mb`` is not used)."""
    raise NotImplementedError  # pragma: no cover  (numba overload below)


def _row_stats_1pass_stored(xr: Any, buf: Any, mb: Any) -> tuple[float, float, int, int]:
    """``_row_stats`` of a float32 row in one pass with its exponentials stored to ``buf``
    (each block's maximum at its time goes to ``mb``, see ``_rescale_blocks``)."""
    raise NotImplementedError  # pragma: no cover  (numba overload below)


@nb.njit(fastmath=_STRICT, **_cache)
def _block_max32(xs: Any) -> tuple[int, int]:
    """(max, max magnitude) of a block of float32 logits as int32 bits ordered as floats
    (see _make_row_max: NaN shows as a magnitude above the bits of inf)."""
    _wide()  # 512-bit vectors (see _wide)
    bm = np.int32(-(1 << 31))
    ma = np.int32(0)
    for j in range(xs.shape[0]):
        b = xs[j]
        o = np.int32(b ^ np.int32(np.int32(b >> 31) & 0x7FFFFFFF))
        bm = o if o > bm else bm
        a = np.int32(b & 0x7FFFFFFF)
        ma = a if a > ma else ma
    return bm, ma


@nb.njit(fastmath=_STRICT, **_cache)
def _first_of32(xs: Any, bm: int) -> int:
    """Index of the first entry of the int32 block xs whose ordered bits are bm."""
    for j in range(xs.shape[0]):
        b = xs[j]
        if (b ^ ((b >> 31) & 0x7FFFFFFF)) == bm:
            return j
    return 0  # pragma: no cover  (bm is the block's maximum)


def _make_row_stats_1pass32(store: bool) -> Any:
    """The one pass for float32 rows, with or without stored exponentials.  (``store`` is
    a constant of each compiled function, and each call of ``_sum_exp_block32`` passes
    its flag as a constant: a run-time flag passed down cost the value pass 10% per
    element and the stored pass 40%.)"""

    def impl(xr: Any, buf: Any, mb: Any) -> tuple[float, float, int, int]:
        _wide()  # 512-bit vectors (see _wide)
        n = xr.shape[0]
        xi = xr.view(np.int32)
        best = np.int32(-(1 << 31))
        m = -np.inf
        k = 0
        s = 0.0  # sum over j != k of e^(x_j - m), the terms seen so far; comp its TwoSum errors
        comp = 0.0
        for lo in range(0, n, _OBLK):
            hi = min(n, lo + _OBLK)
            bm, ma = _block_max32(xi[lo:hi])
            if ma > 0x7F800000:
                return np.nan, np.nan, 0, 3
            if bm > best:  # strictly: the first maximum is k
                best = bm
                kb = lo + _first_of32(xi[lo:hi], bm)
                mn = np.float64(_i32_as_f32(np.int32(bm if bm >= 0 else bm ^ 0x7FFFFFFF)))
                if mn == np.inf:  # kind 1 (only NaN can still change the answer)
                    for lo2 in range(hi, n, _OBLK):
                        if _block_max32(xi[lo2 : min(n, lo2 + _OBLK)])[1] > 0x7F800000:
                            return np.nan, np.nan, 0, 3
                    return mn, 0.0, kb, 1
                if m > -np.inf:  # rescale (see the comment above _OBLK)
                    f = exp_le0(m - mn)
                    s = (s + comp) * f + f
                    comp = 0.0
                m = mn
                k = kb
                if m > -np.inf:  # (a block of -inf only: no terms, and -inf - -inf is NaN)
                    if store:
                        b1 = _sum_exp_block32(xr[lo:k], m, buf[lo:k], True)
                        b2 = _sum_exp_block32(xr[k + 1 : hi], m, buf[k + 1 : hi], True)
                        buf[k] = 1.0
                    else:
                        b1 = _sum_exp_block32(xr[lo:k], m, buf, False)
                        b2 = _sum_exp_block32(xr[k + 1 : hi], m, buf, False)
                    s, err = _two_sum(s, b1)
                    comp += err
                    s, err = _two_sum(s, b2)
                    comp += err
            elif m > -np.inf:
                if store:
                    b1 = _sum_exp_block32(xr[lo:hi], m, buf[lo:hi], True)
                else:
                    b1 = _sum_exp_block32(xr[lo:hi], m, buf, False)
                s, err = _two_sum(s, b1)
                comp += err
            if store:
                mb[lo // _OBLK] = m
        if m == -np.inf:
            return m, 0.0, 0, 2
        if store:
            _rescale_blocks(buf, mb, m)
        return m, s + comp, k, 0

    return impl


@nb.njit(**_cache)
def _rescale_blocks(buf: Any, mb: Any, m: float) -> None:
    """Stored exponentials of the one pass against the row's maximum m: block b holds
    e^(x_j - mb[b]) with mb[b] the maximum when it was read, and e^(x_j - m) =
    e^(x_j - mb[b]) e^(mb[b] - m) (float64 exp, < 1 ulp, and one rounding: far below
    float32's half-ulp).  The maximum only rises, so the blocks to scale are those before
    the first block read at m; a block read while the maximum was -inf holds zeros."""
    _wide()  # 512-bit vectors (see _wide)
    n = buf.shape[0]
    for lo in range(0, n, _OBLK):
        mbb = mb[lo // _OBLK]
        if mbb == m:
            return
        blk = buf[lo : min(n, lo + _OBLK)]
        if mbb == -np.inf:
            blk[:] = 0.0
        else:
            f = exp_le0(mbb - m)
            for j in range(blk.shape[0]):
                blk[j] *= f


_row_stats_1pass32 = nb.njit(**_cache)(_make_row_stats_1pass32(False))
_row_stats_1pass32_stored = nb.njit(**_cache)(_make_row_stats_1pass32(True))


def _overload_one_pass(stub: Any, one32: Any, store: bool) -> None:
    """Register ``one32`` (a compiled one pass) as the float32 implementation of ``stub``.
    float64 rows never take the one pass (``_row_stats`` sends only inexact rows, which
    are float32); typing its branch for them needs an implementation, the two-pass one."""

    @overload(stub)
    def _ov(xr: Any, buf: Any, mb: Any) -> Any:
        if xr.dtype == types.float32:
            def impl32(xr: Any, buf: Any, mb: Any) -> Any:
                return one32(xr, buf, mb)
            return impl32

        def impl64(xr: Any, buf: Any, mb: Any) -> Any:
            return _row_stats_2pass(xr, False, buf, store, xr[:0])
        return impl64


_overload_one_pass(_row_stats_1pass, _row_stats_1pass32, False)
_overload_one_pass(_row_stats_1pass_stored, _row_stats_1pass32_stored, True)


@nb.njit(**_cache)
def _one_pass_blocks(n: int) -> int:
    """Length of ``_row_stats``'s ``mb`` scratch for rows of n classes (one per block)."""
    return (n + _OBLK - 1) // _OBLK


@nb.njit(**_cache)
def _row_stats_2pass(xr: Any, exact: bool, buf: Any, store: bool,
                     nxt: Any) -> tuple[float, float, int, int]:
    """``_row_stats`` by a max pass and an exp pass (rows longer than _SHORT)."""
    _wide()  # 512-bit vectors (see _wide)
    m, k, nan = _row_max(xr)
    if nan:
        return np.nan, np.nan, 0, 3
    if m == -np.inf:
        return m, 0.0, 0, 2
    if m == np.inf:
        return m, 0.0, k, 1
    if store:
        s = _sum_exp(xr[:k], m, exact, buf[:k], True, nxt[:k])
        s += _sum_exp(xr[k + 1 :], m, exact, buf[k + 1 :], True, nxt[k + 1 :])
    else:
        s = _sum_exp(xr[:k], m, exact, buf, False, nxt[:k])
        s += _sum_exp(xr[k + 1 :], m, exact, buf, False, nxt[k + 1 :])
    if store:
        buf[k] = 1.0
    return m, s, k, 0


# The same, inlined into its caller (float32 rows: at 1000 classes a call per row and part
# cost 5-10% of the row's time; float64 rows, whose exp pass is heavier, measured 2-5%
# slower inlined, in the cross-entropy kernel).
_row_stats_2pass_inline = nb.njit(inline="always", **_cache)(_row_stats_2pass.py_func)
