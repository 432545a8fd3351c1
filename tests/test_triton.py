"""crossentropy.triton: the seam and the public functions, kernels in the Triton interpreter.

``TRITON_INTERPRET=1`` is set for this module (and restored afterwards); the kernels module
is (re)imported in that mode by the launchers.  Every result is judged against an
independent float64 reference: ``torch.nn.functional.cross_entropy`` in float64 on the same
(float32) logits, soft-capped in float64, plus the z-loss from ``torch.logsumexp``; rows
with losses of 1e-18 against mpmath.  Low-precision results must be no worse than
PyTorch's own result in the same dtype, plus half an ulp of that dtype.  Shapes are small
and odd (the interpreter is ~10^4x slower than a GPU) and never multiples of the
interpreter block sizes (BLOCK_C 64, BLOCK_N 16, BLOCK_V 32, BLOCK_D 16).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Triton's interpreter: set before triton is imported (tests/_triton_interp.py says why)
import _triton_interp

_triton_interp.enter()
torch = pytest.importorskip("torch")
pytest.importorskip("triton.language")  # decorated in interpreter mode from here on
_triton_interp.restore()
F = torch.nn.functional

import mpmath  # noqa: E402

from crossentropy._options import CrossEntropyOptions  # noqa: E402
from crossentropy.triton import (  # noqa: E402
    TritonUnavailable,
    _launch,
    cross_entropy,
    cross_entropy_2d,
    is_available,
    linear_cross_entropy,
    linear_cross_entropy_2d,
    supports,
)

ROOT = Path(__file__).resolve().parents[1]
U32 = 2.0**-24  # float32 unit roundoff


@pytest.fixture(autouse=True, scope="module")
def _interpreter() -> Iterator[None]:
    """Keep TRITON_INTERPRET=1 while this module runs (kernels in interpreter mode, no
    inf - inf, 0 * inf, x / 0 or overflow inside a kernel); restore it afterwards."""
    yield from _triton_interp.interpreting()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _opts(**kw: Any) -> CrossEntropyOptions:
    return CrossEntropyOptions.create(semantics="torch", **kw)


def _upstream(out: torch.Tensor, seed: int = 99) -> torch.Tensor:
    """A non-trivial incoming gradient (so backward's scaling is exercised)."""
    if out.dim() == 0:
        return torch.tensor(1.75, dtype=torch.float64)
    return torch.rand(out.shape, generator=_gen(seed), dtype=torch.float64) + 0.5


def truth(
    z: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int | None = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float | None = None,
    normalizer: float | None = None,
) -> torch.Tensor:
    """The float64 reference, built from torch's own float64 cross-entropy (differentiable
    in z, which the caller passes as float64)."""
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    w = weight.double() if weight is not None else None
    prob = target.dtype.is_floating_point
    ign = -100 if ignore_index is None or prob else ignore_index
    rows = F.cross_entropy(
        z, target.double() if prob else target, weight=w, ignore_index=ign,
        reduction="none", label_smoothing=label_smoothing,
    )
    counted = torch.ones_like(rows, dtype=torch.bool) if prob else target != ign
    if z_loss:
        rows = rows + torch.where(counted, z_loss * torch.logsumexp(z, dim=1) ** 2, 0.0)
    scale = 1.0 if base is None else 1.0 / math.log(base)
    if reduction == "none":
        return rows * scale
    total = rows.sum() * scale
    if normalizer is not None:
        return total / normalizer
    if reduction == "sum":
        return total
    if prob:
        return total / rows.shape[0]
    wy = counted.double() if w is None else torch.where(counted, w[target.clamp(min=0)], 0.0)
    return total / wy.sum()


def _spacing32(want: torch.Tensor) -> torch.Tensor:
    """The float32 ulp at each value of `want` (as float64)."""
    w32 = np.atleast_1d(want.detach().float().abs().numpy())
    return torch.from_numpy(np.spacing(w32).astype(np.float64)).reshape(want.shape)


def _ulps(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """|got - want| in float32 ulps of want (spacing of want rounded to float32)."""
    sp = _spacing32(want)
    return (got.double() - want).abs() / sp


def _mp_loss(row: torch.Tensor, y: int) -> float:
    """-log softmax(row)[y] to 40 digits (mpmath), row's float values taken exactly."""
    with mpmath.workdps(40):
        zs = [mpmath.mpf(float(v)) for v in row]
        lse = mpmath.log(mpmath.fsum(mpmath.exp(z) for z in zs))
        return float(lse - zs[y])


# --------------------------------------------------------------------- availability


def test_importable_without_triton_and_says_so() -> None:
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, crossentropy.triton as T\n"
        "from crossentropy._options import CrossEntropyOptions as O\n"
        "assert T.is_available() is False\n"
        "print(T.supports(torch.zeros(2, 3)))\n"
        "try:\n"
        "    T.cross_entropy_2d(torch.zeros(2, 3), torch.tensor([0, 1]), None, O())\n"
        "except T.TritonUnavailable as e:\n"
        "    print('raised', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("triton is not installed") == 2, run.stdout


def test_is_available_supports_and_no_silent_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_available() is True
    assert supports(torch.zeros(2, 3)) is None
    assert "float64" in (supports(torch.zeros(2, 3, dtype=torch.float64)) or "")
    assert "int64" in (supports(torch.zeros(2, 3, dtype=torch.int64)) or "")
    x, t = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(TritonUnavailable, match="float64"):
        cross_entropy(x.double(), t)
    with pytest.raises(TritonUnavailable, match="float64"):
        linear_cross_entropy(x.double(), torch.randn(7, 5, dtype=torch.float64), t)
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU tensors, no interpreter: no kernels
    assert is_available() is torch.cuda.is_available()
    assert supports(x) is not None
    with pytest.raises(TritonUnavailable, match="TRITON_INTERPRET"):
        cross_entropy_2d(x, t, None, _opts())
    with pytest.raises(TritonUnavailable):
        linear_cross_entropy_2d(x, torch.randn(7, 5), None, t, None, _opts())


# --------------------------------------------------------------------- kernel 1

N1, C1 = 13, 150  # 150 = 2 * 64 + 22: the last block of each row is partial

CE_CASES: list[dict[str, Any]] = [
    {},
    {"reduction": "sum", "weight": True, "label_smoothing": 0.15, "ignore": True},
    {"reduction": "none", "z_loss": 1e-2, "softcap": 4.0, "base": 2, "ignore": True,
     "weight": True},
    {"prob": True, "weight": True, "label_smoothing": 0.1},
    {"prob": True, "reduction": "none", "z_loss": 2e-3},
    {"ignore_index": None, "normalizer": 7.5, "weight": True, "seam": True},
    {"prob": True, "reduction": "sum", "softcap": 3.0, "weight": True, "seam": True},
]


def _ce_inputs(case: dict[str, Any], n: int, c: int, seed: int) -> tuple[Any, ...]:
    g = _gen(seed)
    x = torch.randn(n, c, generator=g) * 3
    if case.get("prob"):
        t = torch.softmax(torch.randn(n, c, generator=g) * 2, dim=1)
    else:
        t = torch.randint(0, c, (n,), generator=g)
        if case.get("ignore"):
            t[[0, 5, n - 1]] = -100
    w = torch.rand(c, generator=g) + 0.5 if case.get("weight") else None
    kw = {k: v for k, v in case.items() if k not in ("prob", "ignore", "weight", "seam")}
    return x, t, w, kw


def _check_float32(out: torch.Tensor, want: torch.Tensor, softcap: float | None,
                   zmax: float) -> None:
    """float32 value within 4 ulp of the float64 truth of the same logits (with a soft
    cap, the rounding of each capped logit to float32, 2 ulp of max|z'|, is added)."""
    err = (out.double() - want).abs()
    bound = 4 * _spacing32(want)
    if softcap is not None:
        bound = bound + 4 * U32 * zmax * (1 + want.abs())
    assert bool((err <= bound).all()), float((err / bound).max())


@pytest.mark.parametrize("case", CE_CASES, ids=lambda c: ",".join(sorted(c)) or "plain")
def test_cross_entropy_float32_against_float64(case: dict[str, Any]) -> None:
    x, t, w, kw = _ce_inputs(case, N1, C1, 10)
    a = x.clone().requires_grad_()
    if case.get("seam"):
        out, lse = cross_entropy_2d(a, t, w, _opts(**kw))
    else:
        out, lse = cross_entropy(a, t, weight=w, return_lse=True, **kw)
    b = x.double().requires_grad_()
    want = truth(b, t, w, **kw)
    assert out.dtype == torch.float32 and out.shape == want.shape and lse.shape == (N1,)
    cap = kw.get("softcap")
    z64 = x.double() if cap is None else cap * torch.tanh(x.double() / cap)
    _check_float32(out.detach(), want.detach(), cap, float(z64.abs().max()))
    torch.testing.assert_close(lse.double(), torch.logsumexp(z64, -1), rtol=4 * U32, atol=0)
    up = _upstream(want)
    out.backward(up.float())
    want.backward(up)
    assert a.grad is not None and b.grad is not None
    scale = float(b.grad.abs().max())
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=16 * U32 * scale)


def test_confident_rows_within_4_ulp_of_mpmath() -> None:
    # Target = argmax by a margin of 8..40: the loss is log1p(sum of tiny terms), down to
    # ~1e-17, where lse - z_y in float32 gives 0 (torch's float32 result) and float64
    # F.cross_entropy is off by 1e-16.  Index and one-hot probability targets, the
    # materialised kernel and the fused linear kernel (one-hot hidden rows: the logits are
    # W's columns, exactly).
    n, c = 12, 90
    g = _gen(27)
    x = torch.randn(n, c, generator=g)
    t = torch.randint(0, c, (n,), generator=g)
    conf = torch.arange(10)
    x[conf, t[conf]] = torch.linspace(8.0, 40.0, 10) + x[conf].max(dim=1).values
    want = torch.tensor([_mp_loss(x[i], int(t[i])) for i in range(n)], dtype=torch.float64)
    assert float(want.min()) < 1e-15
    assert float(F.cross_entropy(x, t, reduction="none").min()) == 0.0  # torch float32
    one_hot = F.one_hot(t, c).float()
    h = torch.eye(n, 20)
    W = torch.zeros(c, 20)
    W[:, :n] = x.T
    for out in (
        cross_entropy(x, t, reduction="none"),
        cross_entropy(x, one_hot, reduction="none"),
        linear_cross_entropy(h, W, t, reduction="none"),
    ):
        assert float(_ulps(out, want).max()) <= 4.0
    # the gradient at the argmax, -s / (1 + s), keeps its relative accuracy too
    a = x.clone().requires_grad_()
    cross_entropy(a, t, reduction="sum").backward()
    assert a.grad is not None
    with mpmath.workdps(40):
        for i in (0, 9):
            zs = [mpmath.mpf(float(v)) for v in x[i]]
            y = int(t[i])
            rest = mpmath.fsum(mpmath.exp(z - zs[y]) for j, z in enumerate(zs) if j != y)
            g_exact = float(-rest / (1 + rest))
            assert abs(float(a.grad[i, y]) - g_exact) <= 8 * U32 * abs(g_exact)


def test_softcap_gradient_is_the_exact_sech2_far_out() -> None:
    # d/dx cap tanh(x/cap) = sech^2(x/cap): 1.5e-10 at x/cap = 12, where float32
    # (1 - t)(1 + t) gives 0 and 1 - t^2 is off by 2x at 9.  Reference: float64 autograd.
    x = torch.tensor([[12.0, 0.3, -0.2, 9.0, -12.5, 1.0]])
    t = torch.tensor([0])
    a = x.clone().requires_grad_()
    cross_entropy(a, t, softcap=1.0, reduction="sum").backward()
    b = x.double().requires_grad_()
    truth(b, t, softcap=1.0, reduction="sum").backward()
    assert a.grad is not None and b.grad is not None
    assert float(a.grad[0, 0]) != 0.0
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=0)


def test_empty_mean_is_nan_with_zero_gradient_like_torch() -> None:
    x = torch.randn(6, 70, generator=_gen(14))
    t = torch.full((6,), -1)
    a = x.clone().requires_grad_()
    out = cross_entropy(a, t, ignore_index=-1, label_smoothing=0.2)
    assert torch.isnan(out)  # torch semantics (opts.empty_mean)
    assert torch.isnan(F.cross_entropy(x, t, ignore_index=-1, label_smoothing=0.2))
    out.backward()
    assert a.grad is not None and torch.equal(a.grad, torch.zeros_like(x))
    assert torch.equal(cross_entropy(x, t, ignore_index=-1, reduction="sum"), torch.tensor(0.0))
    assert torch.equal(cross_entropy(x, t, ignore_index=-1, reduction="none"), torch.zeros(6))
    h = torch.randn(9, 20, generator=_gen(22)).requires_grad_()
    W = torch.randn(45, 20, generator=_gen(23)).requires_grad_()
    out_l = linear_cross_entropy(h, W, torch.full((9,), -100), z_loss=1e-2)
    assert torch.isnan(out_l)
    out_l.backward()
    assert h.grad is not None and W.grad is not None
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(W.grad, torch.zeros_like(W))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cross_entropy_low_precision_no_worse_than_torch(dtype: str) -> None:
    dt = getattr(torch, dtype)
    g = _gen(15)
    x = (torch.randn(19, 133, generator=g) * 4).to(dt)
    t = torch.randint(0, 133, (19,), generator=g)
    t[3] = -100
    w = (torch.rand(133, generator=g) + 0.5).to(dt)  # torch wants the input's dtype
    kw: dict[str, Any] = {"weight": w, "label_smoothing": 0.1, "reduction": "none"}
    a = x.clone().requires_grad_()
    ours = cross_entropy(a, t, **kw)
    b = x.clone().requires_grad_()
    theirs = F.cross_entropy(b, t, **kw)
    r = x.double().requires_grad_()
    want = truth(r, t, w, label_smoothing=0.1, reduction="none")
    assert ours.dtype == dt
    up = _upstream(want)
    ours.backward(up.to(dt))
    theirs.backward(up.to(dt))
    want.backward(up)
    assert a.grad is not None and b.grad is not None and r.grad is not None
    assert a.grad.dtype == dt
    half_ulp = float(torch.finfo(dt).eps) / 2
    err_ours = (ours.double() - want).abs().max()
    err_theirs = (theirs.double() - want).abs().max()
    assert err_ours <= err_theirs + half_ulp * want.abs().max()
    gerr_ours = (a.grad.double() - r.grad).abs().max()
    gerr_theirs = (b.grad.double() - r.grad).abs().max()
    assert gerr_ours <= gerr_theirs + half_ulp * r.grad.abs().max()


def test_inplace_grad_and_backward_twice() -> None:
    x = torch.randn(13, 100, generator=_gen(17))
    t = torch.randint(0, 100, (13,), generator=_gen(18))
    a = x.clone().requires_grad_()
    out = cross_entropy(a, t, z_loss=1e-3)
    out.backward(retain_graph=True)
    assert a.grad is not None
    once = a.grad.clone()
    out.backward()  # the gradient is computed in backward: a second one adds the same
    torch.testing.assert_close(a.grad, 2 * once, rtol=0, atol=0)
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0  # a non-leaf whose memory the kernel may reuse
    out2 = cross_entropy(logits, t, z_loss=1e-3, inplace_grad=True)
    out2.backward(retain_graph=True)
    assert not torch.equal(logits.detach(), x)  # the logits now hold the gradient
    assert leaf.grad is not None
    torch.testing.assert_close(leaf.grad, once, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out2.backward()
    # a node that saved the logits must refuse to run on the overwritten values
    src = x.clone().requires_grad_()
    e = torch.exp(src)  # exp saves its output for backward
    loss = cross_entropy(e, t, inplace_grad=True) + e.sum()
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_empty_batch_and_out_of_range_target() -> None:
    x = torch.zeros(0, 7, requires_grad=True)
    t = torch.zeros(0, dtype=torch.long)
    assert torch.isnan(cross_entropy(x, t))  # mean over nothing, as torch
    out = cross_entropy(x, t, reduction="sum")
    out.backward()
    assert float(out.detach()) == 0.0 and x.grad is not None and x.grad.shape == (0, 7)
    h = torch.zeros(0, 5, requires_grad=True)
    W = torch.randn(7, 5, requires_grad=True)
    out_l = linear_cross_entropy(h, W, t, reduction="sum")
    out_l.backward()
    assert float(out_l.detach()) == 0.0 and W.grad is not None
    assert torch.equal(W.grad, torch.zeros(7, 5))
    # On a GPU the targets are not read on the host: the seam marks the row NaN.
    x2 = torch.randn(5, 33, generator=_gen(19)).requires_grad_()
    t2 = torch.tensor([1, 2, 40, 3, 4])
    loss, _ = cross_entropy_2d(x2, t2, None, _opts(reduction="none"))
    assert torch.isnan(loss[2]) and torch.isfinite(loss[[0, 1, 3, 4]]).all()
    loss.sum().backward()
    assert x2.grad is not None and torch.isnan(x2.grad[2]).all()
    assert torch.isfinite(x2.grad[[0, 1, 3, 4]]).all()


# --------------------------------------------------------------------- kernel 2

LCE_CASES: list[dict[str, Any]] = [
    {"bias": True, "weight": True, "label_smoothing": 0.1, "ignore": True},
    {"softcap": 3.0, "z_loss": 1e-2, "reduction": "none", "base": 2, "weight": True},
    {"prob": True, "bias": True, "label_smoothing": 0.2, "reduction": "sum", "weight": True},
    {"ignore_index": None, "normalizer": 11.0, "bias": True, "chunks": True,
     "frozen_hidden": True, "seam": True},
]


@pytest.mark.parametrize("case", LCE_CASES, ids=lambda c: ",".join(sorted(c)))
def test_linear_cross_entropy_float32_against_float64(
    case: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    n, d, v = 37, 40, 150  # none a multiple of BLOCK_N 16, BLOCK_D 16, BLOCK_V 32
    g = _gen(20)
    h = torch.randn(n, d, generator=g)
    W = torch.randn(v, d, generator=g) * 0.4
    bias = torch.randn(v, generator=g) * 0.2
    if case.get("prob"):
        t = torch.softmax(torch.randn(n, v, generator=g) * 2, dim=1)
    else:
        t = torch.randint(0, v, (n,), generator=g)
    if case.get("chunks"):
        # three vocabulary ranges in the forward, backward in chunks of 64 columns
        monkeypatch.setitem(_launch.INTERPRETER_BLOCKS, "SPLIT", 3)
        monkeypatch.setitem(_launch.INTERPRETER_BLOCKS, "V_CHUNK", 64)
    special = ("weight", "ignore", "bias", "chunks", "frozen_hidden", "prob", "seam")
    kw = {k: val for k, val in case.items() if k not in special}
    if case.get("ignore"):
        t[[1, 30]] = -100
    w = torch.rand(v, generator=g) + 0.5 if case.get("weight") else None
    frozen = bool(case.get("frozen_hidden"))  # no grad_hidden: that kernel does not run
    hh, WW = h.clone().requires_grad_(not frozen), W.clone().requires_grad_()
    bb = bias.clone().requires_grad_() if case.get("bias") else None
    h64, W64 = h.double().requires_grad_(not frozen), W.double().requires_grad_()
    b64 = bias.double().requires_grad_() if case.get("bias") else None
    if case.get("seam"):
        out, lse = linear_cross_entropy_2d(hh, WW, bb, t, w, _opts(**kw))
    else:
        out, lse = linear_cross_entropy(hh, WW, t, linear_bias=bb, weight=w, return_lse=True,
                                        **kw)
    z64 = h64 @ W64.T + (b64 if b64 is not None else 0.0)
    want = truth(z64, t, w, **kw)
    # float32 logits carry the rounding of a D-term dot product: judge against the error
    # of torch's own float32 materialised logits (sqrt-free bound: D u max|h||w|)
    zerr = d * U32 * float((h.abs() @ W.abs().T).max())
    torch.testing.assert_close(out.double(), want.detach(), rtol=4 * zerr, atol=4 * zerr)
    cap = kw.get("softcap")
    zc = z64.detach() if cap is None else cap * torch.tanh(z64.detach() / cap)
    torch.testing.assert_close(lse.double(), torch.logsumexp(zc, -1), rtol=0, atol=4 * zerr)
    up = _upstream(want)
    out.backward(up.float())
    want.backward(up)
    pairs = [(WW, W64)] + ([(bb, b64)] if bb is not None else [])
    if frozen:
        assert hh.grad is None
    else:
        pairs.append((hh, h64))
    for ours, ref in pairs:
        assert ours is not None and ref is not None
        assert ours.grad is not None and ref.grad is not None
        scale = float(ref.grad.abs().max())
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-4, atol=1e-4 * scale)


def test_linear_cross_entropy_bf16_no_worse_than_torch() -> None:
    n, d, v = 29, 48, 133
    g = _gen(21)
    h = torch.randn(n, d, generator=g).bfloat16()
    W = (torch.randn(v, d, generator=g) * 0.3).bfloat16()
    b = (torch.randn(v, generator=g) * 0.1).bfloat16()
    t = torch.randint(0, v, (n,), generator=g)
    t[7] = -100
    ours_in = [h.clone().requires_grad_(), W.clone().requires_grad_(), b.clone().requires_grad_()]
    torch_in = [h.clone().requires_grad_(), W.clone().requires_grad_(), b.clone().requires_grad_()]
    ref_in = [h.double().requires_grad_(), W.double().requires_grad_(), b.double().requires_grad_()]
    ours = linear_cross_entropy(ours_in[0], ours_in[1], t, linear_bias=ours_in[2],
                                label_smoothing=0.1, softcap=5.0)
    logits = F.linear(*torch_in)
    theirs = F.cross_entropy(5.0 * torch.tanh(logits / 5.0), t, label_smoothing=0.1)
    want = truth(F.linear(*ref_in), t, label_smoothing=0.1, softcap=5.0)
    assert ours.dtype == torch.bfloat16
    for out in (ours, theirs, want):
        out.backward()
    half_ulp = float(torch.finfo(torch.bfloat16).eps) / 2
    o, th, tr = (float(x.detach()) for x in (ours, theirs, want))
    assert abs(o - tr) <= abs(th - tr) + half_ulp * abs(tr)
    for a, bt, r in zip(ours_in, torch_in, ref_in, strict=True):
        assert a.grad is not None and bt.grad is not None and r.grad is not None
        assert a.grad.dtype == torch.bfloat16
        e_ours = (a.grad.double() - r.grad).abs().max()
        e_theirs = (bt.grad.double() - r.grad).abs().max()
        assert e_ours <= e_theirs + half_ulp * r.grad.abs().max()


# --------------------------------------------------------------------- the public checks


def test_bad_arguments_raise_naming_them() -> None:
    x, t = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"target\[2\] = 7"):
        cross_entropy(x, torch.tensor([0, 1, 7, 9]))
    with pytest.raises(ValueError, match="probability targets"):
        cross_entropy(x, torch.rand(4, 6))
    with pytest.raises(ValueError, match="target"):
        cross_entropy(x, t[:3])
    with pytest.raises(TypeError, match="target"):
        cross_entropy(x, t.bool())
    with pytest.raises(ValueError, match="input"):
        cross_entropy(x[0], t[0])
    with pytest.raises(TypeError, match="input"):
        cross_entropy(x.numpy(), t)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(x, t, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="base"):
        cross_entropy(x, t, base=1)
    with pytest.raises(ValueError, match="z_loss"):
        cross_entropy(x, t, z_loss=-1.0)
    with pytest.raises(ValueError, match="softcap"):
        cross_entropy(x, t, softcap=0.0)
    with pytest.raises(ValueError, match="normalizer"):
        cross_entropy(x, t, normalizer=2.0, reduction="none")
    with pytest.raises(ValueError, match="weight"):
        cross_entropy(x, t, weight=torch.ones(4))
    h = torch.randn(4, 3)
    with pytest.raises(ValueError, match="linear_weight"):
        linear_cross_entropy(h, torch.randn(5, 2), t)
    with pytest.raises(TypeError, match="same dtype"):
        linear_cross_entropy(h, torch.randn(5, 3).half(), t)
    with pytest.raises(ValueError, match="linear_bias"):
        linear_cross_entropy(h, torch.randn(5, 3), t, linear_bias=torch.ones(4))


# --------------------------------------------------------------------- GPU build, bench

_COMPILE = ROOT / "bench" / "gpu.py"


def test_kernels_compile_for_sm90_without_a_gpu(tmp_path: Path) -> None:
    # The interpreter cannot catch what only the compiler sees (types of loop-carried
    # values, tl.dot shapes and dtypes, layouts, float64 lowering): compile every kernel,
    # every option on, index and probability targets, to sm_90 cubins with the ptxas
    # bundled in the triton wheel, in a fresh process without TRITON_INTERPRET.
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # triton 3.9 warns when it is unset
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a fresh cache: really compile
    run = subprocess.run(
        [sys.executable, "-W", "error", str(_COMPILE), "--compile-only"],
        capture_output=True, text=True, env=env, timeout=400,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    # 10 kernels, and the token statistics' variants of the two fused ones (temperature and
    # entropy, from hidden states and from logits)
    assert run.stdout.count("compiled") == 14, run.stdout
    assert run.stdout.count("HAS_TEMP,HAS_ENT") == 4, run.stdout


def test_bench_gpu_dry_run_in_the_interpreter(tmp_path: Path) -> None:
    out = tmp_path / "gpu.csv"
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--dry-run", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "check" in run.stdout and "PASS" in run.stdout and "FAIL" not in run.stdout
    text = out.read_text()
    assert "ours" in text and "gemm-floor" in text and "copy" in text
    assert "check grpo-stats" in run.stdout  # the token statistics on the kernels, checked
    assert "grpo-stats,ours" in text.replace('"', "")
    assert "not measured" in text  # a dry run measures nothing on a GPU


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_loss_value_unrounded_through_the_torch_layer(dtype: Any) -> None:
    """crossentropy.torch's ``dtype=torch.float32`` on the Triton path: the float32
    accumulation of a bf16/fp16 loss comes back unrounded (transformers' loss value), for
    the logits and the fused linear loss; the default stays the input's dtype."""
    import crossentropy.torch as cet

    g = _gen(5)
    h = torch.randn(13, 8, generator=g).to(dtype)
    W = torch.randn(37, 8, generator=g).to(dtype)
    y = torch.randint(0, 37, (13,), generator=g)
    y[3] = -100
    z = (h.double() @ W.double().T).to(dtype)  # the logits as the unfused model rounds them
    for got, want, default in (
        (cet.cross_entropy(z, y, impl="triton", dtype=torch.float32),
         F.cross_entropy(z.double(), y), cet.cross_entropy(z, y, impl="triton")),
        (cet.linear_cross_entropy(h, W, y, impl="triton", dtype=torch.float32),
         F.cross_entropy(h.double() @ W.double().T, y),
         cet.linear_cross_entropy(h, W, y, impl="triton")),
    ):
        assert got.dtype == torch.float32 and default.dtype == dtype
        assert abs(float(got) - float(want)) <= 1e-5 * abs(float(want))
        assert float(got) != float(got.to(dtype))  # off the low-precision grid
        assert float(default) == float(got.to(dtype))  # the same value, rounded once
