"""The source stamp of the numba kernels: one value for all the kernel modules together.

numba keys each cached function on a stamp of its own source file; the kernels inline
pieces of one another's modules, so their cache is keyed on this stamp instead (the
locator in ``_jit``), and so is the marker that says the cache holds every kernel
(``crossentropy._cpu._compile``).  This module does not import numba: the
marker is looked for before numba is loaded.
"""

from __future__ import annotations

import functools
import hashlib
import os

#: the folder of the kernel modules
DIR = os.path.dirname(os.path.abspath(__file__))


#: the modules of this folder that hold no kernel: the adapter, the compile's driver and
#: the threads
NOT_KERNELS = ("__init__.py", "_compile.py", "_pool.py")


def kernel_files() -> list[str]:
    """The kernel modules: every ``.py`` file of this folder but :data:`NOT_KERNELS`."""
    return sorted(os.path.join(DIR, name) for name in os.listdir(DIR)
                  if name.endswith(".py") and name not in NOT_KERNELS)


@functools.cache
def _digest(files: tuple[tuple[str, int, int], ...]) -> str:
    # (keyed on each file's mtime and size, as numba's own hash of a source file: a file
    # changed while the process runs is read again)
    h = hashlib.sha256()
    for path, _, _ in files:
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + b"\0" + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def source_stamp() -> str:
    """A hash of the names and contents of every kernel module (numba's own stamp of a
    source file is a hash of its content, or its mtime and size in older numba): it
    changes when any of them does, and only then."""
    files = []
    for path in kernel_files():
        st = os.stat(path)
        files.append((path, st.st_mtime_ns, st.st_size))
    return _digest(tuple(files))
