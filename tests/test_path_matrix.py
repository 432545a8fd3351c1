"""The path matrix: every path of the categorical cross-entropy against the one exact core.

Paths (all reached through the public API): the NumPy functions on the ``numpy`` and
``numba`` backends; ``crossentropy.torch.cross_entropy`` on its CPU kernel (``impl="cpu"``)
and its pure-torch reference (``impl="torch"``), with index and probability targets, N-D
``(N, C, d1)`` and unbatched ``(C,)`` inputs; ``linear_cross_entropy`` by token chunks and by
vocabulary slices; the vocabulary-parallel loss on 1-, 2- and 3-rank gloo groups with
uneven shards; the Triton kernels in the interpreter.

Options: class weights, ignore_index, label smoothing, z-loss, soft cap, each reduction,
base -- in float32 and float64.  The data hold confident rows (losses below 1e-15), ties,
-inf logits and an all-ignored batch.

The oracle is :func:`crossentropy._core.categorical.logits_rows` on the same numbers in
float64 (for float32 inputs: rounded once to float32, which is within half an ulp of the
truth).  Bounds (the core's): per-sample loss <= 4 ulp in float64, <= 1 ulp in float32 (the
Triton kernels, which compute in float32: <= 4 ulp); gradients elementwise within the same
ulp bounds of the entry, or within that many ulp of the row's largest entry for entries
far smaller than it (a gradient row is a difference p - t: its small entries carry the
absolute error of the large ones).  With a soft cap the paths compute tanh with different
libraries, and the rounding of z = c tanh(x/c) itself (half an ulp of |z| <= c) moves
softmax(z) by up to |z| ulps relative: the loss is judged with ``8 eps max|z|`` absolute
added to its ulp bound, and the gradient with ``2 max|z|`` ulps added (this is the
problem's conditioning, which no path can beat without carrying z in double-double).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from crossentropy._core import categorical as core_ce
from crossentropy._core.reduce import Reduction, reduce

torch = pytest.importorskip("torch")
import crossentropy.torch as cet  # noqa: E402

C = 11


def _data(dtype: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of logits: normal ones, confident ones (target far above the rest), ties,
    -inf entries (never at the target), and their index targets (two rows ignored)."""
    rng = np.random.default_rng(seed)
    n = 24
    x = rng.normal(scale=4.0, size=(n, C))
    y = rng.integers(0, C, size=n)
    for i in range(0, 6):  # confident: margins of 30..45, losses ~1e-13..1e-20
        x[i] = rng.normal(size=C)
        x[i, y[i]] = 30.0 + 3 * i
    x[6, :] = 2.5  # a row of ties
    x[7, [1, 4]] = 9.0  # two tied maxima
    y[7] = 4
    x[8, (y[8] + 1) % C] = -np.inf  # -inf away from the target
    x[9, :5] = -np.inf
    y[9] = 7
    y[10] = -100
    y[11] = -100
    return x.astype(dtype), y


@dataclass(frozen=True)
class Case:
    name: str
    weight: bool = False
    smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    base: float | None = None


CASES = [
    Case("plain"),
    Case("weight", weight=True),
    Case("smoothing", smoothing=0.1),
    Case("weight+smoothing", weight=True, smoothing=0.2),
    Case("z_loss", z_loss=1e-3),
    Case("softcap", softcap=15.0),
    Case("bits", base=2.0),
]


def _weight() -> np.ndarray:
    return np.linspace(0.5, 2.0, C)


def _oracle(x: np.ndarray, y: np.ndarray, case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample loss (nats -> base) and per-row gradient, float64, from the core."""
    counted = y != -100
    t = core_ce.Target(counted=counted, labels=np.where(counted, y, 0))
    w = _weight() if case.weight else None
    loss, _, g = core_ce.logits_rows(
        x.astype(np.float64), t, w, label_smoothing=case.smoothing, z_loss=case.z_loss,
        cap=case.softcap, want_grad=True,
    )
    scale = 1.0 if case.base is None else 1.0 / math.log(case.base)
    assert g is not None
    return loss * scale, g * scale


def _ulps(got: np.ndarray, ref64: np.ndarray, dtype: Any, slack: np.ndarray | float = 0.0
          ) -> np.ndarray:
    """|got - ref| in ulps of the reference rounded to `dtype` (specials must be equal).

    `slack` (absolute) is subtracted first: the conditioning allowance of soft-cap cases.
    """
    got = np.asarray(got, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        r = ref64.astype(dtype).astype(np.float64)
        special = ~np.isfinite(ref64) | ~np.isfinite(got)
        same = (got == ref64) | (np.isnan(got) & np.isnan(ref64))
        sp = np.spacing(np.abs(r).astype(dtype)).astype(np.float64)
        err = np.maximum(np.abs(got - ref64) - slack, 0.0) / sp
    return np.where(special, np.where(same, 0.0, np.inf), err)


def _grad_ulps(got: np.ndarray, ref: np.ndarray, dtype: Any) -> np.ndarray:
    """Elementwise ulps, measured against max(|entry|, |row max| eps-scaled) as described
    in the module docstring."""
    e = _ulps(got, ref, dtype)
    with np.errstate(invalid="ignore"):
        rowmax = np.max(np.where(np.isfinite(ref), np.abs(ref), 0.0), axis=-1, keepdims=True)
        sp_row = np.spacing(rowmax.astype(dtype)).astype(np.float64)
        e_row = np.abs(np.asarray(got, np.float64) - ref) / np.where(sp_row > 0, sp_row, 1.0)
    fin = np.isfinite(ref) & np.isfinite(got)
    return np.where(fin, np.minimum(e, e_row), e)


def _matmul_slack(h: np.ndarray, w: np.ndarray, b: np.ndarray, gz: np.ndarray
                  ) -> np.ndarray:
    """The allowance (absolute, per row) for the logits' own rounding: two matmuls of the
    same inputs (the oracle's NumPy one in float64 and torch's, chunked) may round
    differently.  Each logit h.w_c + b_c of d products is within gamma_{d+1} sum |terms| of
    the exact one (gamma_n = n u / (1 - n u), u = 2^-53), so two of them differ by at most
    twice that, which moves the loss by sum_c |dloss/dz_c| |dz_c| to first order.  (On an
    AVX-512 Xeon the two matmuls agreed; on an AVX2 Zen 3 they differ by up to 11 ulp of a
    logit, which a confident row's small loss turned into 14 of its own ulps.)"""
    n = h.shape[1] + 1
    u = 2.0**-53
    gamma = n * u / (1.0 - n * u)
    terms = np.abs(h.astype(np.float64)) @ np.abs(w.astype(np.float64)).T
    terms = terms + np.abs(b.astype(np.float64))
    g = np.where(np.isfinite(gz), np.abs(gz), 0.0)
    return np.asarray(np.sum(g * 2.0 * gamma * terms, axis=-1))


def _bounds(dtype: Any) -> float:
    return 4.0 if dtype == np.float64 else 1.0


def _grad_bound(dtype: Any, case: Case) -> float:
    """The gradient bound: the core's, plus the soft cap's conditioning (module notes)."""
    extra = 2.0 * case.softcap if case.softcap and np.dtype(dtype) == np.float64 else 0.0
    return _bounds(dtype) + extra


def _slack(x: np.ndarray, case: Case, working: Any = np.float64,
           y: np.ndarray | None = None) -> np.ndarray | float:
    """The soft cap's conditioning allowance (absolute, per row).

    z = c tanh(x/c) is rounded in the precision it is held in (float64 on the CPU paths,
    float32 in the Triton kernels): |dz_c| <= eps |z_c|, which moves the loss by
    sum_c |dloss/dz_c| |z_c| eps to first order.  The allowance is 8 times that, with the
    gradient with respect to z taken from the core (so a confident row, whose gradient is
    tiny, gets a tiny allowance).
    """
    if case.softcap is None:
        return 0.0
    z = case.softcap * np.tanh(x.astype(np.float64) / case.softcap)
    yy = _data(np.float64)[1] if y is None else y
    counted = yy != -100
    t = core_ce.Target(counted=counted, labels=np.where(counted, yy, 0))
    w = _weight() if case.weight else None
    _, _, gz = core_ce.logits_rows(z, t, w, label_smoothing=case.smoothing,
                                   z_loss=case.z_loss, want_grad=True)
    assert gz is not None
    zf = np.where(np.isfinite(z), np.abs(z), 0.0)
    cond = np.sum(np.where(np.isfinite(gz), np.abs(gz), 0.0) * zf, axis=-1)
    scale = 1.0 if case.base is None else 1.0 / math.log(case.base)
    return 8.0 * float(np.finfo(working).eps) * cond * scale


# --------------------------------------------------------------------------- NumPy paths


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_numpy_paths(backend: str, dtype: Any, case: Case) -> None:
    import crossentropy as ce

    x, y = _data(dtype)
    ref, gref = _oracle(x, y, case)
    with ce.use_backend(backend):
        loss, g = ce.cross_entropy(
            x, y, weight=_weight() if case.weight else None, label_smoothing=case.smoothing,
            z_loss=case.z_loss, softcap=case.softcap, base=case.base, reduction="none",
            return_grad=True,
        )
    assert np.max(_ulps(loss, ref, dtype, _slack(x, case))) <= _bounds(dtype)
    assert np.max(_grad_ulps(g, gref, dtype)) <= _grad_bound(dtype, case)


# --------------------------------------------------------------------------- torch paths


def _torch_call(x: np.ndarray, y: np.ndarray, case: Case, impl: str, *, prob: bool,
                layout: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample loss and gradient (of the summed loss) through crossentropy.torch."""
    xt = torch.tensor(x, requires_grad=True)
    w = torch.tensor(_weight(), dtype=xt.dtype) if case.weight else None
    if prob:
        counted = y != -100
        t = torch.zeros(x.shape, dtype=xt.dtype)
        t[torch.arange(len(y))[torch.tensor(counted)], torch.tensor(y[counted])] = 1.0
        inp = xt[torch.tensor(counted)]
        t = t[torch.tensor(counted)]
    else:
        inp, t = xt, torch.tensor(y)
    if layout == "nd":  # (N, C) -> (N/2, C, 2): the class axis second, as torch wants
        inp = inp.reshape(-1, 2, C).transpose(1, 2)
        t = t.reshape(-1, 2) if not prob else t.reshape(-1, 2, C).transpose(1, 2)
    kw: dict[str, Any] = dict(weight=w, label_smoothing=case.smoothing, z_loss=case.z_loss,
                              softcap=case.softcap, base=case.base, reduction="none",
                              impl=impl)
    if layout == "unbatched":
        rows = [cet.cross_entropy(inp[i], t[i], **kw) for i in range(inp.shape[0])]
        loss = torch.stack(rows)
    else:
        loss = cet.cross_entropy(inp, t, **kw)
        if layout == "nd":
            loss = loss.reshape(-1)
    loss.sum().backward()
    assert xt.grad is not None
    lv = loss.detach().numpy()
    g = xt.grad.numpy()
    if prob:
        full = np.zeros(len(y))
        full[y != -100] = lv
        lv = full
    return lv, g


TORCH_PATHS = [
    ("cpu", False, "2d"), ("torch", False, "2d"), ("cpu", True, "2d"), ("torch", True, "2d"),
    ("cpu", False, "nd"), ("torch", True, "nd"), ("cpu", False, "unbatched"),
    ("torch", True, "unbatched"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("impl, prob, layout", TORCH_PATHS,
                         ids=[f"{i}-{'prob' if p else 'index'}-{lay}"
                              for i, p, lay in TORCH_PATHS])
def test_torch_paths(impl: str, prob: bool, layout: str, dtype: Any, case: Case) -> None:
    x, y = _data(dtype)
    if prob:
        x = np.where(np.isinf(x), -30.0, x).astype(dtype)  # probability rows, no -inf rows
    ref, gref = _oracle(x, y, case)
    loss, g = _torch_call(x, y, case, impl, prob=prob, layout=layout)
    counted = y != -100
    assert np.max(_ulps(loss[counted], ref[counted], dtype,
                        _slack(x, case)[counted] if case.softcap else 0.0)) <= _bounds(dtype)
    assert np.all(loss[~counted] == 0.0)
    assert np.max(_grad_ulps(g, gref, dtype)) <= _grad_bound(dtype, case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("red", ["mean", "sum"])
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_torch_reductions_against_the_core(impl: str, red: str, dtype: Any) -> None:
    x, y = _data(dtype)
    case = Case("weight+smoothing", weight=True, smoothing=0.2)
    loss_rows, _ = _oracle(x, y, case)
    counted = y != -100
    omega = np.where(counted, _weight()[np.where(counted, y, 0)], 0.0)
    want = reduce(loss_rows, omega, Reduction(red), 1.0, empty_mean=math.nan).value
    got = cet.cross_entropy(torch.tensor(x), torch.tensor(y),
                            weight=torch.tensor(_weight(), dtype=torch.tensor(x).dtype),
                            label_smoothing=0.2, reduction=red, impl=impl)
    assert float(got) == pytest.approx(float(want), rel=8 * float(np.finfo(dtype).eps))


@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_all_ignored_mean_is_nan_with_zero_gradient(impl: str) -> None:
    xt = torch.randn(4, C, dtype=torch.float64, requires_grad=True)
    loss = cet.cross_entropy(xt, torch.full((4,), -100), impl=impl)
    assert math.isnan(float(loss.detach()))  # torch semantics (the NumPy core gives 0.0)
    loss.backward()
    assert xt.grad is not None and torch.all(xt.grad == 0)


# --------------------------------------------------------------------------- linear


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("plan", ["tokens", "vocab"])
def test_linear_paths(plan: str, dtype: Any, case: Case) -> None:
    rng = np.random.default_rng(1)
    n, d = 20, 6
    h = rng.normal(size=(n, d)).astype(dtype)
    w = rng.normal(scale=2.0, size=(C, d)).astype(dtype)
    b = rng.normal(size=C).astype(dtype)
    y = rng.integers(0, C, size=n)
    y[3] = -100
    w[y[0]] *= 0  # a row whose target logit is the bias alone
    h[1] = 8.0 * w[y[1]] / np.linalg.norm(w[y[1]])  # a confident row
    logits = h.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
    ref, gz = _oracle(logits, y, case)
    ht = torch.tensor(h, requires_grad=True)
    wt = torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True)
    chunks = cet.ChunkPlan(rows=7) if plan == "tokens" else cet.ChunkPlan(rows=7, vocab=4)
    loss = cet.linear_cross_entropy(
        ht, wt, torch.tensor(y), linear_bias=bt, ignore_index=-100,
        weight=torch.tensor(_weight(), dtype=ht.dtype) if case.weight else None,
        label_smoothing=case.smoothing, z_loss=case.z_loss, softcap=case.softcap,
        base=case.base, reduction="none", chunks=chunks,
    )
    loss.sum().backward()
    counted = y != -100
    # the logits themselves are a float64 (or float32) matmul: the oracle takes them from
    # float64, so float32 inputs are judged against the logits' own rounding too
    bound = _bounds(dtype) if dtype == np.float64 else 64.0
    slack = _slack(logits, case, y=y) + _matmul_slack(h, w, b, gz)
    err = _ulps(loss.detach().numpy()[counted], ref[counted], dtype, slack[counted])
    assert np.max(err) <= bound
    # gradients through the chain rule: d/dh = G W, d/dW = G^T h, d/db = sum G
    gh = gz @ w.astype(np.float64)
    gw = gz.T @ h.astype(np.float64)
    gb = gz.sum(0)
    tol = 1e-12 if dtype == np.float64 else 1e-4
    for got, want in ((ht.grad, gh), (wt.grad, gw), (bt.grad, gb)):
        assert got is not None
        np.testing.assert_allclose(got.numpy(), want, rtol=tol, atol=tol * np.abs(want).max())


# --------------------------------------------------------------------------- distributed

_SHARDS = {1: [C], 2: [7, C - 7], 3: [5, 0, C - 5]}  # uneven, one rank with no classes


def _dist_worker(rank: int, world: int, port: int, outdir: str) -> None:
    """Every case on groups of 1, 2 and 3 ranks; rank 0 of each writes the errors."""
    import json
    import os

    import torch.distributed as dist

    import crossentropy.torch.distributed as ctd

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    groups = {1: dist.new_group([0]), 2: dist.new_group([0, 1]), 3: None}
    errors: dict[str, float] = {}
    for P, group in groups.items():
        if rank < P:
            sizes = _SHARDS[P]
            start = sum(sizes[:rank])
            for dtype in (np.float32, np.float64):
                x, y = _data(dtype)
                for case in CASES:
                    ref, gref = _oracle(x, y, case)
                    xs = torch.tensor(x[:, start : start + sizes[rank]], requires_grad=True)
                    loss = ctd.cross_entropy(
                        xs, torch.tensor(y), group=group,
                        weight=torch.tensor(_weight(), dtype=xs.dtype) if case.weight else None,
                        label_smoothing=case.smoothing, z_loss=case.z_loss,
                        softcap=case.softcap, base=case.base, reduction="none",
                    )
                    loss.sum().backward()
                    assert xs.grad is not None
                    # gloo gathers equal sizes: pad each shard to the widest, then trim
                    wide = max(sizes)
                    pad = torch.zeros(len(y), wide, dtype=xs.dtype)
                    pad[:, : sizes[rank]] = xs.grad
                    parts = [torch.zeros(len(y), wide, dtype=xs.dtype) for _ in sizes]
                    dist.all_gather(parts, pad, group=group)
                    g = torch.cat([p[:, :n] for p, n in zip(parts, sizes, strict=True)],
                                  dim=1).numpy()
                    key = f"P{P}/{np.dtype(dtype).name}/{case.name}"
                    counted = y != -100
                    slack = _slack(x, case)
                    lv = _ulps(loss.detach().numpy()[counted], ref[counted], dtype,
                               slack[counted] if case.softcap else 0.0)
                    errors[key + "/loss"] = float(np.max(lv))
                    errors[key + "/grad"] = float(np.max(_grad_ulps(g, gref, dtype)))
        dist.barrier()
    if rank == 0:
        with open(os.path.join(outdir, "errors.json"), "w") as f:
            json.dump(errors, f)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def dist_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    import json
    import socket

    import torch.multiprocessing as mp

    outdir = tmp_path_factory.mktemp("matrix")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.start_processes(_dist_worker, args=(3, port, str(outdir)), nprocs=3, join=True,
                       start_method="spawn")
    with open(outdir / "errors.json") as f:
        return dict(json.load(f))


@pytest.mark.parametrize("P", [1, 2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_distributed_paths(dist_errors: dict[str, float], P: int, dtype: str, case: Case
                           ) -> None:
    key = f"P{P}/{dtype}/{case.name}"
    bound = _bounds(np.dtype(dtype))
    assert dist_errors[key + "/loss"] <= bound, dist_errors[key + "/loss"]
    assert dist_errors[key + "/grad"] <= _grad_bound(np.dtype(dtype), case), (
        dist_errors[key + "/grad"])


# --------------------------------------------------------------------------- Triton

_TRITON_SCRIPT = r"""
import json, os, sys
import numpy as np
import torch
sys.path.insert(0, os.environ["MATRIX_TESTS"])
import test_path_matrix as m
import crossentropy.torch as cet
out = {}
x, y = m._data(np.float32)
x = x[:, :]
for case in m.CASES:
    ref, gref = m._oracle(x, y, case)
    for prob in (False, True):
        xs = x if not prob else np.where(np.isinf(x), -30.0, x).astype(np.float32)
        if prob:
            ref, gref = m._oracle(xs, y, case)
        xt = torch.tensor(xs, requires_grad=True)
        w = torch.tensor(m._weight(), dtype=torch.float32) if case.weight else None
        counted = y != -100
        if prob:
            t = torch.zeros(xs.shape)
            t[torch.arange(len(y))[torch.tensor(counted)], torch.tensor(y[counted])] = 1.0
            inp, tt = xt[torch.tensor(counted)], t[torch.tensor(counted)]
        else:
            inp, tt = xt, torch.tensor(y)
        loss = cet.cross_entropy(inp, tt, weight=w, label_smoothing=case.smoothing,
                                 z_loss=case.z_loss, softcap=case.softcap, base=case.base,
                                 reduction="none", impl="triton")
        loss.sum().backward()
        lv = loss.detach().numpy().astype(np.float64)
        if prob:
            full = np.zeros(len(y)); full[counted] = lv; lv = full
        slack = m._slack(xs, case, np.float32)  # the kernels hold z in float32
        key = f"{case.name}/{'prob' if prob else 'index'}"
        out[key + "/loss"] = float(np.max(m._ulps(lv[counted], ref[counted], np.float32,
                                   slack[counted] if case.softcap else 0.0)))
        out[key + "/grad"] = float(np.max(m._grad_ulps(xt.grad.numpy(), gref, np.float32)))
# the fused linear loss: logits formed in float32 tiles, so judged like the CPU linear path
rng = np.random.default_rng(1)
h = rng.normal(size=(20, 6)).astype(np.float32)
W = rng.normal(scale=2.0, size=(m.C, 6)).astype(np.float32)
b = rng.normal(size=m.C).astype(np.float32)
yl = rng.integers(0, m.C, size=20)
yl[3] = -100
h[1] = 8.0 * W[yl[1]] / np.linalg.norm(W[yl[1]])  # a confident row
z64 = h.astype(np.float64) @ W.astype(np.float64).T + b.astype(np.float64)
for case in m.CASES:
    ref, gz = m._oracle(z64, yl, case)
    ht = torch.tensor(h, requires_grad=True)
    Wt = torch.tensor(W, requires_grad=True)
    w = torch.tensor(m._weight(), dtype=torch.float32) if case.weight else None
    loss = cet.linear_cross_entropy(ht, Wt, torch.tensor(yl), linear_bias=torch.tensor(b),
                                    ignore_index=-100, weight=w, label_smoothing=case.smoothing,
                                    z_loss=case.z_loss, softcap=case.softcap, base=case.base,
                                    reduction="none", impl="triton")
    loss.sum().backward()
    c = yl != -100
    out[f"linear/{case.name}/loss"] = float(np.max(m._ulps(
        loss.detach().numpy().astype(np.float64)[c], ref[c], np.float32,
        m._slack(z64, case, np.float32, y=yl)[c] if case.softcap else 0.0)))
    gh, gw = gz @ W.astype(np.float64), gz.T @ h.astype(np.float64)
    out[f"linear/{case.name}/grad"] = float(max(
        np.max(np.abs(ht.grad.numpy() - gh)) / np.abs(gh).max(),
        np.max(np.abs(Wt.grad.numpy() - gw)) / np.abs(gw).max()))
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def triton_errors() -> dict[str, float]:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1",
           "MATRIX_TESTS": str(Path(__file__).resolve().parent)}
    res = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], capture_output=True,
                         text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("target", ["index", "prob"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_triton_paths(triton_errors: dict[str, float], case: Case, target: str) -> None:
    """float32 in the interpreter: <= 4 ulp (the kernels compute in float32); under a soft
    cap the allowances of the module notes, with z held in float32."""
    key = f"{case.name}/{target}"
    extra = 2.0 * case.softcap if case.softcap else 0.0
    assert triton_errors[key + "/loss"] <= 4.0, triton_errors[key + "/loss"]
    assert triton_errors[key + "/grad"] <= 4.0 + extra, triton_errors[key + "/grad"]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_triton_linear_paths(triton_errors: dict[str, float], case: Case) -> None:
    """The fused linear kernels: the loss within the float32 logits' own rounding (as the
    CPU linear path, 64 ulp), the gradients of h and W to 1e-4 of their largest entry."""
    assert triton_errors[f"linear/{case.name}/loss"] <= 64.0
    assert triton_errors[f"linear/{case.name}/grad"] <= 1e-4


# --------------------------------------------------------------------------- token statistics
#
# The per-token outputs of ``linear_token_stats`` / ``token_stats`` (log-probability of the
# target, log-sum-exp, entropy, top-k log-probabilities and indices) and their gradients,
# against mpmath at 80 digits on the matrix's rows (confident rows, ties, -inf logits,
# ignored targets), through the logits and through hidden states, by token chunks and by
# vocabulary slices.  Bounds: float64 within 4 ulp (plus, under a soft cap or a
# temperature, the rounding of z' = softcap(z) / tau in float64: 2 eps sum_c |d out / dz'_c|
# |z'_c| absolute, the problem's conditioning, from mpmath); float32 logits are exact
# in float64, so their outputs are within 1 ulp; through float32 hidden states the logits'
# own rounding dominates (as in test_linear_paths): rtol 1e-5 of the output's scale.


@dataclass(frozen=True)
class StatsCase:
    name: str
    temperature: float = 1.0
    softcap: float | None = None
    base: float | None = None


STATS_CASES = [StatsCase("plain"), StatsCase("temperature", temperature=0.7),
               StatsCase("softcap+temperature", temperature=1.3, softcap=15.0),
               StatsCase("bits", base=2.0)]
TOP = 3


def _mp_stats(z64: np.ndarray, y: np.ndarray, case: StatsCase) -> dict[str, np.ndarray]:
    """mpmath (80 digits: log p of a confident row, -1e-28, is the difference of two
    numbers near 64) per row: log p_y, lse, entropy, the top-k log-probabilities in index
    order of ties, and the gradients d log p_y / dz, d H / dz (with respect to the logits
    before the soft cap and temperature; the soft cap takes -inf to -c)."""
    import mpmath as mp

    mp.mp.dps = 80
    n, c = z64.shape
    out = {k: np.zeros(n) for k in ("lp", "lse", "ent", "cond_lp", "cond_lse", "cond_ent")}
    out["top"] = np.zeros((n, TOP))
    out["cond_top"] = np.zeros((n, TOP))
    out["top_i"] = np.zeros((n, TOP), dtype=np.int64)
    out["g_lp"] = np.zeros((n, c))
    out["g_ent"] = np.zeros((n, c))
    tau = mp.mpf(case.temperature)
    for i in range(n):
        zs, dz = [], []
        for v in z64[i]:
            if case.softcap is not None:
                u = mp.mpf(float(v)) / case.softcap
                zs.append(case.softcap * mp.tanh(u) / tau)
                dz.append(mp.sech(u) ** 2 / tau if np.isfinite(v) else mp.mpf(0))
            else:
                zs.append(mp.mpf(float(v)) / tau if np.isfinite(v) else mp.mpf(float(v)))
                dz.append(1 / tau)
        fin = [zz for zz in zs if zz != mp.ninf]
        lse = mp.log(mp.fsum(mp.exp(zz) for zz in fin))
        p = [mp.exp(zz - lse) if zz != mp.ninf else mp.mpf(0) for zz in zs]
        mean = mp.fsum(pc * zz for pc, zz in zip(p, zs, strict=True) if pc != 0)
        out["lse"][i] = float(lse)
        out["ent"][i] = float(mp.fsum(-pc * (zz - lse) for pc, zz in zip(p, zs, strict=True)
                                      if pc != 0))
        # conditioning: sum_c |d out / dz'_c| |z'_c| (what rounding each z'_c to half an
        # ulp can move the output by, over eps / 2)
        az = [abs(zz) if zz != mp.ninf else mp.mpf(0) for zz in zs]

        def cond(i_: int, p: list[Any] = p, az: list[Any] = az) -> float:
            return float(mp.fsum(abs((1 if j == i_ else 0) - p[j]) * az[j] for j in range(c)))

        out["cond_lse"][i] = float(mp.fsum(pc * a for pc, a in zip(p, az, strict=True)))
        out["cond_ent"][i] = float(mp.fsum(abs(p[j] * (zs[j] - mean)) * az[j]
                                           for j in range(c) if p[j] != 0))
        if y[i] != -100:
            out["lp"][i] = float(zs[y[i]] - lse)
            out["g_lp"][i] = [float(((1 if j == y[i] else 0) - p[j]) * dz[j]) for j in range(c)]
            out["cond_lp"][i] = cond(int(y[i]))
        out["g_ent"][i] = [float(-p[j] * (zs[j] - mean) * dz[j]) if p[j] != 0 else 0.0
                           for j in range(c)]
        order = sorted(range(c), key=lambda j: (-zs[j], j))[:TOP]  # ties: lower index first
        out["top_i"][i] = order
        out["top"][i] = [float(zs[j] - lse) for j in order]
        out["cond_top"][i] = [cond(j) for j in order]
    scale = 1.0 if case.base is None else 1.0 / math.log(case.base)
    for k in ("lp", "lse", "ent", "top", "g_lp", "g_ent", "cond_lp", "cond_lse", "cond_ent",
              "cond_top"):
        out[k] = out[k] * scale
    return out


def _stats_inputs(dtype: Any, source: str) -> tuple[Any, ...]:
    """(logits float64 for the oracle, the tensors the call takes, targets)."""
    x, y = _data(np.float64)
    if source == "logits":
        xt = x.astype(dtype)
        return xt.astype(np.float64), (torch.tensor(xt, requires_grad=True),), y
    # hidden states whose logits are the matrix's rows (finite ones) plus a column of ones
    # for the bias: W = I (C x C), h = x with -inf replaced by -60 (e^-60 ~ 0 next to 30)
    xf = np.where(np.isfinite(x), x, -60.0).astype(dtype)
    w = np.eye(C, dtype=dtype)
    b = np.linspace(-0.5, 0.5, C).astype(dtype)
    z64 = xf.astype(np.float64) + b.astype(np.float64)
    return z64, (torch.tensor(xf, requires_grad=True), torch.tensor(w, requires_grad=True),
                 torch.tensor(b, requires_grad=True)), y


@pytest.mark.parametrize("case", STATS_CASES, ids=[c.name for c in STATS_CASES])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("plan", ["tokens", "vocab"])
@pytest.mark.parametrize("source", ["logits", "linear"])
def test_token_stats_paths(source: str, plan: str, dtype: Any, case: StatsCase) -> None:
    z64, tensors, y = _stats_inputs(dtype, source)
    ref = _mp_stats(z64, y, case)
    chunks = cet.ChunkPlan(rows=7) if plan == "tokens" else cet.ChunkPlan(rows=7, vocab=4)
    kw: dict[str, Any] = dict(return_logprobs=True, return_entropy=True, return_lse=True,
                              top_k=TOP, temperature=case.temperature, softcap=case.softcap,
                              base=case.base, reduction="none", chunks=chunks)
    yt = torch.tensor(y)
    if source == "logits":
        out = cet.token_stats(tensors[0], yt, **kw)
    else:
        out = cet.linear_token_stats(tensors[0], tensors[1], yt, linear_bias=tensors[2], **kw)
    counted = y != -100
    transformed = case.softcap is not None or case.temperature != 1.0
    allow = 2.0 * float(np.finfo(np.float64).eps) if transformed else 0.0
    got = {"lp": out.logprobs, "lse": out.lse, "ent": out.entropy, "top": out.top_k_logprobs}
    for k, g in got.items():
        assert g is not None
        gn = g.detach().numpy().astype(np.float64)
        want = ref[k]
        rows = counted if k == "lp" else np.ones(len(y), dtype=bool)
        if source == "linear" and dtype == np.float32:
            scale = np.maximum(np.abs(want[rows]), 1.0)
            np.testing.assert_allclose(gn[rows], want[rows], rtol=0,
                                       atol=1e-5 * float(np.max(scale)), err_msg=k)
            continue
        err = _ulps(gn[rows], want[rows], dtype, allow * ref["cond_" + k][rows])
        assert np.max(err) <= (4.0 if dtype == np.float64 else 1.0), (k, np.max(err))
    # top-k indices: exact, ties in index order (the row of ties, the two tied maxima)
    assert out.top_k_indices is not None
    np.testing.assert_array_equal(out.top_k_indices.numpy(), ref["top_i"])
    assert float(out.logprobs.detach()[~torch.tensor(counted)].abs().max()) == 0.0  # ignored


@pytest.mark.parametrize("case", STATS_CASES, ids=[c.name for c in STATS_CASES])
@pytest.mark.parametrize("plan", ["tokens", "vocab"])
def test_token_stats_gradients(plan: str, case: StatsCase) -> None:
    """d/dz of sum_i (a_i log p_{y_i} + b_i H_i) against mpmath's, float64, through the
    logits: within 1e-13 of the row's largest entry (plus the conditioning allowance of a
    transformed row, 16 eps max|z'| times the row's largest derivative)."""
    z64, (xt,), y = _stats_inputs(np.float64, "logits")
    ref = _mp_stats(z64, y, case)
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=len(y)), rng.normal(size=len(y))
    chunks = cet.ChunkPlan(rows=7) if plan == "tokens" else cet.ChunkPlan(rows=7, vocab=4)
    out = cet.token_stats(xt, torch.tensor(y), return_logprobs=True, return_entropy=True,
                          temperature=case.temperature, softcap=case.softcap, base=case.base,
                          chunks=chunks, reduction="none")
    assert out.logprobs is not None and out.entropy is not None
    obj = (out.logprobs * torch.tensor(a)).sum() + (out.entropy * torch.tensor(b)).sum()
    obj.backward()
    want = a[:, None] * ref["g_lp"] + b[:, None] * ref["g_ent"]
    assert xt.grad is not None
    got = xt.grad.numpy()
    fin = np.isfinite(z64)
    assert np.all(got[~fin] == 0.0)  # -inf logits: probability 0, derivative 0
    rowmax = np.max(np.abs(want), axis=1, keepdims=True)
    zp = np.where(fin, np.abs(z64), 0.0).max(axis=1, keepdims=True) / case.temperature
    tol = 1e-13 + (16 * 2.0**-52 * zp if case.softcap or case.temperature != 1.0 else 0.0)
    assert np.all(np.abs(got - want)[fin] <= (tol * np.maximum(rowmax, 1e-300))
                  .repeat(C, axis=1)[fin] + 1e-300)
