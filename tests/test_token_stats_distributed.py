"""Token statistics on the vocabulary-parallel group (crossentropy.torch.distributed):
``token_stats`` / ``linear_token_stats`` against the single-process functions.

One group of 3 CPU processes (gloo on 127.0.0.1, a free port, a hard time limit; spawned
once for the module, as ``tests/test_distributed.py``) runs every case on a 2-rank
subgroup and on the 3-rank world, with uneven shards (one layout with an empty shard),
float64 and float32, the logits and the linear source.  The workers only *compute* and
save what each rank got (every output, and the gradients of the loss, of the
log-probabilities, of the entropy and of the top-k log-probabilities with respect to the
hidden states, this rank's weight and bias shards, or its logits shard); the parent builds
the same data in one process and compares with the single-process exact engine
(:func:`crossentropy.torch.token_stats` / :func:`crossentropy.torch.linear_token_stats`
on the whole vocabulary, which ``tests/test_token_stats.py`` and
``tests/test_path_matrix.py`` hold to mpmath and the float64 core).

Tolerances: float64 within 1e-14 relative (per element for the per-token outputs, which
are sums of terms of one sign; per tensor, against its largest entry, for the gradients,
whose entries may cancel), float32 within 2e-6; the merge order differs (the ranks' partial
statistics are merged by ``merge_stacked``), so equality is not bitwise.  Measured worst
(2026-12-08): float64 outputs 1.3e-15, gradients 1.2e-15; float32 5.3e-7 and 4.5e-7.  Top-k indices,
predicted tokens and the token accuracy exactly; every output bitwise identical on every
rank.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import traceback
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import crossentropy.torch as cet
from crossentropy.torch import ChunkPlan
from crossentropy.torch import distributed as vp

WORLD = 3
TIME_LIMIT = 150.0  # seconds for the whole spawned group
V = 61  # whole vocabulary (LAYOUTS cut it at 25 and 45, or 40; 20 and 41)
N = 11
D = 5
# uneven shards per group size; one layout with an empty shard
LAYOUTS = {2: [[40, 21]], 3: [[25, 0, 36], [20, 21, 20]]}
DTYPES = {"float64": torch.float64, "float32": torch.float32}
SOURCES = ("logits", "linear")
TOL = {"float64": 1e-14, "float32": 2e-6}
GRADS = ("loss", "logprobs", "entropy", "top_k_logprobs")

#: The option sets: the keywords of both calls, and which data.
CASES: dict[str, dict[str, Any]] = {
    # every output, no options, a confident row
    "plain": {"return_lse": True, "return_logprobs": True, "return_entropy": True,
              "return_predicted_tokens": True, "return_token_accuracy": True, "top_k": 3},
    # every option at once; vocabulary slices and token chunks inside each rank
    "everything": {"return_lse": True, "return_logprobs": True, "return_entropy": True,
                   "return_token_accuracy": True, "return_z_loss": True, "top_k": 4,
                   "temperature": 0.7, "softcap": 8.0, "label_smoothing": 0.1,
                   "z_loss": 1e-3, "weight": True, "sample_weight": True, "base": 2,
                   "ignore": True, "chunks": ChunkPlan(rows=4, vocab=7)},
    # integer logits: ties across the shards (top-k of the whole vocabulary, argmax)
    "ties": {"return_logprobs": True, "return_entropy": True,
             "return_predicted_tokens": True, "top_k": V, "reduction": "sum",
             "normalizer": 7.0, "shift": 1, "integer": True},
    # no targets: the target-free outputs
    "no_target": {"return_loss": False, "return_lse": True, "return_entropy": True,
                  "return_predicted_tokens": True, "top_k": 2, "no_target": True,
                  "temperature": 1.3},
    # +-inf logits: +inf in two shards share the mass, a shard of all -inf, a row of all
    # -inf (NaN), a -inf target (log p = -inf); logits only
    "specials": {"return_lse": True, "return_logprobs": True, "return_entropy": True,
                 "return_predicted_tokens": True, "top_k": 3, "reduction": "none",
                 "specials": True},
    # the argmax without top-k, ties, class weights and label smoothing, 'none'
    "argmax_only": {"return_logprobs": True, "return_predicted_tokens": True,
                    "return_token_accuracy": True, "reduction": "none", "weight": True,
                    "label_smoothing": 0.2, "integer": True, "ignore": True},
}
_DATA_KEYS = ("weight", "sample_weight", "ignore", "integer", "no_target", "specials")


def _seed(case: str, source: str, dname: str) -> int:
    return (sorted(CASES).index(case) * 7 + SOURCES.index(source) * 3
            + list(DTYPES).index(dname)) + 101


def _sources(case: str) -> tuple[str, ...]:
    return ("logits",) if CASES[case].get("specials") else SOURCES


def _data(case: str, source: str, dname: str) -> dict[str, Any]:
    """The whole problem (every rank builds the same and takes its shard)."""
    o, dt = CASES[case], DTYPES[dname]
    g = torch.Generator().manual_seed(_seed(case, source, dname))
    rows = (1, N) if o.get("shift") else (N,)
    if o.get("integer"):  # small integers: exact logits, many ties
        h = torch.randint(-1, 2, (*rows, D), generator=g).to(torch.float64)
        W = torch.randint(-1, 2, (V, D), generator=g).to(torch.float64)
        b = torch.randint(-1, 2, (V,), generator=g).to(torch.float64)
        x = torch.randint(-3, 4, (*rows, V), generator=g).to(torch.float64)
    else:
        h = torch.randn(*rows, D, generator=g, dtype=torch.float64)
        W = torch.randn(V, D, generator=g, dtype=torch.float64)
        b = torch.randn(V, generator=g, dtype=torch.float64)
        x = torch.randn(*rows, V, generator=g, dtype=torch.float64) * 3.0
        x[..., 0, :] = torch.randn(V, generator=g, dtype=torch.float64)
        x[..., 0, 30] = 40.0  # a confident token (log p ~ -1e-16): its digits kept
    y = torch.randint(0, V, rows, generator=g)
    if not o.get("integer"):
        y[..., 0] = 30
    if o.get("ignore"):
        y[..., 3] = -100
        y[..., 7] = -100
    if o.get("specials"):
        x[1, 5] = x[1, 50] = math.inf  # two +inf in different shards: log p = -log 2
        y[1] = 50
        x[2, 20:46] = -math.inf  # the middle shards all -inf
        x[3] = -math.inf  # no distribution: NaN
        x[4, 7] = -math.inf  # a -inf target: log p = -inf
        y[4] = 7
    w = torch.rand(V, generator=g, dtype=torch.float64) + 0.25 if o.get("weight") else None
    sw = torch.rand(rows, generator=g, dtype=torch.float64) * 2.0 \
        if o.get("sample_weight") else None
    coef = {k: torch.rand(rows + ((o.get("top_k", 0),) if k == "top_k_logprobs" else ()),
                          generator=g, dtype=torch.float64) + 0.5 for k in GRADS}
    cast = (lambda t: None if t is None else t.to(dt))  # noqa: E731
    return {"h": cast(h), "W": cast(W), "b": cast(b), "x": cast(x), "w": cast(w),
            "sw": cast(sw), "y": None if o.get("no_target") else y, "coef": coef}


def _kwargs(case: str, d: dict[str, Any]) -> dict[str, Any]:
    kw = {k: v for k, v in CASES[case].items() if k not in _DATA_KEYS}
    if d["w"] is not None:
        kw["weight"] = d["w"]
    if d["sw"] is not None:
        kw["sample_weight"] = d["sw"]
    return kw


def _compute(fn: Any, args: tuple[Any, ...], leaves: list[torch.Tensor], case: str,
             d: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Every output of one call and the gradient of each differentiable one (a weighted
    sum with fixed coefficients) with respect to `leaves`."""
    out = fn(*args, d["y"], **_kwargs(case, d), **extra)
    res: dict[str, Any] = {f"out/{f}": (None if v is None else v.detach())
                           for f, v in out._asdict().items()}
    for name in GRADS:
        v = getattr(out, name)
        if v is None or not v.requires_grad:
            continue
        c = d["coef"][name] if v.dim() else torch.ones(())
        grads = torch.autograd.grad((v.to(torch.float64) * c.reshape(v.shape)).sum(),
                                    leaves, allow_unused=True, retain_graph=True)
        for i, gr in enumerate(grads):
            res[f"grad/{name}/{i}"] = None if gr is None else gr.detach()
    return res


# --------------------------------------------------------------------------- workers


def _shard(t: torch.Tensor, start: int, size: int, axis: int) -> torch.Tensor:
    return t.narrow(axis, start, size).detach().clone().requires_grad_(True)


def _accuracy_cases(rank: int, P: int, group: Any, raw: dict[str, Any]) -> None:
    for li, sizes in enumerate(LAYOUTS[P]):
        start, size = sum(sizes[:rank]), sizes[rank]
        for case in CASES:
            for source in _sources(case):
                for dname in DTYPES:
                    d = _data(case, source, dname)
                    if source == "logits":
                        xs = _shard(d["x"], start, size, -1)
                        res = _compute(vp.token_stats, (xs,), [xs], case, d, group=group)
                    else:
                        h = d["h"].clone().requires_grad_(True)
                        Ws, bs = _shard(d["W"], start, size, 0), _shard(d["b"], start, size, 0)
                        res = _compute(vp.linear_token_stats, (h, Ws), [h, Ws, bs], case, d,
                                       linear_bias=bs, group=group)
                    raw[f"P{P}/L{li}/{case}/{source}/{dname}"] = res


def _expect_error(out: dict[str, Any], key: str, fn: Any) -> None:
    try:
        fn()
    except Exception as exc:  # recorded and checked by the parent
        out[key] = {"type": type(exc).__name__, "msg": str(exc),
                    "mismatch": isinstance(exc, vp.ShardMismatchError)}
    else:
        out[key] = {"type": None, "msg": ""}


def _error_cases(rank: int, P: int, group: Any, out: dict[str, Any]) -> None:
    sizes = LAYOUTS[P][0]
    start, size = sum(sizes[:rank]), sizes[rank]
    d = _data("plain", "logits", "float64")
    xs = d["x"][..., start:start + size]
    y = d["y"]
    last = P - 1

    def call(**kw: Any) -> Any:
        return vp.token_stats(kw.pop("x", xs), kw.pop("y", y), group=group, **kw)

    # top_k larger than the whole vocabulary (every shard alone is smaller than it)
    _expect_error(out, f"err/P{P}/top_k", lambda: call(top_k=V + 1))
    # a different temperature / top_k / output asked / option on the last rank
    _expect_error(out, f"err/P{P}/temperature",
                  lambda: call(temperature=0.5 if rank == last else 1.0))
    _expect_error(out, f"err/P{P}/top_k_differs", lambda: call(top_k=2 if rank == last else 3))
    _expect_error(out, f"err/P{P}/entropy_differs",
                  lambda: call(return_entropy=rank == last))
    _expect_error(out, f"err/P{P}/label_smoothing",
                  lambda: call(label_smoothing=0.1 if rank == last else 0.0))
    _expect_error(out, f"err/P{P}/sample_weight_values", lambda: call(
        sample_weight=torch.ones(N, dtype=torch.float64) * (2.0 if rank == last else 1.0)))
    # a sample_weight of the wrong shape on the last rank: it names the argument
    _expect_error(out, f"err/P{P}/sample_weight_shape", lambda: call(
        sample_weight=torch.ones(N + (1 if rank == last else 0), dtype=torch.float64)))
    # the same bad shape on every rank: the same error everywhere
    _expect_error(out, f"err/P{P}/sample_weight_all",
                  lambda: call(sample_weight=torch.ones(N - 1, dtype=torch.float64)))
    # targets out of the whole vocabulary's range, class weights of the wrong length
    y2 = y.clone()
    y2[4] = V
    _expect_error(out, f"err/P{P}/target_range", lambda: call(y=y2))
    _expect_error(out, f"err/P{P}/weight_length",
                  lambda: call(weight=torch.ones(V - 1, dtype=torch.float64)))
    _expect_error(out, f"err/P{P}/collective", lambda: call(collective="all_reduce"))
    # the linear form: a bias shard of the wrong length on the last rank
    Ws = d["W"][start:start + size]
    bs = d["b"][start:start + size]
    if rank == last:
        bs = torch.cat([bs, bs.new_zeros(1)])
    _expect_error(out, f"err/P{P}/linear_bias", lambda: vp.linear_token_stats(
        d["h"], Ws, y, linear_bias=bs, group=group))
    # after all of that the group is still in step: a correct call works
    _expect_error(out, f"err/P{P}/still_in_step", lambda: call(top_k=3))
    # with check=False and shard_sizes given there is no metadata exchange
    got = vp.token_stats(xs, y, group=group, shard_sizes=sizes, check=False,
                         return_logprobs=True)
    out[f"nocheck/P{P}"] = {"logprobs": got.logprobs.tolist()}


def _worker(rank: int, world: int, port: int, outdir: str) -> None:
    torch.set_num_threads(1)  # 3 processes on a small machine: no oversubscription
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    out: dict[str, Any] = {}
    raw: dict[str, Any] = {}
    try:
        pair = dist.new_group([0, 1])  # every rank takes part in creating each group
        for P, group in ((2, pair), (3, None)):
            if rank < P:
                t0 = time.perf_counter()
                try:
                    _accuracy_cases(rank, P, group, raw)
                    _error_cases(rank, P, group, out)
                except Exception:
                    out[f"crash/P{P}"] = traceback.format_exc()
                    raise
                out[f"time/P{P}"] = time.perf_counter() - t0
            dist.barrier()
    finally:
        with open(os.path.join(outdir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
        torch.save(raw, os.path.join(outdir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def group_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the group once; every rank's records and raw results."""
    outdir = tmp_path_factory.mktemp("vp_stats")
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
    records, raw = {}, {}
    for r in range(WORLD):
        path = outdir / f"rank{r}.json"
        records[r] = json.loads(path.read_text()) if path.exists() else {}
        for key, rec in records[r].items():
            if key.startswith("crash/"):  # the original error, not a peer's lost connection
                pytest.fail(f"rank {r}: {rec}")
        pt = outdir / f"rank{r}.pt"
        raw[r] = torch.load(pt) if pt.exists() else {}
    if failure:
        pytest.fail(failure)
    return {"records": records, "raw": raw}


# --------------------------------------------------------------------------- the parent


def _reference(case: str, source: str, dname: str) -> dict[str, Any]:
    """The single-process functions on the whole vocabulary (same data)."""
    d = _data(case, source, dname)
    if source == "logits":
        x = d["x"].clone().requires_grad_(True)
        return _compute(cet.token_stats, (x,), [x], case, d)
    h, W, b = (d[k].clone().requires_grad_(True) for k in ("h", "W", "b"))
    return _compute(cet.linear_token_stats, (h, W), [h, W, b], case, d, linear_bias=b)


def _close(got: torch.Tensor, ref: torch.Tensor, tol: float, per_element: bool) -> str:
    """'' when `got` is within `tol` of `ref` (relative per element, or to the largest
    entry), else what differs."""
    if got.shape != ref.shape or got.dtype != ref.dtype:
        return f"shape/dtype {tuple(got.shape)} {got.dtype} != {tuple(ref.shape)} {ref.dtype}"
    if not ref.is_floating_point():
        return "" if torch.equal(got, ref) else f"{got.tolist()} != {ref.tolist()}"
    g64, r64 = got.to(torch.float64), ref.to(torch.float64)
    if not torch.equal(g64.isnan(), r64.isnan()):
        return "NaN at different places"
    g64, r64 = g64.nan_to_num(0.0), r64.nan_to_num(0.0)
    scale = r64.abs() if per_element else r64.abs().max() if r64.numel() else r64.new_ones(())
    bad = (g64 - r64).abs() > tol * scale + 1e-300
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0, 0])
        return (f"{int(bad.sum())} entries off, first [{i}]: {float(g64.reshape(-1)[i])!r} vs "
                f"{float(r64.reshape(-1)[i])!r}")
    return ""


def _gathered(raw: dict[int, dict[str, Any]], key: str, name: str, P: int, source: str
              ) -> dict[str, torch.Tensor | None]:
    """The gradients of the whole problem from the ranks' parts: the shards concatenated
    in rank order, the hidden states' from every rank (each must hold the whole)."""
    out: dict[str, torch.Tensor | None] = {}
    parts = [raw[r][key] for r in range(P)]
    shard_leaves = (0,) if source == "logits" else (1, 2)
    axis = {0: -1} if source == "logits" else {1: 0, 2: 0}
    for i in shard_leaves:
        gs = [p.get(f"grad/{name}/{i}") for p in parts]
        out[str(i)] = None if any(g is None for g in gs) else torch.cat(gs, dim=axis[i])
    return out


def _case_keys(P: int) -> list[tuple[str, int, str, str, str]]:
    return [(f"P{P}/L{li}/{c}/{s}/{dn}", li, c, s, dn) for li in range(len(LAYOUTS[P]))
            for c in CASES for s in _sources(c) for dn in DTYPES]


@pytest.mark.parametrize(("case", "source"),
                         [(c, s) for c in sorted(CASES) for s in _sources(c)])
def test_outputs_and_gradients_equal_single_process(group_run: dict[str, Any], case: str,
                                                    source: str) -> None:
    raw = group_run["raw"]
    bad: list[str] = []
    refs = {dn: _reference(case, source, dn) for dn in DTYPES}
    for P in (2, 3):
        for key, _, c, s, dn in _case_keys(P):
            if c != case or s != source:
                continue
            ref, tol = refs[dn], TOL[dn]
            for r in range(P):
                got = raw[r][key]
                for name, v in ref.items():
                    if not name.startswith("out/"):
                        continue
                    g = got[name]
                    if (v is None) != (g is None):
                        bad.append(f"{key} rank {r} {name}: present {g is not None}")
                    elif v is not None:
                        msg = _close(g, v, tol, per_element=v.dim() > 0)
                        if msg:
                            bad.append(f"{key} rank {r} {name}: {msg}")
                # the hidden states' gradient: the whole of it on every rank
                for name in GRADS:
                    v = ref.get(f"grad/{name}/0")
                    if source == "linear" and v is not None:
                        msg = _close(got[f"grad/{name}/0"], v, tol, per_element=False)
                        if msg:
                            bad.append(f"{key} rank {r} d{name}/dh: {msg}")
            for name in GRADS:
                if f"grad/{name}/0" not in ref:
                    continue
                parts = _gathered(raw, key, name, P, source)
                for i, g in parts.items():
                    v = ref.get(f"grad/{name}/{i}")
                    if (v is None) != (g is None):
                        bad.append(f"{key} d{name}/leaf {i}: present {g is not None}")
                    elif v is not None and g is not None:
                        msg = _close(g, v, tol, per_element=False)
                        if msg:
                            bad.append(f"{key} d{name}/leaf {i} (shards gathered): {msg}")
    assert not bad, "\n".join(bad[:20])


def test_every_output_is_identical_on_every_rank(group_run: dict[str, Any]) -> None:
    raw = group_run["raw"]
    for P in (2, 3):
        for key, *_ in _case_keys(P):
            for name, v in raw[0][key].items():
                is_output = name.startswith("out/") or (name.endswith("/0") and "linear" in key)
                if v is None or not is_output:
                    continue
                for r in range(1, P):  # bitwise, NaN included
                    torch.testing.assert_close(raw[r][key][name], v, rtol=0, atol=0,
                                               equal_nan=True, msg=f"{key} {name} {r}")


def test_the_tie_case_has_ties_across_shards() -> None:
    """The tie case's rows reach their maximum on both sides of a shard boundary (so the
    merge's index order decides the predicted token and the top-k order)."""
    for source in SOURCES:
        d = _data("ties", source, "float64")
        z = (d["x"] if source == "logits" else d["h"] @ d["W"].T + d["b"]).reshape(-1, V)
        at_max = z == z.max(dim=1, keepdim=True).values
        for cut in (25, 40):
            assert bool((at_max[:, :cut].any(1) & at_max[:, cut:].any(1)).any()), source


def test_confident_token_keeps_its_digits(group_run: dict[str, Any]) -> None:
    """log p of a token at 40 over the others (about -1e-16) is relative-exact on the
    ranks, where lse - z_y would give a multiple of 2^-47."""
    ref = _reference("plain", "logits", "float64")["out/logprobs"][0]
    got = group_run["raw"][1]["P3/L0/plain/logits/float64"]["out/logprobs"][0]
    assert -1e-14 < float(ref) < 0.0
    assert abs(float(got) - float(ref)) <= 1e-13 * abs(float(ref))


ERRORS = {  # case: (the odd (last) rank's error type, the others', words in the others')
    "temperature": ("ShardMismatchError", "ShardMismatchError", "temperature"),
    "top_k_differs": ("ShardMismatchError", "ShardMismatchError", "top_k"),
    "entropy_differs": ("ShardMismatchError", "ShardMismatchError", "outputs asked"),
    "label_smoothing": ("ShardMismatchError", "ShardMismatchError", "label_smoothing"),
    "sample_weight_values": ("ShardMismatchError", "ShardMismatchError", "sample_weight"),
    "sample_weight_shape": ("ValueError", "ShardMismatchError", "argument checks"),
    "linear_bias": ("ValueError", "ShardMismatchError", "argument checks"),
}
SAME_ERROR = {  # case: (the error type on every rank, words)
    "top_k": ("ValueError", "top_k must be between 0 and the number of classes of the whole "
                            f"vocabulary, {V}"),
    "sample_weight_all": ("ValueError", "sample_weight must have"),
    "target_range": ("TargetIndexError", f"target[4] = {V} is out of range"),
    "weight_length": ("ValueError", "weight must hold one entry per class"),
    "collective": ("ValueError", "collective"),
}


@pytest.mark.parametrize("P", [2, 3])
def test_bad_inputs_raise_on_every_rank(group_run: dict[str, Any], P: int) -> None:
    recs = group_run["records"]
    for case, (odd, other, words) in ERRORS.items():
        for r in range(P):
            rec = recs[r][f"err/P{P}/{case}"]
            assert rec["type"] == (odd if r == P - 1 else other), (case, r, rec)
            assert words in rec["msg"] or r == P - 1, (case, r, rec)
        last = recs[P - 1][f"err/P{P}/{case}"]["msg"]
        if case == "sample_weight_shape":
            assert "sample_weight must have" in last, last
        if case == "linear_bias":
            assert "linear_bias must have shape" in last, last
    for case, (typ, words) in SAME_ERROR.items():
        for r in range(P):
            rec = recs[r][f"err/P{P}/{case}"]
            assert rec["type"] == typ and words in rec["msg"], (case, r, rec)
    for r in range(P):
        assert recs[r][f"err/P{P}/still_in_step"]["type"] is None


def test_without_the_check(group_run: dict[str, Any]) -> None:
    d = _data("plain", "logits", "float64")
    ref = cet.token_stats(d["x"], d["y"], return_logprobs=True).logprobs
    for P in (2, 3):
        for r in range(P):
            got = torch.tensor(group_run["records"][r][f"nocheck/P{P}"]["logprobs"],
                               dtype=torch.float64)
            assert _close(got, ref, 1e-13, per_element=True) == ""


def test_needs_a_process_group() -> None:
    if dist.is_initialized():  # pragma: no cover - only when another test left one
        pytest.skip("a default process group exists in this process")
    with pytest.raises(RuntimeError, match="not initialized"):
        vp.token_stats(torch.zeros(2, 3))


def test_one_rank_in_this_process_equals_single_process() -> None:
    """A 1-rank group in this process: the same numbers as the single process (nothing to
    merge across ranks), a cheap check of the plumbing on every option."""
    if dist.is_initialized():  # pragma: no cover - only when another test left one
        pytest.skip("a default process group exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        d = _data("everything", "linear", "float64")
        h, W, b = (d[k].clone().requires_grad_(True) for k in ("h", "W", "b"))
        got = _compute(vp.linear_token_stats, (h, W), [h, W, b], "everything", d,
                       linear_bias=b)
        ref = _reference("everything", "linear", "float64")
        for name, v in ref.items():
            if v is not None:
                assert _close(got[name], v, 1e-13, per_element=False) == "", name
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("chunks", [None, ChunkPlan(vocab=7)])
def test_log_prob_of_a_row_of_all_minus_inf_is_nan(chunks: ChunkPlan | None) -> None:
    """A row of all -inf is no distribution: its log p is NaN, as its loss and entropy,
    however the row is cut (it was -log1p(slices - 1): -0.0 whole, -log 9 in 9 slices, and
    -log P on P ranks)."""
    x = torch.zeros(3, V, dtype=torch.float64)
    x[1] = -math.inf
    out = cet.token_stats(x, torch.tensor([0, 0, -100]), return_logprobs=True,
                          return_entropy=True, reduction="none", chunks=chunks)
    assert torch.isnan(out.logprobs[1]) and torch.isnan(out.loss[1])
    assert torch.isnan(out.entropy[1])
    assert float(out.logprobs[2]) == 0.0  # an ignored row stays 0
    assert float(out.logprobs[0]) == pytest.approx(-math.log(V), rel=1e-15)
