"""``crossentropy.transformers``: one line swaps the loss of a Hugging Face causal LM::

    import crossentropy.transformers as cet
    model = cet.patch(model)

With ``labels`` the loss is computed by :func:`crossentropy.torch.linear_cross_entropy`
from the last hidden states and the output embedding: the (tokens x vocabulary) logits
are never built (the output's ``logits`` is then ``None``).  Without labels the model is
unchanged.  See :func:`patch` and ``docs/transformers.md``.

Importing this module imports torch (and ``crossentropy.torch``), never ``transformers``.
"""

from __future__ import annotations

from crossentropy.transformers._patch import SUPPORTED, UnsupportedModelError, patch, unpatch

__all__ = ["SUPPORTED", "UnsupportedModelError", "patch", "unpatch"]
