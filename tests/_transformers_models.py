"""Tiny random Hugging Face models and an independent float64 loss, for tests/test_transformers*.

Every family is built from a tiny config (no download), eager attention, every dropout 0,
float64 unless asked otherwise, with every parameter (biases, norm weights) perturbed so that
each one matters.  The reference loss is transformers' ``ForCausalLMLoss`` written out here
with torch's own ``torch.nn.functional.cross_entropy`` on the unpatched model's logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch

tf = pytest.importorskip("transformers")

V = 48  # vocabulary
B, T = 2, 7  # batch, sequence length

_COMMON = {"vocab_size": V, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 32,
           "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_SPECIAL = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_GEMMA = {"head_dim": 4, "sliding_window": 4, "final_logit_softcapping": 2.0,
          "query_pre_attn_scalar": 4}
# MoE experts in plain torch (the grouped matmul takes no float64)
_MOE = {"experts_implementation": "eager"}


def _qwen2_vl() -> Any:
    text = dict(_COMMON, rope_scaling={"type": "mrope", "mrope_section": [1, 1]})
    vision = {"depth": 1, "embed_dim": 16, "hidden_size": 16, "num_heads": 2, "mlp_ratio": 1,
              "patch_size": 2, "spatial_merge_size": 1, "temporal_patch_size": 1}
    ids = {"image_token_id": V - 1, "video_token_id": V - 2, "vision_start_token_id": V - 3}
    # transformers 4.x: the text settings at the top level; 5.x: in text_config
    cfg = (tf.Qwen2VLConfig(text_config=text, vision_config=vision, **ids)
           if hasattr(tf, "Qwen2VLTextConfig")
           else tf.Qwen2VLConfig(**text, vision_config=vision, **ids))
    return tf.Qwen2VLForConditionalGeneration(cfg)


def _llava() -> Any:
    vision = tf.CLIPVisionConfig(hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                 num_attention_heads=2, image_size=8, patch_size=4)
    return tf.LlavaForConditionalGeneration(tf.LlavaConfig(
        text_config=tf.LlamaConfig(**_COMMON), vision_config=vision, image_token_index=V - 1))


def _gemma3_vlm() -> Any:
    vision = {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 8, "patch_size": 4}
    return tf.Gemma3ForConditionalGeneration(tf.Gemma3Config(
        text_config=dict(_COMMON, **_GEMMA), vision_config=vision, mm_tokens_per_image=4,
        image_token_index=V - 1, boi_token_index=V - 2, eoi_token_index=V - 3))


def _plain(cls: str, cfg: str, **kw: Any) -> Callable[[], Any]:
    return lambda: getattr(tf, cls)(getattr(tf, cfg)(**kw))


#: family -> (model class name, factory).  What each tests beyond the plain Llama-like path
#: is noted.
FAMILIES: dict[str, tuple[str, Callable[[], Any]]] = {
    "llama": ("LlamaForCausalLM", _plain("LlamaForCausalLM", "LlamaConfig", **_COMMON)),
    "mistral": ("MistralForCausalLM", _plain("MistralForCausalLM", "MistralConfig",
                                             **_COMMON, sliding_window=4)),
    "qwen2": ("Qwen2ForCausalLM", _plain("Qwen2ForCausalLM", "Qwen2Config", **_COMMON)),
    "qwen3": ("Qwen3ForCausalLM", _plain("Qwen3ForCausalLM", "Qwen3Config", **_COMMON,
                                         head_dim=4)),
    # final soft cap c tanh(z / c), small so that it matters
    "gemma2": ("Gemma2ForCausalLM", _plain("Gemma2ForCausalLM", "Gemma2Config", **_COMMON,
                                           **_GEMMA)),
    "gemma3": ("Gemma3ForCausalLM", _plain("Gemma3ForCausalLM", "Gemma3TextConfig",
                                           **_COMMON, **_GEMMA)),
    "gemma": ("GemmaForCausalLM", _plain("GemmaForCausalLM", "GemmaConfig", **_COMMON,
                                         head_dim=4)),
    "phi3": ("Phi3ForCausalLM", _plain("Phi3ForCausalLM", "Phi3Config", **_COMMON)),
    # a biased output embedding
    "phi": ("PhiForCausalLM", _plain(
        "PhiForCausalLM", "PhiConfig", vocab_size=V, hidden_size=16, intermediate_size=24,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, partial_rotary_factor=0.5,
        **_SPECIAL)),
    "gpt2": ("GPT2LMHeadModel", _plain(
        "GPT2LMHeadModel", "GPT2Config", vocab_size=V, n_positions=32, n_embd=16, n_layer=2,
        n_head=4, bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0)),
    # logits * logit_scale, logits / logits_scaling
    "cohere": ("CohereForCausalLM", _plain("CohereForCausalLM", "CohereConfig", **_COMMON,
                                           logit_scale=0.5)),
    "granite": ("GraniteForCausalLM", _plain("GraniteForCausalLM", "GraniteConfig", **_COMMON,
                                             logits_scaling=2.5)),
    "opt": ("OPTForCausalLM", _plain(
        "OPTForCausalLM", "OPTConfig", vocab_size=V, hidden_size=16, num_hidden_layers=2,
        ffn_dim=24, num_attention_heads=4, max_position_embeddings=32, word_embed_proj_dim=16,
        dropout=0.0, attention_dropout=0.0, layerdrop=0.0, **_SPECIAL)),
    # the output embedding is called embed_out
    "gpt_neox": ("GPTNeoXForCausalLM", _plain(
        "GPTNeoXForCausalLM", "GPTNeoXConfig", vocab_size=V, hidden_size=16,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=24,
        max_position_embeddings=32, rotary_pct=0.5, hidden_dropout=0.0, attention_dropout=0.0,
        bos_token_id=1, eos_token_id=2)),
    "qwen3_moe": ("Qwen3MoeForCausalLM", _plain(
        "Qwen3MoeForCausalLM", "Qwen3MoeConfig", **_COMMON, **_MOE, head_dim=4, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=8)),
    "mixtral": ("MixtralForCausalLM", _plain(
        "MixtralForCausalLM", "MixtralConfig", **_COMMON, **_MOE, num_local_experts=4,
        num_experts_per_tok=2)),
    "falcon": ("FalconForCausalLM", _plain(
        "FalconForCausalLM", "FalconConfig", vocab_size=V, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=1,
        eos_token_id=2)),
    "stablelm": ("StableLmForCausalLM", _plain("StableLmForCausalLM", "StableLmConfig",
                                               **_COMMON, partial_rotary_factor=0.5)),
    "olmo2": ("Olmo2ForCausalLM", _plain("Olmo2ForCausalLM", "Olmo2Config", **_COMMON)),
    "smollm3": ("SmolLM3ForCausalLM", _plain("SmolLM3ForCausalLM", "SmolLM3Config",
                                             **_COMMON)),
    # vision-language models, called on text (their text backbone's loss)
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", _qwen2_vl),
    "llava": ("LlavaForConditionalGeneration", _llava),
    "gemma3_vlm": ("Gemma3ForConditionalGeneration", _gemma3_vlm),  # soft cap in text_config
}


def make(family: str, seed: int = 0, dtype: torch.dtype = torch.float64) -> Any:
    """The family's tiny model (the test is skipped where this transformers lacks it)."""
    name, factory = FAMILIES[family]
    if not hasattr(tf, name):
        pytest.skip(f"transformers {tf.__version__} has no {name}")
    torch.manual_seed(seed)
    model = factory()
    model.config._attn_implementation = "eager"
    for sub in model.modules():  # the text/vision sub-configs of a VLM too
        cfg = getattr(sub, "config", None)
        if cfg is not None:
            cfg._attn_implementation = "eager"
    model = model.to(dtype)
    with torch.no_grad():  # random biases/norm weights too, so every parameter matters
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def batch(seed: int = 1, ignored: bool = True) -> tuple[Any, Any]:
    """(ids, labels); ids avoid the last 4 tokens (a VLM's image/video markers)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V - 4, (B, T), generator=g)
    labels = ids.clone()
    if ignored:
        labels[0, 2] = labels[1, 4] = labels[1, 5] = -100
    return ids, labels


def reference_loss(logits: Any, labels: Any, num_items: Any = None, *, shift_labels: Any = None,
                   label_smoothing: float = 0.0, z_loss: float = 0.0, base: float | None = None,
                   ignore_index: int = -100) -> Any:
    """transformers' ForCausalLMLoss in float64, written with torch's cross_entropy."""
    if shift_labels is None:
        # position t predicts label t+1; the last position predicts nothing
        shift_labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], ignore_index)], 1)
    z, y = logits.reshape(-1, logits.shape[-1]), shift_labels.reshape(-1)
    rows = torch.nn.functional.cross_entropy(z, y, ignore_index=ignore_index, reduction="none",
                                             label_smoothing=label_smoothing)
    counted = y != ignore_index
    rows = rows + z_loss * torch.logsumexp(z, -1) ** 2 * counted
    total = rows.sum() / (math.log(base) if base is not None else 1.0)
    return total / (counted.sum() if num_items is None else num_items)


def grads(model: Any) -> dict[str, Any]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_grads_close(got: dict[str, Any], want: dict[str, Any], rtol: float = 1e-9) -> None:
    """Each tensor to rtol of its largest entry, or of the largest entry of all (a gradient
    that is 0 in exact arithmetic, such as a key projection's bias, is rounding noise)."""
    assert got.keys() == want.keys()
    top = max(w.abs().max().item() for w in want.values())
    for n in want:
        scale = max(want[n].abs().max().item(), 1e-6 * top)
        torch.testing.assert_close(got[n], want[n], rtol=rtol, atol=rtol * scale, msg=n)


def reference_step(model: Any, ids: Any, labels: Any, num_items: Any = None,
                   **kw: Any) -> tuple[Any, dict[str, Any]]:
    """The unpatched model's logits (labels=None) through :func:`reference_loss`."""
    model.zero_grad()
    loss = reference_loss(model(ids).logits, labels, num_items, **kw)
    loss.backward()
    return loss.detach(), grads(model)


def patched_step(model: Any, ids: Any, labels: Any, **kw: Any) -> tuple[Any, Any]:
    model.zero_grad()
    out = model(ids, labels=labels, **kw)
    out.loss.backward()
    return out, grads(model)
