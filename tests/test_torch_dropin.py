"""crossentropy.torch as a drop-in (issue 27, item 3): ``shift=n``, zero classes, the
exception classes torch raises, and BCE's log clamp.

Every expected value comes from torch itself (``torch.nn.functional`` on the same input, or
on the hand-sliced input for ``shift``), from the NumPy API or from mpmath.  On a torch older
than 2.13 (the floor is 2.7) torch's ``linear_cross_entropy`` is its definition,
``F.cross_entropy(F.linear(...))`` (``tests/_torch_versions.py``), and the few behaviours
torch changed since are compared with the newer torch's, which this library follows.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import crossentropy as ce
import crossentropy.torch as cet
from _torch_versions import (
    HAS_TORCH_LINEAR_CE,
    TORCH_TAKES_1D_TARGET_OF_1D_LOGITS,
    torch_linear_cross_entropy,
)
from crossentropy.torch._compat import TorchTooOldError

f64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal shape and dtype; values equal to a few units of the dtype's last place (torch's
    low-precision values are rounded more than once), NaN where the other is NaN."""
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, a.dtype, b.shape, b.dtype)
    tol = 1e-13 if a.dtype == f64 else 8 * torch.finfo(a.dtype).eps
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * 1e-2, equal_nan=True)


# =========================================================================== shift


def _labels(shape: tuple[int, ...], C: int, seed: int) -> torch.Tensor:
    y = torch.randint(0, C, shape, generator=_gen(seed))
    y.view(-1)[::4] = -100  # some ignored positions
    return y


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("n", [1, 2, 3, 6, 9])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_shift_n_is_the_hand_slice(impl: str, n: int, reduction: str) -> None:
    """shift=n == cross_entropy(z[..., :-n, :], y[..., n:]) (torch on the slice): values,
    the mean's divisor and the gradient; the last n positions count for nothing (all of
    them for n >= T: the empty mean).  shift=0 is no shift: torch's own layout."""
    B, T, C = 2, 6, 5
    z = torch.randn(B, T, C, generator=_gen(1), dtype=f64) * 3
    y = _labels((B, T), C, 2)
    w = torch.rand(C, generator=_gen(3), dtype=f64) + 0.2
    kw: dict[str, Any] = {"weight": w, "label_smoothing": 0.1, "reduction": reduction}
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    ours = cet.cross_entropy(za, y, shift=n, impl=impl, **kw)
    keep = max(T - n, 0)
    zs, ys = zb[:, :keep, :], y[:, n:] if n < T else y[:, :0]
    ref = F.cross_entropy(zs.reshape(-1, C), ys.reshape(-1), **kw)
    if reduction == "none":
        assert ours.shape == (B, T)
        _same(ours[:, :keep].reshape(-1), ref)
        assert bool((ours[:, keep:] == 0).all())
        g = torch.rand(B, T, generator=_gen(4), dtype=f64)
        (ga,) = torch.autograd.grad(ours, za, g)
        (gb,) = torch.autograd.grad(ref, zb, g[:, :keep].reshape(-1), allow_unused=True)
    else:
        _same(ours, ref)
        if not torch.isfinite(ref):  # every position ignored: the empty mean, no gradient
            return
        (ga,) = torch.autograd.grad(ours, za)
        (gb,) = torch.autograd.grad(ref, zb)
    _same(ga, gb)
    assert bool((ga[:, keep:] == 0).all())


@pytest.mark.parametrize("impl", ["cpu", "torch"])
@pytest.mark.parametrize("plan", [None, cet.ChunkPlan(rows=3), cet.ChunkPlan(rows=2, vocab=3)],
                         ids=["whole", "rows", "vocab"])
@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_linear_shift_n_is_the_hand_slice(impl: str, plan: Any, n: int,
                                          reduction: str) -> None:
    B, T, D, V = 2, 5, 4, 7
    h = torch.randn(B, T, D, generator=_gen(5), dtype=f64)
    W = torch.randn(V, D, generator=_gen(6), dtype=f64)
    y = _labels((B, T), V, 7)
    ha, hb = h.clone().requires_grad_(), h.clone().requires_grad_()
    Wa, Wb = W.clone().requires_grad_(), W.clone().requires_grad_()
    ours = cet.linear_cross_entropy(ha, Wa, y, shift=n, chunks=plan, impl=impl,
                                    reduction=reduction)
    keep = T - n
    ref = F.cross_entropy((hb[:, :keep] @ Wb.T).reshape(-1, V), y[:, n:].reshape(-1),
                          reduction=reduction)
    if reduction == "none":
        _same(ours[:, :keep].reshape(-1), ref)
        assert bool((ours[:, keep:] == 0).all())
        ga = torch.autograd.grad(ours.sum(), (ha, Wa))
    else:
        _same(ours, ref)
        ga = torch.autograd.grad(ours, (ha, Wa))
    gb = torch.autograd.grad(ref.sum(), (hb, Wb))
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fn", ["cross_entropy", "linear_cross_entropy"])
def test_shift_accepts_bools_and_integers_only(fn: str) -> None:
    # (B, T, C) = (2, 3, 3): with shift=0 cross_entropy reads it as (N, C, d1), torch's
    # layout, and the labels (2, 3) fit that too
    z = torch.randn(2, 3, 3, generator=_gen(8), dtype=f64)
    W = torch.eye(3, dtype=f64)
    y = torch.randint(0, 3, (2, 3), generator=_gen(9))

    def call(shift: Any) -> torch.Tensor:
        if fn == "cross_entropy":
            return cet.cross_entropy(z, y, shift=shift)  # type: ignore[no-any-return]
        return cet.linear_cross_entropy(z, W, y, shift=shift)  # type: ignore[no-any-return]

    one, two = call(1), call(2)
    assert not torch.equal(one, two)  # shift=2 is not shift=True any more
    for same_as_one in (True, np.bool_(True), np.int64(1), np.int32(1)):
        _same(call(same_as_one), one)
    _same(call(np.int16(2)), two)
    for same_as_none in (0, np.bool_(False), np.uint8(0)):
        _same(call(same_as_none), call(False))
    for bad in (2.0, 1.5, "1", None, torch.tensor(1), [1]):
        with pytest.raises(TypeError, match="shift"):
            call(bad)
    for neg in (-1, np.int64(-3)):
        with pytest.raises(ValueError, match="shift"):
            call(neg)


def test_shift_refuses_a_k_dimensional_weight() -> None:
    h = torch.randn(4, 3, dtype=f64)
    W = torch.randn(5, 2, 3, dtype=f64)  # (C, d1, in_features)
    with pytest.raises(ValueError, match="shift"):
        cet.linear_cross_entropy(h, W, torch.zeros(4, 2, dtype=torch.long), shift=1)


_TRITON_SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import torch.nn.functional as F
    import crossentropy.torch as cet
    import crossentropy.triton as tr

    # torch's linear cross-entropy; before torch 2.13 added it, its definition
    lce = getattr(F, "linear_cross_entropy", None) or (
        lambda h, W, t, **kw: F.cross_entropy(F.linear(h, W), t, **kw))

    def close(a, b):
        torch.testing.assert_close(a.double(), b.double(), rtol=2e-5, atol=2e-6,
                                   equal_nan=True)

    g = torch.Generator().manual_seed(0)
    B, T, C, D = 2, 5, 7, 3
    z = torch.randn(B, T, C, generator=g)
    y = torch.randint(0, C, (B, T), generator=g)
    y[0, 3] = -100
    h = torch.randn(B, T, D, generator=g)
    W = torch.randn(C, D, generator=g)
    for n in (2, 3):
        keep = T - n
        for red in ("none", "sum", "mean"):
            za = z.clone().requires_grad_()
            zb = z.double().requires_grad_()
            ours = cet.cross_entropy(za, y, shift=n, impl="triton", reduction=red)
            ref = F.cross_entropy(zb[:, :keep].reshape(-1, C), y[:, n:].reshape(-1),
                                  reduction=red)
            if red == "none":
                close(ours[:, :keep].reshape(-1), ref)
                assert bool((ours[:, keep:] == 0).all())
            else:
                close(ours, ref)
            (ga,) = torch.autograd.grad(ours.sum(), za)
            (gb,) = torch.autograd.grad(ref.sum(), zb)
            close(ga, gb)
            ha, Wa = h.clone().requires_grad_(), W.clone().requires_grad_()
            hb, Wb = h.double().requires_grad_(), W.double().requires_grad_()
            lo = cet.linear_cross_entropy(ha, Wa, y, shift=n, impl="triton", reduction=red)
            lr = F.cross_entropy((hb[:, :keep] @ Wb.T).reshape(-1, C),
                                 y[:, n:].reshape(-1), reduction=red)
            close(lo[:, :keep].reshape(-1) if red == "none" else lo, lr)
            for a, b in zip(torch.autograd.grad(lo.sum(), (ha, Wa)),
                            torch.autograd.grad(lr.sum(), (hb, Wb))):
                close(a, b)
    # zero classes on the Triton path and at its front door (the kernels are not run)
    for red in ("none", "sum", "mean"):
        for t in (torch.rand(5, 0, generator=g), torch.full((5,), -100)):
            x = torch.rand(5, 0, generator=g)
            want = F.cross_entropy(x, t, reduction=red)
            close(cet.cross_entropy(x, t, impl="triton", reduction=red), want)
            close(tr.cross_entropy(x, t, reduction=red), want)
        ign = torch.full((5,), -100)
        hh, W0 = torch.randn(5, 3, generator=g), torch.randn(0, 3, generator=g)
        want = lce(hh, W0, ign, reduction=red)
        close(cet.linear_cross_entropy(hh, W0, ign, impl="triton", reduction=red), want)
        close(tr.linear_cross_entropy(hh, W0, ign, reduction=red), want)
    print("OK")
    """
)


def test_shift_n_and_zero_classes_on_triton_in_the_interpreter() -> None:
    """impl='triton' (the Triton interpreter on CPU tensors, float32): shift=2 and 3 equal
    torch on the hand slice (values and gradients); zero classes give torch's values on the
    functional path and at crossentropy.triton's front door (which segfaulted)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], capture_output=True,
                         text=True, env=env, timeout=900)
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), (
        res.returncode, res.stderr[-3000:])


# =========================================================================== zero classes


def _outcome(f: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "value", f()
    except Exception as exc:  # the exception is the result compared
        return "raises", exc


def _same_outcome(ours: tuple[str, Any], theirs: tuple[str, Any]) -> None:
    assert ours[0] == theirs[0], (ours, theirs)
    if theirs[0] == "raises":
        # ours is caught by any except clause written for torch's
        assert isinstance(ours[1], type(theirs[1])), (ours[1], theirs[1])
        assert isinstance(ours[1], (ValueError, TypeError)), ours[1]
    else:
        _same(ours[1], theirs[1])


_TARGETS = {
    "prob": lambda N: torch.rand(N, 0, generator=_gen(N), dtype=f64),
    "index": lambda N: torch.zeros(N, dtype=torch.long),
    "ignored": lambda N: torch.full((N,), -100),
}


@pytest.mark.parametrize("impl", ["auto", "cpu", "torch"])
@pytest.mark.parametrize("kind", list(_TARGETS))
@pytest.mark.parametrize("N", [0, 5])
@pytest.mark.parametrize(("reduction", "smoothing", "weighted"),
                         list(itertools.product(["none", "sum", "mean"], [0.0, 0.1],
                                                [False, True])))
def test_zero_classes_give_torchs_value(impl: str, kind: str, N: int, reduction: str,
                                        smoothing: float, weighted: bool) -> None:
    x = torch.rand(N, 0, dtype=f64)
    t = _TARGETS[kind](N)
    kw: dict[str, Any] = {"weight": torch.ones(0, dtype=f64) if weighted else None,
                          "reduction": reduction, "label_smoothing": smoothing}
    theirs = _outcome(lambda: F.cross_entropy(x, t, **kw))
    ours = _outcome(lambda: cet.cross_entropy(x, t, impl=impl, **kw))
    _same_outcome(ours, theirs)
    mod = _outcome(lambda: cet.CrossEntropyLoss(kw["weight"], reduction=reduction,
                                                label_smoothing=smoothing, impl=impl)(x, t))
    _same_outcome(mod, theirs)
    if theirs[0] == "raises":
        return
    # backward runs and gives torch's (empty) gradients, of the target too
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    prob = kind == "prob"
    ta, tb = (t.clone().requires_grad_(), t.clone().requires_grad_()) if prob else (t, t)
    ga = torch.autograd.grad(cet.cross_entropy(xa, ta, impl=impl, **kw).sum(),
                             [xa, ta] if prob else [xa])
    gb = torch.autograd.grad(F.cross_entropy(xb, tb, **kw).sum(), [xb, tb] if prob else [xb])
    for a, b in zip(ga, gb, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype


@pytest.mark.parametrize("impl", ["auto", "cpu", "torch"])
def test_zero_classes_issue_example_and_other_layouts(impl: str) -> None:
    # the issue's example: torch returns NaN (its mean divides by numel / C = 0 / 0)
    x, t = torch.rand(5, 0), torch.rand(5, 0)
    _same(cet.CrossEntropyLoss(impl=impl)(x, t), torch.nn.CrossEntropyLoss()(x, t))
    for inp, tgt, kw in (
        (torch.rand(0), torch.rand(0), {}),                       # unbatched
        (torch.rand(0), torch.tensor(-100), {"reduction": "none"}),
        (torch.rand(2, 0, 3), torch.rand(2, 0, 3), {"reduction": "none"}),  # (N, C, d1)
        (torch.rand(2, 0, 3), torch.rand(2, 0, 3), {}),
        (torch.rand(4, 0, dtype=torch.float16), torch.rand(4, 0, dtype=torch.float16), {}),
    ):
        _same(cet.cross_entropy(inp, tgt, impl=impl, **kw), F.cross_entropy(inp, tgt, **kw))
    # torch's lse of no classes is -inf; shift=n on (B, T, 0) logits
    _, lse = cet.cross_entropy(x, t, return_lse=True, impl=impl)
    _same(lse, torch.logsumexp(x, dim=1))
    out = cet.cross_entropy(torch.rand(2, 4, 0), torch.full((2, 4), -100), shift=2,
                            reduction="none", impl=impl)
    _same(out, torch.zeros(2, 4))


@pytest.mark.parametrize("impl", ["auto", "cpu", "torch"])
@pytest.mark.parametrize("kind", list(_TARGETS))
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_linear_zero_classes_give_torchs_value(impl: str, kind: str, reduction: str,
                                               smoothing: float) -> None:
    h = torch.randn(4, 3, generator=_gen(10), dtype=f64)
    W = torch.zeros(0, 3, dtype=f64)
    t = _TARGETS[kind](4)
    kw: dict[str, Any] = {"reduction": reduction, "label_smoothing": smoothing}
    theirs = _outcome(lambda: torch_linear_cross_entropy(h, W, t, **kw))
    _same_outcome(_outcome(lambda: cet.linear_cross_entropy(h, W, t, impl=impl, **kw)), theirs)
    if theirs[0] == "raises":
        return
    ha, Wa = h.clone().requires_grad_(), W.clone().requires_grad_()
    hb, Wb = h.clone().requires_grad_(), W.clone().requires_grad_()
    ga = torch.autograd.grad(cet.linear_cross_entropy(ha, Wa, t, impl=impl, **kw).sum(),
                             (ha, Wa))
    gb = torch.autograd.grad(torch_linear_cross_entropy(hb, Wb, t, **kw).sum(), (hb, Wb))
    for a, b in zip(ga, gb, strict=True):
        _same(a, b)


def test_linear_zero_classes_per_token_outputs() -> None:
    h = torch.randn(2, 3, 4, dtype=f64, requires_grad=True)
    out = cet.linear_cross_entropy(h, torch.zeros(0, 4, dtype=f64), torch.full((2, 3), -100),
                                   reduction="none", return_lse=True, return_logprobs=True,
                                   return_entropy=True)
    _same(out.loss, torch.zeros(2, 3, dtype=f64))
    _same(out.lse, torch.full((2, 3), -math.inf, dtype=f64))  # log of an empty sum
    _same(out.logprobs, torch.zeros(2, 3, dtype=f64))
    _same(out.entropy, torch.zeros(2, 3, dtype=f64))
    (g,) = torch.autograd.grad(out.loss.sum() + out.entropy.sum(), h)
    _same(g, torch.zeros_like(h))


# =========================================================================== probability targets


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_linear_probability_targets_of_batched_sequences(impl: str) -> None:
    """Hidden states (B, T, D) with probability targets (B, T, C): the class axis of the
    logits is the last (it was read as axis 1, T, and gave a (B, C) result)."""
    h = torch.randn(2, 3, 4, generator=_gen(11), dtype=f64)
    W = torch.randn(5, 4, generator=_gen(12), dtype=f64)
    p = torch.softmax(torch.randn(2, 3, 5, generator=_gen(13), dtype=f64), -1)
    z = (h @ W.T).reshape(-1, 5)
    for red in ("none", "sum", "mean"):
        ref = F.cross_entropy(z, p.reshape(-1, 5), reduction=red)
        ours = cet.linear_cross_entropy(h, W, p, reduction=red, impl=impl)
        _same(ours, ref.reshape(2, 3) if red == "none" else ref)
    _, lse = cet.linear_cross_entropy(h, W, p, return_lse=True, impl=impl)
    _same(lse, torch.logsumexp(h @ W.T, dim=-1))


# =========================================================================== exception types

L = torch.long
X = torch.randn(4, 3, generator=_gen(20))
X3 = torch.randn(2, 3, 5, generator=_gen(21))
H = torch.randn(4, 3, generator=_gen(22))
WL = torch.randn(2, 3, generator=_gen(23))

# (name, input, target, keywords) for cross_entropy / CrossEntropyLoss
CE_CASES: list[tuple[str, torch.Tensor, torch.Tensor, dict[str, Any]]] = [
    ("batch-size-index", X, torch.zeros(5, dtype=L), {}),
    ("batch-size-float", X, torch.rand(5, 3), {}),
    ("batch-size-0d-target", X, torch.tensor(0), {}),
    ("integer-target-of-input-shape", X, torch.zeros(4, 3, dtype=L), {}),
    ("float-target-wrong-classes", X, torch.rand(4, 2), {}),
    ("float-target-of-batch-shape", X, torch.rand(4), {}),
    ("bool-target", X, torch.zeros(4, dtype=torch.bool), {}),
    ("complex-target", X, torch.zeros(4, dtype=torch.complex64), {}),
    ("index-target-2d", X, torch.zeros(4, 1, dtype=L), {}),
    ("index-target-3d", X, torch.zeros(4, 3, 1, dtype=L), {}),
    ("nd-batch-size", X3, torch.zeros(3, 5, dtype=L), {}),
    ("nd-target-shape", X3, torch.zeros(2, 4, dtype=L), {}),
    ("nd-target-dims", X3, torch.zeros(2, 5, 1, dtype=L), {}),
    ("nd-float-target", X3, torch.rand(2, 5), {}),
    ("unbatched-target-size-2", torch.randn(3), torch.zeros(2, dtype=L), {}),
    ("unbatched-target-size-1", torch.randn(3), torch.zeros(1, dtype=L), {}),  # torch: ok
    ("unbatched-target-2d", torch.randn(3), torch.zeros(1, 1, dtype=L), {}),
    ("unbatched-float-target", torch.randn(3), torch.rand(2), {}),
    ("weight-length", X, torch.zeros(4, dtype=L), {"weight": torch.ones(2)}),
    ("weight-2d", X, torch.zeros(4, dtype=L), {"weight": torch.ones(1, 3)}),
    ("weight-prob-targets", X, torch.rand(4, 3), {"weight": torch.ones(4)}),
    ("input-0d", torch.tensor(1.0), torch.tensor(0), {}),
    ("index-out-of-range", X, torch.tensor([0, 3, 1, 2]), {}),
    ("index-negative", X, torch.tensor([0, -1, 1, 2]), {}),
    ("no-classes-index", torch.randn(4, 0), torch.zeros(4, dtype=L), {}),
    ("prob-with-ignore-index", X, torch.rand(4, 3), {"ignore_index": 1}),
    ("label-smoothing-range", X, torch.zeros(4, dtype=L), {"label_smoothing": 1.5}),
    ("reduction-name", X, torch.zeros(4, dtype=L), {"reduction": "avg"}),
]


def _for_torch(logits_dim: int, t: torch.Tensor) -> torch.Tensor:
    """The target to give torch: ``t``, or the 0-d target for a (1,) index target of (C,)
    logits on a torch that refuses it (torch 2.7.1 raises RuntimeError "size mismatch"):
    torch 2.13.0 reads it as the 0-d target, and so does this library on every torch
    (test_unbatched_target_of_size_1_is_the_0d_target)."""
    if logits_dim == 1 and tuple(t.shape) == (1,) and not TORCH_TAKES_1D_TARGET_OF_1D_LOGITS:
        return t.reshape(())
    return t


@pytest.mark.parametrize(("name", "x", "t", "kw"), CE_CASES, ids=[c[0] for c in CE_CASES])
def test_cross_entropy_raises_what_torch_raises(name: str, x: torch.Tensor, t: torch.Tensor,
                                                kw: dict[str, Any]) -> None:
    tt = _for_torch(x.dim(), t)
    theirs = _outcome(lambda: F.cross_entropy(x, tt, **kw))
    _same_outcome(_outcome(lambda: cet.cross_entropy(x, t, **kw)), theirs)
    w = kw.get("weight")
    rest = {k: v for k, v in kw.items() if k != "weight"}
    _same_outcome(_outcome(lambda: cet.CrossEntropyLoss(w, **rest)(x, t)),
                  _outcome(lambda: torch.nn.CrossEntropyLoss(w, **rest)(x, tt)))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_unbatched_target_of_size_1_is_the_0d_target(reduction: str) -> None:
    """(C,) logits with a (1,) index target: the loss of the 0-d target, as torch 2.13.0
    computes it (torch 2.7.1 raises RuntimeError; this library follows the newer torch)."""
    x = torch.randn(3, generator=_gen(24), dtype=f64)
    h, W = torch.randn(4, generator=_gen(25), dtype=f64), torch.randn(3, 4, dtype=f64)
    t = torch.tensor([2])
    want = F.cross_entropy(x, t.reshape(()), reduction=reduction)
    if TORCH_TAKES_1D_TARGET_OF_1D_LOGITS:
        _same(F.cross_entropy(x, t, reduction=reduction), want)
    _same(cet.cross_entropy(x, t, reduction=reduction), want)
    _same(cet.CrossEntropyLoss(reduction=reduction)(x, t), want)
    _same(cet.linear_cross_entropy(h, W, t, reduction=reduction),
          F.cross_entropy(h @ W.T, t.reshape(()), reduction=reduction))


LIN_CASES: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]] = [
    ("batch-size-float", H, WL, torch.zeros(5, 2), {}),
    ("batch-size-index", H, WL, torch.zeros(5, dtype=L), {}),
    ("batch-size-0d-target", H, WL, torch.tensor(0), {}),
    ("integer-target-of-logits-shape", H, WL, torch.zeros(4, 2, dtype=L), {}),
    ("float-target-of-batch-shape", H, WL, torch.zeros(4), {}),
    ("float-target-wrong-classes", H, WL, torch.zeros(4, 3), {}),
    ("index-target-2d", H, WL, torch.zeros(4, 1, dtype=L), {}),
    ("bool-target", H, WL, torch.zeros(4, dtype=torch.bool), {}),
    ("weight-length", H, WL, torch.zeros(4, dtype=L), {"weight": torch.ones(3)}),
    ("bias-length", H, WL, torch.zeros(4, dtype=L), {"linear_bias": torch.ones(3)}),
    ("in-features", H, torch.randn(2, 5), torch.zeros(4, dtype=L), {}),
    ("linear-weight-1d", H, torch.randn(3), torch.zeros(4, dtype=L), {}),
    ("input-0d", torch.tensor(1.0), WL, torch.zeros(4, dtype=L), {}),
    ("prob-with-ignore-index", H, WL, torch.rand(4, 2), {"ignore_index": -100}),
    ("index-out-of-range", H, WL, torch.tensor([0, 2, 1, 1]), {}),
    ("no-classes-index", H, torch.randn(0, 3), torch.zeros(4, dtype=L), {}),
    ("unbatched-target-size-1", torch.randn(3), WL, torch.zeros(1, dtype=L), {}),
    ("label-smoothing-range", H, WL, torch.zeros(4, dtype=L), {"label_smoothing": 2.0}),
]


# torch's linear_cross_entropy (torch >= 2.13) defaults to ignore_index=None and refuses any
# ignore_index with probability targets; its definition through F.cross_entropy, the
# reference before torch 2.13, cannot tell an ignore_index=-100 passed from its default.
_OWN_RULE = pytest.mark.skipif(
    not HAS_TORCH_LINEAR_CE,
    reason=f"torch 2.13's linear_cross_entropy refuses ignore_index with probability targets; "
    f"F.cross_entropy cannot see it passed (installed: torch {torch.__version__})")


@pytest.mark.parametrize(("name", "h", "W", "t", "kw"), [
    pytest.param(*c, id=c[0], marks=_OWN_RULE if c[0] == "prob-with-ignore-index" else ())
    for c in LIN_CASES])
def test_linear_cross_entropy_raises_what_torch_raises(
        name: str, h: torch.Tensor, W: torch.Tensor, t: torch.Tensor,
        kw: dict[str, Any]) -> None:
    tt = _for_torch(h.dim(), t)
    theirs = _outcome(lambda: torch_linear_cross_entropy(h, W, tt, **kw))
    _same_outcome(_outcome(lambda: cet.linear_cross_entropy(h, W, t, **kw)), theirs)


MOD_CASES: list[tuple[str, torch.Tensor, torch.Tensor]] = [
    ("issue-batch-size", torch.randn(4, 3), torch.zeros(5, 2)),
    ("issue-integer-probabilities", torch.randn(4, 3), torch.zeros(4, 2, dtype=L)),
    ("batch-size-index", torch.randn(4, 3), torch.zeros(5, dtype=L)),
    ("in-features", torch.randn(4, 4), torch.zeros(4, dtype=L)),
    ("float-target-of-batch-shape", torch.randn(4, 3), torch.zeros(4)),
    ("valid", torch.randn(4, 3), torch.tensor([0, 1, 1, 0])),
]


@pytest.mark.parametrize(("name", "h", "t"), MOD_CASES, ids=[c[0] for c in MOD_CASES])
def test_linear_module_raises_what_torch_raises(name: str, h: torch.Tensor,
                                                t: torch.Tensor) -> None:
    if not HAS_TORCH_LINEAR_CE:  # the module is torch's, with our loss: torch 2.13 added it
        with pytest.raises(TorchTooOldError, match=r"torch 2\.13 added"):
            cet.LinearCrossEntropyLoss(3, 2)
        return
    theirs_mod = torch.nn.LinearCrossEntropyLoss(3, 2)
    ours_mod = cet.LinearCrossEntropyLoss(3, 2)
    ours_mod.load_state_dict(theirs_mod.state_dict())
    _same_outcome(_outcome(lambda: ours_mod(h, t)), _outcome(lambda: theirs_mod(h, t)))


def test_binary_cross_entropy_raises_what_torch_raises() -> None:
    for q, y in ((torch.tensor([0.5, 1.5]), torch.ones(2)),          # torch: RuntimeError
                 (torch.tensor([0.5]), torch.tensor([1.0, 0.0]))):    # torch: ValueError
        _same_outcome(_outcome(lambda: cet.binary_cross_entropy(q, y)),  # noqa: B023
                      _outcome(lambda: F.binary_cross_entropy(q, y)))  # noqa: B023


# =========================================================================== BCE


P_VALUES = [0.0, 1.0, 1e-50, 1 - 1e-17, 0.5, 1e-300, 1e-10, 1 - 1e-12]
Y_VALUES = [0.0, 1.0, 0.3]


def _bce_value_grads(fn: Callable[..., torch.Tensor], q: torch.Tensor, y: torch.Tensor,
                     **kw: Any) -> tuple[torch.Tensor, ...]:
    qa, ya = q.clone().requires_grad_(), y.clone().requires_grad_()
    v = fn(qa, ya, **kw)
    g = torch.linspace(0.5, 1.5, v.numel(), dtype=v.dtype).reshape(v.shape)
    gq, gy = torch.autograd.grad(v, (qa, ya), g)
    return v.detach(), gq, gy


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    pq = torch.tensor([p for p in P_VALUES for _ in Y_VALUES], dtype=f64)
    py = torch.tensor([y for _ in P_VALUES for y in Y_VALUES], dtype=f64)
    return pq, py


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_matches_torchs_clamp_value_and_gradients(reduction: str, weighted: bool) -> None:
    """Default log_clamp=-100: torch's value (100 for a certain wrong answer, never inf) and
    torch's gradients w.r.t. the probabilities and the targets, float64."""
    q, y = _pairs()
    w = torch.rand(q.shape, generator=_gen(30), dtype=f64) + 0.5 if weighted else None
    ours = _bce_value_grads(cet.binary_cross_entropy, q, y, weight=w, reduction=reduction)
    theirs = _bce_value_grads(F.binary_cross_entropy, q, y, weight=w, reduction=reduction)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=0.0)
    assert bool(torch.isfinite(ours[0]).all() & torch.isfinite(ours[1]).all())
    mod = _bce_value_grads(lambda a, b: cet.BCELoss(w, reduction=reduction)(a, b), q, y)
    ref = _bce_value_grads(lambda a, b: torch.nn.BCELoss(w, reduction=reduction)(a, b), q, y)
    for a, b in zip(mod, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-15, atol=0.0)


def test_bce_clamp_at_the_issue_points() -> None:
    zero, one = torch.tensor([0.0], dtype=f64), torch.tensor([1.0], dtype=f64)
    assert float(cet.binary_cross_entropy(zero, one)) == 100.0
    assert float(cet.binary_cross_entropy(one, zero)) == 100.0
    assert float(cet.BCELoss()(zero, one)) == 100.0
    q = zero.clone().requires_grad_()
    (g,) = torch.autograd.grad(cet.binary_cross_entropy(q, one), q)
    assert math.isfinite(float(g))


def _ulps(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| in units in the last place of the larger (infinities must be equal)."""
    fin = np.isfinite(a) & np.isfinite(b)
    np.testing.assert_array_equal(a[~fin], b[~fin])
    a, b = a[fin], b[fin]
    return float(np.max(np.abs(a - b) / np.spacing(np.maximum(np.abs(a), np.abs(b))),
                        initial=0.0))


def test_bce_exact_form_is_the_numpy_api_and_mpmath() -> None:
    """log_clamp=None: the exact form, equal to crossentropy.binary_cross_entropy (value and
    gradient) and to mpmath for the values."""
    q, y = _pairs()
    v, gq, _ = _bce_value_grads(cet.binary_cross_entropy, q, y, reduction="none",
                                log_clamp=None)
    nv, ng = ce.binary_cross_entropy(q.numpy(), y.numpy(), reduction="none", return_grad=True)
    g = torch.linspace(0.5, 1.5, v.numel(), dtype=f64)
    # The same formula, its logarithms from NumPy there and from torch here: the values are
    # equal to the bit where the two libraries' logarithms agree at these points, and differ
    # by no more than they do.  (On an AVX-512 CPU NumPy 1.26.4's vectorised float64 log
    # gives log(1e-50) 1 ulp from the correctly rounded value, which torch's log and NumPy
    # 2.4.6's give: bit equality there.)
    qn = q.numpy()
    inside = (qn > 0) & (qn < 1)
    log_gap = max(_ulps(np.log(qn[inside]), torch.log(q[inside]).numpy()),
                  _ulps(np.log1p(-qn[inside]), torch.log1p(-q[inside]).numpy()))
    assert _ulps(v.numpy(), nv) <= math.ceil(log_gap), (_ulps(v.numpy(), nv), log_gap)
    np.testing.assert_allclose(gq.numpy(), g.numpy() * ng, rtol=1e-15, atol=0.0)
    mpmath.mp.dps = 60
    for qi, yi, vi in zip(q.tolist(), y.tolist(), v.tolist(), strict=True):
        mq, my = mpmath.mpf(qi), mpmath.mpf(yi)
        terms = []
        if my != 0:
            terms.append(my * (mpmath.log(mq) if mq > 0 else -mpmath.inf))
        if my != 1:
            terms.append((1 - my) * (mpmath.log1p(-mq) if mq < 1 else -mpmath.inf))
        want = -mpmath.fsum(terms)
        if mpmath.isinf(want):
            assert vi == math.inf
        else:
            assert vi == pytest.approx(float(want), rel=1e-15, abs=1e-300)
    assert float(cet.BCELoss(log_clamp=None)(torch.tensor([0.0]), torch.tensor([1.0]))) == \
        math.inf


def test_bce_log_clamp_keyword() -> None:
    q, y = torch.tensor([1e-30, 0.5], dtype=f64), torch.tensor([1.0, 1.0], dtype=f64)
    # a custom clamp: -max(log q, -50)
    got = cet.binary_cross_entropy(q, y, log_clamp=-50.0, reduction="none")
    _same(got, torch.tensor([50.0, math.log(2.0)], dtype=f64))
    for bad in (True, "-100", torch.tensor(-100.0)):
        with pytest.raises(TypeError, match="log_clamp"):
            cet.binary_cross_entropy(q, y, log_clamp=bad)
    for bad in (1.0, math.nan, -math.inf):
        with pytest.raises(ValueError, match="log_clamp"):
            cet.binary_cross_entropy(q, y, log_clamp=bad)


def test_bce_clamped_form_under_torch_func_and_second_derivatives() -> None:
    from torch.func import grad, vmap

    q = torch.rand(6, generator=_gen(31), dtype=f64) * 0.8 + 0.1
    y = torch.rand(6, generator=_gen(32), dtype=f64)
    qs = torch.cat([q[:4], torch.tensor([0.0, 1.0], dtype=f64)])
    ours = vmap(grad(lambda a, b: cet.binary_cross_entropy(a, b)))(qs[:, None], y[:, None])
    theirs = vmap(grad(lambda a, b: F.binary_cross_entropy(a, b)))(qs[:, None], y[:, None])
    torch.testing.assert_close(ours, theirs, rtol=1e-15, atol=0.0)
    qa = q.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a: cet.binary_cross_entropy(a, y), (qa,))
    assert torch.autograd.gradgradcheck(lambda a: cet.binary_cross_entropy(a, y), (qa,))


def test_crossentropy_torch_nn_is_a_whole_torch_nn() -> None:
    """``import crossentropy.torch.nn as nn`` (the issue's spelling): the loss modules are
    ours, every other name torch.nn's; the zero-class example gives torch's value."""
    import crossentropy.torch.nn as cnn
    from crossentropy.torch import modules

    assert cnn.CrossEntropyLoss is modules.CrossEntropyLoss
    assert cnn.BCELoss is modules.BCELoss and cnn.BCEWithLogitsLoss is modules.BCEWithLogitsLoss
    assert cnn.Linear is torch.nn.Linear and cnn.functional is torch.nn.functional
    assert {"CrossEntropyLoss", "Linear", "Module"} <= set(dir(cnn))
    x, t = torch.rand(5, 0), torch.rand(5, 0)
    got, want = cnn.CrossEntropyLoss()(x, t), torch.nn.CrossEntropyLoss()(x, t)
    assert torch.equal(got.isnan(), want.isnan()) and got.shape == want.shape
    with pytest.raises(AttributeError, match="no attribute 'NoSuchLayer'"):
        cnn.NoSuchLayer  # noqa: B018
