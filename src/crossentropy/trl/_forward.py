r"""The fused forward a patched trainer's models run: TRL's ``fused_lm_head=True`` call,
computed by :func:`crossentropy.torch.linear_token_stats`.

TRL (1.15, 1.16) gives each model it trains or refers to a forward that, called with
``labels`` and ``fused_lm_head=True``, returns a ``FusedCausalLMOutput``: per next-token
position ``t`` (labels shifted left by one, or ``shift_labels`` as given)

* ``log_probs``: :math:`\log p_\tau(y_{t+1})`, the log-probability of the label under
  :math:`p_\tau = \operatorname{softmax}(z_t / \tau)`, ``z`` the model's logits (after its
  own scale and soft cap) and :math:`\tau` the trainer's temperature;
* ``entropy``: :math:`H_t = -\sum_v p_{\tau,v} \log p_{\tau,v}`;
* ``is_top1``: whether the label is the first argmax;
* ``mean_logits``: :math:`\frac1V \sum_v z_{t,v} / \tau` (no gradient);
* ``log_sum_sq_probs``: :math:`\log \sum_v p_{\tau,v}^2` (no gradient);

each 0 (False) where the label is ``-100``; ``label_mask``; ``loss`` =
:math:`-\sum_t \log p / n` (``n`` the counted labels or ``num_items_in_batch``) plus the
MoE router loss; ``aux_loss``.  This module computes the same fields from the output
layer's inputs (:func:`crossentropy.transformers.capture_output_layer`), on the counted
positions only, exactly:

* ``log_probs``, ``entropy``, ``is_top1`` are :func:`~crossentropy.torch.linear_token_stats`
  outputs (``return_predicted_tokens``: its ties go to the lower class, as TRL's);
* :math:`\log\sum_v p_v^2 = \operatorname{lse}(2 z/\tau) - 2\operatorname{lse}(z/\tau)`:
  the log-sum-exp at temperature :math:`\tau/2` less twice the one at :math:`\tau`;
* without a soft cap the mean logit is linear in the hidden states,
  :math:`\bar z_t = (h_t \cdot \sum_v W_v + \sum_v b_v) / (V \tau)` (sums in float64);
  with one it is summed block by block (about 32 MiB of logits at a time).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor

import crossentropy.torch as cet
from crossentropy.transformers import OutputLayer, capture_output_layer

__all__ = ["FusedHead", "fused_forward"]

#: the fields of TRL's FusedCausalLMOutput this forward computes
FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")

_BLOCK_BYTES = 32 * 2**20


class FusedHead:
    """What a patched model needs: TRL's own fused forward (kept for unpatch and for calls
    without ``fused_lm_head``), the model's forward before TRL's, TRL's temperature and the
    fields it asked for."""

    __slots__ = ("autocast", "original", "outputs", "temperature", "text_config",
                 "trl_forward")

    def __init__(self, trl_forward: Any, original: Any, temperature: float,
                 outputs: tuple[str, ...], text_config: Any, autocast: Any = None) -> None:
        self.trl_forward, self.original = trl_forward, original
        self.temperature, self.outputs, self.text_config = temperature, outputs, text_config
        self.autocast = autocast  # accelerate's, when it had wrapped TRL's forward


def fused_forward(self: Any, *args: Any, fused_lm_head: bool = False, labels: Any = None,
                  shift_labels: Any = None, num_items_in_batch: Any = None,
                  **kwargs: Any) -> Any:
    """A patched model's ``forward``: TRL's own without ``fused_lm_head``, else its
    ``FusedCausalLMOutput`` from :func:`~crossentropy.torch.linear_token_stats`."""
    head: FusedHead = self.__dict__["_crossentropy_trl"]
    if not fused_lm_head:
        return head.trl_forward(*args, labels=labels, shift_labels=shift_labels,
                                num_items_in_batch=num_items_in_batch, **kwargs)
    if labels is None and shift_labels is None:
        raise ValueError(f"{type(self).__name__}: fused_lm_head=True needs labels")
    kwargs["use_cache"] = False
    kwargs["return_dict"] = True
    if getattr(head.text_config, "output_router_logits", False):
        kwargs.setdefault("output_router_logits", True)
    with head.autocast() if head.autocast is not None else contextlib.nullcontext():
        out, layer = capture_output_layer(self, lambda: head.original(*args, **kwargs))
        return _fields(head, out, layer, labels, shift_labels, num_items_in_batch)


def _fields(head: FusedHead, out: Any, layer: OutputLayer, labels: Tensor | None,
            shift_labels: Tensor | None, num_items_in_batch: Any) -> Any:
    from trl.trainer.utils import FusedCausalLMOutput

    h = layer.hidden
    if shift_labels is None:
        assert labels is not None
        h, target = h[:, :-1], labels[:, 1:]
    else:
        target = shift_labels
    if tuple(target.shape) != tuple(h.shape[:-1]):
        raise ValueError(f"the labels give positions of shape {tuple(target.shape)}, the "
                         f"model's logits {tuple(h.shape[:-1])}")
    target = target.to(h.device)
    mask = target != -100
    hm, ym = h[mask], target[mask]  # the counted positions only
    want = head.outputs
    tau = head.temperature
    st = cet.linear_token_stats(
        hm, layer.weight, ym, linear_bias=layer.bias, softcap=layer.softcap, temperature=tau,
        return_loss=False, return_logprobs=True, return_entropy="entropy" in want,
        return_lse="log_sum_sq_probs" in want,
        return_predicted_tokens="is_top1" in want)
    assert st.logprobs is not None

    def spread(x: Tensor | None) -> Tensor | None:
        # masked_scatter keeps the output connected to the model when no label counts
        return None if x is None else x.new_zeros(mask.shape).masked_scatter(mask, x)

    sq = mean = top1 = None
    if "log_sum_sq_probs" in want:
        with torch.no_grad():
            half = cet.linear_token_stats(
                hm, layer.weight, None, linear_bias=layer.bias, softcap=layer.softcap,
                temperature=tau / 2, return_loss=False, return_lse=True)
            assert half.lse is not None and st.lse is not None
            sq = half.lse - 2 * st.lse
    if "mean_logits" in want:
        with torch.no_grad():
            mean = _mean_logits(layer, hm, tau).to(st.logprobs.dtype)
    if "is_top1" in want:
        assert st.predicted_tokens is not None
        top1 = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
        top1[mask] = st.predicted_tokens == ym
    log_probs = spread(st.logprobs)
    assert log_probs is not None
    n = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    loss = -log_probs.sum() / n
    aux = out.get("aux_loss")
    if aux is not None:
        loss = loss + getattr(head.text_config, "router_aux_loss_coef", 0.0) * aux
    return FusedCausalLMOutput(
        loss=loss, log_probs=log_probs, entropy=spread(st.entropy),
        log_sum_sq_probs=spread(sq), mean_logits=spread(mean), is_top1=top1,
        label_mask=mask, aux_loss=aux)


def _mean_logits(layer: OutputLayer, h: Tensor, tau: float) -> Tensor:
    """:math:`\\frac{1}{V}\\sum_v z_v / \\tau` per row of ``h`` (see the module notes)."""
    W, b, c = layer.weight, layer.bias, layer.softcap
    V = W.shape[0]
    f64 = torch.float64
    if c is None:
        # mean_v (h . W_v + b_v) = h . (sum_v W_v) / V + (sum_v b_v) / V: no logits at all
        total = h.to(f64) @ W.sum(0, dtype=f64)
        if b is not None:
            total = total + b.sum(dtype=f64)
        return total / (V * tau)
    # with a soft cap, c tanh(z / c) is summed over vocabulary blocks of about 32 MiB
    rows = max(h.shape[0], 1)
    step = max(1, _BLOCK_BYTES // (8 * rows))
    total = torch.zeros(h.shape[0], dtype=f64, device=h.device)
    for v0 in range(0, V, step):
        z = (h @ W[v0:v0 + step].T).to(f64)
        if b is not None:
            z = z + b[v0:v0 + step].to(f64)
        total += (c * torch.tanh(z / c)).sum(1)
    return total / (V * tau)
