# mypy: ignore-errors
# (numba compiles and types this module; its decorators are untyped for mypy)
"""numba kernels for the softmax family and the cross-entropies (imported lazily).

Layout
------
The row-wise kernels mirror the NumPy core, piece by piece and name by name:
``_row_stats`` is ``crossentropy._core.rows.decompose`` (max m, first argmax k, the rest
s = sum_{c != k} e^{x_c - m}, log-sum-exp = m + log1p(s)); the cross-entropy section follows
``crossentropy._core.categorical.logits_rows`` (``_softcap_row``, ``_row_coefficients``,
``_row_loss``, ``_row_grad`` and the special rows; see the comment at its top).  The raw
entry points called by the adapter (``crossentropy._cpu``) are ``logsumexp_rows``,
``softmax_rows``, ``ce_rows``, ``sigmoid_flat`` and ``bce_logits_flat``.

Design
------
* Rows are independent: ``prange`` splits the rows over threads and one thread handles a
  whole row, in a fixed order.  Every result is therefore **bitwise identical whatever the
  number of threads** (the elementwise kernels reduce over fixed-size blocks, also
  independent of the thread count).
* Each row is read from memory once: a max pass brings it into cache (L2 holds a row of
  128k float32 classes), then the exp pass and, for a gradient or a softmax, the write pass
  work on the cached row and on a per-thread float64 scratch row that holds the
  exponentials.  While the (compute-bound) exp pass runs, the *next* row is prefetched into
  L2 line by line, so the next max pass does not wait on memory.
* Large results (``_STREAM_MIN_BYTES``) written over a buffer already in use are formed
  row by row in a scratch row and written with non-temporal stores: an ordinary store
  first reads the line it overwrites, a third memory transfer next to reading the logits
  and writing the result.  (np.copyto, the floor of every writing pass, streams too.)  By
  default only in place (the result over its input); ``softmax_rows_into`` and
  ``ce_rows_into`` let the caller choose.  The gradient may overwrite the logits.
* Everything is computed in float64, float32 inputs included (their results are then
  rounded once), with a vectorisable exp: Cody-Waite reduction ``x = k ln2 + r`` with a
  two-part ln2, a degree-11 polynomial fitted for relative error (Horner form), and 2^k
  added to the exponent bits (one multiplication more near the subnormal range).
  Measured error < 1 ulp (float64).
  float32 rows use a shorter, fitted polynomial (relative error < 2e-9, 0.04 float32 ulp).
* Floating-point flags: the arithmetic whose rounding matters (the exp, the TwoSum of
  x - m) lives in small functions compiled *without* ``reassoc``; LLVM inlines them into
  the loops, which carry ``fastmath=True`` only so that the sums and the max vectorise.
  Flags are per instruction in LLVM, so the inlined code keeps its strict semantics.
  (llvmlite has no SVML, so ``math.exp`` would be a scalar call at ~2.6 ns per element.)
* What bounds the speed: on a machine where one core reads memory faster than it computes
  ~25 float64 operations per element (the exp and its TwoSum), the passes are compute-bound
  and the memory floor is out of reach; see docs/cpu.md for the measured ratios.
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
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
def _f64_as_i64(typingctx: Any, x: Any) -> Any:
    sig = types.int64(types.float64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _i32_as_f32(typingctx: Any, x: Any) -> Any:
    sig = types.float32(types.int32)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _prefetch(typingctx: Any, arr: Any, idx: Any) -> Any:
    """Hint the cache line of ``arr[idx]`` into L2 (``llvm.prefetch``, read, locality 2).

    A hint only: it never faults, even past the end of the array (callers stay inside).
    """
    sig = types.void(arr, idx)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]],
                                       wraparound=False, boundscheck=False)
        i8p = ir.PointerType(ir.IntType(8))
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # (address, 0 = read, locality 2 = keep in L2, 1 = data cache)
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, 0), ir.Constant(i32, 2),
                          ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _wide(typingctx: Any) -> Any:
    """Ask LLVM for 512-bit vectors in the function this is called from (a no-op call).

    LLVM's x86 cost model prefers 256-bit vectors even where AVX-512 exists (the
    ``prefer-256-bit`` tuning: early AVX-512 cores lowered their clock on wide
    instructions).  Our loops are compute-bound in float64 (an exp is ~16 vector
    operations per element), so 8 lanes instead of 4 measured 1.35-1.4x faster on an
    AVX-512 Xeon.  The attribute is a preference: on a CPU without AVX-512 the vectoriser
    uses what it has.  Per-lane arithmetic is the same, so only the order of the
    (fastmath) block sums changes, still independent of the thread count.
    (llvmlite's attribute set accepts only flag attributes, hence ``set.add``.)
    """
    sig = types.void()

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        attrs = builder.function.attributes
        try:
            set.add(attrs, '"prefer-vector-width"="512"')
        except TypeError:  # pragma: no cover  (a future llvmlite: keep LLVM's choice)
            pass
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _inline(typingctx: Any) -> Any:
    """Mark the function this is called from ``alwaysinline`` for LLVM (a no-op call).

    The sigmoid family's scalar pieces are too large for LLVM's inlining threshold; left
    as calls, the loops that use them cannot vectorise (9 ns per element instead of 2.7).
    Inlining keeps each instruction's own floating-point flags, so the strict arithmetic
    stays strict inside a loop compiled otherwise.
    """
    sig = types.void()

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        builder.function.attributes.add("alwaysinline")
        return context.get_dummy_value()

    return sig, codegen


# The sigmoid family compiles with NumPy's error model: a float division by zero gives inf
# or NaN instead of raising ZeroDivisionError, whose per-element test and exception path
# also keep a loop from vectorising.  (Their divisors are >= 1 or guarded: nothing changes.)
_NPERR = {"error_model": "numpy"}

_LINE = 64  # bytes in a cache line


@intrinsic
def _address(typingctx: Any, arr: Any) -> Any:
    """The address of ``arr[0]`` as an integer (to find the first cache-line boundary)."""
    sig = types.int64(arr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(ary.data, ir.IntType(64))

    return sig, codegen


@intrinsic
def _stream_line(typingctx: Any, src: Any, si: Any, dst: Any, di: Any) -> Any:
    """dst[di : di + 64 / itemsize] = src[si : ...] by one non-temporal 64-byte store.

    ``&dst[di]`` must be 64-byte aligned, src and dst of one dtype.  A non-temporal store
    writes the whole line to memory without reading it first (an ordinary store must fetch
    the line it is about to overwrite: a third memory transfer next to the read of the
    logits and the write of the result).
    """
    sig = types.void(src, si, dst, di)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        sty, _, dty, _ = signature.args
        sa = context.make_array(sty)(context, builder, args[0])
        da = context.make_array(dty)(context, builder, args[2])
        sp = cgutils.get_item_pointer(context, builder, sty, sa, [args[1]], wraparound=False,
                                      boundscheck=False)
        dp = cgutils.get_item_pointer(context, builder, dty, da, [args[3]], wraparound=False,
                                      boundscheck=False)
        elt = context.get_data_type(dty.dtype)
        size = context.get_abi_sizeof(elt)
        vt = ir.VectorType(elt, _LINE // size)
        v = builder.load(builder.bitcast(sp, vt.as_pointer()), align=size)
        st = builder.store(v, builder.bitcast(dp, vt.as_pointer()), align=_LINE)
        one = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        st.set_metadata("nontemporal", one)
        return context.get_dummy_value()

    return sig, codegen


def _line_pointers(context: Any, builder: Any, signature: Any, args: Any) -> tuple[Any, Any]:
    """Pointers to src[si] and dst[di] of a (src, si, dst, di, ...) intrinsic call."""
    sty, _, dty, _ = signature.args[:4]
    sa = context.make_array(sty)(context, builder, args[0])
    da = context.make_array(dty)(context, builder, args[2])
    sp = cgutils.get_item_pointer(context, builder, sty, sa, [args[1]], wraparound=False,
                                  boundscheck=False)
    dp = cgutils.get_item_pointer(context, builder, dty, da, [args[3]], wraparound=False,
                                  boundscheck=False)
    return sp, dp


def _splat(builder: Any, v: Any, vt: Any) -> Any:
    """The scalar v in every lane of a vector of type vt."""
    i32 = ir.IntType(32)
    u = builder.insert_element(ir.Constant(vt, ir.Undefined), v, ir.Constant(i32, 0))
    return builder.shuffle_vector(u, ir.Constant(vt, ir.Undefined),
                                  ir.Constant(ir.VectorType(i32, vt.count), [0] * vt.count))


def _store_line(builder: Any, v: Any, dp: Any) -> None:
    """Store the vector v (one cache line) at the 64-byte aligned dp, non-temporally."""
    st = builder.store(v, builder.bitcast(dp, v.type.as_pointer()), align=_LINE)
    st.set_metadata("nontemporal", builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))


# The two intrinsics below write one cache line of a result straight from registers by a
# non-temporal store, with exactly the arithmetic of the scalar functions they stand for
# (``_lsm1``, ``_softmax_write``'s product, ``_div1``), written as vector IR without
# fast-math flags: the same roundings lane by lane, so the same bits (the tests compare the
# streamed and the ordinary writes bit for bit).  Computing a row into a scratch row and
# streaming that (``_stream_row``) read and wrote every element once more, in cache.


@intrinsic
def _log_softmax_line(typingctx: Any, src: Any, si: Any, dst: Any, di: Any, m: Any,
                      L: Any) -> Any:
    """dst[di : di + w] = log-softmax of src[si : si + w] (``_lsm1`` lane by lane) by one
    non-temporal store, w = 64 / itemsize; ``&dst[di]`` 64-byte aligned.  float32 rows:
    (x - m) - L in float64, rounded to float32; float64 rows: (dh - L) + dl with
    x - m = dh + dl exactly (TwoSum), dl = 0 unless |dl| < 1 (x and m finite)."""
    if src.dtype != dst.dtype or src.dtype not in (types.float32, types.float64):
        return None
    sig = types.void(src, si, dst, di, m, L)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        sp, dp = _line_pointers(context, builder, signature, args)
        f64 = ir.DoubleType()
        if signature.args[2].dtype == types.float32:
            v32 = ir.VectorType(ir.FloatType(), _LINE // 4)
            vt = ir.VectorType(f64, _LINE // 4)
            x = builder.fpext(builder.load(builder.bitcast(sp, v32.as_pointer()), align=4), vt)
            r = builder.fsub(builder.fsub(x, _splat(builder, args[4], vt)),
                             _splat(builder, args[5], vt))
            _store_line(builder, builder.fptrunc(r, v32), dp)
        else:
            vt = ir.VectorType(f64, _LINE // 8)
            x = builder.load(builder.bitcast(sp, vt.as_pointer()), align=8)
            mv = _splat(builder, args[4], vt)
            dh = builder.fsub(x, mv)
            bb = builder.fsub(dh, x)
            dl = builder.fadd(builder.fsub(x, builder.fsub(dh, bb)),
                              builder.fsub(builder.fneg(mv), bb))
            one = ir.Constant(vt, [1.0] * vt.count)
            ok = builder.and_(builder.fcmp_ordered("<", dl, one),
                              builder.fcmp_ordered(">", dl, builder.fneg(one)))
            dl = builder.select(ok, dl, ir.Constant(vt, [0.0] * vt.count))
            _store_line(builder, builder.fadd(builder.fsub(dh, _splat(builder, args[5], vt)),
                                              dl), dp)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _softmax_line(typingctx: Any, src: Any, si: Any, dst: Any, di: Any, d: Any,
                  c: Any) -> Any:
    """dst[di : di + w] = softmax from the float64 exponentials src[si : si + w] by one
    non-temporal store (w = 64 / itemsize of dst, ``&dst[di]`` 64-byte aligned): float32
    rows e * d rounded to float32 (d = 1 / (1 + s), as ``_softmax_write``); float64 rows
    q - q c with q = e / d, one fused multiply-add (``_div1``, which LLVM contracts)."""
    if src.dtype != types.float64 or dst.dtype not in (types.float32, types.float64):
        return None
    sig = types.void(src, si, dst, di, d, c)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        sp, dp = _line_pointers(context, builder, signature, args)
        f64 = ir.DoubleType()
        w = _LINE // (4 if signature.args[2].dtype == types.float32 else 8)
        vt = ir.VectorType(f64, w)
        e = builder.load(builder.bitcast(sp, vt.as_pointer()), align=8)
        if w == _LINE // 4:
            r = builder.fmul(e, _splat(builder, args[4], vt))
            _store_line(builder, builder.fptrunc(r, ir.VectorType(ir.FloatType(), w)), dp)
        else:
            q = builder.fdiv(e, _splat(builder, args[4], vt))
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{w}f64")
            r = builder.call(fma, [builder.fneg(q), _splat(builder, args[5], vt), q])
            _store_line(builder, r, dp)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _grad_line(typingctx: Any, src: Any, si: Any, dst: Any, di: Any, d: Any, c: Any,
               Wz: Any, b: Any, f: Any) -> Any:
    """dst[di : di + w] = the cross-entropy gradient f (p W' - b) of the classes whose
    float64 exponentials are src[si : si + w], by one non-temporal store (``_g1`` without
    class weights or soft cap, lane by lane; w = 64 / itemsize of dst, ``&dst[di]``
    64-byte aligned).  p = e d for float32 rows, q - q c with q = e / d for float64 ones;
    p W' - b and q - q c are each one fused multiply-add, as LLVM contracts ``_g1``."""
    if src.dtype != types.float64 or dst.dtype not in (types.float32, types.float64):
        return None
    sig = types.void(src, si, dst, di, d, c, Wz, b, f)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        sp, dp = _line_pointers(context, builder, signature, args)
        f32 = signature.args[2].dtype == types.float32
        w = _LINE // (4 if f32 else 8)
        vt = ir.VectorType(ir.DoubleType(), w)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vt, [vt, vt, vt]), f"llvm.fma.v{w}f64")
        e = builder.load(builder.bitcast(sp, vt.as_pointer()), align=8)
        if f32:
            pv = builder.fmul(e, _splat(builder, args[4], vt))
        else:
            q = builder.fdiv(e, _splat(builder, args[4], vt))
            pv = builder.call(fma, [builder.fneg(q), _splat(builder, args[5], vt), q])
        g = builder.call(fma, [pv, _splat(builder, args[6], vt),
                               builder.fneg(_splat(builder, args[7], vt))])
        g = builder.fmul(g, _splat(builder, args[8], vt))
        if f32:
            g = builder.fptrunc(g, ir.VectorType(ir.FloatType(), w))
        _store_line(builder, g, dp)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _store_fence(typingctx: Any) -> Any:
    """A full memory fence (``fence seq_cst``: mfence on x86-64): the non-temporal stores
    before it are visible before anything after it.  They are weakly ordered, so each
    thread fences before its part of a kernel ends."""
    sig = types.void()

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return sig, codegen


# Results of at least this many bytes may be written with non-temporal stores (see
# ``_streams``): they do not fit in the caches anyway, and skipping the read of each line
# before it is overwritten is what brings a writing pass nearer np.copyto (which streams
# too).  Smaller results stay cached.
_STREAM_MIN_BYTES = 1 << 25  # 32 MiB


def _streams(out: Any, x: Any) -> bool:
    """Write `out` with non-temporal stores, when nothing else says?  Only when it is large
    and C-contiguous (``_stream_line`` writes 64 contiguous bytes) and overwrites the input
    x itself, whose pages are known to be in use.  (Streaming into an array just allocated
    by np.empty, whose pages fault in on first touch, measured 12-21% slower than ordinary
    stores; into a buffer already in use, 5-15% faster: callers that know which one they
    have say so through ``softmax_rows_into`` / ``ce_rows_into``.)"""
    # (the size first: flags and ctypes cost a microsecond, a small call's whole budget)
    return bool(out.size * out.itemsize >= _STREAM_MIN_BYTES and out.flags.c_contiguous
                and out.ctypes.data == x.ctypes.data)


@nb.njit(**_cache)
def _line_head(dst: Any) -> int:
    """Entries of dst before its first 64-byte boundary (at most its length)."""
    return int(min(dst.shape[0], ((_LINE - _address(dst) % _LINE) % _LINE) // dst.itemsize))


@nb.njit(**_cache)
def _stream_row(src: Any, dst: Any) -> None:
    """dst[:] = src[:]: the 64-byte-aligned lines of dst by non-temporal stores, the partial
    lines at both ends by ordinary ones (they may share a line with the next row)."""
    n = dst.shape[0]
    w = _LINE // dst.itemsize
    head = _line_head(dst)
    for j in range(head):
        dst[j] = src[j]
    j = head
    while j + w <= n:
        _stream_line(src, j, dst, j)
        j += w
    for t in range(j, n):
        dst[t] = src[t]


# --------------------------------------------------------------------------- exp

_LOG2E = 1.4426950408889634
# ln 2 = _LN2HI + _LN2LO; _LN2HI has 21 trailing zero bits (0x3FE62E42FEE00000), so
# k * _LN2HI is exact for |k| < 2^21 (here |k| <= 1100).
_LN2HI = 6.93147180369123816490e-01
_LN2LO = 1.90821492927058770002e-10
_SHIFT = 6755399441055744.0  # 1.5 * 2**52: adding and subtracting it rounds to an integer
# The bits of _SHIFT as an int64 (0x4338000000000000).  For t = u + _SHIFT with |u| < 2^51, t's
# significand holds round(u) as an integer k, so bits(t) - _SHIFT_BITS = k exactly: the
# integer k without a float-to-int64 conversion, which AVX2 lacks (vcvttpd2qq is
# AVX-512DQ), so that LLVM splits every vector of a loop into four scalar conversions
# (float64 `ce` and `softmax` took 1.05-1.15x as long with them on an AMD Zen 3).
_SHIFT_BITS = int(np.float64(_SHIFT).view(np.int64))
_TWO_M1000 = 9.332636185032189e-302  # 2**-1000
# exp(r) on |r| <= ln2 / 2 as 1 + r + r^2 Q(r), Q of degree 9: Q's coefficients fitted for
# the least maximal *relative* error of exp (Lawson's iteration on 400 Chebyshev nodes,
# mpmath at 50 digits; each coefficient rounded to float64 in turn and the others refitted).
# With the rounded coefficients the error is 3.71e-18 (0.033 ulp; mpmath on 8001 points):
# as good as the Taylor series to r^13 (4e-18), two multiply-adds fewer per element.
_Q11 = (0.5000000000000011, 0.16666666666666452, 0.04166666666652821, 0.008333333333475915,
        0.0013888888943906271, 0.0001984126953802481, 2.4801492939961275e-05,
        2.755756339234989e-06, 2.7630278510738106e-07, 2.5006201691167824e-08)
(_E2, _E3, _E4, _E5, _E6, _E7, _E8, _E9, _E10, _E11) = _Q11


@nb.njit(fastmath=_STRICT, **_cache)
def _exp_dd(d: float, dl: float) -> float:
    """exp(d + dl) for d <= 709 and |dl| <= 2^-52 |d| (the rounding error of d), < 1 ulp;
    0 for d < -745.2 and d = -inf.  NaN gives 0: callers detect NaN rows separately."""
    d = d if d > -746.0 else -746.0
    # k = round(d / ln2): the shift makes the addition round to an integer (ties to even)
    t = d * _LOG2E + _SHIFT
    kf = t - _SHIFT
    # r = (d + dl) - k ln2 in [-0.35, 0.35], exact to ~2^-60 (Cody-Waite, two-part ln2);
    # dl joins r instead of a factor (1 + dl) after the exp: one addition for a
    # multiply-add (exp(r + dl) is then the one rounding of r + dl, < 2^-54 relative)
    r = ((d - kf * _LN2HI) - kf * _LN2LO) + dl
    p = _E11
    p = p * r + _E10
    p = p * r + _E9
    p = p * r + _E8
    p = p * r + _E7
    p = p * r + _E6
    p = p * r + _E5
    p = p * r + _E4
    p = p * r + _E3
    p = p * r + _E2
    p = p * r + 1.0
    p = p * r + 1.0
    # exp(d) = 2^k exp(r), 2^k added to p's exponent field (exact while the result is
    # normal: p in [0.7, 1.42]; bits(p) + (k << 52) for negative k too, two's complement).
    # Below k = -1000 the result may be subnormal: add k + 1000, then multiply by 2^-1000
    # (one rounding, at the end).
    k = _f64_as_i64(t) - _SHIFT_BITS  # = kf as an integer (see _SHIFT_BITS)
    small = k < -1000
    kb = k + 1000 if small else k
    s2 = _TWO_M1000 if small else 1.0
    return _i64_as_f64(_f64_as_i64(p) + (kb << 52)) * s2


@nb.njit(fastmath=_STRICT, **_cache)
def exp_le0(d: float) -> float:
    """exp(d) for d <= 0 (also fine up to d = 709), < 1 ulp; 0 for d < -745.2 and d = -inf.

    NaN gives 0: callers detect NaN rows separately.
    """
    return _exp_dd(d, 0.0)


_LN2 = 0.6931471805599453
# exp(r) on |r| <= ln2 / 2 by a degree-6 polynomial fitted for the least maximal *relative*
# error (Lawson's iteration on 4000 Chebyshev nodes over [-0.34661, 0.34661], checked
# against mpmath on 1000 points: max relative error 1.86e-9).  (The Taylor series needs
# degree 8 for the same interval: two multiply-adds more per element.)
_P6 = (1.00000000055461, 1.0000000363447343, 0.49999992075048466, 0.16666420072057997,
       0.04166822619838978, 0.008374824054652777, 0.001383683523564778)
(_Q0, _Q1, _Q2, _Q3, _Q4, _Q5, _Q6) = _P6


@nb.njit(fastmath=_STRICT, **_cache)
def exp_le0_f32(d: float) -> float:
    """exp(d) in float64 for float32 work (d <= 0): relative error < 2e-9 (0.04 float32 ulp).

    Results below exp(-700) ~ 1e-304 are far under float32's smallest subnormal (1.4e-45),
    so d is clamped there and 2^k is always a normal number (one multiplication).  The
    reduction r = d - k ln2 with a one-part ln2 errs by |k| 2^-53 <= 1e-13; the fitted
    polynomial ``_P6`` errs by at most 1.86e-9 relative on |r| <= ln2 / 2.  Rounding the
    float64 result to float32 then stays within 0.5 + 0.04 ulp.
    """
    d = d if d > -700.0 else -700.0
    t = d * _LOG2E + _SHIFT  # the shift rounds to an integer k = t - _SHIFT (ties to even)
    kf = t - _SHIFT
    r = d - kf * _LN2
    p = _Q6
    p = p * r + _Q5
    p = p * r + _Q4
    p = p * r + _Q3
    p = p * r + _Q2
    p = p * r + _Q1
    p = p * r + _Q0
    # p 2^k by adding k to p's exponent field: exact, as the product is, while the result
    # is normal (p in [0.7, 1.42], k >= -1010).  The low bits of t hold k: bits(t) =
    # bits(_SHIFT) + k, and bits(_SHIFT) ends in 51 zero bits, so its low 12 bits, the
    # only ones the shift keeps, are 0: bits(t) << 52 = k << 52 (mod 2^64, negative k
    # included, |k| < 2^11).  Two integer operations instead of a conversion,
    # an addition, a shift and a multiplication.
    return _i64_as_f64(_f64_as_i64(p) + (_f64_as_i64(t) << 52))


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
def exp_shift(x: float, m: float) -> float:
    """exp(x - m) for x <= m (float64), with the rounding error of x - m put back.

    dh = fl(x - m), dl = (x - m) - dh exactly (Knuth's TwoSum, ``two_diff``); exp(dh + dl)
    with dl added to the reduced argument (see ``_exp_dd``).
    """
    dh, dl = two_diff(x, m)
    return _exp_dd(dh, dl)


@nb.njit(fastmath=_STRICT, **_cache)
def exp_shift32(x: float, m: float) -> float:
    """exp(x - m) for float32 x and m: x - m is exact in float64 (both have 24-bit
    significands; when it is not, exp(x - m) underflows float32 anyway)."""
    return exp_le0_f32(x - m)


@nb.njit(fastmath=_STRICT, **_cache)
def is_eq_i(a: float, b: float) -> int:
    return 1 if a == b else 0


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
def _row_stats_short(a: Any, i: int, exact: bool, buf: Any,
                     store: bool) -> tuple[float, float, int, int]:
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


@nb.njit(inline="always", **_cache)
def _row_stats(xr: Any, exact: bool, buf: Any, store: bool, nxt: Any,
               mb: Any) -> tuple[float, float, int, int]:
    """(m, s, k, kind) of a row: kind 0 finite max, 1 max +inf, 2 all -inf/empty, 3 NaN.

    The numba side of ``crossentropy._core.rows.decompose``.  For kind 0: m = x_k is the
    maximum, k its first index, and sum(exp(x - m)) = 1 + s with s the sum over j != k
    (other maxima add exactly 1 each), so that log-sum-exp = m + log1p(s).  With ``store``
    the exponentials go to ``buf`` (``buf[k] = 1``).  ``nxt``: the next row (same length)
    to prefetch while the exponentials are computed, or an empty array.  ``mb``: scratch
    of ``_one_pass_blocks(n)`` floats for the one pass with ``store`` (else unused).
    """
    _wide()  # 512-bit vectors (see _wide)
    n = xr.shape[0]
    if n == 0:
        return -np.inf, 0.0, 0, 2
    # float32 rows: each branch calls with constant flags, and numba compiles the callees
    # (down to the exp loops) for those constants.  Passed on as run-time flags they cost
    # the one pass 10% (value) and ~45% (stored) per element (bench/onepass.py).  With
    # the float32 two pass inlined and exp sums of <= 4096 terms in one call as well, the
    # statistics of cached 1000-class rows went from 0.76-0.80 to 0.63-0.64 ns per element
    # (an ad-hoc loop, see docs/cpu.md).
    # float64 rows keep run-time flags for the two passes: with constant ones the
    # cross-entropy kernel measured 1.04-1.06x as long (bench/cpu.py --against, 3 pairs).
    if exact:
        if n <= _SHORT:
            return _row_stats_short(xr, 0, True, buf, True) if store else \
                _row_stats_short(xr, 0, True, buf, False)
        return _row_stats_2pass(xr, exact, buf, store, nxt)
    if n <= _SHORT:
        return _row_stats_short(xr, 0, False, buf, True) if store else \
            _row_stats_short(xr, 0, False, buf, False)
    if store:
        if n >= _ONEPASS_MIN_STORED:
            return _row_stats_1pass_stored(xr, buf, mb)
        return _row_stats_2pass_inline(xr, False, buf, True, nxt)
    if n >= _ONEPASS_MIN:
        return _row_stats_1pass(xr, buf, mb)
    return _row_stats_2pass_inline(xr, False, buf, False, nxt)


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


# --------------------------------------------------------------------------- softmax family


def _chunks(n: int) -> int:
    """Number of row chunks for ``prange``: 8 per thread (rows are cheap to split)."""
    return max(1, min(n, 8 * nb.get_num_threads()))


# Below this many elements a kernel runs on the calling thread: waking the worker threads
# costs more than the work (tens of microseconds on an idle machine, milliseconds on a loaded
# one).  Each row is computed the same way either way, so the results are identical.
_SERIAL_MAX = 1 << 17


def _serial(x: Any) -> bool:
    return bool(x.size < _SERIAL_MAX)


# Rows longer than this are not prefetched while their exponentials are stored: the row, its
# float64 scratch row and the next row would not fit in L2 together (at 128256 classes the
# prefetch evicted the current row and cost 5-10%; without the scratch row it still pays).
_PREFETCH_MAX_STORED = 1 << 16
_ONEPASS_MIN_STORED = _PREFETCH_MAX_STORED + 1  # (the stored one pass: see above _OBLK)


@nb.njit(**_cache)
def _next_row(x: Any, i: int, hi: int, store: bool) -> Any:
    """Row i + 1 of x to prefetch if this chunk processes it (and it fits), else empty."""
    if i + 1 < hi and not (store and x.shape[1] > _PREFETCH_MAX_STORED):
        return x[i + 1]
    return x[i][:0]


def logsumexp_rows(x: Any, exact: bool, out: Any, nchunks: int) -> None:
    """out[i] = log(sum(exp(x[i]))) = m + log1p(s)."""
    if _serial(x):
        _logsumexp_chunk(x, exact, out, 0, x.shape[0])
    else:
        _logsumexp_rows(x, exact, out, nchunks)


@nb.njit(parallel=True, **_cache)
def _logsumexp_rows(x: Any, exact: bool, out: Any, nchunks: int) -> None:
    N = x.shape[0]
    for c in prange(nchunks):
        _logsumexp_chunk(x, exact, out, c * N // nchunks, (c + 1) * N // nchunks)


@nb.njit(**_cache)
def _logsumexp_chunk(x: Any, exact: bool, out: Any, lo: int, hi: int) -> None:
    """logsumexp_rows on rows lo..hi-1 (one thread)."""
    _wide()  # 512-bit vectors (see _wide)
    dummy = np.empty(_SUMBLK64)  # the block buffer of float64 rows
    for i in range(lo, hi):
        m, s, _k, kind = _row_stats(x[i], exact, dummy, False, _next_row(x, i, hi, False),
                                    dummy[:0])
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


@nb.njit(fastmath=_STRICT, **_cache)
def _one_plus(s: float) -> tuple[float, float]:
    """(S, S_lo / S) with S + S_lo = 1 + s exactly (TwoSum)."""
    S, lo = _two_sum(1.0, s)
    return S, lo / S


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


def softmax_rows(x: Any, exact: bool, log: bool, out: Any, nchunks: int) -> None:
    """Softmax (or log-softmax) of each row of x into out (out may be x)."""
    softmax_rows_into(x, exact, log, out, nchunks, _streams(out, x))


def softmax_rows_into(x: Any, exact: bool, log: bool, out: Any, nchunks: int,
                      stream: bool) -> None:
    """softmax_rows with the choice of non-temporal stores made by the caller.

    stream=True pays for a large `out` (32 MiB and more) that is already in use (a caller's
    ``out=``: 5-15% faster); for an array just allocated by np.empty, whose pages fault in
    on first touch, ordinary stores measured 12-21% faster (stream=False).  Requires a
    C-contiguous `out` when stream is True.
    """
    if _serial(x):
        _softmax_chunk(x, exact, log, out, 0, x.shape[0], stream)
    else:
        _softmax_rows(x, exact, log, out, nchunks, stream)


@nb.njit(parallel=True, **_cache)
def _softmax_rows(x: Any, exact: bool, log: bool, out: Any, nchunks: int,
                  stream: bool) -> None:
    N = x.shape[0]
    for c in prange(nchunks):
        _softmax_chunk(x, exact, log, out, c * N // nchunks, (c + 1) * N // nchunks, stream)


@nb.njit(**_cache)
def _softmax_chunk(x: Any, exact: bool, log: bool, out: Any, lo: int, hi: int,
                   stream: bool) -> None:
    """softmax_rows on rows lo..hi-1 (one thread); ``stream``: the whole lines of each
    row are written by non-temporal stores straight from registers (``_stream_log_softmax``,
    ``_stream_softmax``), the rest (and rows without a distribution) by ordinary ones."""
    _wide()  # 512-bit vectors (see _wide)
    C = x.shape[1]
    buf = np.empty(_SUMBLK64 if log else C)  # log: only the block buffer
    mb = np.empty(0 if log else _one_pass_blocks(C))
    for i in range(lo, hi):
        xr = x[i]
        m, s, _k, kind = _row_stats(xr, exact, buf, not log, _next_row(x, i, hi, not log),
                                    mb)
        orow = out[i]
        if kind != 0:
            _softmax_special(xr, kind, log, orow)
        elif log:
            if stream:
                _stream_log_softmax(xr, m, math.log1p(s), exact, orow)
            else:
                _log_softmax_write(xr, m, math.log1p(s), exact, orow)
        else:
            # p_j = e_j / (1 + s).  A division per element is exact to 0.5 ulp; for
            # float32 output the product with 1 / (1 + s) (two float64 roundings) is
            # still far below float32's half-ulp, and vectorises better.
            if exact:
                S, cS = _one_plus(s)
            else:
                S, cS = 1.0 / (1.0 + s), 0.0
            if stream:
                _stream_softmax(buf, S, cS, exact, orow)
            elif exact:
                _softmax_write_div(buf, S, cS, orow)
            else:
                _softmax_write(buf, S, orow)
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


@nb.njit(**_cache)
def _stream_softmax(buf: Any, d: float, c: float, exact: bool, orow: Any) -> None:
    """``_softmax_write`` (float32: d = 1 / (1 + s)) or ``_softmax_write_div`` (float64)
    with the whole cache lines of orow stored non-temporally."""
    n = orow.shape[0]
    w = _LINE // orow.itemsize
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


def ce_rows(x: Any, target: Any, weight: Any, has_w: bool, ignore_index: int, eps: float,
            z_loss: float, cap: float, grad: Any, want_grad: bool, grad_scale: float,
            exact: bool, loss: Any, lse: Any, nchunks: int) -> None:
    """Per-row cross-entropy of index targets: loss[i], lse[i] and (want_grad)
    grad[i] = grad_scale * d loss[i] / d x[i].

    x: (N, C) float32/float64 logits; target: int64 [N] (range already checked; a row whose
    target equals ignore_index gets loss 0 and a zero gradient row); weight: float64 [C]
    (read only if has_w); eps: label smoothing; z_loss: zeta; cap: soft cap (<= 0: none);
    grad: (N, C) of x's dtype, may be x itself; exact: x is float64; nchunks: from
    ``_chunks``.  The pieces are described above.
    """
    ce_rows_into(x, target, weight, has_w, ignore_index, eps, z_loss, cap, grad, want_grad,
                 grad_scale, exact, loss, lse, nchunks, want_grad and _streams(grad, x))


def ce_rows_into(x: Any, target: Any, weight: Any, has_w: bool, ignore_index: int, eps: float,
                 z_loss: float, cap: float, grad: Any, want_grad: bool, grad_scale: float,
                 exact: bool, loss: Any, lse: Any, nchunks: int, stream: bool) -> None:
    """ce_rows with the choice of non-temporal stores for the gradient made by the caller
    (see :func:`softmax_rows_into`: True for a large gradient buffer already in use, such
    as ``grad_out``, False for a fresh np.empty; only with want_grad and a C-contiguous
    grad)."""
    # (without weights on the host: a numba call costs a microsecond)
    wsum = _weight_sum(weight, has_w, x.shape[1]) if has_w else float(x.shape[1])
    if _serial(x):
        _ce_chunk(x, target, weight, has_w, ignore_index, eps, z_loss, cap, grad, want_grad,
                  grad_scale, exact, loss, lse, 0, x.shape[0], stream, wsum)
    else:
        _ce_rows(x, target, weight, has_w, ignore_index, eps, z_loss, cap, grad, want_grad,
                 grad_scale, exact, loss, lse, nchunks, stream, wsum)


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


@nb.njit(parallel=True, **_cache)
def _ce_rows(x: Any, target: Any, weight: Any, has_w: bool, ignore_index: int, eps: float,
             z_loss: float, cap: float, grad: Any, want_grad: bool, grad_scale: float,
             exact: bool, loss: Any, lse: Any, nchunks: int, stream: bool,
             wsum: float) -> None:
    N = x.shape[0]
    for c in prange(nchunks):
        _ce_chunk(x, target, weight, has_w, ignore_index, eps, z_loss, cap, grad, want_grad,
                  grad_scale, exact, loss, lse, c * N // nchunks, (c + 1) * N // nchunks,
                  stream, wsum)


# Gradient rows of at least this many classes are streamed line by line from registers
# (``_stream_grad``); shorter ones through a scratch row, as before: at 1000-4096 classes
# the direct write's per-row set-up (the partial lines at both ends, the two patched
# lines) cost more than the scratch row's extra pass over cache (float32 ce_grad_out
# 1.15-1.30x the scratch row's time at 1000 and 2048 classes, 0.90 at 32,000 and 128,256;
# bench/cpu.py --against, 5 pairs, AMD Zen 4, 2026-12-02).
_DIRECT_GRAD_MIN = 8192


@nb.njit(**_cache)
def _ce_chunk(x: Any, target: Any, weight: Any, has_w: bool, ignore_index: int, eps: float,
              z_loss: float, cap: float, grad: Any, want_grad: bool, grad_scale: float,
              exact: bool, loss: Any, lse: Any, lo: int, hi: int, stream: bool,
              wsum: float) -> None:
    """ce_rows on rows lo..hi-1 (one thread); wsum = sum_c w_c.  ``stream``: the gradient
    goes to memory by non-temporal stores, line by line from registers (``_stream_grad``)
    or, with class weights or a soft cap, formed in a scratch row (in cache) first."""
    _wide()  # 512-bit vectors (see _wide)
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
        # row statistics of z (soft-capped into zb, float64) or of the logits themselves;
        # the float32 branches call with constant flags, as _row_stats does
        if capped:
            _softcap_row(x[i], cap, zb, db)
            m, s, k, kind = _row_stats(zb, True, buf, want_grad, zb[:0], mb)
        elif short and exact:
            m, s, k, kind = _row_stats_short(x, i, True, buf, True)
        elif short:
            m, s, k, kind = _row_stats_short(x, i, False, buf, True)
        else:
            m, s, k, kind = _row_stats(x[i], exact, buf, want_grad,
                                       _next_row(x, i, hi, want_grad), mb)
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


# --------------------------------------------------------------------------- elementwise

_BLOCK = 4096  # fixed block size of the elementwise kernels: sums never depend on threads


# exp(-|x|) as (hi + lo) 2^-k, carried beyond double precision (the sigmoid family's
# bound is 2 ulp, which one rounded exp (up to 1 ulp here) and a division would exceed).
_E1 = tuple(1.0 / math.factorial(i) for i in range(15))


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _expm1_small(u: float) -> float:
    """expm1(u) for |u| <= 0.35: u + u^2 (1/2 + u/6 + ... + u^12/14!), error < 1 ulp."""
    _inline()  # into the vectorised loops (see _inline)
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


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _exp_neg_abs_split(v: float) -> tuple[float, float, int]:
    """e^-|v| = (hi + lo) 2^-k with hi in [0.7, 1.42] and lo its correction.

    Cody-Waite: |v| = k ln2 + r + r_lo with a two-part ln2 (k ln2hi exact; Fast2Sum for
    r_lo), then e^-r = 1 + expm1(-r) with hi = 1 + g and lo the rounding error of that sum
    minus r_lo hi (e^-(r + r_lo) = e^-r (1 - r_lo)).  |v| > 1100 (and inf) give hi = 0.
    """
    _inline()  # into the vectorised loops (see _inline)
    a = abs(v)
    if not a <= 1100.0:  # e^-|v| is 0 in every dtype; NaN is handled by the callers
        return 0.0, 0.0, 0
    t = a * _LOG2E + _SHIFT
    kf = t - _SHIFT
    r_hi = a - kf * _LN2HI
    kl = kf * _LN2LO
    r = r_hi - kl
    r_lo = (r_hi - r) - kl
    g = _expm1_small(-r)
    hi = 1.0 + g
    lo = ((1.0 - hi) + g) - r_lo * hi
    return hi, lo, _f64_as_i64(t) - _SHIFT_BITS  # = kf as an integer (see _SHIFT_BITS)


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _times_pow2_neg(x: float, k: int) -> float:
    """x 2^-k for 0 <= k <= 1600, rounding once (two steps where 2^-k is subnormal)."""
    _inline()  # into the vectorised loops (see _inline)
    if k > 1000:
        return (x * _i64_as_f64((1023 - (k - 1000)) << 52)) * _TWO_M1000
    return x * _i64_as_f64((1023 - k) << 52)


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _one_plus_t(hi: float, lo: float, k: int) -> tuple[float, float, float, float]:
    """(t_hi, t_lo, d_hi, d_lo): t = t_hi + t_lo = (hi + lo) 2^-k = e^-|x| (from
    ``_exp_neg_abs_split``) and 1 + t = d_hi + d_lo exactly (Fast2Sum, t <= 1); the piece
    the sigmoid, its derivative and the softplus share."""
    _inline()  # into the vectorised loops (see _inline)
    t_hi = _times_pow2_neg(hi, k)
    t_lo = _times_pow2_neg(lo, k)
    d_hi = 1.0 + t_hi
    d_lo = ((1.0 - d_hi) + t_hi) + t_lo
    return t_hi, t_lo, d_hi, d_lo


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _sigmoid_parts(hi: float, lo: float, k: int) -> tuple[float, float, float, float]:
    """(1 / (1 + t), t / (1 + t), t_hi, t_lo) for t = t_hi + t_lo = (hi + lo) 2^-k = e^-|x|
    (``_exp_neg_abs_split``): sigma(|x|), sigma(-|x|) and t, shared by the sigmoid and
    the binary cross-entropy, which needs all of them.

    With 1 + t = d_hi + d_lo (``_one_plus_t``), a / (d_hi + d_lo) = (a / d_hi)(1 - d_lo /
    d_hi): one rounded division, so <= 1 ulp.  The subnormal t / (1 + t) is rounded once,
    by 2^-k.
    """
    _inline()  # into the vectorised loops (see _inline)
    t_hi, t_lo, d_hi, d_lo = _one_plus_t(hi, lo, k)
    c = d_lo / d_hi
    q = 1.0 / d_hi
    qt = hi / d_hi
    small = _times_pow2_neg(qt + qt * (lo / hi - c), k) if hi != 0.0 else 0.0
    return q - q * c, small, t_hi, t_lo


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _sigmoid1(v: float) -> float:
    # x >= 0: 1 / (1 + t);  x < 0: t / (1 + t), t = e^-|x| (see _sigmoid_parts)
    _inline()  # into the vectorised loops (see _inline)
    if v != v:
        return v
    big, small, _, _ = _sigmoid_parts(*_exp_neg_abs_split(v))
    return big if v >= 0.0 else small


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _sigmoid_prime1(v: float) -> float:
    # sigma'(x) = t / (1 + t)^2, t = e^-|x|; (1 + t)^2 = (d_hi + d_lo)^2 with d_hi^2 = p1 + p2
    # exactly (Veltkamp/Dekker split), so one rounded division remains
    _inline()  # into the vectorised loops (see _inline)
    if v != v:
        return v
    hi, lo, k = _exp_neg_abs_split(v)
    _, _, d_hi, d_lo = _one_plus_t(hi, lo, k)
    split = 134217729.0 * d_hi  # 2^27 + 1
    a_hi = split - (split - d_hi)
    a_lo = d_hi - a_hi
    p1 = d_hi * d_hi
    p2 = ((a_hi * a_hi - p1) + 2.0 * a_hi * a_lo) + a_lo * a_lo
    # (hi + lo) / ((d_hi + d_lo)^2) = q (1 + lo / hi - p2 / p1 - 2 d_lo / d_hi) to first
    # order, q = hi / p1 the one rounded division.  The correction is ~2^-52 of q, so it
    # needs only a few correct bits: q lo / hi = lo / p1, q / d_hi = q d_hi / p1, and 1 / p1
    # is one more (independent) division, instead of three.  With no division by hi, the
    # |x| > 1100 case (hi = lo = 0, k = 0: q = w = 0) needs no early return: a branch that
    # returns early kept the loop from vectorising on AVX2 (scalar, 3x slower on a Zen 3).
    q = hi / p1
    ip = 1.0 / p1
    w = q + ip * ((lo - q * p2) - 2.0 * (q * d_lo) * d_hi)
    return _times_pow2_neg(w, k)


# log(1 + f) = 2 atanh(s) with s = f / (2 + f): 2s + s R(s^2), R(z) = sum_j 2 z^j / (2j + 1)
# (the atanh series).  With f in [sqrt(1/2) - 1, sqrt(2) - 1], |s| <= 0.1716 and z <= 0.02944,
# so the series cut after z^9 errs by < z^10 / 21 < 2.3e-17 relative: 0.2 ulp.
_SQRT2 = 1.4142135623730951
_ATANH_R = tuple(2.0 / (2 * j + 1) for j in range(1, 10))
(_R1, _R2, _R3, _R4, _R5, _R6, _R7, _R8, _R9) = _ATANH_R


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _log1p01(t: float, tl: float) -> float:
    """log1p(t + tl) for 0 <= t <= 1 and |tl| <= 2^-52 t: < 1 ulp (0.92 ulp measured against
    mpmath on 400,000 points), branch-free, so that the loops which inline it vectorise
    (libm's log1p is a scalar call: 10 ns an element on a Zen 3, against 1.7 for this).

    1 + t + tl = u + c with u = fl(1 + t) and c = (t - (u - 1)) + tl (Fast2Sum, t <= 1), so
    log1p(t + tl) = log(u) + c / u to first order.  u in [1, 2] is reduced to 2^e (1 + f)
    with f = u - 1 or u / 2 - 1 (both exact: Sterbenz) and |log(1 + f)| <= ln(2) / 2; then
    log(1 + f) = f - f^2/2 + s (f^2/2 + R), since f - s f = 2s (s = f / (2 + f)): the large
    terms f and f^2/2 come first and the rounding errors fall on the small ones.
    """
    _inline()  # into the vectorised loops (see _inline)
    u = 1.0 + t
    c = (t - (u - 1.0)) + tl
    big = u > _SQRT2
    f = (0.5 * u - 1.0) if big else (u - 1.0)
    e = 1.0 if big else 0.0
    s = f / (2.0 + f)
    z = s * s
    r = _R9
    r = r * z + _R8
    r = r * z + _R7
    r = r * z + _R6
    r = r * z + _R5
    r = r * z + _R4
    r = r * z + _R3
    r = r * z + _R2
    r = r * z + _R1
    r = r * z
    hfsq = 0.5 * f * f
    # e ln2 = e _LN2HI + e _LN2LO, the first exact (e is 0 or 1)
    lo = s * (hfsq + r) + (e * _LN2LO + c / u)
    return e * _LN2HI + (f - (hfsq - lo))


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _softplus1(v: float) -> float:
    # log(1 + e^x) = max(x, 0) + log1p(t), t = t_hi + t_lo = e^-|x| (both terms >= 0)
    _inline()  # into the vectorised loops (see _inline)
    if v != v:
        return v
    t_hi, t_lo, _, _ = _one_plus_t(*_exp_neg_abs_split(v))
    return max(v, 0.0) + _log1p01(t_hi, t_lo)


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _sigmoid_block(x: Any, out: Any, dout: Any, want_d: bool, log: bool) -> None:
    # (strict, not fastmath: these loops sum nothing, and a fast negation's nnan flag
    # would let LLVM fold the inlined NaN tests away)
    _wide()  # 512-bit vectors (see _wide)
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


def sigmoid_flat(x: Any, out: Any, dout: Any, want_d: bool, log: bool) -> None:
    """sigmoid (or log_sigmoid) of a flat array into out; the derivative into dout."""
    if _serial(x):
        _sigmoid_block(x, out, dout, want_d, log)  # elementwise: blocks change nothing
    else:
        _sigmoid_flat(x, out, dout, want_d, log)


@nb.njit(**_NPERR, parallel=True, **_cache)
def _sigmoid_flat(x: Any, out: Any, dout: Any, want_d: bool, log: bool) -> None:
    n = x.shape[0]
    nb_ = (n + _BLOCK - 1) // _BLOCK
    for b in prange(nb_):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        d = dout[lo:hi] if want_d else dout
        _sigmoid_block(x[lo:hi], out[lo:hi], d, want_d, log)


@nb.njit(**_NPERR, fastmath=_STRICT, **_cache)
def _bce1(v: float, y: float, pw: float) -> tuple[float, float]:
    """(loss, dloss/dx) of BCE with logits: p y softplus(-x) + (1 - y) softplus(x).

    A coefficient 0 gives a 0 term (0 * inf = 0).  d softplus(x)/dx = sigma(x).  Both
    softplus(+-x) = max(+-x, 0) + log1p(t) and both sigma(+-x) come from one t = e^-|x|
    (the same arithmetic as ``_softplus1`` and ``_sigmoid1``, so the same bits, for a
    quarter of the exponentials and half the divisions).
    """
    _inline()  # into the vectorised loops (see _inline)
    py = pw * y
    ny = 1.0 - y
    hi, lo, k = _exp_neg_abs_split(v)
    big, small, t_hi, t_lo = _sigmoid_parts(hi, lo, k)
    lp = _log1p01(t_hi, t_lo)
    nan = v != v
    sp_pos = v if nan else max(v, 0.0) + lp  # softplus(x)
    sp_neg = v if nan else max(-v, 0.0) + lp  # softplus(-x)
    s_pos = v if nan else (big if v >= 0.0 else small)  # sigma(x)
    s_neg = v if nan else (big if -v >= 0.0 else small)  # sigma(-x)
    a = py * sp_neg if py != 0.0 else 0.0
    b = ny * sp_pos if ny != 0.0 else 0.0
    ga = py * s_neg if py != 0.0 else 0.0
    gb = ny * s_pos if ny != 0.0 else 0.0
    return a + b, gb - ga


def bce_logits_flat(x: Any, y: Any, pos_weight: float, eps: float, store_loss: bool,
                    loss: Any, want_grad: bool, grad: Any, grad_scale: float,
                    partial: Any) -> None:
    """BCE with logits over a flat array: per-element loss (optional), block partial sums
    (``partial[b]`` over elements ``b * _BLOCK ...``), and the gradient times grad_scale
    (optional; grad may be x)."""
    if _serial(x):
        _bce_blocks(x, y, pos_weight, eps, store_loss, loss, want_grad, grad, grad_scale,
                    partial, 0, partial.shape[0])
    else:
        _bce_logits_flat(x, y, pos_weight, eps, store_loss, loss, want_grad, grad,
                         grad_scale, partial)


@nb.njit(**_NPERR, **_cache)
def _bce_blocks(x: Any, y: Any, pos_weight: float, eps: float, store_loss: bool, loss: Any,
                want_grad: bool, grad: Any, grad_scale: float, partial: Any, b0: int,
                b1: int) -> None:
    """bce_logits_flat on blocks b0..b1-1 (one thread)."""
    _wide()  # 512-bit vectors (see _wide)
    n = x.shape[0]
    for b in range(b0, b1):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        partial[b] = _bce_block(x[lo:hi], y[lo:hi], pos_weight, eps, store_loss,
                                loss[lo:hi] if store_loss else loss, want_grad,
                                grad[lo:hi] if want_grad else grad, grad_scale)


@nb.njit(**_NPERR, parallel=True, **_cache)
def _bce_logits_flat(x: Any, y: Any, pos_weight: float, eps: float, store_loss: bool,
                     loss: Any, want_grad: bool, grad: Any, grad_scale: float,
                     partial: Any) -> None:
    n = x.shape[0]
    nb_ = partial.shape[0]
    for b in prange(nb_):
        lo = b * _BLOCK
        hi = min(n, lo + _BLOCK)
        partial[b] = _bce_block(x[lo:hi], y[lo:hi], pos_weight, eps, store_loss,
                                loss[lo:hi] if store_loss else loss, want_grad,
                                grad[lo:hi] if want_grad else grad, grad_scale)


@nb.njit(**_NPERR, **_cache)
def _bce_block(x: Any, y: Any, pos_weight: float, eps: float, store_loss: bool, loss: Any,
               want_grad: bool, grad: Any, grad_scale: float) -> float:
    """The losses of one block into a float64 scratch (and loss / grad if asked), then
    their sum.  The per-element loop has no reduction, so it vectorises; a sum in it,
    strict, kept it scalar (35 ns an element on a Zen 3).  The sum is ``_fast_sum``'s,
    fixed by the block, not by the threads."""
    _wide()  # 512-bit vectors (see _wide)
    n = x.shape[0]
    li = np.empty(n)
    for i in range(n):
        yi = np.float64(y[i])
        if eps != 0.0:
            yi = (1.0 - eps) * yi + 0.5 * eps  # y' = (1 - eps) y + eps / 2
        li[i], gi = _bce1(np.float64(x[i]), yi, pos_weight)
        if store_loss:
            loss[i] = li[i]
        if want_grad:
            grad[i] = gi * grad_scale
    return _fast_sum(li)


@nb.njit(fastmath=_FAST, **_cache)
def _fast_sum(a: Any) -> float:
    """sum(a), vectorised (reassociated): for a block's <= 4096 terms it errs by at most
    ~4096 * 2^-53 = 2^-40 of sum |a_i|, the bound of the sequential sum it replaced."""
    _wide()  # 512-bit vectors (see _wide)
    s = 0.0
    for i in range(a.shape[0]):
        s += a[i]
    return s
