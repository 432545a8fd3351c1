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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if importlib.util.find_spec("torch") is None:
        return
    import torch

    if hasattr(torch.nn, "LinearCrossEntropyLoss"):
        return
    skip = pytest.mark.skip(reason=f"needs torch 2.13 (torch {torch.__version__} is installed)")
    for item in items:
        if type(item).__name__ == "DoctestItem" and item.name in _NEEDS_TORCH_2_13:
            item.add_marker(skip)
