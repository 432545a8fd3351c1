"""Gradients: ulp accuracy against mpmath where the value is well conditioned, and central
finite differences (float64, loose tolerance) for every loss and every option.

Bounds: the cross-entropy-from-logits gradient softmax - onehot <= 4 ulp (float64); the
derivatives of the sigmoid family (sigmoid', log_sigmoid' and the BCE-with-logits gradient
with hard labels) <= 2 ulp over the whole range; float32 and float16 <= 1 ulp.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import crossentropy as ce
from _reference import (
    EDGE_ROWS,
    LONGDOUBLE_IS_EXTENDED,
    MP_ROWS,
    dense_sigmoid_points,
    dense_sigmoid_reference,
    mp_rows,
    random_rows,
    rows_reference,
    sigmoid_points,
    sigmoid_reference,
    ulp_error,
)

# the `backend` fixture (numpy and numba) is in conftest.py


DTYPES = ["float64", "float32", "float16"]


def _check(err: np.ndarray, bound: float, what: str) -> None:
    worst = float(np.max(err))
    where = np.unravel_index(int(np.argmax(err)), err.shape)
    assert worst <= bound, f"{what}: max error {worst:.3f} ulp at {where} > {bound} ulp"


# --------------------------------------------------------------------------- ulp accuracy


def _ce_grad(x: Any, y: Any) -> Any:
    _, g = ce.cross_entropy(x, y, reduction="none", return_grad=True)
    return g


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_grad_against_mpmath(dtype: str, backend: str) -> None:
    x, y = random_rows(dtype)
    g = _ce_grad(x[: MP_ROWS[dtype]], y[: MP_ROWS[dtype]])
    assert g.dtype == np.dtype(dtype)
    bound = 4.0 if dtype == "float64" else 1.0
    _check(ulp_error(g, rows_reference(dtype, "mp")["ce_grad"]), bound, f"CE grad {dtype}")


@pytest.mark.skipif(not LONGDOUBLE_IS_EXTENDED, reason="np.longdouble is not extended here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_grad_full_size(dtype: str, backend: str) -> None:
    x, y = random_rows(dtype)
    bound = 4.0 if dtype == "float64" else 1.0
    err = ulp_error(_ce_grad(x, y), rows_reference(dtype, "ld")["ce_grad"])
    _check(err, bound, f"CE grad {dtype} 1000x1000")


@pytest.mark.parametrize(("row", "label"), EDGE_ROWS, ids=[str(i) for i in range(len(EDGE_ROWS))])
def test_cross_entropy_grad_edge_rows(row: list[float], label: int, backend: str) -> None:
    x = np.array([row])
    ref = mp_rows(x, np.array([label]))["ce_grad"]
    _check(ulp_error(_ce_grad(x, np.array([label])), ref), 4.0, f"CE grad {row}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_family_derivatives(dtype: str, backend: str) -> None:
    x = sigmoid_points(dtype)
    ref = sigmoid_reference(dtype)
    bound = 2.0 if dtype == "float64" else 1.0
    for kind, g in _sigmoid_derivatives(x).items():
        assert g.dtype == np.dtype(dtype)
        _check(ulp_error(g, ref[kind]), bound, f"{kind} {dtype}")


def _sigmoid_derivatives(x: np.ndarray) -> dict[str, Any]:
    zero, one = np.zeros_like(x), np.ones_like(x)
    return {
        "sigmoid_grad": ce.sigmoid(x, return_grad=True)[1],
        "log_sigmoid_grad": ce.log_sigmoid(x, return_grad=True)[1],
        "bce0_grad": ce.binary_cross_entropy_with_logits(
            x, zero, reduction="none", return_grad=True
        )[1],
        "bce1_grad": ce.binary_cross_entropy_with_logits(
            x, one, reduction="none", return_grad=True
        )[1],
    }


@pytest.mark.skipif(not LONGDOUBLE_IS_EXTENDED, reason="np.longdouble is not extended here")
@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_family_derivatives_dense(dtype: str, backend: str) -> None:
    x = dense_sigmoid_points(dtype)
    ref = dense_sigmoid_reference(dtype)
    bound = 2.0 if dtype == "float64" else 1.0
    for kind, g in _sigmoid_derivatives(x).items():
        _check(ulp_error(g, ref[kind]), bound, f"{kind} {dtype} dense")


# --------------------------------------------------------------------------- finite differences

RTOL = 1e-6
ATOL = 1e-9


def _central(f: Callable[[np.ndarray], float], x: np.ndarray) -> np.ndarray:
    """Central differences of a scalar function, one coordinate at a time (float64)."""
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        h = 1e-6 * max(1.0, abs(float(x[idx])))
        xp = x.copy()
        xm = x.copy()
        xp[idx] += h
        xm[idx] -= h
        g[idx] = (f(xp) - f(xm)) / (xp[idx] - xm[idx])
    return g


def _directional(f: Callable[[np.ndarray], float], z: np.ndarray, d: np.ndarray) -> float:
    h = 1e-5
    return (f(z + h * d) - f(z - h * d)) / (2 * h)


def _total(v: Any) -> float:
    """Sum of a loss value: for reduction='none' the gradient of each sample's loss with
    respect to its own row is the gradient of the sum."""
    return float(np.sum(v))


rng = np.random.default_rng(11)
LOGITS = rng.normal(0.0, 2.0, (5, 4))
LABELS = np.array([0, 3, -100, 2, 1])
SOFT = rng.dirichlet(np.ones(4), 5)
WEIGHT = np.array([0.5, 2.0, 1.0, 3.0])

CE_OPTIONS: list[dict[str, Any]] = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"weight": WEIGHT},
    {"weight": WEIGHT, "reduction": "sum"},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.2, "weight": WEIGHT},
    {"ignore_index": 2, "target": np.array([0, 3, 2, 2, 1])},
    {"ignore_index": None, "target": np.array([0, 3, 1, 2, 1])},
    {"base": 2},
    {"base": 10, "reduction": "none", "weight": WEIGHT},
    {
        "target": np.array([0, 3, 3, 2, 1]),
        "weight": WEIGHT,
        "label_smoothing": 0.1,
        "ignore_index": 3,
        "base": 2,
    },
    {"target": SOFT},
    {"target": SOFT, "weight": WEIGHT, "label_smoothing": 0.05},
    {"target": SOFT, "reduction": "none", "base": 2},
    {"target": np.full(5, -100)},  # everything ignored: 0 and a zero gradient
]


def _split(opts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    kw = dict(opts)
    return kw.pop("target", LABELS), kw


@pytest.mark.parametrize("opts", CE_OPTIONS, ids=[str(i) for i in range(len(CE_OPTIONS))])
def test_cross_entropy_finite_differences(opts: dict[str, Any], backend: str) -> None:
    target, kw = _split(opts)
    _, g = ce.cross_entropy(LOGITS, target, return_grad=True, **kw)
    fd = _central(lambda z: _total(ce.cross_entropy(z, target, **kw)), LOGITS)
    np.testing.assert_allclose(g, fd, rtol=RTOL, atol=ATOL)


def test_cross_entropy_finite_differences_axis0(backend: str) -> None:
    z = np.ascontiguousarray(LOGITS.T)  # classes along axis 0
    kw = {"weight": WEIGHT, "label_smoothing": 0.1}
    _, g = ce.cross_entropy(z, LABELS, axis=0, return_grad=True, **kw)
    fd = _central(lambda t: _total(ce.cross_entropy(t, LABELS, axis=0, **kw)), z)
    np.testing.assert_allclose(g, fd, rtol=RTOL, atol=ATOL)
    _, g_soft = ce.cross_entropy(z, SOFT.T, axis=0, return_grad=True)
    fd_soft = _central(lambda t: _total(ce.cross_entropy(t, SOFT.T, axis=0)), z)
    np.testing.assert_allclose(g_soft, fd_soft, rtol=RTOL, atol=ATOL)


# Probabilities must stay on the simplex (the functions check that rows sum to 1), so the
# normalised losses are differentiated along curves q(t) = softmax(z + t d): the chain rule
# gives d/dt L(q(t)) = <grad, dq/dt> with dq/dt = q * (d - <q, d>) (row-wise), and for
# log-probabilities lq(t) = log_softmax(z + t d), d lq/dt = d - <q, d>.


def _tangent(q: np.ndarray, d: np.ndarray, log: bool) -> np.ndarray:
    centred = d - np.sum(q * d, axis=-1, keepdims=True)
    return centred if log else q * centred


@pytest.mark.parametrize("log", [False, True], ids=["probs", "log_probs"])
@pytest.mark.parametrize("opts", CE_OPTIONS, ids=[str(i) for i in range(len(CE_OPTIONS))])
def test_normalised_cross_entropy_directional(
    opts: dict[str, Any], log: bool, backend: str
) -> None:
    target, kw = _split(opts)
    fn = ce.cross_entropy_from_log_probs if log else ce.cross_entropy_from_probs
    to_pred = ce.log_softmax if log else ce.softmax
    q = ce.softmax(LOGITS)
    _, g = fn(to_pred(LOGITS), target, return_grad=True, **kw)
    dirs = np.random.default_rng(5).normal(size=(3, *LOGITS.shape))
    for d in dirs:
        want = _directional(lambda z: _total(fn(to_pred(z), target, **kw)), LOGITS, d)
        got = float(np.sum(g * _tangent(q, d, log)))
        assert got == pytest.approx(want, rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("base", [None, 2])
def test_entropy_and_kl_directional(base: float | None, backend: str) -> None:
    p_logits = np.random.default_rng(8).normal(size=LOGITS.shape)
    p = ce.softmax(p_logits)
    q = ce.softmax(LOGITS)
    _, gh = ce.entropy(q, base=base, return_grad=True)
    _, gk = ce.kl_divergence(p, q, base=base, return_grad=True)
    for d in np.random.default_rng(9).normal(size=(3, *LOGITS.shape)):
        t = _tangent(q, d, log=False)
        want_h = _directional(lambda z: _total(ce.entropy(ce.softmax(z), base=base)), LOGITS, d)
        assert float(np.sum(gh * t)) == pytest.approx(want_h, rel=RTOL, abs=ATOL)
        want_k = _directional(
            lambda z: _total(ce.kl_divergence(p, ce.softmax(z), base=base)), LOGITS, d
        )
        assert float(np.sum(gk * t)) == pytest.approx(want_k, rel=RTOL, abs=ATOL)


BX = rng.normal(0.0, 3.0, (3, 4))
BY_HARD = rng.integers(0, 2, (3, 4)).astype(np.float64)
BY_SOFT = rng.uniform(0.0, 1.0, (3, 4))
BW = rng.uniform(0.5, 2.0, (3, 4))
BPW = np.array([1.0, 2.0, 0.5, 3.0])

BCE_OPTIONS: list[dict[str, Any]] = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"target": BY_SOFT},
    {"weight": BW},
    {"weight": BPW},  # broadcast along the last axis
    {"pos_weight": BPW},
    {"pos_weight": BPW, "target": BY_SOFT, "weight": BW},
    {"label_smoothing": 0.1},
    {"label_smoothing": 0.1, "pos_weight": BPW, "reduction": "none"},
    {"base": 2},
    {"base": 10, "reduction": "sum", "weight": BW},
]


def _bsplit(opts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    kw = dict(opts)
    return kw.pop("target", BY_HARD), kw


@pytest.mark.parametrize("opts", BCE_OPTIONS, ids=[str(i) for i in range(len(BCE_OPTIONS))])
def test_bce_with_logits_finite_differences(opts: dict[str, Any], backend: str) -> None:
    y, kw = _bsplit(opts)
    _, g = ce.binary_cross_entropy_with_logits(BX, y, return_grad=True, **kw)
    fd = _central(lambda z: _total(ce.binary_cross_entropy_with_logits(z, y, **kw)), BX)
    np.testing.assert_allclose(g, fd, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("opts", BCE_OPTIONS, ids=[str(i) for i in range(len(BCE_OPTIONS))])
def test_bce_from_probs_finite_differences(opts: dict[str, Any], backend: str) -> None:
    y, kw = _bsplit(opts)
    q = np.random.default_rng(12).uniform(0.05, 0.95, BX.shape)
    _, g = ce.binary_cross_entropy(q, y, return_grad=True, **kw)
    fd = _central(lambda t: _total(ce.binary_cross_entropy(t, y, **kw)), q)
    np.testing.assert_allclose(g, fd, rtol=RTOL, atol=ATOL)


def test_activation_derivatives_finite_differences(backend: str) -> None:
    x = np.linspace(-30.0, 30.0, 61)
    h = 1e-6 * np.maximum(1.0, np.abs(x))
    for fn in (ce.sigmoid, ce.log_sigmoid):
        _, d = fn(x, return_grad=True)
        fd = (fn(x + h) - fn(x - h)) / ((x + h) - (x - h))  # elementwise functions
        np.testing.assert_allclose(d, fd, rtol=RTOL, atol=ATOL)
