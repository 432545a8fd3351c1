"""crossentropy.jax against the mpmath references of the NumPy core (tests/_reference.py).

Bounds, in ulps of the result's dtype, the NumPy core's float64 bounds (docs/accuracy.md),
here for float64 (``jax_enable_x64``) *and* float32, which JAX computes natively with the
same compensated arithmetic:

* logsumexp, log_softmax, per-sample cross-entropy from logits <= 4 ulp; softmax <= 8 ulp;
  the cross-entropy gradient softmax - onehot <= 4 ulp;
* sigmoid, log_sigmoid, softplus, BCE with logits (labels 0 and 1) and their derivatives
  <= 2 ulp over the whole range;
* bfloat16 and float16 inputs are computed in float32 and rounded once: <= 1 ulp, and
  bitwise the float32 result rounded.

The random rows (1000 x 1000, logits ~ N(0, 10)) are checked against mpmath (50 digits) on
their first rows and against the 80-bit longdouble reference on all of them (which
tests/test_accuracy.py checks against mpmath).  XLA on CPU flushes subnormal numbers to 0:
a result flushed where the exact value is subnormal counts as exact (tests/_jax_support.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import mpmath  # noqa: E402

import crossentropy as ce  # noqa: E402
import crossentropy.jax as cej  # noqa: E402
from _jax_support import check, precision, ulp  # noqa: E402
from _reference import (  # noqa: E402
    DPS,
    EDGE_ROWS,
    LONGDOUBLE_IS_EXTENDED,
    dense_sigmoid_points,
    dense_sigmoid_reference,
    ld_binary,
    ld_rows,
    mp_rows,
    random_rows,
    ref_from_mp,
    rows_reference,
    sigmoid_points,
    sigmoid_reference,
)

ROW_BOUND = {"lse": 4.0, "log_softmax": 4.0, "ce": 4.0, "softmax": 8.0, "ce_grad": 4.0}
SIGMOID_BOUND = 2.0
MP_CHECKED = 20  # rows of the random data checked against mpmath itself


@jax.jit
def _row_values(x: Any, y: Any) -> dict[str, Any]:
    def total(v: Any) -> Any:
        return cej.cross_entropy(v, y, reduction="sum")

    return {
        "lse": cej.logsumexp(x),
        "log_softmax": cej.log_softmax(x),
        "softmax": cej.softmax(x),
        "ce": cej.cross_entropy(x, y, reduction="none"),
        "ce_grad": jax.grad(total)(x),  # each row's gradient: softmax - onehot
    }


def _rows(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    out = _row_values(jnp.asarray(x), jnp.asarray(y))
    return {k: np.asarray(v) for k, v in out.items()}


# --------------------------------------------------------------------------- random rows


@pytest.mark.skipif(not LONGDOUBLE_IS_EXTENDED, reason="np.longdouble is not extended here")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_random_rows(dtype: str) -> None:
    x, y = random_rows(dtype)
    with precision(dtype):
        got = _rows(x, y)
    mp = mp_rows(x[:MP_CHECKED], y[:MP_CHECKED])
    ld = rows_reference(dtype, "ld")
    for kind, value in got.items():
        assert value.dtype == np.dtype(dtype), kind
        check(ulp(value[:MP_CHECKED], mp[kind]), ROW_BOUND[kind], f"{kind} {dtype} vs mpmath")
        check(ulp(value, ld[kind]), ROW_BOUND[kind], f"{kind} {dtype} 1000x1000")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_rounded_once(dtype: str) -> None:
    """bfloat16 and float16 are computed in float32 and rounded once to their dtype."""
    x32, y = random_rows("float32")
    x = jnp.asarray(x32[:64] * 0.3).astype(dtype)  # N(0, 3): several classes matter
    yy = y[:64]
    got = _rows(np.asarray(x), yy)
    wide = _rows(np.asarray(x.astype(jnp.float32)), yy)
    ref = ld_rows(np.asarray(x).astype(np.float64), yy)
    for kind, value in got.items():
        assert value.dtype == np.dtype(x.dtype), kind
        np.testing.assert_array_equal(value, wide[kind].astype(x.dtype), err_msg=kind)
        check(ulp(value, ref[kind]), 1.0, f"{kind} {dtype}")


def _edge_batch(dtype: str) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """EDGE_ROWS padded with -inf to one length (one compilation; -inf entries have
    probability 0 and leave the others unchanged), and (row, length) of each."""
    rows, labels, kept = [], [], []
    for row, label in EDGE_ROWS:
        if dtype == "float32" and max(abs(v) for v in row) > 3e38:
            continue
        kept.append((len(rows), len(row)))
        rows.append(row + [-np.inf] * (1000 - len(row)))
        labels.append(label)
    return np.asarray(rows, dtype=dtype), np.asarray(labels), kept


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_edge_rows(dtype: str) -> None:
    x, y, kept = _edge_batch(dtype)
    with precision(dtype):
        got = _rows(x, y)
    for i, n in kept:
        ref = mp_rows(x[i : i + 1, :n], y[i : i + 1])
        for kind, value in got.items():
            v = value[i : i + 1]
            if v.ndim == 2:
                v = v[:, :n]
            check(ulp(v, ref[kind]), ROW_BOUND[kind], f"{kind} {dtype} row {x[i, :n][:4]}")
        assert np.all(got["softmax"][i, n:] == 0) and np.all(got["ce_grad"][i, n:] == 0)
        assert np.all(got["log_softmax"][i, n:] == -np.inf)


# --------------------------------------------------------------------------- sigmoid family


@jax.jit
def _sigmoid_values(x: Any) -> dict[str, Any]:
    zero, one = jnp.zeros_like(x), jnp.ones_like(x)

    def bce(v: Any, t: Any) -> Any:
        return cej.binary_cross_entropy_with_logits(v, t, reduction="none")

    def d(f: Any) -> Any:
        return jax.grad(lambda v: jnp.sum(f(v)))(x)

    return {
        "sigmoid": cej.sigmoid(x),
        "log_sigmoid": cej.log_sigmoid(x),
        "bce0": bce(x, zero),
        "bce1": bce(x, one),
        "sigmoid_grad": d(cej.sigmoid),
        "log_sigmoid_grad": d(cej.log_sigmoid),
        "bce0_grad": d(lambda v: bce(v, zero)),
        "bce1_grad": d(lambda v: bce(v, one)),
        "softplus": cej.softplus(x),
    }


def _sigmoid_check(x: np.ndarray, ref: dict[str, Any], dtype: str, what: str) -> None:
    with precision(dtype):
        got = {k: np.asarray(v) for k, v in _sigmoid_values(jnp.asarray(x)).items()}
    got_softplus = got.pop("softplus")
    np.testing.assert_array_equal(got_softplus, got["bce0"])  # softplus(x) = BCE(x, 0)
    for kind, value in got.items():
        assert value.dtype == np.dtype(dtype), kind
        check(ulp(value, ref[kind]), SIGMOID_BOUND, f"{kind} {dtype} {what}")


def _joined(a: Any, b: Any) -> Any:
    return type(a)(np.concatenate([a.hi, b.hi]), np.concatenate([a.lo, b.lo]),
                   np.concatenate([a.e, b.e]))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_sigmoid_family_whole_range(dtype: str) -> None:
    """The mpmath points and (where longdouble is extended) the 600,000 longdouble ones,
    joined into one array: one compilation."""
    x, ref = sigmoid_points(dtype), sigmoid_reference(dtype)
    if LONGDOUBLE_IS_EXTENDED:
        dense, dref = dense_sigmoid_points(dtype), dense_sigmoid_reference(dtype)
        x = np.concatenate([x, dense])
        ref = {k: _joined(ref[k], dref[k]) for k in ref}
    _sigmoid_check(x, ref, dtype, "mpmath and longdouble")


def test_sigmoid_family_float16_every_value() -> None:
    x = dense_sigmoid_points("float16")  # every finite float16
    with precision("float32"):
        got = {k: np.asarray(v) for k, v in _sigmoid_values(jnp.asarray(x)).items()}
    ref = ld_binary(x)
    for kind in ("sigmoid", "log_sigmoid", "bce0", "bce1", "sigmoid_grad"):
        check(ulp(got[kind], ref[kind]), 1.0, f"{kind} float16")


def test_quoted_values() -> None:
    with jax.enable_x64(True):
        # mpmath (mp.dps = 50): log1p(exp(-40)) = 4.248354255291588986304977843631582e-18
        bce = cej.binary_cross_entropy_with_logits(jnp.asarray(-40.0), jnp.asarray(0.0))
        assert float(bce) == 4.248354255291588986304977843631582e-18
        assert float(cej.log_softmax(jnp.array([0.0, -40.0]))[0]) == -4.248354255291589e-18
        # mpmath: 1 / (1 + exp(720)) = 2.0322308024242931528666337664148e-313, subnormal:
        # kept where the platform keeps subnormals, 0 on XLA CPU (flush to zero)
        s = float(cej.sigmoid(jnp.asarray(-720.0)))
        assert s in (2.0322308024242931528666337664148e-313, 0.0)
        # mpmath: log(1000) = 6.9077552789821370520539743640530926228033044658863
        x = jnp.zeros((1, 1000))
        assert float(cej.cross_entropy(x, jnp.array([7]))) == 6.907755278982137
    # float32, mpmath: the loss of [1e6+1, 1e6, 1e6-1] for label 0 = 0.4076059644443803;
    # computed in float32 (not rounded once from float64 as in the NumPy core): 0.62 ulp
    v = cej.cross_entropy(jnp.array([1e6 + 1, 1e6, 1e6 - 1], jnp.float32), jnp.asarray(0))
    assert v.dtype == jnp.float32
    check(ulp(v, ref_from_mp(["0.4076059644443803044829199"])), 1.0, "float32 quoted loss")


# --------------------------------------------------------------------------- logsumexp


def _mp_weighted(x: np.ndarray, b: np.ndarray) -> tuple[Any, np.ndarray]:
    vals, signs = [], []
    with mpmath.workdps(DPS):
        for xr, br in zip(x, b, strict=True):
            t = mpmath.fsum(mpmath.mpf(float(bi)) * mpmath.exp(mpmath.mpf(float(xi)))
                            for xi, bi in zip(xr, br, strict=True))
            vals.append(mpmath.log(abs(t)) if t != 0 else mpmath.ninf)
            signs.append(float(mpmath.sign(t)))
    return ref_from_mp(vals), np.array(signs)


def test_weighted_logsumexp_cancellation() -> None:
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
    rng = np.random.default_rng(3)
    xr, br = rng.normal(0.0, 10.0, (20, 50)), rng.uniform(0.0, 3.0, (20, 50))
    br[:, ::7] = 0.0  # zero weights drop the term
    with jax.enable_x64(True):
        for xx, bb in ((x, b), (xr, br)):
            ref, sign = _mp_weighted(xx, bb)
            got, got_sign = cej.logsumexp(jnp.asarray(xx), b=jnp.asarray(bb), return_sign=True)
            np.testing.assert_array_equal(np.asarray(got_sign), sign)
            check(ulp(got, ref), 4.0, "weighted logsumexp")
        # mpmath (mp.dps = 50): log(exp(mpf(1e-20)) - 1) = -46.051701859880913735201557639
        v = cej.logsumexp(jnp.array([0.0, 1e-20]), b=jnp.array([1.0, -1.0]), return_sign=True)
        assert float(v[0]) == -46.051701859880913735201557639 and float(v[1]) == -1.0
        # a negative sum without return_sign: NaN (jit cannot raise on a value)
        assert np.isnan(float(cej.logsumexp(jnp.array([0.0, 1.0]), b=jnp.array([1.0, -1.0]))))


def test_logsumexp_axes_where_keepdims() -> None:
    x = np.random.default_rng(5).normal(0.0, 5.0, (3, 4, 5))
    mask = np.random.default_rng(6).random((3, 4, 5)) > 0.3
    axes: tuple[Any, ...] = (0, (0, 2), None)

    @jax.jit
    def run(x: Any, mask: Any) -> Any:
        return [(cej.logsumexp(x, axis=a, where=mask, keepdims=True),
                 cej.softmax(x, axis=a, where=mask)) for a in axes]

    with jax.enable_x64(True):
        out = run(jnp.asarray(x), jnp.asarray(mask))
    for axis, (lse, sm) in zip(axes, out, strict=True):
        want = ce.logsumexp(x, axis=axis, where=mask, keepdims=True)
        assert lse.shape == want.shape
        np.testing.assert_allclose(np.asarray(lse), want, rtol=4e-16, atol=0)
        np.testing.assert_allclose(np.asarray(sm), ce.softmax(x, axis=axis, where=mask),
                                   rtol=1e-15, atol=0)


# --------------------------------------------------------------------------- information


def test_entropy_and_kl_against_mpmath() -> None:
    rng = np.random.default_rng(11)
    p = rng.dirichlet(np.ones(40) * 0.3, 30)
    p[:, ::9] = 0.0
    p /= p.sum(axis=1, keepdims=True)
    q = p * (1.0 + rng.normal(0, 1e-9, p.shape))  # nearly equal rows: KL ~ 1e-18
    q[:10] = rng.dirichlet(np.ones(40), 10)
    q /= q.sum(axis=1, keepdims=True)
    with mpmath.workdps(DPS):
        def mp_h(row: np.ndarray) -> Any:
            return -mpmath.fsum(mpmath.mpf(v) * mpmath.log(v) for v in row if v > 0)

        def mp_kl(pr: np.ndarray, qr: np.ndarray) -> Any:
            return mpmath.fsum(mpmath.mpf(a) * mpmath.log(mpmath.mpf(a) / mpmath.mpf(b))
                               for a, b in zip(pr, qr, strict=True) if a > 0)

        h_ref = ref_from_mp([mp_h(r) for r in p])
        kl_ref = ref_from_mp([mp_kl(a, b) for a, b in zip(p, q, strict=True)])
        with np.errstate(divide="ignore"):
            lq = np.log(q)
        klog_ref = ref_from_mp([
            mpmath.fsum(mpmath.mpf(a) * (mpmath.log(a) - mpmath.mpf(c))
                        for a, c in zip(pr, lr, strict=True) if a > 0)
            for pr, lr in zip(p, lq, strict=True)])
    with jax.enable_x64(True):
        check(ulp(cej.entropy(jnp.asarray(p)), h_ref), 4.0, "entropy")
        kl = np.asarray(cej.kl_divergence(jnp.asarray(p), jnp.asarray(q)))
        check(ulp(kl[:10], kl_ref[:10]), 4.0, "kl_divergence")
        # nearly equal rows: KL ~ 1e-18 is a sum of terms ~1e-9 of both signs, so its error
        # is bounded by the terms' (as for the NumPy core): a few ulp of sum |terms|
        with np.errstate(divide="ignore", invalid="ignore"):
            size = np.nansum(np.abs(p * np.log(p / q)), axis=1)
        err = np.abs(kl[10:] - kl_ref.rounded(np.float64)[10:])
        assert np.all(err <= 8 * np.finfo(np.float64).eps * size[10:]), (err / size[10:]).max()
        klog = np.asarray(cej.optax.kl_divergence(jnp.asarray(lq), jnp.asarray(p)))
        check(ulp(klog[:10], klog_ref[:10]), 4.0, "optax.kl_divergence")


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize(("options", "targets"), [
    ({"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0}, "both"),
    ({"weight": "w", "label_smoothing": 0.05, "z_loss": 1e-4}, "probabilities"),
    ({"ignore_index": 3, "reduction": "sum", "base": 2, "weight": "w"}, "indices"),
    ({"where": "mask", "sample_weight": "sw", "normalizer": 7.0}, "indices"),
])
def test_options_match_the_numpy_core(options: dict[str, Any], targets: str) -> None:
    """Every option, per row and reduced, with index and probability targets, equals the
    NumPy core's value and gradient (both exact: within a few float64 ulp)."""
    rng = np.random.default_rng(17)
    x = rng.normal(0.0, 4.0, (32, 11))
    y = rng.integers(0, 11, 32)
    t = rng.dirichlet(np.ones(11), 32)
    extra = {"w": rng.uniform(0.1, 2.0, 11), "mask": rng.random((32, 11)) > 0.2,
             "sw": rng.uniform(0.0, 2.0, 32)}
    kw = {k: extra[v] if isinstance(v, str) and v in extra else v for k, v in options.items()}
    if "where" in kw:
        kw["where"][np.arange(32), y] = True  # the label's class takes part
    red = kw.pop("reduction", "mean")
    norm = kw.pop("normalizer", None)
    arrays = {k: v for k, v in kw.items() if isinstance(v, np.ndarray)}
    static = {k: v for k, v in kw.items() if k not in arrays}

    @jax.jit
    def run(x: Any, target: Any, arrays: dict[str, Any]) -> Any:
        def reduced(v: Any) -> Any:
            return cej.cross_entropy(v, target, reduction=red, normalizer=norm, **arrays,
                                     **static)

        rows = cej.cross_entropy(x, target, reduction="none", **arrays, **static)
        return rows, reduced(x), jax.grad(reduced)(x)

    chosen = {"both": (y, t), "indices": (y,), "probabilities": (t,)}[targets]
    with jax.enable_x64(True):
        for target in chosen:
            got = [np.asarray(v) for v in run(jnp.asarray(x), jnp.asarray(target),
                                              {k: jnp.asarray(v) for k, v in arrays.items()})]
            rows = ce.cross_entropy(x, target, reduction="none", **kw)
            value, grad = ce.cross_entropy(x, target, reduction=red, normalizer=norm,
                                           return_grad=True, **kw)
            # each within 4 ulp of the exact value: at most 8 ulp apart
            eps = np.finfo(np.float64).eps
            np.testing.assert_allclose(got[0], rows, rtol=8 * eps, atol=1e-300)
            np.testing.assert_allclose(got[1], value, rtol=8 * eps, atol=1e-300)
            # a gradient entry p W - a cancels: 8 ulp of the larger term
            np.testing.assert_allclose(got[2], grad, rtol=8 * eps,
                                       atol=8 * eps * float(np.max(np.abs(grad))))
