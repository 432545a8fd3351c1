"""torch.func (grad, jacrev, per-sample vmap(grad)), meta tensors, the whole-F namespace,
normalizer=, shift=True and the RL outputs of linear_cross_entropy.

Expected values come from torch.nn.functional in float64 and from the NumPy core
(``crossentropy.log_softmax``, ``crossentropy.entropy`` of ``crossentropy.softmax``).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jacrev, vmap

import crossentropy as ce
import crossentropy.torch as cet
from _torch_versions import torch_linear_cross_entropy

f64 = torch.float64
G = torch.Generator().manual_seed(11)
X = torch.randn(6, 5, generator=G, dtype=f64) * 3
Y = torch.tensor([0, 4, 2, 1, 3, 0])
P = torch.softmax(torch.randn(6, 5, generator=G, dtype=f64), 1)
B = torch.rand(6, 5, generator=G, dtype=f64)

# (ours, torch's, input, target) for every loss
LOSSES = [
    (lambda x, t: cet.cross_entropy(x, t, label_smoothing=0.1),
     lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), X, Y),
    (lambda x, t: cet.cross_entropy(x, t), lambda x, t: F.cross_entropy(x, t), X, P),
    (lambda x, t: cet.binary_cross_entropy_with_logits(x, t),
     lambda x, t: F.binary_cross_entropy_with_logits(x, t), X, B),
    (lambda x, t: cet.binary_cross_entropy(torch.sigmoid(x), t),
     lambda x, t: F.binary_cross_entropy(torch.sigmoid(x), t), X, B),
]
W = torch.randn(7, 5, generator=G, dtype=f64)
LINEAR = (lambda x, t: cet.linear_cross_entropy(x, W, t, label_smoothing=0.1),
          lambda x, t: torch_linear_cross_entropy(x, W, t, label_smoothing=0.1), X,
          torch.tensor([0, 6, 2, 1, 3, 5]))


@pytest.mark.parametrize("case", [*LOSSES, LINEAR])
def test_func_grad_jacrev_and_per_sample_grads(case):
    ours, theirs, x, t = case
    torch.testing.assert_close(grad(ours)(x, t), grad(theirs)(x, t), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(jacrev(ours)(x, t), jacrev(theirs)(x, t), rtol=1e-12,
                               atol=1e-14)

    # Opacus-style per-sample gradients: vmap over single samples (a batch of one each)
    def one(f):
        return lambda xi, ti: f(xi.unsqueeze(0), ti.unsqueeze(0))

    a = vmap(grad(one(ours)))(x, t)
    b = vmap(grad(one(theirs)))(x, t)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_per_sample_grads_of_model_parameters():
    lin = torch.nn.Linear(5, 5).double()
    params = dict(lin.named_parameters())

    def loss(p, xi, ti, fn):
        z = torch.func.functional_call(lin, p, (xi.unsqueeze(0),))
        return fn(z, ti.unsqueeze(0))

    ours = vmap(grad(loss), in_dims=(None, 0, 0, None))(params, X, Y, cet.cross_entropy)
    theirs = vmap(grad(loss), in_dims=(None, 0, 0, None))(params, X, Y, F.cross_entropy)
    for k in params:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-12, atol=1e-14)


def test_meta_tensors_need_no_data():
    x = torch.empty(4, 9, device="meta")
    t = torch.empty(4, dtype=torch.long, device="meta")
    assert cet.cross_entropy(x, t).shape == ()
    assert cet.cross_entropy(x, t, reduction="none").shape == (4,)
    assert cet.binary_cross_entropy(x, torch.empty_like(x)).shape == ()
    h = torch.empty(4, 3, device="meta")
    out = cet.linear_cross_entropy(h, torch.empty(9, 3, device="meta"), t, reduction="none")
    assert out.shape == (4,)


def test_whole_functional_namespace():
    assert cet.relu is F.relu and cet.softmax is F.softmax and cet.nll_loss is F.nll_loss
    assert cet.cross_entropy is not F.cross_entropy
    assert "relu" in dir(cet) and "cross_entropy" in dir(cet)
    with pytest.raises(AttributeError, match="no attribute 'not_a_function'"):
        _ = cet.not_a_function


# --------------------------------------------------------------------------- normalizer, shift


@pytest.mark.parametrize("norm", [17.0, torch.tensor(17.0, dtype=f64)])
def test_normalizer_divides_the_sum(norm):
    a = X.clone().requires_grad_()
    b = X.clone().requires_grad_()
    out = cet.cross_entropy(a, Y, normalizer=norm, label_smoothing=0.1)
    ref = F.cross_entropy(b, Y, reduction="sum", label_smoothing=0.1) / 17.0
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.autograd.grad(out, a)[0], torch.autograd.grad(ref, b)[0],
                               rtol=1e-14, atol=1e-16)
    h = X.clone().requires_grad_()
    lo = cet.linear_cross_entropy(h, W, LINEAR[3], normalizer=norm)
    lr = torch_linear_cross_entropy(X, W, LINEAR[3], reduction="sum") / 17.0
    torch.testing.assert_close(lo, lr, rtol=1e-14, atol=0)


def test_normalizer_accumulation_equals_whole_batch():
    """Micro-batches summed with the global token count as normalizer give the loss (and
    gradient) of the whole batch's mean."""
    t = Y.clone()
    t[1] = -100
    count = torch.tensor(float((t != -100).sum()), dtype=f64)
    a = X.clone().requires_grad_()
    parts = sum(cet.cross_entropy(a[i:i + 2], t[i:i + 2], normalizer=count)
                for i in range(0, 6, 2))
    b = X.clone().requires_grad_()
    whole = F.cross_entropy(b, t)
    torch.testing.assert_close(parts, whole, rtol=1e-14, atol=0)
    torch.testing.assert_close(torch.autograd.grad(parts, a)[0],
                               torch.autograd.grad(whole, b)[0], rtol=1e-13, atol=1e-16)


def test_normalizer_errors():
    with pytest.raises(ValueError, match="normalizer"):
        cet.cross_entropy(X, Y, reduction="none", normalizer=3.0)
    with pytest.raises(ValueError, match="normalizer"):
        cet.cross_entropy(X, Y, normalizer=torch.ones(2))
    with pytest.raises(ValueError, match="normalizer"):
        cet.cross_entropy(X, Y, normalizer=-1.0)


def _hf_shift(z, labels):
    """transformers' ForCausalLMLoss: pad the labels with -100, shift left by one."""
    shifted = F.pad(labels, (0, 1), value=-100)[..., 1:]
    return F.cross_entropy(z.reshape(-1, z.shape[-1]).double(), shifted.reshape(-1))


def test_shift_next_token():
    z = torch.randn(2, 4, 5, generator=G, dtype=f64)
    labels = torch.tensor([[1, 2, 3, 4], [0, -100, 2, 1]])
    torch.testing.assert_close(cet.cross_entropy(z, labels, shift=True), _hf_shift(z, labels))
    h = torch.randn(2, 4, 5, generator=G, dtype=f64)
    lab = torch.tensor([[1, 2, 6, 4], [0, -100, 2, 1]])
    got = cet.linear_cross_entropy(h, W, lab, shift=True)
    torch.testing.assert_close(got, _hf_shift(h @ W.T, lab))
    none = cet.linear_cross_entropy(h, W, lab, shift=True, reduction="none")
    assert none.shape == (2, 4) and float(none[:, -1].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="shift=True"):
        cet.cross_entropy(z, labels[:, :3], shift=True)


# --------------------------------------------------------------------------- RL outputs


@pytest.mark.parametrize("tau", [1.0, 0.7])
@pytest.mark.parametrize("cap", [None, 4.0])
def test_logprobs_and_entropy_against_core(tau, cap):
    g = torch.Generator().manual_seed(2)
    h = torch.randn(9, 5, generator=g, dtype=f64)
    Wv = torch.randn(13, 5, generator=g, dtype=f64) * 2
    t = torch.randint(0, 13, (9,), generator=g)
    t[4] = -100
    h[0] = Wv[3] * 10  # a confident row
    t[0] = 3
    out = cet.linear_cross_entropy(h, Wv, t, softcap=cap, temperature=tau,
                                   return_logprobs=True, return_entropy=True,
                                   chunks=cet.ChunkPlan(rows=4))
    z = (h @ Wv.T).numpy()
    if cap is not None:
        z = cap * np.tanh(z / cap)
    z = z / tau
    lsm = ce.log_softmax(z, axis=-1)
    want_lp = np.where(t.numpy() == -100, 0.0, lsm[np.arange(9), np.where(t == -100, 0, t)])
    want_h = ce.entropy(ce.softmax(z, axis=-1), axis=-1)
    np.testing.assert_allclose(out.logprobs.numpy(), want_lp, rtol=4e-16 * 4, atol=0)
    # the core's entropy of the rounded probabilities loses digits on the confident row 0
    # (p ~ 1); there the reference is mpmath at 50 digits
    np.testing.assert_allclose(out.entropy.numpy()[1:], want_h[1:], rtol=1e-14, atol=0)
    mpmath.mp.dps = 50
    zs = [mpmath.mpf(float(v)) for v in z[0]]
    lse = mpmath.log(sum(mpmath.exp(v) for v in zs))
    h0 = float(sum(mpmath.exp(v - lse) * (lse - v) for v in zs))
    assert abs(float(out.entropy[0]) - h0) <= 4 * np.spacing(h0)
    assert out.lse is None and out.loss.shape == ()


def test_logprobs_and_entropy_gradients():
    g = torch.Generator().manual_seed(4)
    h = torch.randn(7, 5, generator=g, dtype=f64)
    t = torch.randint(0, 7, (7,), generator=g)
    a, wa = h.clone().requires_grad_(), W.clone().requires_grad_()
    out = cet.linear_cross_entropy(a, wa, t, temperature=0.5, return_logprobs=True,
                                   return_entropy=True, chunks=cet.ChunkPlan(rows=3))
    b, wb = h.clone().requires_grad_(), W.clone().requires_grad_()
    z = (b @ wb.T) / 0.5
    lsm = torch.log_softmax(z, 1)
    lp = lsm.gather(1, t[:, None])[:, 0]
    ent = -(lsm.exp() * lsm).sum(1)
    torch.testing.assert_close(out.logprobs, lp, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(out.entropy, ent, rtol=1e-13, atol=1e-15)
    c1, c2 = torch.linspace(-1, 1, 7, dtype=f64), torch.linspace(2, 0, 7, dtype=f64)
    ga = torch.autograd.grad((out.logprobs * c1).sum() + (out.entropy * c2).sum(), [a, wa])
    gb = torch.autograd.grad((lp * c1).sum() + (ent * c2).sum(), [b, wb])
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


def test_shift_error_names_the_label_position():
    z = torch.zeros(1, 3, 4, dtype=f64)
    with pytest.raises(ValueError, match=r"target\[0, 2\] = 9 is out of range"):
        cet.cross_entropy(z, torch.tensor([[7, 1, 9]]), shift=True)  # label 0 is never used
    h = torch.zeros(1, 3, 5, dtype=f64)
    with pytest.raises(ValueError, match=r"target\[0, 1\] = 8 is out of range"):
        cet.linear_cross_entropy(h, W, torch.tensor([[9, 8, 1]]), shift=True)


def test_fake_tensors_need_no_data():
    """Under FakeTensorMode (what torch.compile and export trace with) no loss reads a
    value: a host synchronisation would raise DataDependentOutputException."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.randn(4, 9, requires_grad=True)
        t = torch.randint(0, 9, (4,))
        h, Wf = torch.randn(4, 3), torch.randn(9, 3)
        assert cet.cross_entropy(x, t).shape == ()
        assert cet.cross_entropy(x, torch.softmax(x, 1), reduction="none").shape == (4,)
        assert cet.binary_cross_entropy(torch.sigmoid(x), torch.rand(4, 9)).shape == ()
        assert cet.linear_cross_entropy(h, Wf, t, reduction="none").shape == (4,)
        out = cet.linear_cross_entropy(h, Wf, t, return_entropy=True, return_logprobs=True)
        assert out.entropy.shape == out.logprobs.shape == (4,)
