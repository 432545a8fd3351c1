"""What users of SciPy, optax, Keras, scikit-learn and PyTorch reach for: axis tuples, where=
masks, per-sample weights, softplus, logit, nll_loss and the probability-row tolerance.

Expected values come from the peers themselves (scipy.special, scikit-learn, torch in
float64) or from mpmath (snippets kept), never from the code under test.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import scipy.special as sp

import crossentropy as ce

mpmath.mp.dps = 50

RNG = np.random.default_rng(20261201)


@pytest.fixture(params=["numpy", "numba"])
def backend(request: pytest.FixtureRequest):
    with ce.use_backend(request.param):
        yield request.param


# --------------------------------------------------------------------------- axis tuples


@pytest.mark.parametrize("axis", [(0, 2), (2, 0), (1,), (0, 1, 2), None, -1, (-1, 0)])
def test_axis_tuples_match_scipy(axis, backend):
    x = RNG.normal(scale=5.0, size=(3, 4, 5))
    for fn, ref in ((ce.softmax, sp.softmax), (ce.log_softmax, sp.log_softmax)):
        got, want = fn(x, axis=axis), ref(x, axis=axis)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    for keepdims in (False, True):
        got = ce.logsumexp(x, axis=axis, keepdims=keepdims)
        want = sp.logsumexp(x, axis=axis, keepdims=keepdims)
        assert np.shape(got) == np.shape(want)
        np.testing.assert_allclose(got, want, rtol=1e-14)


def test_weighted_logsumexp_over_an_axis_tuple_matches_scipy():
    x = RNG.normal(size=(3, 4, 5))
    b = RNG.uniform(0.1, 2.0, size=(3, 4, 5))
    np.testing.assert_allclose(ce.logsumexp(x, axis=(0, 2), b=b),
                               sp.logsumexp(x, axis=(0, 2), b=b), rtol=1e-14)


@pytest.mark.parametrize("axis, match", [((), "names no axis"), ((0, 0), "repeats"),
                                         ((0, 5), "out of bounds")])
def test_bad_axis_tuples(axis, match):
    with pytest.raises(ValueError, match=match):
        ce.softmax(np.zeros((2, 3)), axis=axis)


# --------------------------------------------------------------------------- where


def test_where_equals_slicing(backend):
    x = RNG.normal(scale=3.0, size=(6, 7))
    keep = np.ones(7, dtype=bool)
    keep[[1, 4]] = False
    p = ce.softmax(x, where=keep)
    np.testing.assert_allclose(p[:, keep], sp.softmax(x[:, keep], axis=-1), rtol=1e-14)
    assert np.all(p[:, ~keep] == 0.0)
    lp = ce.log_softmax(x, where=keep)
    np.testing.assert_allclose(lp[:, keep], sp.log_softmax(x[:, keep], axis=-1), rtol=1e-13)
    assert np.all(lp[:, ~keep] == -np.inf)
    np.testing.assert_allclose(ce.logsumexp(x, where=keep), sp.logsumexp(x[:, keep], axis=-1),
                               rtol=1e-14)


def test_cross_entropy_where_equals_slicing_value_and_gradient(backend):
    x = RNG.normal(scale=3.0, size=(6, 7))
    keep = np.ones(7, dtype=bool)
    keep[[1, 4]] = False
    y_full = np.array([0, 2, 3, 5, 6, 0])
    y_small = np.searchsorted(np.flatnonzero(keep), y_full)
    loss, g = ce.cross_entropy(x, y_full, where=keep, reduction="none", return_grad=True)
    # the loss of the sliced problem, written with scipy: -log_softmax at the target
    want = -sp.log_softmax(x[:, keep], axis=-1)[np.arange(6), y_small]
    np.testing.assert_allclose(loss, want, rtol=1e-13)
    want_g = sp.softmax(x[:, keep], axis=-1)
    want_g[np.arange(6), y_small] -= 1.0
    np.testing.assert_allclose(g[:, keep], want_g, rtol=1e-12, atol=1e-16)
    assert np.all(g[:, ~keep] == 0.0)


def test_where_must_be_boolean_and_broadcastable():
    with pytest.raises(TypeError, match="where must be a boolean"):
        ce.softmax([1.0, 2.0], where=[1, 0])
    with pytest.raises(ValueError, match="where with shape"):
        ce.cross_entropy(np.zeros((2, 3)), [0, 1], where=np.ones(4, dtype=bool))


# --------------------------------------------------------------------------- sample weights


def test_sample_weight_matches_scikit_learn(backend):
    from sklearn.metrics import log_loss

    x = RNG.normal(scale=2.0, size=(40, 5))
    y = RNG.integers(0, 5, size=40)
    sw = RNG.uniform(0.0, 3.0, size=40)
    p = sp.softmax(x, axis=-1)
    want = log_loss(y, p, sample_weight=sw, labels=range(5))
    assert math.isclose(float(ce.cross_entropy(x, y, sample_weight=sw)), want, rel_tol=1e-12)
    assert math.isclose(float(ce.cross_entropy_from_probs(p, y, sample_weight=sw)), want,
                        rel_tol=1e-12)


def test_sample_weight_gradient_is_the_weighted_mean_gradient(backend):
    x = RNG.normal(size=(9, 4))
    y = RNG.integers(0, 4, size=9)
    sw = RNG.uniform(0.5, 2.0, size=9)
    _, g = ce.cross_entropy(x, y, sample_weight=sw, return_grad=True)
    want = sp.softmax(x, axis=-1)
    want[np.arange(9), y] -= 1.0
    want *= (sw / sw.sum())[:, None]
    np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-17)


def test_sample_weight_keras_sum_over_batch_size():
    """Keras' default divides the weighted sum by the batch size: reduction='sum' / N."""
    x = RNG.normal(size=(8, 3))
    y = RNG.integers(0, 3, size=8)
    sw = RNG.uniform(0.0, 2.0, size=8)
    per = -sp.log_softmax(x, axis=-1)[np.arange(8), y]
    got = ce.cross_entropy(x, y, sample_weight=sw, reduction="sum", normalizer=8)
    assert math.isclose(float(got), float(np.sum(per * sw) / 8), rel_tol=1e-13)


@pytest.mark.parametrize("sw, exc, match", [
    ([1.0, -1.0], ValueError, "sample_weight must be finite and >= 0"),
    ([1.0, np.nan], ValueError, "sample_weight"),
    ([1.0, 1.0, 1.0], ValueError, "sample_weight with shape"),
    (["a", "b"], TypeError, "sample_weight"),
])
def test_bad_sample_weight(sw, exc, match):
    with pytest.raises(exc, match=match):
        ce.cross_entropy(np.zeros((2, 3)), [0, 1], sample_weight=sw)


# --------------------------------------------------------------------------- nll_loss


def test_nll_loss_matches_torch():
    torch = pytest.importorskip("torch")
    x = RNG.normal(size=(7, 5))
    lp = sp.log_softmax(x, axis=-1)
    y = np.array([0, 4, -100, 2, 2, 1, 3])
    w = RNG.uniform(0.2, 3.0, size=5)
    for red in ("mean", "sum", "none"):
        got, g = ce.nll_loss(lp, y, weight=w, reduction=red, return_grad=True)
        tl = torch.tensor(lp, requires_grad=True)
        want = torch.nn.functional.nll_loss(tl, torch.tensor(y), weight=torch.tensor(w),
                                            reduction=red)
        want.sum().backward()
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-14)
        np.testing.assert_allclose(g, tl.grad.numpy(), rtol=1e-14)


def test_nll_loss_wants_class_indices():
    with pytest.raises(ValueError, match="nll_loss takes class indices"):
        ce.nll_loss(np.log(np.full((2, 2), 0.5)), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match=r"target\[1\] = 3 is out of range"):
        ce.nll_loss(np.zeros((2, 3)), [0, 3])


# --------------------------------------------------------------------------- softplus, logit


def test_softplus_against_mpmath():
    xs = np.array([-745.0, -40.0, -1e-300, 0.0, 1e-20, 0.5, 30.0, 710.0, 1e308])
    got = ce.softplus(xs)
    for x, v in zip(xs, got, strict=True):
        want = float(mpmath.log1p(mpmath.exp(mpmath.mpf(float(x)))))  # log(1 + e^x)
        assert v == pytest.approx(want, rel=4e-16, abs=0.0), x
    _, d = ce.softplus(np.array([-3.0, 2.0]), return_grad=True)
    np.testing.assert_allclose(d, sp.expit([-3.0, 2.0]), rtol=1e-15)
    assert ce.softplus(np.float32(-40.0)).dtype == np.float32


def test_logit_against_mpmath_and_scipy():
    ps = np.array([1e-300, 1e-10, 0.25, 0.5 - 1e-12, 0.5, 0.6, 0.999999, 1.0 - 2**-53])
    got = ce.logit(ps)
    for p, v in zip(ps, got, strict=True):
        mp = mpmath.mpf(float(p))
        want = float(mpmath.log(mp / (1 - mp)))  # log(p / (1 - p))
        assert v == pytest.approx(want, rel=4e-16, abs=1e-300), p
    np.testing.assert_allclose(ce.logit([0.1, 0.9]), sp.logit([0.1, 0.9]), rtol=1e-15)
    assert ce.logit(0.0) == -np.inf and ce.logit(1.0) == np.inf
    np.testing.assert_allclose(ce.sigmoid(ce.logit([0.3, 0.7])), [0.3, 0.7], rtol=1e-15)
    with pytest.raises(ValueError, match=r"p must lie in \[0, 1\]"):
        ce.logit([0.5, 1.5])


# --------------------------------------------------------------------------- tolerance


def test_float32_probability_rows_cast_to_float64_are_accepted():
    x = RNG.normal(scale=4.0, size=(50, 300)).astype(np.float32)
    p32 = ce.softmax(x)  # the library's own float32 softmax
    p64 = p32.astype(np.float64)
    assert np.abs(p64.sum(-1) - 1.0).max() > 300 * np.finfo(np.float64).eps  # would fail
    y = RNG.integers(0, 300, size=50)
    want = -np.log(p64[np.arange(50), y]).mean()
    assert math.isclose(float(ce.cross_entropy_from_probs(p64, y)), want, rel_tol=1e-14)
    # as a soft target of a float64 prediction too
    ce.cross_entropy(x.astype(np.float64), p64)


def test_prob_tol_keyword():
    q = np.array([[0.5, 0.5 + 1e-6]])
    with pytest.raises(ValueError, match="must sum to 1"):
        ce.cross_entropy_from_probs(q, [0])
    assert math.isclose(float(ce.cross_entropy_from_probs(q, [0], prob_tol=1e-5)),
                        math.log(2.0), rel_tol=1e-15)
    with pytest.raises(ValueError, match="must sum to 1"):
        ce.entropy(q, prob_tol=1e-7)
    ce.kl_divergence(q, q, prob_tol=1e-5)
    for bad, exc in ((-1.0, ValueError), (math.nan, ValueError), ("1", TypeError)):
        with pytest.raises(exc, match="prob_tol"):
            ce.cross_entropy_from_probs(q, [0], prob_tol=bad)


# --------------------------------------------------------------------------- z-loss, softcap


def test_numpy_z_loss_and_softcap_against_mpmath():
    x = np.array([[30.0, -2.0, 5.0], [0.3, 0.2, -40.0]])
    y = np.array([0, 2])
    cap, zl = 12.0, 1e-3
    got = ce.cross_entropy(x, y, softcap=cap, z_loss=zl, reduction="none")
    for i in range(2):
        z = [cap * mpmath.tanh(mpmath.mpf(float(v)) / cap) for v in x[i]]
        lse = mpmath.log(sum(mpmath.exp(t) for t in z))
        want = (lse - z[y[i]]) + zl * lse**2  # -log softmax(z)_y + zeta lse^2
        assert got[i] == pytest.approx(float(want), rel=4e-16)


# --------------------------------------------------------------------------- out= streaming


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_out_buffers_are_streamed_with_the_same_bits(dtype):
    """A caller's out= / grad_out= of 32 MiB or more is written with non-temporal stores
    (crossentropy._cpu); the result is bitwise that of the ordinary path."""
    from crossentropy._cpu import _kernels

    rows = (_kernels._STREAM_MIN_BYTES // np.dtype(dtype).itemsize) // 1000 + 3
    x = RNG.normal(scale=3.0, size=(rows, 1000)).astype(dtype)
    y = RNG.integers(0, 1000, size=rows)
    with ce.use_backend("numba"):
        for fn in (ce.softmax, ce.log_softmax):
            out = np.empty_like(x)
            assert out.nbytes >= _kernels._STREAM_MIN_BYTES
            assert fn(x, out=out) is out
            np.testing.assert_array_equal(out, fn(x))  # fresh array: ordinary stores
        g = np.empty_like(x)
        loss, g2 = ce.cross_entropy(x, y, return_grad=True, grad_out=g)
        want_loss, want_g = ce.cross_entropy(x, y, return_grad=True)
        assert g2 is g and loss == want_loss
        np.testing.assert_array_equal(g, want_g)
