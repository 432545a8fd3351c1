"""The token statistics on the fused Triton kernels (``impl="triton"``), in the interpreter.

Every output and the gradients through the loss, log-probabilities, entropy and
log-sum-exp are judged against torch's float64 autograd of the dense logits of the same
inputs (independent of this library), within the rounding of float32 logits formed by a
D-term dot product (``zerr = D u max|h||W|``, u the float32 unit roundoff) propagated
through each output; confident rows against mpmath on logits that are exact in float32.
Shapes are odd: never multiples of the interpreter's blocks (BLOCK_N 16, BLOCK_V 32,
BLOCK_D 16).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import _triton_interp

_triton_interp.enter()
torch = pytest.importorskip("torch")
pytest.importorskip("triton.language")  # decorated in interpreter mode from here on
_triton_interp.restore()

import mpmath  # noqa: E402

import crossentropy.torch as cet  # noqa: E402
from crossentropy.triton import TritonUnavailable, _launch  # noqa: E402

F = torch.nn.functional
U32 = 2.0**-24  # float32 unit roundoff
N, D, V = 21, 19, 83


@pytest.fixture(autouse=True, scope="module")
def _interpreter() -> Iterator[None]:
    yield from _triton_interp.interpreting()


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _dense(h: Any, W: Any, b: Any, t: Any, w: Any, *, temperature: float = 1.0,
           softcap: float | None = None, label_smoothing: float = 0.0, z_loss: float = 0.0
           ) -> dict[str, Any]:
    """Every output per token from the dense float64 logits, with torch's functions."""
    z = h @ W.T + (0.0 if b is None else b)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    logp = torch.log_softmax(z, dim=1)
    lse = torch.logsumexp(z, dim=1)
    out: dict[str, Any] = {"lse": lse, "entropy": -(logp.exp() * logp).sum(dim=1),
                           "pred": z.argmax(dim=1), "z": z}
    if t is not None:
        counted = t != -100
        out["logprobs"] = torch.where(counted, logp.gather(1, t.clamp(min=0)[:, None])[:, 0],
                                      0.0)
        per = F.cross_entropy(z, t, w, label_smoothing=label_smoothing, reduction="none")
        out["loss"] = per + torch.where(counted, z_loss * lse**2, 0.0)
    return out


CASES: list[dict[str, Any]] = [
    {"bias": True, "ignore": True},
    {"temperature": 0.7, "softcap": 4.0, "label_smoothing": 0.1, "z_loss": 1e-3,
     "weight": True, "ignore": True},
    {"no_target": True, "temperature": 1.3, "chunks": True, "bias": True},
    {"bf16": True, "temperature": 0.9, "weight": True, "chunks": True},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(sorted(c)))
def test_every_output_and_gradient_against_float64_autograd(
        case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    g = _gen(3)
    dt = torch.bfloat16 if case.get("bf16") else torch.float32
    h0 = (torch.randn(N, D, generator=g) * 1.5).to(dt)
    W0 = (torch.randn(V, D, generator=g) * 0.5).to(dt)
    b0 = (torch.randn(V, generator=g) * 0.3).to(dt) if case.get("bias") else None
    t = None if case.get("no_target") else torch.randint(0, V, (N,), generator=g)
    if t is not None and case.get("ignore"):
        t[[2, 17]] = -100
    w = torch.rand(V, generator=g) + 0.5 if case.get("weight") else None
    if case.get("chunks"):  # three vocabulary ranges forward, backward in 32-column chunks
        monkeypatch.setitem(_launch.INTERPRETER_BLOCKS, "SPLIT", 3)
        monkeypatch.setitem(_launch.INTERPRETER_BLOCKS, "V_CHUNK", 32)
    opts = {k: case[k] for k in ("temperature", "softcap", "label_smoothing", "z_loss")
            if k in case}
    tau = float(case.get("temperature", 1.0))
    has_t = t is not None

    h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
    b = None if b0 is None else b0.clone().requires_grad_()
    got = cet.linear_token_stats(
        h, W, t, linear_bias=b, weight=w, reduction="none", impl="triton",
        return_loss=has_t, return_lse=True, return_logprobs=has_t, return_entropy=True,
        return_predicted_tokens=True, **opts)
    h64, W64 = h0.double().requires_grad_(), W0.double().requires_grad_()
    b64 = None if b0 is None else b0.double().requires_grad_()
    ref = _dense(h64, W64, b64, t, None if w is None else w.double(), **opts)

    # the float32 logits' rounding (a D-term dot product), through z' = softcap(z) / tau
    zerr = D * U32 * float((h0.double().abs() @ W0.double().abs().T).max()) / tau
    zmax = float(ref["z"].detach().abs().max())
    bounds = {"lse": 4 * zerr, "logprobs": 4 * zerr, "loss": 4 * zerr * (1 + 2 * zmax),
              "entropy": 4 * zerr * (1 + 2 * zmax)}
    names = ["lse", "entropy"] + (["loss", "logprobs"] if has_t else [])
    for name in names:
        ours, want = getattr(got, name), ref[name].detach()
        assert ours.dtype == torch.float32
        err = float((ours.detach().double() - want).abs().max())
        assert err <= bounds[name] + 8 * U32 * float(want.abs().max()), (name, err)
    # the argmax where the gap to the runner-up exceeds the logits' rounding
    top2 = ref["z"].detach().topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 4 * zerr
    assert torch.equal(got.predicted_tokens[clear], ref["pred"][clear])

    # the gradient of a weighted sum of every floating output
    u = {name: torch.rand(N, generator=_gen(7 + i), dtype=torch.float64) + 0.5
         for i, name in enumerate(names)}
    u["entropy"] = u["entropy"] - 1.0  # a negative weight too (entropy bonuses)
    (sum((getattr(got, n).double() * u[n]).sum() for n in names)).backward()
    (sum((ref[n] * u[n]).sum() for n in names)).backward()
    pairs = [(h, h64), (W, W64)] + ([(b, b64)] if b is not None else [])
    for ours_t, ref_t in pairs:
        assert ours_t.grad is not None and ref_t.grad is not None
        assert ours_t.grad.dtype == dt
        scale = float(ref_t.grad.abs().max())
        rt = 1e-2 if dt == torch.bfloat16 else 1e-4  # the gradient's own storage rounding
        torch.testing.assert_close(ours_t.grad.double(), ref_t.grad, rtol=rt, atol=rt * scale)


LOGITS_CASES: list[dict[str, Any]] = [
    {"ignore": True},
    {"temperature": 0.7, "softcap": 4.0, "label_smoothing": 0.1, "z_loss": 1e-3,
     "weight": True, "ignore": True, "chunks": True},
    {"bf16": True, "temperature": 1.3, "no_target": True},
]


@pytest.mark.parametrize("case", LOGITS_CASES, ids=lambda c: ",".join(sorted(c)))
def test_from_logits_every_output_and_gradient_against_float64_autograd(
        case: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """token_stats(impl='triton'): the logits are read as stored (no dot product), so the
    only error is the kernels' float32 arithmetic: the rounding of ``z' = softcap(z) /
    tau`` (a few ulp of ``max|z'|``) and of the sums (8 ulp relative)."""
    g = _gen(9)
    dt = torch.bfloat16 if case.get("bf16") else torch.float32
    x0 = (torch.randn(N, V, generator=g) * 3).to(dt)
    t = None if case.get("no_target") else torch.randint(0, V, (N,), generator=g)
    if t is not None and case.get("ignore"):
        t[[0, 11]] = -100
    w = torch.rand(V, generator=g) + 0.5 if case.get("weight") else None
    if case.get("chunks"):
        monkeypatch.setitem(_launch.INTERPRETER_BLOCKS, "SPLIT", 3)
    opts = {k: case[k] for k in ("temperature", "softcap", "label_smoothing", "z_loss")
            if k in case}
    has_t = t is not None
    x = x0.clone().requires_grad_()
    got = cet.token_stats(x, t, weight=w, reduction="none", impl="triton", return_loss=has_t,
                          return_lse=True, return_logprobs=has_t, return_entropy=True,
                          return_predicted_tokens=True, **opts)
    x64 = x0.double().requires_grad_()
    ref = _dense(x64, torch.eye(V, dtype=torch.float64), None, t,
                 None if w is None else w.double(), **opts)
    zmax = float(ref["z"].detach().abs().max())
    zerr = 4 * U32 * zmax  # z' rounded to float32 (soft cap, division)
    names = ["lse", "entropy"] + (["loss", "logprobs"] if has_t else [])
    for name in names:
        ours, want = getattr(got, name).detach().double(), ref[name].detach()
        bound = zerr * (1 + 2 * zmax if name in ("entropy", "loss") else 1.0)
        err = float((ours - want).abs().max())
        assert err <= bound + 8 * U32 * float(want.abs().max()), (name, err)
    assert torch.equal(got.predicted_tokens, ref["pred"])  # random logits: no near ties
    u = {name: torch.rand(N, generator=_gen(3 + i), dtype=torch.float64) - 0.3
         for i, name in enumerate(names)}
    (sum((getattr(got, n).double() * u[n]).sum() for n in names)).backward()
    (sum((ref[n] * u[n]).sum() for n in names)).backward()
    assert x.grad is not None and x64.grad is not None and x.grad.dtype == dt
    scale = float(x64.grad.abs().max())
    rt = 2**-8 if dt == torch.bfloat16 else 64 * U32
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=rt, atol=rt * scale)


def test_confident_rows_keep_their_digits_against_mpmath() -> None:
    """Integer inputs: the float32 logits are exact, so the only error is the kernels'
    arithmetic.  Rows whose target wins by 20-60 nats: ``log p_y`` from -1.1e-10 to
    -4.7e-27 and their entropy, each within 32 float32 ulps relative (``lse - z_y`` in
    float32 gives 0)."""
    g = _gen(11)
    h = torch.randint(-2, 3, (N, D), generator=g).float()
    W = torch.randint(-2, 3, (V, D), generator=g).float()
    z = h @ W.T
    t = z.argmax(dim=1)
    # lift each row's target by 20-60 so that it dominates
    lift = torch.linspace(20.0, 60.0, N).round()
    b = torch.zeros(V)
    h = torch.cat([h, torch.ones(N, 1)], dim=1)
    W = torch.cat([W, torch.zeros(V, 1)], dim=1)
    Wt = W.clone()
    out_lp, out_H = [], []
    for i in range(N):  # one row at a time: each its own bias column of the lift
        Wt = W.clone()
        Wt[t[i], -1] = lift[i]
        r = cet.linear_token_stats(h[i:i + 1], Wt, t[i:i + 1], linear_bias=b, impl="triton",
                                   return_logprobs=True, return_entropy=True,
                                   reduction="none")
        out_lp.append(float(r.logprobs[0]))
        out_H.append(float(r.entropy[0]))
        zi = [mpmath.mpf(int(v)) for v in (h[i] @ Wt.T).tolist()]
        with mpmath.workdps(60):
            lse = mpmath.log(mpmath.fsum(mpmath.exp(x) for x in zi))
            lp = zi[int(t[i])] - lse
            H = -mpmath.fsum(mpmath.exp(x - lse) * (x - lse) for x in zi)
        assert -1e-8 < float(lp) < 0.0  # confident: float32 lse - z_y would round to 0
        assert abs(out_lp[-1] - float(lp)) <= 32 * U32 * abs(float(lp)), (i, out_lp[-1], lp)
        assert abs(out_H[-1] - float(H)) <= 32 * U32 * abs(float(H)), (i, out_H[-1], H)


def test_linear_cross_entropy_per_token_outputs_reach_the_kernels(
        monkeypatch: pytest.MonkeyPatch) -> None:
    g = _gen(5)
    h, W = torch.randn(N, D, generator=g), torch.randn(V, D, generator=g) * 0.5
    t = torch.randint(0, V, (N,), generator=g)
    calls: list[bool] = []
    real = _launch.lce_forward

    def spy(*a: Any, **k: Any) -> Any:
        calls.append(bool(k.get("entropy")))
        return real(*a, **k)

    monkeypatch.setattr(_launch, "lce_forward", spy)
    out = cet.linear_cross_entropy(h, W, t, impl="triton", temperature=0.8,
                                   return_logprobs=True, return_entropy=True)
    assert calls == [True]
    same = cet.linear_token_stats(h, W, t, impl="triton", temperature=0.8,
                                  return_logprobs=True, return_entropy=True)
    assert torch.equal(out.logprobs, same.logprobs) and torch.equal(out.entropy, same.entropy)
    assert torch.equal(out.loss, same.loss)


def test_what_the_kernels_do_not_take_is_refused_by_name() -> None:
    h, W = torch.randn(5, 4), torch.randn(9, 4)
    t = torch.tensor([1, 2, 3, 4, 5])
    with pytest.raises(TritonUnavailable, match="top_k"):
        cet.linear_token_stats(h, W, t, top_k=2, impl="triton")
    with pytest.raises(TritonUnavailable, match="float64"):
        cet.linear_token_stats(h.double(), W.double(), t, impl="triton")
    with pytest.raises(TritonUnavailable, match="top_k"):
        cet.token_stats(h @ W.T, t, top_k=1, impl="triton")
    with pytest.raises(ValueError, match="impl must be one of"):
        cet.linear_token_stats(h, W, t, impl="numba")
    # the default on CPU tensors is the blocks of torch operations, even here
    a = cet.linear_token_stats(h, W, t, return_logprobs=True)
    b = cet.linear_token_stats(h, W, t, return_logprobs=True, impl="torch")
    assert torch.equal(a.logprobs, b.logprobs)
