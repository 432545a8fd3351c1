# mypy: ignore-errors
# (numba's cache classes are untyped for mypy)
"""How every kernel of ``crossentropy._cpu`` is compiled: flags, error model, on-disk cache.

The lowest of the kernel modules: each of the others imports its flags from here, so the
cache locator below is in place before the first kernel is decorated.

* Floating-point flags: the arithmetic whose rounding matters (the exp, the TwoSum of
  x - m) lives in small functions compiled *without* ``reassoc`` (``_STRICT``); LLVM
  inlines them into the loops, which carry ``fastmath=True`` (``_FAST``) only so that the
  sums and the max vectorise.  Flags are per instruction in LLVM, so the inlined code keeps
  its strict semantics.  (llvmlite has no SVML, so ``math.exp`` would be a scalar call at
  ~2.6 ns per element.)
* The on-disk cache (``cache=True``, ``_cache``): numba keys a function's cached machine
  code on the stamp of its own source file, but a kernel here is compiled with pieces of
  the other modules inlined (the exp of ``_exp`` in the loops of ``_rows``, ``_softmax``
  and ``_ce``): a change to ``_exp.py`` alone would leave them their stale machine code.
  ``_KernelLocator`` gives every kernel the stamp of all the kernel modules together
  (``crossentropy._cpu._stamp``), and otherwise leaves the choice of the cache folder to
  numba's own locators (``NUMBA_CACHE_DIR``, ``__pycache__`` beside the source, a
  user-wide folder where that one is read-only).
"""

from __future__ import annotations

import os
from typing import Any

from numba.core import caching

from . import _stamp

_STRICT = {"nsz", "contract"}  # no reassoc, no nnan/ninf: roundings stay as written
_FAST = True  # only for loops whose own arithmetic is sums and maxima

_cache = {"cache": True}


# The sigmoid family compiles with NumPy's error model: a float division by zero gives inf
# or NaN instead of raising ZeroDivisionError, whose per-element test and exception path
# also keep a loop from vectorising.  (Their divisors are >= 1 or guarded: nothing changes.)
_NPERR = {"error_model": "numpy"}


def _locator_classes() -> list[Any] | None:
    """numba's list of cache locators, tried in order for each cached function (None for
    a numba whose cache has another shape: each kernel then keeps its own file's stamp)."""
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    classes = getattr(impl, "_locator_classes", None)
    return classes if isinstance(classes, list) else None


class _KernelLocator(caching._CacheLocator):
    """The locator numba would choose for a kernel of this folder, with the stamp of every
    kernel module (``_stamp.source_stamp``) in place of the stamp of the kernel's own file.

    Tried first; it answers only for the files of this folder and asks numba's other
    locators, in numba's order, where the cache goes (their fallbacks included).
    """

    _crossentropy_dir = _stamp.DIR  # (marks this class in numba's list; one per folder)

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        # what numba reads of its own locators (``_py_file`` for a warning, ...)
        if name == "_inner":
            raise AttributeError(name)
        return getattr(self._inner, name)

    def ensure_cache_path(self) -> None:
        self._inner.ensure_cache_path()

    def get_cache_path(self) -> str:
        return self._inner.get_cache_path()

    def get_disambiguator(self) -> str:
        return self._inner.get_disambiguator()

    def get_source_stamp(self) -> Any:
        try:
            return _stamp.source_stamp()
        except OSError:  # (sources that cannot be listed or read: a frozen application)
            return self._inner.get_source_stamp()

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> Any:
        if os.path.dirname(os.path.abspath(py_file)) != _stamp.DIR:
            return None
        for other in _locator_classes() or ():
            if getattr(other, "_crossentropy_dir", None) is not None:
                continue  # (this class, or the one of another copy of the package)
            inner = other.from_function(py_func, py_file)
            if inner is not None:
                return cls(inner)
        return None


def _use_kernel_locator() -> None:
    """Put ``_KernelLocator`` first in numba's list (once per folder)."""
    classes = _locator_classes()
    if classes is None:
        return
    if not any(getattr(c, "_crossentropy_dir", None) == _stamp.DIR for c in classes):
        classes.insert(0, _KernelLocator)


_use_kernel_locator()
