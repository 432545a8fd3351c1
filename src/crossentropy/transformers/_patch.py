r"""The patch: a causal LM's loss computed from its last hidden states, without the logits.

How the patch finds the parts it needs (so that a new transformers release is a small
change; tested with transformers 5.24):

* **the forward**: the instance gets a ``forward`` attribute (a bound method, so
  ``copy.deepcopy`` and pickling keep working) that calls the class's own ``forward``.
  Without ``labels`` it calls it with exactly the caller's arguments: generation is
  untouched.  With ``labels`` it calls it with ``labels=None`` (so transformers computes
  no loss) and ``return_dict=True``.  ``labels`` is found by name, or by its position in
  the class's ``forward`` signature when passed positionally.
* **the hidden states and the output embedding**: ``model.get_output_embeddings()`` must
  be a plain ``torch.nn.Linear``; its class is swapped for a subclass whose ``forward``,
  only while a patched call with labels runs, records its input (the last hidden states,
  after the final norm and any ``logits_to_keep`` slice) and returns an empty
  ``(..., 0)`` tensor, so whatever the model does to the logits afterwards (Gemma's soft
  cap) costs nothing.  The weight and bias are the module's own parameters (tied
  embeddings stay tied); the state dict is unchanged.
* **what the model does to the logits**: a table, :data:`SUPPORTED`, keyed by the class
  name, says how each architecture transforms ``h W^T`` before its loss: nothing
  (Llama, Mistral, Qwen2, Qwen3, Phi-3, GPT-2), ``c tanh(z / c)`` with
  ``c = config.final_logit_softcapping`` (Gemma 2, Gemma 3), ``z * model.logit_scale``
  (Cohere), ``z / config.logits_scaling`` (Granite).  A class not in the table raises
  :class:`UnsupportedModelError`; nothing falls back silently.
* **the loss semantics** are those of ``transformers.loss.loss_utils.ForCausalLMLoss``:
  the labels are shifted left by one and padded with ``ignore_index`` (or
  ``shift_labels`` is taken as given), ``ignore_index`` (default -100) positions do not
  count, and the loss is the mean over the counted tokens, or, when
  ``num_items_in_batch`` is given, their sum divided by it (the global token count under
  gradient accumulation).
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import crossentropy.torch as cet
from crossentropy import CrossEntropyOptions

__all__ = ["SUPPORTED", "UnsupportedModelError", "patch", "unpatch"]

_LOW = (torch.bfloat16, torch.float16)
_LOSS_KWARGS = ("num_items_in_batch", "shift_labels", "ignore_index")


class UnsupportedModelError(TypeError):
    """The model's class (or its output embedding) is not one the patch knows."""


# --------------------------------------------------------------------------- architectures

# What each architecture does to z = h W^T (+ b) between its lm_head and its loss:
# (logit scale s or None, final soft cap c or None); the loss sees c tanh(s z / c).
_Transform = Callable[[Any], tuple[float | None, float | None]]


def _plain(model: Any) -> tuple[float | None, float | None]:
    return None, None


def _softcap(model: Any) -> tuple[float | None, float | None]:
    cap = getattr(model.config, "final_logit_softcapping", None)
    return None, None if cap is None else float(cap)


def _cohere(model: Any) -> tuple[float | None, float | None]:
    return float(model.logit_scale), None


def _granite(model: Any) -> tuple[float | None, float | None]:
    return 1.0 / float(model.config.logits_scaling), None


_ARCHITECTURES: dict[str, _Transform] = {
    "LlamaForCausalLM": _plain,
    "MistralForCausalLM": _plain,
    "Qwen2ForCausalLM": _plain,
    "Qwen3ForCausalLM": _plain,
    "Phi3ForCausalLM": _plain,
    "GPT2LMHeadModel": _plain,
    "Gemma2ForCausalLM": _softcap,
    "Gemma3ForCausalLM": _softcap,
    "CohereForCausalLM": _cohere,
    "GraniteForCausalLM": _granite,
}

#: The class names :func:`patch` accepts.
SUPPORTED: tuple[str, ...] = tuple(sorted(_ARCHITECTURES))


# --------------------------------------------------------------------------- the options


@dataclass(frozen=True)
class _Options:
    label_smoothing: float
    z_loss: float
    base: float | None
    fused: bool
    impl: str | None

    def loss_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"label_smoothing": self.label_smoothing, "z_loss": self.z_loss,
                              "base": self.base}
        if self.impl is not None:
            kw["impl"] = self.impl
        return kw


def _check_options(label_smoothing: Any, z_loss: Any, base: Any, fused: Any,
                   impl: Any) -> _Options:
    # validates label_smoothing, z_loss and base, raising errors that name the argument
    CrossEntropyOptions.create(label_smoothing=label_smoothing, z_loss=z_loss, base=base,
                               semantics="torch")
    if not isinstance(fused, bool):
        raise TypeError(f"fused must be True or False, got {fused!r}")
    if impl is not None and not isinstance(impl, str):
        # its value is checked by crossentropy.torch, at the first call with labels
        raise TypeError(f"impl must be None or a string, got {impl!r}")
    return _Options(float(label_smoothing), float(z_loss),
                    None if base is None else float(base), fused, impl)


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
    """
    lead = tuple(values.shape[:-1])
    given = labels if shift_labels is None else shift_labels
    assert given is not None
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
    target = given.to(values.device)
    loss: Tensor
    if head is None:
        loss = cet.cross_entropy(values, target, **kw)
    else:
        W, b = head
        loss = cet.linear_cross_entropy(values, W, target, linear_bias=b, softcap=softcap, **kw)
    # transformers upcasts the logits to float32 before its loss: so does the loss value
    return loss.float() if loss.dtype in _LOW else loss


class _LossFunction:
    """``model.loss_function`` for ``fused=False``: the logits stay, the loss is ours."""

    def __init__(self, opts: _Options) -> None:
        self.opts = opts

    def __call__(self, logits: Tensor, labels: Tensor, vocab_size: int,
                 num_items_in_batch: Any = None, ignore_index: int = -100,
                 shift_labels: Tensor | None = None, **kwargs: Any) -> Tensor:
        if logits.dtype in _LOW:
            logits = logits.float()  # as transformers: the loss in float32
        return _next_token_loss(logits, labels, shift_labels, ignore_index, num_items_in_batch,
                                self.opts, head=None, softcap=None)


# --------------------------------------------------------------------------- the head


class _CapturingLinear(torch.nn.Linear):
    """``nn.Linear`` that, while a patched call with labels runs, records its input and
    returns an empty ``(..., 0)`` tensor instead of the logits."""

    _crossentropy_slot: list[Tensor] | None = None

    def forward(self, input: Tensor) -> Tensor:
        slot = self._crossentropy_slot
        if slot is None:
            return super().forward(input)
        slot.append(input)
        return input.new_empty((*input.shape[:-1], 0))


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
    if "labels" in kwargs:
        labels = kwargs["labels"]
    elif pos is not None and len(args) > pos:
        labels = args[pos]
    else:
        labels = None
    opts: _Options = self._crossentropy_options
    if labels is None or not opts.fused:
        # generation, or fused=False (the loss is swapped through model.loss_function)
        return cls.forward(self, *args, **kwargs)
    if "labels" in kwargs:
        kwargs["labels"] = None
    else:
        assert pos is not None
        args = (*args[:pos], None, *args[pos + 1:])
    loss_kw = {k: kwargs.pop(k) for k in _LOSS_KWARGS if k in kwargs}
    return_dict = kwargs.pop("return_dict", None)
    if return_dict is None:
        return_dict = getattr(self.config, "return_dict", True)
    head = self.get_output_embeddings()
    slot: list[Tensor] = []
    head._crossentropy_slot = slot
    try:
        out = cls.forward(self, *args, return_dict=True, **kwargs)
    finally:
        head._crossentropy_slot = None
    if len(slot) != 1:
        raise RuntimeError(f"{cls.__name__}.forward called its output embedding {len(slot)} "
                           "times instead of once: this transformers version is not supported "
                           "by crossentropy.transformers")
    h, W, b = slot[0], head.weight, head.bias
    scale, softcap = _ARCHITECTURES[cls.__name__](self)
    if scale is not None:
        # s (h W^T + b) = (s h) W^T + s b: scales the (tokens x hidden) states, not the logits
        h = h * scale
        b = None if b is None else b * scale
    loss = _next_token_loss(
        h, labels, loss_kw.get("shift_labels"), loss_kw.get("ignore_index", -100),
        loss_kw.get("num_items_in_batch"), opts, head=(W, b), softcap=softcap,
    )
    fields = {k: v for k, v in out.items() if k not in ("loss", "logits")}
    out = type(out)(loss=loss, **fields)
    return out if return_dict else out.to_tuple()


# --------------------------------------------------------------------------- public


def patch(
    model: Any,
    *,
    base: float | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    fused: bool = True,
    impl: str | None = None,
) -> Any:
    r"""Compute a causal LM's training loss with :mod:`crossentropy.torch`; returns ``model``.

    .. math:: \mathcal L = \frac{1}{n} \sum_t \ell\big(\mathrm{cap}(s\, h_t W^\top + s b),
              y_{t+1}\big)

    with :math:`h_t` the last hidden states, :math:`W, b` the output embedding, the
    architecture's logit scale :math:`s` and final soft cap, :math:`\ell` the cross-entropy
    (with ``label_smoothing`` and ``z_loss``, in units of ``log(base)``), :math:`n` the
    number of counted tokens or ``num_items_in_batch``.

    Patches in place.  With ``labels`` (``fused=True``) the loss comes from
    :func:`crossentropy.torch.linear_cross_entropy`, so the (tokens x vocabulary) logits are
    never built: the output's ``logits`` is ``None`` (and absent from the tuple when
    ``return_dict=False``).  Without labels (generation, evaluation of logits) the model is
    exactly as before.  ``num_items_in_batch``, ``shift_labels`` and ``ignore_index`` are
    honoured as transformers passes them (its ``ForCausalLMLoss``).  Patching again replaces
    the options; :func:`unpatch` undoes it.

    Parameters
    ----------
    model : a transformers causal LM whose class is in :data:`SUPPORTED`.
    base : unit of the loss (None for nats, 2 for bits).
    label_smoothing : in [0, 1], torch's definition.
    z_loss : coefficient of :math:`\mathrm{lse}^2` added to each counted token's loss.
    fused : False keeps the logits (the model computes them as usual) and only replaces
        the loss function by :func:`crossentropy.torch.cross_entropy`.
    impl : passed to :mod:`crossentropy.torch` (None: its default dispatch).

    Raises
    ------
    UnsupportedModelError (a TypeError) naming the class for an unsupported model;
    TypeError / ValueError naming the option for a bad option.

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
    >>> out = cet.patch(model)(ids, labels=ids)
    >>> out.logits is None, torch.allclose(out.loss, before)
    (True, True)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a transformers causal LM (a torch.nn.Module), got "
                        f"{type(model).__name__}")
    m: Any = model  # a transformers PreTrainedModel: attributes beyond nn.Module's
    name = type(m).__name__
    if name not in _ARCHITECTURES:
        raise UnsupportedModelError(
            f"crossentropy.transformers.patch does not support {name}; supported: "
            + ", ".join(SUPPORTED))
    opts = _check_options(label_smoothing, z_loss, base, fused, impl)
    head = m.get_output_embeddings()
    if type(head) not in (torch.nn.Linear, _CapturingLinear):
        raise UnsupportedModelError(
            f"{name}.get_output_embeddings() is a {type(head).__name__}, not a torch.nn.Linear: "
            "crossentropy.transformers.patch cannot read its weight")
    unpatch(m)
    head.__class__ = _CapturingLinear
    m._crossentropy_options = opts
    # a bound method (not a closure over the model), so deep copies call their own forward
    m.forward = types.MethodType(_forward_for(m.__class__), m)
    if not fused:
        m.loss_function = _LossFunction(opts)
    return m


def unpatch(model: Any) -> Any:
    """Undo :func:`patch` (a model never patched is returned unchanged).

    >>> import crossentropy.transformers as cet
    >>> import torch
    >>> cet.unpatch(torch.nn.Linear(2, 2))
    Linear(in_features=2, out_features=2, bias=True)
    """
    if "_crossentropy_options" not in vars(model):
        return model
    del model._crossentropy_options
    vars(model).pop("forward", None)
    if isinstance(getattr(model, "_loss_function", None), _LossFunction):
        del model._loss_function
    head: Any = model.get_output_embeddings()
    if type(head) is _CapturingLinear:
        head.__class__ = torch.nn.Linear  # type: ignore[assignment]
    return model
