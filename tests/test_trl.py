"""``crossentropy.trl``: TRL's GRPO and DPO trainers with their per-token statistics from
``crossentropy.torch.linear_token_stats``.

Tiny random models from transformers configs (no download), a word-level tokenizer built
here, in-memory datasets, CPU.  In float64 the patched forward is compared with the
statistics of the model's own full logits computed here with torch (TRL's own head
accumulates in float32, so it is not the reference there); in float32 with TRL's own head;
one training step with the unpatched trainer's.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")
tokenizers = pytest.importorskip("tokenizers")

import crossentropy.trl as ctrl  # noqa: E402

# TRL 1.15's own fused head runs only through Triton on a GPU (on a CPU it stops in
# triton.runtime.driver): the tests that run the unpatched trainer need TRL 1.16 there
# (run on TRL 1.15.0 by hand: `pip install --no-deps --target DIR trl==1.15.0` and
# PYTHONPATH=DIR; every other test passes).
_OWN_HEAD_RUNS = not trl.__version__.startswith("1.15.") or torch.cuda.is_available()
needs_trls_own_head = pytest.mark.skipif(
    not _OWN_HEAD_RUNS, reason="TRL 1.15's own fused head needs Triton on a GPU")

# the trainers' own deprecation and configuration notices are not under test
pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning")]

V = 40  # vocabulary: w3 .. w39 and three special tokens
F = torch.nn.functional


def _tokenizer() -> Any:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, V)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                      bos_token="<s>", eos_token="</s>")


def _model(family: str = "llama", dtype: Any = torch.float64, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    common = {"vocab_size": V, "hidden_size": 16, "intermediate_size": 24,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
              "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
              "attn_implementation": "eager"}
    if family == "gemma2":  # a final soft cap small enough to matter
        cfg = tf.Gemma2Config(**common, head_dim=8, final_logit_softcapping=1.5,
                              query_pre_attn_scalar=8, sliding_window=4)
        model = tf.Gemma2ForCausalLM(cfg)
    else:
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    with torch.no_grad():  # weights large enough that the distributions are not uniform
        model.get_output_embeddings().weight.mul_(40.0)
    model = model.to(dtype)
    # the trainers build their reference model from the policy's path: a local one
    path = tempfile.mkdtemp()
    model.save_pretrained(path)
    model.config._name_or_path = path
    return model


def _reward(completions: list[str], **kw: Any) -> list[float]:
    return [float(sum(map(ord, c)) % 7) for c in completions]


def _grpo(model: Any, **cfg: Any) -> Any:
    prompts = datasets.Dataset.from_dict(
        {"prompt": ["w3 w4 w5", "w6 w7", "w8 w9 w10 w11", "w12"] * 2})
    args = trl.GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, num_generations=4,
        max_completion_length=6, max_steps=1, report_to="none", use_cpu=True,
        logging_steps=1, save_strategy="no", temperature=0.7, beta=0.1, optim="sgd",
        learning_rate=1.0, max_grad_norm=0.0, gradient_checkpointing=False, seed=3,
        bf16=False, **cfg)  # TRL's default bf16=True would autocast the CPU run
    return trl.GRPOTrainer(model=model, reward_funcs=_reward, args=args,
                           train_dataset=prompts, processing_class=_tokenizer())


def _dpo(model: Any, peft_config: Any = None, **cfg: Any) -> Any:
    pairs = datasets.Dataset.from_dict({
        "prompt": ["w3 w4", "w5 w6 w7", "w8", "w9 w10"],
        "chosen": [" w11 w12 w13", " w14", " w15 w16", " w17 w18 w19 w20"],
        "rejected": [" w21", " w22 w23 w24", " w25 w26 w27", " w28"]})
    args = trl.DPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4, max_steps=1,
        report_to="none", use_cpu=True, logging_steps=1, save_strategy="no", optim="sgd",
        learning_rate=1.0, max_grad_norm=0.0, gradient_checkpointing=False, seed=3,
        bf16=False, **cfg)
    return trl.DPOTrainer(model=model, args=args, train_dataset=pairs,
                          processing_class=_tokenizer(), peft_config=peft_config)


def _batch(seed: int = 1) -> tuple[Any, Any, Any]:
    """input ids (2, 9), attention mask with right padding (a completion that ended early),
    labels on the completion only."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (2, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100  # the prompt
    return ids, mask, labels


def _reference(model: Any, ids: Any, mask: Any, labels: Any, tau: float) -> dict[str, Any]:
    """The fields of TRL's FusedCausalLMOutput from the model's full logits, with torch."""
    # the class's forward: a model accelerate prepared returns float32 from its own
    z = type(model).forward(model, input_ids=ids, attention_mask=mask).logits[:, :-1] / tau
    y = labels[:, 1:]
    keep = y != -100
    lp = torch.log_softmax(z, dim=-1)
    p = lp.exp()
    pick = lp.gather(-1, y.clamp(0)[..., None])[..., 0]
    return {
        "log_probs": torch.where(keep, pick, 0.0),
        "entropy": torch.where(keep, -(p * lp).sum(-1), 0.0),
        "log_sum_sq_probs": torch.where(keep, torch.logsumexp(2 * lp, dim=-1), 0.0),
        "mean_logits": torch.where(keep, z.mean(-1), 0.0),
        "is_top1": keep & (z.argmax(-1) == y),
    }


def _fused(model: Any, ids: Any, mask: Any, labels: Any) -> Any:
    return model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)


def _grads(model: Any, value: Any) -> list[Any]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(value, params, allow_unused=True))


def _objective(out: dict[str, Any] | Any) -> Any:
    """A random-weighted sum of the differentiable fields (both enter GRPO's loss)."""
    get = out.__getitem__ if isinstance(out, dict) else lambda k: getattr(out, k)
    g = torch.Generator().manual_seed(5)
    lp, H = get("log_probs"), get("entropy")
    return ((torch.rand(lp.shape, generator=g, dtype=lp.dtype) * lp).sum()
            + (torch.rand(H.shape, generator=g, dtype=H.dtype) * H).sum())


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_grpo_logprobs_and_entropy_equal_the_float64_full_logits(family: str) -> None:
    """GRPO's fields (log_probs, entropy at temperature 0.7), prompt and padding excluded,
    and their gradient with respect to every parameter, within 1e-12 of the float64
    full-logits computation (Gemma 2: through its final soft cap)."""
    trainer = ctrl.patch(_grpo(_model(family)))
    model = trainer.model
    ids, mask, labels = _batch()
    out = _fused(model, ids, mask, labels)
    ref = _reference(model, ids, mask, labels, 0.7)
    assert out.log_probs.dtype == torch.float64
    for k in ("log_probs", "entropy"):
        torch.testing.assert_close(getattr(out, k), ref[k], rtol=1e-12, atol=1e-12)
    assert out.mean_logits is None and out.is_top1 is None  # GRPO asks for two fields
    for a, b in zip(_grads(model, _objective(out)), _grads(model, _objective(ref)),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_dpo_fields_equal_the_float64_full_logits(family: str) -> None:
    """Every field DPO reads (WPO weighting on: log_sum_sq_probs too), against float64
    full logits; is_top1 exactly; the reference model patched as well."""
    trainer = ctrl.patch(_dpo(_model(family), use_weighting=True))
    ids, mask, labels = _batch(2)
    out = _fused(trainer.model, ids, mask, labels)
    ref = _reference(trainer.model, ids, mask, labels, 1.0)
    for k in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits"):
        torch.testing.assert_close(getattr(out, k), ref[k], rtol=1e-12, atol=1e-12)
    assert torch.equal(out.is_top1, ref["is_top1"])
    assert torch.equal(out.label_mask, labels[:, 1:] != -100)
    # the reference model: TRL asks it for the log-probabilities only.  TRL 1.16 loads it
    # in the policy's dtype, TRL 1.15 in float32: its hidden states carry float32 rounding,
    # so there the bound is float32's
    out = _fused(trainer.ref_model, ids, mask, labels)
    ref = _reference(trainer.ref_model, ids, mask, labels, 1.0)
    tol = 1e-12 if trainer.ref_model.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.log_probs, ref["log_probs"], rtol=tol, atol=tol)
    assert out.entropy is None and out.mean_logits is None


@needs_trls_own_head
def test_float32_equals_trls_own_head_to_rounding() -> None:
    """In float32 the patched fields equal TRL's own chunked head's to float32 rounding."""
    trainer = _dpo(_model(dtype=torch.float32), use_weighting=True)
    ids, mask, labels = _batch(3)
    theirs = _fused(trainer.model, ids, mask, labels)
    ours = _fused(ctrl.patch(trainer).model, ids, mask, labels)
    for k in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits"):
        a, b = getattr(ours, k), getattr(theirs, k)
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    assert torch.equal(ours.is_top1, theirs.is_top1)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=2e-6, atol=0)


# --------------------------------------------------------------------------- training steps


def _step(trainer: Any) -> tuple[dict[str, float], list[Any]]:
    """One training step from the trainer's seed: the logged metrics and each parameter's
    change (SGD at learning rate 1, no clipping: minus the gradient)."""
    before = [p.detach().clone() for p in trainer.model.parameters()]
    tf.set_seed(11)  # the same sampled completions for both trainers
    trainer.train()
    logs = {k: v for k, v in trainer.state.log_history[0].items()
            if k not in ("step_time", "epoch", "step")}
    after = [p.detach() for p in trainer.model.parameters()]
    return logs, [a - b for a, b in zip(after, before, strict=True)]


def _same_step(a: Any, b: Any) -> None:
    logs_a, delta_a = _step(a)
    logs_b, delta_b = _step(b)
    assert logs_a.keys() == logs_b.keys()
    for k in logs_a:
        assert logs_a[k] == pytest.approx(logs_b[k], rel=1e-5, abs=1e-6), k
    assert any(float(d.abs().max()) > 0 for d in delta_a)
    for x, y in zip(delta_a, delta_b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


@needs_trls_own_head
def test_grpo_step_equals_the_unpatched_trainers() -> None:
    """Generation, rewards, policy and reference log-probabilities, entropy, loss and the
    update: one GRPO step (float32, beta=0.1) patched and unpatched."""
    model = _model(dtype=torch.float32)
    _same_step(_grpo(copy.deepcopy(model)), ctrl.patch(_grpo(model)))


@needs_trls_own_head
def test_dpo_step_equals_the_unpatched_trainers() -> None:
    """One DPO step (sigmoid loss, reference model) and its logged metrics: rewards,
    log-probabilities, entropy, mean logits, token accuracy."""
    model = _model(dtype=torch.float32)
    _same_step(_dpo(copy.deepcopy(model)), ctrl.patch(_dpo(model)))


@needs_trls_own_head
def test_peft_lora_grpo_step_and_the_adapter_disabled_reference() -> None:
    """A PEFT LoRA model: GRPO's reference is the model with its adapter disabled, through
    the same patched forward; the step equals the unpatched trainer's."""
    peft = pytest.importorskip("peft")

    def lora() -> Any:
        cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                              init_lora_weights=False)
        return peft.get_peft_model(_model(dtype=torch.float32), cfg)

    _same_step(_grpo(lora()), ctrl.patch(_grpo(lora())))


def test_peft_lora_fields_are_exact_with_and_without_the_adapter() -> None:
    """A LoRA model in float64: the patched DPO fields equal the PEFT model's full
    logits', adapter on and off (the reference DPO takes without a ref_model).  (TRL
    refuses LoRA on lm_head itself: its own head reads lm_head.weight alone.)"""
    peft = pytest.importorskip("peft")
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                          init_lora_weights=False)
    trainer = ctrl.patch(_dpo(_model(), peft_config=cfg))
    pm = trainer.model
    ids, mask, labels = _batch(4)
    for ctx in (torch.enable_grad, pm.disable_adapter):
        with ctx():
            out = _fused(pm, ids, mask, labels)
            ref = _reference(pm, ids, mask, labels, 1.0)
        for k in ("log_probs", "entropy", "mean_logits"):
            torch.testing.assert_close(getattr(out, k), ref[k], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- patch / unpatch


@needs_trls_own_head
def test_unpatch_restores_trls_forward_and_patch_is_idempotent() -> None:
    trainer = _grpo(_model())
    forwards = [m.forward for m in (trainer.model, trainer.ref_model)]
    ctrl.patch(ctrl.patch(trainer))
    assert all(m.forward.__func__ is not f.__func__
               for m, f in zip((trainer.model, trainer.ref_model), forwards, strict=True))
    assert ctrl.unpatch(trainer) is trainer
    assert [m.forward for m in (trainer.model, trainer.ref_model)] == forwards
    assert "_crossentropy_trl" not in vars(trainer.model)
    ids, mask, labels = _batch()
    out = _fused(trainer.model, ids, mask, labels)  # TRL's own again: float32 outputs
    assert out.log_probs.dtype == torch.float32
    assert ctrl.unpatch(trainer) is trainer  # a second unpatch does nothing


# --------------------------------------------------------------------------- refusals


def test_a_trainer_other_than_grpo_or_dpo_is_refused() -> None:
    class Trainer:
        pass

    with pytest.raises(ctrl.UnsupportedTrainerError, match=r"takes a TRL GRPOTrainer or "
                       r"DPOTrainer.*Trainer"):
        ctrl.patch(Trainer())


def test_an_unsupported_trl_release_is_refused(monkeypatch: Any) -> None:
    trainer = _grpo(_model())
    monkeypatch.setattr(trl, "__version__", "1.14.2")
    with pytest.raises(ctrl.UnsupportedTrainerError, match=r"TRL 1\.15 and 1\.16.*"
                       r"this is TRL 1\.14\.2"):
        ctrl.patch(trainer)
    assert "_crossentropy_trl" not in vars(trainer.model)


def test_an_output_embedding_that_is_not_a_linear_is_refused() -> None:
    class Head(torch.nn.Linear):
        pass

    trainer = _grpo(_model())
    old = trainer.model.lm_head
    head = Head(old.in_features, old.out_features, bias=False, dtype=torch.float64)
    trainer.model.lm_head = head
    with pytest.raises(ctrl.UnsupportedModelError, match=r"not a torch\.nn\.Linear"):
        ctrl.patch(trainer)
    assert "_crossentropy_trl" not in vars(trainer.model)


def test_a_model_without_trls_fused_head_is_refused() -> None:
    trainer = _grpo(_model())
    del trainer.model.forward  # as if something replaced TRL's forward
    with pytest.raises(ctrl.UnsupportedTrainerError, match="no TRL fused LM head"):
        ctrl.patch(trainer)
