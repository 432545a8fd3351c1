"""crossentropy.torch.linear_cross_entropy: the chunked path against the materialised logits."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import crossentropy as ce
import crossentropy.torch as cet
from _torch_reference import linear_ce_reference as _reference
from _torch_versions import needs_torch_linear_ce, rows_kwargs
from crossentropy._options import CrossEntropyOptions
from crossentropy.torch import _chunks

N, D, V = 37, 6, 13  # odd sizes: chunks of 8 leave a remainder


def _inputs(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
    W = torch.randn(V, D, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
    t = torch.randint(0, V, (N,), generator=g)
    t[3] = t[20] = -100
    cw = torch.rand(V, generator=g, dtype=torch.float64).to(dtype) + 0.2
    return h, W, b, t, cw


CASES = list(itertools.product(
    ("mean", "sum", "none"), (False, True), (0.0, 0.1), (0.0, 1e-2), (None, 3.0), (None, 8, 1)
))


@pytest.mark.parametrize(("reduction", "weighted", "eps", "zl", "cap", "chunk"), CASES[::3])
def test_linear_matches_materialised(reduction, weighted, eps, zl, cap, chunk):
    h, W, b, t, cw = _inputs()
    args = [x.clone().requires_grad_() for x in (h, W, b)]
    kw = {"reduction": reduction, "weight": cw if weighted else None, "eps": eps,
          "z_loss": zl, "softcap": cap, "base": 2}
    out, lse = cet.linear_cross_entropy(
        args[0], args[1], t, linear_bias=args[2], weight=kw["weight"], reduction=reduction,
        label_smoothing=eps, z_loss=zl, softcap=cap, base=2, return_lse=True,
        **rows_kwargs(chunk),
    )
    refs = [x.clone().requires_grad_() for x in (h, W, b)]
    rout, rlse = _reference(*refs, t, **kw)
    torch.testing.assert_close(out, rout, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, rlse, rtol=1e-12, atol=1e-12)
    # upstream gradients that differ per row (the reduction='none' weight-gradient trap)
    g = torch.linspace(-1.0, 2.0, out.numel(), dtype=torch.float64).reshape(out.shape)
    got = torch.autograd.grad(out, args, g, retain_graph=True)
    want = torch.autograd.grad(rout, refs, g, retain_graph=True)
    for a, r in zip(got, want, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)
    # and through the lse output as well
    gl = torch.linspace(0.5, -0.5, N, dtype=torch.float64)
    got = torch.autograd.grad((out * 0).sum() + (lse * gl).sum(), args, allow_unused=True)
    want = torch.autograd.grad((rlse * gl).sum(), refs)
    for a, r in zip(got, want, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


@needs_torch_linear_ce
def test_linear_matches_torch_linear_cross_entropy():
    """Same numbers as torch 2.13's F.linear_cross_entropy: defaults, 1-d input, probability
    targets and a K-dimensional weight."""
    h, W, b, t, cw = _inputs(torch.float32)
    t5 = torch.where(t == -100, 5, t)
    for kw in ({}, {"linear_bias": b, "weight": cw, "reduction": "sum"},
               {"ignore_index": 5, "label_smoothing": 0.2, "reduction": "none", "t": t5}):
        t = kw.pop("t", t)
        torch.testing.assert_close(cet.linear_cross_entropy(h, W, t, **kw),
                                   F.linear_cross_entropy(h, W, t, **kw))
    t0 = torch.tensor(4)
    torch.testing.assert_close(cet.linear_cross_entropy(h[0], W, t0),
                               F.linear_cross_entropy(h[0], W, t0))
    p = torch.softmax(torch.randn(N, V), dim=1)
    torch.testing.assert_close(cet.linear_cross_entropy(h, W, p, label_smoothing=0.1),
                               F.linear_cross_entropy(h, W, p, label_smoothing=0.1))
    with pytest.raises(ValueError, match="ignore_index"):
        cet.linear_cross_entropy(h, W, p, ignore_index=-100)
    Wk = torch.randn(V, 2, D)
    tk = torch.randint(0, V, (N, 2))
    torch.testing.assert_close(cet.linear_cross_entropy(h, Wk, tk),
                               F.linear_cross_entropy(h, Wk, tk))


@needs_torch_linear_ce
def test_module_matches_torch():
    torch.manual_seed(3)
    ours = cet.LinearCrossEntropyLoss(D, V, bias=True, label_smoothing=0.1)
    theirs = torch.nn.LinearCrossEntropyLoss(D, V, bias=True, label_smoothing=0.1)
    theirs.load_state_dict(ours.state_dict())
    h, _, _, t, _ = _inputs(torch.float32)
    a, b = ours(h, t), theirs(h, t)
    torch.testing.assert_close(a, b)
    a.backward()
    b.backward()
    torch.testing.assert_close(ours.linear.weight.grad, theirs.linear.weight.grad)
    torch.testing.assert_close(ours.linear.bias.grad, theirs.linear.bias.grad)


def test_linear_gradcheck():
    h, W, b, t, cw = _inputs()
    args = tuple(x[:9].clone().requires_grad_() if i == 0 else x.clone().requires_grad_()
                 for i, x in enumerate((h, W, b)))
    rows = rows_kwargs(4)
    tt = t[:9]
    for kw in ({"weight": cw, "label_smoothing": 0.1}, {"z_loss": 0.01, "softcap": 2.0},
               {"reduction": "none"}):
        assert torch.autograd.gradcheck(
            lambda h, W, b, kw=kw: cet.linear_cross_entropy(h, W, tt, linear_bias=b,
                                                            **rows, **kw), args)
    loss = cet.linear_cross_entropy(*args[:2], tt)
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad(loss, args[0], create_graph=True)


def test_bfloat16_weight_gradient_is_accumulated_in_float32():
    """512 tokens in chunks of 16: the weight gradient sums 32 chunk products.  Accumulated
    in float32 and rounded once it is within 1 bf16 ulp of the float64 value; the same
    sum accumulated in bf16 (computed here for contrast) is not."""
    g = torch.Generator().manual_seed(9)
    n, d, v = 512, 16, 24
    h = torch.randn(n, d, generator=g).bfloat16()
    W = (torch.randn(v, d, generator=g) * 0.3).bfloat16().requires_grad_()
    t = torch.randint(0, v, (n,), generator=g)
    loss = cet.linear_cross_entropy(h, W, t, reduction="sum", **rows_kwargs(16))
    (gw,) = torch.autograd.grad(loss, W)
    assert gw.dtype == torch.bfloat16
    W64 = W.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(F.cross_entropy(h.double() @ W64.T, t, reduction="sum"), W64)
    ulp = torch.finfo(torch.bfloat16).eps * 2.0 ** torch.floor(torch.log2(ref.abs()))
    assert bool(((gw.double() - ref).abs() <= ulp).all())
    # contrast: the same chunk products summed in bf16
    acc = torch.zeros(v, d, dtype=torch.bfloat16)
    for s in range(0, n, 16):
        z = h[s:s + 16].double() @ W64.detach().T
        dz = torch.softmax(z, 1) - F.one_hot(t[s:s + 16], v)
        acc += (dz.T @ h[s:s + 16].double()).bfloat16()
    assert not bool(((acc.double() - ref).abs() <= ulp).all())


def test_gradients_computed_in_forward(monkeypatch):
    """mean/sum: one kernel call per chunk in forward, none in backward (on whichever
    backend the NumPy dispatch picks for the chunk: the kernels or the core)."""
    import crossentropy._dispatch as dispatch

    calls = []
    for be in (dispatch.NUMBA, dispatch.CORE):
        inner = type(be).ce_rows

        def counting(self, *args, _inner=inner, **kwargs):
            calls.append(self.name)
            return _inner(self, *args, **kwargs)

        monkeypatch.setattr(type(be), "ce_rows", counting)
    h, W, _, t, _ = _inputs(torch.float32)
    W.requires_grad_()
    loss = cet.linear_cross_entropy(h, W, t, **rows_kwargs(10))
    assert len(calls) == 4  # ceil(37 / 10)
    (g1,) = torch.autograd.grad(loss, W, torch.tensor(2.0))
    assert len(calls) == 4
    W2 = W.detach().clone().requires_grad_()
    (ref,) = torch.autograd.grad(2.0 * F.cross_entropy(h @ W2.T, t), W2)
    torch.testing.assert_close(g1, ref)


def test_numba_kernel_and_torch_rows_agree():
    """The chunk loop with the compiled kernel, and with the torch-only row function used on
    other devices, give the same loss and gradients."""
    h, W, _, t, cw = _inputs(torch.float32, seed=4)
    h, W = h.repeat(8, 1), W.repeat(10, 1)  # enough work for the compiled kernel
    t = t.repeat(8)
    cwr = cw.repeat(10).double()
    res = []
    opts = CrossEntropyOptions.create(label_smoothing=0.1, z_loss=1e-3, softcap=5.0)
    plan = _chunks.ChunkPlan(rows=64).resolve(h.shape[0], W.shape[0], 4)
    for rows_fn in (_chunks.cpu_rows, _chunks.torch_rows):
        with ce.use_backend("numba"):
            res.append(_chunks.linear_chunks(
                h, W, t, None, cwr, opts, plan, grad_scale=0.5, row_scale=None,
                g_lse=None, need=(True, True, False), rows_fn=rows_fn))
    for a, b2 in zip(res[0][:4], res[1][:4], strict=True):
        torch.testing.assert_close(a, b2, rtol=2e-5, atol=2e-6)


def test_linear_errors():
    h, W, b, t, _ = _inputs(torch.float32)
    bad = t.clone()
    bad[7] = V
    with pytest.raises(ValueError, match=r"target\[7\] = 13 is out of range"):
        cet.linear_cross_entropy(h, W, bad)
    with pytest.raises(ValueError, match="in_features"):
        cet.linear_cross_entropy(h, W[:, :5], t)
    with pytest.raises(ValueError, match="linear_bias"):
        cet.linear_cross_entropy(h, W, t, linear_bias=b[:5])
    with pytest.raises(TypeError, match="integer"):
        cet.linear_cross_entropy(h, W, t.float())
