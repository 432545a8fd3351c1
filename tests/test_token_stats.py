"""``crossentropy.torch.token_stats`` / ``linear_token_stats``: the output layer's per-token
statistics through the public API, against dense float64 computations written here with
torch's own functions (accuracy against mpmath is in ``tests/test_path_matrix.py``)."""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import crossentropy.torch as cet  # noqa: E402
from crossentropy.torch._chunks import watch_buffers  # noqa: E402

F = torch.nn.functional


def _setup(seed: int = 0, B: int = 2, T: int = 6, D: int = 8, V: int = 37,
           dtype: Any = torch.float64) -> tuple[Any, ...]:
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(B, T, D, generator=g, dtype=dtype, requires_grad=True)
    W = (2 * torch.randn(V, D, generator=g, dtype=dtype)).requires_grad_()
    b = torch.randn(V, generator=g, dtype=dtype, requires_grad=True)
    y = torch.randint(0, V, (B, T), generator=g)
    y[0, 2] = -100
    return h, W, b, y


def _dense(h: Any, W: Any, b: Any) -> Any:
    return h @ W.T + b


def test_loss_with_every_option_equals_the_dense_computation() -> None:
    """Class weights, label smoothing, z-loss, per-token weights, shift, a mean whose divisor
    is sum(sample_weight * w_y) over counted tokens; gradients too."""
    h, W, b, y = _setup()
    V = W.shape[0]
    cw = torch.linspace(0.5, 2.0, V, dtype=torch.float64)
    sw = torch.rand(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = cet.linear_token_stats(h, W, y, linear_bias=b, weight=cw, sample_weight=sw,
                                 label_smoothing=0.1, z_loss=1e-3, shift=1,
                                 chunks=cet.ChunkPlan(rows=3, vocab=10), return_z_loss=True)
    # dense: position t predicts label t + 1
    z = _dense(h, W, b)[:, :-1].reshape(-1, V)
    t = y[:, 1:].reshape(-1)
    s = sw[:, :-1].reshape(-1)
    counted = t != -100
    rows = F.cross_entropy(z, t, weight=cw, label_smoothing=0.1, reduction="none")
    lse = torch.logsumexp(z, dim=1)
    rows = rows + torch.where(counted, 1e-3 * lse**2, 0.0)
    denom = (s * torch.where(counted, cw[t.clamp(0)], 0.0)).sum()
    want = (rows * s).sum() / denom
    zl = (torch.where(counted, 1e-3 * lse**2, 0.0) * s).sum() / denom
    assert out.loss is not None and out.z_loss is not None
    torch.testing.assert_close(out.loss, want, rtol=1e-13, atol=0)
    torch.testing.assert_close(out.z_loss, zl, rtol=1e-13, atol=0)
    got = torch.autograd.grad(out.loss, (h, W, b))
    ref = torch.autograd.grad(want, (h, W, b))
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-14)


def test_every_output_and_its_gradient_equals_autograd_of_the_dense_logits() -> None:
    """log-probabilities, lse, entropy, top-k log-probabilities (temperature and soft cap),
    and the gradient of a random combination of all of them."""
    h, W, b, y = _setup(2)
    tau, cap = 0.8, 6.0
    out = cet.linear_token_stats(
        h, W, y, linear_bias=b, return_logprobs=True, return_entropy=True, return_lse=True,
        top_k=5, temperature=tau, softcap=cap, chunks=cet.ChunkPlan(rows=4, vocab=9),
        reduction="none")
    zp = cap * torch.tanh(_dense(h, W, b) / cap) / tau
    lp = torch.log_softmax(zp, dim=-1)
    counted = y != -100
    want_lp = torch.where(counted, lp.gather(-1, y.clamp(0)[..., None])[..., 0], 0.0)
    want_H = -(lp.exp() * lp).sum(-1)
    assert out.logprobs is not None and out.entropy is not None and out.lse is not None
    assert out.top_k_logprobs is not None and out.top_k_indices is not None
    assert out.loss is not None
    assert out.logprobs.shape == y.shape and out.top_k_indices.shape == (*y.shape, 5)
    torch.testing.assert_close(out.logprobs, want_lp, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(out.entropy, want_H, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(out.lse, torch.logsumexp(zp, -1), rtol=1e-14, atol=0)
    tv, ti = torch.topk(lp, 5)
    assert torch.equal(out.top_k_indices, ti)  # random logits: no ties
    torch.testing.assert_close(out.top_k_logprobs, tv, rtol=1e-13, atol=1e-15)
    g = torch.Generator().manual_seed(3)
    c = [torch.randn(x.shape, generator=g, dtype=torch.float64)
         for x in (out.loss, out.logprobs, out.entropy, out.lse, out.top_k_logprobs)]
    got_outs = (out.loss, out.logprobs, out.entropy, out.lse, out.top_k_logprobs)
    want_outs = (torch.where(counted, -want_lp, 0.0), want_lp, want_H,
                 torch.logsumexp(zp, -1), lp.gather(-1, out.top_k_indices))
    got = torch.autograd.grad(sum((a * w).sum() for a, w in zip(got_outs, c, strict=True)),
                              (h, W, b))
    ref = torch.autograd.grad(sum((a * w).sum() for a, w in zip(want_outs, c, strict=True)),
                              (h, W, b))
    for a, r in zip(got, ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-11, atol=1e-13)


def test_gradcheck_through_every_floating_output() -> None:
    """torch.autograd.gradcheck (finite differences) of the logits path, float64."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, -100, 6, 2])

    def f(x: Any) -> tuple[Any, ...]:
        o = cet.token_stats(x, y, return_logprobs=True, return_entropy=True, top_k=2,
                            return_lse=True, temperature=1.7, label_smoothing=0.2,
                            chunks=cet.ChunkPlan(rows=2, vocab=3))
        return o.loss, o.logprobs, o.entropy, o.lse, o.top_k_logprobs

    assert torch.autograd.gradcheck(f, (x,))


def test_trl_names_selective_log_softmax_and_entropy_from_logits() -> None:
    """What TRL computes from float32 logits [B, T, V] (log_softmax then gather; entropy
    from the probabilities), to float32 rounding; no target: entropy alone."""
    g = torch.Generator().manual_seed(5)
    logits = 3 * torch.randn(2, 9, 50, generator=g)
    ids = torch.randint(0, 50, (2, 9), generator=g)
    out = cet.token_stats(logits, ids, return_logprobs=True, return_entropy=True)
    z = logits.double()
    want_lp = torch.log_softmax(z, -1).gather(-1, ids[..., None])[..., 0]
    p = torch.softmax(z, -1)
    want_H = torch.logsumexp(z, -1) - (p * z).sum(-1)
    assert out.logprobs is not None and out.entropy is not None
    assert out.logprobs.dtype == torch.float32
    torch.testing.assert_close(out.logprobs.double(), want_lp, rtol=2**-23, atol=1e-7)
    torch.testing.assert_close(out.entropy.double(), want_H, rtol=2**-23, atol=1e-7)
    alone = cet.token_stats(logits, return_entropy=True)
    assert alone.loss is None and alone.logprobs is None
    assert torch.equal(alone.entropy, out.entropy)


def test_liger_names_z_loss_token_accuracy_predicted_tokens() -> None:
    h, W, b, y = _setup(6, V=5)  # few classes: some predictions are right
    out = cet.linear_token_stats(h, W, y, linear_bias=b, z_loss=1e-4, return_z_loss=True,
                                 return_token_accuracy=True, return_predicted_tokens=True)
    z = _dense(h, W, b)
    counted = y != -100
    pred = z.argmax(-1)
    assert out.predicted_tokens is not None and out.token_accuracy is not None
    assert torch.equal(out.predicted_tokens, pred)
    acc = (pred == y)[counted].double().mean()
    assert 0 < float(acc) < 1
    torch.testing.assert_close(out.token_accuracy, acc)
    lse = torch.logsumexp(z, -1)
    torch.testing.assert_close(out.z_loss, 1e-4 * (lse[counted] ** 2).mean(), rtol=1e-13,
                               atol=0)


def test_top_k_ties_in_index_order_across_vocabulary_slices() -> None:
    """Ties straddling slice boundaries come out lower index first (argmax's rule; torch.topk
    leaves tie order unspecified); the predicted token is the first maximum."""
    z = torch.zeros(3, 23, dtype=torch.float64)
    z[0, [4, 9, 17, 20]] = 5.0
    z[1] = 1.0
    z[2, [22, 3]] = 2.0
    for plan in (None, cet.ChunkPlan(vocab=5), cet.ChunkPlan(rows=1, vocab=2)):
        out = cet.token_stats(z, top_k=3, return_predicted_tokens=True, chunks=plan)
        assert out.top_k_indices is not None and out.predicted_tokens is not None
        assert out.top_k_indices.tolist() == [[4, 9, 17], [0, 1, 2], [3, 22, 0]]
        assert out.predicted_tokens.tolist() == [4, 0, 3]
        alone = cet.token_stats(z, return_predicted_tokens=True, chunks=plan)
        assert alone.predicted_tokens is not None  # from the slice statistics, no top-k
        assert alone.predicted_tokens.tolist() == [4, 0, 3]
        assert out.top_k_logprobs is not None
        torch.testing.assert_close(out.top_k_logprobs[0],
                                   torch.full((3,), 5.0 - math.log(4 * math.exp(5) + 19),
                                              dtype=torch.float64))


def test_linear_cross_entropy_rl_outputs_come_from_the_same_engine() -> None:
    h, W, b, y = _setup(7)
    a = cet.linear_cross_entropy(h, W, y, linear_bias=b, return_logprobs=True,
                                 return_entropy=True, temperature=0.9)
    s = cet.linear_token_stats(h, W, y, linear_bias=b, return_logprobs=True,
                               return_entropy=True, temperature=0.9)
    assert torch.equal(a.loss, s.loss) and torch.equal(a.logprobs, s.logprobs)
    assert torch.equal(a.entropy, s.entropy)


def test_no_buffer_larger_than_one_block() -> None:
    h, W, b, y = _setup(8, B=4, T=16, V=101)
    with watch_buffers() as shapes:
        out = cet.linear_token_stats(h, W, y, linear_bias=b, return_entropy=True,
                                     return_logprobs=True, chunks=cet.ChunkPlan(rows=8,
                                                                                 vocab=32))
        assert out.loss is not None
        out.loss.backward()
    assert shapes and all(r <= 8 and v <= 32 for r, v in shapes), shapes


def test_bfloat16_hidden_states_give_float32_outputs_unrounded() -> None:
    h, W, b, y = _setup(9, dtype=torch.bfloat16)
    out = cet.linear_token_stats(h, W, y, linear_bias=b, return_logprobs=True)
    ref = cet.linear_token_stats(h.float(), W.float(), y, linear_bias=b.float(),
                                 return_logprobs=True)
    assert out.loss is not None and out.loss.dtype == torch.float32
    assert out.logprobs is not None and out.logprobs.dtype == torch.float32
    torch.testing.assert_close(out.loss, ref.loss)
    out.loss.backward()
    assert h.grad is not None and h.grad.dtype == torch.bfloat16


def test_empty_batch_and_all_ignored() -> None:
    W = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    h = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    out = cet.linear_token_stats(h, W, torch.zeros(0, dtype=torch.int64),
                                 return_logprobs=True, return_entropy=True)
    assert out.loss is not None and math.isnan(float(out.loss.detach()))  # torch's NaN
    assert out.logprobs is not None and out.logprobs.shape == (0,)
    h2 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    out2 = cet.linear_token_stats(h2, W, torch.full((3,), -100), return_logprobs=True)
    assert out2.loss is not None and math.isnan(float(out2.loss.detach()))
    (g,) = torch.autograd.grad(out2.loss + out2.logprobs.sum(), (h2,))
    assert torch.all(g == 0)


@pytest.mark.parametrize("kw, err, match", [
    (dict(top_k=38), ValueError, "top_k"),
    (dict(top_k=-1), ValueError, "top_k"),
    (dict(top_k=True), TypeError, "top_k"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=-1.0), ValueError, "temperature"),
    (dict(sample_weight=torch.ones(3)), ValueError, "sample_weight"),
    (dict(sample_weight=torch.ones(2, 6, dtype=torch.int64)), TypeError, "sample_weight"),
    (dict(sample_weight=-torch.ones(2, 6, dtype=torch.float64)), ValueError,
     r"sample_weight\[0, 0\]"),
    (dict(sample_weight=torch.full((2, 6), math.nan, dtype=torch.float64)), ValueError,
     "sample_weight"),
    (dict(weight=torch.ones(3, dtype=torch.float64)), ValueError, "weight"),
    (dict(chunks=cet.ChunkPlan), TypeError, "chunks"),
    (dict(chunks=(8, 16)), TypeError, "chunks"),
])
def test_bad_arguments_are_named(kw: dict[str, Any], err: type, match: str) -> None:
    h, W, b, y = _setup()
    with pytest.raises(err, match=match):
        cet.linear_token_stats(h, W, y, linear_bias=b, **kw)


def test_a_budget_below_one_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="budget_bytes"):
        cet.ChunkPlan(budget_bytes=0)


def test_bad_targets_are_named() -> None:
    h, W, _, y = _setup()
    with pytest.raises(ValueError, match="return_logprobs needs target"):
        cet.linear_token_stats(h, W, return_logprobs=True)
    with pytest.raises(ValueError, match="return_token_accuracy needs target"):
        cet.token_stats(torch.randn(3, 4), return_token_accuracy=True)
    with pytest.raises(ValueError, match="sample_weight"):
        cet.token_stats(torch.randn(3, 4), sample_weight=torch.ones(3))
    bad = y.clone()
    bad[1, 4] = 37
    with pytest.raises(ValueError, match=r"target\[1, 4\] = 37"):
        cet.linear_token_stats(h, W, bad)
    with pytest.raises(ValueError, match="target must have shape"):
        cet.linear_token_stats(h, W, y[:, :3])
    with pytest.raises(TypeError, match="integer"):
        cet.linear_token_stats(h, W, y.double())


_MEMORY_SCRIPT = r"""
import gc, json, sys
import torch
import crossentropy.torch as cet
budget = int(sys.argv[1])
torch.manual_seed(0)

def inputs(N, D, V):
    return (torch.randn(N, D, requires_grad=True), (torch.randn(V, D) / 8).requires_grad_(),
            torch.randint(0, V, (N,)))

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

def step(h, W, y, plan):
    o = cet.linear_token_stats(h, W, y, return_logprobs=True, return_entropy=True, top_k=4,
                               temperature=0.9, softcap=30.0, chunks=plan)
    (o.logprobs.sum() + o.entropy.sum() + o.top_k_logprobs.sum() + o.loss).backward()

step(*inputs(32, 8, 100), cet.ChunkPlan(budget_bytes=1 << 20))  # warm-up
N, D, V = 512, 32, 30000
h, W, y = inputs(N, D, V)
gc.collect()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # the peak resident set starts again from the current one
before = status("VmRSS:")
step(h, W, y, cet.ChunkPlan(budget_bytes=budget))
print(json.dumps({"extra": status("VmHWM:") - before, "grads": (N * D + V * D) * 4}))
"""


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/clear_refs"),
                    reason="needs Linux's /proc/self/clear_refs")
@pytest.mark.parametrize("mib", [4, 24])
def test_the_temporaries_stay_within_the_budget(mib: int) -> None:
    """The process's peak resident memory during forward + backward (soft cap, temperature
    and top-k: the most temporaries) rises by at most the budget, the gradients of h and W,
    and 4 MiB for the per-token vectors: the [N, V] logits (59 MiB here) never exist."""
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, str(mib << 20)],
                         capture_output=True, text=True, timeout=300, check=True)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["extra"] <= (mib << 20) + got["grads"] + (4 << 20), got


def test_a_budget_below_one_logits_temporaries_is_refused() -> None:
    h, W, _, y = _setup()
    with pytest.raises(ValueError, match="budget_bytes=16 is too small"):
        cet.linear_token_stats(h, W, y, chunks=cet.ChunkPlan(budget_bytes=16))


# --------------------------------------------------------------------------- sample weights


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("impl", ["cpu", "torch"])
def test_cross_entropy_sample_weight_every_reduction(impl: str, reduction: str) -> None:
    """sum_i s_i l_i / sum_i s_i w_{y_i} over counted samples, against torch's per-sample
    losses; N-D logits (N, C, d) and class weights; gradients too."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(4, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (4, 3), generator=g)
    y[1, 2] = -100
    cw = torch.linspace(0.5, 2.0, 5, dtype=torch.float64)
    s = torch.rand(4, 3, generator=g, dtype=torch.float64)
    got = cet.cross_entropy(x, y, cw, reduction=reduction, label_smoothing=0.1,
                            sample_weight=s, impl=impl)
    rows = F.cross_entropy(x, y, cw, reduction="none", label_smoothing=0.1)
    counted = y != -100
    want = {"none": rows * s, "sum": (rows * s).sum(),
            "mean": (rows * s).sum() / (s * torch.where(counted, cw[y.clamp(0)], 0.0)).sum()
            }[reduction]
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    a = torch.autograd.grad(got.sum(), x)[0]
    b = torch.autograd.grad(want.sum(), x)[0]
    torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-16)


def test_cross_entropy_sample_weight_probability_targets_and_shift() -> None:
    g = torch.Generator().manual_seed(12)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    t = torch.softmax(torch.randn(6, 4, generator=g, dtype=torch.float64), 1)
    s = torch.rand(6, generator=g, dtype=torch.float64)
    got = cet.cross_entropy(x, t, sample_weight=s)
    rows = F.cross_entropy(x, t, reduction="none")
    torch.testing.assert_close(got, (rows * s).sum() / s.sum(), rtol=1e-14, atol=0)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    ids = torch.randint(0, 7, (2, 5), generator=g)
    s2 = torch.rand(2, 5, generator=g, dtype=torch.float64)
    got2 = cet.cross_entropy(logits, ids, shift=1, sample_weight=s2)
    r2 = F.cross_entropy(logits[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1),
                         reduction="none")
    w2 = s2[:, :-1].reshape(-1)
    torch.testing.assert_close(got2, (r2 * w2).sum() / w2.sum(), rtol=1e-14, atol=0)


def test_linear_cross_entropy_sample_weight_equals_the_token_stats() -> None:
    h, W, b, y = _setup(13)
    s = torch.rand(y.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = cet.linear_cross_entropy(h, W, y, linear_bias=b, sample_weight=s, z_loss=1e-3,
                                 shift=1)
    t = cet.linear_token_stats(h, W, y, linear_bias=b, sample_weight=s, z_loss=1e-3,
                               shift=1)
    torch.testing.assert_close(a, t.loss, rtol=1e-14, atol=0)
    ga = torch.autograd.grad(a, (h, W))
    gt = torch.autograd.grad(t.loss, (h, W))
    for u, v in zip(ga, gt, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-15)


def test_sample_weight_bad_input_is_named() -> None:
    x = torch.randn(3, 4)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match=r"sample_weight must have the per-sample"):
        cet.cross_entropy(x, y, sample_weight=torch.ones(4))
    with pytest.raises(ValueError, match=r"sample_weight\[1\] = -1"):
        cet.cross_entropy(x, y, sample_weight=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(TypeError, match="floating"):
        cet.cross_entropy(x, y, sample_weight=torch.ones(3, dtype=torch.int64))


def test_torch_func_transforms_are_refused_in_one_line() -> None:
    x = torch.randn(3, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    with pytest.raises(NotImplementedError, match=r"torch\.func transforms"):
        torch.func.grad(lambda x: cet.token_stats(x, y).loss)(x)


# dynamo itself reads .grad of the non-leaf tensors it receives at a graph break (the
# reshaped hidden states) and torch warns about that read: not this library's access
# (and, as in tests/test_torch_compile.py, torch's own deprecation warnings of its tracing)
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf")
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_under_torch_compile_the_same_values_and_gradients() -> None:
    """torch.compile (dynamo; the eager backend, as inductor only fuses the surrounding
    ops) of a training step through linear_token_stats: the autograd Function runs as in
    eager mode, so the values and gradients are equal."""
    g = torch.Generator().manual_seed(4)
    h0 = torch.randn(2, 7, 16, generator=g, dtype=torch.float64)
    W0 = torch.randn(50, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 50, (2, 7), generator=g)

    def step(h: Any, W: Any) -> Any:
        o = cet.linear_token_stats(h, W, y, return_logprobs=True, return_entropy=True,
                                   temperature=0.8, shift=1)
        return o.loss + 0.1 * o.logprobs.sum() - 0.01 * o.entropy.sum()

    results = []
    for fn in (step, torch.compile(step, backend="eager")):
        h, W = h0.clone().requires_grad_(), W0.clone().requires_grad_()
        out = fn(h, W)
        out.backward()
        results.append((out.detach(), h.grad, W.grad))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
