r"""The patch: a causal LM's training loss computed from its last hidden states.

How the patch finds the parts it needs, from the model itself (no list of classes; tested
with transformers 5.25):

* **which models**: a ``torch.nn.Module`` with ``get_output_embeddings()`` (a
  ``torch.nn.Linear``, or a PEFT LoRA / modules-to-save wrapper around one: see
  :mod:`._heads`), whose ``loss_function`` is transformers' own ``ForCausalLMLoss`` (the
  class's loss type, not a replaced one), whose class ``forward`` calls
  ``self.loss_function`` (read from its source when Python has it), and that is not an
  encoder-decoder.  Anything else raises :class:`UnsupportedModelError` saying which test
  failed.
* **the forward**: the instance gets a ``forward`` attribute (a bound method, so
  ``copy.deepcopy`` keeps working) that calls the class's own ``forward``.  When the logits
  are skipped (by default: in training with ``labels``) the output embedding returns a
  :class:`~._probe.Probe` instead of the logits; everything else runs as usual.
* **what the model does to the logits**: the probe records it on its way to
  ``self.loss_function`` (a scale, Gemma's soft cap ``c tanh(z / c)``, a cast, a slice of
  the leading classes), and refuses anything else (:mod:`._probe`).
* **the loss**: ``model.loss_function`` is replaced by :class:`_CausalLMLoss`, which the
  model calls with exactly the arguments it gives transformers' ``ForCausalLMLoss``
  (``labels``, ``vocab_size``, ``num_items_in_batch``, ``ignore_index``,
  ``shift_labels``).  Given the probe it calls
  :func:`crossentropy.torch.linear_cross_entropy` on the hidden states; given real logits
  (evaluation, ``skip_logits=False``) it calls :func:`crossentropy.torch.cross_entropy`.
  Either way the semantics are ``ForCausalLMLoss``'s: labels shifted left by one (or
  ``shift_labels`` as given), ``ignore_index`` positions not counted, the mean over the
  counted tokens or their sum divided by ``num_items_in_batch``.  A bfloat16/float16
  model's loss is the float32 value, unrounded (transformers upcasts the logits).
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import crossentropy.torch as cet
from crossentropy import CrossEntropyOptions
from crossentropy.transformers._heads import check_head, head_parts
from crossentropy.transformers._probe import (
    Probe,
    ProbeRefused,
    UnsupportedModelError,
    make_probe,
)

__all__ = ["SUPPORTED", "UnfusedLossWarning", "UnsupportedModelError", "patch", "unpatch"]

_LOW = (torch.bfloat16, torch.float16)


class UnfusedLossWarning(UserWarning):
    """Something makes a patched model build its full logits in training (the Trainer's
    label smoother, a ``compute_loss_func``, a call without labels); said once per model,
    naming the cause."""


#: Classes tested with this release (tests/test_transformers*.py).  The patch does not use
#: this list: any causal LM that passes the checks of :func:`patch` is patched.
SUPPORTED: tuple[str, ...] = tuple(sorted((
    "CohereForCausalLM", "FalconForCausalLM", "GPT2LMHeadModel", "GPTNeoXForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Gemma3ForConditionalGeneration",
    "GemmaForCausalLM", "GraniteForCausalLM", "LlamaForCausalLM",
    "LlavaForConditionalGeneration", "MistralForCausalLM", "MixtralForCausalLM",
    "OPTForCausalLM", "Olmo2ForCausalLM", "Phi3ForCausalLM", "PhiForCausalLM",
    "Qwen2ForCausalLM", "Qwen2VLForConditionalGeneration", "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM", "SmolLM3ForCausalLM", "StableLmForCausalLM",
)))


# --------------------------------------------------------------------------- the options


@dataclass(frozen=True)
class _Options:
    label_smoothing: float
    z_loss: float
    base: float | None
    skip_logits: bool | None
    impl: str | None

    def loss_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"label_smoothing": self.label_smoothing, "z_loss": self.z_loss,
                              "base": self.base}
        if self.impl is not None:
            kw["impl"] = self.impl
        return kw


def _check_options(label_smoothing: Any, z_loss: Any, base: Any, skip_logits: Any,
                   fused: Any, impl: Any) -> _Options:
    # validates label_smoothing, z_loss and base, raising errors that name the argument
    CrossEntropyOptions.create(label_smoothing=label_smoothing, z_loss=z_loss, base=base,
                               semantics="torch")
    if skip_logits is not None and not isinstance(skip_logits, bool):
        raise TypeError(f"skip_logits must be None, True or False, got {skip_logits!r}")
    if not isinstance(fused, bool):
        raise TypeError(f"fused must be True or False, got {fused!r}")
    if not fused:
        if skip_logits:
            raise ValueError("fused=False (never skip the logits) contradicts "
                             "skip_logits=True; give only skip_logits")
        skip_logits = False
    if impl is not None and not isinstance(impl, str):
        # its value is checked by crossentropy.torch, at the first call with labels
        raise TypeError(f"impl must be None or a string, got {impl!r}")
    return _Options(float(label_smoothing), float(z_loss),
                    None if base is None else float(base), skip_logits, impl)


# --------------------------------------------------------------------------- the loss


def _next_token_loss(
    values: Tensor,
    labels: Tensor | None,
    shift_labels: Tensor | None,
    ignore_index: int,
    num_items_in_batch: Any,
    opts: _Options,
    *,
    head: tuple[Tensor, Tensor | None] | None,
    softcap: float | None,
) -> Tensor:
    r"""transformers' ``ForCausalLMLoss`` from hidden states (``head=(W, b)``) or logits.

    .. math:: \mathcal L = \frac{1}{n} \sum_{t:\, y_{t+1} \ne \text{ignore}}
              \ell\big(z_t, y_{t+1}\big), \qquad
              n = \text{num\_items\_in\_batch or the number of counted tokens}

    The one place that shifts and normalises, through ``crossentropy.torch``'s ``shift=``
    (the (B, T) labels are shifted, never the hidden states or logits) and ``normalizer=``
    (the summed loss divided by ``num_items_in_batch``, an int or a 0-d tensor, as
    transformers' ``fixed_cross_entropy``; without it, the mean over counted tokens).
    bfloat16/float16 inputs give the float32 loss (``dtype=``), as transformers' upcast.
    """
    lead = tuple(values.shape[:-1])
    given = labels if shift_labels is None else shift_labels
    if given is None:
        raise ValueError("the loss needs labels (or shift_labels)")
    if shift_labels is None and tuple(given.shape) != lead:
        raise ValueError(f"labels has shape {tuple(given.shape)} but the model produced "
                         f"positions of shape {lead}")
    if shift_labels is not None:
        # transformers flattens shift_labels: any shape with one label per position
        if given.numel() != values.shape[:-1].numel():
            raise ValueError(f"shift_labels has shape {tuple(given.shape)} but the model "
                             f"produced positions of shape {lead}")
        # one row per position (logits' class axis last: cross_entropy wants (N, C))
        values, given = values.reshape(-1, values.shape[-1]), given.reshape(-1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(values.device)
    kw = {"ignore_index": ignore_index, "normalizer": num_items_in_batch,
          "shift": shift_labels is None, **opts.loss_kwargs()}
    if values.dtype in _LOW:
        kw["dtype"] = torch.float32  # the float32 accumulation, not rounded to bf16
    target = given.to(values.device)
    if head is None:
        loss: Tensor = cet.cross_entropy(values, target, **kw)
        return loss
    W, b = head
    loss = cet.linear_cross_entropy(values, W, target, linear_bias=b, softcap=softcap, **kw)
    return loss


class _CausalLMLoss:
    """``model.loss_function`` of a patched model: transformers' ``ForCausalLMLoss``
    semantics, from the hidden states when the logits are a probe, else from the logits."""

    def __init__(self, opts: _Options, owner: str) -> None:
        self.opts, self.owner = opts, owner

    def __call__(self, logits: Tensor, labels: Tensor | None, vocab_size: int | None = None,
                 num_items_in_batch: Any = None, ignore_index: int = -100,
                 shift_labels: Tensor | None = None, **kwargs: Any) -> Tensor:
        if vocab_size is not None and logits.shape[-1] != vocab_size:
            # transformers' logits.view(-1, vocab_size) would mix the classes of positions
            raise ValueError(f"{self.owner} passed vocab_size={vocab_size} to its loss but "
                             f"its logits have {logits.shape[-1]} classes")
        if not isinstance(logits, Probe):
            return _next_token_loss(logits, labels, shift_labels, ignore_index,
                                    num_items_in_batch, self.opts, head=None, softcap=None)
        st = logits._ce_state
        st.slot.append(True)
        h, W, b, softcap = st.linear_inputs()
        return _next_token_loss(h, labels, shift_labels, ignore_index, num_items_in_batch,
                                self.opts, head=(W, b), softcap=softcap)


# --------------------------------------------------------------------------- the head


def _head_forward(self: Any, input: Tensor, *args: Any, **kwargs: Any) -> Any:
    """The output embedding's ``forward`` while patched: its own, or, during a call that
    skips the logits, the probe standing for them."""
    capture = self.__dict__.get("_crossentropy_capture")
    if capture is None:
        return type(self).forward(self, input, *args, **kwargs)
    slot, owner = capture
    if args:
        raise UnsupportedModelError(f"{owner} calls its output embedding with {len(args)} "
                                    "extra positional arguments")
    h, W, b = head_parts(self, input, kwargs, owner)
    return make_probe(h, W, b, slot, owner)


_head_forward.__name__ = "forward"  # what a bound method pickles by


def _install_head(head: Any, owner: str) -> None:
    check_head(head, owner)
    fwd = head.__dict__.get("forward")
    if not (isinstance(fwd, types.MethodType) and fwd.__func__ is _head_forward):
        head.forward = types.MethodType(_head_forward, head)


# --------------------------------------------------------------------------- the forward


def _labels_position(cls: Any) -> int | None:
    """Index of ``labels`` among the positional arguments of ``cls.forward`` (after self)."""
    params = list(inspect.signature(cls.forward).parameters.values())[1:]
    for i, p in enumerate(params):
        if p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            return None
        if p.name == "labels":
            return i
    return None


@functools.cache
def _forward_for(cls: Any) -> Callable[..., Any]:
    """The patched forward of ``cls``, with ``cls.forward``'s signature (the Trainer reads it
    to keep the dataset's columns and to decide whether to pass ``num_items_in_batch``)."""

    pos = _labels_position(cls)

    @functools.wraps(cls.forward)
    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return _patched_forward(self, pos, *args, **kwargs)

    return forward


def _patched_forward(self: Any, pos: int | None, *args: Any, **kwargs: Any) -> Any:
    cls: Any = type(self)
    skip = kwargs.pop("skip_logits", None)
    if "labels" in kwargs:
        labels = kwargs["labels"]
    elif pos is not None and len(args) > pos:
        labels = args[pos]
    else:
        labels = None
    opts: _Options = self._crossentropy_options
    if skip is None:
        skip = opts.skip_logits
    elif not isinstance(skip, bool):
        raise TypeError(f"skip_logits must be None, True or False, got {skip!r}")
    if skip is None:
        # Liger-Kernel's rule: the logits are skipped only in training, with labels
        skip = bool(self.training) and labels is not None
    if not skip:
        if (labels is None and self.training and torch.is_grad_enabled()
                and not torch.compiler.is_compiling()):
            _warn_unfused(self, _why_no_labels())
        return cls.forward(self, *args, **kwargs)
    if labels is None:
        raise ValueError(f"{cls.__name__}: skip_logits=True needs labels (without them there "
                         "is no loss, and the logits are the only output)")
    head = self.get_output_embeddings()
    _install_head(head, cls.__name__)  # a head replaced since patch() (PEFT, merging)
    return_dict = kwargs.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(self.config, "return_dict", True)
    slot: list[bool] = []
    head._crossentropy_capture = (slot, cls.__name__)
    try:
        out = cls.forward(self, *args, return_dict=True, **kwargs)
    except ProbeRefused as exc:
        raise UnsupportedModelError(str(exc)) from None
    finally:
        head._crossentropy_capture = None
    if not slot:
        raise UnsupportedModelError(
            f"{cls.__name__}.forward did not pass the logits of its output embedding to "
            "self.loss_function, so crossentropy.transformers cannot compute its loss "
            "without them (patch with skip_logits=False to keep them)")
    fields = {k: v for k, v in out.items() if k != "logits"}
    out = type(out)(**fields)
    return out if return_dict else out.to_tuple()


# --------------------------------------------------------------------------- warnings


def _trainer_class(obj: Any) -> bool:
    return any(c.__name__ == "Trainer" and c.__module__.startswith("transformers.")
               for c in type(obj).__mro__)


def _why_no_labels() -> str:
    """The argument that took the labels away, when a transformers Trainer is the caller."""
    frame: types.FrameType | None = sys._getframe(2)
    for _ in range(40):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if owner is not None and _trainer_class(owner):
            if getattr(owner, "compute_loss_func", None) is not None:
                return ("Trainer(compute_loss_func=...) takes the labels and computes the loss "
                        "from the logits")
            if getattr(owner, "label_smoother", None) is not None:
                eps = getattr(owner.args, "label_smoothing_factor", None)
                return (f"TrainingArguments(label_smoothing_factor={eps}) makes the Trainer "
                        "take the labels and smooth the loss of the logits; "
                        "crossentropy.transformers.patch(trainer) moves the smoothing into "
                        "the fused loss")
            return "the Trainer passed no labels"
        frame = frame.f_back
    return "the caller passed no labels"


def _warn_unfused(model: Any, why: str) -> None:
    if model.__dict__.get("_crossentropy_warned"):
        return
    model._crossentropy_warned = True
    warnings.warn(
        f"crossentropy.transformers: {type(model).__name__} is training without the fused "
        f"loss: {why}. The full (tokens x vocabulary) logits are built.",
        UnfusedLossWarning, stacklevel=4)


# --------------------------------------------------------------------------- checks


def _causal_lm_loss() -> Any:
    mod = sys.modules.get("transformers.loss.loss_utils")
    return getattr(mod, "ForCausalLMLoss", None)


def _check_model(m: Any) -> str:
    """The class name, or UnsupportedModelError saying why the model cannot be patched."""
    name = type(m).__name__
    for attr in ("get_output_embeddings", "config"):
        if not hasattr(m, attr):
            raise UnsupportedModelError(
                f"{name} has no {attr}: crossentropy.transformers.patch takes a transformers "
                "causal LM (or a PeftModel or Trainer around one)")
    if getattr(m.config, "is_encoder_decoder", False):
        raise UnsupportedModelError(f"{name} is an encoder-decoder model: the patch computes "
                                    "a decoder-only causal LM's next-token loss")
    prop = getattr(type(m), "loss_function", None)
    if not isinstance(prop, property) or prop.fget is None:
        raise UnsupportedModelError(f"{name} has no transformers loss_function property "
                                    "(every transformers >= 4.51, the floor, has it)")
    own = m.__dict__.get("_loss_function")
    if own is not None and not isinstance(own, _CausalLMLoss):
        raise UnsupportedModelError(
            f"{name}.loss_function was replaced by {own!r}: the fused loss computes "
            "transformers' ForCausalLMLoss only")
    if own is None:
        fn = prop.fget(m)
    else:  # patched before: the class's own loss function, without ours
        del m.__dict__["_loss_function"]
        try:
            fn = prop.fget(m)
        finally:
            m.__dict__["_loss_function"] = own
    want = _causal_lm_loss()
    if want is None or fn is not want:
        raise UnsupportedModelError(
            f"{name}'s loss_function is {getattr(fn, '__name__', fn)!r}, not transformers' "
            "ForCausalLMLoss: it is not a causal LM loss the patch can fuse")
    try:
        src = inspect.getsource(inspect.unwrap(type(m).forward))
    except (OSError, TypeError):  # no source (frozen, compiled): the first call checks
        src = "loss_function"
    if "loss_function" not in src:
        raise UnsupportedModelError(
            f"{name}.forward computes its loss without self.loss_function, so the patch "
            "cannot take it over")
    check_head(m.get_output_embeddings(), name)
    return name


def _peft_inner(obj: Any) -> Any:
    """The transformers model inside a PeftModel (or the object itself)."""
    cls_mod = type(obj).__module__
    if cls_mod.startswith("peft.") and callable(getattr(obj, "get_base_model", None)):
        return obj.get_base_model()
    return obj


# --------------------------------------------------------------------------- public


def patch(
    model: Any,
    *,
    base: float | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    skip_logits: bool | None = None,
    fused: bool = True,
    impl: str | None = None,
) -> Any:
    r"""Compute a causal LM's loss with :mod:`crossentropy.torch`; returns ``model``.

    .. math:: \mathcal L = \frac{1}{n} \sum_t \ell\big(a\,\phi(s\,(h_t W^\top + b)),
              y_{t+1}\big)

    with :math:`h_t` the last hidden states, :math:`W, b` the output embedding, whatever
    scale :math:`s, a` and soft cap :math:`\phi = \tanh` the model applies to its logits
    (recorded as it runs), :math:`\ell` the cross-entropy (with ``label_smoothing`` and
    ``z_loss``, in units of ``log(base)``), :math:`n` the number of counted tokens or
    ``num_items_in_batch``.

    Patches in place, and takes

    * a transformers causal LM (any class whose output embedding is a ``torch.nn.Linear``
      and whose loss is ``self.loss_function``, transformers' ``ForCausalLMLoss``; vision
      language ``...ForConditionalGeneration`` models too);
    * a PEFT ``PeftModel`` around one (LoRA on the output embedding included);
    * a ``transformers.Trainer``: its model is patched, and its label smoother
      (``TrainingArguments(label_smoothing_factor=...)``) is moved into the fused loss
      (the same value: transformers' ``LabelSmoother`` is torch's label smoothing of the
      shifted labels); a ``compute_loss_func`` keeps the logits, with a warning.

    When the logits are skipped (``skip_logits``: None, the default, skips them in training
    with labels, as Liger-Kernel; True always with labels; False never) the loss comes from
    :func:`crossentropy.torch.linear_cross_entropy` and the output's ``logits`` is ``None``
    (absent from the tuple when ``return_dict=False``).  Otherwise (evaluation, prediction)
    the model computes its logits and the loss is :func:`crossentropy.torch.cross_entropy`
    of them.  The forward also takes ``skip_logits=`` per call (the Trainer passes it under
    ``use_liger_kernel``).  Without labels the model runs exactly as before.  A bfloat16 or
    float16 model's loss is the float32 value, not rounded to its dtype.  Patching again
    replaces the options; :func:`unpatch` undoes it.

    Parameters
    ----------
    model : a transformers causal LM, a PeftModel around one, or a Trainer.
    base : unit of the loss (None for nats, 2 for bits).
    label_smoothing : in [0, 1], torch's definition (for a Trainer: its
        ``label_smoothing_factor`` when this is 0).
    z_loss : coefficient of :math:`\mathrm{lse}^2` added to each counted token's loss.
    skip_logits : None, True or False (see above).
    fused : False is ``skip_logits=False`` (kept from earlier releases).
    impl : passed to :mod:`crossentropy.torch` (None: its default dispatch).

    Raises
    ------
    UnsupportedModelError (a TypeError) saying why a model cannot be patched (or, during a
    call, which operation on its logits cannot be fused); TypeError / ValueError naming the
    option for a bad option.

    Examples
    --------
    >>> import torch, transformers
    >>> import crossentropy.transformers as cet
    >>> _ = torch.manual_seed(0)
    >>> config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    >>> model = transformers.LlamaForCausalLM(config)
    >>> ids = torch.randint(0, 32, (2, 8))
    >>> before = model(ids, labels=ids).loss
    >>> out = cet.patch(model)(ids, labels=ids)        # training mode: no logits
    >>> out.logits is None, torch.allclose(out.loss, before)
    (True, True)
    >>> out = model.eval()(ids, labels=ids)            # evaluation: the logits and the loss
    >>> out.logits.shape, torch.allclose(out.loss, before)
    (torch.Size([2, 8, 32]), True)
    """
    if _trainer_class(model):
        return _patch_trainer(model, base=base, label_smoothing=label_smoothing,
                              z_loss=z_loss, skip_logits=skip_logits, fused=fused, impl=impl)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a transformers causal LM (a torch.nn.Module), a "
                        f"PeftModel or a Trainer, got {type(model).__name__}")
    m: Any = _peft_inner(model)
    opts = _check_options(label_smoothing, z_loss, base, skip_logits, fused, impl)
    name = _check_model(m)
    unpatch(m)
    m._crossentropy_options = opts
    # a bound method (not a closure over the model), so deep copies call their own forward
    m.forward = types.MethodType(_forward_for(m.__class__), m)
    m.loss_function = _CausalLMLoss(opts, name)
    _install_head(m.get_output_embeddings(), name)
    return model


def _patch_trainer(trainer: Any, *, label_smoothing: Any, **kw: Any) -> Any:
    smoother = getattr(trainer, "label_smoother", None)
    if smoother is not None:
        eps = float(smoother.epsilon)
        if getattr(smoother, "ignore_index", -100) != -100:
            raise ValueError(f"the Trainer's label smoother ignores label "
                             f"{smoother.ignore_index}, the model's loss -100: not supported")
        if label_smoothing != 0.0 and not math.isclose(float(label_smoothing), eps):
            raise ValueError(f"label_smoothing={label_smoothing!r} contradicts the Trainer's "
                             f"label_smoothing_factor={eps!r}; give one")
        label_smoothing = eps
    patch(trainer.model, label_smoothing=label_smoothing, **kw)
    if smoother is not None:
        trainer._crossentropy_label_smoother = smoother
        trainer.label_smoother = None
    if getattr(trainer, "compute_loss_func", None) is not None:
        _warn_unfused(_peft_inner(trainer.model),
                      "Trainer(compute_loss_func=...) takes the labels and computes the loss "
                      "from the logits")
    return trainer


def unpatch(model: Any) -> Any:
    """Undo :func:`patch` (of a model, PeftModel or Trainer; anything never patched is
    returned unchanged).

    >>> import crossentropy.transformers as cet
    >>> import torch
    >>> cet.unpatch(torch.nn.Linear(2, 2))
    Linear(in_features=2, out_features=2, bias=True)
    """
    if _trainer_class(model):
        smoother = model.__dict__.pop("_crossentropy_label_smoother", None)
        if smoother is not None:
            model.label_smoother = smoother
        unpatch(model.model)
        return model
    m: Any = _peft_inner(model)
    if not isinstance(m, torch.nn.Module) or "_crossentropy_options" not in vars(m):
        return model
    del m._crossentropy_options
    vars(m).pop("forward", None)
    vars(m).pop("_crossentropy_warned", None)
    if isinstance(m.__dict__.get("_loss_function"), _CausalLMLoss):
        del m._loss_function
    for sub in m.modules():
        fwd = sub.__dict__.get("forward")
        if isinstance(fwd, types.MethodType) and fwd.__func__ is _head_forward:
            del sub.__dict__["forward"]
        sub.__dict__.pop("_crossentropy_capture", None)
    return model
