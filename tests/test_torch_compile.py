"""torch.compile(fullgraph=True) and torch.autocast over models that use crossentropy.torch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import crossentropy.torch as cet
from _torch_versions import torch_linear_cross_entropy


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
# dynamo itself instantiates torch.autograd.Function when it traces one (torch 2.13)
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
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
             torch_linear_cross_entropy(x, model.head.weight, t)),
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


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_compile_new_options_one_graph_for_every_normalizer():
    """normalizer= (a 0-d tensor), shift=True and impl='torch' compile without a graph
    break, and a new normalizer value reuses the graph (no recompilation)."""
    from torch._dynamo.testing import CompileCounter

    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 5, 9, generator=g)
    labels = torch.randint(0, 9, (2, 5), generator=g)
    h, W = torch.randn(2, 5, 4, generator=g), torch.randn(9, 4, generator=g)

    def f(z, labels, h, W, n):
        a = cet.cross_entropy(z, labels, shift=True, normalizer=n)
        b = cet.linear_cross_entropy(h, W, labels, shift=True, normalizer=n)
        c = cet.cross_entropy(z.reshape(-1, 9), labels.reshape(-1), impl="torch")
        return a + b + c

    torch._dynamo.reset()
    cnt = CompileCounter()
    compiled = torch.compile(f, backend=cnt, fullgraph=True)
    for n in (3.0, 7.0):
        nt = torch.tensor(n)
        torch.testing.assert_close(compiled(z, labels, h, W, nt), f(z, labels, h, W, nt))
    assert cnt.frame_count == 1
    # the value against torch: HF-style shifted labels, the sum divided by n
    shifted = F.pad(labels, (0, 1), value=-100)[:, 1:].reshape(-1)
    want = F.cross_entropy(z.reshape(-1, 9), shifted, reduction="sum") / 7.0
    got = cet.cross_entropy(z, labels, shift=True, normalizer=torch.tensor(7.0))
    torch.testing.assert_close(got, want)
