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
    from crossentropy import _backends
    from crossentropy._cpu import _compile
    _compile.compile_all = _compile.compile_shared = lambda *a, **k: time.sleep(3.0)
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
    from crossentropy import _backends
    from crossentropy._cpu import _compile
    _compile.compile_all = _compile.compile_shared = lambda *a, **k: None
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
    from crossentropy._cpu import _compile

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    (tmp_path / "_cpu_x").mkdir()
    (tmp_path / "_cpu_x" / "_kernels._row_stats-616.py311.nbi").write_bytes(b"")
    assert not _compile.is_warm()
    for i in range(len(_compile.PARTS) - 1):  # a compile cut short before its last part
        _compile._mark_done(str(tmp_path), i)
    assert not _compile.is_warm()
    _compile._mark_done(str(tmp_path), len(_compile.PARTS) - 1)
    assert _compile.is_warm()


def test_a_cold_compile_shares_its_parts_between_processes(tmp_path):
    # On a cold cache the parts of compile_all are spread over processes: a helper process
    # compiles its share into the on-disk cache and this process loads it (numba counts
    # cache hits and no misses for it) after compiling its own share (misses: compiled
    # here).  Two cheap parts stand in for the real ones (about a minute cold).  The
    # cache's saves are locked: no index names one data file for two signatures.
    # (Which process takes which part depends on who claims it first: here this process
    # waits, before its first part, until the helper has claimed the other one.)
    code = f"""
    import fcntl, glob, os, pickle, time
    from crossentropy import _cpu
    from crossentropy._cpu import _compile
    _compile.PARTS = ((("targets", "float32"),), (("sigmoid", "float64"),))
    real, waited = _compile.compile_all, []
    def after_the_helper_claims_its_part(parts=None):
        lock = _compile._part_file({str(tmp_path)!r}, 1, ".lock")
        for _ in range(0 if waited else 1200):
            waited.append(1)
            try:
                with open(lock) as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except FileNotFoundError:  # not yet opened by the helper
                pass
            except BlockingIOError:  # claimed
                break
            time.sleep(0.1)
        real(parts)
    _compile.compile_all = after_the_helper_claims_its_part
    _compile.compile_shared(2)
    k = _cpu.kernels()
    for f in (k.index_targets, k._sigmoid_block):
        print(sum(f._cache_hits.values()), sum(f._cache_misses.values()))
    for path in glob.glob({str(tmp_path)!r} + "/*/*.nbi"):
        with open(path, "rb") as fh:
            pickle.load(fh)
            names = list(pickle.loads(fh.read())[1].values())
        assert len(set(names)) == len(names), path
    print("indexes", len(glob.glob({str(tmp_path)!r} + "/*/*.nbi")) > 0)
    """
    lines = _run(code, {"NUMBA_CACHE_DIR": str(tmp_path)}).splitlines()
    targets, sigmoid = (tuple(map(int, line.split())) for line in lines[:2])
    assert targets[0] == 0 and targets[1] >= 1, lines  # compiled here
    assert sigmoid[0] >= 1 and sigmoid[1] == 0, lines  # loaded: the helper compiled it
    assert lines[2] == "indexes True", lines


def test_cache_saves_can_be_locked_on_the_installed_numba():
    # The lock wraps numba's IndexDataCacheFile.save; were numba's cache to change shape,
    # compile_shared would fall back to one process: this test says so first.
    from numba.core import caching

    from crossentropy._cpu import _compile

    assert _compile.lock_cache_saves()
    assert getattr(caching.IndexDataCacheFile.save, "_crossentropy_locked", False)


def test_cache_saves_without_file_locks_still_save(tmp_path):
    # On a file system where flock fails, a save goes ahead unlocked (as numba alone would
    # do) instead of failing the compile.
    (tmp_path / "twice.py").write_text(
        "import numba\n@numba.njit(cache=True)\ndef twice(x):\n    return 2 * x\n")
    code = f"""
    import fcntl, glob, sys
    from crossentropy._cpu import _compile
    assert _compile.lock_cache_saves()
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
    from crossentropy._cpu import _compile
    _compile.PARTS = ((("targets", "float32"),),)
    _compile.compile_shared(1)
    print(getattr(caching.IndexDataCacheFile.save, "_crossentropy_locked", False))
    """
    assert _run(code, {"NUMBA_CACHE_DIR": str(tmp_path)}) == "True"


_TWO_CHEAP_PARTS = '((("targets", "float32"),), (("sigmoid", "float64"),))'


def test_processes_compiling_at_once_share_the_parts(tmp_path):
    # Two processes that start a cold compile at once (two short scripts, two test
    # workers) each take the parts the other has not claimed and wait for the rest: both
    # end with every kernel, and each part is compiled by one of them only (numba counts a
    # cache miss where it compiled, a hit where it loaded).  Two cheap parts stand in for
    # the real ones.  Which process compiles what depends on timing; that each is done
    # once does not.
    import os

    code = f"""
    from crossentropy import _cpu
    from crossentropy._cpu import _compile
    _compile.PARTS = {_TWO_CHEAP_PARTS}
    _compile.compile_shared(1)
    k = _cpu.kernels()
    print(_compile.is_warm(), *(sum(f._cache_misses.values())
                                for f in (k.index_targets, k._sigmoid_block)))
    """
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert all(o[0] == "True" for o in outs), outs  # both see a complete cache
    for j in (1, 2):  # each part compiled in exactly one of the two processes
        assert sorted(int(o[j]) > 0 for o in outs) == [False, True], outs


def test_the_background_compile_outlives_its_process_group(tmp_path):
    # The compile child runs in a session of its own: when the script that started it
    # ends and its whole process group is killed (a job runner, a closed terminal,
    # Ctrl-C), the compile still finishes, and the next process finds a warm cache.  The
    # child's compile is replaced by a 3 s sleep that then writes a file.
    import os
    import signal
    import time

    done = tmp_path / "child-finished"
    code = f"""
    import numpy as np
    import crossentropy as ce
    from crossentropy import _backends
    _backends._CHILD_CODE = "import time; time.sleep(3); open({str(done)!r}, 'w').close()"
    ce.logsumexp(np.ones((64, 1024)))  # a large call: starts the background compile
    print("started")
    """
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    script = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert script.communicate(timeout=300)[0].strip() == "started"
    try:
        os.killpg(script.pid, signal.SIGKILL)  # the script's group, whatever is left in it
    except ProcessLookupError:  # (nothing left in it)
        pass
    for _ in range(200):
        if done.exists():
            break
        time.sleep(0.1)
    assert done.exists()


def test_a_warm_cache_loads_only_the_kernels_a_call_needs(tmp_path):
    # With a warm cache the first large call does not load every kernel (1-2 s): numba
    # loads the ones the call runs from its cache.  The softmax kernels stay unloaded
    # after a cross-entropy.
    code = """
    import numpy as np
    import crossentropy as ce
    from crossentropy import _backends, _cpu
    x = np.ones((64, 1024), dtype=np.float32)
    ce.cross_entropy(x, np.zeros(64, dtype=np.int64))
    k = _cpu.kernels()
    print(_backends.kernels_ready(), len(k._ce_chunk.signatures) > 0,
          len(k._softmax_chunk.signatures), len(k._logsumexp_chunk.signatures))
    """
    import os

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}  # warm: conftest
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, env=env, check=True, timeout=600)
    assert out.stdout.split() == ["True", "True", "0", "0"], out.stdout


def test_a_read_only_package_folder_caches_in_numbas_user_folder(tmp_path):
    # In a read-only site-packages numba caches in a folder under the user's cache
    # directory; the markers (and claims) go where numba's index files go, so the next
    # process finds the cache warm.  The package folder is made "read-only" the way numba
    # tests it: no file can be created in its __pycache__.
    code = f"""
    import tempfile
    real = tempfile.TemporaryFile
    def no_writes_in_the_package(*a, dir=None, **k):
        if dir is not None and dir.replace("\\\\", "/").endswith("_cpu/__pycache__"):
            raise PermissionError(13, "read-only", dir)
        return real(*a, dir=dir, **k)
    tempfile.TemporaryFile = no_writes_in_the_package
    from crossentropy._cpu import _compile
    _compile.PARTS = {_TWO_CHEAP_PARTS}
    warm = _compile.is_warm()
    _compile.compile_shared(1)
    print(warm, _compile.is_warm(), _compile.cache_folder().startswith({str(tmp_path)!r}))
    """
    import os

    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path)  # numba's user-wide cache folder lives here
    env["HOME"] = str(tmp_path)
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                             capture_output=True, text=True, env=env, check=True, timeout=600)
        first = out.stdout.split()
        if _ == 0:
            assert first == ["False", "True", "True"], out.stdout + out.stderr
        else:  # a second process: warm
            assert first == ["True", "True", "True"], out.stdout + out.stderr


def test_warm_up_command_reports_progress_and_status(tmp_path):
    # `crossentropy warm-up` compiles with a report per part (a redrawn bar on a terminal,
    # a line per part otherwise), then says where the kernels stand; `--status` only
    # says it; the bare command ends with that line too.  Two cheap parts stand in.
    import os

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    run = f"""
    import sys
    from crossentropy._cpu import _compile
    _compile.PARTS = {_TWO_CHEAP_PARTS}
    from crossentropy.cli import main
    sys.exit(main(sys.argv[1:]))
    """

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(run), *argv],
                              capture_output=True, text=True, env=env, timeout=600)

    before = cli("warm-up", "--status")
    assert before.returncode == 0 and before.stdout.startswith("0 of 2 parts compiled")
    assert "crossentropy warm-up" in before.stdout
    compiled = cli("warm-up")
    assert compiled.returncode == 0, compiled.stderr
    lines = compiled.stderr.splitlines()
    assert lines[0].startswith("compiling the CPU kernels"), lines
    # a line as each part is done (by this process or its helper), not all at the end:
    # the two parts take seconds apart (one compiled here, one in a helper process)
    assert lines[1].startswith("1/2 done after"), lines
    assert lines[1].endswith(("targets float32", "sigmoid float64")), lines
    assert lines[2].startswith("2/2 done after"), lines
    assert len(lines) == 3, lines
    assert compiled.stdout.strip() == f"compiled (numba's cache: {tmp_path})"
    bare = cli()
    assert bare.stdout.rstrip().endswith(f"CPU kernels: compiled (numba's cache: {tmp_path})")


def test_warm_up_command_without_numba_says_so_in_one_line():
    code = """
    import sys
    sys.modules["numba"] = None  # as if not installed
    from crossentropy import _config
    _config.numba_available = lambda: False
    from crossentropy.cli import main
    sys.exit(main(["warm-up"]))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "numba is not installed" in out.stderr, out.stderr
