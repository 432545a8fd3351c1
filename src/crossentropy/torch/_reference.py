r"""The one pure-torch categorical cross-entropy: fallback, oracle, and what torch.func sees.

Every option of the kernels (soft cap, temperature, label smoothing, class weights,
``ignore_index``, z-loss) in the *log1p form* of the NumPy core, with an explicit exact
gradient in a :class:`torch.autograd.Function` (``setup_context`` + ``generate_vmap_rule``, so
``torch.func.grad``, ``jacrev`` and ``vmap`` work) whose backward is itself written in
differentiable torch operations (second derivatives are exact too).

For a row ``x`` (soft cap ``c``, temperature ``tau``):

.. math::

    z = c\tanh(x/c)/\tau, \quad m = \max_c z_c = z_k, \quad
    s = \sum_{c\neq k} e^{z_c - m}, \quad L = \operatorname{log1p}(s), \quad
    \mathrm{lse} = m + L,

    \ell = \sum_c a_c\,\big((L - h_c) - l_c\big) + \zeta\,\mathrm{lse}^2, \qquad
    a_c = w_c\,\big((1-\varepsilon) t_c + \varepsilon / C\big)

where ``h_c + l_c = z_c - m`` exactly (``h_c = fl(z_c - m)``, ``l_c`` its rounding error,
TwoSum) and ``e^{z_c - m} = e^{h_c}(1 + l_c)``.  Every term ``L``, ``-h_c``, ``-l_c``-corrected
is ``>= 0``: a confident row (``x = [40, 0, 0]``, target 0) gives ``log1p(2 e^{-40}) =
8.4967e-18`` where ``lse - z_y`` gives 0.  The gradient is

.. math::

    \frac{\partial \ell}{\partial z_c} = p_c W' - a_c \;(c \neq k), \qquad
    \frac{\partial \ell}{\partial z_k} = \frac{(W' - a_k) - a_k s}{1 + s}, \qquad
    W' = \textstyle\sum_c a_c + 2\zeta\,\mathrm{lse}

(``p_k = 1/(1+s)``, written so that an index row with ``y = k`` has no cancellation), times
``dz/dx = \operatorname{sech}^2(x/c) / \tau``.

Public pieces (see ``docs/torch.md``): :func:`categorical_rows`, :func:`entropy_rows`,
:func:`row_weights`, :func:`reduce_rows`, :func:`softcap_derivative`.  The soft cap, the
target bookkeeping and the gradient's coefficients (``W'`` and ``W' - a_k``) are those of
:mod:`._rowstats`, the one statement of the row formula; this module is its dense form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from crossentropy._options import CrossEntropyOptions
from crossentropy.torch._reduction import reduce_rows, row_weights
from crossentropy.torch._rowstats import (
    dense_coefficients,
    index_coefficients,
    index_targets,
    softcap,
    softcap_derivative,
)

__all__ = [
    "categorical_rows",
    "clamped_binary_rows",
    "entropy_rows",
    "reduce_rows",
    "row_weights",
    "softcap",
    "softcap_derivative",
    "zero_class_rows",
]


# --------------------------------------------------------------------------- the row decomposition


class _Rows:
    """The log1p decomposition of (N, C) logits (see the module docstring).

    ``compensate`` adds the TwoSum error ``dl`` of ``z - m``: needed for float64 inputs;
    float32 inputs computed in float64 have ``z - m`` rounded far below their final
    rounding (then ``dl`` is None and counts as 0).
    """

    __slots__ = ("L", "bad", "dh", "dl", "e", "k", "lse", "m", "s", "z")

    def __init__(self, x: Tensor, cap: float | None, temperature: float,
                 compensate: bool = True) -> None:
        z = softcap(x, cap)
        if temperature != 1.0:
            z = z / temperature
        m, k = z.max(dim=1, keepdim=True)
        # fl(z - m).  +inf logits share the mass equally (the limit of softmax([t, t, 0]) as
        # t -> inf): with m = +inf, inf - inf = NaN becomes 0 (e^0 = 1 each) and every finite
        # logit is -inf.  Rows of NaN or of all -inf give NaN here too; they are patched
        # per row (`bad`) since nan_to_num cannot tell them apart.
        dh = torch.nan_to_num(z - m, nan=0.0, posinf=math.inf, neginf=-math.inf)
        dl: Tensor | None = None
        if compensate:
            # TwoSum (Knuth): z - m = dh + dl exactly; 0 where a term is not finite
            bb = dh - z
            dl = ((z - (dh - bb)) + (-m - bb)).nan_to_num_(0.0, 0.0, 0.0)
            # e^{z_c - m} = e^{dh} (1 + dl) to within dl^2 / 2 (|dl| <= ulp(m) / 2)
            e = torch.exp(dh) * (1.0 + dl)
        else:
            e = torch.exp(dh)
        e = e.scatter(1, k, 0.0)  # one maximal element stays out of the sum
        S = e.sum(dim=1, keepdim=True)
        L = torch.log1p(S)
        # a NaN row is NaN; a row of all -inf has no distribution (NaN loss, lse -inf)
        bad = torch.isnan(m) | (m == -math.inf)
        lse = torch.where(torch.isposinf(m), m, m + L)
        self.z, self.m, self.k, self.dh, self.dl, self.bad = z, m, k, dh, dl, bad
        self.e, self.s, self.L, self.lse = e, S, L, lse

    def neg_log_p(self) -> Tensor:
        """``-log softmax(z) = (L - dh) - dl``, every term >= 0 (one per class)."""
        nl = self.L - self.dh
        return nl if self.dl is None else nl - self.dl

    def neg_log_p_at(self, idx: Tensor) -> Tensor:
        """``-log softmax(z)`` at one column per row (`idx` [N, 1]), shape [N, 1]."""
        nl = self.L - self.dh.gather(1, idx)
        return nl if self.dl is None else nl - self.dl.gather(1, idx)

    def probs(self) -> Tensor:
        """``softmax(z)``: ``e_c / (1 + s)``, and ``1 / (1 + s)`` at the kept maximum."""
        p = self.e / (1.0 + self.s)
        return p.scatter(1, self.k, 1.0 / (1.0 + self.s))


def _counted(target: Tensor, opts: CrossEntropyOptions) -> Tensor:
    """[N, 1] bool: the rows that count (index targets not equal to ignore_index)."""
    if target.dim() == 2 or opts.ignore_index is None:
        return torch.ones((target.shape[0], 1), dtype=torch.bool, device=target.device)
    return (target != opts.ignore_index).unsqueeze(1)


def _prob_coefficients(target: Tensor, weight: Tensor | None, opts: CrossEntropyOptions,
                       like: Tensor) -> Tensor:
    """Dense ``a[i, c] = w_c t'_ic`` of probability rows, ``t' = (1 - eps) t + eps / C``."""
    eps, C = opts.label_smoothing, like.shape[1]
    t = target.to(like.dtype)
    if eps:
        t = t * (1.0 - eps) + eps / C  # label smoothing
    if weight is not None:
        t = t * weight.to(like.dtype)
    return t


def _weighted_nll(a: Tensor, nl: Tensor) -> Tensor:
    """``sum_c a_c nl_c`` with ``0 * inf = 0`` (a class without target mass adds exactly 0)."""
    return torch.where(a == 0, torch.zeros_like(nl), a * nl).sum(dim=1)


def _index_parts(target: Tensor, weight: Tensor | None, opts: CrossEntropyOptions,
                 like: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """(safe target [N, 1], ``a_y = (1 - eps) w_y`` on counted rows [N, 1], w or None)."""
    w = None if weight is None else weight.to(like.dtype)
    t = index_targets(target, ignore_index=opts.ignore_index, num_classes=like.shape[1],
                      weight=w, dtype=like.dtype)
    ay = (1.0 - opts.label_smoothing) * t.weight
    return t.safe.unsqueeze(1), ay.unsqueeze(1), w


def _smooth_sum(nl: Tensor, w: Tensor | None) -> Tensor:
    """``sum_c w_c nl_c`` [N] (0 * inf = 0 for a weight-0 class)."""
    if w is None:
        return nl.sum(dim=1)
    return torch.where(w == 0, torch.zeros_like(nl), nl * w).sum(dim=1)


def _forward_rows(
    x: Tensor, target: Tensor, weight: Tensor | None, opts: CrossEntropyOptions,
    temperature: float, compensate: bool = True,
) -> tuple[Tensor, Tensor]:
    r = _Rows(x, opts.softcap, temperature, compensate)
    counted = _counted(target, opts)
    eps = opts.label_smoothing
    if target.dim() == 2:
        loss = _weighted_nll(_prob_coefficients(target, weight, opts, r.z), r.neg_log_p())
    else:
        safe, ay, w = _index_parts(target, weight, opts, r.z)
        # (1 - eps) w_y [(m - z_y) + log1p(s)]; a weight-0 target adds 0 (even at inf)
        loss = torch.where(ay == 0, 0.0, ay * r.neg_log_p_at(safe)).squeeze(1)
        if eps:
            # + eps / C * sum_c w_c (-log p_c)
            sm = (eps / x.shape[1]) * _smooth_sum(r.neg_log_p(), w)
            loss = loss + torch.where(counted.squeeze(1), sm, 0.0)
    lse = r.lse.squeeze(1)
    if opts.z_loss:
        # PaLM z-loss: z_loss * lse^2 per counted row, not weighted by w_y
        loss = loss + torch.where(counted.squeeze(1), opts.z_loss * lse * lse, 0.0)
    bad = (r.bad & counted).squeeze(1)
    loss = torch.where(bad, math.nan, loss)
    return loss, lse


def _grad_rows(
    x: Tensor, target: Tensor, weight: Tensor | None, opts: CrossEntropyOptions,
    temperature: float, g_loss: Tensor | None, g_lse: Tensor | None,
    compensate: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """``g_loss d loss/dx + g_lse d lse/dx`` (and d loss/d target rows for probability targets)."""
    r = _Rows(x, opts.softcap, temperature, compensate)
    counted = _counted(target, opts)
    N, C = r.z.shape
    eps = opts.label_smoothing
    gl = torch.zeros((N, 1), dtype=x.dtype, device=x.device) if g_loss is None \
        else g_loss.unsqueeze(1).to(x.dtype)
    gs = None if g_lse is None else g_lse.unsqueeze(1).to(x.dtype)
    glc = torch.where(counted, gl, 0.0)  # ignored rows carry no loss gradient
    prob = target.dim() == 2
    # W = sum_c a_c (+ 2 zeta lse) and W - a_k, the latter summed from its own terms (the
    # one rule of _rowstats.index_coefficients: W rounded first and a_k subtracted would
    # cancel; with z-loss, (1 + 2 zeta lse) - 1 loses 2 zeta lse's digits)
    zl = torch.where(counted, 2.0 * opts.z_loss * r.lse, 0.0) if opts.z_loss else None
    if prob:
        a = _prob_coefficients(target, weight, opts, r.z)
        W, w_minus, ak = dense_coefficients(a, r.k, zl)
    else:
        safe, ay, w = _index_parts(target, weight, opts, r.z)
        W, w_minus, ak = index_coefficients(
            a_y=ay, k_is_y=r.k == safe, counted=counted, soft=eps / C,
            total_weight=float(C) if w is None else w.sum(),
            w_k=None if w is None else w[r.k], zl=zl)
    one_s = 1.0 + r.s
    coef = glc * W if gs is None else glc * W + gs  # d lse / dz = p
    # c != k: p_c coef - g a_c, p_c = e_c / (1 + s)
    g = r.e * (coef / one_s)
    if prob:
        g = g - glc * a
    else:
        if eps:
            sm = glc * (eps / C)
            g = g - (sm if w is None else sm * w)
        g = g.scatter_add(1, safe, -glc * ay)
    # c = k: p_k = 1 / (1 + s), so p_k coef - g a_k = ((coef - g a_k) - g a_k s) / (1 + s)
    # with coef - g a_k = g (W - a_k) (+ g_lse)
    ck = glc * w_minus if gs is None else glc * w_minus + gs
    gk = (ck - glc * ak * r.s) / one_s
    g = g.scatter(1, r.k, gk)
    if gs is None:
        g = torch.where(counted, g, 0.0)  # an ignored row is not looked at (NaN included)
    if opts.softcap is not None:
        g = g * softcap_derivative(x, opts.softcap)
    if temperature != 1.0:
        g = g / temperature
    gt: Tensor | None = None
    if prob:
        # d loss / d t_c = (1 - eps) w_c (-log p_c)
        nl = r.neg_log_p() * (1.0 - eps)
        if weight is not None:
            nl = nl * weight.to(x.dtype)
        gt = nl * gl
    return g, gt


class _CategoricalRows(torch.autograd.Function):
    """(loss, lse) per row, with the explicit gradient of the module docstring."""

    generate_vmap_rule = True

    @staticmethod
    def forward(
        x: Tensor, target: Tensor, weight: Tensor | None, opts: CrossEntropyOptions,
        temperature: float, compensate: bool,
    ) -> tuple[Tensor, Tensor]:
        return _forward_rows(x, target, weight, opts, temperature, compensate)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x, target, weight, opts, temperature, compensate = inputs
        ctx.save_for_backward(x, target, weight)
        ctx.opts = opts
        ctx.temperature = temperature
        ctx.compensate = compensate
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(
        ctx: Any, g_loss: Tensor | None, g_lse: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        x, target, weight = ctx.saved_tensors
        if g_loss is None and g_lse is None:
            return None, None, None, None, None, None
        gx, gt = _grad_rows(x, target, weight, ctx.opts, ctx.temperature, g_loss, g_lse,
                            ctx.compensate)
        want_t = ctx.needs_input_grad[1] and target.dim() == 2
        return gx, (gt if want_t else None), None, None, None, None


def categorical_rows(
    z: Tensor,
    target: Tensor,
    weight: Tensor | None,
    opts: CrossEntropyOptions,
    *,
    temperature: float = 1.0,
    compensate: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Per-row ``(loss, lse)`` in nats of (N, C) logits, differentiable (any order).

    .. math:: \ell_i = \sum_c a_{ic}\big((L_i - h_{ic}) - l_{ic}\big) + \zeta\,\mathrm{lse}_i^2

    (the log1p form of the module docstring).  `target` is int64 [N] (class indices; rows
    equal to ``opts.ignore_index`` get loss 0 and gradient 0) or floating [N, C] (probability
    rows, differentiable too).  Applies ``opts.softcap``, then divides by `temperature`,
    then label smoothing, class weights and the z-loss (``z_loss * lse^2`` per counted row,
    unweighted).  No ``scale``, no reduction.  Computed in z's dtype (pass float64 on the CPU
    for the core's bounds); lse is that of the soft-capped, tempered logits.
    ``compensate=False`` skips the TwoSum correction of ``z - m`` (right when z holds
    float32 values widened to float64: the rounding it corrects is far below float32's).

    >>> import torch
    >>> from crossentropy._options import CrossEntropyOptions
    >>> x = torch.tensor([[40.0, 0.0, 0.0]], dtype=torch.float64)
    >>> loss, lse = categorical_rows(x, torch.tensor([0]), None, CrossEntropyOptions())
    >>> float(loss[0])  # log1p(2 e^-40) (mpmath: 8.4967085105831780e-18); lse - z_y gives 0
    8.496708510583178e-18
    """
    out: tuple[Tensor, Tensor] = _CategoricalRows.apply(  # type: ignore[no-untyped-call]
        z, target, weight, opts, temperature, compensate)
    return out


def entropy_rows(x: Tensor, cap: float | None = None, temperature: float = 1.0,
                 compensate: bool = True) -> Tensor:
    r"""Per-row entropy (nats) of ``softmax(c tanh(x/c) / tau)``, differentiable.

    .. math:: H = \sum_c p_c\,\big((L - h_c) - l_c\big), \qquad
              \frac{\partial H}{\partial z_c} = p_c\,(-\log p_c - H)

    (``-log p_c`` in the log1p form: every term >= 0, so a confident row keeps its tiny
    entropy).  Autograd differentiates the decomposition (the TwoSum correction has
    derivative 0); the soft-cap factor is :func:`softcap_derivative`.

    >>> import torch
    >>> float(entropy_rows(torch.zeros(1, 4, dtype=torch.float64))[0])  # log 4
    1.3862943611198906
    """
    if cap is not None:
        return _CappedEntropy.apply(  # type: ignore[no-any-return,no-untyped-call]
            x, cap, temperature, compensate)
    return _entropy_of(x, temperature, compensate)


def _entropy_of(z: Tensor, temperature: float, compensate: bool = True) -> Tensor:
    r = _Rows(z, None, temperature, compensate)
    p = r.probs()
    # 0 log 0 = 0; nl is replaced before the product so that its gradient is 0, not 0 * inf
    nl = torch.where(p == 0, torch.zeros_like(p), r.neg_log_p())
    return (p * nl).sum(dim=1)


class _CappedEntropy(torch.autograd.Function):
    """Entropy of soft-capped logits with the exact sech^2 derivative of the cap."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, cap: float, temperature: float, compensate: bool) -> Tensor:
        return _entropy_of(softcap(x, cap), temperature, compensate)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.save_for_backward(inputs[0])
        ctx.cap, ctx.temperature, ctx.compensate = inputs[1], inputs[2], inputs[3]

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, None, None, None]:
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            zc = softcap(x.detach(), ctx.cap).requires_grad_(True)
            h = _entropy_of(zc, ctx.temperature, ctx.compensate)
            (gz,) = torch.autograd.grad(h, zc, g, create_graph=torch.is_grad_enabled())
        return gz * softcap_derivative(x, ctx.cap), None, None, None


# --------------------------------------------------------------------------- no classes


def zero_class_rows(
    x: Tensor, target: Tensor, prob: bool, opts: CrossEntropyOptions,
    normalizer: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""``(out, lse)`` of (N, 0) logits (no classes), with torch's values.

    Each row's loss is an empty sum, 0, except for index targets with label smoothing,
    where torch's smoothing term :math:`\varepsilon / C \cdot 0` is NaN (the reduced
    value too, even over an empty batch); with a z-loss a
    counted row adds :math:`\zeta\,\mathrm{lse}^2 = +\infty` (``lse = -inf``, the log of
    an empty sum).  Every index row is ignored (there is no valid class: the caller has
    checked), so 'mean' is the empty mean (torch: NaN); probability rows give NaN too
    (torch divides by ``numel / C = 0 / 0``).  A normalizer divides the sum instead.
    The result stays in the graph of `x` (and of probability `target`): their gradients
    are the empty (N, 0) tensors torch returns.

    >>> import torch
    >>> from crossentropy._options import CrossEntropyOptions
    >>> o = CrossEntropyOptions.create(reduction="none", semantics="torch")
    >>> zero_class_rows(torch.zeros(2, 0), torch.zeros(2, 0), True, o)[0].tolist()
    [0.0, 0.0]
    """
    rows = x.sum(dim=1)  # 0 per row, in x's graph
    smoothing_nan = not prob and opts.label_smoothing != 0.0
    if prob:
        rows = rows + target.sum(dim=1).to(rows.dtype)
        if opts.z_loss:
            rows = rows + math.inf
    elif smoothing_nan:
        rows = rows + math.nan
    lse = torch.full_like(rows, -math.inf).detach()
    out = reduce_rows(rows, torch.zeros_like(rows), opts, normalizer)
    if smoothing_nan and out.dim() == 0:
        out = out + math.nan  # torch's eps / C times a sum is NaN even over no rows
    return out, lse


# --------------------------------------------------------------------------- binary

#: ATen's ``constexpr float EPSILON = 1e-12`` of binary_cross_entropy_backward, a float32
#: constant widened to double: float(numpy.float32(1e-12)).
_BCE_EPS = 9.999999960041972e-13


def _clamped_bce(q: Tensor, y: Tensor, clamp: float) -> Tensor:
    lq = torch.clamp_min(torch.log(q), clamp)
    l1q = torch.clamp_min(torch.log1p(-q), clamp)
    return -(y * lq + (1.0 - y) * l1q)


class _ClampedBCE(torch.autograd.Function):
    """torch's binary_cross_entropy, value and gradients (see :func:`clamped_binary_rows`)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q: Tensor, y: Tensor, clamp: float) -> Tensor:
        return _clamped_bce(q, y, clamp)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        q, y, _ = inputs
        ctx.save_for_backward(q, y)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        q, y = ctx.saved_tensors
        gq = gy = None
        if ctx.needs_input_grad[0]:
            gq = g * (q - y) / torch.clamp_min(q * (1.0 - q), _BCE_EPS)
        if ctx.needs_input_grad[1]:
            gy = g * (torch.log1p(-q) - torch.log(q))
        return gq, gy, None


def clamped_binary_rows(q: Tensor, y: Tensor, clamp: float = -100.0) -> Tensor:
    r"""Elementwise binary cross-entropy with torch's log clamp, value and gradient.

    .. math:: \ell = -\big(y \max(\log q, c) + (1-y) \max(\operatorname{log1p}(-q), c)\big),
              \quad \frac{\partial \ell}{\partial q} = \frac{q - y}{\max(q(1-q), \delta)},
              \quad \frac{\partial \ell}{\partial y} = \operatorname{log1p}(-q) - \log q

    (``c = -100`` and ``delta`` = float32 1e-12 in torch's BCELoss; the gradient is torch's
    formula, not the derivative of the clamped value, so it is finite at q = 0 and 1 where
    y differs).  Differentiable twice; works under torch.func.

    >>> import torch
    >>> q = torch.tensor([0.0, 0.5], dtype=torch.float64)
    >>> clamped_binary_rows(q, torch.ones_like(q)).tolist()  # -max(log q, -100)
    [100.0, 0.6931471805599453]
    """
    out: Tensor = _ClampedBCE.apply(q, y, clamp)  # type: ignore[no-untyped-call]
    return out
