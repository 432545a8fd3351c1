r"""The patch of a TRL trainer: its models' fused forward replaced by :mod:`._forward`.

How TRL 1.15 and 1.16 compute per-token log-probabilities: ``GRPOTrainer`` and
``DPOTrainer`` call ``trl.trainer.utils.add_fused_lm_head`` at construction on the model
they train (its base model under PEFT) and on the reference model, with the trainer's
temperature (GRPO's ``args.temperature``; DPO: 1) and the fields the trainer reads
(GRPO: ``log_probs``, ``entropy``; DPO: those and ``mean_logits``, ``is_top1``, with
``log_sum_sq_probs`` for WPO weighting).  That sets the model's ``forward`` (an instance
attribute) to one that, given ``fused_lm_head=True``, runs the backbone and TRL's
``ChunkedLogProbFunction``: the logits in tiles of up to 4,096 tokens x 32,768 classes,
statistics accumulated in float32 (on a device without Triton every position is scored,
prompt and padding too).  The trainers never call the model otherwise to score tokens:
GRPO's ``_get_per_token_logps_and_entropies`` (policy, old policy, reference) and DPO's
``_compute_loss`` / ``compute_ref_log_probs`` all go through it, and the reference of a
PEFT model is the same forward with the adapter disabled.

The patch replaces that attribute on each of the trainer's models by
:func:`._forward.fused_forward`, which keeps TRL's temperature and fields (read from TRL's
function) and computes them with :func:`crossentropy.torch.linear_token_stats` on the
counted positions only; without ``fused_lm_head`` it calls TRL's own forward (generation is
unchanged).  :func:`unpatch` puts TRL's forward back.
"""

from __future__ import annotations

import inspect
import sys
import types
from typing import Any

from crossentropy.transformers import check_output_layer
from crossentropy.trl._forward import FIELDS, FusedHead, fused_forward

__all__ = ["SUPPORTED_TRL", "UnsupportedTrainerError", "patch", "unpatch"]

#: TRL releases (major.minor) whose fused LM head the patch knows (tests/test_trl.py).
SUPPORTED_TRL: tuple[str, ...] = ("1.15", "1.16")

_TRAINERS = ("GRPOTrainer", "DPOTrainer")


class UnsupportedTrainerError(TypeError):
    """The trainer, its TRL release or one of its options cannot be patched; the message
    says which and why."""


def _trl_version() -> str:
    trl = sys.modules.get("trl")
    return str(getattr(trl, "__version__", "unknown")) if trl is not None else "not imported"


def _check_version() -> None:
    v = _trl_version()
    if ".".join(v.split(".")[:2]) not in SUPPORTED_TRL:
        raise UnsupportedTrainerError(
            f"crossentropy.trl supports TRL {' and '.join(SUPPORTED_TRL)} (it replaces their "
            f"fused LM head, trl.trainer.utils.add_fused_lm_head); this is TRL {v}")


def _trainer_kind(trainer: Any) -> str:
    for cls in type(trainer).__mro__:
        if cls.__name__ in _TRAINERS and cls.__module__.startswith("trl."):
            return cls.__name__
    raise UnsupportedTrainerError(
        f"crossentropy.trl.patch takes a TRL {' or '.join(_TRAINERS)} (or a subclass), got "
        f"{type(trainer).__module__}.{type(trainer).__qualname__}")


def _models(trainer: Any) -> list[Any]:
    """The models whose forward TRL replaced: the trained one (the base model under PEFT,
    as TRL patches it) and the reference model, when there is one."""
    model = trainer.model
    if type(model).__module__.startswith("peft.") and callable(
            getattr(model, "get_base_model", None)):
        model = model.get_base_model()
    out = [model]
    ref = getattr(trainer, "ref_model", None)
    if ref is not None and ref is not model:
        out.append(ref)
    return out


def _is_trl_function(fn: Any) -> bool:
    # TRL wraps it with functools.wraps(type(model).forward): its code names it, not __name__
    code = getattr(fn, "__code__", None)
    return (code is not None and code.co_name == "_fused_forward"
            and getattr(fn, "__globals__", {}).get("__name__") == "trl.trainer.utils")


def _trl_function(fwd: Any) -> tuple[Any, bool]:
    """TRL's ``_fused_forward`` function under the bound ``fwd``, and whether something
    wraps it (accelerate's ``prepare_model`` wraps a prepared model's forward in autocast
    and a float32 conversion of the outputs)."""
    fn = getattr(fwd, "__func__", None) if isinstance(fwd, types.MethodType) else None
    wrapped = False
    for _ in range(8):
        if fn is None or _is_trl_function(fn):
            break
        fn, wrapped = getattr(fn, "__wrapped__", None), True
    return (fn if _is_trl_function(fn) else None), wrapped


def _read_trl_head(model: Any, kind: str, accelerator: Any) -> FusedHead:
    """TRL's fused forward of ``model`` and what it was set up with (its closure)."""
    name = type(model).__name__
    fwd = model.__dict__.get("forward")
    fn, wrapped = _trl_function(fwd)
    if fn is None:
        raise UnsupportedTrainerError(
            f"{kind}'s model {name} has no TRL fused LM head (model.forward is "
            f"{getattr(fwd, '__qualname__', fwd)!r}): patch the trainer right after creating "
            "it, before train() or anything else replaces the model's forward")
    closure = inspect.getclosurevars(fn).nonlocals
    need = ("original_forward", "temperature", "cast_lm_head_to_fp32", "outputs", "text_config")
    missing = [k for k in need if k not in closure]
    if missing:
        raise UnsupportedTrainerError(
            f"TRL {_trl_version()}'s fused LM head has no {missing}: not the one "
            "crossentropy.trl knows")
    if closure["cast_lm_head_to_fp32"]:
        raise UnsupportedTrainerError(
            f"{kind}(args=...cast_lm_head_to_fp32=True) is not supported: it replaces the "
            "output embedding's forward by a float32 one; crossentropy already computes the "
            "statistics of bfloat16/float16 logits in float32 (leave the option False)")
    outputs = tuple(closure["outputs"])
    unknown = [k for k in outputs if k not in FIELDS]
    if unknown:
        raise UnsupportedTrainerError(f"{kind} asks its fused LM head for {unknown}, which "
                                      f"crossentropy.trl does not compute (it does {FIELDS})")
    tau = float(closure["temperature"])
    # a forward accelerate prepared ran under its autocast: the patched one does too
    autocast = accelerator.autocast if wrapped and accelerator is not None else None
    return FusedHead(fwd, closure["original_forward"], tau, outputs, closure["text_config"],
                     autocast)


def patch(trainer: Any) -> Any:
    r"""Compute a TRL trainer's per-token log-probabilities (and entropies) with
    :func:`crossentropy.torch.linear_token_stats`; returns ``trainer``.

    .. math:: \log p_\tau(y_{t+1}) = \frac{z_{t,y}}{\tau} - \log\sum_v e^{z_{t,v}/\tau},
              \qquad z_t = \phi\big(s\,(h_t W^\top + b)\big)

    from the last hidden states :math:`h_t` and the output embedding :math:`W, b` (with the
    model's own scale :math:`s` and soft cap :math:`\phi`, recorded as it runs), at the
    trainer's temperature :math:`\tau`, on the completion positions only: the (tokens x
    vocabulary) logits are never built, in forward or backward (blocks within a budget of
    128 MiB of temporaries), and the values are exact (float64 models give float64
    log-probabilities; bfloat16 ones float32).

    Takes a ``trl.GRPOTrainer`` or ``trl.DPOTrainer`` (TRL 1.15 or 1.16, see
    :data:`SUPPORTED_TRL`), right after it is created: its model (a PEFT model too, with
    LoRA on the output embedding included) and its reference model, or the same model with
    the adapter disabled, are patched on those instances only.  Generation is unchanged.
    :func:`unpatch` restores TRL's own computation.

    Raises
    ------
    UnsupportedTrainerError (a TypeError): another trainer, another TRL release, an option
    the patch does not cover (``cast_lm_head_to_fp32``).  UnsupportedModelError (a
    TypeError, from :mod:`crossentropy.transformers`): an output embedding that is not a
    ``torch.nn.Linear`` (or a PEFT LoRA / modules-to-save wrapper around one), or, during a
    call, an operation on the logits that cannot be reproduced exactly.

    Examples
    --------
    >>> import crossentropy.trl
    >>> crossentropy.trl.patch(object())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    crossentropy.trl._patch.UnsupportedTrainerError: ... GRPOTrainer or ... got builtins.object

    With a trainer (see ``docs/trl.md`` for a complete run)::

        trainer = crossentropy.trl.patch(GRPOTrainer(model=model, ...))
        trainer.train()
    """
    kind = _trainer_kind(trainer)
    _check_version()
    models = _models(trainer)
    heads = []
    for m in models:
        check_output_layer(m)
        if "_crossentropy_trl" in m.__dict__:
            heads.append(m.__dict__["_crossentropy_trl"])  # patched before: keep TRL's
            continue
        heads.append(_read_trl_head(m, kind, getattr(trainer, "accelerator", None)))
    for m, head in zip(models, heads, strict=True):
        m._crossentropy_trl = head
        m.forward = types.MethodType(_signed(head), m)
    trainer._crossentropy_trl_models = models
    return trainer


def _signed(head: FusedHead) -> Any:
    """:func:`fused_forward` under TRL's forward's name and signature (``generate``
    validates its keyword arguments against the model's forward)."""
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return fused_forward(self, *args, **kwargs)

    trl_fn = head.trl_forward.__func__
    for attr in ("__name__", "__qualname__", "__doc__"):
        setattr(forward, attr, getattr(trl_fn, attr, None))
    forward.__signature__ = inspect.signature(trl_fn)  # type: ignore[attr-defined]
    return forward


def unpatch(trainer: Any) -> Any:
    """Undo :func:`patch`: the trainer's models get TRL's fused forward back (a trainer
    never patched is returned unchanged).

    >>> import crossentropy.trl
    >>> crossentropy.trl.unpatch(object()) is not None
    True
    """
    models = getattr(trainer, "__dict__", {}).pop("_crossentropy_trl_models", None)
    for m in models or ():
        head = m.__dict__.pop("_crossentropy_trl", None)
        if head is not None:
            m.forward = head.trl_forward
    return trainer
