"""crossentropy.triton: the Triton kernels run in the Triton interpreter on CPU tensors.

``TRITON_INTERPRET=1`` is set for this module (and restored afterwards); the kernels module
is (re)imported in that mode by the launchers.  Every kernel result is judged against the
float64 pure-PyTorch reference (``_reference``), which is itself checked against
``torch.nn.functional.cross_entropy`` in float64 and against the exact NumPy core.
Low-precision results must be no worse than PyTorch's own result in the same dtype, plus a
small tolerance.  Shapes are small and odd (the interpreter is ~10^4x slower than a GPU)
and never multiples of the interpreter block sizes (BLOCK_C 64, BLOCK_N 16, BLOCK_V 32,
BLOCK_D 16).
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

# The interpreter mode is fixed when triton is first imported (its own @triton.jit helpers
# such as tl.max are decorated then), so set it before importing triton; if another test
# module imported triton in compiled mode already, import a fresh copy in interpreter mode.
_OLD_INTERPRET = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
if "triton" in sys.modules:
    import triton.language as _tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(_tl.standard.max, InterpretedFunction):
        for _name in [m for m in sys.modules if m == "triton" or m.startswith("triton.")]:
            del sys.modules[_name]
        sys.modules.pop("crossentropy.triton._kernels", None)

torch = pytest.importorskip("torch")
pytest.importorskip("triton.language")  # decorated in interpreter mode from here on
# The other test modules run without the variable; the fixture below sets it for this one.
if _OLD_INTERPRET is None:
    del os.environ["TRITON_INTERPRET"]
else:
    os.environ["TRITON_INTERPRET"] = _OLD_INTERPRET
F = torch.nn.functional

import crossentropy as ce  # noqa: E402
from crossentropy.triton import (  # noqa: E402
    _autograd,
    _launch,
    cross_entropy,
    is_available,
    linear_cross_entropy,
)
from crossentropy.triton._reference import (  # noqa: E402
    cross_entropy_reference,
    linear_cross_entropy_reference,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _interpreter() -> Iterator[None]:
    """Keep TRITON_INTERPRET=1 while this module runs; restore it afterwards."""
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime.interpreter import InterpretedFunction

    kernels = sys.modules.get("crossentropy.triton._kernels")
    if kernels is not None and not isinstance(kernels.ce_fwd_kernel, InterpretedFunction):
        importlib.reload(kernels)  # imported (e.g. by doctest collection) in compiled mode
    try:
        yield
    finally:
        if _OLD_INTERPRET is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = _OLD_INTERPRET


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(n: int, c: int, seed: int, scale: float = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    x = torch.randn(n, c, generator=g) * scale
    t = torch.randint(0, c, (n,), generator=g)
    return x, t


def _as64(kw: dict[str, object]) -> dict[str, object]:
    return {k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}


def _upstream(out: torch.Tensor, seed: int = 99) -> torch.Tensor:
    """A non-trivial incoming gradient (so backward's scaling is exercised)."""
    if out.dim() == 0:
        return torch.tensor(1.75, dtype=out.dtype)
    return torch.rand(out.shape, generator=_gen(seed), dtype=torch.float64).to(out.dtype) + 0.5


# --------------------------------------------------------------------- the reference


def test_reference_matches_torch_float64() -> None:
    x, t = _data(23, 11, 0)
    t[[2, 7]] = -100
    w = torch.rand(11, generator=_gen(1), dtype=torch.float64) + 0.25
    for kw in (
        {},
        {"weight": w},
        {"label_smoothing": 0.2},
        {"weight": w, "label_smoothing": 0.3, "reduction": "sum"},
        {"weight": w, "label_smoothing": 0.1, "reduction": "none"},
    ):
        a = x.double().requires_grad_()
        b = x.double().requires_grad_()
        ours = cross_entropy_reference(a, t, **kw)  # type: ignore[arg-type]
        want = F.cross_entropy(b, t, **kw)  # type: ignore[arg-type]
        torch.testing.assert_close(ours, want, rtol=1e-13, atol=1e-13)
        up = _upstream(want)
        ours.backward(up)
        want.backward(up)
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-13, atol=1e-13)


def test_reference_base_softcap_zloss_against_independent_formulas() -> None:
    x, t = _data(9, 7, 2)
    x64 = x.double()
    # base 2 against the exact NumPy core
    bits = cross_entropy_reference(x64, t, base=2)
    exact = float(ce.cross_entropy(x64.numpy(), t.numpy(), base=2))
    assert float(bits) == pytest.approx(exact, rel=1e-14)
    # softcap: the loss of the capped logits
    capped = 2.5 * torch.tanh(x64 / 2.5)
    assert float(cross_entropy_reference(x64, t, softcap=2.5)) == pytest.approx(
        float(F.cross_entropy(capped, t)), rel=1e-14
    )
    # z-loss: mean cross-entropy + lambda * mean(lse^2), lse from the NumPy core
    lse = ce.logsumexp(x64.numpy(), axis=-1)
    want = float(F.cross_entropy(x64, t)) + 1e-2 * float(np.mean(lse**2))
    assert float(cross_entropy_reference(x64, t, z_loss=1e-2)) == pytest.approx(want, rel=1e-14)


def test_weighted_zloss_agrees_with_the_torch_layer_and_cpu_kernel() -> None:
    """With class weights, z-loss adds z * lse^2 per counted row, unweighted, in every
    backend (it once was z * w_y * lse^2 here only)."""
    import crossentropy.torch as cet

    x, t = _data(11, 9, 21)
    x64 = x.double()
    t[3] = -100
    w = torch.rand(9, generator=_gen(22), dtype=torch.float64) + 0.5
    for red in ("none", "mean", "sum"):
        kw = {"weight": w, "z_loss": 0.05, "label_smoothing": 0.1, "reduction": red}
        a = x64.clone().requires_grad_()
        b = x64.clone().requires_grad_()
        ours = cross_entropy_reference(a, t, **kw)
        layer = cet.cross_entropy(b, t, **kw)
        torch.testing.assert_close(ours, layer, rtol=1e-13, atol=1e-13)
        ours.sum().backward()
        layer.sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-13)
    # independent: the unweighted z-term on top of F.cross_entropy's weighted sum
    lse = torch.logsumexp(x64, -1)
    keep = t != -100
    want = F.cross_entropy(x64, t, weight=w, reduction="sum") + 0.05 * (lse[keep] ** 2).sum()
    got = cross_entropy_reference(x64, t, weight=w, z_loss=0.05, reduction="sum")
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def test_reference_all_ignored_is_nan_with_zero_grad_like_torch() -> None:
    x, _ = _data(5, 4, 3)
    t = torch.full((5,), -100)
    a = x.clone().requires_grad_()
    out = cross_entropy_reference(a, t, label_smoothing=0.1)
    assert torch.isnan(out)
    out.backward()
    assert a.grad is not None and torch.equal(a.grad, torch.zeros_like(x))


# --------------------------------------------------------------------- kernel 1


CE_CASES = [
    {},
    {"reduction": "sum"},
    {"reduction": "none", "ignore": True},
    {"weight": True, "label_smoothing": 0.15, "ignore": True},
    {"weight": True, "label_smoothing": 0.1, "reduction": "none", "z_loss": 1e-3},
    {"softcap": 4.0, "base": 2, "z_loss": 2e-3, "ignore": True},
]


@pytest.mark.parametrize("case", CE_CASES, ids=lambda c: ",".join(sorted(c)) or "plain")
def test_cross_entropy_kernel_float32_matches_float64(case: dict[str, object]) -> None:
    n, c = 37, 301  # 301 = 4 * 64 + 45: the last block of each row is partial
    x, t = _data(n, c, 10)
    kw = {k: v for k, v in case.items() if k not in ("weight", "ignore")}
    if case.get("ignore"):
        t[[0, 5, 36]] = -100
    if case.get("weight"):
        kw["weight"] = torch.rand(c, generator=_gen(11)) + 0.5
    a = x.clone().requires_grad_()
    out, lse = cross_entropy(a, t, return_lse=True, **kw)
    b = x.double().requires_grad_()
    want = cross_entropy_reference(b, t, **_as64(kw))
    assert out.dtype == torch.float32 and out.shape == want.shape
    torch.testing.assert_close(out.double(), want, rtol=2e-6, atol=2e-6)
    cap = case.get("softcap")
    z64 = x.double() if cap is None else cap * torch.tanh(x.double() / cap)
    torch.testing.assert_close(lse.double(), torch.logsumexp(z64, -1), rtol=1e-6, atol=1e-6)
    up = _upstream(want)
    out.backward(up.float())
    want.backward(up)
    assert a.grad is not None and b.grad is not None
    torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-5, atol=1e-7)


def test_cross_entropy_kernel_matches_torch_functional() -> None:
    x, t = _data(19, 130, 12)
    t[4] = -100
    w = torch.rand(130, generator=_gen(13)) + 0.2
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    ours = cross_entropy(a, t, weight=w, label_smoothing=0.05)
    want = F.cross_entropy(b, t, weight=w, label_smoothing=0.05)
    torch.testing.assert_close(ours, want, rtol=1e-5, atol=1e-6)
    ours.backward()
    want.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)


def test_cross_entropy_kernel_all_ignored() -> None:
    x, _ = _data(6, 70, 14)
    t = torch.full((6,), -1)
    a = x.clone().requires_grad_()
    out = cross_entropy(a, t, ignore_index=-1, label_smoothing=0.2)
    assert torch.isnan(out)  # 0 / 0, as torch
    out.backward()
    assert a.grad is not None and torch.equal(a.grad, torch.zeros_like(x))  # as torch
    assert torch.equal(cross_entropy(x, t, ignore_index=-1, reduction="sum"), torch.tensor(0.0))
    assert torch.equal(cross_entropy(x, t, ignore_index=-1, reduction="none"), torch.zeros(6))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cross_entropy_kernel_low_precision_no_worse_than_torch(dtype: str) -> None:
    dt = getattr(torch, dtype)
    x, t = _data(29, 203, 15, scale=4.0)
    x = x.to(dt)
    t[3] = -100
    w = (torch.rand(203, generator=_gen(16)) + 0.5).to(dt)  # torch wants the input's dtype
    kw = {"weight": w, "label_smoothing": 0.1, "reduction": "none"}
    a = x.clone().requires_grad_()
    ours = cross_entropy(a, t, **kw)
    b = x.clone().requires_grad_()
    theirs = F.cross_entropy(b, t, **kw)
    r = x.double().requires_grad_()
    truth = cross_entropy_reference(r, t, **_as64(kw))
    assert ours.dtype == dt
    up = _upstream(truth)
    ours.backward(up.to(dt))
    theirs.backward(up.to(dt))
    truth.backward(up)
    assert a.grad is not None and b.grad is not None and r.grad is not None
    assert a.grad.dtype == dt
    ulp = float(torch.finfo(dt).eps)
    err_ours = (ours.double() - truth).abs().max()
    err_theirs = (theirs.double() - truth).abs().max()
    assert err_ours <= err_theirs + ulp * truth.abs().max()
    gerr_ours = (a.grad.double() - r.grad).abs().max()
    gerr_theirs = (b.grad.double() - r.grad).abs().max()
    assert gerr_ours <= gerr_theirs + ulp * r.grad.abs().max()


def test_confident_predictions_keep_relative_accuracy() -> None:
    # Target = argmax by a margin of 20..34: the loss is log1p(sum of tiny terms), down to
    # ~1e-13.  lse - z_y in float32 would round it to 0 (torch's float32 result is 0 here);
    # (m - z_y) + log1p(r) keeps it to float32 relative accuracy.
    x, t = _data(20, 150, 27, scale=1.0)
    margin = torch.linspace(20.0, 34.0, 20)
    x[torch.arange(20), t] = margin
    want = cross_entropy_reference(x.double(), t, reduction="none")
    assert float(want.min()) < 1e-12
    assert float(F.cross_entropy(x, t, reduction="none").min()) == 0.0  # torch float32
    ours = cross_entropy(x, t, reduction="none")
    torch.testing.assert_close(ours.double(), want, rtol=1e-5, atol=0)
    # the fused linear kernel: hidden = one-hot rows, so the logits are W's columns
    h = torch.eye(20, 24)
    W = torch.zeros(150, 24)
    W[:, :20] = x.T
    want_l = linear_cross_entropy_reference(h.double(), W.double(), t, reduction="none")
    ours_l = linear_cross_entropy(h, W, t, reduction="none")
    torch.testing.assert_close(ours_l.double(), want_l, rtol=1e-5, atol=0)


def test_cross_entropy_inplace_grad() -> None:
    x, t = _data(21, 100, 17)
    a = x.clone().requires_grad_()
    cross_entropy(a, t, z_loss=1e-3).backward()
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.0  # a non-leaf whose memory the kernel may reuse
    out = cross_entropy(logits, t, z_loss=1e-3, inplace_grad=True)
    assert not torch.equal(logits.detach(), x)  # the logits now hold the gradient
    out.backward()
    assert leaf.grad is not None and a.grad is not None
    torch.testing.assert_close(leaf.grad, a.grad, rtol=0, atol=0)
    # a node that saved the logits must refuse to run on the overwritten values
    src = x.clone().requires_grad_()
    e = torch.exp(src)  # exp saves its output for backward
    loss = cross_entropy(e, t, inplace_grad=True) + e.sum()
    with pytest.raises(RuntimeError, match="inplace"):
        loss.backward()


def test_cross_entropy_backward_twice_raises() -> None:
    x, t = _data(4, 10, 18)
    a = x.clone().requires_grad_()
    out = cross_entropy(a, t)
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.backward()


def test_empty_batch_like_torch() -> None:
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


def test_out_of_range_target_gives_nan_on_the_device_path() -> None:
    # On a GPU the targets are not read on the host; the kernel marks the row NaN.
    x, t = _data(5, 33, 19)
    t[2] = 40
    loss, _ = _autograd.CrossEntropyFunction.apply(
        x.clone().requires_grad_(), t, None, -100, "none", 0.0, 1.0, 0.0, None, False
    )
    assert torch.isnan(loss[2]) and torch.isfinite(loss[[0, 1, 3, 4]]).all()


# --------------------------------------------------------------------- kernel 2


LCE_CASES = [
    {},
    {"bias": True, "weight": True, "label_smoothing": 0.1, "ignore": True},
    {"softcap": 3.0, "z_loss": 1e-3, "reduction": "none", "base": 2},
    {"reduction": "sum", "bias": True, "chunks": True, "frozen_hidden": True},
]


@pytest.mark.parametrize("case", LCE_CASES, ids=lambda c: ",".join(sorted(c)) or "plain")
def test_linear_cross_entropy_kernel_float32_matches_float64(
    case: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    n, d, v = 37, 40, 150  # none a multiple of BLOCK_N 16, BLOCK_D 16, BLOCK_V 32
    g = _gen(20)
    h = torch.randn(n, d, generator=g)
    W = torch.randn(v, d, generator=g) * 0.4
    bias = torch.randn(v, generator=g) * 0.2
    t = torch.randint(0, v, (n,), generator=g)
    if case.get("chunks"):
        # three vocabulary ranges in the forward, backward in chunks of 64 columns
        monkeypatch.setitem(_launch.INTERPRETER_BLOCKS, "SPLIT", 3)
        monkeypatch.setitem(_launch.INTERPRETER_BLOCKS, "V_CHUNK", 64)
    special = ("weight", "ignore", "bias", "chunks", "frozen_hidden")
    kw = {k: val for k, val in case.items() if k not in special}
    if case.get("ignore"):
        t[[1, 30]] = -100
    if case.get("weight"):
        kw["weight"] = torch.rand(v, generator=g) + 0.5
    frozen = bool(case.get("frozen_hidden"))  # no grad_hidden: the kernel skips that product
    leaves = [h.clone().requires_grad_(not frozen), W.clone().requires_grad_()]
    leaves64 = [h.double().requires_grad_(not frozen), W.double().requires_grad_()]
    if case.get("bias"):
        leaves.append(bias.clone().requires_grad_())
        leaves64.append(bias.double().requires_grad_())
    b_ours = leaves[2] if len(leaves) > 2 else None
    b_ref = leaves64[2] if len(leaves64) > 2 else None
    out, lse = linear_cross_entropy(
        leaves[0], leaves[1], t, linear_bias=b_ours, return_lse=True, **kw
    )
    want, lse64 = linear_cross_entropy_reference(
        leaves64[0], leaves64[1], t, linear_bias=b_ref, return_lse=True, **_as64(kw)
    )
    torch.testing.assert_close(out.double(), want, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(lse.double(), lse64, rtol=1e-6, atol=1e-6)
    up = _upstream(want)
    out.backward(up.float())
    want.backward(up)
    if frozen:
        assert leaves[0].grad is None
        leaves, leaves64 = leaves[1:], leaves64[1:]
    for ours, ref in zip(leaves, leaves64, strict=True):
        assert ours.grad is not None and ref.grad is not None
        torch.testing.assert_close(ours.grad.double(), ref.grad, rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_kernel_bf16_no_worse_than_torch() -> None:
    n, d, v = 29, 48, 133
    g = _gen(21)
    h = torch.randn(n, d, generator=g).bfloat16()
    W = (torch.randn(v, d, generator=g) * 0.3).bfloat16()
    t = torch.randint(0, v, (n,), generator=g)
    t[7] = -100
    kw = {"label_smoothing": 0.1, "softcap": 5.0}
    ours_in = [h.clone().requires_grad_(), W.clone().requires_grad_()]
    torch_in = [h.clone().requires_grad_(), W.clone().requires_grad_()]
    ref_in = [h.double().requires_grad_(), W.double().requires_grad_()]
    ours = linear_cross_entropy(*ours_in, t, **kw)
    logits = F.linear(*torch_in)
    theirs = F.cross_entropy(5.0 * torch.tanh(logits / 5.0), t, label_smoothing=0.1)
    truth = linear_cross_entropy_reference(*ref_in, t, **kw)
    assert ours.dtype == torch.bfloat16
    for out in (ours, theirs, truth):
        out.backward()
    ulp = float(torch.finfo(torch.bfloat16).eps)
    o, th, tr = (float(x.detach()) for x in (ours, theirs, truth))
    assert abs(o - tr) <= abs(th - tr) + ulp * abs(tr)
    for a, b, r in zip(ours_in, torch_in, ref_in, strict=True):
        assert a.grad is not None and b.grad is not None and r.grad is not None
        assert a.grad.dtype == torch.bfloat16
        e_ours = (a.grad.double() - r.grad).abs().max()
        e_theirs = (b.grad.double() - r.grad).abs().max()
        assert e_ours <= e_theirs + ulp * r.grad.abs().max()


def test_linear_cross_entropy_kernel_all_ignored() -> None:
    g = _gen(22)
    h = torch.randn(9, 20, generator=g).requires_grad_()
    W = torch.randn(45, 20, generator=g).requires_grad_()
    t = torch.full((9,), -100)
    out = linear_cross_entropy(h, W, t)
    assert torch.isnan(out)
    out.backward()
    assert h.grad is not None and W.grad is not None
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(W.grad, torch.zeros_like(W))


# --------------------------------------------------------------------- dispatch, checks


def test_is_available_under_the_interpreter() -> None:
    assert is_available() is True


def test_fallback_without_interpreter_matches_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, t = _data(8, 9, 23)
    a = x.clone().requires_grad_()
    out = cross_entropy(a, t, label_smoothing=0.1)
    out.backward()
    b = x.clone().requires_grad_()
    want = F.cross_entropy(b, t, label_smoothing=0.1)
    want.backward()
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(a.grad, b.grad)
    g = _gen(24)
    h, W = torch.randn(8, 5, generator=g), torch.randn(9, 5, generator=g)
    torch.testing.assert_close(linear_cross_entropy(h, W, t), F.cross_entropy(h @ W.T, t))


def test_float64_takes_the_exact_path() -> None:
    x, t = _data(6, 7, 25)
    out = cross_entropy(x.double(), t, base=2)
    assert out.dtype == torch.float64
    exact = float(ce.cross_entropy(x.double().numpy(), t.numpy(), base=2))
    assert float(out) == pytest.approx(exact, rel=1e-14)


def test_bad_arguments_raise_naming_them() -> None:
    x, t = _data(4, 5, 26)
    with pytest.raises(ValueError, match=r"target\[2\] = 7"):
        cross_entropy(x, torch.tensor([0, 1, 7, 9]))
    with pytest.raises(TypeError, match="target"):
        cross_entropy(x, t.float())
    with pytest.raises(ValueError, match="target"):
        cross_entropy(x, t[:3])
    with pytest.raises(ValueError, match="input"):
        cross_entropy(x[0], t[0])
    with pytest.raises(TypeError, match="input"):
        cross_entropy(x.numpy(), t)
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
    with pytest.raises(ValueError, match="weight"):
        cross_entropy(x, t, weight=torch.ones(4))
    h = torch.randn(4, 3)
    with pytest.raises(ValueError, match="linear_weight"):
        linear_cross_entropy(h, torch.randn(5, 2), t)
    with pytest.raises(TypeError, match="same dtype"):
        linear_cross_entropy(h, torch.randn(5, 3).double(), t)
    with pytest.raises(ValueError, match="linear_bias"):
        linear_cross_entropy(h, torch.randn(5, 3), t, linear_bias=torch.ones(4))
    assert math.isfinite(float(linear_cross_entropy(h, torch.randn(5, 3), t)))


_COMPILE_SCRIPT = '''
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from crossentropy.triton import _kernels as K, _launch as L

target = GPUTarget("cuda", 90, 32)  # H100; no GPU needed to compile
ptr = {"h_ptr": "*bf16", "w_ptr": "*bf16", "b_ptr": "*fp32", "target_ptr": "*i64",
       "cw_ptr": "*fp32"}
every = {"HAS_BIAS": True, "HAS_WEIGHT": True, "HAS_SMOOTHING": True, "HAS_SOFTCAP": True}
dot = {"UPCAST_DOT": False, "DOT_PRECISION": "tf32"}

def build(fn, sig, consts, warps, stages):
    sig = {**sig, **{k: "constexpr" for k in consts}}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    k = triton.compile(src, target=target, options={"num_warps": warps, "num_stages": stages})
    assert k.asm["cubin"], fn.__name__
    print("compiled", fn.__name__)

build(K.ce_fwd_kernel,
      {"logits_ptr": "*bf16", "stride_row": "i32", "target_ptr": "*i64", "weight_ptr": "*fp32",
       "loss_ptr": "*fp32", "lse_ptr": "*fp32", "grad_ptr": "*bf16", "stride_grad_row": "i32",
       "scale_ptr": "*fp32", "C": "i32", "ignore_index": "i32", "eps": "fp32",
       "z_loss": "fp32", "softcap": "fp32"},
      {"BLOCK_C": 8192, "HAS_WEIGHT": True, "HAS_SMOOTHING": True, "HAS_SOFTCAP": True,
       "HAS_ZLOSS": True, "WRITE_GRAD": True}, 16, 3)
n, v, d, w, s = L.LCE_FWD_CONFIGS[0]
build(K.lce_fwd_kernel,
      {**ptr, "m_ptr": "*fp32", "r_ptr": "*fp32", "zy_ptr": "*fp32", "sz_ptr": "*fp32",
       "N": "i32", "V": "i32", "D": "i32", "stride_h": "i32", "stride_w": "i32",
       "softcap": "fp32"},
      {"SPLIT": 4, "BLOCK_N": n, "BLOCK_V": v, "BLOCK_D": d, **every, **dot}, w, s)
n, v, d, w, s = L.LCE_BWD_CONFIGS[0]
build(K.lce_bwd_kernel,
      {**ptr, "lse_ptr": "*fp32", "a_ptr": "*fp32", "bcoef_ptr": "*fp32", "c_ptr": "*fp32",
       "dh_ptr": "*fp32", "dw_ptr": "*fp32", "db_ptr": "*fp32", "N": "i32", "V": "i32",
       "D": "i32", "v_lo": "i32", "v_hi": "i32", "stride_h": "i32", "stride_w": "i32",
       "softcap": "fp32"},
      {"BLOCK_N": n, "BLOCK_V": v, "BLOCK_D": d, **every, "COMPUTE_DH": True,
       "COMPUTE_DW": True, "COMPUTE_DB": True, **dot}, w, s)
'''


def test_kernels_compile_for_h100_without_a_gpu(tmp_path: Path) -> None:
    # The interpreter cannot catch what only the compiler sees (types of loop-carried
    # values, tl.dot shapes and dtypes, layouts): compile every kernel, every option on,
    # to an sm_90 cubin with the ptxas bundled in the triton wheel, in a fresh process
    # without TRITON_INTERPRET.
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # triton 3.9 warns when it is unset
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a fresh cache: really compile
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", _COMPILE_SCRIPT],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("compiled") == 3


def test_bench_gpu_script_parses_and_dry_runs() -> None:
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    script = str(ROOT / "bench" / "gpu.py")
    help_ = subprocess.run(
        [sys.executable, script, "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert help_.returncode == 0, help_.stderr
    assert "--out" in help_.stdout
    dry = subprocess.run(
        [sys.executable, script, "--dry-run"], capture_output=True, text=True, env=env, timeout=120
    )
    assert dry.returncode == 0, dry.stderr
    assert "gemma2" in dry.stdout and "not yet measured" in dry.stdout
