"""Root pytest configuration: what applies to the doctests of ``src/`` as well as ``tests/``
(``tests/conftest.py`` holds the rest)."""

from __future__ import annotations

import importlib.util
import os

import pytest

# OpenMP threads that wait without spinning.  torch and numba's "omp" threading layer share
# one libgomp, each worker of the parallel run (pytest-xdist, one per core) has a thread per
# core, and by default an idle OpenMP thread spins (GOMP_SPINCOUNT) waiting for the next
# parallel region: with two workers on two cores the spinning threads took the cores from
# the working ones (tests/test_torch_functional.py: 31 s of CPU, 14 s with waits that
# sleep).  Thread counts and results are unchanged.  Set here, in the controller, before the
# workers (and any subprocess of a test) start and load libgomp; a value already set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# doctests of classes that extend what only torch 2.13 added (torch.nn.LinearCrossEntropyLoss):
# on an older supported torch (the floor, 2.7) constructing them raises TorchTooOldError, as
# documented, so their examples cannot run there
_NEEDS_TORCH_2_13 = ("crossentropy.torch.modules.LinearCrossEntropyLoss",)


# The files that take longest, longest first (seconds of wall time on 2 cores, the full run
# under load, 2026-12-08).  The parallel run hands out whole files (--dist loadfile) in the
# order collected (--no-loadscope-reorder): started first, they run beside each other and
# the short files fill the end; handed out last (xdist's default order: most tests first
# puts a file of one long test at the end), one worker ran on alone for a minute.
_LONGEST_FIRST = (
    "tests/test_triton.py",  # 350 s: the Triton interpreter, the sm_90 compile
    "tests/test_jax_transforms.py",  # 260 s: XLA compiles
    "tests/test_jax_accuracy.py",  # 220 s
    "tests/test_torch_vocab_chunks.py",  # 170 s
    "tests/test_plot.py",  # 160 s: a process per plot
    "tests/test_cold_start.py",  # 150 s: processes compiling numba kernels
    "tests/test_jax_linear.py",  # 135 s
    "tests/test_jax_optax.py",  # 105 s
    "tests/test_docs_examples.py",  # 95 s
    "tests/test_distributed.py",  # 95 s: process groups
    "tests/test_install_floors.py",  # 85 s
    "tests/test_calibrate.py",  # 85 s
    "tests/test_jax_sharded.py",  # 60 s: one test, one process
    "tests/test_transformers_trainer.py",  # 55 s
    "tests/test_cli_explain.py",  # 55 s
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))  # stable
    _skip_what_needs_torch_2_13(items)


def _skip_what_needs_torch_2_13(items: list[pytest.Item]) -> None:
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    if hasattr(torch.nn, "LinearCrossEntropyLoss"):
        return
    skip = pytest.mark.skip(reason=f"needs torch 2.13 (torch {torch.__version__} is installed)")
    for item in items:
        if type(item).__name__ == "DoctestItem" and item.name in _NEEDS_TORCH_2_13:
            item.add_marker(skip)
