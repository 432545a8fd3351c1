"""Compiling the numba kernels into numba's on-disk cache, shared by every process.

A cold compile takes about 55 s of CPU (AMD Zen 3); numba then caches the machine code on
disk and later processes load it.  The work is cut into :data:`PARTS` (one kernel family
and dtype each), and any process that compiles into the same cache folder
takes its share of them: the helper processes that :func:`compile_shared` starts over the
cores, a second script started while the first one's compile is still running, the workers
of a test run that all call ``warm_up()`` at once.

**Claims.**  Each part has a lock file and, once compiled, a done marker in the kernels'
cache folder (:func:`cache_folder`), both named after the kernels' source stamp.  A process
walks the parts and compiles each one whose lock it can take at once (``flock``, not
waiting) and that is not marked done; then it waits on the lock of each part that another
process holds and, if that process ended before marking it done, compiles it itself.  So
every part is compiled once, whoever starts, and a process that finds every part claimed
only waits.  The kernel releases a dead process's locks.

**Saves.**  numba saves a cache entry by reading the function's index file, adding the new
key under the first free data-file name and writing both back: two processes compiling
different signatures of one function (the helpers every kernel shares) could pick the same
name.  :func:`lock_cache_saves` wraps each save in an exclusive ``flock`` on a file beside
the index.

**Warm.**  The cache counts as warm once every part is marked done; a compile cut short
leaves some parts unmarked, and they are compiled by the next process that needs them.
Where ``flock`` or the cache folder is not available, everything is compiled in one
process, as numba alone would (the saves unlocked where they cannot be locked).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["PARTS", "cache_folder", "child_env", "compile_all", "compile_shared", "is_warm",
           "lock_cache_saves", "usable_cpus"]

Part = Sequence[tuple[str, str]]

#: The compile's work in parts that processes can share: each a list of (kernel family,
#: dtype), one family and dtype each, the longest first: processes take the next part
#: nobody has claimed, so that small parts at the end even out their finishing times.
#: (Four parts, cross-entropy / the others x float32 / float64, left one process 35 s
#: behind the other on 2 cores.)  Cold, in one process (AMD Zen 3, numba 0.68, load 6.5),
#: 55 s of CPU: the float32 cross-entropy kernels 32 s (the first part also compiles the
#: helpers every kernel shares), float64 8 s, the softmax family 7 s, the rest 8 s.
PARTS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("ce", "float32"),), (("ce", "float64"),),
    (("softmax", "float32"),), (("softmax", "float64"),),
    (("logsumexp", "float32"),), (("logsumexp", "float64"),),
    (("bce", "float32"),), (("sigmoid", "float32"),),
    (("bce", "float64"),), (("sigmoid", "float64"),),
    (("targets", "float32"),),
)

#: A progress report: (parts done, parts in all, what was just done).
Progress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- compiling


def _compile_kernel(family: str, dtype: str) -> None:
    """Compile (or load) one family's kernels for one dtype, by calling each once on a tiny
    array.  (Large calls run the same compiled bodies on row ranges, on several threads:
    ``_pool``.)"""
    from crossentropy import _cpu

    k = _cpu.kernels()
    dt = np.dtype(dtype)
    exact = dt == np.float64
    for shape in ((2, 3),):
        x = np.zeros(shape, dtype=dt)
        flat = x.reshape(-1)
        if family == "ce":
            t = np.zeros(2, dtype=np.int64)
            for g in (None, np.empty_like(x)):
                _cpu.ce_rows_kernel(x, t, None, -100, 0.0, 0.0, None, g, 1.0)
        elif family == "targets":  # the torch layer's check of index targets
            _cpu.index_targets(np.zeros(2, dtype=np.int64), shape[1], -100)
            k._weight_sum(_cpu._NO_WEIGHT, True, 1)  # (class weights: summed on the host)
        elif family == "softmax":
            for log in (False, True):
                k.softmax_rows(x, exact, log, np.empty_like(x), 1)
        elif family == "logsumexp":
            k.logsumexp_rows(x, exact, np.empty(2), 1)
        elif family == "sigmoid":
            for log in (False, True):
                k.sigmoid_flat(flat, np.empty_like(flat), np.empty_like(flat), True, log)
        elif family == "bce":
            y = np.zeros(flat.size)
            for per in (False, True):  # (the BCE kernel's own threshold, as for the others)
                k.bce_logits_flat(flat, y, 1.0, 0.0, per, np.empty(flat.size if per else 0),
                                  True, np.empty_like(flat), 1.0, np.empty(1))
        else:
            raise ValueError(f"no kernel family {family!r}")


def compile_all(parts: Sequence[Part] | None = None) -> None:
    """Compile (or load from numba's cache) every kernel for float32 and float64, or those
    of the given `parts` (entries of :data:`PARTS`), in this process."""
    for part in PARTS if parts is None else parts:
        for family, dtype in part:
            _compile_kernel(family, dtype)


def _label(part: Part) -> str:
    return ", ".join(f"{family} {dtype}" for family, dtype in part)


# --------------------------------------------------------------------------- the cache folder


def _writable(folder: str) -> bool:
    """numba's own test of a cache folder: it can be created and a file written in it."""
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        return False
    return True


def cache_folder() -> str | None:
    """The folder where numba caches the kernels, or None where it cannot cache them.

    numba's order: ``NUMBA_CACHE_DIR`` when set, else ``__pycache__`` beside the kernels'
    source when writable, else a folder under the user's cache directory (a read-only
    site-packages).  The first two are found without importing numba; only numba knows the
    third.  (With ``NUMBA_CACHE_DIR`` the markers sit at its top, as numba's index files sit
    in a subfolder named after the source folder.)
    """
    env = os.environ.get("NUMBA_CACHE_DIR")
    if env:
        return env if _writable(env) else None
    in_tree = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    if _writable(in_tree):
        return in_tree
    from crossentropy import _cpu

    try:  # the cache of one kernel (every kernel module lives in this folder)
        folder = _cpu.kernels()._ce_chunk._cache._cache_path
    except (AttributeError, RuntimeError, OSError):  # no locator: numba cannot cache here
        return None
    return folder if isinstance(folder, str) and _writable(folder) else None


def _stamp() -> str:
    """The kernels' source stamp in the markers' names (:mod:`crossentropy._cpu._stamp`,
    on which numba keys the kernels' cache too): a changed kernel source is a cold cache."""
    from crossentropy._cpu import _stamp as stamp  # (no numba import)

    return stamp.source_stamp()[:16]


def _part_file(folder: str, i: int, suffix: str) -> str:
    return os.path.join(folder, f"crossentropy-kernels-{_stamp()}-part{i}-of{len(PARTS)}"
                                f"{suffix}")


def _done(folder: str) -> int:
    """How many parts are marked done in `folder`."""
    return sum(os.path.exists(_part_file(folder, i, ".done")) for i in range(len(PARTS)))


def is_warm(folder: str | None = None) -> bool:
    """Does numba's on-disk cache hold every kernel (every part marked done)?"""
    try:
        folder = cache_folder() if folder is None else folder
        return folder is not None and _done(folder) == len(PARTS)
    except OSError:
        return False


def _mark_done(folder: str, i: int) -> None:
    try:
        with open(_part_file(folder, i, ".done"), "w"):
            pass
    except OSError:  # (then the next process compiles it again: slower, not wrong)
        pass


# --------------------------------------------------------------------------- locks


def lock_cache_saves() -> bool:
    """Make numba's cache writes safe between processes that compile at once (see the
    module notes).  Returns False where that cannot be arranged (no fcntl, or a numba whose
    cache does not have the expected shape)."""
    try:
        import fcntl

        from numba.core import caching
    except ImportError:
        return False
    cls = caching.IndexDataCacheFile
    if not hasattr(cls, "save") or "_index_path" not in cls.__init__.__code__.co_names:
        return False
    if getattr(cls.save, "_crossentropy_locked", False):
        return True
    unlocked: Any = cls.save

    def save(self: Any, key: Any, data: Any) -> None:
        try:
            f = open(self._index_path + ".lock", "a")  # (closed by the with below)
        except OSError:  # (numba's own save reports what is wrong with the folder)
            unlocked(self, key, data)
            return
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            except OSError:  # a file system without locks: as numba alone would
                pass
            unlocked(self, key, data)

    save._crossentropy_locked = True  # type: ignore[attr-defined]
    cls.save = save  # type: ignore[method-assign]
    return True


@contextlib.contextmanager
def _claim(path: str, *, wait: bool) -> Iterator[bool]:
    """Hold the lock file `path` (True), or yield False when another process holds it and
    `wait` is False.  A file system without ``flock`` grants every claim (each process
    then compiles everything: slower, not wrong)."""
    import fcntl

    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:
            pass
        yield True  # (closing the file releases the lock)


def _compile_free_parts(folder: str, first: int) -> None:
    """Compile every part not done and not claimed by another process, from part `first`
    (processes starting together start on different parts), then the rest in order."""
    n = len(PARTS)
    for j in range(n):
        i = (first + j) % n
        with _claim(_part_file(folder, i, ".lock"), wait=False) as mine:
            if mine and not os.path.exists(_part_file(folder, i, ".done")):
                compile_all([PARTS[i]])
                _mark_done(folder, i)


# --------------------------------------------------------------------------- processes


def child_env() -> dict[str, str]:
    """The environment for a child Python process that must import this copy of the
    package (a checkout on no path, an editable install): its folder first on PYTHONPATH."""
    pkg_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
    return env


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


#: What each helper process of :func:`compile_shared` runs.  Arguments: the cache folder,
#: the part to start from, and the parts themselves (JSON: the helper works on the caller's
#: list, whatever its own import would say).
_HELPER_CODE = ("import json, sys; from crossentropy._cpu import _compile as c; "
                "c.PARTS = tuple(tuple(map(tuple, p)) for p in json.loads(sys.argv[3])); "
                "c.lock_cache_saves(); c._compile_free_parts(sys.argv[1], int(sys.argv[2]))")


def compile_shared(processes: int | None = None, *, load: bool = True,
                   progress: Progress | None = None) -> None:
    """Compile every kernel into numba's on-disk cache with `processes` processes (default:
    this machine's cores), sharing the parts with any other process compiling into the same
    folder (see the module notes), and return once every part is cached.

    Cold, on 2 cores (AMD Zen 3), 55 s of CPU in all (``bench/cold_start.py``; 96 s with
    the ``prange`` entry points of before).  With `load`, the kernels are also loaded into
    this process (as :func:`compile_all`); else numba loads each one at its first call.
    `progress` is called as each part is done (by any process).  A helper that fails costs
    only time: what it did not compile is compiled here.
    """
    folder = cache_folder()
    try:
        import fcntl  # noqa: F401
    except ImportError:
        folder = None
    locked = lock_cache_saves()
    if folder is None or not locked:  # no shared claims: everything here, as numba alone
        for done, part in enumerate(PARTS, 1):
            compile_all([part])
            if progress is not None:
                progress(done, len(PARTS), _label(part))
        return
    n = max(1, min(usable_cpus() if processes is None else processes, len(PARTS)))
    env = child_env()
    helpers = []
    for j in range(1, n):
        try:
            helpers.append(subprocess.Popen(
                [sys.executable, "-c", _HELPER_CODE, folder, str(j),
                 json.dumps(PARTS)],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL))
        except OSError:
            break
    finished = threading.Event()
    if progress is not None:  # reports each part as it is marked done, by any process
        threading.Thread(target=_watch, args=(folder, progress, finished), daemon=True).start()
    try:
        _compile_free_parts(folder, 0)
        # then wait for the parts other processes hold; compile any they left undone
        for i, part in enumerate(PARTS):
            with _claim(_part_file(folder, i, ".lock"), wait=True):
                if not os.path.exists(_part_file(folder, i, ".done")):
                    compile_all([part])
                    _mark_done(folder, i)
                elif load:
                    compile_all([part])  # (loads it from the cache)
    finally:
        finished.set()
        for h in helpers:
            try:
                h.wait(timeout=900)
            except subprocess.TimeoutExpired:
                h.kill()
    if progress is not None:
        progress(len(PARTS), len(PARTS), "every part compiled and loaded" if load
                 else "every part compiled")


def _watch(folder: str, progress: Progress, finished: threading.Event) -> None:
    """Call `progress` each time another part's done marker appears (polled every 0.2 s:
    the parts take seconds to minutes), until `finished`."""
    seen: set[int] = set()
    while not finished.wait(0.2):
        for i in range(len(PARTS)):
            if i not in seen and os.path.exists(_part_file(folder, i, ".done")):
                seen.add(i)
                if len(seen) < len(PARTS):  # (the last report is the caller's)
                    progress(len(seen), len(PARTS), _label(PARTS[i]))


def describe() -> str:
    """One line on where the compiled kernels stand (for ``crossentropy warm-up --status``)."""
    folder = cache_folder()
    if folder is None:
        return "numba cannot cache the kernels here (no writable cache folder)"
    done = _done(folder)
    if done == len(PARTS):
        return f"compiled (numba's cache: {folder})"
    return (f"{done} of {len(PARTS)} parts compiled (numba's cache: {folder}); "
            "`crossentropy warm-up` compiles the rest (about a minute of CPU, once)")
