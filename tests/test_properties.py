"""Property tests (hypothesis, the deterministic profile of tests/conftest.py).

Identities that must hold for any input:

* softmax rows sum to 1 and are shift invariant; log_softmax = log(softmax);
* binary cross-entropy of x is the two-class cross-entropy of [0, x];
* a loss in base 2 is the loss in nats divided by ln 2;
* ignore_index masking equals slicing the rows out (whatever the masked rows hold);
* ``axis=k`` equals moving axis k last (bit for bit);
* index targets equal their one-hot rows (weights, smoothing, every reduction);
* the weighted mean is the sum divided by the summed weight of the counted targets;
* ``return_grad`` matches central finite differences (a quick check; the ulp-level
  gradient accuracy is in tests/test_gradients.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossentropy as ce

EPS = float(np.finfo(np.float64).eps)
LN2 = math.log(2.0)
REDUCTIONS = ("none", "mean", "sum")

finite = st.floats(-50.0, 50.0, allow_nan=False, allow_infinity=False, width=64)
wide = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def logits_2d(draw: Any, elements: Any = finite, min_c: int = 1, max_c: int = 8) -> Any:
    n = draw(st.integers(1, 6))
    c = draw(st.integers(min_c, max_c))
    return draw(hnp.arrays(np.float64, (n, c), elements=elements))


@st.composite
def problem(draw: Any, min_c: int = 2) -> Any:
    """Logits (N, C), index labels, a class weight (or None), label smoothing, reduction."""
    x = draw(logits_2d(min_c=min_c))
    n, c = x.shape
    y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    w = draw(st.none() | hnp.arrays(np.float64, (c,), elements=st.floats(0.0, 4.0)))
    eps = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    red = draw(st.sampled_from(REDUCTIONS))
    return x, y, w, eps, red


def _close(a: Any, b: Any, rtol: float = 8 * EPS, atol: float = 0.0) -> None:
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True, strict=True)


def _soft_rows(draw: Any, shape: tuple[int, ...]) -> Any:
    """Probability rows that sum to 1 within a few eps (normalised in float64)."""
    raw = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.0, 1.0)))
    raw[..., 0] += 1e-3  # no all-zero rows
    return raw / raw.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------- softmax


@settings(max_examples=80)
@given(logits_2d(elements=wide))
def test_softmax_rows_sum_to_one(x: Any) -> None:
    p = ce.softmax(x)
    assert np.all((p >= 0) & (p <= 1))
    _close(p.sum(axis=-1), np.ones(x.shape[0]), rtol=0, atol=x.shape[1] * 2 * EPS)


@settings(max_examples=80)
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 8)),
               elements=st.integers(-4000, 4000).map(lambda k: k / 8)),
    st.integers(-(2**20), 2**20),
)
def test_softmax_shift_invariant(x: Any, shift: int) -> None:
    """On a grid of multiples of 1/8, x + shift is exact, so the results are identical."""
    xs = x + shift
    assert np.array_equal(xs - shift, x)  # the shift is exact
    np.testing.assert_array_equal(ce.softmax(xs), ce.softmax(x))
    np.testing.assert_array_equal(ce.log_softmax(xs), ce.log_softmax(x))
    # logsumexp itself moves by the shift (up to the rounding of the sum with the shift)
    _close(ce.logsumexp(xs), ce.logsumexp(x) + shift, rtol=4 * EPS, atol=4 * EPS * abs(shift))


@settings(max_examples=80)
@given(logits_2d(elements=wide))
def test_softmax_shift_invariant_any_float(x: Any) -> None:
    shift = 1000.0
    _close(ce.softmax(x + shift), ce.softmax(x), rtol=1e-9, atol=1e-300)


@settings(max_examples=80)
@given(logits_2d(elements=st.floats(-300.0, 300.0)))
def test_log_softmax_is_log_of_softmax(x: Any) -> None:
    p = ce.softmax(x)
    lp = ce.log_softmax(x)
    ok = p > np.finfo(np.float64).tiny  # where softmax is a normal number
    # log(p (1 + d)) = log p + d: an absolute error of a few eps, relative for large |log p|
    _close(lp[ok], np.log(p[ok]), rtol=4 * EPS, atol=16 * EPS)
    # and where softmax underflows, log_softmax is still finite and very negative
    assert np.all(lp[~ok] < -700)


@settings(max_examples=80)
@given(logits_2d(elements=wide))
def test_logsumexp_matches_log_softmax(x: Any) -> None:
    # log_softmax(x) = x - logsumexp(x) up to the cancellation in that subtraction
    lse = ce.logsumexp(x, keepdims=True)
    _close(ce.log_softmax(x), x - lse, rtol=0, atol=8 * EPS * (1 + np.max(np.abs(x))))


# --------------------------------------------------------------------------- binary vs categorical


@settings(max_examples=80)
@given(
    st.floats(-700.0, 700.0), st.floats(0.0, 1.0), st.sampled_from([0.0, 0.2, 1.0]),
)
def test_bce_is_two_class_cross_entropy(x: float, y: float, eps: float) -> None:
    """BCE(x, y) = CE([0, x], [1 - y, y]), since softmax([0, x])[1] = sigmoid(x)."""
    v1, g1 = ce.binary_cross_entropy_with_logits(x, y, label_smoothing=eps, return_grad=True)
    v2, g2 = ce.cross_entropy([0.0, x], [1.0 - y, y], label_smoothing=eps, return_grad=True)
    _close(v1, v2, rtol=8 * EPS, atol=1e-300)
    # The gradient sigmoid(x) - y' cancels where sigmoid(x) ~ y' (soft labels near the
    # optimum): both forms are then accurate to a few eps absolute, not relative.
    gtol = 4 * EPS * max(float(ce.sigmoid(x)), float(ce.sigmoid(-x)))
    _close(g1, g2[1], rtol=8 * EPS, atol=gtol if 0.0 < y < 1.0 or eps else 1e-300)
    _close(g2[0], -g2[1], rtol=8 * EPS, atol=gtol)  # the gradient of [0, x] sums to 0
    if y in (0.0, 1.0):  # hard labels: the index form too
        v3 = ce.cross_entropy([0.0, x], int(y), label_smoothing=eps)
        _close(v1, v3, rtol=8 * EPS, atol=1e-300)


@settings(max_examples=80)
@given(st.floats(1e-6, 1.0 - 1e-6), st.floats(0.0, 1.0))
def test_bce_from_probs_is_two_class_from_probs(q: float, y: float) -> None:
    v1 = ce.binary_cross_entropy(q, y)
    v2 = ce.cross_entropy_from_probs([1.0 - q, q], [1.0 - y, y])
    # 1 - q is rounded in the categorical form, so allow its relative error q/(1-q) eps
    _close(v1, v2, rtol=1e-9, atol=1e-15)


# --------------------------------------------------------------------------- base


def _losses(x: Any, y: Any, w: Any, eps: float, red: str) -> dict[str, Any]:
    p = ce.softmax(x)
    s = 1 / (1 + np.exp(-np.clip(x, -30, 30)))
    yb = (np.arange(x.shape[1]) == y[:, None]).astype(float)
    kw: dict[str, Any] = {"reduction": red}
    return {
        "ce": lambda **k: ce.cross_entropy(x, y, weight=w, label_smoothing=eps, **kw, **k),
        "ce_soft": lambda **k: ce.cross_entropy(x, p, weight=w, label_smoothing=eps, **kw, **k),
        "from_probs": lambda **k: ce.cross_entropy_from_probs(p, y, weight=w, **kw, **k),
        "from_log_probs": lambda **k: ce.cross_entropy_from_log_probs(
            ce.log_softmax(x), y, weight=w, **kw, **k),
        "bce_logits": lambda **k: ce.binary_cross_entropy_with_logits(
            x, yb, label_smoothing=eps, **kw, **k),
        "bce": lambda **k: ce.binary_cross_entropy(s, yb, **kw, **k),
        "entropy": lambda **k: ce.entropy(p, **k),
        "kl": lambda **k: ce.kl_divergence(p, ce.softmax(x[::-1]), **k),
    }


@settings(max_examples=50)
@given(problem(), st.sampled_from([2, 10, 0.5, math.e]))
def test_base_is_nats_over_log_base(prob: Any, base: float) -> None:
    x, y, w, eps, red = prob
    for name, f in _losses(x, y, w, eps, red).items():
        v_n, g_n = f(return_grad=True)
        v_b, g_b = f(base=base, return_grad=True)
        np.testing.assert_allclose(v_b, np.asarray(v_n) / math.log(base), rtol=4 * EPS,
                                   atol=1e-300, strict=True, err_msg=name)
        np.testing.assert_allclose(g_b, np.asarray(g_n) / math.log(base), rtol=4 * EPS,
                                   atol=1e-300, strict=True, err_msg=name)
    if base == 2:  # bits: the unit of the article
        v = ce.cross_entropy(x, y, reduction=red, base=2)
        _close(v, np.asarray(ce.cross_entropy(x, y, reduction=red)) / LN2, rtol=4 * EPS)


# --------------------------------------------------------------------------- ignore_index


@settings(max_examples=50)
@given(problem(), st.data())
def test_ignore_index_equals_slicing(prob: Any, data: Any) -> None:
    x, y, w, eps, red = prob
    n = x.shape[0]
    drop = data.draw(hnp.arrays(np.bool_, (n,)))
    # what the ignored rows hold does not matter: fill them with garbage
    garbage = data.draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e308, 0.0]))
    xm = x.copy()
    xm[drop] = garbage
    ym = np.where(drop, -100, y)
    keep = ~drop
    for f in (ce.cross_entropy, ce.cross_entropy_from_log_probs, ce.cross_entropy_from_probs):
        if f is ce.cross_entropy:
            xin, xs = xm, x[keep]
        elif f is ce.cross_entropy_from_log_probs:
            xin = ce.log_softmax(x)
            xin[drop] = -np.log(x.shape[1])  # valid rows; garbage would be rejected
            xs = xin[keep]
        else:
            xin = ce.softmax(x)
            xin[drop] = 1.0 / x.shape[1]
            xs = xin[keep]
        kw: dict[str, Any] = {"weight": w, "label_smoothing": eps, "reduction": red}
        v1, g1 = f(xin, ym, return_grad=True, **kw)
        v2, g2 = f(xs, y[keep], return_grad=True, **kw)
        if red == "none":
            _close(v1[keep], v2, rtol=0)
            np.testing.assert_array_equal(v1[drop], 0.0)
        else:
            _close(v1, v2, rtol=4 * EPS, atol=1e-300)
        _close(g1[keep], g2, rtol=4 * EPS, atol=1e-300)
        np.testing.assert_array_equal(g1[drop], 0.0)


# --------------------------------------------------------------------------- axis


@st.composite
def nd_problem(draw: Any) -> Any:
    shape = draw(st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    x = draw(hnp.arrays(np.float64, shape, elements=finite))
    return x, axis


@settings(max_examples=50)
@given(nd_problem(), st.data())
def test_axis_equals_moving_the_axis(prob: Any, data: Any) -> None:
    """axis=k gives, bit for bit, what moving axis k last and using axis=-1 gives."""
    x, axis = prob
    xl = np.moveaxis(x, axis, -1)  # a view: the functions must not depend on the layout
    c = xl.shape[-1]

    def back(a: Any) -> Any:
        return np.moveaxis(a, -1, axis)

    eq = np.testing.assert_array_equal
    eq(ce.softmax(x, axis=axis), back(ce.softmax(xl)))
    eq(ce.log_softmax(x, axis=axis), back(ce.log_softmax(xl)))
    eq(ce.logsumexp(x, axis=axis), ce.logsumexp(xl))
    eq(ce.logsumexp(x, axis=axis, keepdims=True), np.expand_dims(ce.logsumexp(xl), axis))
    b = data.draw(hnp.arrays(np.float64, x.shape, elements=st.floats(-2.0, 2.0)))
    eq(ce.logsumexp(x, axis=axis, b=b, return_sign=True),
       ce.logsumexp(xl, b=np.moveaxis(b, axis, -1), return_sign=True))
    y = data.draw(hnp.arrays(np.int64, xl.shape[:-1], elements=st.integers(0, c - 1)))
    w = data.draw(hnp.arrays(np.float64, (c,), elements=st.floats(0.0, 3.0)))
    red = data.draw(st.sampled_from(REDUCTIONS))
    p = ce.softmax(x, axis=axis)
    pl = np.moveaxis(p, axis, -1)
    kw: dict[str, Any] = {"weight": w, "label_smoothing": 0.1, "reduction": red,
                          "return_grad": True}
    for f, xa, xb in (
        (ce.cross_entropy, x, xl),
        (ce.cross_entropy_from_probs, p, pl),
        (ce.cross_entropy_from_log_probs, ce.log_softmax(x, axis=axis),
         ce.log_softmax(xl)),
    ):
        v1, g1 = f(xa, y, axis=axis, **kw)
        v2, g2 = f(xb, y, **kw)
        eq(v1, v2)
        eq(g1, back(g2))
    # probability targets lie along the same axis as the prediction
    v1, g1 = ce.cross_entropy(x, p, axis=axis, **kw)
    v2, g2 = ce.cross_entropy(xl, pl, **kw)
    eq(v1, v2)
    eq(g1, back(g2))
    q = ce.softmax(-x, axis=axis)
    ql = np.moveaxis(q, axis, -1)
    for f2 in (ce.entropy,):
        eq(f2(p, axis=axis, return_grad=True)[0], f2(pl, return_grad=True)[0])
        eq(f2(p, axis=axis, return_grad=True)[1], back(f2(pl, return_grad=True)[1]))
    v1, g1 = ce.kl_divergence(p, q, axis=axis, return_grad=True)
    v2, g2 = ce.kl_divergence(pl, ql, return_grad=True)
    eq(v1, v2)
    eq(g1, back(g2))


# --------------------------------------------------------------------------- targets


@settings(max_examples=50)
@given(problem())
def test_index_targets_equal_one_hot_rows(prob: Any) -> None:
    x, y, w, eps, red = prob
    oh = ce.one_hot(y, x.shape[1])
    kw: dict[str, Any] = {"weight": w, "label_smoothing": eps, "reduction": red,
                          "return_grad": True}
    p = ce.softmax(x)
    for f, pred in ((ce.cross_entropy, x), (ce.cross_entropy_from_probs, p),
                    (ce.cross_entropy_from_log_probs, ce.log_softmax(x))):
        v1, g1 = f(pred, y, **kw)
        v2, g2 = f(pred, oh, **kw)
        _close(v1, v2, rtol=2 * EPS, atol=1e-300)
        _close(g1, g2, rtol=2 * EPS, atol=1e-300)
        # integer one-hot rows are accepted too and give the same
        v3, g3 = f(pred, oh.astype(np.int64), **kw)
        _close(v3, v2, rtol=0)
        _close(g3, g2, rtol=0)


@settings(max_examples=50)
@given(problem(), st.data())
def test_weighted_mean_divides_by_summed_weight_of_counted_targets(prob: Any, data: Any) -> None:
    x, y, w, eps, _ = prob
    n, c = x.shape
    w = np.ones(c) if w is None else w
    ign = data.draw(hnp.arrays(np.bool_, (n,)))
    ym = np.where(ign, -100, y)
    total, gsum = ce.cross_entropy(x, ym, weight=w, label_smoothing=eps, reduction="sum",
                                   return_grad=True)
    mean, gmean = ce.cross_entropy(x, ym, weight=w, label_smoothing=eps, return_grad=True)
    wsum = float(np.sum(w[y][~ign]))  # the weights of the counted (unsmoothed) targets
    if wsum == 0.0:  # documented: a mean over zero counted targets is 0 with zero gradient
        assert mean == 0.0
        np.testing.assert_array_equal(gmean, 0.0)
    else:
        with np.errstate(over="ignore"):  # a subnormal wsum: the true mean may overflow
            want, gwant = total / wsum, gsum / wsum
        _close(mean, want, rtol=4 * EPS, atol=1e-300)
        _close(gmean, gwant, rtol=4 * EPS, atol=1e-300)
    # probability targets: the weight of a row is sum_c w_c t_c (torch divides by N instead)
    t = _soft_rows(data.draw, (n, c))
    total = ce.cross_entropy(x, t, weight=w, label_smoothing=eps, reduction="sum")
    mean = ce.cross_entropy(x, t, weight=w, label_smoothing=eps)
    wsum = float(np.sum(t * w))
    if wsum > 0.0:
        with np.errstate(over="ignore"):
            want = total / wsum
        _close(mean, want, rtol=1e-13, atol=1e-300)


@settings(max_examples=60)
@given(problem())
def test_reductions_agree(prob: Any) -> None:
    """'sum' is the sum of 'none'; 'none' gradients are the per-row gradients of 'sum'."""
    x, y, w, eps, _ = prob
    kw: dict[str, Any] = {"weight": w, "label_smoothing": eps, "return_grad": True}
    vn, gn = ce.cross_entropy(x, y, reduction="none", **kw)
    vs, gs = ce.cross_entropy(x, y, reduction="sum", **kw)
    _close(vs, np.sum(vn), rtol=1e-14, atol=1e-300)
    _close(gs, gn, rtol=0)
    for i in range(x.shape[0]):  # row i of 'none' is the gradient of loss i alone
        vi, gi = ce.cross_entropy(x[i:i + 1], y[i:i + 1], reduction="sum", **kw)
        _close(vn[i], vi, rtol=0)
        _close(gn[i], gi[0], rtol=0)


# --------------------------------------------------------------------------- finite differences


def _fd(f: Any, x: Any, rel: float, floor: float) -> Any:
    """Central differences of the scalar f at x (float64), step rel * max(|x_i|, floor)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        h = rel * max(abs(float(x[i])), floor)
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (xp[i] - xm[i])
    return g


def _check_fd(f: Any, x: Any, grad: Any, probs: bool = False) -> None:
    # logits: steps of 1e-6 (at least); probabilities: steps of 1e-4 q, so that q +- h > 0
    fd = _fd(f, x, 1e-4, 0.0) if probs else _fd(f, x, 1e-6, 1.0)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


@settings(max_examples=25)
@given(problem())
def test_gradients_match_finite_differences(prob: Any) -> None:
    x, y, w, eps, red = prob
    x = np.clip(x, -10, 10)
    # probabilities >= e^-6 / C, so that the central difference of a sum of O(1) terms
    # with steps of 1e-4 q is not lost in rounding
    p = ce.softmax(np.clip(x, -3, 3))
    t = ce.softmax(np.clip(x, -3, 3)[::-1] * 0.5)
    rd = "sum" if red == "none" else red  # a scalar to differentiate

    def check(f: Any, pred: Any, **kw: Any) -> None:
        _, g = f(pred, return_grad=True, **kw)
        _check_fd(lambda z: float(f(z, **kw)), pred, g)

    check(lambda z, **k: ce.cross_entropy(z, y, **k), x, weight=w, label_smoothing=eps,
          reduction=rd)
    check(lambda z, **k: ce.cross_entropy(z, t, **k), x, weight=w, label_smoothing=eps,
          reduction=rd)
    yb = (np.arange(x.shape[1]) == y[:, None]) * 0.8 + 0.1
    check(lambda z, **k: ce.binary_cross_entropy_with_logits(z, yb, **k), x,
          pos_weight=np.arange(1.0, x.shape[1] + 1), reduction=rd, label_smoothing=eps)
    s = 0.05 + 0.9 / (1 + np.exp(-x))  # probabilities away from 0 and 1
    _, g = ce.binary_cross_entropy(s, yb, reduction=rd, return_grad=True)
    _check_fd(lambda z: float(ce.binary_cross_entropy(z, yb, reduction=rd)), s, g, probs=True)
    # Functions of probability rows reject rows moved off the simplex by h (the tolerance is
    # 16 eps), so their gradients are checked against differences of the same formula
    # written directly in NumPy, with q free.
    _, g = ce.entropy(p, return_grad=True)
    _check_fd(lambda z: float(np.sum(-z * np.log(z))), p, g, probs=True)
    _, g = ce.kl_divergence(t, p, return_grad=True)
    _check_fd(lambda z: float(np.sum(t * np.log(t / z))), p, g, probs=True)
    _, g = ce.cross_entropy_from_probs(p, y, weight=w, reduction=rd, return_grad=True)
    wy = np.ones(x.shape[1]) if w is None else w
    a = (np.arange(x.shape[1]) == y[:, None]) * wy
    den = float(np.sum(wy[y])) if rd == "mean" else 1.0
    if den > 0:
        _check_fd(lambda z: float(np.sum(-a * np.log(z)) / den), p, g, probs=True)


@settings(max_examples=80)
@given(st.floats(-700.0, 700.0))
def test_sigmoid_gradients_match_finite_differences(x: float) -> None:
    h = 1e-6 * max(1.0, abs(x))
    for f in (ce.sigmoid, ce.log_sigmoid):
        _, d = f(x, return_grad=True)
        if f is ce.sigmoid and x > 0:
            # sigmoid(x) = 1 - sigmoid(-x): difference the small side, where the finite
            # difference does not cancel (near 1 it loses eps / h of absolute accuracy,
            # 3e-4 relative at x = 17)
            fd = (float(f(-x + h)) - float(f(-x - h))) / (2 * h)
        else:
            fd = (float(f(x + h)) - float(f(x - h))) / (2 * h)
        assert d == pytest.approx(fd, rel=1e-5, abs=1e-12)


@settings(max_examples=80)
@given(logits_2d())
def test_sigmoid_identities(x: Any) -> None:
    """sigmoid(x) + sigmoid(-x) = 1, log_sigmoid(x) = log(sigmoid(x)), sigmoid = softmax([0, x])."""
    s, sm = ce.sigmoid(x), ce.sigmoid(-x)
    _close(s + sm, np.ones_like(x), rtol=2 * EPS)
    _close(ce.log_sigmoid(x), np.log(s), rtol=4 * EPS, atol=4 * EPS)
    two = np.stack([np.zeros_like(x), x], axis=-1)
    _close(ce.softmax(two)[..., 1], s, rtol=4 * EPS, atol=1e-300)


def test_mean_gradient_with_a_subnormal_summed_weight() -> None:
    """Regression (found by hypothesis in CI): weights of 2.2e-311 made scale / sum(w)
    overflow to inf, so the mean's gradient came out [-inf, inf] instead of its true value
    w (p - onehot) / w = [-0.5, 0.5]."""
    w = np.array([2.22507386e-311, 2.22507386e-311])
    for backend in ("numpy", "numba"):
        with ce.use_backend(backend):
            _, g = ce.cross_entropy(np.zeros((1, 2)), np.array([0]), weight=w, return_grad=True)
        _close(g, np.array([[-0.5, 0.5]]), rtol=4 * EPS, atol=0)
