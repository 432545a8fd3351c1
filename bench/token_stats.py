"""Memory and time of the output layer's per-token statistics, forward + backward.

A reinforcement-learning step needs, from hidden states h [N, D] and the output embedding
W [V, D], each token's log-probability and the entropy, and their gradients.  Variants:

* ``stats``: ``crossentropy.torch.linear_token_stats(..., return_logprobs=True,
  return_entropy=True)`` (blocks of logits; backward by formula);
* ``reference``: the pure-torch reference chunk by chunk under activation checkpointing
  (what ``linear_cross_entropy(return_logprobs=..., return_entropy=...)`` ran before the
  engine; still the path under torch.func);
* ``dense``: the plain computation a trainer writes: ``z = h @ W.T``, ``log_softmax``,
  gather, entropy from the probabilities (float32, as the logits).

Each run is a fresh process: inputs allocated, the resident-set high-water mark reset
(``/proc/self/clear_refs``), one forward + backward of ``sum(logprobs) + sum(entropy)``;
the figure is the peak resident memory above the level before the step (Linux only), and
the wall time of the step (after one warm-up step at a smaller size).  Variants run in
alternation (A B C A B C ...); the table gives medians with the min-max spread, and the
time ratio stats / dense per round.

    python bench/token_stats.py --n 2048 --d 256 --v 128256 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

CHILD = r"""
import json, os, sys, time
import torch
import crossentropy.torch as cet
from crossentropy.torch import functional as fn
from crossentropy._options import CrossEntropyOptions

variant, N, D, V = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(0)

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

def step(h, W, y):
    if variant == "stats":
        o = cet.linear_token_stats(h, W, y, return_loss=False, return_logprobs=True,
                                   return_entropy=True)
        lp, ent = o.logprobs, o.entropy
    elif variant == "reference":
        opts = CrossEntropyOptions.create(semantics="torch", reduction="none")
        plan = fn.resolve_plan(None, h.shape[0], W.shape[0], h.dtype)
        _, _, lp, ent = fn._linear_rl(h, W, None, y, None, opts, plan, 1.0, None, True, True)
    else:
        z = h @ W.T
        logp = torch.log_softmax(z, dim=-1)
        lp = logp.gather(-1, y[:, None])[:, 0]
        ent = -(logp.exp() * logp).sum(-1)
    (lp.sum() + ent.sum()).backward()

def inputs(n, v):
    h = torch.randn(n, D, requires_grad=True)
    W = (torch.randn(v, D) / D**0.5).requires_grad_()
    y = torch.randint(0, v, (n,))
    return h, W, y

step(*inputs(64, 1024))  # warm-up: imports, kernels, thread pools
h, W, y = inputs(N, V)
import gc; gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak resident set (VmHWM) to the current one
before = status("VmRSS:")
t0 = time.perf_counter()
step(h, W, y)
t = time.perf_counter() - t0
print(json.dumps({"peak": status("VmHWM:") - before, "time": t}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--v", type=int, default=128256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="stats,reference,dense")
    a = ap.parse_args()
    variants = a.variants.split(",")
    res: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for r in range(a.rounds):
        for v in variants:
            out = subprocess.run([sys.executable, "-c", CHILD, v, str(a.n), str(a.d), str(a.v)],
                                 capture_output=True, text=True, env=env, check=True)
            rec = json.loads(out.stdout.strip().splitlines()[-1])
            res[v].append(rec)
            print(f"round {r + 1} {v:10s} extra peak {rec['peak'] / 2**30:6.3f} GiB  "
                  f"time {rec['time']:7.3f} s", flush=True)
    logits = a.n * a.v * 4
    print(f"\nN={a.n} D={a.d} V={a.v} float32 (one float32 logits array: "
          f"{logits / 2**30:.3f} GiB); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"{'variant':10s} {'extra peak GiB (min-max)':28s} {'time s (min-max)':22s}")
    for v in variants:
        p = [x["peak"] / 2**30 for x in res[v]]
        t = [x["time"] for x in res[v]]
        print(f"{v:10s} {statistics.median(p):6.3f} ({min(p):.3f}-{max(p):.3f})"
              f"{'':10s} {statistics.median(t):7.3f} ({min(t):.3f}-{max(t):.3f})")
    if "stats" in res and "dense" in res:
        rt = [s["time"] / d["time"] for s, d in zip(res["stats"], res["dense"], strict=True)]
        rp = [s["peak"] / d["peak"] for s, d in zip(res["stats"], res["dense"], strict=True)]
        print(f"stats / dense per round: time {statistics.median(rt):.2f} "
              f"({min(rt):.2f}-{max(rt):.2f}), extra peak {statistics.median(rp):.3f} "
              f"({min(rp):.3f}-{max(rp):.3f})")


if __name__ == "__main__":
    main()
