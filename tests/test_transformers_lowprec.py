"""bfloat16 / float16 models: the patched loss is transformers' float32 value, not rounded.

transformers' ``ForCausalLMLoss`` upcasts the logits to float32, so its loss is a float32
number off any bfloat16 grid.  The patched loss must be that float32 accumulation too: a
loss rounded to bfloat16 (steps of 2^-5 near 4) makes logged loss curves stair steps.

References: the exact loss of the model's own low-precision hidden states and weight,
computed in float64 by torch's ``cross_entropy`` (the fused loss never rounds the logits,
so it must agree to float32 accumulation: rtol 1e-6), and transformers' own loss, which
rounds each logit to the model's dtype first (so it agrees to that rounding only).
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import crossentropy.transformers as cet  # noqa: E402
from _transformers_models import batch, make, reference_loss  # noqa: E402

SEEDS = range(5)


def _head_input(model: Any, ids: Any) -> Any:
    """The last hidden states as the output embedding receives them."""
    seen: list[Any] = []
    hook = model.lm_head.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    with torch.no_grad():
        model(ids)
    hook.remove()
    return seen[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_loss_is_the_float32_value_not_rounded(dtype: Any) -> None:
    losses = []
    for seed in SEEDS:
        model = make("llama", seed=seed, dtype=dtype)
        ids, labels = batch(seed=seed + 10)
        h = _head_input(model, ids)
        W = model.lm_head.weight
        exact = reference_loss(h.double() @ W.double().T, labels)
        with torch.no_grad():
            theirs = model(ids, labels=labels).loss
        cet.patch(model)
        loss = model(ids, labels=labels).loss.detach()
        assert loss.dtype == theirs.dtype == torch.float32
        # the float32 accumulation: equal to the exact value to float32 rounding
        torch.testing.assert_close(loss.double(), exact, rtol=1e-6, atol=0)
        # off the model dtype's grid (a value rounded to bf16 would sit on it)
        assert float(loss) != float(loss.to(dtype).float())
        # transformers' own loss differs only by its logits' rounding to the model's
        # dtype: far below the grid step (2^-5 near 4 for bf16, 2^-8 for fp16)
        step = 2.0 ** (-5 if dtype == torch.bfloat16 else -8)
        assert abs(float(loss) - float(theirs)) < step / 8
        losses.append(float(loss))
    assert len(set(losses)) == len(SEEDS)  # no stair steps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gradients_still_right(dtype: Any) -> None:
    # the output embedding's gradient against float64 (the same low-precision hidden
    # states): one rounding to the model's dtype, relative to the largest entry
    model = make("llama", seed=3, dtype=dtype)
    ids, labels = batch(seed=4)
    h = _head_input(model, ids).double()
    W = model.lm_head.weight.detach().double().requires_grad_(True)
    reference_loss(h @ W.T, labels).backward()
    cet.patch(model)
    model(ids, labels=labels).loss.backward()
    got = model.lm_head.weight.grad
    assert got.dtype == dtype
    scale = W.grad.abs().max().item()
    torch.testing.assert_close(got.double(), W.grad, rtol=0, atol=2 ** -7 * scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_evaluation_loss_equals_transformers_in_float32(dtype: Any) -> None:
    # evaluation keeps the logits: the loss of the very logits transformers uses, in float32
    model = make("gemma2", seed=1, dtype=dtype).eval()
    ids, labels = batch()
    with torch.no_grad():
        theirs = model(ids, labels=labels)
        cet.patch(model)
        out = model(ids, labels=labels)
    assert torch.equal(out.logits, theirs.logits)
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss, theirs.loss, rtol=1e-6, atol=0)
