"""``crossentropy.transformers``: one line swaps the loss of a Hugging Face causal LM::

    import crossentropy.transformers as cet
    model = cet.patch(model)          # or cet.patch(peft_model), cet.patch(trainer)

In training with ``labels`` the loss is computed by
:func:`crossentropy.torch.linear_cross_entropy` from the last hidden states and the output
embedding: the (tokens x vocabulary) logits are never built (the output's ``logits`` is then
``None``).  In evaluation the model computes its logits and the loss comes from
:func:`crossentropy.torch.cross_entropy` of them.  Without labels the model is unchanged.
Which models: any causal LM whose output embedding is a ``torch.nn.Linear`` (or a PEFT LoRA
layer around one) and whose loss is transformers' ``loss_function``; what the model does to
its logits before the loss (a scale, a soft cap) is recorded as it runs.  See :func:`patch`
and ``docs/transformers.md``.

:func:`capture_output_layer` runs any forward without building its logits and returns the
inputs of the output layer (hidden states, weight, bias, soft cap) that give them exactly:
what :mod:`crossentropy.trl` computes TRL's per-token log-probabilities from.

Importing this module imports torch (and ``crossentropy.torch``), never ``transformers`` or
``peft``.
"""

from __future__ import annotations

from crossentropy.transformers._capture import (
    OutputLayer,
    capture_output_layer,
    check_output_layer,
)
from crossentropy.transformers._patch import (
    SUPPORTED,
    UnfusedLossWarning,
    UnsupportedModelError,
    patch,
    unpatch,
)

__all__ = ["SUPPORTED", "OutputLayer", "UnfusedLossWarning", "UnsupportedModelError",
           "capture_output_layer", "check_output_layer", "patch", "unpatch"]
