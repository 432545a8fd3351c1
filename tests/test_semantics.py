"""Semantics against an independent implementation: PyTorch (float64, CPU).

Where the semantics agree (index targets with weight, ignore_index, label_smoothing and
every reduction; probability targets without weights; BCE with weight and pos_weight),
values and gradients (torch autograd) must match to a few ulp.  Where they differ on
purpose, the difference is tested explicitly:

* probability targets with class weights: torch's mean divides by N, ours by the summed
  weight of the targets, sum_i sum_c w_c t_ic (the same rule as for index targets);
* a mean over zero counted targets (everything ignored): torch NaN, ours 0.0 (zero gradient);
* torch's binary_cross_entropy clamps the log at -100; we do not clip.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import crossentropy as ce

torch = pytest.importorskip("torch")
F = torch.nn.functional

RTOL = 1e-13  # torch's float64 kernels are not correctly rounded; a few hundred eps at most
REDUCTIONS = ["none", "mean", "sum"]


def _t(a: Any, grad: bool = False) -> Any:
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def _torch_value_grad(f: Any, x: Any, reduction: str) -> tuple[Any, Any]:
    """torch value and d(value)/dx; for reduction='none' the gradient of the sum (row i of
    which is the gradient of loss i alone, as our per-row gradients)."""
    xt = _t(x, grad=True)
    out = f(xt)
    (out.sum() if reduction == "none" else out).backward()
    return out.detach().numpy(), xt.grad.numpy()


def _close(a: Any, b: Any, rtol: float = RTOL, atol: float = 1e-300) -> None:
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, equal_nan=True)


def _problem(seed: int, shape: tuple[int, ...] = (7, 5), scale: float = 4.0) -> Any:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * scale
    n = shape[0]
    c = shape[1]
    y = rng.integers(0, c, size=(n, *shape[2:]))
    w = rng.uniform(0.1, 3.0, size=c)
    return rng, x, y, w


# --------------------------------------------------------------------------- categorical


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.7])
@pytest.mark.parametrize("seed", [0, 1])
def test_cross_entropy_index_targets(seed: int, smoothing: float, weighted: bool,
                                     reduction: str) -> None:
    rng, x, y, w = _problem(seed)
    y[rng.random(y.shape) < 0.3] = -100  # some ignored
    y[0] = 1  # at least one counted
    weight = w if weighted else None
    v, g = ce.cross_entropy(x, y, weight=weight, label_smoothing=smoothing,
                            reduction=reduction, return_grad=True)
    tv, tg = _torch_value_grad(
        lambda xt: F.cross_entropy(
            xt, torch.tensor(y), weight=None if weight is None else _t(weight),
            ignore_index=-100, label_smoothing=smoothing, reduction=reduction),
        x, reduction)
    _close(v, tv)
    _close(g, tg)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_cross_entropy_k_dim(reduction: str, ignore_index: int) -> None:
    """(N, C, d1, d2) with the classes on axis 1, as torch lays them out."""
    rng, x, y, w = _problem(3, shape=(3, 4, 2, 5))
    y[rng.random(y.shape) < 0.2] = ignore_index
    v, g = ce.cross_entropy(x, y, axis=1, weight=w, ignore_index=ignore_index,
                            label_smoothing=0.2, reduction=reduction, return_grad=True)
    tv, tg = _torch_value_grad(
        lambda xt: F.cross_entropy(xt, torch.tensor(y), weight=_t(w), ignore_index=ignore_index,
                                   label_smoothing=0.2, reduction=reduction), x, reduction)
    _close(v, tv)
    _close(g, tg)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_cross_entropy_probability_targets_unweighted(reduction: str, smoothing: float) -> None:
    rng, x, _, _ = _problem(4)
    t = ce.softmax(rng.normal(size=x.shape))
    v, g = ce.cross_entropy(x, t, label_smoothing=smoothing, reduction=reduction,
                            return_grad=True)
    tv, tg = _torch_value_grad(
        lambda xt: F.cross_entropy(xt, _t(t), label_smoothing=smoothing, reduction=reduction),
        x, reduction)
    _close(v, tv)
    _close(g, tg)


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_difference_probability_targets_with_weights(smoothing: float) -> None:
    """Documented difference: torch's weighted mean over probability targets divides by N,
    ours by sum_i sum_c w_c t_ic; 'sum' and 'none' agree."""
    rng, x, _, w = _problem(5)
    t = ce.softmax(rng.normal(size=x.shape))
    for red in ("sum", "none"):
        v, g = ce.cross_entropy(x, t, weight=w, label_smoothing=smoothing, reduction=red,
                                return_grad=True)
        tv, tg = _torch_value_grad(lambda xt, red=red: F.cross_entropy(
            xt, _t(t), weight=_t(w), label_smoothing=smoothing, reduction=red), x, red)
        _close(v, tv)
        _close(g, tg)
    v, g = ce.cross_entropy(x, t, weight=w, label_smoothing=smoothing, return_grad=True)
    tv, tg = _torch_value_grad(lambda xt: F.cross_entropy(
        xt, _t(t), weight=_t(w), label_smoothing=smoothing), x, "mean")
    n = x.shape[0]
    omega = float(np.sum(t * w))  # the summed weight of the targets
    assert abs(omega - n) > 0.1  # the two rules really differ here
    _close(v * omega / n, tv)
    _close(g * omega / n, tg)
    # with one-hot rows, ours equals torch's index-target mean (divide by sum of w[y_i])
    y = np.argmax(t, axis=-1)
    v1 = ce.cross_entropy(x, ce.one_hot(y, x.shape[1]), weight=w)
    tv1 = F.cross_entropy(_t(x), torch.tensor(y), weight=_t(w)).item()
    _close(v1, tv1)


def test_difference_all_ignored_mean() -> None:
    """Documented difference: a mean over zero counted targets is 0.0 (torch: NaN)."""
    x = np.random.default_rng(6).normal(size=(4, 3))
    y = np.full(4, -100)
    v, g = ce.cross_entropy(x, y, return_grad=True)
    tv, tg = _torch_value_grad(lambda xt: F.cross_entropy(xt, torch.tensor(y)), x, "mean")
    assert np.isnan(tv)
    assert v == 0.0 and not np.signbit(v)
    np.testing.assert_array_equal(g, 0.0)
    np.testing.assert_array_equal(np.nan_to_num(tg), 0.0)
    # 'sum' agrees: 0
    _close(ce.cross_entropy(x, y, reduction="sum"),
           F.cross_entropy(_t(x), torch.tensor(y), reduction="sum").item())


# --------------------------------------------------------------------------- binary


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("pos_weighted", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_bce_with_logits(reduction: str, weighted: bool, pos_weighted: bool, soft: bool) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6, 4)) * 5
    y = rng.random(size=(6, 4)) if soft else (rng.random(size=(6, 4)) < 0.5).astype(float)
    w = rng.uniform(0.0, 2.0, size=(6, 4)) if weighted else None
    pw = rng.uniform(0.1, 3.0, size=4) if pos_weighted else None  # one per class, broadcast
    v, g = ce.binary_cross_entropy_with_logits(x, y, weight=w, pos_weight=pw,
                                               reduction=reduction, return_grad=True)
    tv, tg = _torch_value_grad(lambda xt: F.binary_cross_entropy_with_logits(
        xt, _t(y), weight=None if w is None else _t(w),
        pos_weight=None if pw is None else _t(pw), reduction=reduction), x, reduction)
    # torch's max(x, 0) - x y + log1p(e^-|x|) has an absolute error of a few eps |x|
    # (ours is accurate to a few ulp: at x = -9.506, y = 0 torch is off by 5e-16, 7e-12
    # relative, against mpmath's 7.439283714792826e-05), so compare with that bound
    _close(v, tv, atol=16 * np.finfo(np.float64).eps * np.max(np.abs(x)) * 6)
    _close(g, tg)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_probs(reduction: str, weighted: bool) -> None:
    rng = np.random.default_rng(8)
    q = rng.uniform(1e-6, 1 - 1e-6, size=(5, 3))  # no clamping in torch here
    y = rng.random(size=(5, 3))
    w = rng.uniform(0.0, 2.0, size=(5, 3)) if weighted else None
    v, g = ce.binary_cross_entropy(q, y, weight=w, reduction=reduction, return_grad=True)
    tv, tg = _torch_value_grad(lambda qt: F.binary_cross_entropy(
        qt, _t(y), weight=None if w is None else _t(w), reduction=reduction), q, reduction)
    _close(v, tv)
    _close(g, tg, rtol=1e-12)


def test_difference_bce_no_clamp() -> None:
    """Documented difference: torch clamps log(q) at -100; we give the true -log q."""
    q = np.array([1e-300, 1e-50, 0.5])
    y = np.array([1.0, 1.0, 1.0])
    ours = ce.binary_cross_entropy(q, y, reduction="none")
    theirs = F.binary_cross_entropy(_t(q), _t(y), reduction="none").numpy()
    np.testing.assert_array_equal(theirs[:2], 100.0)  # clamped
    _close(ours[:2], -np.log(q[:2]))  # 690.78 and 115.13
    assert ours[0] > 690.0 and ours[1] > 115.0
    _close(ours[2], theirs[2])
    # q = 0, y = 1: torch 100, ours +inf
    assert F.binary_cross_entropy(_t([0.0]), _t([1.0])).item() == 100.0
    assert ce.binary_cross_entropy(0.0, 1.0) == np.inf


def test_difference_bce_with_logits_tiny_loss() -> None:
    """Not a semantic difference but a precision one: torch's max(x,0) - x y + log1p(e^-|x|)
    rounds the loss at x = -40, y = 0 to 0 in float32; ours keeps it (4.25e-18)."""
    ours = ce.binary_cross_entropy_with_logits(np.float32(-40.0), np.float32(0.0))
    assert ours.dtype == np.float32 and ours > 0
    np.testing.assert_allclose(float(ours), 4.248354255291589e-18, rtol=1e-6)


# --------------------------------------------------------------------------- activations


def test_activations_match_torch() -> None:
    rng = np.random.default_rng(9)
    x = rng.normal(size=(5, 7)) * 30
    xt = _t(x)
    _close(ce.softmax(x, axis=0), torch.softmax(xt, dim=0).numpy())
    # torch's x - logsumexp(x) has an absolute error of a few eps |x| near log p = 0, where
    # ours keeps full relative precision (see the log_softmax docstring)
    eps = np.finfo(np.float64).eps
    _close(ce.log_softmax(x), torch.log_softmax(xt, dim=-1).numpy(),
           atol=8 * eps * np.max(np.abs(x)))
    _close(ce.logsumexp(x, axis=1), torch.logsumexp(xt, dim=1).numpy())
    _close(ce.sigmoid(x), torch.sigmoid(xt).numpy())
    _close(ce.log_sigmoid(x), F.logsigmoid(xt).numpy())
    for f, tf in ((ce.sigmoid, torch.sigmoid), (ce.log_sigmoid, F.logsigmoid)):
        _, d = f(x, return_grad=True)
        _, td = _torch_value_grad(tf, x, "none")
        # torch's logsigmoid backward forms 1 - sigmoid(x)-like differences: absolute error
        # ~eps where the derivative is tiny (ours: sigmoid(-x), relative precision)
        _close(d, td, rtol=1e-12, atol=4 * eps)


def test_entropy_and_kl_match_torch() -> None:
    rng = np.random.default_rng(10)
    p = ce.softmax(rng.normal(size=(4, 6)))
    q = ce.softmax(rng.normal(size=(4, 6)))
    _close(ce.entropy(p), torch.distributions.Categorical(probs=_t(p)).entropy().numpy())
    # torch.kl_div(input=log q, target=p) is the elementwise p (log p - log q)
    d, g = ce.kl_divergence(p, q, return_grad=True)
    qt = _t(q, grad=True)
    tk = F.kl_div(torch.log(qt), _t(p), reduction="none").sum(-1)
    tk.sum().backward()
    _close(d, tk.detach().numpy(), rtol=1e-12)
    _close(g, qt.grad.numpy(), rtol=1e-12)
