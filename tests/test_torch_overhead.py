"""crossentropy.torch.cross_entropy's lean eager path (plain CPU tensors, (N, C) logits, int64
labels: the per-call overhead cut) against the general path, bit for bit, and against
torch.nn.functional.cross_entropy.

The general path is reached through the public API with int32 labels (the lean path takes
int64 only; the general path widens them to int64 and runs the same kernel), or with a
trailing length-1 spatial axis.  Which path ran is read off ``loss.grad_fn``.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import crossentropy as ce
import crossentropy.torch as cet

LEAN, GENERAL = "_IndexLeanBackward", "_IndexEagerBackward"


def _inputs(n: int, c: int, dtype: torch.dtype, seed: int, ignored: str = "none",
            ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * 3).to(dtype)
    t = torch.randint(0, c, (n,), generator=g)
    if ignored == "some" and n:
        t[:: 3] = ignore_index
    elif ignored == "all":
        t[:] = ignore_index
    return x, t


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Bitwise equal (NaN in the same places), same dtype and shape."""
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0.0, atol=0.0, equal_nan=True)


def _path(out: torch.Tensor) -> str:
    """The autograd node that computed `out`, past the general path's final reshape."""
    fn = out.grad_fn
    while fn is not None and type(fn).__name__ == "ViewBackward0":
        fn = fn.next_functions[0][0]
    return type(fn).__name__


def _run(x: torch.Tensor, t: torch.Tensor, g_out: torch.Tensor | None, **kw: object,
         ) -> tuple[list[torch.Tensor], torch.Tensor | None, str]:
    """(outputs, d/dx of sum(g_out * out) (+ lse.sum() when return_lse), grad_fn name)."""
    xr = x.clone().requires_grad_(True)
    res = cet.cross_entropy(xr, t, **kw)
    outs = list(res) if isinstance(res, tuple) else [res]
    name = _path(outs[0])
    total = (outs[0] * (1.0 if g_out is None else g_out)).sum()
    if len(outs) == 2:
        total = total + outs[1].sum()
    (gx,) = torch.autograd.grad(total, xr)
    return [o.detach() for o in outs], gx, name


CASES = list(enumerate(itertools.product(
    (torch.float32, torch.float64),
    ("mean", "sum", "none"),
    ("none", "some", "all"),
    (-100, 2),
    (False, True),  # class weights
    ({}, {"label_smoothing": 0.1}, {"z_loss": 1e-3, "softcap": 5.0, "base": 2.0}),
)))


@pytest.mark.parametrize("seed,case", CASES)
def test_lean_path_is_the_general_path_bit_for_bit(seed, case):
    dtype, reduction, ignored, ii, weighted, extra = case
    x, t = _inputs(13, 7, dtype, seed=seed, ignored=ignored, ignore_index=ii)
    w = torch.rand(7, dtype=dtype, generator=torch.Generator().manual_seed(3)) + 0.1 \
        if weighted else None
    g_out = torch.rand((13,) if reduction == "none" else (), dtype=dtype) + 0.5
    kw = dict(weight=w, ignore_index=ii, reduction=reduction, return_lse=True, **extra)
    outs1, g1, name1 = _run(x, t, g_out, **kw)
    outs2, g2, name2 = _run(x, t.to(torch.int32), g_out, **kw)
    assert (name1, name2) == (LEAN, GENERAL)
    for a, b in zip(outs1, outs2, strict=True):
        _same(a, b)
    assert g1 is not None and g2 is not None
    _same(g1, g2)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("reduction", ("mean", "sum", "none"))
@pytest.mark.parametrize("ignored", ("none", "some", "all"))
def test_lean_path_matches_torch(dtype, reduction, ignored):
    """Values and gradients against torch's own loss (computed in float64)."""
    x, t = _inputs(64, 10, dtype, seed=7, ignored=ignored)
    w = torch.rand(10, dtype=dtype, generator=torch.Generator().manual_seed(1)) + 0.1
    for kw in ({}, {"weight": w}, {"label_smoothing": 0.2}, {"weight": w, "ignore_index": 4}):
        tk = torch.where(t == -100, 4, t) if "ignore_index" in kw else t
        xr = x.clone().requires_grad_(True)
        loss = cet.cross_entropy(xr, tk, reduction=reduction, **kw)
        assert _path(loss) == LEAN
        loss.sum().backward()
        x64 = x.to(torch.float64, copy=True).requires_grad_(True)
        kw64 = {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        ref = F.cross_entropy(x64, tk, reduction=reduction, **kw64)
        ref.sum().backward()
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        torch.testing.assert_close(loss.detach().double(), ref.detach(), rtol=tol, atol=tol,
                                   equal_nan=True)
        assert xr.grad is not None and x64.grad is not None
        torch.testing.assert_close(xr.grad.double(), x64.grad, rtol=tol, atol=tol)


def test_lean_path_softcap_and_base_match_torch():
    """softcap c: torch's loss of c tanh(x / c); base 2: torch's loss / ln 2."""
    x, t = _inputs(32, 6, torch.float64, seed=11)
    xr = x.clone().requires_grad_(True)
    loss = cet.cross_entropy(xr, t, softcap=4.0, base=2.0)
    assert _path(loss) == LEAN
    loss.backward()
    x64 = x.clone().requires_grad_(True)
    ref = F.cross_entropy(4.0 * torch.tanh(x64 / 4.0), t) / math.log(2.0)
    ref.backward()
    torch.testing.assert_close(loss.detach(), ref.detach(), rtol=1e-13, atol=0.0)
    torch.testing.assert_close(xr.grad, x64.grad, rtol=1e-12, atol=1e-15)


def test_lean_path_spatial_general_path_agrees():
    """(N, C, 1) logits take the general path: the same numbers as (N, C) on the lean one."""
    x, t = _inputs(9, 5, torch.float32, seed=2, ignored="some")
    outs1, g1, n1 = _run(x, t, None)
    outs2, g2, n2 = _run(x.unsqueeze(2), t.unsqueeze(1), None)
    assert (n1, n2) == (LEAN, GENERAL)
    _same(outs1[0], outs2[0])
    assert g1 is not None and g2 is not None
    _same(g1, g2.squeeze(2))


def test_lean_path_backward_twice_and_accumulate():
    """retain_graph, a second backward with another incoming gradient, and .grad
    accumulation: as torch's loss."""
    x, t = _inputs(16, 8, torch.float64, seed=5)
    xr = x.clone().requires_grad_(True)
    x64 = x.clone().requires_grad_(True)
    loss, ref = cet.cross_entropy(xr, t), F.cross_entropy(x64, t)
    loss.backward(retain_graph=True)
    ref.backward(retain_graph=True)
    (2.5 * loss).backward()
    (2.5 * ref).backward()
    torch.testing.assert_close(xr.grad, x64.grad, rtol=1e-12, atol=1e-15)


def test_lean_path_second_derivative():
    x, t = _inputs(6, 4, torch.float64, seed=8)
    xr = x.clone().requires_grad_(True)
    x64 = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(cet.cross_entropy(xr, t), xr, create_graph=True)
    (gr,) = torch.autograd.grad(F.cross_entropy(x64, t), x64, create_graph=True)
    (h,) = torch.autograd.grad((g * g).sum(), xr)
    (hr,) = torch.autograd.grad((gr * gr).sum(), x64)
    torch.testing.assert_close(h, hr, rtol=1e-10, atol=1e-14)


def test_lean_path_without_grad_and_noncontiguous():
    x, t = _inputs(12, 5, torch.float32, seed=4)
    with torch.no_grad():
        a = cet.cross_entropy(x.clone().requires_grad_(True), t)
    with torch.inference_mode():
        b = cet.cross_entropy(x, t)
    c = cet.cross_entropy(x, t)  # logits without requires_grad
    ref = F.cross_entropy(x.double(), t).float()
    for v in (a, b, c):
        assert v.grad_fn is None
        torch.testing.assert_close(v, ref, rtol=2e-6, atol=0.0)
    xt = x.t().contiguous().t().requires_grad_(True)  # same values, column-major
    assert not xt.is_contiguous()
    outs1, g1, n1 = _run(xt.detach(), t, None)
    outs2, g2, _ = _run(x, t, None)
    assert n1 == LEAN
    _same(outs1[0], outs2[0])
    assert g1 is not None and g2 is not None
    _same(g1, g2)


def test_probability_targets_and_empty_batch():
    """Probability targets (never the lean path) and an empty batch keep torch's results."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(5, 4, dtype=torch.float64, generator=g)
    p = torch.softmax(torch.randn(5, 4, dtype=torch.float64, generator=g), dim=1)
    torch.testing.assert_close(cet.cross_entropy(x, p), F.cross_entropy(x, p), rtol=1e-13,
                               atol=0.0)
    e = torch.empty(0, 4)
    y = torch.empty(0, dtype=torch.int64)
    assert math.isnan(float(cet.cross_entropy(e, y))) and math.isnan(float(F.cross_entropy(e, y)))
    assert float(cet.cross_entropy(e, y, reduction="sum")) == 0.0
    assert cet.cross_entropy(e, y, reduction="none").shape == (0,)


def _error(fn: object) -> tuple[type, str]:
    try:
        fn()  # type: ignore[operator]
    except (TypeError, ValueError) as exc:
        return type(exc), str(exc)
    raise AssertionError("no error raised")


@pytest.mark.parametrize("bad", [
    {"target": [0, 1, 10, 2]},  # out of range, position 2
    {"target": [0, -5, 1, 2]},  # negative and not ignore_index
    {"reduction": "avg"},
    {"label_smoothing": 1.5},
    {"label_smoothing": [0.1]},  # unhashable: the general path's own message
    {"ignore_index": 1.5},
    {"weight": torch.ones(3)},
    {"target": [0, 1, 2]},  # wrong batch size
])
def test_bad_input_raises_the_same_clear_error(bad):
    x = torch.randn(4, 10)
    kw = dict(bad)
    t = torch.tensor(kw.pop("target", [0, 1, 2, 3]))
    lean = _error(lambda: cet.cross_entropy(x, t, **kw))
    general = _error(lambda: cet.cross_entropy(x, t.to(torch.int32), **kw))
    assert lean == general
    if "target" in bad and len(bad["target"]) == 4:
        bad_pos = next(i for i, v in enumerate(bad["target"]) if not 0 <= v < 10)
        # a ValueError (torch raises IndexError there: the class is both)
        assert issubclass(lean[0], ValueError) and f"target[{bad_pos}]" in lean[1]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_first_bad_target_after_ignored_ones_is_named(backend):
    """The targets are checked in one kernel pass where the kernels run (torch otherwise):
    ignored targets before a bad one are skipped, and the first bad position is named."""
    x = torch.randn(6, 4, requires_grad=True)
    t = torch.tensor([1, -100, 3, 9, -5, 2])
    with ce.use_backend(backend):
        with pytest.raises(ValueError, match=r"target\[3\] = 9 is out of range \[0, 4\)"):
            cet.cross_entropy(x, t)
        with pytest.raises(ValueError, match=r"target\[1\] = -100"):
            cet.cross_entropy(x, t, ignore_index=-5)
        # ignore_index inside [0, C): the mean divides by the rows counted by that pass
        t2 = torch.tensor([1, 2, 3, 2, 0, 2])
        for reduction in ("mean", "sum"):
            got = cet.cross_entropy(x, t2, ignore_index=2, reduction=reduction)
            want = F.cross_entropy(x.double(), t2, ignore_index=2, reduction=reduction)
            torch.testing.assert_close(got.double(), want, rtol=2e-7, atol=0.0)


def test_lean_path_follows_the_backend_setting():
    """Under backend 'numpy' the exact core runs instead of the kernels: same loss to
    rounding."""
    x, t = _inputs(20, 6, torch.float64, seed=6)
    a = cet.cross_entropy(x, t)
    with ce.use_backend("numpy"):
        b = cet.cross_entropy(x, t)
    torch.testing.assert_close(a, b, rtol=1e-15, atol=0.0)
    torch.testing.assert_close(a, F.cross_entropy(x, t), rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_gradients_on_huge_pages_are_ordinary_tensors(dtype: torch.dtype) -> None:
    """A gradient of 4 MiB or more is allocated by NumPy (huge pages, see
    ``crossentropy.torch._ops._fresh_like``): the same bits as the NumPy backend's
    gradient and as the lean and general paths, contiguous, writable, accumulated by
    autograd like any other tensor, and freed with the tensor."""
    from crossentropy.torch import _ops

    n = _ops._HUGE_MIN_BYTES // (1000 * (4 if dtype == torch.float32 else 8)) + 7
    x, t = _inputs(n, 1000, dtype, seed=21)
    assert x.numel() * x.element_size() >= _ops._HUGE_MIN_BYTES
    a = x.clone().requires_grad_(True)
    loss = cet.cross_entropy(a, t, label_smoothing=0.1)
    assert loss.grad_fn is not None and type(loss.grad_fn).__name__ == LEAN
    loss.backward()
    assert a.grad is not None and a.grad.is_contiguous() and a.grad.dtype == dtype
    want_loss, want_grad = ce.cross_entropy(x.numpy(), t.numpy(), label_smoothing=0.1,
                                            return_grad=True)
    assert loss.item() == pytest.approx(float(want_loss), rel=1e-6)
    _same(a.grad, torch.from_numpy(want_grad))
    b = x.clone().requires_grad_(True)  # the general path (int32 labels): the same bits
    gen = cet.cross_entropy(b, t.to(torch.int32), label_smoothing=0.1)
    assert type(gen.grad_fn).__name__ == GENERAL
    gen.backward()
    _same(b.grad, a.grad)
    first = a.grad.clone()
    cet.cross_entropy(a, t, label_smoothing=0.1).backward()  # accumulates into a.grad
    _same(a.grad, first + first)
    a.grad.mul_(0.5)  # writable in place
    _same(a.grad, first)
