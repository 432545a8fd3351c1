"""crossentropy.torch's ``dtype=``: the returned loss's dtype (float32 for bf16/fp16 inputs).

The reference is torch's own ``cross_entropy`` of the same low-precision numbers widened to
float64 (the fused loss never rounds the logits), rounded once to float32.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

import crossentropy.torch as cet  # noqa: E402

F = torch.nn.functional


def _data(dtype: Any, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(40, 16, generator=g).to(dtype)
    W = torch.randn(50, 16, generator=g).to(dtype)
    b = torch.randn(50, generator=g).to(dtype)
    y = torch.randint(0, 50, (40,), generator=g)
    y[::7] = -100
    return h, W, b, y


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["auto", "cpu", "torch"])
def test_linear_loss_in_float32_is_not_rounded(dtype: Any, impl: str) -> None:
    h, W, b, y = _data(dtype)
    want = F.cross_entropy(h.double() @ W.double().T + b.double(), y)
    hh, WW = h.clone().requires_grad_(True), W.clone().requires_grad_(True)
    got = cet.linear_cross_entropy(hh, WW, y, linear_bias=b, impl=impl, dtype=torch.float32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)
    assert float(got.detach()) != float(got.detach().to(dtype))  # off the low-precision grid
    g = torch.autograd.grad(got, (hh, WW))
    # the default is unchanged (torch's rule: the input's dtype), with the same gradients
    default = cet.linear_cross_entropy(hh, WW, y, linear_bias=b, impl=impl)
    assert default.dtype == dtype
    assert default == want.to(torch.float32).to(dtype)
    g0 = torch.autograd.grad(default, (hh, WW))
    assert all(torch.equal(a, c) for a, c in zip(g, g0, strict=True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_linear_per_token_outputs_and_lse(dtype: Any) -> None:
    h, W, _, y = _data(dtype, seed=1)
    z = h.double() @ W.double().T
    loss, lse = cet.linear_cross_entropy(h, W, y, reduction="none", return_lse=True,
                                         dtype=torch.float32)
    assert loss.dtype == lse.dtype == torch.float32
    torch.testing.assert_close(loss.double(), F.cross_entropy(z, y, reduction="none"),
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(lse.double(), torch.logsumexp(z, 1), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_cross_entropy_of_low_precision_logits(dtype: Any, impl: str) -> None:
    h, W, _, y = _data(dtype, seed=2)
    z = (h @ W.T).requires_grad_(True)
    got = cet.cross_entropy(z, y, label_smoothing=0.1, impl=impl, dtype=torch.float32)
    want = F.cross_entropy(z.double(), y, label_smoothing=0.1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=0)
    (gz,) = torch.autograd.grad(got, z)
    assert gz.dtype == dtype
    assert cet.cross_entropy(z, y, impl=impl).dtype == dtype  # the default


def test_wider_dtype_for_float32_input() -> None:
    h, W, _, y = _data(torch.float32)
    assert cet.linear_cross_entropy(h, W, y, dtype=torch.float64).dtype == torch.float64
    assert cet.cross_entropy(h @ W.T, y, dtype=torch.float64).dtype == torch.float64


@pytest.mark.parametrize("bad", [torch.int64, "float32", torch.complex64, 4])
def test_bad_dtype_is_named(bad: Any) -> None:
    h, W, _, y = _data(torch.float32)
    with pytest.raises(TypeError, match=r"dtype must be None or a floating torch\.dtype"):
        cet.linear_cross_entropy(h, W, y, dtype=bad)
    with pytest.raises(TypeError, match=r"dtype must be None or a floating torch\.dtype"):
        cet.cross_entropy(h @ W.T, y, dtype=bad)
