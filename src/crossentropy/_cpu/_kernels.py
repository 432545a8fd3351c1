# mypy: ignore-errors
# (numba compiles and types this module; its decorators are untyped for mypy)
"""numba kernels for the softmax family and the cross-entropies (imported lazily).

Design
------
* Rows are independent: ``prange`` splits the rows over threads and one thread handles a
  whole row, in a fixed order.  Every result is therefore **bitwise identical whatever the
  number of threads** (the elementwise kernels reduce over fixed-size blocks, also
  independent of the thread count).
* Each row is read from memory once: a max pass brings it into cache (L2 holds a row of
  128k float32 classes), then the exp pass and, for a gradient or a softmax, the write pass
  work on the cached row and on a per-thread float64 scratch row that holds the
  exponentials.  The gradient is written while the row is still in cache, so the logits
  are read once and the gradient written once (it may overwrite the logits).
* Everything is computed in float64, float32 inputs included (their results are then
  rounded once), with a vectorisable exp: Cody-Waite reduction ``x = k ln2 + r`` with a
  two-part ln2, a Taylor polynomial in Horner form, and 2^k built from exponent bits
  (two multiplications near the subnormal range).  Measured error < 1 ulp (float64).
* Floating-point flags: the arithmetic whose rounding matters (the exp, the TwoSum of
  x - m) lives in small functions compiled *without* ``reassoc``; LLVM inlines them into
  the loops, which carry ``fastmath=True`` only so that the sums and the max vectorise.
  Flags are per instruction in LLVM, so the inlined code keeps its strict semantics.
  (llvmlite has no SVML, so ``math.exp`` would be a scalar call at ~2.6 ns per element.)
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.extending import intrinsic, overload

_STRICT = {"nsz", "contract"}  # no reassoc, no nnan/ninf: roundings stay as written
_FAST = True  # only for loops whose own arithmetic is sums and maxima

_cache = {"cache": True}


# --------------------------------------------------------------------------- bit casts


@intrinsic
def _i64_as_f64(typingctx: Any, x: Any) -> Any:
    sig = types.float64(types.int64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


@intrinsic
def _i32_as_f32(typingctx: Any, x: Any) -> Any:
    sig = types.float32(types.int32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


# --------------------------------------------------------------------------- exp

_LOG2E = 1.4426950408889634
# ln 2 = _LN2HI + _LN2LO; _LN2HI has 32 trailing zero bits, so k * _LN2HI is exact.
_LN2HI = 6.93147180369123816490e-01
_LN2LO = 1.90821492927058770002e-10
_SHIFT = 6755399441055744.0  # 1.5 * 2**52: adding and subtracting it rounds to an integer
_TWO_M1000 = 9.332636185032189e-302  # 2**-1000
_C = [1.0 / math.factorial(i) for i in range(14)]
(_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13) = _C[2:14]


@nb.njit(fastmath=_STRICT, **_cache)
def exp_le0(d: float) -> float:
    """exp(d) for d <= 0 (also fine up to d ~ 709), < 1 ulp; 0 for d < -745.2 and d = -inf.

    NaN gives 0: callers detect NaN rows separately.
    """
    d = d if d > -746.0 else -746.0
    # k = round(d / ln2): the shift makes the addition round to an integer (ties to even)
    kf = (d * _LOG2E + _SHIFT) - _SHIFT
    # r = d - k ln2 in [-0.35, 0.35], exact to ~2^-60 (Cody-Waite, two-part ln2)
    r = (d - kf * _LN2HI) - kf * _LN2LO
    # exp(r) by its Taylor series to r^13 (truncation < 4e-18 on |r| <= 0.35), Horner form
    p = _C13
    p = p * r + _C12
    p = p * r + _C11
    p = p * r + _C10
    p = p * r + _C9
    p = p * r + _C8
    p = p * r + _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + 1.0
    p = p * r + 1.0
    # exp(d) = 2^k exp(r); 2^k from its exponent bits.  Below k = -1000, 2^k would be
    # subnormal: scale by 2^(k + 1000) first, then by 2^-1000 (one rounding, at the end).
    k = np.int64(kf)
    small = k < -1000
    kb = k + 1000 if small else k
    s2 = _TWO_M1000 if small else 1.0
    return (p * _i64_as_f64((kb + 1023) << 52)) * s2


_LN2 = 0.6931471805599453


@nb.njit(fastmath=_STRICT, **_cache)
def exp_le0_f32(d: float) -> float:
    """exp(d) in float64 for float32 work (d <= 0): relative error < 3e-10 (0.005 float32 ulp).

    Results below exp(-700) ~ 1e-304 are far under float32's smallest subnormal (1.4e-45),
    so d is clamped there and 2^k is always a normal number (one multiplication).  The
    reduction r = d - k ln2 with a one-part ln2 errs by |k| 2^-53 <= 1e-13; the Taylor
    series to r^8 truncates at 2e-10 on |r| <= 0.35.
    """
    d = d if d > -700.0 else -700.0
    kf = (d * _LOG2E + _SHIFT) - _SHIFT
    r = d - kf * _LN2
    p = _C8
    p = p * r + _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _i64_as_f64((np.int64(kf) + 1023) << 52)


@nb.njit(fastmath=_STRICT, **_cache)
def exp_shift(x: float, m: float) -> float:
    """exp(x - m) for x <= m (float64), with the rounding error of x - m put back.

    dh = fl(x - m), dl = (x - m) - dh exactly (Knuth's TwoSum); exp(dh + dl) = exp(dh)(1 + dl).
    """
    dh = x - m
    e = exp_le0(dh)
    bb = dh - x
    dl = (x - (dh - bb)) + (-m - bb)
    if dl == dl and abs(dl) < 1.0:  # finite: x and m finite
        e += e * dl
    return e


@nb.njit(fastmath=_STRICT, **_cache)
def exp_shift32(x: float, m: float) -> float:
    """exp(x - m) for float32 x and m: x - m is exact in float64 (both have 24-bit
    significands; when it is not, exp(x - m) underflows float32 anyway)."""
    return exp_le0_f32(x - m)


@nb.njit(fastmath=_STRICT, **_cache)
def two_diff(x: float, m: float) -> tuple[float, float]:
    """(dh, dl) with dh = fl(x - m) and dh + dl = x - m exactly (TwoSum); dl = 0 if not finite."""
    dh = x - m
    bb = dh - x
    dl = (x - (dh - bb)) + (-m - bb)
    if not (dl == dl and abs(dl) < 1.0):
        dl = 0.0
    return dh, dl


@nb.njit(fastmath=_STRICT, **_cache)
def is_eq_i(a: float, b: float) -> int:
    return 1 if a == b else 0


# --------------------------------------------------------------------------- row pieces


def _row_max(xr: Any) -> tuple[float, int, bool]:
    """(max, index of its first occurrence, has NaN) of a float row, by integer compares
    (a float max reduction does not vectorise)."""
    raise NotImplementedError  # pragma: no cover  (numba overload below)


_BLK = 256  # block of the max pass: the first block whose maximum is the row's holds k


def _make_row_max(ity: Any, bits: int, tofloat: Any) -> Any:
    sh = bits - 1
    mag = (1 << sh) - 1
    inf_bits = {32: 0x7F800000, 64: 0x7FF0000000000000}[bits]
    lowest = -(1 << sh)

    def impl(xr: Any) -> tuple[float, int, bool]:
        # Floats ordered as sign-magnitude integers: flipping the magnitude bits of negative
        # numbers makes the integer order the float order (-0.0 just below +0.0).  NaN
        # shows in the maximum of the magnitude bits (above the bits of inf).
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
                o = b ^ ((b >> sh) & mag)
                bm = o if o > bm else bm
                a = b & mag
                ma = a if a > ma else ma
            if bm > best:  # strictly: an equal maximum in a later block is not the first
                best = bm
                bestlo = lo
        k = bestlo
        xs = xi[bestlo : min(n, bestlo + _BLK)]
        for j in range(xs.shape[0]):
            b = xs[j]
            if (b ^ ((b >> sh) & mag)) == best:
                k = bestlo + j
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
def _sum_exp_block(xr: Any, m: float, exact: bool, buf: Any, store: bool) -> float:
    """sum_j exp(xr[j] - m) over a short block (vectorised; the terms go to buf if asked).

    (xr and buf are slices: loops from 0 let LLVM drop numba's negative-index test.)
    """
    s = 0.0
    n = xr.shape[0]
    if exact:
        if store:
            for j in range(n):
                e = exp_shift(np.float64(xr[j]), m)
                buf[j] = e
                s += e
        else:
            for j in range(n):
                s += exp_shift(np.float64(xr[j]), m)
    else:
        if store:
            for j in range(n):
                e = exp_shift32(np.float64(xr[j]), m)
                buf[j] = e
                s += e
        else:
            for j in range(n):
                s += exp_shift32(np.float64(xr[j]), m)
    return s


@nb.njit(fastmath=_STRICT, **_cache)
def _two_sum(a: float, b: float) -> tuple[float, float]:
    """(s, err) with s = fl(a + b) and s + err = a + b exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


# The exp sum is vectorised within blocks and the block sums are added with TwoSum.  The
# error of a vectorised block sum grows with its length: float64 rows use blocks of 16
# (measured: 2.9 ulp log_softmax, 3.5 ulp softmax on N(0, 10) rows of 1000, where blocks
# of 64 gave 4.7), float32 rows blocks of 512 (their results are rounded to float32).
_SUMBLK64 = 16
_SUMBLK32 = 512


@nb.njit(**_cache)
def _sum_exp(xr: Any, m: float, exact: bool, buf: Any, store: bool) -> float:
    """sum_j exp(xr[j] - m): short blocks summed by the vectorised loop, the block sums
    added with TwoSum and the errors kept aside, so the row's sum is accurate to about an
    ulp whatever its length."""
    n = xr.shape[0]
    s = 0.0
    comp = 0.0
    blk = _SUMBLK64 if exact else _SUMBLK32
    for lo in range(0, n, blk):
        hi = min(n, lo + blk)
        bsum = _sum_exp_block(xr[lo:hi], m, exact, buf[lo:hi] if store else buf, store)
        s, err = _two_sum(s, bsum)
        comp += err
    return s + comp


@nb.njit(**_cache)
def _row_stats(xr: Any, exact: bool, buf: Any, store: bool) -> tuple[float, float, int, int]:
    """(m, s, k, kind) of a row: kind 0 finite max, 1 max +inf, 2 all -inf/empty, 3 NaN.

    For kind 0: m = x_k is the maximum, k its first index, and sum(exp(x - m)) = 1 + s
    with s the sum over j != k (other maxima add exactly 1 each).  With ``store`` the
    exponentials go to ``buf`` (``buf[k] = 1``).
    """
    n = xr.shape[0]
    if n == 0:
        return -np.inf, 0.0, 0, 2
    m, k, nan = _row_max(xr)
    if nan:
        return np.nan, np.nan, 0, 3
    if m == -np.inf:
        return m, 0.0, 0, 2
    if m == np.inf:
        return m, 0.0, k, 1
    if store:
        s = _sum_exp(xr[:k], m, exact, buf[:k], True)
        s += _sum_exp(xr[k + 1 :], m, exact, buf[k + 1 :], True)
    else:
        s = _sum_exp(xr[:k], m, exact, buf, False) + _sum_exp(xr[k + 1 :], m, exact, buf, False)
    if store:
        buf[k] = 1.0
    return m, s, k, 0


# --------------------------------------------------------------------------- softmax family


def _chunks(n: int) -> int:
    return max(1, min(n, 8 * nb.get_num_threads()))


@nb.njit(parallel=True, **_cache)
def logsumexp_rows(x: Any, exact: bool, out: Any, nchunks: int) -> None:
    """out[i] = log(sum(exp(x[i]))) = m + log1p(s)."""
    N = x.shape[0]
    for c in prange(nchunks):
        dummy = np.empty(0)
        for i in range(c * N // nchunks, (c + 1) * N // nchunks):
            m, s, _k, kind = _row_stats(x[i], exact, dummy, False)
            if kind == 0:
                out[i] = m + math.log1p(s)
            elif kind == 3:
                out[i] = np.nan
            else:
                out[i] = m  # +inf or -inf


@nb.njit(fastmath=_STRICT, **_cache)
def _softmax_special(xr: Any, kind: int, log: bool, orow: Any) -> None:
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
    for j in range(orow.shape[0]):
        orow[j] = buf[j] * inv


@nb.njit(fastmath=_STRICT, **_cache)
def _div1(e: float, d: float, c: float) -> float:
    # e / (S + S_lo) = q (1 - S_lo / S) with q = e / S: the rounding of 1 + s put back
    q = e / d
    return q - q * c


@nb.njit(fastmath=_STRICT, **_cache)
def _one_plus(s: float) -> tuple[float, float]:
    """(S, S_lo / S) with S + S_lo = 1 + s exactly (TwoSum)."""
    S, lo = _two_sum(1.0, s)
    return S, lo / S


@nb.njit(fastmath=_FAST, **_cache)
def _softmax_write_div(buf: Any, d: float, c: float, orow: Any) -> None:
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
    for j in range(orow.shape[0]):
        orow[j] = _lsm1(np.float64(xr[j]), m, L, exact)


@nb.njit(parallel=True, **_cache)
def softmax_rows(x: Any, exact: bool, log: bool, out: Any, nchunks: int) -> None:
    """Softmax (or log-softmax) of each row of x into out (out may be x)."""
    N, C = x.shape
    for c in prange(nchunks):
        buf = np.empty(0 if log else C)
        for i in range(c * N // nchunks, (c + 1) * N // nchunks):
            xr = x[i]
            m, s, _k, kind = _row_stats(xr, exact, buf, not log)
            orow = out[i]
            if kind != 0:
                _softmax_special(xr, kind, log, orow)
            elif log:
                _log_softmax_write(xr, m, math.log1p(s), exact, orow)
            else:
                # p_j = e_j / (1 + s).  A division per element is exact to 0.5 ulp; for
                # float32 output the product with 1 / (1 + s) (two float64 roundings) is
                # still far below float32's half-ulp, and vectorises better.
                if exact:
                    S, cS = _one_plus(s)
                    _softmax_write_div(buf, S, cS, orow)
                else:
                    _softmax_write(buf, 1.0 / (1.0 + s), orow)


# --------------------------------------------------------------------------- cross-entropy


@nb.njit(fastmath=_STRICT, **_cache)
def _nls(v: float, m: float, L: float, exact: bool) -> float:
    """-log softmax_j = (L - dh) - dl, two terms >= 0."""
    if exact:
        dh, dl = two_diff(v, m)
        return (L - dh) - dl
    return L - (v - m)


@nb.njit(fastmath=_FAST, **_cache)
def _smooth_sum(zr: Any, m: float, L: float, exact: bool, weight: Any, has_w: bool) -> float:
    """sum_c w_c (-log softmax_c) (the label-smoothing term, before the factor eps / C)."""
    acc = 0.0
    for j in range(zr.shape[0]):
        t = _nls(np.float64(zr[j]), m, L, exact)
        if has_w:
            acc += weight[j] * t if weight[j] != 0.0 else 0.0  # 0 * inf = 0 (no term)
        else:
            acc += t
    return acc


@nb.njit(fastmath=_STRICT, **_cache)
def _g1(e: float, d: float, c: float, exact: bool, Wz: float, b: float, f: float, t: float,
        capped: bool) -> float:
    # grad_j = f (p_j W' - a_j) with p_j = e_j / (1 + s) (d = 1 + s rounded and c its
    # rounding error over d, or d = 1 / (1 + s) when not exact), a_j = b; times
    # dz/dx = 1 - tanh^2 = (1 - t)(1 + t) under a soft cap
    if exact:
        q = e / d
        p = q - q * c
    else:
        p = e * d
    g = (p * Wz - b) * f
    return g * t if capped else g  # t = dz/dx = sech^2(x / c) under a soft cap


@nb.njit(fastmath=_FAST, **_cache)
def _grad_write(buf: Any, d: float, c: float, exact: bool, Wz: float, base: float, f: float,
                weight: Any, has_w: bool, tb: Any, capped: bool, grow: Any) -> None:
    if has_w:
        for j in range(grow.shape[0]):
            t = tb[j] if capped else 0.0
            grow[j] = _g1(buf[j], d, c, exact, Wz, base * weight[j], f, t, capped)
    else:
        for j in range(grow.shape[0]):
            t = tb[j] if capped else 0.0
            grow[j] = _g1(buf[j], d, c, exact, Wz, base, f, t, capped)


@nb.njit(fastmath=_STRICT, **_cache)
def _softcap_row(xr: Any, cap: float, tb: Any, zb: Any) -> None:
    """zb = cap tanh(x / cap) and tb = dz/dx = 1 - tanh^2 = 1 / cosh^2 (x / cap).

    1 / cosh^2 is accurate where 1 - tanh^2 would cancel (|x| >> cap).
    """
    for j in range(xr.shape[0]):
        u = np.float64(xr[j]) / cap
        zb[j] = cap * math.tanh(u)
        ch = math.cosh(u)
        tb[j] = 1.0 / (ch * ch)


@nb.njit(parallel=True, **_cache)
def ce_rows(x: Any, target: Any, weight: Any, has_w: bool, ignore_index: int, eps: float,
            z_loss: float, cap: float, grad: Any, want_grad: bool, grad_scale: float,
            exact: bool, loss: Any, lse: Any, nchunks: int) -> None:
    """The kernel behind :func:`crossentropy._cpu.cross_entropy_rows` (cap <= 0: no softcap)."""
    N, C = x.shape
    wsum = 0.0
    if has_w:
        for j in range(C):
            wsum += weight[j]
    else:
        wsum = float(C)
    capped = cap > 0.0
    for c in prange(nchunks):
        buf = np.empty(C if want_grad else 0)
        tb = np.empty(C if capped else 0)
        zb = np.empty(C if capped else 0)
        for i in range(c * N // nchunks, (c + 1) * N // nchunks):
            xr = x[i]
            y = target[i]
            counted = y != ignore_index
            if capped:
                _softcap_row(xr, cap, tb, zb)
                m, s, k, kind = _row_stats(zb, True, buf, want_grad)
            else:
                m, s, k, kind = _row_stats(xr, exact, buf, want_grad)
            L = math.log1p(s)
            lse[i] = m + L if kind == 0 else (np.nan if kind == 3 else m)
            if not counted:
                loss[i] = 0.0
                if want_grad:
                    grow = grad[i]
                    for j in range(C):
                        grow[j] = 0.0
                continue
            wy = weight[y] if has_w else 1.0
            # a_c = w_c ((1 - eps) [c == y] + eps / C): the target coefficients of row i
            sm = eps / C
            ay = wy * ((1.0 - eps) + sm)
            W = wy * (1.0 - eps) + sm * wsum  # sum_c a_c
            zy = zb[y] if capped else np.float64(xr[y])
            if kind == 0:
                nly = _nls(zy, m, L, exact or capped)
                li = ay * nly if ay != 0.0 else 0.0
                if eps != 0.0:
                    if capped:
                        tot = _smooth_sum(zb, m, L, True, weight, has_w)
                    else:
                        tot = _smooth_sum(xr, m, L, exact, weight, has_w)
                    # a_y = wy (1 - eps) + sm wy: the sm wy part is in tot, with the others
                    hard = wy * (1.0 - eps)
                    li = (hard * nly if hard != 0.0 else 0.0) + sm * tot
            elif kind == 1:  # +inf maximum: the +inf entries share the mass
                cnt = 0
                for j in range(C):
                    zj = zb[j] if capped else xr[j]
                    if zj == np.inf:
                        cnt += 1
                li = 0.0
                for j in range(C):
                    zj = zb[j] if capped else xr[j]
                    aj = (weight[j] if has_w else 1.0) * sm + (wy * (1.0 - eps) if j == y else 0.0)
                    if aj != 0.0:
                        li += aj * (math.log(cnt) if zj == np.inf else np.inf)
            else:
                li = np.nan
            if z_loss != 0.0:
                li += z_loss * lse[i] * lse[i]  # PaLM z-loss
            loss[i] = li
            if not want_grad:
                continue
            grow = grad[i]
            if kind != 0:
                _ce_grad_special(xr, zb, capped, tb, kind, y, wy, eps, sm, W, z_loss, lse[i],
                                 weight, has_w, grad_scale, grow)
                continue
            zl2 = 2.0 * z_loss * lse[i] if z_loss != 0.0 else 0.0
            Wz = W + zl2  # d(zl lse^2)/dz_c = 2 zl lse p_c
            # float64: divide by 1 + s (0.5 ulp); float32 output: multiply by 1 / (1 + s)
            ex = exact or capped
            S, cS = _one_plus(s)
            d = S if ex else 1.0 / (1.0 + s)
            _grad_write(buf, d, cS, ex, Wz, sm, grad_scale, weight, has_w, tb, capped, grow)
            # the target class: p_y W' - a_y
            ak = ay if k == y else (weight[k] if has_w else 1.0) * sm
            qy = buf[y] / S
            gy = ((qy - qy * cS) * Wz - ay) * grad_scale
            # the argmax k: p_k = 1 / (1 + s), so p_k W' - a_k = ((W' - a_k) - a_k s) / (1 + s),
            # with W' - a_k summed directly: exact for one-hot targets and confident rows.
            if k == y:  # sum of the smoothing shares of the other classes
                rest = sm * (wsum - wy) + zl2
            else:
                rest = (W - ak) + zl2
            gk = ((rest - ak * s) / (1.0 + s)) * grad_scale
            if capped:
                gy *= tb[y]
                gk *= tb[k]
            grow[y] = gy
            grow[k] = gk


@nb.njit(**_cache)
def _ce_grad_special(xr: Any, zb: Any, capped: bool, tb: Any, kind: int, y: int, wy: float,
                     eps: float, sm: float, W: float, z_loss: float, lse: float, weight: Any,
                     has_w: bool, grad_scale: float, grow: Any) -> None:
    C = grow.shape[0]
    if kind != 1:
        for j in range(C):
            grow[j] = np.nan
        return
    cnt = 0
    for j in range(C):
        zj = zb[j] if capped else xr[j]
        if zj == np.inf:
            cnt += 1
    Wz = W + 2.0 * z_loss * lse if z_loss != 0.0 else W
    for j in range(C):
        zj = zb[j] if capped else xr[j]
        share = 1.0 / cnt if zj == np.inf else 0.0
        aj = (weight[j] if has_w else 1.0) * sm + (wy * (1.0 - eps) if j == y else 0.0)
        grow[j] = (share * Wz - aj) * grad_scale


# --------------------------------------------------------------------------- elementwise

_BLOCK = 4096  # fixed block size of the elementwise kernels: sums never depend on threads


# exp(-|x|) as (hi + lo) 2^-k, carried beyond double precision (the sigmoid family's
# bound is 2 ulp, which one rounded exp (up to 1 ulp here) and a division would exceed).
_E1 = tuple(1.0 / math.factorial(i) for i in range(15))


@nb.njit(fastmath=_STRICT, **_cache)
def _expm1_small(u: float) -> float:
    """expm1(u) for |u| <= 0.35: u + u^2 (1/2 + u/6 + ... + u^12/14!), error < 1 ulp."""
    q = _E1[14]
    q = q * u + _E1[13]
    q = q * u + _E1[12]
    q = q * u + _E1[11]
    q = q * u + _E1[10]
    q = q * u + _E1[9]
    q = q * u + _E1[8]
    q = q * u + _E1[7]
    q = q * u + _E1[6]
    q = q * u + _E1[5]
    q = q * u + _E1[4]
    q = q * u + _E1[3]
    q = q * u + _E1[2]
    return u + (u * u) * q


@nb.njit(fastmath=_STRICT, **_cache)
def _exp_neg_abs_split(v: float) -> tuple[float, float, int]:
    """e^-|v| = (hi + lo) 2^-k with hi in [0.7, 1.42] and lo its correction.

    Cody-Waite: |v| = k ln2 + r + r_lo with a two-part ln2 (k ln2hi exact; Fast2Sum for
    r_lo), then e^-r = 1 + expm1(-r) with hi = 1 + g and lo the rounding error of that sum
    minus r_lo hi (e^-(r + r_lo) = e^-r (1 - r_lo)).  |v| > 1100 (and inf) give hi = 0.
    """
    a = abs(v)
    if not a <= 1100.0:  # e^-|v| is 0 in every dtype; NaN is handled by the callers
        return 0.0, 0.0, 0
    kf = (a * _LOG2E + _SHIFT) - _SHIFT
    r_hi = a - kf * _LN2HI
    kl = kf * _LN2LO
    r = r_hi - kl
    r_lo = (r_hi - r) - kl
    g = _expm1_small(-r)
    hi = 1.0 + g
    lo = ((1.0 - hi) + g) - r_lo * hi
    return hi, lo, np.int64(kf)


@nb.njit(fastmath=_STRICT, **_cache)
def _times_pow2_neg(x: float, k: int) -> float:
    """x 2^-k for 0 <= k <= 1600, rounding once (two steps where 2^-k is subnormal)."""
    if k > 1000:
        return (x * _i64_as_f64((1023 - (k - 1000)) << 52)) * _TWO_M1000
    return x * _i64_as_f64((1023 - k) << 52)


@nb.njit(fastmath=_STRICT, **_cache)
def _sigmoid1(v: float) -> float:
    # x >= 0: 1 / (1 + t);  x < 0: t / (1 + t), t = e^-|x| = (hi + lo) 2^-k.  1 + t is
    # d_hi + d_lo (Fast2Sum, t <= 1), and a / (d_hi + d_lo) = (a / d_hi)(1 - d_lo / d_hi):
    # one rounded division, so <= 1 ulp.  The subnormal results are rounded once, by 2^-k.
    if v != v:
        return v
    hi, lo, k = _exp_neg_abs_split(v)
    t_hi = _times_pow2_neg(hi, k)
    t_lo = _times_pow2_neg(lo, k)
    d_hi = 1.0 + t_hi
    d_lo = ((1.0 - d_hi) + t_hi) + t_lo
    c = d_lo / d_hi
    if v >= 0.0:
        q = 1.0 / d_hi
        return q - q * c
    if hi == 0.0:
        return 0.0
    q = hi / d_hi
    return _times_pow2_neg(q + q * (lo / hi - c), k)


@nb.njit(fastmath=_STRICT, **_cache)
def _sigmoid_prime1(v: float) -> float:
    # sigma'(x) = t / (1 + t)^2, t = e^-|x|; (1 + t)^2 = (d_hi + d_lo)^2 with d_hi^2 = p1 + p2
    # exactly (Veltkamp/Dekker split), so one rounded division remains
    if v != v:
        return v
    hi, lo, k = _exp_neg_abs_split(v)
    if hi == 0.0:
        return 0.0
    t_hi = _times_pow2_neg(hi, k)
    t_lo = _times_pow2_neg(lo, k)
    d_hi = 1.0 + t_hi
    d_lo = ((1.0 - d_hi) + t_hi) + t_lo
    split = 134217729.0 * d_hi  # 2^27 + 1
    a_hi = split - (split - d_hi)
    a_lo = d_hi - a_hi
    p1 = d_hi * d_hi
    p2 = ((a_hi * a_hi - p1) + 2.0 * a_hi * a_lo) + a_lo * a_lo
    q = hi / p1
    w = q + q * ((lo / hi - p2 / p1) - 2.0 * (d_lo / d_hi))
    return _times_pow2_neg(w, k)


@nb.njit(fastmath=_STRICT, **_cache)
def _softplus1(v: float) -> float:
    # log(1 + e^x) = max(x, 0) + log1p(t), t = t_hi + t_lo = e^-|x|:
    # log1p(t_hi + t_lo) = log1p(t_hi) + t_lo / (1 + t_hi) to first order; both terms >= 0
    if v != v:
        return v
    hi, lo, k = _exp_neg_abs_split(v)
    t_hi = _times_pow2_neg(hi, k)
    t_lo = _times_pow2_neg(lo, k)
    return max(v, 0.0) + (math.log1p(t_hi) + t_lo / (1.0 + t_hi))


@nb.njit(fastmath=_FAST, **_cache)
def _sigmoid_block(x: Any, out: Any, dout: Any, want_d: bool, log: bool) -> None:
    n = x.shape[0]
    if log:
        for i in range(n):
            out[i] = -_softplus1(-np.float64(x[i]))  # log sigma(x) = -softplus(-x)
        if want_d:
            for i in range(n):
                dout[i] = _sigmoid1(-np.float64(x[i]))  # d log sigma(x)/dx = sigma(-x)
    else:
        for i in range(n):
            out[i] = _sigmoid1(np.float64(x[i]))
        if want_d:
            for i in range(n):
                dout[i] = _sigmoid_prime1(np.float64(x[i]))


@nb.njit(parallel=True, **_cache)
def sigmoid_flat(x: Any, out: Any, dout: Any, want_d: bool, log: bool) -> None:
    """sigmoid (or log_sigmoid) of a flat array into out; the derivative into dout."""
    n = x.shape[0]
    nb_ = (n + _BLOCK - 1) // _BLOCK
    for b in prange(nb_):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        d = dout[lo:hi] if want_d else dout
        _sigmoid_block(x[lo:hi], out[lo:hi], d, want_d, log)


@nb.njit(fastmath=_STRICT, **_cache)
def _bce1(v: float, y: float, pw: float) -> tuple[float, float]:
    """(loss, dloss/dx) of BCE with logits: p y softplus(-x) + (1 - y) softplus(x).

    A coefficient 0 gives a 0 term (0 * inf = 0).  d softplus(x)/dx = sigma(x).
    """
    py = pw * y
    ny = 1.0 - y
    a = py * _softplus1(-v) if py != 0.0 else 0.0
    b = ny * _softplus1(v) if ny != 0.0 else 0.0
    ga = py * _sigmoid1(-v) if py != 0.0 else 0.0
    gb = ny * _sigmoid1(v) if ny != 0.0 else 0.0
    return a + b, gb - ga


@nb.njit(parallel=True, **_cache)
def bce_logits_flat(x: Any, y: Any, pos_weight: float, eps: float, store_loss: bool,
                    loss: Any, want_grad: bool, grad: Any, grad_scale: float,
                    partial: Any) -> None:
    """BCE with logits over a flat array: per-element loss (optional), block partial sums,
    and the gradient times grad_scale (optional; grad may be x)."""
    n = x.shape[0]
    nb_ = partial.shape[0]
    for b in prange(nb_):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        partial[b] = _bce_block(x[lo:hi], y[lo:hi], pos_weight, eps, store_loss,
                                loss[lo:hi] if store_loss else loss, want_grad,
                                grad[lo:hi] if want_grad else grad, grad_scale)


@nb.njit(**_cache)
def _bce_block(x: Any, y: Any, pos_weight: float, eps: float, store_loss: bool, loss: Any,
               want_grad: bool, grad: Any, grad_scale: float) -> float:
    acc = 0.0
    for i in range(x.shape[0]):
        yi = np.float64(y[i])
        if eps != 0.0:
            yi = (1.0 - eps) * yi + 0.5 * eps  # y' = (1 - eps) y + eps / 2
        li, gi = _bce1(np.float64(x[i]), yi, pos_weight)
        acc += li
        if store_loss:
            loss[i] = li
        if want_grad:
            grad[i] = gi * grad_scale
    return acc
