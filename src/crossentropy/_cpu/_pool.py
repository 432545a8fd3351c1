"""The kernels' threads: row ranges of one call computed by a few Python threads at once.

The compiled kernels release the GIL (``nogil=True``), so that plain Python threads run
them in parallel: each large call is cut into parts (row ranges, or blocks of an
elementwise kernel), and the calling thread and the pool's workers take the parts one at a
time until none is left.  The parts are computed exactly as one thread computes them
(each row or block by one thread, in a fixed order), so the results do not depend on the
number of threads.

Why not numba's ``prange``: each ``parallel=True`` entry point is a separate compilation
that generates the machine code of the whole kernel again (twice: the outlined loop body
and its wrapper), about 40% of the whole compile (34 of 84 CPU seconds cold on a Zen 3);
here the kernels compiled for one thread are the only ones.  And numba's OpenMP layer,
once started, set the process's OpenMP thread count, which torch shares.

Nothing here imports numba, or anything of the package.  The calling thread always computes
parts itself, so a call never waits for a worker that cannot start (a loaded machine): it
only waits for the parts a worker has begun.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

__all__ = ["requested", "run", "size"]

#: ``ce.set_num_threads``'s count (None: every core), set by the adapter
#: (``crossentropy._cpu.kernels``) before each call: this module imports nothing of the
#: package, as the kernel modules it sits among.
requested: int | None = None

Body = Callable[[int], None]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def size() -> int:
    """Threads a call may use: :data:`requested` (``ce.set_num_threads``; None: every core
    this process may run on), capped by ``NUMBA_NUM_THREADS`` where set."""
    n = requested
    most = _cores()
    env = os.environ.get("NUMBA_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        most = min(most, int(env))
    return most if n is None else max(1, min(n, most))


class _Task:
    """One call: parts 0 .. n-1 of `body`, taken in turn by whichever thread asks next."""

    __slots__ = ("body", "done", "error", "finished", "lock", "n", "next")

    def __init__(self, body: Body, n: int) -> None:
        self.body = body
        self.n = n
        self.next = 0  # the next part nobody has taken
        self.done = 0  # parts finished
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.finished = threading.Event()

    def work(self) -> None:
        """Take and compute parts until none is left."""
        while True:
            with self.lock:
                i = self.next
                if i >= self.n:
                    return
                self.next = i + 1
            try:
                self.body(i)
            except BaseException as e:  # (raised in the caller)
                self.error = e
            with self.lock:
                self.done += 1
                if self.done == self.n:
                    self.finished.set()


class _Pool:
    def __init__(self) -> None:
        self.tasks: queue.SimpleQueue[_Task] = queue.SimpleQueue()
        self.workers = 0
        self.lock = threading.Lock()

    def _loop(self) -> None:
        while True:
            self.tasks.get().work()

    def grow(self, n: int) -> None:
        with self.lock:
            while self.workers < n:
                threading.Thread(target=self._loop, daemon=True,
                                 name=f"crossentropy-kernels-{self.workers}").start()
                self.workers += 1


_pool = _Pool()


def _after_fork() -> None:  # the child of a fork has none of the parent's threads
    global _pool
    _pool = _Pool()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def run(body: Body, parts: int, threads: int | None = None) -> None:
    """Call ``body(i)`` for i in range(parts), over up to `threads` threads (default
    :func:`size`) including the calling one, and return when every call has returned
    (re-raising an exception of any)."""
    threads = size() if threads is None else threads
    helpers = min(threads, parts) - 1
    if helpers <= 0:
        for i in range(parts):
            body(i)
        return
    task = _Task(body, parts)
    pool = _pool
    pool.grow(helpers)
    for _ in range(helpers):
        pool.tasks.put(task)
    task.work()
    task.finished.wait()
    if task.error is not None:
        raise task.error
