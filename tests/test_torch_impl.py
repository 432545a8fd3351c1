"""Every torch path against the NumPy core, in ulps, confident rows included; impl= dispatch.

The core (``crossentropy.cross_entropy(..., reduction='none')``) is the oracle (it is
itself checked against mpmath in test_accuracy.py).  Bounds: float64 <= 4 ulp, float32 <=
1 ulp (the torch paths compute in float64 on the CPU and round once).  Gradients are
compared with ``torch.nn.functional.cross_entropy`` in float64.  Linear paths use inputs
whose products are exact (quarter-integers times integers), so the logits are exactly those
given to the core.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crossentropy as ce
import crossentropy.torch as cet
from _torch_versions import (
    HAS_TORCH_LINEAR_CE,
    needs_torch_linear_ce,
    torch_linear_cross_entropy,
)
from crossentropy.torch import ChunkPlan

C = 7


def _logits(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, C, generator=g, dtype=torch.float64) * 4
    x[0] = torch.tensor([40.0, 0, 0, 0, 0, 0, 0])  # confident: loss 6 e^-40 ~ 2.5e-17
    x[1] = torch.tensor([700.0, 2, 1, 0, -3, 5, 1])  # confident, huge max
    x[2] = torch.tensor([1.0, 1, 1, 0.5, 1, 0, 1])  # ties at the max
    x[3, 4] = -math.inf  # a class with probability 0
    return x.to(dtype)


def _targets() -> torch.Tensor:
    return torch.tensor([0, 0, 1, 2, 3, -100, 6, 5, 0])


def _ulp(got: np.ndarray, want: np.ndarray) -> float:
    """Largest distance in units of the last place of `want` (exact equality is 0)."""
    got, want = np.asarray(got), np.asarray(want)
    tiny = np.finfo(want.dtype).tiny
    fin = np.where(np.isfinite(want), np.abs(want), 1.0)
    sp = np.spacing(np.maximum(fin, tiny)).astype(np.float64)
    with np.errstate(invalid="ignore"):
        d = np.abs(got.astype(np.float64) - want.astype(np.float64))
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    d = np.where(same, 0.0, d)
    return float(np.max(d / sp)) if d.size else 0.0


BOUND = {torch.float64: 4.0, torch.float32: 1.0}
OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"weight": True},
    {"weight": True, "label_smoothing": 0.2, "base": 2},
]


def _core(x: torch.Tensor, t: np.ndarray, opt: dict, w: np.ndarray | None,
          ignore: int | None = -100) -> np.ndarray:
    kw = {k: v for k, v in opt.items() if k != "weight"}
    return ce.cross_entropy(x.numpy(), t, weight=w, reduction="none", ignore_index=ignore,
                            **kw)


def _weight(dtype: torch.dtype) -> torch.Tensor:
    return torch.linspace(0.25, 2.0, C, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt", OPTIONS)
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_index_paths_within_ulps_of_core(dtype, opt, impl):
    x, t = _logits(dtype), _targets()
    w = _weight(dtype) if opt.get("weight") else None
    kw = {k: v for k, v in opt.items() if k != "weight"}
    want = _core(x, t.numpy(), opt, None if w is None else w.numpy())
    got = cet.cross_entropy(x, t, w, reduction="none", impl=impl, **kw)
    assert got.dtype == dtype
    assert _ulp(got.numpy(), want) <= BOUND[dtype]
    # N-D (N, C, d) and unbatched (C,) reshape to the same rows
    nd = cet.cross_entropy(x.T.unsqueeze(0), t.unsqueeze(0), w, reduction="none", impl=impl,
                           **kw)
    assert _ulp(nd[0].numpy(), want) <= BOUND[dtype]
    one = cet.cross_entropy(x[0], t[0], w, reduction="none", impl=impl, **kw)
    assert one.shape == () and _ulp(one.numpy(), want[:1]) <= BOUND[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("opt", OPTIONS)
def test_probability_targets_within_ulps_of_core(dtype, opt):
    x = _logits(dtype)
    t = torch.tensor([0, 0, 1, 2, 3, 4, 6, 5, 0])
    onehot = F.one_hot(t, C).to(dtype)
    soft = torch.softmax(torch.randn(9, C, generator=torch.Generator().manual_seed(1),
                                     dtype=torch.float64), 1).to(dtype)
    w = _weight(dtype) if opt.get("weight") else None
    kw = {k: v for k, v in opt.items() if k != "weight"}
    for target in (onehot, soft):
        want = _core(x, target.numpy(), opt, None if w is None else w.numpy())
        got = cet.cross_entropy(x, target, w, reduction="none", **kw)
        assert _ulp(got.numpy(), want) <= BOUND[dtype], target


def test_probability_target_confident_row_regression():
    """Issue 10: one-hot targets returned 0 for a true loss of 8.4967e-18."""
    # mpmath.mp.dps = 50; mpmath.log1p(2 * mpmath.exp(-40)) = 8.49670851058317795456e-18
    x = torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64)
    got = cet.cross_entropy(x, torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64),
                            reduction="none")
    assert abs(float(got[0]) - 8.496708510583178e-18) <= 4 * np.spacing(8.5e-18)


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("cap", [None, 2.5])
def test_gradients_match_torch_float64(impl, cap):
    x, t = _logits(torch.float64), _targets()
    x[1, 0] = 40.0  # keep torch's own softmax finite in float64 for the comparison
    w = _weight(torch.float64)
    for red in ("mean", "sum", "none"):
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        out = cet.cross_entropy(a, t, w, reduction=red, label_smoothing=0.1, softcap=cap,
                                impl=impl)
        zb = b if cap is None else cap * torch.tanh(b / cap)
        ref = F.cross_entropy(zb, t, w, reduction=red, label_smoothing=0.1)
        g = torch.linspace(-1, 2, out.numel(), dtype=torch.float64).reshape(out.shape)
        (ga,) = torch.autograd.grad(out, a, g)
        (gb,) = torch.autograd.grad(ref, b, g)
        torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-15)


def _exact_linear(V: int, dtype: torch.dtype, n: int = 11, d: int = 4):
    g = torch.Generator().manual_seed(5)
    h = torch.randint(-4, 5, (n, d), generator=g).to(torch.float64) / 4
    W = torch.randint(-8, 9, (V, d), generator=g).to(torch.float64)
    h[0] = torch.tensor([4.0, 0, 0, 0])
    W[0] = torch.tensor([10.0, 0, 0, 0])  # row 0: logit 40 on class 0, confident
    t = torch.randint(0, V, (n,), generator=g)
    t[0], t[3] = 0, -100
    return h.to(dtype), W.to(dtype), t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("plan", [None, ChunkPlan(rows=4), ChunkPlan(rows=4, vocab=3)])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_linear_paths_within_ulps_of_core(dtype, plan, eps):
    V = 10
    h, W, t = _exact_linear(V, dtype)
    z = (h.double() @ W.double().T).to(dtype)  # exact products
    want = ce.cross_entropy(z.numpy(), t.numpy(), reduction="none", label_smoothing=eps)
    for impl in ("cpu", "torch"):
        got = cet.linear_cross_entropy(h, W, t, reduction="none", label_smoothing=eps,
                                       chunks=plan, impl=impl)
        assert _ulp(got.numpy(), want) <= BOUND[dtype], impl


def test_impl_errors():
    x, t = _logits(torch.float64), _targets()
    with pytest.raises(ValueError, match="impl must be one of"):
        cet.cross_entropy(x, t, impl="gpu")
    with pytest.raises(RuntimeError, match="impl='triton'"):
        cet.binary_cross_entropy_with_logits(x, torch.zeros_like(x), impl="triton")
    if not os.environ.get("TRITON_INTERPRET"):
        # float64 CPU tensors without the interpreter: never a silent fallback
        with pytest.raises(RuntimeError, match="impl='triton'"):
            cet.cross_entropy(x, t, impl="triton")


# --------------------------------------------------------------------------- Triton (interpreter)

_TRITON_SCRIPT = textwrap.dedent(
    """
    import os, sys
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, crossentropy.triton as tr
    if not hasattr(tr, "cross_entropy_2d"):
        print("SKIP: crossentropy.triton.cross_entropy_2d does not exist yet"); sys.exit(0)
    import crossentropy.torch as cet
    torch.manual_seed(0)
    def check(a, b, tol=2e-5):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    def both(fn, *args, ngrad=1, **kw):
        xs = [a.clone().requires_grad_() if i < ngrad else a for i, a in enumerate(args)]
        ys = [a.clone().requires_grad_() if i < ngrad else a for i, a in enumerate(args)]
        out_t = fn(*xs, impl="triton", **kw)
        out_c = fn(*ys, impl="cpu", **kw)
        check(out_t, out_c)
        g = torch.rand(out_t.shape)
        gt = torch.autograd.grad(out_t, [x for x in xs if x.requires_grad], g)
        gc = torch.autograd.grad(out_c, [y for y in ys if y.requires_grad], g)
        for a, b in zip(gt, gc):
            check(a, b)
    x, t = torch.randn(13, 37), torch.randint(0, 37, (13,))
    t[2] = -100
    w = torch.rand(37) + 0.5
    for red in ("mean", "sum", "none"):
        both(cet.cross_entropy, x, t, weight=w, reduction=red, label_smoothing=0.1)
    both(cet.cross_entropy, torch.randn(3, 37, 5), torch.randint(0, 37, (3, 5)))  # N-D
    both(cet.cross_entropy, torch.randn(37), torch.tensor(4), reduction="none")  # unbatched
    both(cet.cross_entropy, x, torch.softmax(torch.randn(13, 37), 1))  # probabilities
    h, W, b = torch.randn(13, 19), torch.randn(41, 19), torch.randn(41)
    tl = torch.randint(0, 41, (13,))
    both(lambda h, W, t, **kw: cet.linear_cross_entropy(h, W, t, linear_bias=b, **kw),
         h, W, tl, ngrad=2)
    lt, st = cet.linear_cross_entropy(h, W, tl, ignore_index=None, reduction="none",
                                      return_lse=True, impl="triton")
    lc, sc = cet.linear_cross_entropy(h, W, tl, ignore_index=None, reduction="none",
                                      return_lse=True, impl="cpu")
    check(lt, lc)
    check(st, sc)
    n = torch.tensor(5.0)
    check(cet.cross_entropy(x, t, normalizer=n, impl="triton"),
          cet.cross_entropy(x, t, normalizer=n, impl="cpu"))
    z3, l3 = torch.randn(2, 4, 37), torch.randint(0, 37, (2, 4))
    check(cet.cross_entropy(z3, l3, shift=True, impl="triton"),
          cet.cross_entropy(z3, l3, shift=True, impl="cpu"))
    print("OK")
    """
)


def test_impl_triton_in_interpreter():
    """impl='triton' through the public API, in the Triton interpreter (a subprocess, so the
    interpreter mode is set before triton is imported), against impl='cpu'."""
    pytest.importorskip("triton")
    r = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    if r.stdout.startswith("SKIP"):
        pytest.skip(r.stdout.strip())
    assert "OK" in r.stdout


@pytest.mark.parametrize("impl", ["auto", "cpu", "torch"])
def test_linear_gradients_match_torch_float64(impl):
    g = torch.Generator().manual_seed(8)
    h = torch.randn(13, 6, generator=g, dtype=torch.float64)
    W = torch.randn(11, 6, generator=g, dtype=torch.float64)
    b = torch.randn(11, generator=g, dtype=torch.float64)
    t = torch.randint(0, 11, (13,), generator=g)
    t[5] = -100
    for red in ("mean", "sum", "none"):
        xs = [v.clone().requires_grad_() for v in (h, W, b)]
        ys = [v.clone().requires_grad_() for v in (h, W, b)]
        out = cet.linear_cross_entropy(xs[0], xs[1], t, linear_bias=xs[2], reduction=red,
                                       label_smoothing=0.1, impl=impl,
                                       chunks=ChunkPlan(rows=4))
        ref = torch_linear_cross_entropy(ys[0], ys[1], t, linear_bias=ys[2], reduction=red,
                                         label_smoothing=0.1)
        torch.testing.assert_close(out, ref, rtol=1e-13, atol=1e-15)
        gout = torch.linspace(-1, 2, out.numel(), dtype=torch.float64).reshape(out.shape)
        for a, c in zip(torch.autograd.grad(out, xs, gout), torch.autograd.grad(ref, ys, gout),
                        strict=True):
            torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-14)


@needs_torch_linear_ce
def test_linear_shapes_like_torch():
    """1-D hidden, ignore_index=None, K-dimensional weights and probability targets give
    torch's F.linear_cross_entropy values."""
    g = torch.Generator().manual_seed(9)
    h = torch.randn(5, 4, generator=g, dtype=torch.float64)
    W = torch.randn(7, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 7, (5,), generator=g)
    for impl in ("cpu", "torch"):
        torch.testing.assert_close(cet.linear_cross_entropy(h[0], W, t[0], impl=impl),
                                   F.linear_cross_entropy(h[0], W, t[0]))
        torch.testing.assert_close(cet.linear_cross_entropy(h, W, t, ignore_index=None,
                                                            impl=impl),
                                   F.linear_cross_entropy(h, W, t, ignore_index=None))
    Wk = torch.randn(7, 3, 4, generator=g, dtype=torch.float64)
    tk = torch.randint(0, 7, (5, 3), generator=g)
    torch.testing.assert_close(cet.linear_cross_entropy(h, Wk, tk),
                               F.linear_cross_entropy(h, Wk, tk))
    p = torch.softmax(torch.randn(5, 7, generator=g, dtype=torch.float64), 1)
    torch.testing.assert_close(cet.linear_cross_entropy(h, W, p),
                               F.linear_cross_entropy(h, W, p))


def test_modules_take_impl():
    x, t = _logits(torch.float64), _targets()
    x[1, 0] = 40.0
    for impl in ("cpu", "torch"):
        torch.testing.assert_close(cet.CrossEntropyLoss(impl=impl)(x, t), F.cross_entropy(x, t))
        y = torch.rand(9, C, dtype=torch.float64)
        torch.testing.assert_close(cet.BCEWithLogitsLoss(impl=impl)(x[4:], y[4:]),
                                   F.binary_cross_entropy_with_logits(x[4:], y[4:]))
        q = torch.sigmoid(x[4:])
        torch.testing.assert_close(cet.BCELoss(impl=impl)(q, y[4:]),
                                   F.binary_cross_entropy(q, y[4:]))
    if HAS_TORCH_LINEAR_CE:
        head = cet.LinearCrossEntropyLoss(4, 7, impl="torch").double()
        ref = torch.nn.LinearCrossEntropyLoss(4, 7).double()
        ref.load_state_dict(head.state_dict())
        h = torch.randn(5, 4, dtype=torch.float64)
        tt = torch.tensor([0, 6, 2, 3, 1])
        torch.testing.assert_close(head(h, tt), ref(h, tt))
    else:  # torch < 2.13 has no module to subclass: the error names the release
        with pytest.raises(ImportError, match=r"torch 2\.13"):
            cet.LinearCrossEntropyLoss(4, 7, impl="torch")
    with pytest.raises(ValueError, match="impl must be one of"):
        cet.CrossEntropyLoss(impl="fast")(x, t)


def test_auto_on_cuda_warns_once_when_kernels_cannot_run(monkeypatch):
    """The dispatch rule, exercised without a GPU: a tensor claiming to be on CUDA with the
    kernels unavailable gets the torch path and one RuntimeWarning."""
    from crossentropy.torch import functional as fn

    class _Cuda:
        type = "cuda"

    class _T:
        device = _Cuda()

    monkeypatch.setattr(fn, "_triton_reason", lambda x: "no GPU here")
    monkeypatch.setattr(fn, "transformed", lambda *ts: False)
    fn._warned.discard("probe")
    with pytest.warns(RuntimeWarning, match="no GPU here"):
        assert fn._resolve_impl("auto", _T(), "probe") == "torch"  # type: ignore[arg-type]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fn._resolve_impl("auto", _T(), "probe") == "torch"  # type: ignore[arg-type]


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("prob", [False, True])
def test_softcap_and_z_loss_float64(impl, prob):
    """Soft cap: the core on c tanh(x / c) (the same float64 operations); z-loss: the core's
    loss plus zeta * lse^2 with lse from crossentropy.logsumexp."""
    x, t = _logits(torch.float64), _targets()
    t = torch.where(t == -100, 1, t)
    target = F.one_hot(t, C).double() if prob else t
    cap, zl = 3.0, 1e-3
    zc = (torch.tanh(x / cap) * cap).numpy()
    want = ce.cross_entropy(zc, t.numpy(), reduction="none")
    got = cet.cross_entropy(x, target, reduction="none", softcap=cap,
                            impl=impl if not prob else "auto")
    assert _ulp(got.numpy(), want) <= 4
    lse = ce.logsumexp(x.numpy(), axis=-1)
    want_z = ce.cross_entropy(x.numpy(), t.numpy(), reduction="none") + zl * lse * lse
    got_z = cet.cross_entropy(x, target, reduction="none", z_loss=zl,
                              impl=impl if not prob else "auto")
    assert _ulp(got_z.numpy(), want_z) <= 4


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_special_rows_against_core(impl):
    """+inf logits (mass shared equally), an all-ignored batch, subnormal class weights."""
    inf = math.inf
    x = torch.tensor([[inf, 0.0, 1.0], [inf, inf, 0.0], [1.0, -inf, 2.0], [0.0, 1.0, 2.0]],
                     dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 1])
    w = torch.tensor([5e-324, 1.0, 2.0], dtype=torch.float64)  # a subnormal weight
    for wt in (None, w):
        want = ce.cross_entropy(x.numpy(), t.numpy(), reduction="none",
                                weight=None if wt is None else wt.numpy())
        got = cet.cross_entropy(x, t, wt, reduction="none", impl=impl)
        assert _ulp(got.numpy(), want) <= 4
    # softmax([inf, inf, 0]) = [1/2, 1/2, 0]: the gradient is softmax - onehot
    a = x.clone().requires_grad_()
    cet.cross_entropy(a, t, reduction="sum", impl=impl).backward()
    torch.testing.assert_close(a.grad[1], torch.tensor([0.5, -0.5, 0.0], dtype=torch.float64))
    # every target ignored: torch's NaN for the mean, 0 for the sum, zero gradients
    ign = torch.full((4,), -100)
    b = x[2:].clone().requires_grad_()
    assert math.isnan(float(cet.cross_entropy(b, ign[2:], impl=impl).detach()))
    s = cet.cross_entropy(b, ign[2:], reduction="sum", impl=impl)
    s.backward()
    assert float(s.detach()) == 0.0 and float(b.grad.abs().sum()) == 0.0


@pytest.mark.parametrize("prob", [False, True])
def test_second_derivatives_match_torch(prob):
    """Hessian-vector products through create_graph=True equal torch's (float64)."""
    x, t = _logits(torch.float64), _targets()
    x[1, 0] = 40.0
    x[3, 4] = 0.0
    t = torch.where(t == -100, 1, t)
    target = torch.softmax(torch.randn(9, C, dtype=torch.float64), 1) if prob else t
    v = torch.randn(9, C, dtype=torch.float64)
    hv = []
    for f in (lambda z: cet.cross_entropy(z, target, label_smoothing=0.1, softcap=4.0),
              lambda z: F.cross_entropy(4.0 * torch.tanh(z / 4.0), target,
                                        label_smoothing=0.1)):
        z = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(f(z), z, create_graph=True)
        hv.append(torch.autograd.grad((g * v).sum(), z)[0])
    torch.testing.assert_close(hv[0], hv[1], rtol=1e-11, atol=1e-13)
