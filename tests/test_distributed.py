"""Vocabulary-parallel cross-entropy (crossentropy.torch.distributed) on real process groups.

One group of 3 CPU processes (gloo on 127.0.0.1, a free port, a hard time limit) runs every
case on a 1-rank subgroup (rank 0), a 2-rank subgroup (ranks 0 and 1) and the 3-rank world,
with uneven shard layouts (one with an empty shard).  The workers only *compute*: each rank
saves its loss and the gradient of its shard (accuracy cases) or its measurements and error
messages (mismatch and DDP/FSDP cases); the parent gathers the shards and asserts, one test
per part, so that a failure names its case.  A hang fails the fixture after the time limit.

Accuracy is measured in ulp against mpmath at 50 digits (:func:`_mp_rows`, written from the
formula of the loss, independently of the code under test): per-row loss float64 <= 4 ulp,
float32 <= 1 ulp; gradients likewise, plus the rounding that the subtraction
``p_c W - a_c`` cannot avoid where the two nearly cancel (label smoothing).  The NumPy core
``crossentropy.cross_entropy`` and ``torch.nn.functional.cross_entropy`` in float64 are
checked on the options they share (the latter for torch's semantics: a mean over zero
counted rows is NaN).  The data hold confident rows (losses below 1e-15), ties across
shards, +-inf logits, rows of equal logits, a subnormal class weight and an all-ignored
batch.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import mpmath
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import crossentropy as ce
from _reference import ref_from_mp, ulp_error
from crossentropy.torch import distributed as vp

ROOT = Path(__file__).resolve().parents[1]
WORLD = 3
TIME_LIMIT = 120.0  # seconds for the whole spawned group (it needs about 15 on 2 cores)
V = 11
ROWS = (3, 4)  # N = 12 rows in a 2-d leading shape
N = 12
D = 5
DPS = 50

# Shard layouts (uneven on purpose; one with an empty shard) per group size.
LAYOUTS = {1: [[11]], 2: [[7, 4]], 3: [[4, 4, 3], [5, 0, 6]]}

OPTION_SETS: dict[str, dict[str, Any]] = {
    "plain": {},
    "weight_ignore": {"weight": "subnormal", "ignore": True},
    "smooth_weight_ignore": {"weight": True, "ignore": True, "label_smoothing": 0.1},
    "z_softcap_bits": {"z_loss": 1e-3, "softcap": 8.0, "base": 2},
    "everything": {"weight": True, "ignore": True, "ignore_index": 2, "label_smoothing": 0.1,
                   "z_loss": 0.01, "softcap": 30.0, "base": 2},
    "normalizer": {"weight": True, "label_smoothing": 0.25, "normalizer": 7.0},
    "all_ignored": {"ignore": "all", "weight": True},
}
REDUCTIONS = ("none", "mean", "sum")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
COLLECTIVES = ("all_reduce", "all_gather")
ULP_BOUND = {"float64": 4.0, "float32": 1.0}


# --------------------------------------------------------------------------- data


def _data(seed: int, dtype: torch.dtype, opts: dict[str, Any]) -> dict[str, Any]:
    """Random rows (for the mismatch and DDP/FSDP cases): the same on every rank."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, V, generator=g, dtype=torch.float64) * 3.0).to(dtype)
    y = torch.cat([torch.randperm(V, generator=g), torch.randint(0, V, (N - V,), generator=g)])
    y = y[torch.randperm(N, generator=g)]
    return {"x": x.reshape(*ROWS, V), "y": y.reshape(ROWS)}


def _ignore_index(opts: dict[str, Any]) -> int:
    return int(opts.get("ignore_index", -100))


def _case_data(seed: int, dtype: torch.dtype, opts: dict[str, Any]) -> dict[str, Any]:
    """One accuracy problem: random rows plus edge rows, exactly representable in `dtype`.

    Without label smoothing (and z-loss on uncapped logits) the rows hold +-inf logits too
    (with smoothing every such row costs +inf, which would hide the others in a mean).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, V, generator=g, dtype=torch.float64) * 3.0
    y = torch.randint(0, V, (N,), generator=g)
    x[0] = torch.randn(V, generator=g, dtype=torch.float64)  # confident, target in shard 0
    x[0, 1], y[0] = 40.0, 1  # loss ~ 10 e^-40 = 4e-17
    x[1] = torch.randn(V, generator=g, dtype=torch.float64) - 1000.0  # confident, far below 0
    x[1, 10], y[1] = -963.5, 10  # in the last shard: loss ~ 1e-16
    x[2, 0] = x[2, 10] = 9.0  # a tie across the first and the last shard
    y[2] = 10
    x[3] = 1.5  # every logit equal: loss log 11
    y[3] = 4
    x[4, 3], y[4] = 36.0, 3  # confident again, loss ~ 1e-15, in the middle shard
    specials = not opts.get("label_smoothing") and not (opts.get("z_loss")
                                                        and not opts.get("softcap"))
    if specials:
        x[5, 6], y[5] = math.inf, 6  # the target holds all the mass: loss 0
        x[6, 2] = x[6, 9] = math.inf  # two +inf in different shards share the mass: log 2
        y[6] = 9
        x[7, 4] = x[7, 7] = -math.inf  # -inf logits get probability 0
        y[7] = 1
    ignore = _ignore_index(opts)
    if opts.get("ignore") == "all":
        y[:] = ignore
    elif opts.get("ignore"):
        y[8] = y[10] = ignore
    w = None
    if opts.get("weight"):
        w = torch.rand(V, generator=g, dtype=torch.float64) + 0.25
        if opts["weight"] == "subnormal":
            w[3] = 1e-310  # the target of the confident row 4 (0 in float32)
        w = w.to(dtype).to(torch.float64)
    gout = (torch.rand(N, generator=g, dtype=torch.float64) + 0.5).to(dtype).to(torch.float64)
    return {"x": x.to(dtype), "y": y, "w": w, "gout": gout}


def _kwargs(opts: dict[str, Any], w: torch.Tensor | None, dtype: torch.dtype,
            reduction: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"ignore_index": _ignore_index(opts), "reduction": reduction}
    for k in ("label_smoothing", "z_loss", "softcap", "base"):
        if k in opts:
            kw[k] = opts[k]
    if "normalizer" in opts and reduction != "none":
        kw["normalizer"] = opts["normalizer"]
    if w is not None:
        kw["weight"] = w.to(dtype)
    return kw


# --------------------------------------------------------------------------- mpmath


def _mp_rows(x: np.ndarray, y: np.ndarray, w: np.ndarray | None, opts: dict[str, Any]
             ) -> dict[str, list[Any]]:
    """Per-row loss (nats), gradient d loss_i / d x_i, the magnitude |p_c W| + |a_c| of the
    gradient's two terms, the row weight omega_i and the soft cap's error allowance
    ('sens', 'conds'), in mpmath from the definition:

    z = c tanh(x / c) (or x), lse = log sum_c e^{z_c}, a_c = (1 - eps) w_y [c = y] + eps w_c / V,
    loss = sum_{a_c != 0} a_c (lse - z_c) + zeta lse^2, d loss / d x_c = (p_c W - a_c) z'(x_c)
    with p = softmax(z), W = sum_c a_c + 2 zeta lse and z' = sech^2(x / c).  +inf logits
    share the mass equally (lse = +inf, -log p = log k on them, +inf elsewhere); a row of
    all -inf is NaN; rows whose target is ignore_index are 0.
    """
    eps = mpmath.mpf(opts.get("label_smoothing", 0.0))
    zeta = mpmath.mpf(opts.get("z_loss", 0.0))
    cap = opts.get("softcap")
    ignore = _ignore_index(opts)
    losses, grads, mags, omegas, sens, conds = [], [], [], [], [], []
    with mpmath.workdps(DPS):
        for i in range(x.shape[0]):
            yi = int(y[i])
            if yi == ignore:
                losses.append(mpmath.mpf(0))
                grads.append([mpmath.mpf(0)] * V)
                mags.append([mpmath.mpf(0)] * V)
                omegas.append(mpmath.mpf(0))
                sens.append(mpmath.mpf(0))
                conds.append(mpmath.mpf(0))
                continue
            xs = [mpmath.mpf(float(v)) for v in x[i]]
            z = [cap * mpmath.tanh(v / cap) if cap else v for v in xs]
            ws = [mpmath.mpf(1)] * V if w is None else [mpmath.mpf(float(v)) for v in w]
            a = [(1 - eps) * ws[c] * (c == yi) + eps * ws[c] / V for c in range(V)]
            if any(v == mpmath.inf for v in z):
                k = sum(v == mpmath.inf for v in z)
                p = [mpmath.mpf(1) / k if v == mpmath.inf else mpmath.mpf(0) for v in z]
                nlp = [mpmath.log(k) if v == mpmath.inf else mpmath.inf for v in z]
                lse = mpmath.inf
            else:
                m = max(z)
                lse = m + mpmath.log(mpmath.fsum(mpmath.exp(v - m) for v in z))
                p = [mpmath.exp(v - lse) for v in z]
                nlp = [lse - v for v in z]
            loss = mpmath.fsum(a[c] * nlp[c] for c in range(V) if a[c] != 0)
            if zeta:
                loss += zeta * lse * lse
            W = mpmath.fsum(a) + (2 * zeta * lse if zeta else 0)
            slope = [mpmath.sech(v / cap) ** 2 if cap else mpmath.mpf(1) for v in xs]
            losses.append(loss)
            # the rounding of the soft cap (tanh, x / c, e^{-2|u|}) moves z_c by about
            # |z_c| eps: its effect is bounded by cond * eps * sum_c |d loss / d z_c|
            # (+-inf logits are capped exactly to +-c, with slope exactly 0)
            cond = (2 * max(abs(v) for v in z)
                    + 2 * max(abs(v / cap) for v in xs if mpmath.isfinite(v)) + 2
                    if cap else mpmath.mpf(0))
            sens.append(cond * mpmath.fsum(abs(p[c] * W) + abs(a[c]) for c in range(V)))
            conds.append(cond)
            grads.append([(p[c] * W - a[c]) * slope[c] for c in range(V)])
            mags.append([(abs(p[c] * W) + abs(a[c])) * slope[c] for c in range(V)])
            omegas.append(ws[yi])
    return {"losses": losses, "grads": grads, "mags": mags, "omegas": omegas, "sens": sens,
            "conds": conds}


def _seed(option_index: int, dtype_index: int) -> int:
    return 1000 + 10 * option_index + dtype_index


@functools.cache
def _reference(dtype_name: str, oname: str) -> dict[str, Any]:
    """The mpmath reference of one accuracy problem (cached: shared by every layout)."""
    opts = OPTION_SETS[oname]
    seed = _seed(list(OPTION_SETS).index(oname), list(DTYPES).index(dtype_name))
    d = _case_data(seed, DTYPES[dtype_name], opts)
    x64 = d["x"].to(torch.float64).numpy()
    w = None if d["w"] is None else d["w"].numpy()
    return {"data": d, **_mp_rows(x64, d["y"].numpy(), w, opts)}


def _reduced_reference(ref: dict[str, Any], opts: dict[str, Any], red: str
                       ) -> tuple[Any, list[list[Any]], list[list[Any]]]:
    """(value, gradient, magnitude) of the reduced loss, mpmath, grad_out = gout (none) or
    0.7: none -> loss scale; sum -> sum scale (/ normalizer); mean -> sum scale / sum omega
    (/ normalizer instead when given; NaN over zero counted rows, gradient 0)."""
    with mpmath.workdps(DPS):
        scale = 1 / mpmath.log(opts["base"]) if opts.get("base") else mpmath.mpf(1)
        gout = ref["data"]["gout"].tolist()
        losses = ref["losses"]
        if red == "none":
            value: Any = [v * scale for v in losses]
            factors = [mpmath.mpf(g) * scale for g in gout]
        else:
            total = mpmath.fsum(losses) * scale
            if opts.get("normalizer"):
                div = mpmath.mpf(opts["normalizer"])
            elif red == "mean":
                div = mpmath.fsum(ref["omegas"])
            else:
                div = mpmath.mpf(1)
            value = mpmath.nan if div == 0 else total / div
            f = mpmath.mpf(0) if div == 0 else mpmath.mpf(0.7) * scale / div
            factors = [f] * N
        grad = [[g * factors[i] for g in row] for i, row in enumerate(ref["grads"])]
        mag = [[g * abs(factors[i]) for g in row] for i, row in enumerate(ref["mags"])]
    return value, grad, mag


# --------------------------------------------------------------------------- worker


def _accuracy_cases(rank: int, P: int, group: Any, raw: dict[str, Any]) -> None:
    """Loss and shard gradient for every layout x options x dtype x reduction x collective."""
    for li, sizes in enumerate(LAYOUTS[P]):
        start = sum(sizes[:rank])
        for oi, (oname, opts) in enumerate(OPTION_SETS.items()):
            for di, (dname, dtype) in enumerate(DTYPES.items()):
                d = _case_data(_seed(oi, di), dtype, opts)
                for red in REDUCTIONS:
                    gout = d["gout"].to(dtype) if red == "none" else torch.tensor(0.7, dtype=dtype)
                    for coll in COLLECTIVES:
                        xs = d["x"][:, start : start + sizes[rank]].clone().requires_grad_()
                        loss = vp.cross_entropy(xs, d["y"], group=group, collective=coll,
                                                chunk_size=5, **_kwargs(opts, d["w"], dtype, red))
                        loss.backward(gout.reshape(loss.shape))
                        assert xs.grad is not None
                        key = f"logits/P{P}/layout{li}/{oname}/{dname}/{red}/{coll}"
                        raw[key] = (loss.detach(), xs.grad)


def _linear_data(seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
    W = torch.randn(V, D, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
    return h, W, b


def _linear_cases(rank: int, P: int, group: Any, raw: dict[str, Any]) -> None:
    sizes = LAYOUTS[P][-1]
    start = sum(sizes[:rank])
    for oi, oname in enumerate(("plain", "everything", "all_ignored")):
        opts = OPTION_SETS[oname]
        for dname, dtype in DTYPES.items():
            d = _case_data(2000 + oi, dtype, opts)
            h, W, b = _linear_data(2000 + oi, dtype)
            for use_bias in (False, True):
                for red in REDUCTIONS:
                    gout = d["gout"].to(dtype) if red == "none" else torch.tensor(0.7, dtype=dtype)
                    for coll in COLLECTIVES:
                        hs = h.clone().requires_grad_()
                        ws = W[start : start + sizes[rank]].clone().requires_grad_()
                        bs = b[start : start + sizes[rank]].clone().requires_grad_()
                        loss = vp.linear_cross_entropy(
                            hs, ws, d["y"], linear_bias=bs if use_bias else None, group=group,
                            collective=coll, chunk_size=5, **_kwargs(opts, d["w"], dtype, red))
                        loss.backward(gout.reshape(loss.shape))
                        key = f"linear/P{P}/{oname}/{dname}/bias{int(use_bias)}/{red}/{coll}"
                        raw[key] = (loss.detach(), hs.grad, ws.grad,
                                    bs.grad if use_bias else None)


LARGE_V = 70001  # shards of 35001 and 35000: the elementwise passes run on blocks of rows


def _large_vocab_data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(77)
    h = torch.randn(N, D, generator=g)
    W = torch.randn(LARGE_V, D, generator=g)
    b = torch.randn(LARGE_V, generator=g)
    y = torch.randint(0, LARGE_V, (N,), generator=g)
    w = torch.rand(LARGE_V, generator=g) + 0.5
    return h, W, b, y, w


def _large_vocab_cases(rank: int, P: int, group: Any, raw: dict[str, Any]) -> None:
    """A vocabulary larger than one block of the elementwise passes (float32)."""
    h, W, b, y, w = _large_vocab_data()
    start, stop = vp.shard_range(LARGE_V, rank, P)
    kw = {"weight": w, "label_smoothing": 0.1, "group": group}
    hs = h.clone().requires_grad_()
    ws = W[start:stop].clone().requires_grad_()
    loss = vp.linear_cross_entropy(hs, ws, y, linear_bias=b[start:stop], **kw)
    loss.backward()
    xs = (h @ W[start:stop].t() + b[start:stop]).requires_grad_()
    loss2 = vp.cross_entropy(xs, y, **kw)
    loss2.backward()
    raw[f"large/P{P}"] = (loss.detach(), hs.grad, ws.grad, loss2.detach(), xs.grad,
                          xs.detach())


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| relative to the largest |b| (absolute when b is all zero)."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    if a64.shape != b64.shape or not torch.equal(a64.isnan(), b64.isnan()):
        return math.inf
    a64, b64 = a64.nan_to_num(0.0), b64.nan_to_num(0.0)  # NaN where the reference has NaN
    if b64.numel() == 0:
        return 0.0
    diff = float((a64 - b64).abs().max())
    if math.isnan(diff):
        return math.inf
    return diff / max(float(b64.abs().max()), 1e-300) if float(b64.abs().max()) else diff


def _expect_error(out: dict[str, Any], key: str, fn: Any) -> None:
    try:
        fn()
    except Exception as exc:  # recorded and checked by the parent
        out[key] = {"type": type(exc).__name__, "msg": str(exc),
                    "mismatch": isinstance(exc, vp.ShardMismatchError)}
    else:
        out[key] = {"type": None, "msg": ""}


def _mismatch_cases(rank: int, P: int, group: Any, out: dict[str, Any]) -> None:
    sizes = LAYOUTS[P][0]
    start = sum(sizes[:rank])
    d = _data(7, torch.float32, {})
    x = d["x"][..., start : start + sizes[rank]].contiguous()
    y = d["y"]
    last = P - 1

    def call(**kw: Any) -> Any:
        args = {"x": x, "y": y}
        args.update(kw.pop("args", {}))
        return vp.cross_entropy(args["x"], args["y"], group=group, **kw)

    # the last rank passes targets of another shape
    _expect_error(out, f"err/P{P}/target_shape", lambda: call(
        args={"y": y.reshape(-1)} if rank == last else {}))
    # the last rank has fewer rows (logits and targets agree locally)
    _expect_error(out, f"err/P{P}/rows", lambda: call(
        args={"x": x[:2], "y": y[:2]} if rank == last else {}))
    # different targets on one rank (same shape): caught by the checksum
    y2 = y.clone()
    y2[0, 0] = (int(y2[0, 0]) + 1) % V
    _expect_error(out, f"err/P{P}/target_values",
                  lambda: call(args={"y": y2} if rank == last else {}))
    # a different option on one rank
    _expect_error(out, f"err/P{P}/label_smoothing",
                  lambda: call(label_smoothing=0.1 if rank == last else 0.0))
    # a different dtype on one rank
    _expect_error(out, f"err/P{P}/dtype",
                  lambda: call(args={"x": x.double()} if rank == last else {}))
    # a bad argument on one rank only: that rank names it, the others stop too
    _expect_error(out, f"err/P{P}/local_bad_weight", lambda: call(
        weight=torch.ones(V) * (-1.0 if rank == last else 1.0)))
    # targets out of range on every rank: the same ValueError everywhere
    y3 = y.clone()
    y3[1, 2] = V
    _expect_error(out, f"err/P{P}/target_range", lambda: call(args={"y": y3}))
    # a class weight of the wrong length (needs the total V, known after the exchange)
    _expect_error(out, f"err/P{P}/weight_length", lambda: call(weight=torch.ones(V - 1)))
    # shard_sizes that do not match the shards
    _expect_error(out, f"err/P{P}/shard_sizes", lambda: call(
        shard_sizes=list(reversed(sizes)) if sizes[0] != sizes[-1] else [V] + [0] * (P - 1)))
    # linear: the last rank's hidden states do not require a gradient
    h = torch.randn(*ROWS, D)
    wsh = torch.randn(sizes[rank], D)
    _expect_error(out, f"err/P{P}/hidden_grad", lambda: vp.linear_cross_entropy(
        h.clone().requires_grad_(rank != last), wsh, y, group=group))
    # after all of that the group is still in step: a correct call works
    _expect_error(out, f"err/P{P}/still_in_step", lambda: call())
    # with check=False and shard_sizes given, no metadata exchange: still correct
    xr = d["x"].to(torch.float64)
    ref = F.cross_entropy(xr.reshape(-1, V), y.reshape(-1))
    got = vp.cross_entropy(x, y, group=group, shard_sizes=sizes, check=False)
    out[f"nocheck/P{P}"] = {"value_err": _err(got, ref), "dtype": "float32"}


def _ddp_fsdp_cases(rank: int, P: int, group: Any, out: dict[str, Any]) -> None:
    """A replicated trunk wrapped in DDP / FSDP1 / FSDP2, a vocabulary-parallel head."""
    import copy

    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
    from torch.nn.parallel import DistributedDataParallel

    sizes = LAYOUTS[P][-1]
    start = sum(sizes[:rank])
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)  # the same initial trunk on every rank (FSDP shards it as it is)
    trunk = torch.nn.Sequential(torch.nn.Linear(D, D), torch.nn.Tanh(), torch.nn.Linear(D, D))
    trunk = trunk.double()
    inp = torch.randn(*ROWS, D, generator=g, dtype=torch.float64)
    W = torch.randn(V, D, generator=g, dtype=torch.float64)
    y = _data(9, torch.float64, {})["y"]
    ref_trunk = copy.deepcopy(trunk)
    Wref = W.clone().requires_grad_()
    ref = F.cross_entropy((ref_trunk(inp) @ Wref.t()).reshape(-1, V), y.reshape(-1),
                          label_smoothing=0.1)
    ref.backward()
    ref_grads = [p.grad for p in ref_trunk.parameters()]
    assert Wref.grad is not None

    for kind in ("ddp", "ddp_logits", "fsdp1", "fsdp2"):
        m = copy.deepcopy(trunk)
        if kind.startswith("ddp"):
            model: Any = DistributedDataParallel(m, process_group=group)
        elif kind == "fsdp1":
            # use_orig_params=True: summon_full_params(with_grads=True) needs it
            model = FullyShardedDataParallel(m, process_group=group, use_orig_params=True,
                                             device_id=torch.device("cpu"))
        else:
            for layer in m:
                if isinstance(layer, torch.nn.Linear):
                    fully_shard(layer, mesh=_mesh(group))
            model = fully_shard(m, mesh=_mesh(group))
        ws = W[start : start + sizes[rank]].clone().requires_grad_()
        hid = model(inp)
        if kind == "ddp_logits":
            # hand-written projection + the logits loss: all_reduce_grad sums d loss / d hid
            logits = vp.all_reduce_grad(hid, group) @ ws.t()
            loss = vp.cross_entropy(logits, y, group=group, label_smoothing=0.1)
        else:
            loss = vp.linear_cross_entropy(hid, ws, y, group=group, label_smoothing=0.1)
        loss.backward()
        if kind == "fsdp1":
            with FullyShardedDataParallel.summon_full_params(model, with_grads=True):
                grads = [p.grad.clone() for p in model.parameters()]
        elif kind == "fsdp2":
            grads = [p.grad.full_tensor() for p in model.parameters()]
        else:
            grads = [p.grad for p in model.parameters()]
        assert ws.grad is not None
        out[f"wrap/P{P}/{kind}"] = {
            "value_err": _err(loss, ref),
            "grad_err": max(max(_err(a, b) for a, b in zip(grads, ref_grads, strict=True)),
                            _err(ws.grad, Wref.grad[start : start + sizes[rank]])),
            "dtype": "float64",
        }


def _mesh(group: Any) -> Any:
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(group if group is not None else dist.group.WORLD, "cpu")


def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)  # 3 processes on a small CI machine: no thread oversubscription
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    out: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    try:
        single = dist.new_group([0])  # every rank must take part in creating each group
        pair = dist.new_group([0, 1])
        for P, group in ((1, single), (2, pair), (3, None)):
            parts: list[Any] = [_accuracy_cases, _linear_cases]
            if P == 2:
                parts.append(_large_vocab_cases)
            if P > 1:
                parts += [_mismatch_cases, _ddp_fsdp_cases]
            for part in parts:
                if rank >= P:  # the other ranks wait at the barrier
                    break
                t0 = time.perf_counter()
                try:
                    raw_part = part in (_accuracy_cases, _linear_cases, _large_vocab_cases)
                    part(rank, P, group, raw if raw_part else out)
                except Exception:
                    out[f"crash/P{P}/{part.__name__}"] = traceback.format_exc()
                    raise
                out[f"time/P{P}/{part.__name__}"] = time.perf_counter() - t0
            dist.barrier()  # every rank, on the default group
    finally:
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
        torch.save(raw, os.path.join(outdir, f"rank{rank}.pt"))
    dist.destroy_process_group()


# --------------------------------------------------------------------------- parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def group_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the group once; the ranks' measurements and raw results."""
    outdir = tmp_path_factory.mktemp("vp")
    ctx = mp.start_processes(_worker, args=(WORLD, _free_port(), str(outdir)), nprocs=WORLD,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + TIME_LIMIT
    failure = ""
    try:
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                failure = f"the {WORLD}-process group did not finish in {TIME_LIMIT} s (a hang)"
                break
    except mp.ProcessRaisedException as exc:  # the first rank to fail; its peers follow
        failure = str(exc)
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    per_rank, raw = {}, {}
    times = {}
    for r in range(WORLD):
        path = outdir / f"rank{r}.json"
        per_rank[r] = json.loads(path.read_text()) if path.exists() else {}
        for key, rec in per_rank[r].items():
            if key.startswith("crash/"):  # the original error, not a peer's lost connection
                pytest.fail(f"rank {r}: {rec}")
        times[r] = {k: rec for k, rec in per_rank[r].items() if k.startswith("time/")}
        per_rank[r] = {k: rec for k, rec in per_rank[r].items() if not k.startswith("time/")}
        pt = outdir / f"rank{r}.pt"
        raw[r] = torch.load(pt) if pt.exists() else {}
    if failure:
        pytest.fail(failure)
    merged: dict[str, dict[str, Any]] = {}
    for r in range(WORLD):
        for key, rec in per_rank[r].items():
            rec = dict(rec, rank=r)
            if key.startswith("err/"):
                merged.setdefault(key, {"ranks": {}})["ranks"][r] = rec
                continue
            old = merged.get(key)
            if old is None or rec.get("value_err", 0) + rec.get("grad_err", 0) > old.get(
                "value_err", 0
            ) + old.get("grad_err", 0):
                merged[key] = rec
    return {"merged": merged, "raw": raw, "times": times}


@pytest.fixture(scope="module")
def results(group_run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = group_run["merged"]
    return merged


# --------------------------------------------------------------------------- accuracy

EPS64 = float(np.finfo(np.float64).eps)
WORST: dict[str, float] = {}  # (path, dtype) -> worst ulp seen, for the report


def _np_dtype(dname: str) -> Any:
    return np.float32 if dname == "float32" else np.float64


def _spacing(ref: Any, dname: str) -> np.ndarray:
    r = np.abs(ref.rounded(_np_dtype(dname)))
    with np.errstate(invalid="ignore", over="ignore"):
        out: np.ndarray = np.spacing(np.where(np.isfinite(r), r, 1.0)).astype(np.float64)
    return out


def _f64(values: Any) -> np.ndarray:
    return np.array([[float(v) for v in row] for row in values]) if isinstance(
        values[0], list) else np.array([float(v) for v in values])


def _check(bad: list[str], what: str, key: str, computed: np.ndarray, ref: Any, dname: str,
           allowance: np.ndarray | float = 0.0) -> float:
    """Append a failure when an entry is off by more than the bound (+ allowance, in ulp)."""
    err = ulp_error(computed, ref, _np_dtype(dname))
    limit = ULP_BOUND[dname] + np.asarray(allowance) / _spacing(ref, dname)
    over = ~(err <= limit)
    parts = key.split("/")
    oname = next(p for p in parts if p in OPTION_SETS)
    path = f"{parts[0]}/{parts[1]}/{oname}/{dname}/{what}"
    finite = err[np.isfinite(err)]
    WORST[path] = max(WORST.get(path, 0.0), float(finite.max()) if finite.size else 0.0)
    if over.any():
        i = np.unravel_index(int(np.argmax(np.where(over, err - limit, -np.inf))), err.shape)
        bad.append(f"{key}: {what}{list(map(int, i))} off by {err[i]:.3g} ulp > "
                   f"{float(np.broadcast_to(limit, err.shape)[i]):.3g} (computed "
                   f"{computed[i]!r}, exact {float(ref.rounded(np.float64)[i])!r})")
    return float(err.max()) if err.size else 0.0


def _allowances(ref: dict[str, Any], opts: dict[str, Any], dname: str, red: str,
                value: Any, grad: Any, mag: Any) -> tuple[np.ndarray, np.ndarray]:
    """Absolute error allowances (loss, gradient) beyond the ulp bound, float64 rounding only:
    the soft cap's rounded tanh (cond * eps * sum |d loss / d z|), and with label smoothing
    the cancellation in p_c W - a_c (eps * (|p_c W| + |a_c| - |g_c|))."""
    factors = _f64(ref["data"]["gout"].tolist()) if red == "none" else None
    sens = _f64(ref["sens"])
    conds = _f64(ref["conds"])
    g = np.abs(_f64(grad))
    m = _f64(mag)
    if red == "none":
        scale = 1.0 / math.log(opts["base"]) if opts.get("base") else 1.0
        assert factors is not None
        loss_allow = 4 * EPS64 * sens * factors * scale
    else:
        f = float(np.max(m / np.maximum(_f64(ref["mags"]), 1e-300))) if m.any() else 0.0
        loss_allow = np.array([4 * EPS64 * sens.sum() * f])
    grad_allow = 4 * EPS64 * m * conds[:, None]
    if opts.get("label_smoothing") or opts.get("z_loss"):
        # a_c > 0 off the target, or W = sum a + 2 zeta lse below a_c: p_c W - a_c may cancel
        grad_allow = grad_allow + 4 * EPS64 * (m - g)
    return loss_allow, grad_allow


def _check_logits_case(raw: dict[int, dict[str, Any]], key: str, bad: list[str]) -> None:
    _, p_, layout, oname, dname, red, coll = key.split("/")
    P, li = int(p_[1:]), int(layout[len("layout"):])
    opts = OPTION_SETS[oname]
    ref = _reference(dname, oname)
    value, grad, mag = _reduced_reference(ref, opts, red)
    vref = ref_from_mp(value if red == "none" else [value])
    gref = ref_from_mp([v for row in grad for v in row], (N, V))
    loss_allow, grad_allow = _allowances(ref, opts, dname, red, value, grad, mag)
    dtype = DTYPES[dname]
    shards = [raw[r][key][1] for r in range(P)]
    assert [s.shape[-1] for s in shards] == LAYOUTS[P][li], key
    full = torch.cat(shards, dim=-1)
    if full.dtype != dtype or any(raw[r][key][0].dtype != dtype for r in range(P)):
        bad.append(f"{key}: result or gradient dtype differs from the input's")
    _check(bad, "grad", key, full.to(torch.float64).numpy(), gref, dname, grad_allow)
    for r in range(P):
        loss = raw[r][key][0].to(torch.float64).numpy().reshape(-1)
        _check(bad, "loss", key, loss, vref, dname, loss_allow)
        if coll == "all_gather" and not torch.equal(
                raw[r][key][0].nan_to_num(), raw[0][key][0].nan_to_num()):
            bad.append(f"{key}: rank {r}'s loss differs from rank 0's (rank-order merge)")


def _accuracy_keys(raw: dict[int, dict[str, Any]], prefix: str) -> list[str]:
    return sorted(k for k in raw[0] if k.startswith(prefix))


@pytest.mark.parametrize("P", [1, 2, 3])
def test_logits_within_ulp_bounds(group_run: dict[str, Any], P: int) -> None:
    """Per-row loss, reduced loss and gradient of every case against mpmath: float64 <= 4 ulp,
    float32 <= 1 ulp (plus the allowances of :func:`_allowances`, float64 only)."""
    raw = group_run["raw"]
    keys = _accuracy_keys(raw, f"logits/P{P}/")
    expected = (len(LAYOUTS[P]) * len(OPTION_SETS) * len(DTYPES) * len(REDUCTIONS)
                * len(COLLECTIVES))
    assert len(keys) == expected
    bad: list[str] = []
    for key in keys:
        _check_logits_case(raw, key, bad)
    assert not bad, f"{len(bad)} failures:\n" + "\n".join(bad[:40])


def test_confident_row_regression(group_run: dict[str, Any]) -> None:
    """Issue 10: the 1-rank loss of a confident row was 0 in float64 (log S instead of
    (m - z_y) + log1p(rest)).  Row 0 of the plain float64 data: 40 at the target.

    mpmath: x = row 0; m = 40; loss = log(sum(exp(x_c - 40))) ~ 10 e^-40 (computed by _mp_rows)
    """
    raw = group_run["raw"]
    loss = raw[0]["logits/P1/layout0/plain/float64/none/all_gather"][0].reshape(-1)
    exact = float(_reference("float64", "plain")["losses"][0])
    assert 1e-18 < exact < 1e-15
    assert ulp_error(np.array([float(loss[0])]), ref_from_mp([exact]))[0] <= 4


def _linear_reference(oi: int, oname: str, dname: str, use_bias: bool
                      ) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor, torch.Tensor]:
    opts = OPTION_SETS[oname]
    dtype = DTYPES[dname]
    d = _case_data(2000 + oi, dtype, opts)
    h, W, b = (t.to(torch.float64) for t in _linear_data(2000 + oi, dtype))
    z = h @ W.t() + (b if use_bias else 0.0)  # the logits in float64 (products exact for float32)
    w = None if d["w"] is None else d["w"].numpy()
    ref = {"data": d, **_mp_rows(z.numpy(), d["y"].numpy(), w, opts)}
    return ref, h, W, b


def test_linear_within_bounds(group_run: dict[str, Any]) -> None:
    """The linear form against mpmath on the exact logits h @ W.T + b: the loss per row in
    ulp plus the rounding of the logits, formed in the input dtype (as torch's and
    crossentropy.torch's linear losses do): (D + 2) eps sum_c |d loss / d z_c| |z|_c with
    |z| = |h| @ |W|.T + |b|; the gradients of h, W and b componentwise: within the ulp bound
    plus 16 eps (|G| @ |W|) (the rounding of the logits and of the products with the
    gradient G)."""
    raw = group_run["raw"]
    bad: list[str] = []
    checked = 0
    for P in (1, 2, 3):
        for oi, oname in enumerate(("plain", "everything", "all_ignored")):
            opts = OPTION_SETS[oname]
            for dname in DTYPES:
                for use_bias in (False, True):
                    ref, h, W, b = _linear_reference(oi, oname, dname, use_bias)
                    eps_mm = float(np.finfo(_np_dtype(dname)).eps)  # the matmul's dtype
                    absz = (h.abs() @ W.abs().t() + (b.abs() if use_bias else 0.0)).numpy()
                    for red in REDUCTIONS:
                        value, grad, mag = _reduced_reference(ref, opts, red)
                        vref = ref_from_mp(value if red == "none" else [value])
                        G = _f64(grad)
                        M = _f64(mag) * (2.0 + _f64(ref["conds"])[:, None])
                        loss_allow, _ = _allowances(ref, opts, dname, red, value, grad, mag)
                        logit_allow = (D + 2) * eps_mm * (M * absz).sum(axis=1)
                        if red != "none":
                            logit_allow = np.array([logit_allow.sum()])
                        for coll in COLLECTIVES:
                            key = f"linear/P{P}/{oname}/{dname}/bias{int(use_bias)}/{red}/{coll}"
                            checked += 1
                            for r in range(P):
                                loss = raw[r][key][0].to(torch.float64).numpy().reshape(-1)
                                _check(bad, "loss", key, loss, vref, dname,
                                       loss_allow + logit_allow)
                            gh = raw[0][key][1].to(torch.float64).numpy().reshape(N, D)
                            gw = torch.cat([raw[r][key][2] for r in range(P)]).to(torch.float64)
                            wanted = [("grad_h", gh, G @ W.numpy(), M @ W.abs().numpy()),
                                      ("grad_W", gw.numpy(), G.T @ h.numpy(),
                                       M.T @ h.abs().numpy())]
                            if use_bias:
                                gb = torch.cat([raw[r][key][3] for r in range(P)])
                                wanted.append(("grad_b", gb.to(torch.float64).numpy(),
                                               G.sum(axis=0), M.sum(axis=0)))
                            for what, got, exact, scale in wanted:
                                sp = np.spacing(np.abs(exact).astype(_np_dtype(dname)))
                                limit = ULP_BOUND[dname] * sp + 16 * eps_mm * scale
                                err = np.abs(got - exact)
                                if not np.all(err <= limit):
                                    i = int(np.argmax(err - limit))
                                    bad.append(f"{key}: {what} entry {i} off by "
                                               f"{err.flat[i]:.3g} > {limit.flat[i]:.3g}")
    assert checked == 3 * 3 * 2 * 2 * 3 * 2
    assert not bad, f"{len(bad)} failures:\n" + "\n".join(bad[:40])


def test_large_vocabulary(group_run: dict[str, Any]) -> None:
    """70001 classes on 2 ranks (more than one block of rows), float32, weights and
    smoothing: both forms against torch.nn.functional.cross_entropy in float64 on the
    gathered logits (the exact ones for the linear form, the ranks' float32 ones for the
    logits form)."""
    raw = group_run["raw"]
    h, W, b, y, w = (t.to(torch.float64) if t.is_floating_point() else t
                     for t in _large_vocab_data())
    hr, Wr = h.clone().requires_grad_(), W.clone().requires_grad_()
    ref = F.cross_entropy(hr @ Wr.t() + b, y, weight=w, label_smoothing=0.1)
    ref.backward()
    assert hr.grad is not None and Wr.grad is not None
    # the logits form: the float32 logits the ranks formed, gathered
    x = torch.cat([raw[r]["large/P2"][5] for r in range(2)], dim=1).to(torch.float64)
    x.requires_grad_()
    ref2 = F.cross_entropy(x, y, weight=w, label_smoothing=0.1)
    ref2.backward()
    assert x.grad is not None
    sizes = vp.shard_sizes(LARGE_V, 2)
    for r in range(2):
        loss, gh, gw, loss2, gx, _ = raw[r]["large/P2"]
        start = sum(sizes[:r])
        assert abs(loss.item() - ref.item()) <= 2e-7 * ref.item()  # 1 float32 ulp
        assert abs(loss2.item() - ref2.item()) <= 2e-7 * ref2.item()
        # the hidden and weight gradients are float32 matmuls (over 35001 classes for the
        # hidden one): within 1e-5 of the largest entry
        assert _err(gh, hr.grad) <= 1e-5
        assert _err(gw, Wr.grad[start : start + sizes[r]]) <= 1e-5
        # the logits' gradient is the row arithmetic alone (float64, rounded once)
        assert torch.allclose(gx.double(), x.grad[:, start : start + sizes[r]], rtol=2e-7,
                              atol=1e-15)


@pytest.mark.parametrize("oname", ["weight_ignore", "smooth_weight_ignore", "normalizer",
                                   "all_ignored"])
def test_torch_semantics(group_run: dict[str, Any], oname: str) -> None:
    """torch.nn.functional.cross_entropy in float64 on the gathered logits (finite rows only:
    torch gives NaN for +-inf logits): the same value and gradient to 1e-12, NaN for a mean
    over zero counted rows with a zero gradient."""
    raw = group_run["raw"]
    opts = OPTION_SETS[oname]
    d = _case_data(_seed(list(OPTION_SETS).index(oname), 1), torch.float64, opts)
    finite = torch.isfinite(d["x"]).all(dim=1)
    x = d["x"].clone().requires_grad_()
    per_row = F.cross_entropy(x, d["y"], weight=d["w"], ignore_index=_ignore_index(opts),
                              label_smoothing=opts.get("label_smoothing", 0.0), reduction="none")
    for red in REDUCTIONS:
        for P in (1, 2, 3):
            key = f"logits/P{P}/layout0/{oname}/float64/{red}/all_reduce"
            if red == "none":
                ref = per_row
            elif opts.get("normalizer"):
                ref = per_row[finite].sum() / opts["normalizer"]
            else:
                ref = F.cross_entropy(x[finite], d["y"][finite], weight=d["w"],
                                      ignore_index=_ignore_index(opts),
                                      label_smoothing=opts.get("label_smoothing", 0.0),
                                      reduction=red)
            loss = raw[0][key][0]
            if red == "none":
                # (torch's own float64 loss is off by ~1e-16 absolute: 0 for a 7e-17 loss)
                assert torch.allclose(loss[finite], ref[finite].detach(), rtol=1e-12, atol=1e-14)
            elif not finite.all():
                continue  # the reduced value includes the non-finite rows
            elif oname == "all_ignored" and red == "mean":
                assert torch.isnan(loss) and torch.isnan(ref)
                g = torch.cat([raw[r][key][1] for r in range(P)], dim=-1)
                assert torch.equal(g, torch.zeros_like(g))
            else:
                assert torch.allclose(loss, ref.detach(), rtol=1e-12, atol=1e-14), (key, loss, ref)
                gref, = torch.autograd.grad(ref * 0.7, x, retain_graph=True)
                g = torch.cat([raw[r][key][1] for r in range(P)], dim=-1)
                assert torch.allclose(g, gref, rtol=1e-10, atol=1e-15), key


@pytest.mark.parametrize("oname", ["plain", "weight_ignore", "smooth_weight_ignore"])
def test_agrees_with_numpy_core(group_run: dict[str, Any], oname: str) -> None:
    """The NumPy core (``reduction='none', return_grad=True``) on the gathered logits: each
    per-row loss and gradient entry within twice the ulp bound of the distributed result
    (both are within the bound of the exact value)."""
    raw = group_run["raw"]
    opts = OPTION_SETS[oname]
    for di, dname in enumerate(DTYPES):
        d = _case_data(_seed(list(OPTION_SETS).index(oname), di), DTYPES[dname], opts)
        loss, grad = ce.cross_entropy(
            d["x"].numpy(), d["y"].numpy(), weight=None if d["w"] is None
            else d["w"].to(DTYPES[dname]).numpy(), ignore_index=_ignore_index(opts),
            label_smoothing=opts.get("label_smoothing", 0.0), reduction="none",
            return_grad=True)
        for P in (1, 3):
            key = f"logits/P{P}/layout0/{oname}/{dname}/none/all_gather"
            mine = raw[0][key][0].to(torch.float64).numpy()
            gout = d["gout"].numpy()[:, None]
            g = torch.cat([raw[r][key][1] for r in range(P)], dim=-1).to(torch.float64).numpy()
            bound = 2 * ULP_BOUND[dname] + (0 if dname == "float64" else 1)
            smooth = bool(opts.get("label_smoothing"))
            e1 = ulp_error(np.asarray(loss, np.float64), ref_from_mp(mine.tolist()),
                           _np_dtype(dname))
            assert np.all(e1 <= bound), (key, e1.max())
            gg = np.asarray(grad, np.float64) * gout
            e2 = ulp_error(gg.astype(_np_dtype(dname)),
                           ref_from_mp(g.reshape(-1).tolist(), g.shape), _np_dtype(dname))
            if not smooth:  # with smoothing p_c W - a_c can cancel: compared with mpmath above
                assert np.all(e2 <= bound + 1), (key, e2.max())


def _tol(dtype: str) -> float:
    # the DDP/FSDP and check=False cases: a few ulp times a log V growth factor
    return 64 * float(np.finfo(np.float32 if dtype == "float32" else np.float64).eps)


def _keys(results: dict[str, dict[str, Any]], prefix: str) -> list[str]:
    return sorted(k for k in results if k.startswith(prefix))


def test_every_case_ran(results: dict[str, dict[str, Any]]) -> None:
    assert len(_keys(results, "wrap/")) == 2 * 4
    assert len(_keys(results, "err/")) == 2 * 11
    assert len(_keys(results, "nocheck/")) == 2


@pytest.mark.parametrize("part", ["wrap/P2", "wrap/P3", "nocheck/"])
def test_wrapped_models_match_single_process(results: dict[str, dict[str, Any]],
                                             part: str) -> None:
    """DDP, FSDP1, FSDP2 trunks with a vocabulary-parallel head, and check=False."""
    bad = []
    for key in _keys(results, part):
        rec = results[key]
        tol = _tol(rec["dtype"])
        for what in ("value_err", "grad_err"):
            if what in rec and not rec[what] <= tol:
                bad.append(f"{key}: {what} = {rec[what]:.3g} > {tol:.3g} (rank {rec['rank']})")
    assert _keys(results, part), part
    assert not bad, "\n".join(bad)


ERRORS = {
    # case: (error type on the odd rank, on the others, words in the others' message)
    "target_shape": ("ValueError", "ShardMismatchError", "failed their argument checks"),
    "rows": ("ShardMismatchError", "ShardMismatchError", "number of rows"),
    "target_values": ("ShardMismatchError", "ShardMismatchError", "target checksum"),
    "label_smoothing": ("ShardMismatchError", "ShardMismatchError", "label_smoothing"),
    "dtype": ("ShardMismatchError", "ShardMismatchError", "dtype"),
    "local_bad_weight": ("ValueError", "ShardMismatchError", "failed their argument checks"),
    "target_range": ("ValueError", "ValueError", "out of range [0, 11)"),
    "weight_length": ("ValueError", "ValueError", "whole vocabulary (11)"),
    "shard_sizes": ("ValueError", "ShardMismatchError", "shard_sizes"),
    "hidden_grad": ("ShardMismatchError", "ShardMismatchError", "hidden requires grad"),
    "still_in_step": (None, None, ""),
}


@pytest.mark.parametrize("P", [2, 3])
@pytest.mark.parametrize("case", sorted(ERRORS))
def test_mismatch_raises_on_every_rank(results: dict[str, dict[str, Any]], P: int,
                                       case: str) -> None:
    odd_type, other_type, words = ERRORS[case]
    ranks = results[f"err/P{P}/{case}"]["ranks"]
    assert sorted(ranks) == list(range(P))
    for r, rec in ranks.items():
        expected = odd_type if r == P - 1 else other_type
        if case == "shard_sizes":  # every rank sees its own size contradicted, or a clash
            assert rec["type"] in ("ValueError", "ShardMismatchError"), rec
            words_ok = "shard_sizes" in rec["msg"] or "failed their argument checks" in rec["msg"]
            assert words_ok, rec
            continue
        assert rec["type"] == expected, (r, rec)
        if r != P - 1:
            assert words in rec["msg"], (r, rec)
    if odd_type == "ValueError" and case in ("target_shape", "local_bad_weight"):
        # the rank with the bad argument names it
        msg = ranks[P - 1]["msg"]
        assert ("target" in msg) if case == "target_shape" else ("weight[0]" in msg), msg


def test_torchrun_example() -> None:
    """The README's example, under torchrun with 2 CPU processes, prints equal losses."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           str(ROOT / "examples" / "distributed_torchrun.py")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the two ranks share one pipe, so their lines may arrive glued together: match records
    records = re.findall(r"rank (\d)/2: .*? (OK|MISMATCH)", proc.stdout)
    assert sorted(r for r, _ in records) == ["0", "1"], proc.stdout
    assert all(status == "OK" for _, status in records), proc.stdout


def test_needs_an_initialized_group() -> None:
    if dist.is_initialized():  # pragma: no cover - only when another test left one
        pytest.skip("a default process group exists in this process")
    with pytest.raises(RuntimeError, match="not initialized"):
        vp.cross_entropy(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_shard_layout_helpers() -> None:
    assert vp.shard_sizes(11, 3) == [4, 4, 3]
    assert [len(t) for t in torch.tensor_split(torch.arange(11), 3)] == vp.shard_sizes(11, 3)
    assert vp.shard_range(11, 2, 3) == (8, 11)
    assert vp.shard_sizes(2, 3) == [1, 1, 0]
    with pytest.raises(ValueError, match="world_size"):
        vp.shard_sizes(4, 0)
    with pytest.raises(ValueError, match="rank"):
        vp.shard_range(4, 2, 2)
    with pytest.raises(TypeError, match="num_classes"):
        vp.shard_sizes(4.0, 2)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"reduction": "avg"}, ValueError, "reduction"),
        ({"label_smoothing": 2.0}, ValueError, "label_smoothing"),
        ({"z_loss": -1.0}, ValueError, "z_loss"),
        ({"collective": "ring"}, ValueError, "collective"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
        ({"target": torch.zeros(2)}, TypeError, "integer class indices"),
        ({"target": torch.tensor([0, 3])}, ValueError, r"target\[1\] = 3 is out of range"),
        ({"logits": [[0.0, 1.0, 2.0]] * 2}, TypeError, "logits must be a torch.Tensor"),
        ({"weight": torch.ones(4)}, ValueError, "whole vocabulary"),
        ({"shard_sizes": [2]}, ValueError, "shard_sizes"),
    ],
)
def test_bad_arguments_on_one_rank(kwargs: dict[str, Any], exc: type, words: str) -> None:
    """A one-process group in this process: each bad argument raises, naming it."""
    if dist.is_initialized():  # pragma: no cover - only when another test left one
        pytest.skip("a default process group exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        args = {"logits": torch.zeros(2, 3), "target": torch.tensor([0, 2])}
        args.update(kwargs)
        with pytest.raises(exc, match=words):
            vp.cross_entropy(args.pop("logits"), args.pop("target"), **args)
    finally:
        dist.destroy_process_group()
