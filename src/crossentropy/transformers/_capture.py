r"""The inputs of a causal LM's output layer, read from one call of its forward.

:func:`capture_output_layer` runs a forward (without labels) while the output embedding
returns a :class:`~._probe.Probe` instead of its logits, so the (tokens x vocabulary) logits
are never built; what the model does to them on the way out (a scale, a soft cap, a cast, a
slice of the leading classes) is recorded as it runs.  It returns the output without its
``logits`` and the ``(hidden, weight, bias, softcap)`` for which

.. math:: \text{logits} = \phi\big(h' W'^\top + b'\big), \qquad
          \phi(z) = c \tanh(z / c) \text{ (or } z \text{ when } c \text{ is None)}

exactly (the scale folded into ``h'`` and ``b'``, a PEFT LoRA adapter on the output
embedding into the concatenated ``h'`` and ``W'``: see :mod:`._heads`): the arguments of
:func:`crossentropy.torch.linear_token_stats` (``softcap=c``).  The output embedding is
left as it was found.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from torch import Tensor

from crossentropy.transformers._heads import check_head
from crossentropy.transformers._patch import _install_head, _peft_inner
from crossentropy.transformers._probe import Probe, ProbeRefused, UnsupportedModelError

__all__ = ["OutputLayer", "capture_output_layer", "check_output_layer"]


class OutputLayer(NamedTuple):
    """The model's logits are ``softcap_c(hidden @ weight.T + bias)`` (``softcap`` None: no
    cap): ``hidden`` ``[..., D]`` with the logits' leading shape, ``weight`` ``[V, D]``."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    softcap: float | None


_ABSENT = object()


def check_output_layer(model: Any) -> None:
    """Raise :class:`UnsupportedModelError` naming why :func:`capture_output_layer` cannot
    read ``model``'s output embedding (a transformers causal LM or a PEFT model around one).

    >>> import torch
    >>> import crossentropy.transformers as cet
    >>> cet.check_output_layer(torch.nn.Linear(2, 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    crossentropy.transformers._probe.UnsupportedModelError: Linear has no ... causal LM
    """
    m: Any = _peft_inner(model)
    owner = type(m).__name__
    if not callable(getattr(m, "get_output_embeddings", None)):
        raise UnsupportedModelError(f"{owner} has no get_output_embeddings(): "
                                    "capture_output_layer takes a transformers causal LM")
    check_head(m.get_output_embeddings(), owner)


def capture_output_layer(model: Any, run: Callable[[], Any]) -> tuple[Any, OutputLayer]:
    """Call ``run()`` (a forward of ``model`` without labels, returning a transformers
    ``ModelOutput``) without building the logits; return its output, ``logits`` removed, and
    the :class:`OutputLayer` that gives them.

    ``model`` is a transformers causal LM or a PEFT model around one (its output embedding
    a ``torch.nn.Linear``, or a LoRA / modules-to-save wrapper around one).  Raises
    :class:`UnsupportedModelError` naming why when the output embedding or an operation on
    the logits cannot be read exactly, or when ``run`` returns no logits of that layer.

    Examples
    --------
    >>> import torch, transformers
    >>> import crossentropy.transformers as cet
    >>> _ = torch.manual_seed(0)
    >>> config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    >>> model = transformers.LlamaForCausalLM(config)
    >>> ids = torch.randint(0, 32, (2, 8))
    >>> out, layer = cet.capture_output_layer(model, lambda: model(ids))
    >>> out.logits is None, layer.hidden.shape, layer.weight.shape, layer.softcap
    (True, torch.Size([2, 8, 16]), torch.Size([32, 16]), None)
    >>> torch.allclose(layer.hidden @ layer.weight.T, model(ids).logits)
    True
    """
    check_output_layer(model)
    m: Any = _peft_inner(model)
    owner = type(m).__name__
    head = m.get_output_embeddings()
    saved = head.__dict__.get("forward", _ABSENT)
    _install_head(head, owner)
    head._crossentropy_capture = ([], owner)
    try:
        out = run()
    except ProbeRefused as exc:
        raise UnsupportedModelError(str(exc)) from None
    finally:
        head.__dict__.pop("_crossentropy_capture", None)
        if saved is _ABSENT:
            head.__dict__.pop("forward", None)
        else:
            head.__dict__["forward"] = saved
    logits = out.get("logits") if hasattr(out, "get") else None
    if not isinstance(logits, Probe):
        raise UnsupportedModelError(
            f"{owner}: the forward did not return the logits of its output embedding, so "
            "their inputs cannot be read (call it without labels)")
    h, W, b, c = logits._ce_state.linear_inputs()
    fields = {k: v for k, v in out.items() if k != "logits"}
    return type(out)(**fields), OutputLayer(h, W, b, c)
