"""Shared test configuration: a deterministic hypothesis profile, the CPU-backend fixture."""

import importlib.util
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

import crossentropy as ce

# Triton is imported once per process, in interpreter mode (the only mode a CPU can run),
# before any test module: test_triton.py would otherwise re-import it when something had
# imported it compiled first, and with jaxlib loaded (test_jax*.py) a second import of
# Triton's native module aborts the process (both register their enums in one nanobind
# table: "refusing to add duplicate key").  TRITON_INTERPRET is restored: the library reads
# it at each call (crossentropy.triton._launch.interpreting).
if importlib.util.find_spec("triton") is not None:
    _interpret = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language  # noqa: F401
    finally:
        if _interpret is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = _interpret

settings.register_profile(
    "deterministic",
    derandomize=True,
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("deterministic")

# Compile (or load) the numba kernels before any test: under the "auto" backend a cold
# process would otherwise serve its first large calls from the NumPy core while the
# kernels compile in the background (crossentropy._backends), and the tests want to know
# which path ran.
ce.warm_up()


@pytest.fixture(params=["numpy", "numba"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run the test under each CPU backend: the NumPy reference and the numba kernels
    (which the test extra installs), with the same bounds."""
    with ce.use_backend(request.param):
        yield request.param
