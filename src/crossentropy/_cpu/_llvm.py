# mypy: ignore-errors
# (numba compiles and types this module; its decorators are untyped for mypy)
"""LLVM-level pieces of the kernels: bit casts, prefetch, function attributes, and the
non-temporal stores that write large results.

* Large results (``_STREAM_MIN_BYTES`` in ``_kernels``) written over a buffer already in
  use are formed row by row in a scratch row and written with non-temporal stores: an
  ordinary store first reads the line it overwrites, a third memory transfer next to
  reading the logits and writing the result.  (np.copyto, the floor of every writing pass,
  streams too.)  By default only in place (the result over its input);
  ``softmax_rows_into`` and ``ce_rows_into`` let the caller choose.  The gradient may
  overwrite the logits.
"""

from __future__ import annotations

from typing import Any

import numba as nb
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from ._jit import _cache

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
def _is_f64(typingctx: Any, arr: Any) -> Any:
    """Is ``arr`` of float64, as a compile-time constant (a literal bool)?

    The kernels' ``exact`` (float64 arithmetic: TwoSum differences, error-free sums) is
    the logits' dtype.  Passed on as this literal, it makes numba compile each callee for
    the one dtype it meets: as a run-time flag, every float32 kernel carried the float64
    paths too, and every float64 kernel the float32 ones, compiled and never run.
    """
    exact = arr.dtype == types.float64
    sig = types.literal(exact)(arr)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        return cgutils.true_bit if exact else cgutils.false_bit

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
