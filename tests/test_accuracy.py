"""Accuracy of the values, in ulps, against mpmath (50 digits) and a validated longdouble reference.

Bounds (issue 2, "The exact core"):

* float64: log_softmax, logsumexp, per-sample cross-entropy from logits <= 4 ulp,
  softmax <= 8 ulp, the sigmoid family (sigmoid, log_sigmoid, BCE with logits) <= 2 ulp;
* float32 and float16 are computed in float64 and rounded once: <= 1 ulp.

The random rows (1000 x 1000, logits ~ N(0, 10)) are checked against mpmath on their first
100 rows and against a longdouble reference on all of them; the longdouble reference is
itself checked against mpmath on those 100 rows.  Every test runs on each CPU backend.
"""

from __future__ import annotations

from typing import Any

import mpmath
import numpy as np
import pytest

import crossentropy as ce
from _reference import (
    DPS,
    EDGE_ROWS,
    LONGDOUBLE_IS_EXTENDED,
    MP_ROWS,
    Ref,
    dense_sigmoid_points,
    dense_sigmoid_reference,
    ld_binary,
    ld_rows,
    mp_rows,
    random_rows,
    ref_distance,
    ref_from_mp,
    rows_reference,
    sigmoid_points,
    sigmoid_reference,
    ulp_error,
)

# the `backend` fixture (numpy and numba) is in conftest.py


# Bounds in ulps of the result's dtype.
ROW_BOUND = {"lse": 4.0, "log_softmax": 4.0, "ce": 4.0, "softmax": 8.0}
SIGMOID_BOUND = 2.0
ROUNDED_ONCE_BOUND = 1.0  # float32 / float16: computed in float64, rounded once
DTYPES = ["float64", "float32", "float16"]


def _bound(kind: str, dtype: str) -> float:
    return ROW_BOUND[kind] if dtype == "float64" else ROUNDED_ONCE_BOUND


def _row_values(x: Any, y: Any) -> dict[str, Any]:
    return {
        "lse": ce.logsumexp(x),
        "log_softmax": ce.log_softmax(x),
        "softmax": ce.softmax(x),
        "ce": ce.cross_entropy(x, y, reduction="none"),
    }


def _check(err: np.ndarray, bound: float, what: str) -> None:
    worst = float(np.max(err))
    where = np.unravel_index(int(np.argmax(err)), err.shape)
    assert worst <= bound, f"{what}: max error {worst:.3f} ulp at {where} > {bound} ulp"


# --------------------------------------------------------------------------- the measure


def test_ulp_error_measure() -> None:
    # Correctly rounded values are within half an ulp; the neighbours are 1 ulp further.
    r = ref_from_mp(["0.1", "-2.5e-320", "1e-400", "0", "inf"])
    got = np.array([0.1, -2.5e-320, 0.0, 0.0, np.inf])
    assert np.all(ulp_error(got, r) <= 0.5)
    up = np.nextafter(got[:2], np.inf)
    assert np.all((ulp_error(up, r[:2]) > 0.5) & (ulp_error(up, r[:2]) <= 1.5))
    # subnormal spacing: 2.5e-320 is 5060 subnormal steps of 4.94e-324
    assert float(ulp_error(np.array([-2.5e-320 - 4.94e-322]), r[1:2])[0]) == pytest.approx(
        100, abs=0.6
    )
    # exact specials are compared by equality
    assert ulp_error(np.array([5e-324, 1e308]), r[3:5]).tolist() == [np.inf, np.inf]
    # float32 target: spacing of the float32 value
    e32 = ulp_error(np.float32(0.1), ref_from_mp(["0.1"]))
    assert float(e32[0]) == pytest.approx(0.2, abs=1e-6)


@pytest.mark.skipif(not LONGDOUBLE_IS_EXTENDED, reason="np.longdouble is not extended here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_longdouble_reference_matches_mpmath(dtype: str) -> None:
    mp = rows_reference(dtype, "mp")
    ld = rows_reference(dtype, "ld")
    for kind, ref in mp.items():
        d = ref_distance(ld[kind][: MP_ROWS[dtype]], ref)
        assert float(np.max(d)) < 0.05, kind


# --------------------------------------------------------------------------- random rows


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_against_mpmath(dtype: str, backend: str) -> None:
    x, y = random_rows(dtype)
    ref = rows_reference(dtype, "mp")
    got = _row_values(x[: MP_ROWS[dtype]], y[: MP_ROWS[dtype]])
    for kind, value in got.items():
        assert value.dtype == np.dtype(dtype)
        _check(ulp_error(value, ref[kind]), _bound(kind, dtype), f"{kind} {dtype}")


@pytest.mark.skipif(not LONGDOUBLE_IS_EXTENDED, reason="np.longdouble is not extended here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_full_size(dtype: str, backend: str) -> None:
    x, y = random_rows(dtype)
    ref = rows_reference(dtype, "ld")
    got = _row_values(x, y)
    for kind, value in got.items():
        _check(ulp_error(value, ref[kind]), _bound(kind, dtype), f"{kind} {dtype} 1000x1000")


@pytest.mark.skipif(not LONGDOUBLE_IS_EXTENDED, reason="np.longdouble is not extended here")
@pytest.mark.parametrize("seed", [3, 7])
def test_rows_regression_seeds(seed: int, backend: str) -> None:
    """Data on which summing the row with np.sum (error of a few ulp for 1000 terms) and
    dividing by the rounded 1 + s gave softmax errors of 4.3 ulp (and log_softmax 3.9)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 10.0, (1000, 1000))
    y = rng.integers(0, 1000, 1000)
    ref = ld_rows(x, y)
    got = _row_values(x, y)
    for kind, value in got.items():
        _check(ulp_error(value, ref[kind]), ROW_BOUND[kind], f"{kind} seed {seed}")
    _, g = ce.cross_entropy(x, y, reduction="none", return_grad=True)
    _check(ulp_error(g, ref["ce_grad"]), 4.0, f"CE gradient seed {seed}")


def test_rows_along_other_axis(backend: str) -> None:
    dtype = "float64"
    x, y = random_rows(dtype)
    ref = rows_reference("float64", "mp")
    xt = np.ascontiguousarray(x[: MP_ROWS[dtype]].T)  # classes along axis 0
    _check(ulp_error(ce.log_softmax(xt, axis=0).T, ref["log_softmax"]), 4.0, "log_softmax ax0")
    _check(ulp_error(ce.softmax(xt, axis=0).T, ref["softmax"]), 8.0, "softmax ax0")
    _check(ulp_error(ce.logsumexp(xt, axis=0), ref["lse"]), 4.0, "logsumexp ax0")
    ce0 = ce.cross_entropy(xt, y[: MP_ROWS[dtype]], axis=0, reduction="none")
    _check(ulp_error(ce0, ref["ce"]), 4.0, "cross_entropy ax0")


# --------------------------------------------------------------------------- edge tables

def _edge_cases() -> list[Any]:
    """EDGE_ROWS (tests/_reference.py) in float64 and, where representable, float32."""
    cases = []
    for i, (row, label) in enumerate(EDGE_ROWS):
        for dtype in ("float64", "float32"):
            if dtype == "float32" and max(abs(v) for v in row) > 3e38:
                continue
            arr = np.asarray(row, dtype=dtype)
            cases.append(pytest.param(arr, label, id=f"{i}-{dtype}"))
    return cases


_EDGE_REF: dict[tuple[bytes, str, int], dict[str, Ref]] = {}


def _edge_reference(x: np.ndarray, label: int) -> dict[str, Ref]:
    key = (x.tobytes(), x.dtype.name, label)
    if key not in _EDGE_REF:
        _EDGE_REF[key] = mp_rows(x[None, :], np.array([label]))
    return _EDGE_REF[key]


@pytest.mark.parametrize(("x", "label"), _edge_cases())
def test_edge_rows(x: np.ndarray, label: int, backend: str) -> None:
    ref = _edge_reference(x, label)
    got = _row_values(x[None, :], np.array([label]))
    dtype = x.dtype.name
    for kind, value in got.items():
        _check(ulp_error(value, ref[kind]), _bound(kind, dtype), f"{kind} {x.tolist()}")
    # the 1-d call (the article's form) gives the same numbers
    np.testing.assert_array_equal(ce.softmax(x), got["softmax"][0])
    assert ce.cross_entropy(x, label, reduction="none") == got["ce"][0]


def test_edge_values_quoted_in_the_docs(backend: str) -> None:
    # mpmath (mp.dps = 50): x = [mpf(1e6+1), mpf(1e6), mpf(1e6-1)]
    #   log(sum(exp(v - x[0]) for v in x)) = 0.40760596444438030448291990454507045147294710830619
    x = np.array([1e6 + 1, 1e6, 1e6 - 1], dtype=np.float32)
    loss = ce.cross_entropy(x, 0)
    assert loss.dtype == np.float32
    assert loss == np.float32(0.40760596444438030448)
    # mpmath: log(1000) = 6.9077552789821370520539743640530926228033044658863
    assert ce.cross_entropy(np.zeros(1000), 7) == 6.90775527898213705205397436405309262


# --------------------------------------------------------------------------- logsumexp


def test_logsumexp_ill_conditioned_bound(backend: str) -> None:
    """Maximum < 0 and result near 0: error within a few ulp of max(|m|, log1p(s))."""
    rows = [
        [-0.6931471805599453, -0.6931471805599453],  # log(1/2 + 1/2) ~ 0
        [-1.0986122886681098] * 3,  # 3 * (1/3)
        [-0.6931471805599453, -1.3862943611198906, -1.3862943611198906],
        [-1e-10, -23.0],
        [-2.302585092994046] * 10,
    ]
    for row in rows:
        x = np.array(row)
        got = ce.logsumexp(x)
        with mpmath.workdps(DPS):
            exact = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(v)) for v in row))
            m = max(row)
            s = mpmath.fsum(mpmath.exp(mpmath.mpf(v) - m) for v in row) - 1
            scale = max(abs(m), float(mpmath.log1p(s)))
            err = abs(mpmath.mpf(float(got)) - exact) / np.spacing(scale)
        assert err <= 4, (row, float(err))


def _mp_weighted(x: np.ndarray, b: np.ndarray) -> tuple[Ref, np.ndarray]:
    vals, signs = [], []
    with mpmath.workdps(DPS):
        for xr, br in zip(x, b, strict=True):
            t = mpmath.fsum(mpmath.mpf(float(bi)) * mpmath.exp(mpmath.mpf(float(xi)))
                            for xi, bi in zip(xr, br, strict=True))
            vals.append(mpmath.log(abs(t)) if t != 0 else mpmath.ninf)
            signs.append(float(mpmath.sign(t)))
    return ref_from_mp(vals), np.array(signs)


def test_weighted_logsumexp_random(backend: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 10.0, (100, 200))
    b = rng.uniform(0.0, 3.0, (100, 200))
    b[:, ::7] = 0.0  # zero weights drop the term
    ref, sign = _mp_weighted(x, b)
    got, got_sign = ce.logsumexp(x, b=b, return_sign=True)
    np.testing.assert_array_equal(got_sign, sign)
    _check(ulp_error(got, ref), 4.0, "weighted logsumexp")


def test_weighted_logsumexp_cancellation(backend: str) -> None:
    # mpmath (mp.dps = 50): log(exp(mpf(1e-20)) - 1)
    #   = -46.051701859880913735201557639477670052449749355307
    v, s = ce.logsumexp([0.0, 1e-20], b=[1.0, -1.0], return_sign=True)
    assert s == -1.0
    assert v == -46.051701859880913735201557639477670052449749355307
    cases = [
        ([0.0, 1e-20], [1.0, -1.0]),
        ([0.0, 1e-20], [-1.0, 1.0]),
        ([1.0, 0.0], [1.0, -1.0]),  # log(e - 1)
        ([5.0, 5.0 - 1e-12, -30.0], [1.0, -1.0, 1.0]),  # the top pair cancels
        ([3.0, 2.0, 1.0], [1.0, -2.0, 0.5]),
        ([-700.0, -700.5], [1.0, -1.0]),
    ]
    x = np.array([c[0] + [-np.inf] * (3 - len(c[0])) for c in cases])
    b = np.array([c[1] + [0.0] * (3 - len(c[1])) for c in cases])
    ref, sign = _mp_weighted(x, b)
    got, got_sign = ce.logsumexp(x, b=b, return_sign=True)
    np.testing.assert_array_equal(got_sign, sign)
    _check(ulp_error(got, ref), 4.0, "weighted logsumexp with cancellation")


# --------------------------------------------------------------------------- sigmoid family


def _sigmoid_values(x: np.ndarray) -> dict[str, Any]:
    zero, one = np.zeros_like(x), np.ones_like(x)
    return {
        "sigmoid": ce.sigmoid(x),
        "log_sigmoid": ce.log_sigmoid(x),
        "bce0": ce.binary_cross_entropy_with_logits(x, zero, reduction="none"),
        "bce1": ce.binary_cross_entropy_with_logits(x, one, reduction="none"),
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_family_whole_range(dtype: str, backend: str) -> None:
    x = sigmoid_points(dtype)
    ref = sigmoid_reference(dtype)
    bound = SIGMOID_BOUND if dtype == "float64" else ROUNDED_ONCE_BOUND
    for kind, value in _sigmoid_values(x).items():
        assert value.dtype == np.dtype(dtype)
        _check(ulp_error(value, ref[kind]), bound, f"{kind} {dtype}")


@pytest.mark.skipif(not LONGDOUBLE_IS_EXTENDED, reason="np.longdouble is not extended here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_longdouble_sigmoid_reference_matches_mpmath(dtype: str) -> None:
    x = sigmoid_points(dtype)
    ld = ld_binary(x)
    for kind, ref in sigmoid_reference(dtype).items():
        assert float(np.max(ref_distance(ld[kind], ref))) < 0.01, kind


@pytest.mark.skipif(not LONGDOUBLE_IS_EXTENDED, reason="np.longdouble is not extended here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_family_dense(dtype: str, backend: str) -> None:
    x = dense_sigmoid_points(dtype)
    ref = dense_sigmoid_reference(dtype)
    bound = SIGMOID_BOUND if dtype == "float64" else ROUNDED_ONCE_BOUND
    for kind, value in _sigmoid_values(x).items():
        _check(ulp_error(value, ref[kind]), bound, f"{kind} {dtype} dense")


def test_sigmoid_subnormal_results(backend: str) -> None:
    # mpmath (mp.dps = 50): 1 / (1 + exp(720))
    #   = 2.0322308024242931528666337664148122967242281660125e-313
    assert ce.sigmoid(-720.0) == 2.0322308024242931528666337664148122967242281660125e-313
    # mpmath: log1p(exp(-40)) = 4.248354255291588986304977843631582181877750679823e-18
    bce = ce.binary_cross_entropy_with_logits(-40.0, 0.0)
    assert bce == 4.248354255291588986304977843631582181877750679823e-18
    # the sigmoid and its derivative stay non-zero until e^-|x| underflows (|x| ~ 745.13)
    x = np.linspace(-745.0, 745.0, 20001)
    s, ds = ce.sigmoid(x, return_grad=True)
    assert np.all(s > 0) and np.all(ds > 0)
    # mpmath: exp(-744) / (1 + exp(-744))**2
    #   = 7.6719447041799790739497743044218878572103717259493e-324
    d744 = ce.sigmoid(744.0, return_grad=True)[1]
    assert d744 == 7.6719447041799790739497743044218878572103717259493e-324


# --------------------------------------------------------------------------- from probabilities


def test_binary_cross_entropy_no_clipping(backend: str) -> None:
    # mpmath (mp.dps = 50): -log(mpf(1e-300)) = 690.77552789821370518033834457010050290861334158364
    want = 690.77552789821370518033834457010050290861334158364
    assert ce.binary_cross_entropy(1e-300, 1.0) == want
    assert ce.cross_entropy_from_probs([1e-300, 1.0 - 1e-300], 0) == want
    assert ce.cross_entropy_from_probs([1e-300, 1.0], [1.0, 0.0]) == want
    with np.errstate(divide="raise", invalid="raise"):
        assert ce.binary_cross_entropy(0.0, 1.0) == np.inf
        assert ce.cross_entropy_from_probs([0.0, 1.0], 0) == np.inf
        v, g = ce.binary_cross_entropy(0.0, 0.0, return_grad=True)
        assert v == 0.0 and g == 1.0  # the true 1 / (1 - p)
        v, g = ce.binary_cross_entropy(1.0, 1.0, return_grad=True)
        assert v == 0.0 and g == -1.0
        # a class with target 0 adds exactly 0, even with probability 0
        assert ce.cross_entropy_from_probs([0.0, 1.0], 1) == 0.0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_binary_cross_entropy_from_probs_range(dtype: str, backend: str) -> None:
    tiny = {"float64": -320, "float32": -44}[dtype]
    q = np.concatenate([np.logspace(tiny, -1e-9, 800), 1 - np.logspace(-16, -1, 200)])
    q = q.astype(dtype)
    q = q[(q > 0) & (q < 1)]
    with mpmath.workdps(DPS):
        ref1 = ref_from_mp([-mpmath.log(mpmath.mpf(float(v))) for v in q])
        ref0 = ref_from_mp([-mpmath.log1p(-mpmath.mpf(float(v))) for v in q])
    bound = SIGMOID_BOUND if dtype == "float64" else ROUNDED_ONCE_BOUND
    one, zero = np.ones_like(q), np.zeros_like(q)
    got1 = ce.binary_cross_entropy(q, one, reduction="none")
    got0 = ce.binary_cross_entropy(q, zero, reduction="none")
    _check(ulp_error(got1, ref1), bound, "bce(q, 1)")
    _check(ulp_error(got0, ref0), bound, "bce(q, 0)")
