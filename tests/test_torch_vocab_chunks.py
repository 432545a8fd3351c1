"""linear_cross_entropy with the vocabulary cut into slices (online log-sum-exp).

Each case runs three ways: forced vocabulary slices (``chunks=ChunkPlan(vocab=...)``), the
token-only chunked path (whole logit rows through the fused kernel), and the materialised logits
through ``torch.nn.functional.cross_entropy`` and ``crossentropy.torch.cross_entropy``.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import crossentropy.torch as cet
from _torch_reference import linear_ce_reference
from _torch_versions import rows_kwargs
from crossentropy.torch import ChunkPlan, _chunks

N, D = 29, 5  # odd: token chunks of 8 leave a remainder


def _inputs(V, dtype=torch.float64, seed=0, all_ignored=False):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
    W = torch.randn(V, D, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
    t = torch.randint(0, V, (N,), generator=g)
    t[0], t[7], t[8] = 0, V - 1, V - 1  # first and last class (slice edges)
    t[3] = t[20] = -100
    if all_ignored:
        t[:] = -100
    cw = (torch.rand(V, generator=g, dtype=torch.float64) + 0.2).to(dtype)
    return h, W, b, t, cw


def _run(h, W, b, t, cw, *, vocab_chunk, reduction, eps, zl, cap, chunk, budget=None):
    """(out, lse, grads of h, W, b) from linear_cross_entropy, with an upstream gradient
    that differs per row and a gradient through lse."""
    plan = ChunkPlan(vocab=vocab_chunk) if budget is None else ChunkPlan(
        vocab=vocab_chunk, budget_bytes=budget)
    args = [x.clone().requires_grad_() for x in (h, W, b)]
    out, lse = cet.linear_cross_entropy(
        args[0], args[1], t, linear_bias=args[2], weight=cw, reduction=reduction,
        label_smoothing=eps, z_loss=zl, softcap=cap, return_lse=True,
        **rows_kwargs(chunk, plan),
    )
    return out, lse, _grads(out, lse, args)


def _grads(out, lse, args):
    g = torch.linspace(-1.0, 2.0, out.numel(), dtype=torch.float64).reshape(out.shape)
    gl = torch.linspace(0.5, -0.5, lse.numel(), dtype=torch.float64)
    total = (out.double() * g).sum() + (lse.double() * gl).sum()
    return torch.autograd.grad(total, args)


def _materialised(h, W, b, t, cw, *, reduction, eps, zl, cap, use_torch):
    """Full logits, through F.cross_entropy (+ z-loss) or crossentropy.torch.cross_entropy."""
    args = [x.clone().requires_grad_() for x in (h, W, b)]
    if use_torch:
        out, lse = linear_ce_reference(*args, t, reduction=reduction, weight=cw, eps=eps,
                                       z_loss=zl, softcap=cap)
    else:
        z = args[0] @ args[1].T + args[2]
        out, lse = cet.cross_entropy(z, t, cw, reduction=reduction, label_smoothing=eps,
                                     z_loss=zl, softcap=cap, return_lse=True)
    return out, lse, _grads(out, lse, args)


def _close(a, b, rtol, atol):
    oa, la, ga = a
    ob, lb, gb = b
    torch.testing.assert_close(oa, ob, rtol=rtol, atol=atol, equal_nan=True)
    torch.testing.assert_close(la, lb, rtol=rtol, atol=atol)
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


# (reduction, weighted, eps, z_loss, softcap, vocab slice, V); every option appears with
# slices of 7 and 64 classes over odd vocabularies
CASES = [
    (red, wt, eps, zl, cap, vc, V)
    for (red, wt, eps, zl, cap), (vc, V) in zip(
        itertools.product(("mean", "sum", "none"), (False, True), (0.0, 0.1), (0.0, 1e-2),
                          (None, 3.0)),
        itertools.cycle([(7, 150), (64, 301), (64, 151), (7, 203)]),
    )
]


@pytest.mark.parametrize(("reduction", "weighted", "eps", "zl", "cap", "vc", "V"), CASES)
def test_vocab_slices_float64(reduction, weighted, eps, zl, cap, vc, V):
    h, W, b, t, cw = _inputs(V)
    cw = cw if weighted else None
    opt = {"reduction": reduction, "eps": eps, "zl": zl, "cap": cap}
    got = _run(h, W, b, t, cw, vocab_chunk=vc, chunk=8, **opt)
    rows = _run(h, W, b, t, cw, vocab_chunk=None, chunk=8, **opt)
    # float64 everywhere: only the summation order differs (online vs one-pass lse)
    _close(got, rows, 1e-12, 1e-12)
    _close(got, _materialised(h, W, b, t, cw, use_torch=True, **opt), 1e-11, 1e-12)
    _close(got, _materialised(h, W, b, t, cw, use_torch=False, **opt), 1e-11, 1e-12)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_vocab_slices_all_ignored(reduction):
    h, W, b, t, cw = _inputs(151, all_ignored=True)
    opt = {"reduction": reduction, "eps": 0.1, "zl": 1e-2, "cap": None}
    got = _run(h, W, b, t, cw, vocab_chunk=7, chunk=8, **opt)
    rows = _run(h, W, b, t, cw, vocab_chunk=None, chunk=8, **opt)
    _close(got, rows, 1e-12, 1e-12)  # mean: NaN (0/0) in both, as torch
    if reduction == "mean":
        assert torch.isnan(got[0])
    else:
        assert float(got[0].detach().abs().sum()) == 0.0


@pytest.mark.parametrize(("weighted", "eps", "cap"), [(False, 0.0, None), (True, 0.1, 3.0)])
def test_vocab_slices_float32_and_bf16(weighted, eps, cap):
    V = 203
    h, W, b, t, cw = _inputs(V, seed=1)
    cw = cw if weighted else None
    opt = {"reduction": "mean", "eps": eps, "zl": 1e-3, "cap": cap}
    want = _materialised(h, W, b, t, cw, use_torch=True, **opt)  # float64 reference
    for dt, tol in ((torch.float32, 2e-5), (torch.bfloat16, 2e-2)):
        # float32: sums of ~200 terms of unit size, rounding 6e-8 each -> well under 2e-5;
        # bfloat16: the outputs are rounded to 8 bits (relative 4e-3) once, the products
        # and sums are float32, so 2e-2 leaves room for a few bf16 roundings of the result
        x = [v.to(dt) for v in (h, W, b)]
        got = _run(*x, t, cw, vocab_chunk=7, chunk=8, **opt)
        rows = _run(*x, t, cw, vocab_chunk=None, chunk=8, **opt)
        ref64 = _materialised(*(v.double() for v in x), t, cw, use_torch=True, **opt)
        for res in (got, rows):
            assert res[0].dtype == dt and res[2][1].dtype == dt
            _close(tuple(_as64(res)), tuple(_as64(ref64)), tol, tol)
        # sanity check against the unrounded float64 inputs
        assert abs(float(got[0].detach()) - float(want[0].detach())) < 0.05


def _as64(res):
    out, lse, grads = res
    return out.double(), lse.double(), tuple(g.double() for g in grads)


def test_bf16_accumulates_in_float32():
    """Many slices adding into one bf16 weight-gradient row would lose the small terms;
    the accumulation is float32 and rounded once, so the bf16 gradients are exactly the
    float32 run's (same float32 operations on the same, exactly widened, inputs) rounded."""
    h, W, b, t, _ = _inputs(301, seed=2)
    x16 = [v.to(torch.bfloat16) for v in (h, W, b)]
    res = []
    for x in (x16, [v.float() for v in x16]):
        args = [v.clone().requires_grad_() for v in x]
        out = cet.linear_cross_entropy(args[0], args[1], t, linear_bias=args[2],
                                       reduction="sum", label_smoothing=0.1,
                                       **rows_kwargs(8, ChunkPlan(vocab=64)))
        res.append(torch.autograd.grad(out, args))
    for a, r in zip(*res, strict=True):
        assert a.dtype == torch.bfloat16
        torch.testing.assert_close(a, r.to(torch.bfloat16), rtol=0, atol=0)


def test_default_picks_vocab_slices_when_v_is_huge():
    """With the budget shrunk so that 16 rows of V logits do not fit, the default path cuts
    the vocabulary, every logits buffer it allocates stays within the budget, and the result
    is the same as whole rows."""
    V = 301
    h, W, b, t, cw = _inputs(V)
    opt = {"reduction": "none", "eps": 0.1, "zl": 1e-2, "cap": 3.0}
    with _chunks.watch_buffers() as shapes:
        rows = _run(h, W, b, t, cw, vocab_chunk=None, chunk=None, **opt)
    assert shapes and all(s == (N, V) for s in shapes)  # budget 32 MiB: whole rows
    budget = 16 * 100 * 8  # bytes: 16 float64 rows of 100 classes < V
    with _chunks.watch_buffers() as shapes:
        got = _run(h, W, b, t, cw, vocab_chunk=None, chunk=None, budget=budget, **opt)
    assert shapes  # forward and backward ('none' recomputes) both allocate
    for r, c in shapes:
        assert r == 16 and c < V and r * c * 8 <= budget
    _close(got, rows, 1e-12, 1e-12)


def test_large_budget_keeps_token_only_path():
    assert ChunkPlan(rows=16).resolve(100, 1000, 4).vocab is None
    assert ChunkPlan(rows=16).resolve(100, 1 << 20, 4).vocab == (32 << 20) // (16 * 4)
    assert ChunkPlan(rows=16, vocab=7).resolve(100, 1000, 4).vocab == 7
    with pytest.raises(ValueError, match=r"ChunkPlan\.vocab"):
        ChunkPlan(vocab=0)
