"""How every kernel of ``crossentropy._cpu`` is compiled: flags, error model, cache.

The lowest of the kernel modules: each of the others imports its flags from here.

* Floating-point flags: the arithmetic whose rounding matters (the exp, the TwoSum of
  x - m) lives in small functions compiled *without* ``reassoc`` (``_STRICT``); LLVM
  inlines them into the loops, which carry ``fastmath=True`` (``_FAST``) only so that the
  sums and the max vectorise.  Flags are per instruction in LLVM, so the inlined code keeps
  its strict semantics.  (llvmlite has no SVML, so ``math.exp`` would be a scalar call at
  ~2.6 ns per element.)
"""

from __future__ import annotations

_STRICT = {"nsz", "contract"}  # no reassoc, no nnan/ninf: roundings stay as written
_FAST = True  # only for loops whose own arithmetic is sums and maxima

_cache = {"cache": True}


# The sigmoid family compiles with NumPy's error model: a float division by zero gives inf
# or NaN instead of raising ZeroDivisionError, whose per-element test and exception path
# also keep a loop from vectorising.  (Their divisors are >= 1 or guarded: nothing changes.)
_NPERR = {"error_model": "numpy"}

