"""crossentropy.transformers.patch on tiny random Hugging Face causal LMs (float64, no download).

Expected values come from the unpatched model: its logits (labels=None) fed to torch's own
``torch.nn.functional.cross_entropy`` with transformers' next-token shift and normalisation
written out here (exact, float64), and transformers' own loss (which upcasts the logits to
float32, so it is compared at float32 precision).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import crossentropy.transformers as cet  # noqa: E402

V = 48  # vocabulary
B, T = 2, 7  # batch, sequence length

_COMMON = {"vocab_size": V, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32,
           "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}

# class name -> (model class, config); Gemma's final soft cap is small so that it matters
CONFIGS: dict[str, Callable[[], Any]] = {
    "llama": lambda: transformers.LlamaConfig(**_COMMON),
    "mistral": lambda: transformers.MistralConfig(**_COMMON, sliding_window=4),
    "qwen2": lambda: transformers.Qwen2Config(**_COMMON),
    "qwen3": lambda: transformers.Qwen3Config(**_COMMON, head_dim=4),
    "gemma2": lambda: transformers.Gemma2Config(**_COMMON, head_dim=4, sliding_window=4,
                                                final_logit_softcapping=2.0,
                                                query_pre_attn_scalar=4),
    "gemma3": lambda: transformers.Gemma3TextConfig(**_COMMON, head_dim=4, sliding_window=4,
                                                    final_logit_softcapping=2.0,
                                                    query_pre_attn_scalar=4),
    "phi3": lambda: transformers.Phi3Config(**_COMMON),
    "gpt2": lambda: transformers.GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=2,
                                            n_head=4, bos_token_id=1, eos_token_id=2,
                                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0),
    "cohere": lambda: transformers.CohereConfig(**_COMMON, logit_scale=0.5),
    "granite": lambda: transformers.GraniteConfig(**_COMMON, logits_scaling=2.5),
}
CLASSES = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM", "gpt2": "GPT2LMHeadModel", "cohere": "CohereForCausalLM",
    "granite": "GraniteForCausalLM",
}
ARCHS = list(CONFIGS)


def make(arch: str, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config._attn_implementation = "eager"
    model = getattr(transformers, CLASSES[arch])(config).double()
    with torch.no_grad():  # random biases/norm weights too, so every parameter matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def batch(seed: int = 1, ignored: bool = True) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = ids.clone()
    if ignored:
        labels[0, 2] = labels[1, 4] = labels[1, 5] = -100
    return ids, labels


def reference_loss(logits: Any, labels: Any, num_items: Any = None, *, shift_labels: Any = None,
                   label_smoothing: float = 0.0, z_loss: float = 0.0, base: float | None = None,
                   ignore_index: int = -100) -> Any:
    """transformers' ForCausalLMLoss in float64, written with torch's cross_entropy."""
    if shift_labels is None:
        # position t predicts label t+1; the last position predicts nothing
        shift_labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], ignore_index)], 1)
    z, y = logits.reshape(-1, logits.shape[-1]), shift_labels.reshape(-1)
    rows = torch.nn.functional.cross_entropy(z, y, ignore_index=ignore_index, reduction="none",
                                             label_smoothing=label_smoothing)
    counted = y != ignore_index
    rows = rows + z_loss * torch.logsumexp(z, -1) ** 2 * counted
    total = rows.sum() / (math.log(base) if base is not None else 1.0)
    return total / (counted.sum() if num_items is None else num_items)


def grads(model: Any) -> dict[str, Any]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict[str, Any], want: dict[str, Any], rtol: float = 1e-9) -> None:
    assert got.keys() == want.keys()
    for n in want:
        scale = want[n].abs().max().item()
        torch.testing.assert_close(got[n], want[n], rtol=rtol, atol=rtol * scale, msg=n)


def reference_step(model: Any, ids: Any, labels: Any, num_items: Any = None,
                   **kw: Any) -> tuple[Any, dict[str, Any]]:
    model.zero_grad()
    loss = reference_loss(model(ids).logits, labels, num_items, **kw)
    loss.backward()
    return loss.detach(), grads(model)


def patched_step(model: Any, ids: Any, labels: Any, **kw: Any) -> tuple[Any, Any]:
    model.zero_grad()
    out = model(ids, labels=labels, **kw)
    out.loss.backward()
    return out, grads(model)


# --------------------------------------------------------------------------- loss and gradients


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("variant", ["mean", "num_items", "no_ignored"])
def test_loss_and_gradients_equal_unpatched(arch: str, variant: str) -> None:
    model = make(arch)
    ids, labels = batch(ignored=variant != "no_ignored")
    # num_items_in_batch as the Trainer passes it: a tensor, here a global count larger than
    # this micro-batch's
    n = torch.tensor(17) if variant == "num_items" else None
    kw = {} if n is None else {"num_items_in_batch": n}
    want, want_g = reference_step(model, ids, labels, n)
    with torch.no_grad():
        theirs = model(ids, labels=labels, **kw).loss  # transformers' loss, float32 logits
    cet.patch(model)
    out, got_g = patched_step(model, ids, labels, **kw)
    assert out.logits is None
    torch.testing.assert_close(out.loss, want, rtol=1e-9, atol=0)
    assert_grads_close(got_g, want_g)
    torch.testing.assert_close(out.loss, theirs.double(), rtol=2e-6, atol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_fused_false_keeps_logits(arch: str) -> None:
    model = make(arch)
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


@pytest.mark.parametrize(("arch", "fused"), [("llama", True), ("gpt2", True), ("gemma2", False)])
def test_shift_labels_and_ignore_index(arch: str, fused: bool) -> None:
    # shift_labels taken as given (no shift inside), ignore_index as transformers passes it
    model = make(arch)
    ids, _ = batch()
    g = torch.Generator().manual_seed(5)
    shift = torch.randint(0, V, (B, T), generator=g)
    shift[0, :3] = 7
    kw = {"shift_labels": shift, "ignore_index": 7}
    want, want_g = reference_step(model, ids, ids, shift_labels=shift, ignore_index=7)
    with torch.no_grad():
        theirs = model(ids, labels=ids, **kw).loss
    cet.patch(model, fused=fused)
    out, got_g = patched_step(model, ids, ids, **kw)
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
                for i in range(B))
    total.backward()
    torch.testing.assert_close(total, want, rtol=1e-9, atol=0)
    assert_grads_close(grads(model), want_g)


def test_bfloat16_loss_is_float32_as_transformers() -> None:
    # transformers upcasts bf16 logits to float32 for its loss; the patched loss is float32
    # too, equal to bf16 precision (its value and the fused gradients are rounded to bf16)
    model = make("llama").to(torch.bfloat16)
    ids, labels = batch()
    model.zero_grad()
    theirs = model(ids, labels=labels).loss
    theirs.backward()
    want_g = grads(model)
    cet.patch(model)
    out, got_g = patched_step(model, ids, labels)
    assert out.loss.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(out.loss, theirs, rtol=1e-2, atol=0)
    g, w = got_g["lm_head.weight"].float(), want_g["lm_head.weight"].float()
    assert (g - w).norm() <= 2e-2 * w.norm()


# --------------------------------------------------------------------------- unchanged paths


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_unchanged(arch: str) -> None:
    model = make(arch)
    ids, _ = batch()
    cfg = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": 0}
    want = model.generate(ids, attention_mask=torch.ones_like(ids), **cfg)
    with torch.no_grad():
        logits = model(ids).logits
    cet.patch(model)
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


# --------------------------------------------------------------------------- Trainer


def _train(model: Any, data: list[dict[str, Any]], bs: int, ga: int, tmp: Any) -> float:
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    # in order (transformers >= 5.x); before, the seeded random permutation is the same for
    # every batch size, so the doubled batch still holds the two micro-batches
    order = {"train_sampling_strategy": "sequential"} if "train_sampling_strategy" in fields else {}
    args = transformers.TrainingArguments(
        output_dir=str(tmp), per_device_train_batch_size=bs, gradient_accumulation_steps=ga,
        max_steps=2, learning_rate=0.5, optim="sgd", lr_scheduler_type="constant",
        weight_decay=0.0, max_grad_norm=0.0, report_to=[], save_strategy="no", use_cpu=True,
        logging_strategy="no", dataloader_num_workers=0, disable_tqdm=True, **order,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    return float(trainer.train().training_loss)


def test_trainer_gradient_accumulation_equals_the_doubled_batch(tmp_path: Any) -> None:
    # 8 sequences with different numbers of ignored labels: a per-micro-batch mean would
    # weight their tokens differently from the global mean
    g = torch.Generator().manual_seed(3)
    data = []
    for i in range(8):
        ids = torch.randint(0, V, (T,), generator=g)
        labels = ids.clone()
        labels[: i % 4 + 1] = -100
        data.append({"input_ids": ids, "labels": labels})
    model = make("llama")
    runs = {}
    for name, bs, ga, patched in [("ga", 2, 2, True), ("doubled", 4, 1, True),
                                  ("unpatched", 4, 1, False)]:
        m = copy.deepcopy(model)
        if patched:
            cet.patch(m)
        loss = _train(m, data, bs, ga, tmp_path / name)
        runs[name] = (loss, dict(m.named_parameters()))
    (l_ga, w_ga), (l_2b, w_2b), (l_un, w_un) = runs["ga"], runs["doubled"], runs["unpatched"]
    assert math.isclose(l_ga, l_2b, rel_tol=1e-9)
    assert_grads_close({n: p.detach() for n, p in w_ga.items()},
                       {n: p.detach() for n, p in w_2b.items()})
    # and transformers' own loss trains to the same weights (its loss is float32)
    assert math.isclose(l_ga, l_un, rel_tol=1e-6)
    changed = [n for n, p in w_ga.items() if not torch.equal(p, dict(model.named_parameters())[n])]
    assert changed  # the steps did move the weights
    assert_grads_close({n: p.detach() for n, p in w_ga.items()},
                       {n: p.detach() for n, p in w_un.items()}, rtol=1e-5)


# --------------------------------------------------------------------------- torch.compile


def test_torch_compile_forward_backward() -> None:
    model = make("llama")
    ids, labels = batch()
    want, want_g = reference_step(model, ids, labels)
    cet.patch(model)
    # aot_eager: the same dynamo graph and autograd tracing as inductor, without its minute of
    # C++ compilation; no graph break (the recorded hidden states are a dynamo side effect)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    model.zero_grad()
    loss = compiled(ids, labels=labels).loss
    loss.backward()
    torch.testing.assert_close(loss, want, rtol=1e-9, atol=0)
    assert_grads_close(grads(model), want_g)


# --------------------------------------------------------------------------- bad input


def test_unsupported_model_names_its_class() -> None:
    config = transformers.LlamaConfig(**_COMMON)
    with pytest.raises(cet.UnsupportedModelError, match="LlamaForSequenceClassification"):
        cet.patch(transformers.LlamaForSequenceClassification(config))
    with pytest.raises(TypeError, match="Linear"):
        cet.patch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="model must be"):
        cet.patch("llama")


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ({"z_loss": -1.0}, ValueError, "z_loss"),
    ({"z_loss": "big"}, TypeError, "z_loss"),
    ({"base": 1.0}, ValueError, "base"),
    ({"fused": "yes"}, TypeError, "fused"),
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
