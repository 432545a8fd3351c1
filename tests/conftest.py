"""Shared test configuration: a deterministic hypothesis profile, the CPU-backend fixture."""

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

import crossentropy as ce

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
