"""Adopting crossentropy.torch by changing one import.

A small language-model-like classifier trains for a few steps twice: once with
``torch.nn.functional`` and once with ``crossentropy.torch`` imported under the same name.
Nothing else in the training code changes; the losses agree to float32 rounding.  The
second half shows what the new import adds: bits, z-loss, soft-capping, the log-sum-exp,
and the fused linear cross-entropy that never materialises the (tokens, vocabulary) logits.

Run: python examples/torch_one_import.py
"""

from __future__ import annotations

import torch


def train(F, steps: int = 5) -> list[float]:  # F: torch.nn.functional or crossentropy.torch
    torch.manual_seed(0)
    vocab, dim, tokens = 1000, 64, 257
    embed = torch.nn.Embedding(vocab, dim)
    head = torch.nn.Linear(dim, vocab, bias=False)
    opt = torch.optim.SGD([*embed.parameters(), *head.parameters()], lr=0.5)
    data = torch.randint(0, vocab, (tokens + 1,))
    losses = []
    for _ in range(steps):
        h = embed(data[:-1])
        loss = F.cross_entropy(head(h), data[1:], label_smoothing=0.1)  # the same call
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    import torch.nn.functional as F

    before = train(F)

    import crossentropy.torch as F  # <- the one changed line

    after = train(F)
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        print(f"step {i}: torch.nn.functional {a:.7f}   crossentropy.torch {b:.7f}")
    assert max(abs(a - b) for a, b in zip(before, after, strict=True)) < 1e-4

    # what the new import adds (keyword-only options torch does not have)
    torch.manual_seed(1)
    h = torch.randn(4096, 256)
    W = (torch.randn(8000, 256) * 0.05).requires_grad_()
    y = torch.randint(0, 8000, (4096,))
    loss, lse = F.linear_cross_entropy(h, W, y, base=2, z_loss=1e-4, softcap=30.0,
                                       return_lse=True)  # no (4096, 8000) logits in memory
    loss.backward()
    print(f"fused linear cross-entropy: {loss.item():.4f} bits, mean lse {lse.mean().item():.3f}"
          f", grad_weight norm {W.grad.norm().item():.4f}")


if __name__ == "__main__":
    main()
