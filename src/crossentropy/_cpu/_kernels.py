# mypy: ignore-errors
# (numba compiles and types the kernel modules; their decorators are untyped for mypy)
"""numba kernels for the softmax family and the cross-entropies (imported lazily).

Layout
------
This module is what the adapter (``crossentropy._cpu``) calls: its entry points
``logsumexp_rows``, ``softmax_rows`` (``softmax_rows_into``), ``ce_rows`` (``ce_rows_into``),
``index_targets``, ``sigmoid_flat`` and ``bce_logits_flat`` choose, on the host, whether a
call runs on the calling thread alone or on several (``_serial``: the compiled bodies take
a range of rows or blocks and release the GIL; ``_pool`` runs the ranges on Python
threads) and ordinary or non-temporal stores (``_streams``); the compiled code is in one
module per concept, each importing only the ones above it in this list:

* ``_jit``: the numba flags (fast-math sets, error model) and the on-disk cache, keyed on
  the stamp of every kernel module (``_stamp``);
* ``_llvm``: bit casts, prefetch, function attributes, non-temporal stores (LLVM IR);
* ``_exp``: the vectorisable exp (float64, and float32 work);
* ``_rows``: the row statistics (max, first argmax, sum of the other exponentials);
* ``_rowpick``: which of them a kernel compiles (by the row's dtype and a constant flag);
* ``_softmax``: log-sum-exp, softmax and log-softmax of rows;
* ``_ce``: the cross-entropy of index targets (loss, log-sum-exp, gradient);
* ``_elementwise``: sigmoid, log-sigmoid and BCE with logits.

The row-wise kernels mirror the NumPy core, piece by piece and name by name: ``_row_stats``
is ``crossentropy._core.rows.decompose``; the cross-entropy follows
``crossentropy._core.categorical.logits_rows`` (see the comment at the top of ``_ce``).
The kernel modules import one another relatively (``from ._rows import ...``), so that a
copy of them from another revision loads as a package of its own (``bench/cpu.py
--against``).

Design
------
* Rows are independent: the rows are split in ranges over threads (``_pool``) and one
  thread handles a whole row, in a fixed order.  Every result is therefore **bitwise
  identical whatever the number of threads** (the elementwise kernels reduce over
  fixed-size blocks, also independent of the thread count).
* Each row is read from memory once (``_rows``); large results written over a buffer
  already in use go to memory by non-temporal stores (``_llvm``); everything is computed
  in float64 with a vectorisable exp (``_exp``); the arithmetic whose rounding matters is
  compiled without ``reassoc`` and inlined into fast-math loops (``_jit``).
* What bounds the speed: on a machine where one core reads memory faster than it computes
  ~25 float64 operations per element (the exp and its TwoSum), the passes are compute-bound
  and the memory floor is out of reach; see docs/cpu.md for the measured ratios.
"""

from __future__ import annotations

from typing import Any

from . import _pool
from ._ce import _ce_chunk, _weight_sum, index_targets
from ._elementwise import _BLOCK, _bce_blocks, _sigmoid_block
from ._exp import exp_le0, exp_le0_f32, exp_shift
from ._rowpick import _ONEPASS_MIN_STORED, _PREFETCH_MAX_STORED, _row_stats
from ._rows import (
    _BLK,
    _ONEPASS_MIN,
    _SCAN,
    _SUMBLK64,
    _one_pass_blocks,
    _row_max,
    _row_stats_1pass,
    _row_stats_1pass_stored,
    _row_stats_2pass,
    _sum_exp,
)
from ._softmax import _logsumexp_chunk, _softmax_chunk

# the entry points, and the names of the kernel modules that the adapter, the tests and
# bench/ read from here
__all__ = [
    "_BLK",
    "_BLOCK",
    "_ONEPASS_MIN",
    "_ONEPASS_MIN_STORED",
    "_PREFETCH_MAX_STORED",
    "_SCAN",
    "_SERIAL_MAX",
    "_STREAM_MIN_BYTES",
    "_SUMBLK64",
    "_ce_chunk",
    "_chunks",
    "_logsumexp_chunk",
    "_one_pass_blocks",
    "_row_max",
    "_row_stats",
    "_row_stats_1pass",
    "_row_stats_1pass_stored",
    "_row_stats_2pass",
    "_serial",
    "_sigmoid_block",
    "_softmax_chunk",
    "_streams",
    "_sum_exp",
    "_weight_sum",
    "bce_logits_flat",
    "ce_rows",
    "ce_rows_into",
    "exp_le0",
    "exp_le0_f32",
    "exp_shift",
    "index_targets",
    "logsumexp_rows",
    "sigmoid_flat",
    "softmax_rows",
    "softmax_rows_into",
]

# --------------------------------------------------------------------------- the host side


def _chunks(n: int) -> int:
    """Number of parts a call of `n` rows is cut into: one per thread (``_pool.size``:
    ``ce.set_num_threads``).  (The parts are taken in turn by whichever thread is free, so
    a thread that cannot start, on a loaded machine, leaves its part to the others.)"""
    return max(1, min(n, _pool.size()))


def _ranges(body: Any, n: int, parts: int) -> None:
    """body(lo, hi) over `parts` ranges of range(n), on the threads of ``_pool``."""
    _pool.run(lambda p: body(p * n // parts, (p + 1) * n // parts), parts)


# Below this many elements a kernel runs on the calling thread: waking the worker threads
# costs more than the work (tens of microseconds on an idle machine, milliseconds on a loaded
# one).  Each row is computed the same way either way, so the results are identical.
_SERIAL_MAX = 1 << 17


def _serial(x: Any) -> bool:
    return bool(x.size < _SERIAL_MAX)


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


def logsumexp_rows(x: Any, exact: bool, out: Any, nchunks: int) -> None:
    """out[i] = log(sum(exp(x[i]))) = m + log1p(s).  (``exact``, x is float64, is read from
    x's dtype by the compiled code, as by every entry point here.)"""
    if _serial(x) or nchunks <= 1:
        _logsumexp_chunk(x, out, 0, x.shape[0])
    else:
        _ranges(lambda lo, hi: _logsumexp_chunk(x, out, lo, hi), x.shape[0], nchunks)


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
    if _serial(x) or nchunks <= 1:
        _softmax_chunk(x, log, out, 0, x.shape[0], stream)
    else:
        _ranges(lambda lo, hi: _softmax_chunk(x, log, out, lo, hi, stream), x.shape[0],
                nchunks)


def ce_rows(x: Any, target: Any, weight: Any, has_w: bool, ignore_index: int, eps: float,
            z_loss: float, cap: float, grad: Any, want_grad: bool, grad_scale: float,
            exact: bool, loss: Any, lse: Any, nchunks: int) -> None:
    """Per-row cross-entropy of index targets: loss[i], lse[i] and (want_grad)
    grad[i] = grad_scale * d loss[i] / d x[i].

    x: (N, C) float32/float64 logits; target: int64 [N] (range already checked; a row whose
    target equals ignore_index gets loss 0 and a zero gradient row); weight: float64 [C]
    (read only if has_w); eps: label smoothing; z_loss: zeta; cap: soft cap (<= 0: none);
    grad: (N, C) of x's dtype, may be x itself; exact: x is float64; nchunks: from
    ``_chunks``.  The pieces are described at the top of ``_ce``.
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
    if _serial(x) or nchunks <= 1:
        _ce_chunk(x, target, weight, has_w, ignore_index, eps, z_loss, cap, grad, want_grad,
                  grad_scale, loss, lse, 0, x.shape[0], stream, wsum)
    else:
        _ranges(lambda lo, hi: _ce_chunk(x, target, weight, has_w, ignore_index, eps, z_loss,
                                         cap, grad, want_grad, grad_scale, loss, lse, lo, hi,
                                         stream, wsum), x.shape[0], nchunks)


def sigmoid_flat(x: Any, out: Any, dout: Any, want_d: bool, log: bool) -> None:
    """sigmoid (or log_sigmoid) of a flat array into out; the derivative into dout."""
    # elementwise: how the array is cut changes nothing (ranges of whole blocks)
    nblocks = (x.shape[0] + _BLOCK - 1) // _BLOCK
    parts = 1 if _serial(x) else _chunks(nblocks)
    if parts <= 1:
        _sigmoid_block(x, out, dout, want_d, log)
        return

    def blocks(b0: int, b1: int) -> None:
        lo, hi = b0 * _BLOCK, min(x.shape[0], b1 * _BLOCK)
        _sigmoid_block(x[lo:hi], out[lo:hi], dout[lo:hi] if want_d else dout, want_d, log)

    _ranges(blocks, nblocks, parts)


def bce_logits_flat(x: Any, y: Any, pos_weight: float, eps: float, store_loss: bool,
                    loss: Any, want_grad: bool, grad: Any, grad_scale: float,
                    partial: Any) -> None:
    """BCE with logits over a flat array: per-element loss (optional), block partial sums
    (``partial[b]`` over elements ``b * _BLOCK ...``), and the gradient times grad_scale
    (optional; grad may be x)."""
    nblocks = partial.shape[0]
    parts = 1 if _serial(x) else _chunks(nblocks)
    if parts <= 1:
        _bce_blocks(x, y, pos_weight, eps, store_loss, loss, want_grad, grad, grad_scale,
                    partial, 0, nblocks)
    else:
        _ranges(lambda b0, b1: _bce_blocks(x, y, pos_weight, eps, store_loss, loss, want_grad,
                                           grad, grad_scale, partial, b0, b1), nblocks, parts)
