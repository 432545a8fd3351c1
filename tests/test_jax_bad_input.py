"""crossentropy.jax: bad input raises a clear TypeError or ValueError naming the argument;
what jit cannot check by value is defined (NaN) and checkable with checkify."""

from __future__ import annotations

import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
from jax.experimental import checkify  # noqa: E402

import crossentropy.jax as cej  # noqa: E402

X = jnp.zeros((2, 3))


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: cej.cross_entropy(jnp.zeros((2, 3), jnp.int32), jnp.array([0, 1])), TypeError,
     "logits must be a floating-point array"),
    (lambda: cej.cross_entropy(jnp.zeros((2, 3), bool), jnp.array([0, 1])), TypeError,
     "logits must be real numbers, not booleans"),
    (lambda: cej.cross_entropy(X, jnp.array([0.0, 1.0])), TypeError,
     "target holds class indices, so it must be an integer array"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1, 2])), ValueError,
     r"shape without the class axis, \(2,\); got \(3,\)"),
    (lambda: cej.cross_entropy(X, jnp.zeros((2, 4))), ValueError,
     r"must equal the prediction's shape \(2, 3\)"),
    (lambda: cej.cross_entropy(X, jnp.zeros((2, 3, 1))), ValueError,
     "target must be class indices with 1 dimension"),
    (lambda: cej.cross_entropy(jnp.zeros(()), jnp.array(0)), ValueError,
     "logits must have a class axis"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), axis=2), ValueError,
     r"axis=2 is out of range"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), weight=jnp.ones(4)), ValueError,
     r"weight must be a 1-d array with one entry per class \(3\)"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), reduction="avg"), ValueError,
     "reduction must be one of"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), label_smoothing=1.5), ValueError,
     "label_smoothing"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), z_loss=-1.0), ValueError, "z_loss"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), softcap=0.0), ValueError, "softcap"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), base=1), ValueError, "base"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), normalizer=jnp.ones(2)), ValueError,
     "normalizer must be a number or a 0-d array"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), reduction="none", normalizer=2.0),
     ValueError, "normalizer divides a summed loss"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), where=jnp.ones((2, 3))), TypeError,
     "where must be a boolean array"),
    (lambda: cej.cross_entropy(X, jnp.array([0, 1]), where=jnp.ones((3, 3), bool)),
     ValueError, "where with shape"),
    # host data is checked by value, as in the NumPy API, naming the first bad position
    (lambda: cej.cross_entropy(X, np.array([0, 7])), ValueError,
     r"target\[1\] = 7 is out of range \[0, 3\)"),
    (lambda: cej.cross_entropy(X, np.array([[0.5, 0.6, 0.0], [1.0, 0.0, 0.0]])), ValueError,
     "rows of target must sum to 1"),
    (lambda: cej.binary_cross_entropy_with_logits(X, jnp.zeros((2, 4))), ValueError,
     r"target must have the shape of logits \(2, 3\)"),
    (lambda: cej.binary_cross_entropy_with_logits(X, np.full((2, 3), 1.5)), ValueError,
     "target"),
    (lambda: cej.softmax(jnp.zeros(3), axis=(0, 0)), ValueError, "repeats an axis"),
    (lambda: cej.softmax(jnp.zeros(3, jnp.complex64)),
     TypeError, "x must be a floating-point array"),
    (lambda: cej.logsumexp(jnp.zeros((2, 3)), b=jnp.ones((4,))), ValueError,
     r"b with shape \(4,\) cannot be broadcast"),
    (lambda: cej.kl_divergence(jnp.ones(2) / 2, jnp.ones(3) / 3), ValueError,
     "p and q must have the same shape"),
    (lambda: cej.linear_cross_entropy(jnp.zeros((2, 4)), jnp.zeros((5, 3)), jnp.array([0, 1])),
     ValueError, "input has in_features=4 but linear_weight has 3"),
    (lambda: cej.linear_cross_entropy(jnp.zeros((2, 4)), jnp.zeros((5, 4)), jnp.array([0, 1]),
                                      token_chunk=0), ValueError,
     "token_chunk must be a positive integer"),
    (lambda: cej.optax.softmax_cross_entropy_with_integer_labels(X, jnp.array([0.0, 1.0])),
     TypeError, "labels must be integer class indices"),
    (lambda: cej.optax.softmax_cross_entropy(jnp.zeros((2, 3), jnp.int32), X), TypeError,
     "logits must be a floating-point array"),
])
def test_bad_input_raises(call: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]


def test_sharded_loss_outside_shard_map() -> None:
    with pytest.raises(ValueError, match="call sharded_linear_cross_entropy inside"):
        cej.sharded_linear_cross_entropy(jnp.zeros((2, 3)), jnp.zeros((4, 3)),
                                         jnp.array([0, 1]), axis_name="vocab")


def test_out_of_range_labels_under_jit_give_nan_and_checkify_finds_them() -> None:
    """Under jit a value cannot raise: a label out of range makes its row NaN (optax
    returns NaN too, above the range); check_labels with checkify names it."""
    x = jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    y = jnp.array([5, 1])
    rows = jax.jit(lambda a, b: cej.cross_entropy(a, b, reduction="none"))(x, y)
    assert np.isnan(float(rows[0])) and np.isfinite(float(rows[1]))
    assert np.isnan(float(jax.jit(cej.cross_entropy)(x, y)))  # the mean is NaN
    g = jax.jit(jax.grad(cej.cross_entropy))(x, y)
    assert np.all(np.isnan(np.asarray(g)[0])) and np.all(np.isfinite(np.asarray(g)[1]))

    def loss_fn(a: jax.Array, b: jax.Array) -> jax.Array:
        cej.check_labels(b, a.shape[-1])
        return cej.cross_entropy(a, b)

    err, _ = checkify.checkify(jax.jit(loss_fn))(x, y)
    with pytest.raises(Exception, match=re.escape("flat position 0 is 5")):
        err.throw()
    err, value = checkify.checkify(jax.jit(loss_fn))(x, jnp.array([2, -100]))
    err.throw()  # fine: nothing raised
    assert np.isfinite(float(value))
    # without checkify, jit refuses to stage the check (a clear message, not a wrong value)
    with pytest.raises(ValueError, match="checkify"):
        jax.jit(loss_fn)(x, y)


def test_probability_checks_with_checkify() -> None:
    def f(p: jax.Array) -> jax.Array:
        cej.check_probabilities(p)
        return cej.entropy(p)

    err, _ = checkify.checkify(jax.jit(f))(jnp.array([[0.5, 0.5], [0.7, 0.7]]))
    with pytest.raises(Exception, match=r"row 1 sums to 1\.(4|39999)"):
        err.throw()
    err, _ = checkify.checkify(jax.jit(f))(jnp.array([[0.5, 0.5], [1.5, -0.5]]))
    with pytest.raises(Exception, match="probabilities must be in"):
        err.throw()
