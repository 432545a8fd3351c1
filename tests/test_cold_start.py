"""Cold start of the numba backend: no call waits for the compiler under "auto"."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("numba")


def _run(code: str, env_extra: dict[str, str]) -> str:
    import os

    env = {**os.environ, **env_extra}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=env, check=True, timeout=600)
    return out.stdout.strip()


def test_cold_cache_first_call_runs_on_numpy_while_kernels_compile(tmp_path):
    # An empty NUMBA_CACHE_DIR is a cold cache.  The compile step is replaced by a sleep
    # (a real cold compile takes tens of seconds on a loaded machine), so that the test
    # sees the window in which the NumPy core answers, and the flag set when it ends.
    code = """
    import time, numpy as np
    import crossentropy as ce
    from crossentropy import _backends, _cpu
    _cpu.compile_all = _cpu.compile_in_parallel = lambda *a: time.sleep(3.0)
    _backends._CHILD_CODE = "import time; time.sleep(1.0)"  # the child's compile, shortened
    x = np.random.default_rng(0).normal(size=(64, 1024))
    y = np.arange(64) % 1024
    t0 = time.perf_counter()
    first = ce.cross_entropy(x, y)
    took = time.perf_counter() - t0
    with ce.use_backend("numpy"):
        ref = ce.cross_entropy(x, y)
    print(took < 2.0, first == ref, _backends.kernels_ready())
    ce.warm_up()   # waits for the background thread
    print(_backends.kernels_ready(), _backends.use_numba(x))
    """
    lines = _run(code, {"NUMBA_CACHE_DIR": str(tmp_path)}).splitlines()
    assert lines[0] == "True True False", lines  # fast, the NumPy core's value, not ready
    assert lines[1] == "True True", lines  # afterwards "auto" runs the kernels


def test_warm_cache_loads_the_kernels_at_the_first_large_call():
    # the default cache beside the sources is warm: conftest's ce.warm_up() filled it
    code = """
    import numpy as np
    import crossentropy as ce
    from crossentropy import _backends
    x = np.ones((64, 1024))
    ce.logsumexp(x)
    print(_backends.kernels_ready())
    """
    import os

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=env, check=True, timeout=600)
    assert out.stdout.strip() == "True"


def test_background_compile_runs_in_a_child_process_of_this_package(tmp_path):
    # The cold-cache compile runs in a child process (numba's compiler holds the GIL: in a
    # thread it slowed the caller's NumPy work ~4x).  The child must import this copy of
    # the package; here it writes where it found it instead of compiling.
    marker = tmp_path / "child.txt"
    code = f"""
    import crossentropy, os
    from crossentropy import _backends, _cpu
    _cpu.compile_all = _cpu.compile_in_parallel = lambda *a: None
    _backends._CHILD_CODE = (
        "import crossentropy, os; "
        "open({str(marker)!r}, 'w').write(str(os.getpid()) + ' ' + crossentropy.__file__)")
    _backends._compile_in_child()
    print(os.getpid(), crossentropy.__file__, _backends.kernels_ready())
    """
    pid, path, ready = _run(code, {"NUMBA_CACHE_DIR": str(tmp_path)}).split()
    child_pid, child_path = marker.read_text().split()
    assert child_pid != pid and child_path == path  # another process, the same package
    assert ready == "True"  # then the parent loads (here: the stub) and is ready


def test_a_half_written_cache_counts_as_cold(tmp_path, monkeypatch):
    # A compile cut short (its process ended) leaves some of numba's index files: that
    # cache must count as cold (compile the rest in the background), not as warm (which
    # would compile the rest at the first call, synchronously).  Only the marker written
    # after a complete compile makes it warm.
    from crossentropy import _backends

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    (tmp_path / "_cpu_x").mkdir()
    (tmp_path / "_cpu_x" / "_kernels._row_stats-616.py311.nbi").write_bytes(b"")
    assert not _backends._cache_is_warm()
    _backends._mark_cache_complete()
    assert _backends._cache_is_warm()


def test_a_cold_compile_shares_its_parts_between_processes(tmp_path):
    # On a cold cache the parts of compile_all are spread over processes: a helper process
    # compiles its share into the on-disk cache and this process loads it (numba counts
    # cache hits and no misses for it) after compiling its own share (misses: compiled
    # here).  Two cheap parts stand in for the real ones (about a minute cold).  The
    # cache's saves are locked: no index names one data file for two signatures.
    code = f"""
    import glob, pickle
    from crossentropy import _cpu
    _cpu.PARTS = ((("targets", "float32"),), (("sigmoid", "float64"),))
    _cpu.compile_in_parallel(2)
    k = _cpu.kernels()
    for f in (k.index_targets, k._sigmoid_flat, k._sigmoid_block):
        print(sum(f._cache_hits.values()), sum(f._cache_misses.values()))
    for path in glob.glob({str(tmp_path)!r} + "/*/*.nbi"):
        with open(path, "rb") as fh:
            pickle.load(fh)
            names = list(pickle.loads(fh.read())[1].values())
        assert len(set(names)) == len(names), path
    print("indexes", len(glob.glob({str(tmp_path)!r} + "/*/*.nbi")) > 0)
    """
    lines = _run(code, {"NUMBA_CACHE_DIR": str(tmp_path)}).splitlines()
    targets, sigmoid, block = (tuple(map(int, line.split())) for line in lines[:3])
    assert targets[0] == 0 and targets[1] >= 1, lines  # compiled here
    assert sigmoid[0] >= 1 and sigmoid[1] == 0, lines  # loaded: the helper compiled it
    assert block[0] >= 1 and block[1] == 0, lines
    assert lines[3] == "indexes True", lines


def test_cache_saves_can_be_locked_on_the_installed_numba():
    # The lock wraps numba's IndexDataCacheFile.save; were numba's cache to change shape,
    # compile_in_parallel would fall back to one process: this test says so first.
    from numba.core import caching

    from crossentropy import _cpu

    assert _cpu._lock_cache_saves()
    assert getattr(caching.IndexDataCacheFile.save, "_crossentropy_locked", False)


def test_cache_saves_without_file_locks_still_save(tmp_path):
    # On a file system where flock fails, a save goes ahead unlocked (as numba alone would
    # do) instead of failing the compile.
    (tmp_path / "twice.py").write_text(
        "import numba\n@numba.njit(cache=True)\ndef twice(x):\n    return 2 * x\n")
    code = f"""
    import fcntl, glob, sys
    from crossentropy import _cpu
    assert _cpu._lock_cache_saves()
    def no_locks(*a):
        raise OSError(38, "Function not implemented")
    fcntl.flock = no_locks
    sys.path.insert(0, {str(tmp_path)!r})
    from twice import twice
    print(twice(21), len(glob.glob({str(tmp_path / "cache")!r} + "/**/*.nbi", recursive=True)))
    """
    assert _run(code, {"NUMBA_CACHE_DIR": str(tmp_path / "cache")}) == "42 1"


def test_a_compile_in_one_process_locks_its_saves_too(tmp_path):
    # Two short scripts in a row can each start a background compile (the first is still
    # running when the second finds the cache cold): one-process compiles must lock their
    # saves as well.
    code = """
    from numba.core import caching
    from crossentropy import _cpu
    _cpu.PARTS = ((("targets", "float32"),),)
    _cpu.compile_in_parallel(1)
    print(getattr(caching.IndexDataCacheFile.save, "_crossentropy_locked", False))
    """
    assert _run(code, {"NUMBA_CACHE_DIR": str(tmp_path)}) == "True"
