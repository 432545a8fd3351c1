r"""Output embeddings the fused loss can read: ``z = h W^T + b`` as one (h, W, b).

* a plain ``torch.nn.Linear`` (exactly that class: a subclass, such as a quantised linear
  layer, may compute something else): its input, weight and bias;
* a PEFT LoRA ``Linear`` around one (``target_modules=["lm_head"]``): with adapters
  ``W_j = W + s_j B_j A_j`` the layer computes

  .. math:: z = h W^\top + b + \sum_j s_j\,(\mathrm{drop}_j(h) A_j^\top) B_j^\top + s_j b_{B_j}
          = [h,\ s_1 \mathrm{drop}_1(h) A_1^\top, \dots]\,[W, B_1, \dots]^\top + b'

  so the fused loss takes the concatenated hidden states (N, D + r) and weight (V, D + r):
  exact, at the cost of one copy of the head weight per call and its gradient (computed,
  then dropped, when W is frozen).  The dropout is applied where PEFT applies it, so the
  random masks are the same.  A merged or disabled adapter is the base layer alone.  Weight
  variants (DoRA, ...) and mixed-adapter batches (``adapter_names=``) are refused;
* a PEFT ``ModulesToSaveWrapper`` (``modules_to_save=["lm_head"]``): the copy it would
  call.

Anything else raises :class:`UnsupportedModelError` naming the class.  PEFT is never
imported here: its classes are recognised only when ``peft`` is already imported.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor

from crossentropy.transformers._probe import UnsupportedModelError

__all__ = ["check_head", "head_parts"]


def _peft_class(module: str, name: str) -> Any:
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _is_lora_linear(head: Any) -> bool:
    cls = _peft_class("peft.tuners.lora.layer", "Linear")
    return cls is not None and type(head) is cls


def _is_modules_to_save(head: Any) -> bool:
    cls = _peft_class("peft.utils.other", "ModulesToSaveWrapper")
    return cls is not None and type(head) is cls


def _what(head: Any) -> str:
    cls = type(head)
    return f"{cls.__module__}.{cls.__qualname__}"


def check_head(head: Any, owner: str) -> None:
    """Raise :class:`UnsupportedModelError` unless :func:`head_parts` can read ``head``."""
    if type(head) is torch.nn.Linear:
        return
    if _is_lora_linear(head):
        check_head(head.base_layer, owner)
        for name in head.active_adapters:
            if name in getattr(head, "lora_variant", {}):
                variant = type(head.lora_variant[name]).__name__
                raise UnsupportedModelError(
                    f"{owner}: the LoRA adapter {name!r} on the output embedding is a "
                    f"{variant} (its weight is not W + s B A): the fused loss cannot take it; "
                    "leave the output embedding out of target_modules, or patch with "
                    "skip_logits=False")
            if name in head.lora_A and not (type(head.lora_A[name]) is torch.nn.Linear
                                             and type(head.lora_B[name]) is torch.nn.Linear):
                raise UnsupportedModelError(
                    f"{owner}: the LoRA adapter {name!r} on the output embedding has factors "
                    f"{_what(head.lora_A[name])} / {_what(head.lora_B[name])}, not "
                    "torch.nn.Linear")
        return
    if _is_modules_to_save(head):
        check_head(_saved_module(head), owner)
        return
    if head is None:
        raise UnsupportedModelError(f"{owner}.get_output_embeddings() is None: the model has "
                                    "no output embedding to fuse the loss with")
    raise UnsupportedModelError(
        f"{owner}.get_output_embeddings() is a {_what(head)}, not a torch.nn.Linear (nor a "
        "PEFT LoRA Linear or ModulesToSaveWrapper around one): crossentropy.transformers "
        "cannot know that it computes h W^T + b")


def _saved_module(head: Any) -> Any:
    """The module a ModulesToSaveWrapper calls (PEFT's own rule)."""
    if head.disable_adapters or not head.active_adapters or any(
            a not in head._adapters for a in head.active_adapters):
        return head.original_module
    return head.modules_to_save[head.active_adapters[0]]


def head_parts(head: Any, x: Tensor, kwargs: dict[str, Any], owner: str
               ) -> tuple[Tensor, Tensor, Tensor | None]:
    """(h, W, b) with ``head(x) == h @ W.T + b`` (see the module docstring)."""
    if type(head) is torch.nn.Linear:
        if kwargs:
            raise UnsupportedModelError(f"{owner} calls its output embedding with keywords "
                                        f"{sorted(kwargs)}")
        return x, head.weight, head.bias
    if kwargs.get("adapter_names") is not None:
        raise UnsupportedModelError(
            f"{owner}: a mixed-adapter batch (adapter_names=...) through the output "
            "embedding cannot be fused; call without adapter_names or patch with "
            "skip_logits=False")
    rest = {k: v for k, v in kwargs.items() if k != "adapter_names"}
    if _is_modules_to_save(head):
        return head_parts(_saved_module(head), x, rest, owner)
    check_head(head, owner)  # a LoRA Linear from here on (anything else raises)
    if head.disable_adapters:
        if head.merged:
            head.unmerge()  # what PEFT's own forward does with disabled adapters
        return head_parts(head.base_layer, x, rest, owner)
    h, W, b = head_parts(head.base_layer, x, rest, owner)
    if head.merged:
        return h, W, b
    hs, Ws, bs = [h], [W], [] if b is None else [b]
    for name in head.active_adapters:
        if name not in head.lora_A:
            continue
        A, B = head.lora_A[name], head.lora_B[name]
        s = head.scaling[name]
        xa = head._cast_input_dtype(x, A.weight.dtype)
        # A's product with the dropped-out input, as PEFT forms it (same dropout call)
        u = A(head.lora_dropout[name](xa)) * s
        hs.append(u.to(h.dtype))
        Ws.append(B.weight.to(W.dtype))
        if B.bias is not None:
            bs.append((B.bias * s).to(W.dtype))
    bias = None if not bs else bs[0] if len(bs) == 1 else torch.stack(bs).sum(0)
    return torch.cat(hs, dim=-1), torch.cat(Ws, dim=-1), bias
