"""The plain-Python path for a few finite numbers (crossentropy._small) against the
vectorised reference and against mpmath."""

from __future__ import annotations

import mpmath as mp
import numpy as np
import pytest

import crossentropy as ce
from crossentropy import _small


def _vectorised(f, row: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """f on `row` through the vectorised path: stack copies until the input is too big for
    the small path, then take the first row back."""
    reps = _small.SMALL // row.size + 1
    with ce.use_backend("numpy"):
        return f(np.tile(row, (reps, 1)))[0]


def _ulps(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.spacing(np.abs(want))))


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("seed", range(5))
def test_small_path_agrees_with_the_vectorised_path(n: int, seed: int) -> None:
    row = np.random.default_rng(seed).normal(0, 10, n)
    assert row.size <= _small.SMALL
    for f in (ce.softmax, ce.log_softmax):
        with ce.use_backend("numpy"):
            small = f(row)
        assert _ulps(small, _vectorised(f, row)) <= 2.0
    with ce.use_backend("numpy"):
        lse = ce.logsumexp(row)
    vec = _vectorised(lambda a: ce.logsumexp(a, keepdims=True), row)[0]
    assert abs(lse - vec) <= 2 * np.spacing(abs(vec))


def test_small_path_against_mpmath() -> None:
    # Reference: mpmath at 50 digits, softmax_j = exp(x_j - lse), log_softmax_j = x_j - lse.
    mp.mp.dps = 50
    rng = np.random.default_rng(11)
    for n in (2, 3, 5, 17):
        row = rng.normal(0, 20, n)
        lse = mp.log(mp.fsum(mp.exp(mp.mpf(float(v))) for v in row))
        want_ls = np.array([float(mp.mpf(float(v)) - lse) for v in row])
        want_p = np.array([float(mp.exp(mp.mpf(float(v)) - lse)) for v in row])
        with ce.use_backend("numpy"):
            assert _ulps(ce.log_softmax(row), want_ls) <= 4
            assert _ulps(ce.softmax(row), want_p) <= 8
            assert abs(ce.logsumexp(row) - float(lse)) <= 4 * np.spacing(abs(float(lse)))


def test_small_path_leaves_special_values_to_the_vectorised_path() -> None:
    assert _small.finite([[1.0, 2.0]])
    assert not _small.finite([[1.0, np.inf]])
    assert not _small.finite([[np.nan, 0.0]])
    # the rows with special values still follow the documented table
    np.testing.assert_array_equal(ce.softmax([np.inf, 0.0]), [1.0, 0.0])
    assert np.isnan(ce.softmax([np.nan, 0.0])).all()


def test_small_path_when_x_minus_max_overflows() -> None:
    # 1e308 - (-1e308) overflows to -inf in the shift; the result is still [1, 0].
    np.testing.assert_array_equal(ce.softmax([1e308, -1e308]), [1.0, 0.0])
    np.testing.assert_array_equal(ce.log_softmax([1e308, -1e308]), [0.0, -np.inf])


@pytest.mark.parametrize("seed", range(5))
def test_small_cross_entropy_agrees_with_the_core_and_mpmath(seed: int) -> None:
    from crossentropy._core import categorical as core_ce

    rng = np.random.default_rng(seed)
    x = rng.normal(0, 10, (4, 7))
    x[0, 2] = 60.0  # a confident row: loss ~1e-26
    y = np.array([2, 0, 6, 3])
    assert x.size <= _small.SMALL
    got = ce.cross_entropy(x, y, reduction="none")
    t = core_ce.Target(counted=np.ones(4, dtype=bool), labels=y)
    want, _, _ = core_ce.logits_rows(x, t)
    assert _ulps(got, want) <= 2.0
    with mp.workdps(50):
        for i in range(4):
            lse = mp.log(mp.fsum(mp.exp(mp.mpf(float(v))) for v in x[i]))
            exact = float(lse - mp.mpf(float(x[i, y[i]])))  # -log softmax(x_i)[y_i]
            assert abs(got[i] - exact) <= 2 * np.spacing(abs(exact))
    # ignored rows and the mean take the same route
    y2 = np.array([2, -100, 6, 3])
    assert float(ce.cross_entropy(x, y2)) == pytest.approx(float(np.mean(want[[0, 2, 3]])),
                                                          rel=4e-16)
