"""torch.compile(fullgraph=True) and torch.autocast over models that use crossentropy.torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossentropy.torch as cet


class _Tiny(torch.nn.Module):
    """Every loss of crossentropy.torch, with the options beyond torch, in one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, 9)
        self.head = torch.nn.Linear(6, 13, bias=False)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.body(x)
        a = cet.cross_entropy(z, t % 9, label_smoothing=0.1, z_loss=1e-3, softcap=5.0)
        b = cet.binary_cross_entropy_with_logits(z, y, base=2)
        c = cet.binary_cross_entropy(torch.sigmoid(z), y)
        d, lse = cet.linear_cross_entropy(x, self.head.weight, t, reduction="none",
                                          return_lse=True)
        e = cet.cross_entropy(z, torch.softmax(y, 1))
        return a + b + c + d.mean() + 1e-3 * lse.square().mean() + e


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(11, 6, generator=g), torch.randint(0, 13, (11,), generator=g),
            torch.rand(11, 9, generator=g))


# inductor itself (not this package) calls the deprecated torch.jit.script_method
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    model = _Tiny()
    x, t, y = _data()
    ref = model(x, t, y)
    ref.backward()
    want = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)  # raises on any graph break
    out = compiled(x, t, y)
    out.backward()
    torch.testing.assert_close(out, ref)
    for p, w in zip(model.parameters(), want, strict=True):
        torch.testing.assert_close(p.grad, w)


def test_autocast_bfloat16():
    """Under autocast the losses come out in float32 (as torch's do) and backward runs."""
    torch.manual_seed(0)
    model = _Tiny()
    x, t, y = _data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = model.body(x)
        assert z.dtype == torch.bfloat16
        for ours, theirs in (
            (cet.cross_entropy(z, t % 9), F.cross_entropy(z, t % 9)),
            (cet.binary_cross_entropy_with_logits(z, y), F.binary_cross_entropy_with_logits(z, y)),
            (cet.linear_cross_entropy(x, model.head.weight, t),
             F.linear_cross_entropy(x, model.head.weight, t)),
        ):
            assert ours.dtype == theirs.dtype == torch.float32
            torch.testing.assert_close(ours, theirs, rtol=2e-2, atol=2e-2)
        loss = model(x, t, y)
    assert loss.dtype == torch.float32
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())
    fp32 = _Tiny()
    fp32.load_state_dict(model.state_dict())
    torch.testing.assert_close(loss, fp32(x, t, y), rtol=2e-2, atol=2e-2)
