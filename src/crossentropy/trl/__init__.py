"""``crossentropy.trl``: one line makes a TRL trainer's log-probabilities exact and lean::

    import crossentropy.trl
    trainer = crossentropy.trl.patch(GRPOTrainer(model=model, ...))   # or a DPOTrainer

The per-token log-probabilities (and the entropies, and DPO's other per-token statistics)
that TRL's fused LM head computes are computed by
:func:`crossentropy.torch.linear_token_stats` from the last hidden states and the output
embedding, at the trainer's temperature, on the completion positions only: the (tokens x
vocabulary) logits are never built.  See :func:`patch` and ``docs/trl.md``.

Importing this module imports torch (``crossentropy.torch``, ``crossentropy.transformers``),
never ``trl`` or ``transformers``.
"""

from __future__ import annotations

from crossentropy.transformers import UnsupportedModelError
from crossentropy.trl._patch import SUPPORTED_TRL, UnsupportedTrainerError, patch, unpatch

__all__ = ["SUPPORTED_TRL", "UnsupportedModelError", "UnsupportedTrainerError", "patch",
           "unpatch"]
