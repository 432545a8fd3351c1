"""crossentropy.jax.optax: optax's names, arguments and semantics, exact values.

Three parts:

* the cases optax's own tests check for these losses -- their inputs and expected values,
  taken as facts from optax 0.2.8's ``optax/losses/_classification_test.py`` and
  ``optax/losses/_smoothing_test.py`` (the test code here is written anew);
* the same calls against optax itself on random data (where optax is accurate the two
  agree to float32 rounding) and the invariances optax tests (masking = slicing, ``axis=k``
  = moving the axis, tuple axes);
* every documented difference (docs/jax.md, "optax migration"), each checked against
  optax's own (different) answer and against the exact value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402
import mpmath  # noqa: E402

import crossentropy as ce  # noqa: E402
from crossentropy.jax import optax as losses  # noqa: E402

OPTAX = optax.losses


# --------------------------------------------------------------------------- optax's cases

YS = np.array([[10.0, 1.0, -2.0], [1.0, 4.0, 0.2]], dtype=np.float32)
TS = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
EXP = np.array([9.00013, 3.0696733], dtype=np.float32)


def test_softmax_cross_entropy_cases() -> None:
    f = jax.jit(losses.softmax_cross_entropy)
    np.testing.assert_allclose(f(YS[0], TS[0]), EXP[0], atol=1e-4)
    np.testing.assert_allclose(f(YS, TS), EXP, atol=1e-4)
    # per-logit mask: rows with every logit masked give 0
    where = np.array([[1, 0, 0], [0, 0, 0]]).astype(bool)
    out = losses.softmax_cross_entropy(YS, TS, where=where)
    np.testing.assert_array_equal(jnp.where(jnp.any(where, -1), 0.0, out), 0)
    # a row mask: the gradient stays finite
    g = jax.grad(lambda x: jnp.sum(losses.softmax_cross_entropy(
        x, TS, where=np.array([True, False]))))(YS)
    assert np.all(np.isfinite(g))


def test_safe_softmax_cross_entropy_cases() -> None:
    ys = np.array([[10.0, 1.0, -2.0], [1.0, 4.0, 0.2], [-np.inf, 0.0, 0.0],
                   [-np.inf, 0.0, 0.0], [-np.inf, 0.0, -np.inf]], dtype=np.float32)
    ts = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.4, 0.3, 0.3],
                   [0.0, 1.0, 0.0]], dtype=np.float32)
    exp = np.array([9.00013, 3.0696733, 0.693147, np.inf, 0.0], dtype=np.float32)
    np.testing.assert_allclose(jax.jit(losses.safe_softmax_cross_entropy)(ys, ts), exp,
                               atol=1e-4)
    # against the plain implementation where there is no -inf: value and gradient equal
    v1, g1 = jax.value_and_grad(losses.softmax_cross_entropy)(ys[0], ts[0])
    v2, g2 = jax.value_and_grad(losses.safe_softmax_cross_entropy)(ys[0], ts[0])
    np.testing.assert_allclose(v1, v2, atol=1e-4)
    np.testing.assert_allclose(g1, g2, atol=1e-4)


def test_integer_labels_cases() -> None:
    ts = np.array([1, 0], dtype=np.int32)
    f = jax.jit(losses.softmax_cross_entropy_with_integer_labels)
    dense = losses.softmax_cross_entropy(YS, jax.nn.one_hot(ts, 3))
    np.testing.assert_allclose(f(YS, ts), dense, rtol=1e-6)
    np.testing.assert_allclose(f(YS[0], ts[0]), dense[0], rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(losses.softmax_cross_entropy_with_integer_labels(
        x, ts, where=np.array([True, False]))))(YS)
    assert np.all(np.isfinite(g))
    where = np.array([[1, 0, 0], [0, 0, 0]]).astype(bool)
    out = losses.softmax_cross_entropy_with_integer_labels(YS, ts, where=where)
    np.testing.assert_array_equal(jnp.where(jnp.any(where, -1), 0.0, out), 0)


@pytest.mark.parametrize(("preds", "labels", "expected"), [
    ([-1e09, -1e-09], [1.0, 0.0], 5e08),
    ([-1e09, -1e-09], [0.0, 1.0], 0.3465736),
    ([1e09, 1e-09], [1.0, 0.0], 0.3465736),
    ([1e09, 1e-09], [0.0, 1.0], 5e08),
    ([-1e09, 1e-09], [1.0, 0.0], 5e08),
    ([-1e09, 1e-09], [0.0, 1.0], 0.3465736),
    ([1e09, -1e-09], [1.0, 0.0], 0.3465736),
    ([1e09, -1e-09], [0.0, 1.0], 5e08),
    ([0.0, 0.0], [1.0, 0.0], 0.6931472),
    ([0.0, 0.0], [0.0, 1.0], 0.6931472),
])
def test_sigmoid_binary_cross_entropy_cases(preds: list[float], labels: list[float],
                                            expected: float) -> None:
    tested = jnp.mean(losses.sigmoid_binary_cross_entropy(np.array(preds), np.array(labels)))
    np.testing.assert_allclose(tested, expected, rtol=1e-6, atol=1e-6)


def test_kl_divergence_cases() -> None:
    log_ps = np.array([[-2.9957, -3.5066, -3.9120, -1.2040, -0.6931, -2.3026],
                       [-1.6094, -1.6094, -1.6094, -2.3026, -1.8971, -1.8971]])
    qs = np.array([[0.2, 0.2, 0.2, 0.1, 0.15, 0.15], [0.05, 0.03, 0.02, 0.3, 0.5, 0.0]])
    np.testing.assert_allclose(jax.jit(losses.kl_divergence)(log_ps, qs),
                               [0.8875577, 0.7592807], atol=1e-4)
    np.testing.assert_allclose(losses.kl_divergence(log_ps[0], qs[0]), 0.8875577, atol=1e-4)
    log_ts = np.array([[-1.6094, -1.6094, -1.6094, -2.3026, -1.8971, -1.8971],
                       [-2.9957, -3.5066, -3.9120, -1.2040, -0.6931, -2.3026]])
    np.testing.assert_allclose(jax.jit(losses.kl_divergence_with_log_targets)(log_ps, log_ts),
                               [0.8875625, 0.7187435584901326], atol=1e-4)


def test_smooth_labels_cases() -> None:
    ts = TS
    f = jax.jit(losses.smooth_labels)
    for alpha, want in ((0.0, ts), (0.1, 0.9 * ts + 0.1 / 3), (1.0, np.ones_like(ts) / 3)):
        np.testing.assert_allclose(f(ts, alpha), want, atol=1e-4)
        np.testing.assert_allclose(f(ts[0], alpha), want[0], atol=1e-4)


# --------------------------------------------------------------------------- against optax


def test_random_data_against_optax_and_invariances() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 6)).astype(np.float32)
    t = rng.dirichlet(np.ones(6), size=(4, 5)).astype(np.float32)
    y = rng.integers(0, 6, size=(4, 5))
    lq = np.asarray(jax.nn.log_softmax(x))
    cases: list[tuple[str, tuple[Any, ...]]] = [
        ("softmax_cross_entropy", (x, t)),
        ("softmax_cross_entropy_with_integer_labels", (x, y)),
        ("sigmoid_binary_cross_entropy", (x, (t > 0.2).astype(np.float32))),
        ("kl_divergence", (lq, t)),
        ("kl_divergence_with_log_targets", (lq, np.log(t))),
    ]
    for name, args in cases:
        np.testing.assert_allclose(getattr(losses, name)(*args), getattr(OPTAX, name)(*args),
                                   rtol=2e-5, atol=1e-6, err_msg=name)
    # axis=k equals moving the axis there
    for axis in (1,):
        moved = np.moveaxis(x, -1, axis)
        np.testing.assert_allclose(
            losses.softmax_cross_entropy(moved, np.moveaxis(t, -1, axis), axis=axis),
            losses.softmax_cross_entropy(x, t), rtol=1e-6)
        np.testing.assert_allclose(
            losses.softmax_cross_entropy_with_integer_labels(moved, y, axis=axis),
            losses.softmax_cross_entropy_with_integer_labels(x, y), rtol=1e-6)
    # masking equals slicing
    mask = np.array([True, False, True, True, False, True])
    full = np.broadcast_to(mask, x.shape)
    np.testing.assert_allclose(losses.softmax_cross_entropy(x, t, where=full),
                               losses.softmax_cross_entropy(x[..., mask], t[..., mask]),
                               rtol=1e-6)
    np.testing.assert_allclose(losses.kl_divergence(lq, t, where=mask),
                               losses.kl_divergence(lq[..., mask], t[..., mask]), rtol=1e-6)


@pytest.mark.parametrize("axis", [(1, 3), (3, 2), (-3, -1), (0, 1, 3)])
def test_tuple_axes_as_optax(axis: tuple[int, ...]) -> None:
    """A label is a flat index into the axes, in the order given (optax's test_axes)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    rows = tuple(d for i, d in enumerate(x.shape) if i not in {a % 4 for a in axis})
    C = x.size // int(np.prod(rows))
    y = rng.integers(0, C, size=rows)
    ours = losses.softmax_cross_entropy_with_integer_labels(x, y, axis)
    theirs = OPTAX.softmax_cross_entropy_with_integer_labels(x, y, axis)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


# --------------------------------------------------------------------------- differences


def test_differences_from_optax() -> None:
    """docs/jax.md's table, row by row: optax's answer, then the exact one."""
    with jax.enable_x64(True):
        # 1. a confident row: -log softmax = log1p(e^-40) = 4.248354255291589e-18 (mpmath)
        x = jnp.array([[0.0, -40.0]])
        assert float(OPTAX.softmax_cross_entropy_with_integer_labels(x, jnp.array([0]))[0]) \
            == 0.0
        assert float(losses.softmax_cross_entropy_with_integer_labels(
            x, jnp.array([0]))[0]) == 4.248354255291589e-18
        # 2. a logit of -inf with label 0: optax NaN, here the term is 0
        x2, t2 = jnp.array([[-jnp.inf, 0.0]]), jnp.array([[0.0, 1.0]])
        assert np.isnan(float(OPTAX.softmax_cross_entropy(x2, t2)[0]))
        assert float(losses.softmax_cross_entropy(x2, t2)[0]) == 0.0
        # 3. labels out of range: optax NaN above, the last class for -1; here NaN both
        x3 = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
        assert not np.isnan(float(OPTAX.softmax_cross_entropy_with_integer_labels(
            x3, jnp.array([5, -1]))[1]))
        assert np.all(np.isnan(np.asarray(losses.softmax_cross_entropy_with_integer_labels(
            x3, jnp.array([5, -1])))))
        # 4. the label's class masked out: optax lse(kept) - x_y = 2.313..., here 0 (no mass)
        m = jnp.array([[False, True, True]])
        assert float(OPTAX.softmax_cross_entropy_with_integer_labels(
            x3[:1], jnp.array([0]), where=m)[0]) == pytest.approx(2.3132616875182228)
        assert float(losses.softmax_cross_entropy_with_integer_labels(
            x3[:1], jnp.array([0]), where=m)[0]) == 0.0
        # 5. kl_divergence's gradient with respect to a zero target: optax NaN, here -inf
        lp, t = jnp.log(jnp.array([0.5, 0.5])), jnp.array([0.0, 1.0])
        assert np.isnan(float(jax.grad(lambda v: OPTAX.kl_divergence(lp, v))(t)[0]))
        assert float(jax.grad(lambda v: losses.kl_divergence(lp, v))(t)[0]) == -np.inf
        # 6. a log-target of -inf: optax NaN, here 0 log 0 = 0; log 2 = 0.6931471805599453
        lt = jnp.log(jnp.array([0.0, 1.0]))
        assert np.isnan(float(OPTAX.kl_divergence_with_log_targets(lp, lt)))
        assert float(losses.kl_divergence_with_log_targets(lp, lt)) == 0.6931471805599453
    # 7. float32, nearly equal distributions: optax's KL has no correct digit
    q = jnp.array([0.3, 0.3, 0.4], jnp.float32)
    p = q * (1.0 + jnp.array([1e-4, -1e-4, 0.0], jnp.float32))
    lq = jnp.log(q)
    with mpmath.workdps(50):
        exact = float(mpmath.fsum(mpmath.mpf(float(a)) * (mpmath.log(mpmath.mpf(float(a)))
                                                          - mpmath.mpf(float(b)))
                                  for a, b in zip(np.asarray(p), np.asarray(lq), strict=True)))
    assert abs(float(OPTAX.kl_divergence(lq, p)) / exact - 1) > 0.3
    # here the terms are exact; their sum of both signs cancels 1000-fold: a few float32
    # ulp of the largest term (as for the NumPy core), 1e-3 of the result
    assert abs(float(losses.kl_divergence(lq, p)) / exact - 1) < 3e-3
    # 8. float32 log-softmax near 0 (jax.nn's x - logsumexp(x) rounds the log of 1 + tiny)
    x8 = jnp.array([[0.0, -20.0]], jnp.float32)
    assert float(OPTAX.softmax_cross_entropy_with_integer_labels(x8, jnp.array([0]))[0]) \
        == 0.0
    got = float(losses.softmax_cross_entropy_with_integer_labels(x8, jnp.array([0]))[0])
    # mpmath: log1p(exp(-20)) = 2.0611536181902035e-09
    assert got == float(np.float32(2.0611536181902035e-09))
    # the NumPy core agrees on every exact value above
    assert ce.cross_entropy([0.0, -40.0], 0) == 4.248354255291589e-18
