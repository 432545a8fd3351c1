"""numba's on-disk cache of the kernels is keyed on every kernel module, not on each file.

A kernel of one module is compiled with the pieces of others linked in (``_ce._nls`` calls
``_exp.two_diff``): a change to ``_exp.py`` alone must recompile it.  numba alone stamps
each function with its own file only and would load the stale machine code.  Each check
runs in a child process on a copy of the package (the real sources are never touched)
with a cache folder of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("numba")

import crossentropy

# the child: one small kernel of _ce (it calls _exp.two_diff), then what numba did
CHILD = """
import os, sys
from numba.core import caching
if sys.argv[2] == "no-in-tree":  # the package folder not writable (root ignores chmod)
    def refuse(self):
        raise PermissionError("read-only")
    for name in ("InTreeCacheLocator", "_InTreeCacheLocator"):
        if hasattr(caching, name):
            getattr(caching, name).ensure_cache_path = refuse
import crossentropy
from crossentropy._cpu import _ce, _compile
assert crossentropy.__file__.startswith(sys.argv[1]), crossentropy.__file__
assert _ce._nls(1.0, 2.0, 0.5, True) == 1.5
st = _ce._nls.stats
print(sum(st.cache_hits.values()), sum(st.cache_misses.values()),
      _compile._stamp(), st.cache_path)
"""


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    shutil.copytree(Path(crossentropy.__file__).parent, root / "crossentropy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _run(root: Path, env_extra: dict[str, str], mode: str = "") -> tuple[int, int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(env_extra)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), str(root), mode],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    hits, misses, marker, path = out.stdout.split()
    return int(hits), int(misses), marker, path


def test_a_change_to_another_kernel_module_recompiles(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    env = {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    exp_py = root / "crossentropy" / "_cpu" / "_exp.py"
    cold = _run(root, env)
    assert cold[:2] == (0, 1), cold  # compiled, and saved
    warm = _run(root, env)
    assert warm[:2] == (1, 0) and warm[2] == cold[2], warm  # loaded; the same marker
    assert warm[3].startswith(str(tmp_path / "cache")), warm  # (numba's NUMBA_CACHE_DIR)
    # a new mtime, the same content: still the cached code (the stamp is of contents)
    st = exp_py.stat()
    os.utime(exp_py, ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    assert _run(root, env)[:3] == warm[:3]
    # _exp.py changed, _ce.py not: _ce's kernel is compiled again, the marker renamed
    exp_py.write_text(exp_py.read_text() + "\n# changed\n")
    changed = _run(root, env)
    assert changed[:2] == (0, 1), changed
    assert changed[2] != cold[2], changed  # the "cache holds every kernel" marker too
    assert _run(root, env)[:2] == (1, 0)  # and then cached again


def test_a_read_only_package_caches_in_the_user_wide_folder(tmp_path: Path) -> None:
    # numba's own fallback stays: no NUMBA_CACHE_DIR and no writable __pycache__ beside
    # the sources, so the cache goes to the user-wide folder (XDG_CACHE_HOME/numba)
    root = _copy(tmp_path)
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg")}
    cold = _run(root, env, "no-in-tree")
    assert cold[:2] == (0, 1) and cold[3].startswith(str(tmp_path / "xdg")), cold
    assert _run(root, env, "no-in-tree")[:2] == (1, 0)
