"""The core's row sum (`_core.rows.sum_last`) and its per-call scratch buffers.

The reference is `math.fsum`, which is correctly rounded (Shewchuk's algorithm), an
implementation independent of the error-free extraction under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import crossentropy as ce
from crossentropy._core import categorical as core_ce
from crossentropy._core import rows as core_rows
from crossentropy._core.scratch import Scratch


def _ulps(got: float, want: float) -> float:
    if got == want:
        return 0.0
    return abs(got - want) / math.ulp(want) if want else math.inf


def _cases() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    out = [
        np.exp(rng.normal(scale=10.0, size=(6, 1000)).clip(-700, 0)),  # the N(0, 10) rows
        np.exp(-rng.exponential(40.0, size=(4, 32000))),  # wide rows, many tiny terms
        rng.uniform(size=(3, 7)) * 1e-300,  # near the bottom of the range
        np.full((2, 4096), 0.1),  # 0.1 is not a dyadic number: every plain sum rounds
        np.concatenate([np.ones((1, 1)), np.full((1, 9999), 2.0**-60)], axis=1),
        np.array([[5e-324, 5e-324, 1e-310]]),  # subnormal terms
        np.zeros((1, 5)),
        np.array([[0.75]]),
    ]
    return out


@pytest.mark.parametrize("e", _cases(), ids=lambda a: f"{a.shape}")
def test_sum_last_within_one_rounding_of_fsum(e: np.ndarray) -> None:
    got = core_rows.sum_last(e)
    assert got.shape == (*e.shape[:-1], 1)
    for row, g in zip(e, got[:, 0], strict=True):
        # one rounding of sum(q) + sum(r) plus a remainder error of ~1e-5 ulp
        assert _ulps(float(g), math.fsum(row)) <= 0.5 + 1e-3


def test_sum_last_beats_plain_pairwise_sum() -> None:
    # The reason the compensated sum exists: np.sum's first accumulator holds the 1 and
    # drops each term below half its ulp (15 of them per 128-term block): 6 ulp off.
    e = np.full((1, 4099), 0.75 * 2.0**-53)
    e[0, 0] = 1.0
    plain = _ulps(float(np.sum(e)), math.fsum(e[0]))
    assert plain > 2.0
    assert _ulps(float(core_rows.sum_last(e)[0, 0]), math.fsum(e[0])) <= 0.5


def test_sum_last_non_finite_terms_give_the_plain_sum() -> None:
    e = np.array([[1.0, np.inf, 2.0], [1.0, np.nan, 0.0], [np.inf, np.inf, 0.0]])
    assert core_rows.sum_last(e)[:, 0].tolist()[0] == np.inf
    assert np.isnan(core_rows.sum_last(e)[1, 0])
    assert core_rows.sum_last(e)[2, 0] == np.inf


def test_scratch_buffers_are_reused_and_results_do_not_depend_on_them() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(scale=8.0, size=(9, 513))
    s = Scratch()
    first = s.take("a", (4, 513))
    again = s.take("a", (3, 513))  # smaller: the same memory
    assert np.shares_memory(first, again)
    assert not np.shares_memory(first, s.take("b", (4, 513)))
    fresh = [core_rows.softmax(x[i : i + 4]) for i in (0, 4, 5)]
    shared = [core_rows.softmax(x[i : i + 4], True, s).copy() for i in (0, 4, 5)]
    for a, b in zip(fresh, shared, strict=True):
        np.testing.assert_array_equal(a, b)


def test_blocked_public_path_matches_the_core_on_rows_of_different_blocks() -> None:
    # 3 rows of 20,000 classes: one row per block; the scratch is reused across blocks and
    # must not leak one block's values into the next.
    rng = np.random.default_rng(11)
    x = rng.normal(scale=5.0, size=(3, 20000))
    x[1] = -np.inf
    x[1, 5] = 0.0  # a one-hot row between two ordinary ones
    y = np.array([3, 5, 19999])
    with ce.use_backend("numpy"):
        sm = ce.softmax(x)
        lsm = ce.log_softmax(x)
        lse = ce.logsumexp(x, axis=-1)
        loss, g = ce.cross_entropy(x, y, reduction="none", return_grad=True)
    for i in range(3):
        row = x[i : i + 1]
        np.testing.assert_array_equal(sm[i], core_rows.softmax(row)[0])
        np.testing.assert_array_equal(lsm[i], core_rows.log_softmax(row)[0])
        assert lse[i] == core_rows.logsumexp(row)[0]
    assert g.shape == x.shape
    assert loss[1] == 0.0 and g[1, 5] == 0.0
    for i in (0, 2):  # the core's own gradient rows, bit for bit
        want = core_ce.logits_rows(
            x[i : i + 1], core_ce.Target(counted=np.ones(1, bool), labels=y[i : i + 1]),
            want_grad=True,
        )
        assert loss[i] == want[0][0]
        np.testing.assert_array_equal(g[i], want[2][0])


def test_reduce_scalar_rule_divides_last_and_overflows_quietly() -> None:
    import warnings

    from crossentropy._core.reduce import Reduction, reduce, scalar

    assert scalar(6.0, 0.5, 4.0, 0.0) == 0.75  # (6 * 0.5) / 4
    assert math.isnan(scalar(0.0, 1.0, None, math.nan))  # torch: an empty mean is NaN
    assert scalar(0.0, 1.0, None, 0.0) == 0.0  # the core: 0
    assert math.isnan(scalar(math.nan, 1.0, None, 0.0))  # NaN stays NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scalar(1e308, 1.0, 1e-300, 0.0) == math.inf  # no warning, no exception
    # the array reduction gives the same value as the scalar rule
    loss = np.array([0.1, 0.2, 0.7, 1e-17])
    r = reduce(loss, np.ones(4), Reduction.MEAN, 1.0)
    assert float(r.value) == scalar(float(np.sum(loss)), 1.0, 4.0, 0.0) and r.divisor == 4.0
