"""Whether the numba kernels take a call, and the kernels' state (compiled, loading, missing).

The one pick between the NumPy backends is :func:`crossentropy._dispatch.pick` (plain Python
for a few numbers, the exact core, the kernels); its kernel part is :func:`use_numba`, asked
with the facts that decide it: the array, and whether the kernels cover the call
(``supported``: e.g. index targets, no elementwise weights, a finite gradient scale).  The
answer follows the user's setting (:func:`crossentropy.set_backend`):

* ``"numpy"``: always the core;
* ``"numba"``: the kernels for every float32/float64 call they cover;
* ``"auto"`` (default): the kernels for covered calls on at least ``FAST_MIN_SIZE``
  elements when numba can be imported.  When it cannot, the first large call emits one
  :class:`PerformanceHint` saying how to get the fast path.

**Cold start.**  Compiling the kernels takes about a minute of CPU the first time, spread over
the cores and shared with any other process compiling into the same cache
(``_cpu._compile``); numba caches them on disk, and later processes load each kernel at its
first call (numba's start-up and the load: about a second).  Under ``"auto"``, when the
on-disk cache is cold, the first large call starts compiling in a child process, in a
session of its own so that it finishes even when this process ends (a background thread
waits for it), and is itself computed by the NumPy core, as are the calls that follow
until the kernels are ready: no call waits for the compiler.  (numba compiles in Python,
holding the GIL: in a thread of this process it slowed the caller's NumPy work about 4x.)
:func:`warm_up` compiles (or loads) every kernel now and waits; ``"numba"`` always waits.
Both paths meet the same accuracy bounds, but their last bits may differ: call
:func:`crossentropy.warm_up` at start-up for bitwise-reproducible runs.

There is no other copy of this rule: backends never re-validate and never decline a call
they were given (but for plain Python, which hands a NaN or an infinity on to the pick).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from crossentropy import _config
from crossentropy._core import categorical as core_ce

__all__ = ["PerformanceHint", "cross_entropy_rows", "index_targets", "kernel_status",
           "kernels_ready", "rows_by_core", "use_numba", "warm_up"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_hinted: list[bool] = []
_ready = threading.Event()  # the kernels are compiled (or in numba's cache, warm)
_loaded = threading.Event()  # ... and every one of them is loaded into this process
_lock = threading.Lock()
_started: list[threading.Thread] = []


class PerformanceHint(UserWarning):
    """A call ran on the slower NumPy path although a faster one could be installed."""


def use_numba(x: Any, *, supported: bool = True, min_size: int | None = None) -> bool:
    """Should this call run on the numba kernels?  `x` is the prediction array.

    The kernel step of :func:`crossentropy._dispatch.pick` (which the public functions
    ask, not this): the backend setting, then the dtype (float32/float64), the size and
    the kernels' state.  `min_size` replaces ``FAST_MIN_SIZE`` under "auto" (the torch
    layer passes 0: its per-call costs are its own, so the kernels pay off at every size).
    Under "auto" the first large call may start the kernels (see the module notes).
    """
    backend = _config.get_backend()
    if backend == "numpy" or not supported:
        return False
    if not isinstance(x, np.ndarray) or x.dtype not in _FLOATS:
        return False
    if backend == "numba":
        return True
    if x.size < (_config.FAST_MIN_SIZE if min_size is None else min_size):
        return False
    if _config.numba_available():
        return _ready.is_set() or _start_kernels()
    if not _hinted:
        _hinted.append(True)
        warnings.warn(
            "crossentropy: numba is not installed, so large arrays run on the exact NumPy "
            "path (several times slower); `pip install numba` enables the fast CPU kernels",
            PerformanceHint,
            stacklevel=3,
        )
    return False


def _compile(processes: int | None = None, *, load: bool = True,
             progress: Callable[[int, int, str], None] | None = None) -> None:
    """Compile the kernels into numba's on-disk cache over `processes` (default every core;
    a cold cache only: see ``_cpu._compile``), load them into this process when `load`
    (else numba loads each one at its first call), and mark them ready."""
    from crossentropy._cpu import _compile as compiler

    if not compiler.is_warm():
        compiler.compile_shared(processes, load=load, progress=progress)
    elif load:
        compiler.compile_all()
        if progress is not None:
            progress(len(compiler.PARTS), len(compiler.PARTS), "loaded from numba's cache")
    if load:
        _loaded.set()
    _ready.set()


#: What the child process runs (tests replace it to keep a cold start short): it leaves
#: one core to the caller, whose calls run on the NumPy core meanwhile.
_CHILD_CODE = ("from crossentropy import _backends; from crossentropy._cpu import _compile; "
               "_backends._compile(max(1, _compile.usable_cpus() - 1), load=False)")


def _spawn_child() -> subprocess.Popen[bytes] | None:
    """Start the background compile's child process (None where it cannot be started).

    Started by the call itself, not by the watching thread: a short script whose first
    large call is also its last would otherwise end before the thread ran.  The child runs
    in a session of its own, so it finishes the compile when this process ends, or its
    process group is interrupted or killed (a closed terminal, Ctrl-C, a job runner), and
    the next process finds a warm cache."""
    from crossentropy._cpu import _compile as compiler

    try:
        return subprocess.Popen(
            [sys.executable, "-c", _CHILD_CODE], env=compiler.child_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
    except (OSError, subprocess.SubprocessError):
        return None


def _compile_in_child(child: subprocess.Popen[bytes] | None = None) -> None:
    """The background compilation: numba compiles the kernels in a child process
    (:func:`_spawn_child`, started here unless given), which writes them to the on-disk
    cache; this (watching) thread then marks them ready, and numba loads each one from
    there at its first call.  A child shares no GIL with the caller, whose NumPy work a
    compiling thread slowed about 4x (numba's compiler is Python).  Whatever goes wrong in
    the child, ``_compile`` still compiles here."""
    child = _spawn_child() if child is None else child
    if child is not None:
        try:
            child.wait()
        except (OSError, subprocess.SubprocessError):
            pass
    _compile(load=False)


def _start_kernels() -> bool:
    """Under "auto", the first large call: with a warm cache the kernels are ready (True:
    numba loads each from its cache at its first call), else they are compiled in the
    background (False: NumPy meanwhile)."""
    with _lock:
        if _ready.is_set():
            return True
        if _started:
            return False
        from crossentropy._cpu import _compile as compiler

        if compiler.is_warm():  # numba loads each kernel from its cache at its first call
            _ready.set()
            return True
        t = threading.Thread(target=_compile_in_child, args=(_spawn_child(),),
                             name="crossentropy-compile",
                             daemon=True)
        _started.append(t)
        t.start()
        return False


def kernels_ready() -> bool:
    """True once the numba kernels are compiled or loaded in this process."""
    return _ready.is_set()


def kernel_status() -> str:
    """One line on where the compiled CPU kernels stand: compiled into numba's on-disk
    cache (and where), partly compiled, not compiled yet, or numba not installed.

    >>> import crossentropy as ce
    >>> ce.kernel_status().startswith(("compiled", "numba is not installed"))
    True
    """
    if not _config.numba_available():
        return "numba is not installed: every call runs on the exact NumPy core"
    from crossentropy._cpu import _compile as compiler

    return compiler.describe()


def warm_up(progress: Callable[[int, int, str], None] | None = None) -> bool:
    """Compile (or load from numba's cache) the CPU kernels now and wait for them.

    Returns False when numba is not installed (nothing to do).  Call it at start-up to
    keep the first large calls of a process on the compiled kernels (see the module
    notes on cold starts).  The first compile on a machine takes about a minute of CPU, spread
    over the cores; later processes load the kernels from numba's on-disk cache.

    Parameters
    ----------
    progress : callable, optional
        Called as ``progress(done, total, what)`` each time a part of the compile is done
        (``crossentropy warm-up`` draws its progress bar with it).

    Returns
    -------
    bool
        True once the kernels are ready; False when numba is not installed.

    Examples
    --------
    >>> import crossentropy as ce
    >>> ce.warm_up()
    True
    """
    if not _config.numba_available():
        return False
    with _lock:
        thread = _started[0] if _started else None
    if thread is not None:
        thread.join()
    if not _loaded.is_set():
        _compile(progress=progress)
    return True


F64 = npt.NDArray[np.float64]


def index_targets(logits: npt.NDArray[np.floating], target: npt.NDArray[np.integer],
                  ignore_index: int) -> tuple[int, int] | None:
    """The targets of (N, C) `logits` checked and counted in one pass where the kernels
    take the call (as :func:`cross_entropy_rows` decides), else None.

    Returns (the first position i with ``target[i]`` outside [0, C) and not equal to
    `ignore_index`, or -1; the number of targets other than `ignore_index`).

    >>> import numpy as np
    >>> r = index_targets(np.zeros((3, 4)), np.array([1, -100, 7]), -100)
    >>> r in (None, (2, 1))
    True
    """
    if logits.size and use_numba(logits, min_size=0):
        from crossentropy import _cpu

        return _cpu.index_targets(target, logits.shape[1], ignore_index)
    return None


def cross_entropy_rows(
    logits: npt.NDArray[np.floating],
    target: npt.NDArray[np.integer],
    *,
    weight: F64 | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    grad: npt.NDArray[np.floating] | None = None,
    grad_scale: float = 1.0,
) -> tuple[F64, F64]:
    r"""Per-row cross-entropy and log-sum-exp of (N, C) logits, optionally the gradient.

    .. math::

        z = c \tanh(x / c) \text{ (if softcap } c\text{)}, \quad
        \mathrm{lse}_i = \log\sum_c e^{z_{ic}}, \quad
        \ell_i = \sum_c w_c t'_{ic} (\mathrm{lse}_i - z_{ic}) + \zeta\, \mathrm{lse}_i^2

    with :math:`t' = (1-\varepsilon)\,\mathrm{onehot}(y_i) + \varepsilon / C`; computed as in
    :func:`crossentropy._core.categorical.logits_rows` (the kernels when the backend setting
    allows, else that core function itself).

    Parameters
    ----------
    logits : (N, C) float32 or float64, C-contiguous.
    target : (N,) int64 class indices in [0, C) or equal to `ignore_index` (not checked).
    weight : (C,) float64 class weights, or None.
    ignore_index, label_smoothing, z_loss, softcap : as in the torch layer.
    grad : None (value only) or an (N, C) array of the logits' dtype into which
        ``grad_scale * d loss[i] / d logits[i]`` is written (ignored rows get 0).  It may be
        `logits` itself.
    grad_scale : factor applied to the gradient (e.g. 1 / sum of weights for a mean).

    Returns
    -------
    loss : float64[N] per-row loss in nats (0 for ignored rows); lse : float64[N].

    Examples
    --------
    >>> import numpy as np
    >>> from crossentropy._backends import cross_entropy_rows
    >>> x = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    >>> g = np.empty_like(x)
    >>> loss, lse = cross_entropy_rows(x, np.array([2, -100]), grad=g)
    >>> loss
    array([0.40760596, 0.        ])
    >>> lse
    array([3.40760596, 1.09861229])
    >>> g
    array([[ 0.09003057,  0.24472847, -0.33475904],
           [ 0.        ,  0.        ,  0.        ]])
    """
    if logits.size and use_numba(logits, min_size=0):
        from crossentropy import _cpu

        return _cpu.ce_rows_kernel(logits, target, weight, ignore_index, label_smoothing,
                                   z_loss, softcap, grad, grad_scale)
    return rows_by_core(logits, target, weight, ignore_index, label_smoothing, z_loss,
                        softcap, grad, grad_scale)


def rows_by_core(logits: npt.NDArray[np.floating], target: npt.NDArray[np.integer],
                 weight: F64 | None, ignore_index: int, label_smoothing: float, z_loss: float,
                 softcap: float | None, grad: npt.NDArray[np.floating] | None,
                 grad_scale: float) -> tuple[F64, F64]:
    """:func:`cross_entropy_rows` by the exact core (the NumPy dispatch's ``CORE``)."""
    counted = target != ignore_index
    N, C = logits.shape
    if N == 0 or C == 0:
        if grad is not None:
            grad[...] = 0
        return np.where(counted, np.nan, 0.0), np.full(N, -np.inf)
    labels = np.where(counted, target, 0).astype(np.intp)
    t = core_ce.Target(counted=counted, labels=labels)
    loss, lse, g = core_ce.logits_rows(
        np.array(logits, dtype=np.float64), t, weight, label_smoothing=label_smoothing,
        z_loss=z_loss, cap=softcap, want_grad=grad is not None,
    )
    if grad is not None and g is not None:
        grad[...] = g * grad_scale
    return loss, lse
