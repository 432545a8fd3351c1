"""crossentropy.jax under JAX's transformations: jit, vmap, grad, jacfwd, jacrev.

For every function, one jitted program computes the value, ``vmap`` over a batch, the
gradient of the sum and the Jacobians by ``jacfwd`` and ``jacrev``; they must agree with
the function called eagerly, with each other and with the NumPy core's own gradients
(``return_grad=True``: an independent implementation, exact to a few ulp).  Then the
cases where the textbook gradient is NaN: logits of -inf, ignored rows, probability 0.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import crossentropy as ce  # noqa: E402
import crossentropy.jax as cej  # noqa: E402

RTOL = 1e-13  # float64 against the NumPy core: both within a few ulp of the exact value


def _all_transforms(f: Callable[[Any], Any], x: Any, batch: Any) -> dict[str, Any]:
    @jax.jit
    def run(x: Any, batch: Any) -> dict[str, Any]:
        def total(v: Any) -> Any:
            return jnp.sum(f(v))

        return {
            "value": f(x),
            "vmap": jax.vmap(f)(batch),
            "grad": jax.grad(total)(x),
            "jacfwd": jax.jacfwd(f)(x),
            "jacrev": jax.jacrev(f)(x),
        }

    return {k: np.asarray(v) for k, v in run(x, batch).items()}


def _check_transforms(f: Callable[[Any], Any], x: np.ndarray, grad_ref: np.ndarray,
                      value_ref: Callable[[np.ndarray], Any],
                      batch: np.ndarray | None = None) -> None:
    """jit/vmap/grad/jacfwd/jacrev of f at x (and vmap over `batch`, by default 3
    perturbations of x); values against `value_ref` (the NumPy core), gradients against
    `grad_ref`."""
    if batch is None:
        batch = np.stack([x, x * 0.5 - 1.0, x + 2.0])
    with jax.enable_x64(True):
        out = _all_transforms(f, jnp.asarray(x), jnp.asarray(batch))
        eager = np.asarray(f(jnp.asarray(x)))
    # jit (and inlining in another program) changes at most the last bit (fusion and
    # multiply-add contraction differ); both within a few ulp of the NumPy core
    np.testing.assert_allclose(out["value"], eager, rtol=4e-16, atol=0)
    each = np.stack([np.asarray(value_ref(b)) for b in batch])
    np.testing.assert_allclose(out["vmap"], each, rtol=RTOL, atol=1e-300)
    np.testing.assert_allclose(out["grad"], grad_ref, rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(out["jacfwd"], out["jacrev"], rtol=RTOL, atol=1e-15)
    # the Jacobian's column sums are the gradient of the sum
    jac = out["jacrev"].reshape(eager.size, -1) if eager.ndim else out["jacrev"].reshape(1, -1)
    np.testing.assert_allclose(jac.sum(axis=0).reshape(x.shape), grad_ref, rtol=1e-12,
                               atol=1e-14)


X = np.array([[2.0, 1.0, 0.1, -3.0, 0.5], [0.5, 2.5, 0.3, -1.0, -40.0]])
Y = np.array([0, 3])
T = np.array([[0.1, 0.2, 0.3, 0.4, 0.0], [0.5, 0.0, 0.0, 0.25, 0.25]])


@pytest.mark.parametrize("name", ["sigmoid", "log_sigmoid", "softplus"])
def test_sigmoid_family(name: str) -> None:
    f = getattr(cej, name)
    _, g = getattr(ce, name)(X, return_grad=True)
    _check_transforms(f, X, g, getattr(ce, name))


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family(name: str) -> None:
    f = getattr(cej, name)
    # d/dx sum(softmax) = 0; d/dx sum(log_softmax) = 1 - C p; d/dx lse = p
    p = ce.softmax(X)
    ref = {"softmax": np.zeros_like(X), "log_softmax": 1.0 - X.shape[1] * p, "logsumexp": p}
    _check_transforms(f, X, ref[name], getattr(ce, name))


def test_weighted_logsumexp() -> None:
    b = np.array([1.0, -0.5, 2.0, 0.0, 1.0])

    def f(x: Any) -> Any:
        return cej.logsumexp(x, b=jnp.asarray(b), return_sign=True)[0]

    # d/dx_c log|sum b e^x| = b_c e^(x_c - lse) sign
    val, sign = ce.logsumexp(X, b=b, return_sign=True)
    ref = b * np.exp(X - val[:, None]) * sign[:, None]
    _check_transforms(f, X, ref, lambda v: ce.logsumexp(v, b=b, return_sign=True)[0])


@pytest.mark.parametrize(("options", "targets"), [
    ({}, (Y, T)),
    ({"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0}, (Y,)),
    ({"weight": [1.0, 2.0, 0.5, 1.0, 3.0], "ignore_index": 3, "base": 2}, (Y,)),
    ({"weight": [1.0, 2.0, 0.5, 1.0, 3.0], "label_smoothing": 0.2}, (T,)),
])
def test_cross_entropy(options: dict[str, Any], targets: tuple[np.ndarray, ...]) -> None:
    kw = {k: np.asarray(v) if isinstance(v, list) else v for k, v in options.items()}
    for target in targets:
        _, g = ce.cross_entropy(X, target, reduction="none", return_grad=True, **kw)

        def f(x: Any, target: Any = target) -> Any:
            return cej.cross_entropy(x, jnp.asarray(target), reduction="none", **kw)

        _check_transforms(f, X, g, lambda v, target=target: ce.cross_entropy(
            v, target, reduction="none", **kw))


def test_binary_cross_entropy_with_logits() -> None:
    y = np.array([[0.0, 1.0, 0.3, 1.0, 0.0], [1.0, 0.0, 0.5, 0.0, 1.0]])
    pw = np.array([1.0, 2.0, 1.0, 0.5, 1.0])
    _, g = ce.binary_cross_entropy_with_logits(X, y, pos_weight=pw, reduction="none",
                                               return_grad=True)

    def f(x: Any) -> Any:
        return cej.binary_cross_entropy_with_logits(x, jnp.asarray(y), reduction="none",
                                                    pos_weight=jnp.asarray(pw))

    _check_transforms(f, X, g, lambda v: ce.binary_cross_entropy_with_logits(
        v, y, pos_weight=pw, reduction="none"))


def test_entropy_and_kl() -> None:
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.25, 0.125, 0.125]])
    q = np.array([[0.25, 0.25, 0.25, 0.25], [0.4, 0.3, 0.2, 0.1]])
    batch = np.stack([p, q, p[::-1]])  # distributions all
    _, gh = ce.entropy(p, return_grad=True)
    _check_transforms(cej.entropy, p, gh, ce.entropy, batch)
    _, gq = ce.kl_divergence(p, q, return_grad=True)  # with respect to q
    _check_transforms(lambda v: cej.kl_divergence(jnp.asarray(p), v), q, gq,
                      lambda v: ce.kl_divergence(p, v), batch)


def test_optax_functions() -> None:
    t = T

    def sce(x: Any) -> Any:
        return cej.optax.softmax_cross_entropy(x, jnp.asarray(t))

    def ice(x: Any) -> Any:
        return cej.optax.softmax_cross_entropy_with_integer_labels(x, jnp.asarray(Y))

    _, g = ce.cross_entropy(X, t, reduction="none", return_grad=True)
    _check_transforms(sce, X, g, lambda v: ce.cross_entropy(v, t, reduction="none"))
    _, g = ce.cross_entropy(X, Y, reduction="none", return_grad=True)
    _check_transforms(ice, X, g, lambda v: ce.cross_entropy(v, Y, reduction="none"))


def test_other_optax_functions() -> None:
    """sigmoid_binary_cross_entropy, kl_divergence (two forms) and smooth_labels; the
    reference values in float64 NumPy from their definitions (well conditioned here)."""
    y = (X > 0.3).astype(np.float64)
    _, g = ce.binary_cross_entropy_with_logits(X, y, reduction="none", return_grad=True)
    _check_transforms(lambda v: cej.optax.sigmoid_binary_cross_entropy(v, jnp.asarray(y)), X,
                      g, lambda v: ce.binary_cross_entropy_with_logits(v, y, reduction="none"))
    t = T
    lq = np.log(ce.softmax(X))

    def kl_ref(v: np.ndarray) -> np.ndarray:  # sum t (log t - lq), 0 log 0 = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.sum(np.where(t > 0, t * (np.log(t) - v), 0.0), axis=-1)

    _check_transforms(lambda v: cej.optax.kl_divergence(v, jnp.asarray(t)), lq, -t, kl_ref,
                      np.stack([lq, lq - 1.0, lq + 0.5]))
    lt = np.log(np.array([[0.1, 0.2, 0.3, 0.4, 1e-9], [0.5, 1e-9, 1e-9, 0.25, 0.25]]))

    def klt_ref(v: np.ndarray) -> np.ndarray:
        return np.sum(np.exp(lt) * (lt - v), axis=-1)

    _check_transforms(lambda v: cej.optax.kl_divergence_with_log_targets(v, jnp.asarray(lt)),
                      lq, -np.exp(lt), klt_ref, np.stack([lq, lq - 1.0, lq + 0.5]))
    # smooth_labels: d/dlabels = 1 - alpha
    _check_transforms(lambda v: cej.optax.smooth_labels(v, 0.1), T, np.full_like(T, 0.9),
                      lambda v: 0.9 * v + 0.1 / v.shape[-1])


def test_linear_cross_entropy_reverse_mode_only() -> None:
    """A custom_vjp: grad, jacrev and vmap work; jacfwd is refused by JAX (documented)."""
    rng = np.random.default_rng(0)
    h, W = rng.normal(size=(4, 3)), rng.normal(size=(7, 3))
    y = np.array([0, 6, 2, 2])

    def f(hh: Any) -> Any:
        return cej.linear_cross_entropy(hh, jnp.asarray(W), jnp.asarray(y), reduction="none")

    _, g = ce.cross_entropy(h @ W.T, y, reduction="none", return_grad=True)
    with jax.enable_x64(True):
        hh = jnp.asarray(h)
        np.testing.assert_allclose(np.asarray(jax.grad(lambda v: jnp.sum(f(v)))(hh)), g @ W,
                                   rtol=1e-13)
        jac = np.asarray(jax.jacrev(f)(hh))
        np.testing.assert_allclose(jac.sum(axis=0), g @ W, rtol=1e-13)
        batched = np.asarray(jax.vmap(f)(jnp.stack([hh, hh + 1.0])))
        np.testing.assert_allclose(batched[0], np.asarray(f(hh)), rtol=0, atol=0)
        with pytest.raises(TypeError, match="custom_vjp"):
            jax.jacfwd(f)(hh)


# --------------------------------------------------------------------------- where NaN lurks


def test_gradient_at_minus_inf_logits_is_finite_and_exact() -> None:
    x = np.array([[0.0, -np.inf, 1.0], [-np.inf, -np.inf, 2.0]])
    y = np.array([2, 2])
    t = np.array([[0.5, 0.0, 0.5], [0.0, 0.0, 1.0]])
    with jax.enable_x64(True):
        for target in (y, t):
            g = np.asarray(jax.grad(lambda v, target=target: cej.cross_entropy(
                v, jnp.asarray(target)))(jnp.asarray(x)))
            assert np.all(np.isfinite(g))
            _, want = ce.cross_entropy(x, target, return_grad=True)
            np.testing.assert_allclose(g, want, rtol=1e-15)
            assert g[0, 1] == 0.0 and g[1, 0] == 0.0 and g[1, 1] == 0.0
        for f in (cej.log_softmax, cej.softmax, cej.logsumexp):
            g = np.asarray(jax.grad(lambda v, f=f: jnp.sum(jnp.where(
                jnp.isfinite(f(v)), f(v), 0.0)))(jnp.asarray(x)))
            assert np.all(np.isfinite(g)), f
        # optax's softmax_cross_entropy returns NaN for the value here; ours is exact
        v = cej.optax.softmax_cross_entropy(jnp.asarray(x), jnp.asarray(t))
        np.testing.assert_allclose(np.asarray(v), ce.cross_entropy(x, t, reduction="none"),
                                   rtol=1e-15)


def test_gradient_at_ignored_rows_is_zero() -> None:
    # an ignored row whose logits are all -inf (padding) or NaN: zero gradient, no NaN
    x = np.array([[1.0, 2.0, 3.0], [-np.inf, -np.inf, -np.inf], [np.nan, 0.0, 1.0]])
    y = np.array([0, -100, -100])
    with jax.enable_x64(True):
        loss, g = jax.value_and_grad(lambda v: cej.cross_entropy(v, jnp.asarray(y)))(
            jnp.asarray(x))
        g = np.asarray(g)
        np.testing.assert_array_equal(g[1:], 0.0)
        _, want = ce.cross_entropy(x[:1], y[:1], return_grad=True)
        np.testing.assert_allclose(g[:1], want, rtol=1e-15)
        assert float(loss) == float(ce.cross_entropy(x[:1], y[:1]))
        # optax's row mask (where=) likewise
        m = jnp.asarray([True, False, False])
        g2 = np.asarray(jax.grad(lambda v: jnp.sum(
            cej.optax.softmax_cross_entropy_with_integer_labels(
                v, jnp.asarray([0, 0, 0]), where=m)))(jnp.asarray(x)))
        np.testing.assert_array_equal(g2[1:], 0.0)


def test_gradient_at_zero_probability() -> None:
    with jax.enable_x64(True):
        p = jnp.asarray([0.0, 0.25, 0.75])
        q = jnp.asarray([0.5, 0.25, 0.25])
        # with respect to the prediction: finite, exact (-p/q, 0 where p = 0)
        gq = np.asarray(jax.grad(lambda v: cej.kl_divergence(p, v))(q))
        np.testing.assert_array_equal(gq, [0.0, -1.0, -3.0])
        lq = jnp.log(q)
        g = np.asarray(jax.grad(lambda v: cej.optax.kl_divergence(v, p))(lq))
        np.testing.assert_array_equal(g, [0.0, -0.25, -0.75])  # -t: optax's is the same
        # probability targets with zeros: the gradient with respect to the logits is p - t
        x = jnp.asarray([[1.0, 2.0, 3.0]])
        g = np.asarray(jax.grad(lambda v: cej.cross_entropy(v, p[None]))(x))
        _, want = ce.cross_entropy(np.asarray(x), np.asarray(p)[None], return_grad=True)
        np.testing.assert_allclose(g, want, rtol=4e-16)
        # log-targets of -inf add 0, with a zero gradient (optax: NaN value)
        lt = jnp.log(p)
        v, g = jax.value_and_grad(lambda t: cej.optax.kl_divergence_with_log_targets(lq, t))(lt)
        assert np.isfinite(float(v)) and np.all(np.isfinite(np.asarray(g)))
        assert float(np.asarray(g)[0]) == 0.0
        # with respect to a mass that is 0: the one-sided slope, -inf for KL, +inf entropy
        gp = np.asarray(jax.grad(lambda v: cej.kl_divergence(v, q))(p))
        assert gp[0] == -np.inf and np.all(np.isfinite(gp[1:]))
        gh = np.asarray(jax.grad(cej.entropy)(p))
        assert gh[0] == np.inf and np.all(np.isfinite(gh[1:]))
