"""crossentropy.transformers with transformers.Trainer: training, evaluation, prediction,
label smoothing, and the warnings where something forces the full logits.

Every expected value is the unpatched model's under the same Trainer (tiny float64 Llama,
CPU, no download): its metrics, predictions and weights; transformers computes its own loss
in float32 (ForCausalLMLoss upcasts, LabelSmoother sums in float32), so losses and weights
are compared at that precision, the logits bit for bit.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
np = pytest.importorskip("numpy")

import crossentropy.transformers as cet  # noqa: E402
from _transformers_models import V, assert_grads_close, make  # noqa: E402

# transformers.trainer imports peft where it is installed, and peft 0.22 warns on import with
# transformers < 5.6 (the declared floor is 4.51); under filterwarnings=error the import of
# the Trainer then fails.  Exactly that warning is ignored; any other still fails the test.
pytestmark = pytest.mark.filterwarnings(
    r"ignore:Support for Transformers < 5\.6 is deprecated in PEFT:FutureWarning")

T = 7


def _data(n: int = 8, seed: int = 3) -> list[dict[str, Any]]:
    # sequences with different numbers of ignored labels: a per-micro-batch mean would
    # weight their tokens differently from the global mean
    g = torch.Generator().manual_seed(seed)
    data = []
    for i in range(n):
        ids = torch.randint(3, V - 4, (T,), generator=g)
        labels = ids.clone()
        labels[: i % 4 + 1] = -100
        data.append({"input_ids": ids, "labels": labels})
    return data


def _args(tmp: Any, **kw: Any) -> Any:
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    # in order (transformers >= 5.x); before, the seeded random permutation is the same for
    # every batch size, so the doubled batch still holds the two micro-batches
    order = {"train_sampling_strategy": "sequential"} if "train_sampling_strategy" in fields else {}
    base = {"max_steps": 2, "learning_rate": 0.5, "optim": "sgd", "lr_scheduler_type": "constant",
            "weight_decay": 0.0, "max_grad_norm": 0.0, "per_device_eval_batch_size": 3}
    return transformers.TrainingArguments(
        output_dir=str(tmp), report_to=[], save_strategy="no", use_cpu=True,
        logging_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
        **order, **{**base, **kw})


def _weights(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# --------------------------------------------------------------------------- training


def test_gradient_accumulation_equals_the_doubled_batch(tmp_path: Any) -> None:
    data = _data()
    model = make("llama")
    runs = {}
    for name, bs, ga, patched in [("ga", 2, 2, True), ("doubled", 4, 1, True),
                                  ("unpatched", 4, 1, False)]:
        m = copy.deepcopy(model)
        if patched:
            cet.patch(m)
        args = _args(tmp_path / name, per_device_train_batch_size=bs,
                     gradient_accumulation_steps=ga)
        trainer = transformers.Trainer(model=m, args=args, train_dataset=data)
        runs[name] = (float(trainer.train().training_loss), _weights(m))
    (l_ga, w_ga), (l_2b, w_2b), (l_un, w_un) = runs["ga"], runs["doubled"], runs["unpatched"]
    assert math.isclose(l_ga, l_2b, rel_tol=1e-9)
    assert_grads_close(w_ga, w_2b)
    # and transformers' own loss trains to the same weights (its loss is float32)
    assert math.isclose(l_ga, l_un, rel_tol=1e-6)
    assert any(not torch.equal(p, dict(model.named_parameters())[n]) for n, p in w_ga.items())
    assert_grads_close(w_ga, w_un, rtol=1e-5)


# --------------------------------------------------------------------------- evaluate / predict


def _metrics(pred: Any) -> dict[str, float]:
    """Next-token accuracy over counted labels and the mean logit: both need the logits."""
    logits, labels = pred.predictions, pred.label_ids
    assert isinstance(logits, np.ndarray) and logits.shape[-1] == V
    guess, target = logits[:, :-1].argmax(-1), labels[:, 1:]
    counted = target != -100
    return {"accuracy": float((guess == target)[counted].mean()),
            "mean_logit": float(logits.mean())}


def test_evaluate_and_predict_equal_unpatched(tmp_path: Any) -> None:
    train, held = _data(8, seed=3), _data(5, seed=4)
    model = cet.patch(make("llama"))
    args = _args(tmp_path / "p", per_device_train_batch_size=4)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train,
                                   eval_dataset=held, compute_metrics=_metrics)
    trainer.train()  # training first: the logits are skipped there, kept for evaluation
    results = {"patched": (trainer.evaluate(), trainer.predict(held))}
    # the reference: the same trained weights, unpatched, under the same Trainer
    plain = cet.unpatch(copy.deepcopy(model))
    trainer = transformers.Trainer(model=plain, args=_args(tmp_path / "u"),
                                   eval_dataset=held, compute_metrics=_metrics)
    results["unpatched"] = (trainer.evaluate(), trainer.predict(held))
    (m_un, p_un), (m_pa, p_pa) = results["unpatched"], results["patched"]
    assert m_pa["eval_accuracy"] == m_un["eval_accuracy"]
    assert m_pa["eval_mean_logit"] == m_un["eval_mean_logit"]
    assert math.isclose(m_pa["eval_loss"], m_un["eval_loss"], rel_tol=1e-6)
    assert isinstance(p_pa.predictions, np.ndarray)
    assert p_pa.predictions.shape == (5, T, V)
    assert np.array_equal(p_pa.predictions, p_un.predictions)
    assert np.array_equal(p_pa.label_ids, p_un.label_ids)
    assert math.isclose(p_pa.metrics["test_loss"], p_un.metrics["test_loss"], rel_tol=1e-6)
    assert p_pa.metrics["test_accuracy"] == p_un.metrics["test_accuracy"]


# --------------------------------------------------------------------------- label smoothing


def _smoothing_run(model: Any, tmp: Any, patch_trainer: bool) -> tuple[Any, float, float]:
    data, held = _data(8, seed=5), _data(4, seed=6)
    # transformers 4.x's LabelSmoother takes each micro-batch's mean (no num_items_in_batch);
    # the fused loss, like transformers 5.x, the mean over the accumulated batch: the two
    # agree without accumulation only
    smoother = transformers.trainer_pt_utils.LabelSmoother.__call__
    ga = 2 if "num_items_in_batch" in inspect.signature(smoother).parameters else 1
    args = _args(tmp, per_device_train_batch_size=2, gradient_accumulation_steps=ga,
                 label_smoothing_factor=0.1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   eval_dataset=held)
    if patch_trainer:
        assert cet.patch(trainer) is trainer
        assert trainer.label_smoother is None  # moved into the model's loss
    loss = float(trainer.train().training_loss)
    return trainer, loss, float(trainer.evaluate()["eval_loss"])


def test_trainer_label_smoothing_moves_into_the_fused_loss(tmp_path: Any) -> None:
    model = make("llama")
    unpatched = copy.deepcopy(model)
    _, l_un, e_un = _smoothing_run(unpatched, tmp_path / "u", patch_trainer=False)
    trainer, l_pa, e_pa = _smoothing_run(model, tmp_path / "p", patch_trainer=True)
    # transformers' LabelSmoother sums its smoothing term in float32
    assert math.isclose(l_pa, l_un, rel_tol=1e-6)
    assert math.isclose(e_pa, e_un, rel_tol=1e-6)
    assert_grads_close(_weights(model), _weights(unpatched), rtol=1e-5)
    assert model._crossentropy_options.label_smoothing == 0.1
    cet.unpatch(trainer)
    assert trainer.label_smoother is not None and "forward" not in vars(model)


def test_smoothing_left_on_the_trainer_warns_once_naming_it(tmp_path: Any) -> None:
    model = cet.patch(make("llama"))
    data = _data(8, seed=5)
    args = _args(tmp_path, per_device_train_batch_size=2, label_smoothing_factor=0.1)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    with pytest.warns(cet.UnfusedLossWarning, match=r"label_smoothing_factor=0\.1") as seen:
        trainer.train()
    assert len([w for w in seen if w.category is cet.UnfusedLossWarning]) == 1


def test_compute_loss_func_warns_once_naming_it(tmp_path: Any) -> None:
    def loss_func(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs.logits[:, :-1].reshape(-1, V)
        return torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1))

    model = make("llama")
    args = _args(tmp_path, per_device_train_batch_size=4)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_data(),
                                   compute_loss_func=loss_func)
    with pytest.warns(cet.UnfusedLossWarning, match="compute_loss_func"):
        cet.patch(trainer)
    trainer.train()  # no second warning (the suite turns warnings into errors)


def test_conflicting_smoothing_is_refused(tmp_path: Any) -> None:
    args = _args(tmp_path, label_smoothing_factor=0.1)
    trainer = transformers.Trainer(model=make("llama"), args=args, train_dataset=_data())
    with pytest.raises(ValueError, match="contradicts the Trainer's label_smoothing_factor"):
        cet.patch(trainer, label_smoothing=0.2)
    assert "forward" not in vars(trainer.model) and trainer.label_smoother is not None
