"""The token statistics' accuracy per path and output, against mpmath.

Logits that are exact in every dtype used (integers, and hidden states and output
embeddings of small integers, whose products float32 forms exactly), so the error measured
is the arithmetic's alone: rows of random integer logits in [-8, 8] and confident rows (the
target 25-60 above the rest), V = 83 classes, 24 rows.  For each path the largest error
over the rows of

* ``lse``, ``logprobs``, ``entropy`` (and the top-3 log-probabilities where the path has
  them), relative, in units of the output dtype's eps (2^-52 or 2^-23);
* the gradient of ``sum_t u_t log p_t + v_t H_t`` (random ``u``, ``v``) with respect to
  the logits (logits paths): the largest absolute error over the row's largest entry, in
  the same unit.

Paths: the block engine (``impl="torch"``) from logits and from hidden states in float64
and float32, vocabulary slices of 19 classes; the Triton kernels (``impl="triton"``) from
logits and from hidden states, float32, in Triton's interpreter on the CPU (on a GPU with
``--device cuda``).  mpmath at 60 digits is the reference.

    python bench/token_stats_accuracy.py [--device cuda]

Prints one table (Markdown).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

N, V, D = 24, 83, 9


def _inputs(torch: Any) -> tuple[Any, Any, Any, Any]:
    """Hidden states h, embedding W of small integers, their logits z = h W^T (exact in
    float32), targets y.  The first half of the rows are confident: row t has a column of
    its own, h[t, j_t] = lift_t (25-60) and W[y_t, j_t] = 1, so z[t, y_t] gains lift_t."""
    g = torch.Generator().manual_seed(5)
    k = N // 2
    h = torch.randint(-2, 3, (N, D), generator=g).double()
    W = torch.randint(-2, 3, (V, D), generator=g).double()
    y = torch.randint(0, V, (N,), generator=g)
    hx = torch.zeros(N, k, dtype=torch.float64)
    Wx = torch.zeros(V, k, dtype=torch.float64)
    for t, lift in enumerate(torch.linspace(25.0, 60.0, k).round().tolist()):
        hx[t, t] = lift
        Wx[int(y[t]), t] = 1.0
    h, W = torch.cat([h, hx], dim=1), torch.cat([W, Wx], dim=1)
    return h, W, h @ W.T, y


def _truth(z: Any, y: Any) -> dict[str, list[Any]]:
    import mpmath

    out: dict[str, list[Any]] = {"lse": [], "logprobs": [], "entropy": [], "top": [],
                                 "p": []}
    with mpmath.workdps(60):
        for zi, yi in zip(z.tolist(), y.tolist(), strict=True):
            row = [mpmath.mpf(v) for v in zi]
            lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in row))
            lp = [v - lse for v in row]
            p = [mpmath.exp(v) for v in lp]
            out["lse"].append(lse)
            out["logprobs"].append(lp[yi])
            out["entropy"].append(-mpmath.fsum(pi * li for pi, li in zip(p, lp, strict=True)))
            out["top"].append(sorted(lp, reverse=True)[:3])
            out["p"].append((p, lp))
    return out


def _grad_truth(truth: dict[str, list[Any]], y: Any, u: Any, v: Any) -> list[list[float]]:
    """d/dz_c (u log p_y + v H) = u ([c = y] - p_c) - v p_c (log p_c + H), per row."""
    import mpmath

    rows = []
    with mpmath.workdps(60):
        for t, (p, lp) in enumerate(truth["p"]):
            H = truth["entropy"][t]
            ut, vt, yt = mpmath.mpf(float(u[t])), mpmath.mpf(float(v[t])), int(y[t])
            rows.append([float(ut * ((1 if c == yt else 0) - p[c]) - vt * p[c] * (lp[c] + H))
                         for c in range(len(p))])
    return rows


def _rel_ulps(got: Any, want: list[Any], eps: float) -> float:
    worst = 0.0
    for a, b in zip(got.tolist(), want, strict=True):
        b = float(b)
        err = abs(a - b) / abs(b) if b != 0.0 else abs(a)
        worst = max(worst, err / eps)
    return worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import torch

    import crossentropy.torch as cet

    h, W, z, y = _inputs(torch)
    truth = _truth(z, y)
    g = torch.Generator().manual_seed(2)
    u = torch.rand(N, generator=g, dtype=torch.float64) + 0.5
    v = torch.rand(N, generator=g, dtype=torch.float64) - 0.5
    gtruth = torch.tensor(_grad_truth(truth, y, u, v), dtype=torch.float64)
    dev = args.device
    plan = cet.ChunkPlan(rows=7, vocab=19)
    paths: list[tuple[str, str, Any, str]] = [
        ("block engine, logits", "torch", torch.float64, "logits"),
        ("block engine, logits", "torch", torch.float32, "logits"),
        ("block engine, hidden states", "torch", torch.float64, "linear"),
        ("block engine, hidden states", "torch", torch.float32, "linear"),
        ("Triton kernels, logits", "triton", torch.float32, "logits"),
        ("Triton kernels, hidden states", "triton", torch.float32, "linear"),
    ]
    print(f"N = {N}, V = {V}; worst error in units of the output dtype's eps "
          f"(relative; gradient: over the row's largest entry); mpmath 60 digits; "
          f"Triton: {'interpreter (CPU)' if dev == 'cpu' else torch.cuda.get_device_name()}")
    print()
    print("| path | dtype | lse | logprobs | entropy | top-3 logprobs | gradient |")
    print("|---|---|---|---|---|---|---|")
    for name, impl, dt, kind in paths:
        eps = float(torch.finfo(dt).eps)
        top = 3 if impl == "torch" else 0
        kw: dict[str, Any] = {"return_lse": True, "return_logprobs": True,
                              "return_entropy": True, "top_k": top, "reduction": "none",
                              "impl": impl, "chunks": plan if impl == "torch" else None}
        yd = y.to(dev)
        x = z.detach().to(dt, copy=True).to(dev).requires_grad_()
        if kind == "logits":
            out = cet.token_stats(x, yd, **kw)
        else:
            out = cet.linear_token_stats(h.to(dt).to(dev), W.to(dt).to(dev), yd, **kw)
        cells = []
        for field in ("lse", "logprobs", "entropy"):
            got = getattr(out, field).detach().cpu().double()
            cells.append(f"{_rel_ulps(got, truth[field], eps):.2f}")
        if top:
            tv = out.top_k_logprobs.detach().cpu().double()
            worst = max(_rel_ulps(tv[:, j], [r[j] for r in truth["top"]], eps)
                        for j in range(top))
            cells.append(f"{worst:.2f}")
        else:
            cells.append("(not on this path)")
        if kind == "logits":
            obj = ((out.logprobs.double().cpu() * u).sum()
                   + (out.entropy.double().cpu() * v).sum())
            obj.backward()
            gz = x.grad.detach().cpu().double()
            scale = gtruth.abs().amax(dim=1, keepdim=True)
            cells.append(f"{float(((gz - gtruth).abs() / scale).max()) / eps:.2f}")
        else:
            cells.append("(hidden states: see logits)")
        print(f"| {name} | {str(dt).replace('torch.', '')} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
