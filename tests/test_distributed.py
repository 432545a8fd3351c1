"""Vocabulary-parallel cross-entropy (crossentropy.torch.distributed) on real process groups.

One group of 3 CPU processes (gloo on 127.0.0.1, a free port, a hard time limit) runs every
case twice: on a 2-rank subgroup (ranks 0 and 1) and on the 3-rank world.  Each rank
compares its loss and the gradient of its shard with an independent single-process
reference on the gathered vocabulary -- ``torch.nn.functional.cross_entropy`` in float64
plus ``z * logsumexp**2`` per counted row, differentiated by autograd -- and with the NumPy
core ``crossentropy.cross_entropy`` where it applies.  The workers only *measure* (errors,
exception types and messages) and write them to JSON; the assertions run here, one test
per case, so a failure names its case.  A hang fails the fixture after the time limit.
"""

from __future__ import annotations

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

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import crossentropy as ce
import crossentropy.torch as cet
from crossentropy.torch import distributed as vp

ROOT = Path(__file__).resolve().parents[1]
WORLD = 3
TIME_LIMIT = 90.0  # seconds for the whole spawned group (it needs about 10 on 2 cores)
V = 11
ROWS = (3, 4)  # N = 12 rows in a 2-d leading shape
D = 5
LN2 = math.log(2.0)

# Shard layouts (uneven on purpose; one with an empty shard) per group size.
LAYOUTS = {2: [[7, 4], [5, 6]], 3: [[4, 4, 3], [5, 0, 6]]}

OPTION_SETS: dict[str, dict[str, Any]] = {
    "plain": {},
    "weight_ignore": {"weight": True, "ignore": True},
    "smooth_weight_ignore": {"weight": True, "ignore": True, "label_smoothing": 0.1},
    "smooth_z_bits": {"label_smoothing": 0.25, "z_loss": 1e-3, "base": 2},
    "everything": {"weight": True, "ignore": True, "label_smoothing": 0.1, "z_loss": 0.01,
                   "base": 2},
    "all_ignored": {"ignore": "all", "weight": True},
}
REDUCTIONS = ("none", "mean", "sum")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
COLLECTIVES = ("all_reduce", "all_gather")


# --------------------------------------------------------------------------- data


def _data(seed: int, dtype: torch.dtype, opts: dict[str, Any]) -> dict[str, Any]:
    """The same full-vocabulary problem on every rank (fixed seed)."""
    g = torch.Generator().manual_seed(seed)
    n = math.prod(ROWS)
    x = (torch.randn(n, V, generator=g, dtype=torch.float64) * 3.0).to(dtype)
    # every class appears as a target, so targets fall in every shard
    y = torch.cat([torch.randperm(V, generator=g), torch.randint(0, V, (n - V,), generator=g)])
    y = y[torch.randperm(n, generator=g)]
    if opts.get("ignore") == "all":
        y[:] = -100
    elif opts.get("ignore"):
        y[torch.tensor([1, 6, 10])] = -100
    w = torch.rand(V, generator=g, dtype=torch.float64) + 0.25 if opts.get("weight") else None
    gout = torch.rand(ROWS, generator=g, dtype=torch.float64) + 0.5  # for reduction='none'
    return {"x": x.reshape(*ROWS, V), "y": y.reshape(ROWS), "w": w, "gout": gout}


def _reference(x64: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None,
               opts: dict[str, Any], reduction: str) -> torch.Tensor:
    """Single-process loss on the gathered logits: torch in float64, plus the z-loss term."""
    eps = opts.get("label_smoothing", 0.0)
    z = opts.get("z_loss", 0.0)
    xf = x64.reshape(-1, V)
    yf = y.reshape(-1)
    per_row = F.cross_entropy(xf, yf, weight=w, ignore_index=-100, label_smoothing=eps,
                              reduction="none")
    counted = yf != -100
    lse = torch.logsumexp(xf, dim=-1)
    per_row = per_row + torch.where(counted, z * lse * lse, torch.zeros_like(lse))
    scale = 1.0 / LN2 if opts.get("base") == 2 else 1.0
    if reduction == "none":
        return per_row.reshape(ROWS) * scale
    if reduction == "sum":
        return per_row.sum() * scale
    omega = (w[yf.clamp(0)] if w is not None else torch.ones_like(lse)) * counted
    if float(omega.sum()) == 0.0:  # torch's rule: NaN, with a zero gradient
        return per_row.sum() * 0.0 + math.nan
    return per_row.sum() / omega.sum() * scale


def _kwargs(opts: dict[str, Any], w: torch.Tensor | None, dtype: torch.dtype) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for k in ("label_smoothing", "z_loss", "base"):
        if k in opts:
            kw[k] = opts[k]
    if w is not None:
        kw["weight"] = w.to(dtype)
    return kw


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


# --------------------------------------------------------------------------- worker


def _logits_cases(rank: int, P: int, group: Any, out: dict[str, Any]) -> None:
    seed = 0
    for li, sizes in enumerate(LAYOUTS[P]):
        start = sum(sizes[:rank])
        for oname, opts in OPTION_SETS.items():
            if li == 1 and oname not in ("plain", "everything"):
                continue  # the second layout (an empty shard for P = 3) runs two option sets
            for dname, dtype in DTYPES.items():
                seed += 1
                d = _data(seed, dtype, opts)
                x64 = d["x"].to(torch.float64)
                kw = _kwargs(opts, d["w"], dtype)
                for red in REDUCTIONS:
                    # independent reference (float64) and torch's own float32 error
                    xr = x64.clone().requires_grad_()
                    ref = _reference(xr, d["y"], d["w"], opts, red)
                    gout = d["gout"] if red == "none" else torch.tensor(0.7, dtype=torch.float64)
                    ref.backward(gout)
                    sp_err = math.nan
                    if dtype == torch.float32 and not opts.get("z_loss"):
                        xs = d["x"].clone().requires_grad_()
                        w32 = None if d["w"] is None else d["w"].float()
                        sp = F.cross_entropy(xs.reshape(-1, V), d["y"].reshape(-1), weight=w32,
                                             label_smoothing=opts.get("label_smoothing", 0.0),
                                             reduction=red)
                        if opts.get("base") == 2:
                            sp = sp / LN2
                        sp_err = _err(sp.reshape(ref.shape), ref)
                    core = None
                    if not opts.get("z_loss") and not (opts.get("ignore") == "all"
                                                       and red == "mean"):
                        # (the core returns 0.0 for a mean over nothing, torch NaN)
                        # the NumPy core: an exact float64 implementation (0.0 for all ignored)
                        core = ce.cross_entropy(
                            x64.numpy(), d["y"].numpy(), weight=None if d["w"] is None
                            else d["w"].numpy(), label_smoothing=opts.get("label_smoothing", 0.0),
                            reduction=red, base=opts.get("base"), return_grad=True)
                    # crossentropy.torch (the package's single-process torch loss)
                    xc = d["x"].clone().requires_grad_()
                    cet_loss = cet.cross_entropy(xc.reshape(-1, V), d["y"].reshape(-1),
                                                 reduction=red, **kw)
                    cet_loss.backward(gout.reshape(-1).to(dtype) if red == "none"
                                      else gout.to(dtype))
                    assert xc.grad is not None
                    cet_grad = xc.grad[..., start : start + sizes[rank]]
                    for coll in COLLECTIVES:
                        xs = d["x"][..., start : start + sizes[rank]].clone().requires_grad_()
                        loss = vp.cross_entropy(xs, d["y"], group=group, reduction=red,
                                                collective=coll, chunk_size=5, **kw)
                        loss.backward(gout.to(dtype))
                        assert xs.grad is not None
                        gref = xr.grad[..., start : start + sizes[rank]]
                        rec: dict[str, Any] = {
                            "value_err": _err(loss, ref), "grad_err": _err(xs.grad, gref),
                            "dtype": dname, "sp_err": sp_err,
                            "dtype_ok": loss.dtype == dtype and xs.grad.dtype == dtype,
                            "cet_value_err": _err(loss, cet_loss.reshape(loss.shape)),
                            "cet_grad_err": _err(xs.grad, cet_grad),
                        }
                        if core is not None:
                            cv, cg = core
                            rec["core_value_err"] = _err(loss, torch.as_tensor(cv))
                            # the core's 'none' gradient is each row's own: times gout here
                            cg_shard = torch.as_tensor(cg)[..., start : start + sizes[rank]]
                            rec["core_grad_err"] = _err(
                                xs.grad, cg_shard * (gout[..., None] if red == "none" else 0.7))
                        out[f"logits/P{P}/layout{li}/{oname}/{dname}/{red}/{coll}"] = rec


def _linear_cases(rank: int, P: int, group: Any, out: dict[str, Any]) -> None:
    sizes = LAYOUTS[P][1]
    start = sum(sizes[:rank])
    seed = 100
    for oname in ("plain", "everything", "all_ignored"):
        opts = OPTION_SETS[oname]
        for dname, dtype in DTYPES.items():
            for use_bias in (False, True):
                seed += 1
                d = _data(seed, torch.float64, opts)
                g = torch.Generator().manual_seed(seed)
                h = torch.randn(*ROWS, D, generator=g, dtype=torch.float64).to(dtype)
                W = torch.randn(V, D, generator=g, dtype=torch.float64).to(dtype)
                b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype)
                for red in REDUCTIONS:
                    hr = h.to(torch.float64).clone().requires_grad_()
                    Wr_ = W.to(torch.float64).clone().requires_grad_()
                    br = b.to(torch.float64).clone().requires_grad_()
                    logits = hr @ Wr_.t() + (br if use_bias else 0.0)
                    ref = _reference(logits, d["y"], d["w"], opts, red)
                    gout = d["gout"] if red == "none" else torch.tensor(0.7, dtype=torch.float64)
                    ref.backward(gout)
                    for coll in COLLECTIVES:
                        hs = h.clone().requires_grad_()
                        ws = W[start : start + sizes[rank]].clone().requires_grad_()
                        bs = b[start : start + sizes[rank]].clone().requires_grad_()
                        kw = _kwargs(opts, d["w"], dtype)
                        loss = vp.linear_cross_entropy(
                            hs, ws, d["y"], linear_bias=bs if use_bias else None, group=group,
                            reduction=red, collective=coll, chunk_size=5, **kw)
                        loss.backward(gout.to(dtype))
                        assert hs.grad is not None and ws.grad is not None
                        assert Wr_.grad is not None and hr.grad is not None
                        rec = {
                            "value_err": _err(loss, ref),
                            "grad_err": max(
                                _err(hs.grad, hr.grad),
                                _err(ws.grad, Wr_.grad[start : start + sizes[rank]]),
                                _err(bs.grad, br.grad[start : start + sizes[rank]])
                                if use_bias and bs.grad is not None and br.grad is not None
                                else 0.0 if not use_bias else math.inf),
                            "dtype": dname,
                            "dtype_ok": loss.dtype == dtype and hs.grad.dtype == dtype,
                        }
                        key = f"linear/P{P}/{oname}/{dname}/bias{int(use_bias)}/{red}/{coll}"
                        out[key] = rec


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

    sizes = LAYOUTS[P][1]
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
    try:
        pair = dist.new_group([0, 1])  # every rank must take part in creating it
        for P, group in ((2, pair), (3, None)):
            for part in (_logits_cases, _linear_cases, _mismatch_cases, _ddp_fsdp_cases):
                if rank >= P:  # rank 2 waits at the barrier while the pair runs
                    break
                t0 = time.perf_counter()
                try:
                    part(rank, P, group, out)
                except Exception:
                    out[f"crash/P{P}/{part.__name__}"] = traceback.format_exc()
                    raise
                out[f"time/P{P}/{part.__name__}"] = time.perf_counter() - t0
            dist.barrier()  # every rank, on the default group
    finally:
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


# --------------------------------------------------------------------------- parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Run the group once; merge the ranks' measurements (worst over the ranks)."""
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
    per_rank = {}
    for r in range(WORLD):
        path = outdir / f"rank{r}.json"
        per_rank[r] = json.loads(path.read_text()) if path.exists() else {}
        for key, rec in per_rank[r].items():
            if key.startswith("crash/"):  # the original error, not a peer's lost connection
                pytest.fail(f"rank {r}: {rec}")
        per_rank[r] = {k: rec for k, rec in per_rank[r].items() if not k.startswith("time/")}
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
    return merged


def _tol(dtype: str) -> float:
    # float32: a few ulp of the float32 inputs' exact loss, times a log V growth factor;
    # float64: the same in float64.  Relative to the largest reference entry.
    return 64 * float(np.finfo(np.float32 if dtype == "float32" else np.float64).eps)


def _keys(results: dict[str, dict[str, Any]], prefix: str) -> list[str]:
    return sorted(k for k in results if k.startswith(prefix))


def test_every_case_ran(results: dict[str, dict[str, Any]]) -> None:
    n_logits = 2 * (len(OPTION_SETS) + 2) * len(DTYPES) * len(REDUCTIONS) * len(COLLECTIVES)
    assert len(_keys(results, "logits/")) == n_logits
    assert len(_keys(results, "linear/")) == 2 * 3 * 2 * 2 * 3 * 2
    assert len(_keys(results, "wrap/")) == 2 * 4
    assert len(_keys(results, "err/")) == 2 * 11


@pytest.mark.parametrize("part", ["logits/P2", "logits/P3", "linear/P2", "linear/P3",
                                  "wrap/P2", "wrap/P3", "nocheck/"])
def test_matches_single_process(results: dict[str, dict[str, Any]], part: str) -> None:
    bad = []
    for key in _keys(results, part):
        rec = results[key]
        tol = _tol(rec["dtype"])
        for what in ("value_err", "grad_err", "core_value_err", "core_grad_err",
                     "cet_value_err", "cet_grad_err"):
            if what in rec and not rec[what] <= tol:
                bad.append(f"{key}: {what} = {rec[what]:.3g} > {tol:.3g} (rank {rec['rank']})")
        if rec.get("dtype_ok") is False:
            bad.append(f"{key}: result or gradient dtype differs from the input's")
    assert _keys(results, part), part
    assert not bad, "\n".join(bad)


def test_float32_within_single_process_error(results: dict[str, dict[str, Any]]) -> None:
    """In float32 the distributed loss is no less accurate than torch's own float32 loss
    (both measured against the float64 reference), up to a couple of ulp."""
    eps32 = float(np.finfo(np.float32).eps)
    checked = 0
    for key in _keys(results, "logits/"):
        rec = results[key]
        if rec["dtype"] == "float32" and not math.isnan(rec["sp_err"]):
            checked += 1
            assert rec["value_err"] <= 2 * rec["sp_err"] + 4 * eps32, (key, rec)
    assert checked > 50


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
