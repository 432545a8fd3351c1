"""Vocabulary-parallel cross-entropy under torchrun, on CPU (gloo).

    torchrun --nproc-per-node 2 examples/distributed_torchrun.py

Every rank holds the same hidden states and one slice of the output projection's rows
(uneven when the vocabulary does not divide), computes the loss over the whole vocabulary
with ``crossentropy.torch.distributed``, and compares it, and its gradients, with the
single-process loss on the gathered weight.  Each rank prints one line ending in OK.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from crossentropy.torch.distributed import cross_entropy, linear_cross_entropy, shard_range


def main() -> None:
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    N, D, V = 64, 32, 1001  # 1001 classes: uneven shards for 2 (501 + 500) or 3 ranks
    g = torch.Generator().manual_seed(0)  # the same full problem on every rank
    hidden = torch.randn(N, D, generator=g)
    weight = torch.randn(V, D, generator=g) / D**0.5
    target = torch.randint(0, V, (N,), generator=g)
    target[::7] = -100  # some ignored rows

    start, stop = shard_range(V, rank, world)
    h = hidden.clone().requires_grad_()
    w_shard = weight[start:stop].clone().requires_grad_()
    opts = {"label_smoothing": 0.1, "z_loss": 1e-4}
    loss = linear_cross_entropy(h, w_shard, target, chunk_size=16, **opts)
    loss.backward()

    # the logits version on this rank's slice of the logits gives the same number
    loss2 = cross_entropy((hidden @ weight[start:stop].t()), target, **opts)

    # single process, whole vocabulary: torch.nn.functional.cross_entropy + z-loss
    h_ref = hidden.clone().requires_grad_()
    w_ref = weight.clone().requires_grad_()
    logits = h_ref @ w_ref.t()
    counted = target != -100
    ref = F.cross_entropy(logits, target, label_smoothing=0.1, reduction="sum")
    ref = ref + 1e-4 * (torch.logsumexp(logits, -1)[counted] ** 2).sum()
    ref = ref / counted.sum()
    ref.backward()
    assert h_ref.grad is not None and w_ref.grad is not None and h.grad is not None
    assert w_shard.grad is not None

    ok = (
        torch.allclose(loss, ref, rtol=1e-5)
        and torch.allclose(loss2, ref, rtol=1e-5)
        and torch.allclose(h.grad, h_ref.grad, rtol=1e-4, atol=1e-7)
        and torch.allclose(w_shard.grad, w_ref.grad[start:stop], rtol=1e-4, atol=1e-7)
    )
    print(
        f"rank {rank}/{world}: classes [{start}, {stop}) loss {loss.item():.6f} "
        f"logits-version {loss2.item():.6f} single-process {ref.item():.6f} "
        f"{'OK' if ok else 'MISMATCH'}",
        flush=True,
    )
    dist.destroy_process_group()
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
