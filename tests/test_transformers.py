"""crossentropy.transformers.patch on tiny random Hugging Face causal LMs (float64, no download).

Expected values come from the unpatched model: its logits (labels=None) fed to torch's own
``torch.nn.functional.cross_entropy`` with transformers' next-token shift and normalisation
written out in tests/_transformers_models.py (exact, float64), and transformers' own loss
(which upcasts the logits to float32, so it is compared at float32 precision).  The Trainer,
PEFT and low-precision tests are in tests/test_transformers_{trainer,peft,lowprec}.py.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: E402

import crossentropy.transformers as cet  # noqa: E402
from _transformers_models import (  # noqa: E402
    FAMILIES,
    V,
    assert_grads_close,
    batch,
    grads,
    make,
    patched_step,
    reference_loss,
    reference_step,
)

ARCHS = list(FAMILIES)


# --------------------------------------------------------------------------- loss and gradients


def test_at_least_twenty_families_and_supported_lists_them() -> None:
    assert len(ARCHS) >= 20
    assert {name for name, _ in FAMILIES.values()} == set(cet.SUPPORTED)


def _patch_family(model: Any) -> Any:
    """cet.patch, except where this transformers computes a VLM's loss without
    self.loss_function (4.x): then the refusal must say so, and the test is skipped."""
    try:
        return cet.patch(model)
    except cet.UnsupportedModelError as exc:
        if transformers.__version__.startswith("4.") and "without self.loss_function" in str(exc):
            pytest.skip(f"transformers {transformers.__version__}: {exc}")
        raise


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_and_gradients_equal_unpatched(arch: str) -> None:
    model = make(arch)
    ids, labels = batch()
    # num_items_in_batch as the Trainer passes it: a tensor, here a global count larger than
    # this micro-batch's
    n = torch.tensor(17)
    want, want_g = reference_step(model, ids, labels)
    want_n, want_ng = reference_step(model, ids, labels, n)
    with torch.no_grad():
        theirs = model(ids, labels=labels).loss  # transformers' loss, float32 logits
    assert _patch_family(model) is model
    out, got_g = patched_step(model, ids, labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)
    torch.testing.assert_close(out.loss, theirs.double(), rtol=2e-6, atol=0)
    out, got_g = patched_step(model, ids, labels, num_items_in_batch=n)
    torch.testing.assert_close(out.loss, want_n, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_ng)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "phi"])
def test_no_ignored_labels(arch: str) -> None:
    model = make(arch)
    ids, labels = batch(ignored=False)
    want, want_g = reference_step(model, ids, labels)
    cet.patch(model)
    out, got_g = patched_step(model, ids, labels)
    torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt2"])
def test_options(arch: str) -> None:
    model = make(arch)
    ids, labels = batch()
    opts = {"label_smoothing": 0.2, "z_loss": 1e-2, "base": 2.0}
    want, want_g = reference_step(model, ids, labels, **opts)
    cet.patch(model, **opts)
    out, got_g = patched_step(model, ids, labels)
    torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)


@pytest.mark.parametrize(("arch", "skip"), [("llama", True), ("gpt2", True), ("gemma2", False)])
def test_shift_labels_and_ignore_index(arch: str, skip: bool) -> None:
    # shift_labels taken as given (no shift inside), ignore_index as transformers passes it
    model = make(arch)
    ids, _ = batch()
    g = torch.Generator().manual_seed(5)
    shift = torch.randint(0, V, ids.shape, generator=g)
    shift[0, :3] = 7
    kw = {"shift_labels": shift, "ignore_index": 7}
    want, want_g = reference_step(model, ids, ids, shift_labels=shift, ignore_index=7)
    with torch.no_grad():
        theirs = model(ids, labels=ids, **kw).loss
    cet.patch(model, skip_logits=skip)
    out, got_g = patched_step(model, ids, ids, **kw)
    assert (out.logits is None) == skip
    torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)
    torch.testing.assert_close(out.loss, theirs.double(), rtol=2e-6, atol=0)


def test_micro_batches_with_global_count_add_up_to_the_batch() -> None:
    # the normaliser: micro-batch losses divided by the global token count add up to the
    # whole batch's mean loss, and so do their gradients
    model = make("llama")
    ids, labels = batch()
    want, want_g = reference_step(model, ids, labels)
    cet.patch(model)
    n = (labels[:, 1:] != -100).sum()  # as the Trainer counts: labels[..., 1:]
    model.zero_grad()
    total = sum(model(ids[i:i + 1], labels=labels[i:i + 1], num_items_in_batch=n).loss
                for i in range(ids.shape[0]))
    total.backward()
    torch.testing.assert_close(total, want, rtol=1e-9, atol=0)
    assert_grads_close(grads(model), want_g)


# --------------------------------------------------------------------------- eval / skip_logits


@pytest.mark.parametrize("arch", ["llama", "gemma2", "cohere", "qwen2_vl"])
def test_eval_mode_returns_the_logits_and_their_loss(arch: str) -> None:
    # evaluation (model.eval(), labels given): the real logits, bit for bit, and the loss of
    # those logits; skip_logits=True per call skips them anyway
    model = make(arch).eval()
    ids, labels = batch()
    with torch.no_grad():
        logits = model(ids).logits
        want = reference_loss(logits, labels)
    _patch_family(model)
    with torch.no_grad():
        out = model(ids, labels=labels)
        assert torch.equal(out.logits, logits)
        torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=0)
        skipped = model(ids, labels=labels, skip_logits=True)
        assert skipped.logits is None
        torch.testing.assert_close(skipped.loss, want, rtol=1e-9, atol=0)


def test_skip_logits_option_and_per_call_keyword() -> None:
    model = make("granite")
    ids, labels = batch()
    with torch.no_grad():
        logits = model(ids).logits
    want, want_g = reference_step(model, ids, labels)
    cet.patch(model, skip_logits=False)  # training, but the logits are kept
    out, got_g = patched_step(model, ids, labels)
    assert torch.equal(out.logits.detach(), logits)
    torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)
    out, got_g = patched_step(model, ids, labels, skip_logits=True)  # the call decides
    assert out.logits is None
    assert_grads_close(got_g, want_g)
    cet.patch(model.eval(), skip_logits=True)  # evaluation, logits skipped
    with torch.no_grad():
        assert model(ids, labels=labels).logits is None
        assert model(ids, labels=labels, skip_logits=False).logits is not None
    with pytest.raises(ValueError, match="skip_logits=True needs labels"):
        model(ids, skip_logits=True)
    with pytest.raises(TypeError, match="skip_logits"):
        model(ids, labels=labels, skip_logits="yes")


def test_fused_false_is_skip_logits_false() -> None:
    model = make("gemma2")
    ids, labels = batch()
    n = torch.tensor(9)
    with torch.no_grad():
        logits = model(ids).logits
    want, want_g = reference_step(model, ids, labels, n, label_smoothing=0.1)
    cet.patch(model, fused=False, label_smoothing=0.1)
    out, got_g = patched_step(model, ids, labels, num_items_in_batch=n)
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)
    with pytest.raises(ValueError, match="fused=False"):
        cet.patch(model, fused=False, skip_logits=True)


# --------------------------------------------------------------------------- unchanged paths


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2", "gpt_neox", "qwen2_vl"])
def test_generation_unchanged(arch: str) -> None:
    model = make(arch)
    ids, _ = batch()
    cfg = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    want = model.generate(ids, attention_mask=torch.ones_like(ids), **cfg)
    with torch.no_grad():
        logits = model(ids).logits
    _patch_family(model)
    got = model.generate(ids, attention_mask=torch.ones_like(ids), **cfg)
    assert torch.equal(got, want)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)


def test_return_dict_false_and_positional_labels() -> None:
    model = make("llama")
    ids, labels = batch()
    want = reference_loss(model(ids).logits, labels)
    cet.patch(model)
    # LlamaForCausalLM.forward(input_ids, attention_mask, position_ids, cache, inputs_embeds,
    # labels, ...): labels passed by position
    out = model(ids, None, None, None, None, labels)
    torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=0)
    tup = model(ids, labels=labels, return_dict=False)
    assert isinstance(tup, tuple)
    torch.testing.assert_close(tup[0], want, rtol=1e-9, atol=0)
    assert not any(torch.is_tensor(t) and t.shape[-1:] == (V,) for t in tup)  # no logits


def test_unpatch_and_deepcopy() -> None:
    model = make("llama")
    ids, labels = batch()
    with torch.no_grad():
        before = model(ids, labels=labels)
    cet.patch(model)
    clone = copy.deepcopy(model)  # a copy computes with its own weights
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(2.0)
        want = reference_loss(clone(ids).logits, labels)
        torch.testing.assert_close(clone(ids, labels=labels).loss, want, rtol=1e-9, atol=0)
    assert cet.unpatch(model) is model
    with torch.no_grad():
        after = model(ids, labels=labels)
    assert type(model.lm_head) is torch.nn.Linear
    assert "forward" not in vars(model.lm_head) and "_loss_function" not in vars(model)
    assert torch.equal(after.loss, before.loss)  # transformers' own loss again
    assert torch.equal(after.logits, before.logits)


def test_patch_twice_replaces_the_options() -> None:
    model = make("qwen2")
    ids, labels = batch()
    want = reference_loss(model(ids).logits, labels, z_loss=0.5)
    cet.patch(model, label_smoothing=0.3)
    assert cet.patch(model, z_loss=0.5) is model
    with torch.no_grad():
        torch.testing.assert_close(model(ids, labels=labels).loss, want, rtol=1e-9, atol=0)


def test_training_without_labels_warns_once() -> None:
    # a patched model called in training without labels builds its logits: said once
    model = cet.patch(make("llama"))
    ids, _ = batch()
    with pytest.warns(cet.UnfusedLossWarning, match="caller passed no labels"):
        model(ids)
    model(ids)  # not again (the suite turns warnings into errors)
    with torch.no_grad():
        model(ids)


# --------------------------------------------------------------------------- torch.compile


# The probe (crossentropy.transformers._probe) is a tensor subclass made by as_subclass; the
# dynamo of torch 2.7.1 cannot trace it (InternalTorchDynamoError "argument of type
# _TensorMeta"), that of 2.13.0 does.  Versions in between are not tested.
@pytest.mark.skipif(not hasattr(torch.nn, "LinearCrossEntropyLoss"),  # added in torch 2.13
                    reason="torch.compile of a patched model is tested on torch 2.13 only: "
                           "torch 2.7.1's dynamo cannot trace the logits probe")
def test_torch_compile_forward_backward() -> None:
    model = make("gemma2")  # the soft cap: the probe's recording under dynamo
    ids, labels = batch()
    want, want_g = reference_step(model, ids, labels)
    cet.patch(model)
    # aot_eager: the same dynamo graph and autograd tracing as inductor, without its minute of
    # C++ compilation; no graph break (the probe's recording is traced through)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    model.zero_grad()
    loss = compiled(ids, labels=labels).loss
    loss.backward()
    torch.testing.assert_close(loss, want, rtol=1e-9, atol=0)
    assert_grads_close(grads(model), want_g)


# --------------------------------------------------------------------------- detection


class _Custom(transformers.LlamaForCausalLM):
    """A causal LM that does its own things to the logits before self.loss_function."""

    recipe = "slice-scale-cap"

    def forward(self, input_ids: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        h = self.model(input_ids).last_hidden_state
        logits = self.lm_head(h)
        k = logits.shape[-1] - 8  # a padded vocabulary: the last 8 classes are not real
        if self.recipe == "slice-scale-cap":
            logits = logits[..., :k]
            logits = torch.mul(3.0, logits)  # the scale on the left
            logits.div_(6.0)  # in place
            logits = torch.nn.functional.tanh(logits / 1.5) * 1.5
            logits = logits.to(h.dtype).contiguous()
        elif self.recipe == "bias":
            logits = (logits + 1.0)[..., :k]
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, k, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


class _OwnLoss(transformers.LlamaForCausalLM):
    """A causal LM computing its loss itself."""

    def forward(self, input_ids: Any = None, labels: Any = None, **kwargs: Any) -> Any:
        logits = self.lm_head(self.model(input_ids).last_hidden_state)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return CausalLMOutputWithPast(loss=loss, logits=logits)


def _small_batch() -> tuple[Any, Any]:
    ids, labels = batch()  # within the V - 8 real classes
    return ids % (V - 8), torch.where(labels < 0, labels, labels % (V - 8))


def _custom(recipe: str, cls: Any = _Custom) -> Any:
    torch.manual_seed(0)
    model = cls(transformers.LlamaConfig(
        vocab_size=V, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2)).double()
    model.recipe = recipe
    return model


def test_transforms_are_recorded_not_listed() -> None:
    # a class no list knows: slice of the classes, scale (either side, in place), soft cap
    # through torch.nn.functional.tanh, casts; all read from what the forward does
    model = _custom("slice-scale-cap")
    ids, labels = _small_batch()
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape[-1] == V - 8
    want, want_g = reference_step(model, ids, labels)
    cet.patch(model)
    out, got_g = patched_step(model, ids, labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)


def test_a_transform_that_cannot_be_fused_is_named() -> None:
    model = cet.patch(_custom("bias"))
    ids, labels = _small_batch()
    with pytest.raises(cet.UnsupportedModelError,
                       match=r"_Custom: the forward applies add to the logits"):
        model(ids, labels=labels)
    with torch.no_grad():  # evaluation keeps the logits: no probe, the loss is computed
        model.eval()
        assert model(ids, labels=labels).loss is not None


def test_a_loss_computed_without_loss_function_is_refused() -> None:
    with pytest.raises(cet.UnsupportedModelError, match=r"without self\.loss_function"):
        cet.patch(_custom("own-loss", _OwnLoss))


def test_unsupported_models_say_why() -> None:
    config = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=24,
                                      num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(cet.UnsupportedModelError, match="ForSequenceClassification"):
        cet.patch(transformers.LlamaForSequenceClassification(config))
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=V, d_model=16, d_kv=4, d_ff=24, num_layers=1, num_heads=2))
    with pytest.raises(cet.UnsupportedModelError, match="encoder-decoder"):
        cet.patch(t5)
    model = make("llama")
    model.lm_head = torch.nn.Sequential(model.lm_head)
    with pytest.raises(cet.UnsupportedModelError, match=r"Sequential, not a torch\.nn\.Linear"):
        cet.patch(model)
    model = make("llama")
    model.loss_function = lambda *a, **k: 0.0
    with pytest.raises(cet.UnsupportedModelError, match="loss_function was replaced"):
        cet.patch(model)
    with pytest.raises(cet.UnsupportedModelError, match="has no get_output_embeddings"):
        cet.patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model must be"):
        cet.patch("llama")


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ({"z_loss": -1.0}, ValueError, "z_loss"),
    ({"z_loss": "big"}, TypeError, "z_loss"),
    ({"base": 1.0}, ValueError, "base"),
    ({"fused": "yes"}, TypeError, "fused"),
    ({"skip_logits": 1}, TypeError, "skip_logits"),
    ({"impl": 3}, TypeError, "impl"),
    ({"chunk": 3}, TypeError, "chunk"),
])
def test_bad_option_is_named(options: dict[str, Any], error: type, match: str) -> None:
    model = make("llama")
    with pytest.raises(error, match=match):
        cet.patch(model, **options)
    assert "forward" not in vars(model)  # a failed patch leaves the model alone


def test_impl_is_passed_to_crossentropy_torch() -> None:
    model = make("llama")
    ids, labels = batch()
    want = reference_loss(model(ids).logits, labels)
    cet.patch(model, impl="torch")
    with torch.no_grad():
        torch.testing.assert_close(model(ids, labels=labels).loss, want, rtol=1e-9, atol=0)
    cet.patch(model, impl="fastest")  # crossentropy.torch validates it, at the first call
    with pytest.raises(ValueError, match="impl"):
        model(ids, labels=labels)


def test_bad_labels_are_named() -> None:
    model = cet.patch(make("llama"))
    ids, labels = batch()
    with pytest.raises(ValueError, match="labels has shape"):
        model(ids, labels=labels[:, :-1])
    with pytest.raises(TypeError, match="integer"):
        model(ids, labels=labels.double())
