"""crossentropy.transformers.patch with PEFT (LoRA on the layers and on the output embedding).

The reference is the unpatched PEFT model's logits (labels=None) through the independent
float64 loss of tests/_transformers_models.py, with the same random seed before each forward
so that LoRA's dropout masks are the same (the patch applies the output embedding's dropout
where PEFT does).  Gradients of every trainable parameter must agree to 1e-9.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import crossentropy.transformers as cet  # noqa: E402
from _transformers_models import (  # noqa: E402
    assert_grads_close,
    batch,
    grads,
    make,
    reference_loss,
)


def _lora(model: Any, targets: list[str], **kw: Any) -> Any:
    torch.manual_seed(7)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, **kw)
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():  # B is initialised to 0: make every factor matter
        for name, p in pm.named_parameters():
            if "lora_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return pm


def _reference(pm: Any, ids: Any, labels: Any, seed: int = 11) -> tuple[Any, Any]:
    pm.zero_grad()
    torch.manual_seed(seed)
    loss = reference_loss(pm(ids).logits, labels)
    loss.backward()
    return loss.detach(), grads(pm)


def _patched(pm: Any, ids: Any, labels: Any, seed: int = 11) -> tuple[Any, Any]:
    pm.zero_grad()
    torch.manual_seed(seed)
    out = pm(ids, labels=labels)
    assert out.logits is None
    out.loss.backward()
    return out.loss.detach(), grads(pm)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "lm_head"]])
def test_patch_a_peft_model(targets: list[str]) -> None:
    # dropout 0.1 on every adapter, the output embedding's included
    pm = _lora(make("llama"), targets, lora_dropout=0.1)
    ids, labels = batch()
    want, want_g = _reference(pm, ids, labels)
    assert cet.patch(pm) is pm
    got, got_g = _patched(pm, ids, labels)
    assert got_g.keys() == {n for n, p in pm.named_parameters() if p.requires_grad}
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)
    assert cet.unpatch(pm) is pm
    assert "forward" not in vars(pm.get_base_model())


def test_patched_before_wrapping_then_lora_on_the_head() -> None:
    model = cet.patch(make("qwen2"))
    pm = _lora(model, ["lm_head", "k_proj"], lora_dropout=0.1)
    ids, labels = batch()
    got, got_g = _patched(pm, ids, labels)
    cet.unpatch(pm)
    want, want_g = _reference(pm, ids, labels)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)


def test_two_active_adapters_with_bias_on_a_biased_head() -> None:
    # Phi's output embedding has a bias; each adapter adds s (h A^T) B^T + s b_B
    pm = _lora(make("phi"), ["lm_head", "dense"], lora_bias=True)
    pm.add_adapter("second", peft.LoraConfig(r=2, lora_alpha=6, target_modules=["lm_head"],
                                             lora_bias=True))
    pm.base_model.set_adapter(["default", "second"])
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "second" in name:
                p.add_(0.1 * torch.randn_like(p))
    ids, labels = batch()
    want, want_g = _reference(pm, ids, labels)
    assert any("second" in n for n in want_g)
    cet.patch(pm)
    got, got_g = _patched(pm, ids, labels)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)


def test_modules_to_save_head() -> None:
    # modules_to_save=["lm_head"]: the trainable copy is what the loss uses
    pm = _lora(make("mistral"), ["q_proj"], modules_to_save=["lm_head"])
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "modules_to_save" in name:
                p.add_(0.1 * torch.randn_like(p))
    ids, labels = batch()
    want, want_g = _reference(pm, ids, labels)
    assert any("modules_to_save" in n for n in want_g)
    cet.patch(pm)
    got, got_g = _patched(pm, ids, labels)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)


def test_disabled_adapter_is_the_base_model() -> None:
    model = make("llama")
    ids, labels = batch()
    with torch.no_grad():
        want = reference_loss(model(ids).logits, labels)
    pm = cet.patch(_lora(model, ["lm_head"]))
    with pm.disable_adapter(), torch.no_grad():
        torch.testing.assert_close(pm(ids, labels=labels, skip_logits=True).loss, want,
                                   rtol=1e-9, atol=0)


def test_merge_and_unload_stays_patched() -> None:
    # merge_and_unload returns the transformers model itself: still patched, its merged
    # output embedding a plain nn.Linear (captured from its next call), the loss and
    # gradients those of the unpatched merged model
    pm = cet.patch(_lora(make("llama"), ["q_proj", "lm_head"]))
    ids, labels = batch()
    merged = pm.merge_and_unload()
    assert type(merged.lm_head) is torch.nn.Linear
    assert "_crossentropy_options" in vars(merged)
    merged.requires_grad_(True)  # PEFT froze the base weights: train them all now
    plain = cet.unpatch(copy.deepcopy(merged))
    want, want_g = _reference(plain, ids, labels)
    got, got_g = _patched(merged, ids, labels)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)


def test_dora_on_the_head_is_refused() -> None:
    pm = _lora(make("llama"), ["lm_head"], use_dora=True)
    with pytest.raises(cet.UnsupportedModelError, match="is a Dora"):
        cet.patch(pm)
    pm = _lora(make("llama"), ["q_proj"], use_dora=True)  # elsewhere: fine
    ids, labels = batch()
    want, want_g = _reference(pm, ids, labels)
    cet.patch(pm)
    got, got_g = _patched(pm, ids, labels)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)
