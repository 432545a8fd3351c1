"""crossentropy.torch: the drop-in losses against torch.nn.functional (values and gradients),
accuracy against a float64 reference, gradcheck, second derivatives and error messages."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crossentropy as ce
import crossentropy.torch as cet

DTYPES = (torch.float32, torch.float64, torch.bfloat16)
SHAPES = ((7,), (5, 7), (3, 5, 3), (3, 5, 3, 2))  # (C), (N, C), (N, C, d1), (N, C, d1, d2)


def _ulp(x: torch.Tensor, dtype: torch.dtype) -> float:
    """Spacing of `dtype` at the largest |x| (x in float64)."""
    v = x.detach().double().abs()
    v = v[~v.isnan()]
    m = float(v.max()) if v.numel() else 0.0
    return torch.finfo(dtype).eps * 2.0 ** math.floor(math.log2(m)) if m else 0.0


def _err(a: torch.Tensor, ref: torch.Tensor) -> float:
    a, ref = a.detach().double(), ref.detach().double()
    both_nan = a.isnan() & ref.isnan()
    d = torch.where(both_nan, 0.0, (a - ref).abs())
    return float(d.max()) if d.numel() else 0.0


def _ce_cases(n_cases: int = 140) -> list[tuple[object, ...]]:
    combos = list(itertools.product(
        SHAPES, DTYPES, ("index", "index_some_ignored", "index_all_ignored", "prob"),
        (False, True), (0.0, 0.15), ("mean", "sum", "none"), (-100, 2),
    ))
    rng = np.random.default_rng(20261127)
    pick = rng.choice(len(combos), size=n_cases, replace=False)
    # every other case runs the compiled (numba) kernel, the rest the NumPy reference
    return [(*combos[i], ("numba", "numpy")[k % 2]) for k, i in enumerate(sorted(pick))]


def _make_inputs(shape, dtype, kind, weighted, ignore_index, seed):
    g = torch.Generator().manual_seed(seed)
    C = shape[0] if len(shape) == 1 else shape[1]
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3).to(dtype)
    batch = () if len(shape) == 1 else (shape[0], *shape[2:])
    if kind == "prob":
        t = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64) * 2, dim=-1
                          if len(shape) == 1 else 1).to(dtype)
    else:
        t = torch.randint(0, C, batch, generator=g)
        if kind == "index_all_ignored":
            t = torch.full(batch, ignore_index)
        elif kind == "index_some_ignored" and t.numel() > 1:
            t.view(-1)[::2] = ignore_index
    w = torch.rand(C, generator=g, dtype=torch.float64).to(dtype) + 0.1 if weighted else None
    return x, t, w


@pytest.mark.parametrize(
    ("shape", "dtype", "kind", "weighted", "eps", "reduction", "ii", "backend"), _ce_cases()
)
def test_cross_entropy_matches_torch(shape, dtype, kind, weighted, eps, reduction, ii, backend):
    with ce.use_backend(backend):
        _check_against_torch(shape, dtype, kind, weighted, eps, reduction, ii)


def _check_against_torch(shape, dtype, kind, weighted, eps, reduction, ii):
    x, t, w = _make_inputs(shape, dtype, kind, weighted, ii, seed=hash((shape, kind)) % 1000)
    kw = {"weight": w, "ignore_index": ii, "label_smoothing": eps, "reduction": reduction}
    if kind == "prob" and ii != -100:  # torch 2.13 refuses ignore_index with probabilities
        with pytest.raises(RuntimeError, match="ignore_index"):
            F.cross_entropy(x, t, **kw)
        with pytest.raises(ValueError, match="ignore_index"):
            cet.cross_entropy(x, t, **kw)
        return
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    ours = cet.cross_entropy(xa, t, **kw)
    theirs = F.cross_entropy(xb, t, **kw)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    g = torch.rand(ours.shape, dtype=torch.float64).to(ours.dtype) + 0.5
    (ga,) = torch.autograd.grad(ours, xa, g)
    (gb,) = torch.autograd.grad(theirs, xb, g)
    # float64 reference: torch's own formulas on float64 copies
    x64 = x.double().requires_grad_()
    kw64 = {**kw, "weight": None if w is None else w.double()}
    t64 = t.double() if kind == "prob" else t
    ref = F.cross_entropy(x64, t64, **kw64)
    (gref,) = torch.autograd.grad(ref, x64, g.double())
    # semantics: same numbers as torch within torch's own rounding
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=tol, atol=tol,
                               equal_nan=True)
    torch.testing.assert_close(ga.double(), gb.double(), rtol=tol, atol=tol, equal_nan=True)
    # accuracy: at least torch's, against the float64 reference (1 ulp of slack for ties);
    # float64 results are checked against higher precision in the CPU kernel's own tests
    for a, b, r in ((ours, theirs, ref), (ga, gb, gref)) if dtype != torch.float64 else ():
        assert _err(a, r) <= _err(b, r) + _ulp(r, dtype) + 1e-300


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_options_beyond_torch(dtype, kind):
    """base, z_loss, softcap and return_lse against formulas written out in float64."""
    x, t, w = _make_inputs((6, 5, 3), dtype, kind, True, -100, seed=3)
    if kind == "index":
        t[0, 1] = -100
    cap, zl = 4.0, 1e-2
    loss, lse = cet.cross_entropy(x, t, w, label_smoothing=0.1, base=2, z_loss=zl, softcap=cap,
                                  return_lse=True, reduction="none")
    x64 = x.double()
    z = cap * torch.tanh(x64 / cap)
    lse_ref = torch.logsumexp(z, dim=1)
    per = F.cross_entropy(z, t.double() if kind == "prob" else t, w.double(),
                          label_smoothing=0.1, reduction="none")
    counted = torch.ones_like(per) if kind == "prob" else (t != -100).double()
    ref = (per + zl * lse_ref**2 * counted) / math.log(2)
    tol = {torch.float64: 1e-12, torch.float32: 2e-6, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(loss.double(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), lse_ref, rtol=tol, atol=tol)
    assert loss.dtype == dtype and lse.shape == (6, 3)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 5, 3, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randint(0, 5, (4, 3), generator=g)
    t[1, 2] = -100
    w = torch.rand(5, dtype=torch.float64, generator=g)
    for kw in ({}, {"weight": w, "label_smoothing": 0.2}, {"z_loss": 0.05, "softcap": 2.5},
               {"reduction": "none", "base": 2}, {"reduction": "sum", "weight": w}):
        assert torch.autograd.gradcheck(lambda x, kw=kw: cet.cross_entropy(x, t, **kw), (x,))
        assert torch.autograd.gradgradcheck(lambda x, kw=kw: cet.cross_entropy(x, t, **kw),
                                            (x,))
    # lse output, and probability targets (differentiable in the target too, as torch)
    assert torch.autograd.gradcheck(
        lambda x: cet.cross_entropy(x, t, return_lse=True, reduction="none", softcap=3.0), (x,)
    )
    p = torch.softmax(torch.randn(4, 5, 3, dtype=torch.float64, generator=g), 1)
    p.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, p: cet.cross_entropy(x, p, w, label_smoothing=0.1, z_loss=0.01), (x, p)
    )
    assert torch.autograd.gradgradcheck(lambda x, p: cet.cross_entropy(x, p), (x, p))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_cpu_gradient_is_computed_in_forward(monkeypatch, backend):
    """The fused kernel runs once (forward); backward only scales its gradient.  (The
    torch layer computes on the backend the NumPy dispatch picks: the kernels, or the
    NumPy core under the "numpy" setting; the other one is never called.)"""
    import crossentropy
    import crossentropy._dispatch as dispatch

    if backend == "numba":
        pytest.importorskip("numba")
    calls = []
    for be in (dispatch.NUMBA, dispatch.CORE):
        inner = type(be).ce_rows

        def counting(self, *args, _inner=inner, **kwargs):
            calls.append(self.name)
            return _inner(self, *args, **kwargs)

        monkeypatch.setattr(type(be), "ce_rows", counting)
    want = ["numba" if backend == "numba" else "core"]
    x = torch.randn(9, 11, requires_grad=True)
    t = torch.randint(0, 11, (9,))
    with crossentropy.use_backend(backend):
        loss = cet.cross_entropy(x, t, label_smoothing=0.1)
        assert calls == want
        (g1,) = torch.autograd.grad(loss, x, torch.tensor(1.0), retain_graph=True)
        (g2,) = torch.autograd.grad(loss, x, torch.tensor(2.5))
    assert calls == want
    torch.testing.assert_close(g2, 2.5 * g1)
    ref = torch.autograd.grad(F.cross_entropy(x, t, label_smoothing=0.1), x)[0]
    torch.testing.assert_close(g1, ref)


def test_modules_match_torch():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 4, generator=g)
    t = torch.randint(0, 4, (6,), generator=g)
    w = torch.rand(4, generator=g)
    ours, theirs = cet.CrossEntropyLoss(w, label_smoothing=0.1), torch.nn.CrossEntropyLoss(
        w, label_smoothing=0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    torch.testing.assert_close(ours(x, t), theirs(x, t))
    q, y = torch.rand(6, 4, generator=g) * 0.9 + 0.05, torch.rand(6, 4, generator=g)
    torch.testing.assert_close(cet.BCELoss(w)(q, y), torch.nn.BCELoss(w)(q, y))
    pw = torch.rand(4, generator=g) + 0.5
    torch.testing.assert_close(cet.BCEWithLogitsLoss(w, pos_weight=pw)(x, y),
                               torch.nn.BCEWithLogitsLoss(w, pos_weight=pw)(x, y))
    assert float(cet.CrossEntropyLoss(base=2)(torch.zeros(1, 4), torch.tensor([1]))) == 2.0


# --------------------------------------------------------------------------- binary


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_match_torch(dtype, reduction, weighted):
    g = torch.Generator().manual_seed(7)
    shape = (5, 3, 2)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 4).to(dtype)
    y = torch.rand(shape, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.rand(3, 2, generator=g, dtype=torch.float64) + 0.1).to(dtype) if weighted else None
    pw = (torch.rand(2, generator=g, dtype=torch.float64) + 0.5).to(dtype) if weighted else None
    q = torch.sigmoid(x.double()).clamp(0.01, 0.99).to(dtype)
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 5e-2}[dtype]
    for ours_fn, torch_fn, inp, extra in (
        (cet.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, x,
         {"pos_weight": pw}),
        (cet.binary_cross_entropy, F.binary_cross_entropy, q, {}),
    ):
        a_in, b_in = inp.clone().requires_grad_(), inp.clone().requires_grad_()
        a = ours_fn(a_in, y, w, reduction=reduction, **extra)
        b = torch_fn(b_in, y, w, reduction=reduction, **extra)
        assert a.dtype == b.dtype and a.shape == b.shape
        gout = torch.ones_like(a) * 1.5
        (ga,) = torch.autograd.grad(a, a_in, gout)
        (gb,) = torch.autograd.grad(b, b_in, gout)
        torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)
        torch.testing.assert_close(ga.double(), gb.double(), rtol=tol, atol=tol)


def test_binary_true_values_where_torch_is_wrong():
    f64 = torch.float64
    # mpmath.mp.dps = 50; mpmath.log1p(mpmath.exp(-40)) -> 4.2483542552915889e-18
    x, y = torch.tensor([-40.0], dtype=f64, requires_grad=True), torch.tensor([0.0], dtype=f64)
    v = cet.binary_cross_entropy_with_logits(x, y)
    assert v.item() == pytest.approx(4.2483542552915889e-18, rel=1e-15)
    assert F.binary_cross_entropy_with_logits(x, y).item() == 0.0  # torch's value (documented)
    # d/dx softplus(x) = sigmoid(x); mpmath: 1/(1+mpmath.exp(40)) -> 4.2483542552915889e-18
    (g,) = torch.autograd.grad(v, x)
    assert float(g) == pytest.approx(4.2483542552915889e-18, rel=1e-15)
    # mpmath: -mpmath.log(mpmath.mpf('1e-300')) -> 690.77552789821370520539...
    q = torch.tensor([1e-300], dtype=f64)
    # the exact form is one keyword away (log_clamp=None); by default torch's clamp at -100
    assert float(cet.binary_cross_entropy(q, torch.tensor([1.0], dtype=f64), log_clamp=None)
                 ) == pytest.approx(690.7755278982137, rel=1e-15)
    assert float(F.binary_cross_entropy(q, torch.tensor([1.0], dtype=f64))) == 100.0  # clamp
    assert float(cet.binary_cross_entropy(q, torch.tensor([1.0], dtype=f64))) == 100.0
    # q = 0, y = 0: loss 0 and the true gradient (1 - y) / (1 - q) = 1 (torch: 0)
    q0 = torch.tensor([0.0], dtype=f64, requires_grad=True)
    v0 = cet.binary_cross_entropy(q0, torch.tensor([0.0], dtype=f64), log_clamp=None)
    (g0,) = torch.autograd.grad(v0, q0)
    assert v0.item() == 0.0 and g0.item() == 1.0


def test_binary_gradcheck():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.rand(4, 3, dtype=torch.float64, generator=g)
    pw = torch.rand(3, dtype=torch.float64, generator=g) + 0.5
    q = (torch.rand(4, 3, dtype=torch.float64, generator=g) * 0.8 + 0.1).requires_grad_()
    fl = lambda x: cet.binary_cross_entropy_with_logits(x, y, pos_weight=pw, base=2)  # noqa: E731
    fp = lambda q: cet.binary_cross_entropy(q, y, reduction="sum")  # noqa: E731
    for f, a in ((fl, x), (fp, q)):
        assert torch.autograd.gradcheck(f, (a,))
        assert torch.autograd.gradgradcheck(f, (a,))


# --------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
    x = torch.randn(3, 4, 2)
    with pytest.raises(ValueError, match=r"target\[1, 0\] = 4 is out of range \[0, 4\)"):
        cet.cross_entropy(x, torch.tensor([[0, 1], [4, 0], [1, 1]]))
    with pytest.raises(ValueError, match=r"target\[0, 1\] = -1"):
        cet.cross_entropy(x, torch.tensor([[0, -1], [3, 0], [1, 1]]))
    with pytest.raises(ValueError, match="shape"):
        cet.cross_entropy(x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        cet.cross_entropy(x, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="weight"):
        cet.cross_entropy(x, torch.zeros(3, 2, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match="reduction"):
        cet.cross_entropy(x, torch.zeros(3, 2, dtype=torch.long), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        cet.cross_entropy(x, torch.zeros(3, 2, dtype=torch.long), label_smoothing=1.5)
    with pytest.raises(ValueError, match="softcap"):
        cet.cross_entropy(x, torch.zeros(3, 2, dtype=torch.long), softcap=0.0)
    with pytest.raises(ValueError, match="z_loss"):
        cet.cross_entropy(x, torch.zeros(3, 2, dtype=torch.long), z_loss=-1.0)
    with pytest.raises(ValueError, match="base"):
        cet.cross_entropy(x, torch.zeros(3, 2, dtype=torch.long), base=1)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]; element 2"):
        cet.binary_cross_entropy(torch.tensor([0.5, 0.2, 1.5]), torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        cet.binary_cross_entropy_with_logits(torch.zeros(3), torch.zeros(2))


def test_import_crossentropy_does_not_import_torch():
    code = "import crossentropy, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
