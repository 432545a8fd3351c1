"""Temperature scaling and Platt scaling of a file of predictions, streamed chunk by chunk.

Temperature scaling (multi-class) fits one T > 0 that minimises the weighted mean
cross-entropy of ``softmax(z / T)``, with z the logits or, for probability input,
``z = log p``.  With the inverse temperature ``s = 1 / T`` and per row
``l(s) = logsumexp(s z) - s z_y``:

.. math::

    \\frac{dl}{ds} = \\sum_c g_c z_c, \\qquad
    \\frac{d^2 l}{ds^2} = \\operatorname{Var}_{p}(z) = \\sum_c p_c (z_c - \\bar z)^2 \\ge 0,

where ``g = softmax(s z) - onehot(y)`` is the gradient that :func:`crossentropy.cross_entropy`
returns (``return_grad=True``) at the logits ``s z``, ``p = g + onehot(y)`` and
``zbar = sum_c p_c z_c = dl/ds + z_y``.  (In T: ``dl/dT = -sum_c g_c z_c / T^2``.)  The loss
is convex in s, so dl/ds has one root; it is found in ``u = log s = -log T`` by Newton's
method on ``dl/ds`` (``d(dl/ds)/du = s Var_p(z)``), each step at most a factor e^4 in T,
inside a bracket [u where dl/ds < 0, u where dl/ds > 0] that every pass narrows, with
bisection when a Newton step leaves it.  It stops when the Newton step (the estimated
distance to the root in log T, i.e. the relative error in T) is below 1e-9; the reported T
is the last point evaluated, so its metrics are exact for it.  One solver iteration is one
pass over the file, chunk by chunk: a file larger than memory is fitted in constant memory.
The first pass also keeps the first 32 MB of rows, on which T is fitted in memory; the
passes over the file start from that T, so a fit takes 2 passes when the file fits the
sample and typically 3 to 5 when it does not.

Platt scaling (binary and multi-label: one independent fit per label) fits
``P(label = 1) = sigmoid(a x + b)``, with x the logit (or ``logit(p)`` for probabilities), by
Newton's method on the exact gradient and Hessian of the weighted mean binary cross-entropy
(gradient ``g = sigmoid(a x + b) - t`` from :func:`crossentropy.binary_cross_entropy_with_logits`,
Hessian weight ``sigmoid(z) sigmoid(-z)``), with a backtracking (Armijo) line search: a trial
point that does not lower the loss is halved on the next pass.  Unregularised, as a
logistic regression with C = inf; it stops when the Newton step is below 1e-9 (relative).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
import numpy.typing as npt

import crossentropy as ce
from crossentropy.score.core import (
    Chunk,
    ScoreOptions,
    check_totals,
    iter_chunks,
    log_scale,
    new_accumulator,
    open_checked,
    report_head,
)
from crossentropy.score.metrics import Categorical, MultiLabel
from crossentropy.score.readers import NpyReader, Reader, ScoreError

__all__ = ["Fit", "apply_file", "calibrate_file", "fit_platt", "fit_temperature",
           "parse_apply"]

F64 = npt.NDArray[np.float64]
TOL = 1e-9
MAX_PASSES = 100
_U_LIMIT = math.log(1e6)  # |log T| beyond this: no finite temperature is fitted
_AB_LIMIT = 1e6


@dataclass
class Fit:
    """A fitted (or given) calibration: the method, its parameters and how it was found."""

    method: str  # "temperature" or "platt"
    temperature: float = 1.0
    a: F64 = field(default_factory=lambda: np.ones(1))
    b: F64 = field(default_factory=lambda: np.zeros(1))
    passes: int = 0
    converged: bool = True
    history: list[dict[str, Any]] = field(default_factory=list)
    before: Categorical | MultiLabel | None = None
    after: Categorical | MultiLabel | None = None

    def params(self) -> dict[str, Any]:
        if self.method == "temperature":
            return {"temperature": self.temperature}
        out: dict[str, Any] = {"platt": {"a": self.a.tolist(), "b": self.b.tolist()}}
        if self.a.size == 1:
            out["platt"].update(a_scalar=float(self.a[0]), b_scalar=float(self.b[0]))
        return out


# --------------------------------------------------------------------------- inputs


def _log_inputs(ch: Chunk, opts: ScoreOptions, path: str) -> F64:
    """z for temperature scaling: the logits, or log p for probabilities."""
    if opts.logits:
        return ch.pred
    assert ch.y is not None
    rows = np.arange(ch.pred.shape[0])
    zero = (ch.pred[rows, ch.y] == 0.0) & (ch.w > 0)
    if zero.any():
        r = int(np.flatnonzero(zero)[0])
        raise ScoreError(f"{path}: {ch.batch.locate(r)}: the true class has probability 0, "
                         "an infinite cross-entropy that no temperature can change")
    with np.errstate(divide="ignore"):
        return np.log(ch.pred)


def _logit_inputs(ch: Chunk, opts: ScoreOptions, path: str, names: list[str]) -> F64:
    """x for Platt scaling: the logits, or logit(p) = log p - log(1 - p) for probabilities."""
    if opts.logits:
        return ch.pred
    p = ch.pred
    edge = (p <= 0.0) | (p >= 1.0)
    if edge.any():
        r, c = divmod(int(np.flatnonzero(edge.ravel())[0]), p.shape[1])
        raise ScoreError(f"{path}: {ch.batch.locate(r)}, column {names[c]!r}: probability "
                         f"{float(p[r, c])!r}: Platt scaling needs 0 < p < 1 (a finite logit)")
    return np.asarray(np.log(p) - np.log1p(-p), dtype=np.float64)


# --------------------------------------------------------------------------- passes


Progress = Callable[[float, int], None]


_SAMPLE_BYTES = 32 * 2**20  # the first rows kept (as float64) for a first fit in memory


def _chunk_sums(z: F64, y: npt.NDArray[np.intp], w: F64, s: float, finite: Any,
                acc: Categorical | None) -> tuple[float, float, float, float]:
    """Weighted sums over one chunk of l, dl/ds and d2l/ds2 at inverse temperature `s`
    (and the weight); the metrics of ``score`` at that temperature go to `acc` if given.

    `finite` is None for logits, else the mask of z > -inf (probability input, z = log p).
    """
    x = s * z
    loss, g = ce.cross_entropy(x, y, reduction="none", return_grad=True)
    loss = np.asarray(loss, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    rows = np.arange(z.shape[0])
    # dl/ds = sum_c g_c z_c (a class of probability 0 has z = -inf and g = 0: it adds 0)
    gz = g * z if finite is None else np.where(finite, g * np.where(finite, z, 0.0), 0.0)
    dl = np.sum(gz, axis=1)
    zy = z[rows, y]
    if acc is not None:
        acc.add(x, y, w, loss, g)  # g becomes p = softmax(s z)
    else:
        g[rows, y] += 1.0  # p = g + onehot(y)
    p = g
    # d2l/ds2 = Var_p(z) = sum_c p_c (z_c - zbar)^2 with zbar = E_p z = dl/ds + z_y:
    # a sum of non-negative terms, no cancellation (unlike E z^2 - (E z)^2)
    dev = z - (dl + zy)[:, None]
    if finite is not None:
        dev = np.where(finite, dev, 0.0)
    var = np.einsum("ij,ij,ij->i", p, dev, dev)
    keep = w > 0  # a row of weight 0 is left out, even one whose loss is infinite
    with np.errstate(invalid="ignore"):
        return (float(np.sum(np.where(keep, w * loss, 0.0))), float(np.sum(w)),
                float(np.sum(np.where(keep, w * dl, 0.0))),
                float(np.sum(np.where(keep, w * var, 0.0))))


def _temperature_pass(path: str, opts: ScoreOptions, s: float, on_chunk: Progress | None,
                      metrics: bool = True,
                      sample: list[tuple[F64, Any, Any, Any]] | None = None
                      ) -> tuple[float, float, float, Categorical | None, bool]:
    """One pass: the weighted means of l, dl/ds and d2l/ds2 at inverse temperature `s`, and
    (when `metrics`) every metric of ``score`` at that temperature.  With `sample`, the
    first chunks (up to about 32 MB) are appended to it; the last value says whether it
    holds the whole file."""
    reader, classes = open_checked(path, opts)
    try:
        acc = new_accumulator(opts, len(classes), logits=True)
        assert isinstance(acc, Categorical)
        L = W = G = H = 0.0
        rows = 0
        kept = 0
        whole = sample is not None
        for ch in iter_chunks(reader, opts, classes):
            assert ch.y is not None
            z = _log_inputs(ch, opts, path)
            finite = None if opts.logits else np.isfinite(z)
            if sample is not None and whole:
                if kept + z.nbytes <= _SAMPLE_BYTES:
                    sample.append((z, ch.y, ch.w, finite))
                    kept += z.nbytes
                else:
                    whole = False
            sums = _chunk_sums(z, ch.y, ch.w, s, finite, acc if metrics else None)
            L, W, G, H = L + sums[0], W + sums[1], G + sums[2], H + sums[3]
            rows += z.shape[0]
            if on_chunk is not None:
                on_chunk(reader.progress(), rows)
        if not metrics:
            acc.rows, acc.wsum, acc.loss = rows, W, L
        check_totals(path, acc)
        return L / W, G / W, H / W, acc if metrics else None, whole
    finally:
        reader.close()


class _NoOptimum(Exception):
    """The cross-entropy has no minimum at a finite T > 0 (the message says which way)."""


def _newton_log_temperature(evaluate: Callable[[float, bool], tuple[float, float, float]],
                            u: float, lo: float, hi: float, tol: float, max_evals: int
                            ) -> tuple[float, bool]:
    """The root of dF/ds in u = log s = -log T: safeguarded Newton from `u` inside the
    bracket (lo, hi) (dF/ds < 0 at lo, > 0 at hi; infinite when not known yet).

    `evaluate(u, last)` returns (F, dF/ds, d2F/ds2) at u; `last` says whether this point is
    likely the last (Newton's previous step was below 1e-3).  Returns (u, converged) with u
    the last point evaluated; raises _NoOptimum.
    """
    prev = prev_ds = 0.0  # the previous steps in u and in s
    before = math.inf  # the step before that
    evals = 0
    while True:
        s = math.exp(u)
        # Newton converges quadratically: step_k ~ kappa step_{k-1}^2 with kappa estimated
        # from the last two steps; the point is likely the last if that is within 10 tol
        kappa = abs(prev) / before**2 if 0.0 < before < math.inf else 1.0
        F, G, H = evaluate(u, evals > 0 and kappa * prev * prev <= 10.0 * tol)
        evals += 1
        if H == 0.0:
            # no curvature: every row's softmax(s z) is one-hot (the loss has underflowed to
            # 0 as T -> 0) or every row's z is constant (no information)
            if F == 0.0 or (G <= 0.0 and math.isinf(hi)):
                raise _NoOptimum("0")
            raise _NoOptimum("constant")
        if G < 0.0:
            lo = u
        elif G > 0.0:
            hi = u
        else:
            return u, True
        ds = -G / H  # Newton step in s ...
        step = ds / s  # ... and in u = log s (d(dF/ds)/du = s d2F/ds2)
        if (math.isinf(hi if step > 0 else lo) and prev * step > 0.0
                and abs(ds) > 0.5 * abs(prev_ds)):
            # no bracket on this side yet and Newton is not closing in (its steps in s do
            # not shrink, as when the loss only tends to a limit): double the step in u
            step = math.copysign(max(abs(step), 2.0 * abs(prev)), step)
        prev_ds = ds
        step = max(-4.0, min(4.0, step))  # at most a factor e^4 in T per pass
        if abs(step) <= tol or hi - lo <= tol:
            return u, True
        cand = u + step
        if not lo < cand < hi:
            cand = 0.5 * (lo + hi)  # Newton left the bracket: bisect
        before, prev = (abs(prev) if evals > 1 else math.inf), cand - u
        if cand > _U_LIMIT and math.isinf(hi):
            raise _NoOptimum("0")
        if cand < -_U_LIMIT and math.isinf(lo):
            raise _NoOptimum("inf")
        if evals >= max_evals:
            return u, False
        u = cand


def _no_optimum(path: str, why: str, fit: Fit) -> ScoreError:
    T = fit.history[-1]["temperature"] if fit.history else 1.0
    passes = f"{fit.passes} pass{'' if fit.passes == 1 else 'es'}"
    if why == "0":
        return ScoreError(f"{path}: the cross-entropy keeps falling as T -> 0 (T = {T:.3g} "
                          f"after {passes}): the top class is (almost) always "
                          "right, so no finite temperature minimises it")
    if why == "inf":
        return ScoreError(f"{path}: the cross-entropy keeps falling as T -> infinity (T = "
                          f"{T:.3g} after {passes}): the predictions carry no "
                          "information about the labels, so no finite temperature "
                          "minimises it")
    return ScoreError(f"{path}: the predictions are constant within every row, so no "
                      "temperature changes them")


def fit_temperature(path: str, opts: ScoreOptions, *, tol: float = TOL,
                    on_pass: Callable[[int], Progress | None] | None = None) -> Fit:
    """Fit the temperature T of `path` (multi-class) by safeguarded Newton in log T.

    The first pass (at T = 1: the metrics "before") also keeps the first 32 MB of rows; T
    fitted on them in memory is where the passes over the whole file start, so that they
    are usually 2 or 3 more (each is one pass; the file is never held whole).
    Raises ScoreError when no finite T > 0 minimises the cross-entropy.
    """
    fit = Fit("temperature")
    sample: list[tuple[F64, Any, Any, Any]] = []
    cb = on_pass(1) if on_pass is not None else None
    F, G, H, fit.before, whole = _temperature_pass(path, opts, 1.0, cb, sample=sample)
    fit.passes = 1
    fit.after = fit.before
    fit.history.append({"temperature": 1.0, "cross_entropy_nats": F, "dF_dT": -G,
                        "metrics": True})

    def in_memory(u: float, last: bool) -> tuple[float, float, float]:
        L = W = Gs = Hs = 0.0
        for z, y, w, finite in sample:
            sums = _chunk_sums(z, y, w, math.exp(u), finite, None)
            L, W, Gs, Hs = L + sums[0], W + sums[1], Gs + sums[2], Hs + sums[3]
        return L / W, Gs / W, Hs / W

    def streamed(u: float, last: bool) -> tuple[float, float, float]:
        s = math.exp(u)
        cbk = on_pass(fit.passes + 1) if on_pass is not None else None
        # The metrics (ECE, Brier, ...) cost about as much as the fit's own sums: they are
        # computed on the passes likely to be the last
        want = last or (whole and fit.passes == 1)
        Fk, Gk, Hk, acc, _ = _temperature_pass(path, opts, s, cbk, metrics=want)
        fit.passes += 1
        fit.after = acc
        # in T: dF/dT = -G / T^2 (the brief's -sum g z / T^2), reported for the record
        fit.history.append({"temperature": 1.0 / s, "cross_entropy_nats": Fk,
                            "dF_dT": -Gk * s * s, "metrics": want})
        return Fk, Gk, Hk

    lo, hi = (0.0, math.inf) if G < 0 else (-math.inf, 0.0)
    start = 0.0
    if G == 0.0 and H > 0.0:
        fit.temperature = 1.0
        return fit
    try:
        if H == 0.0:
            raise _NoOptimum("0" if F == 0.0 or G < 0.0 else "constant")
        try:
            u_sample, ok = _newton_log_temperature(in_memory, 0.0, -math.inf, math.inf,
                                                   tol * 1e-2, MAX_PASSES)
            if ok and lo < u_sample < hi:
                start = u_sample
        except _NoOptimum:
            if whole:
                raise
        if start == 0.0:  # no usable first fit: a Newton step from T = 1
            start = max(-4.0, min(4.0, -G / H))
        u, fit.converged = _newton_log_temperature(streamed, start, lo, hi, tol,
                                                   MAX_PASSES - 1)
    except _NoOptimum as exc:
        raise _no_optimum(path, str(exc), fit) from None
    fit.temperature = 1.0 / math.exp(u)
    if fit.after is None:  # the last pass went without the metrics: one more pass
        cb = on_pass(fit.passes + 1) if on_pass is not None else None
        fit.after = _temperature_pass(path, opts, math.exp(u), cb)[3]
        fit.passes += 1
        fit.history.append({**fit.history[-1], "metrics": True})
    return fit


def _platt_pass(path: str, opts: ScoreOptions, a: F64, b: F64, on_chunk: Progress | None,
                bounds: F64 | None = None) -> tuple[F64, F64, F64, MultiLabel]:
    """Per label: weighted mean loss, gradient (2,) and Hessian (2, 2) at (a, b).

    `bounds` (4, k), when given, is updated in place with, per label and over the rows of
    positive weight: the largest x whose target is below 1, the smallest x whose target is
    above 0, the smallest x whose target is below 1, the largest x whose target is above 0
    (what :func:`_separated` needs).
    """
    reader, classes = open_checked(path, opts)
    try:
        k = len(classes)
        acc = new_accumulator(opts, k, logits=True)
        assert isinstance(acc, MultiLabel)
        S = np.zeros((6, k))  # loss, ga, gb, haa, hab, hbb
        for ch in iter_chunks(reader, opts, classes):
            assert ch.targets is not None
            x = _logit_inputs(ch, opts, path, classes)
            zc = a * x + b
            loss, g = ce.binary_cross_entropy_with_logits(zc, ch.targets, reduction="none",
                                                          return_grad=True)
            loss = np.asarray(loss, dtype=np.float64)
            g = np.asarray(g, dtype=np.float64)
            sig = np.asarray(ce.sigmoid(zc), dtype=np.float64)
            # sigma'(z) = sigma(z) sigma(-z): no cancellation, unlike sigma (1 - sigma)
            h = sig * np.asarray(ce.sigmoid(-zc), dtype=np.float64)
            wc = ch.w[:, None]
            S[0] += np.sum(wc * loss, axis=0)
            S[1] += np.sum(wc * g * x, axis=0)  # dl/da = g x
            S[2] += np.sum(wc * g, axis=0)  # dl/db = g
            S[3] += np.sum(wc * h * x * x, axis=0)
            S[4] += np.sum(wc * h * x, axis=0)
            S[5] += np.sum(wc * h, axis=0)
            acc.add(sig, ch.targets, ch.w, loss)
            if bounds is not None and x.shape[0]:
                live = (ch.w > 0.0)[:, None]
                neg, pos = live & (ch.targets < 1.0), live & (ch.targets > 0.0)
                np.maximum(bounds[0], np.max(np.where(neg, x, -np.inf), axis=0), out=bounds[0])
                np.minimum(bounds[1], np.min(np.where(pos, x, np.inf), axis=0), out=bounds[1])
                np.minimum(bounds[2], np.min(np.where(neg, x, np.inf), axis=0), out=bounds[2])
                np.maximum(bounds[3], np.max(np.where(pos, x, -np.inf), axis=0), out=bounds[3])
            if on_chunk is not None:
                on_chunk(reader.progress(), acc.rows)
        check_totals(path, acc)
        S /= acc.wsum
        grad = S[1:3].T  # (k, 2)
        hess = np.stack([np.stack([S[3], S[4]], -1), np.stack([S[4], S[5]], -1)], -2)
        return S[0], grad, hess, acc
    finally:
        reader.close()


def _separated(bounds: F64, x: str) -> str | None:
    """Why the scores of one label separate its targets (None if they do not).

    `bounds` = (hi0, lo1, lo0, hi1) from :func:`_platt_pass`.  When every x with a target
    below 1 is <= every x with a target above 0 (hi0 <= lo1), the loss falls all the way
    along a -> +inf with b = -a c, for any c in [hi0, lo1]: each row off c tends to loss 0
    and the rows at c keep a constant loss, so no finite (a, b) is a minimum (complete or
    quasi-complete separation; Albert and Anderson 1984).  Likewise hi1 <= lo0 for
    a -> -inf.  Scores that do not vary at all (lo = hi) are another failure, left to the
    Hessian's check.  `x` names the score in the message ("logit", "logit(p)").
    """
    hi0, lo1, lo0, hi1 = (float(v) for v in bounds)
    if not min(lo0, lo1) < max(hi0, hi1):
        return None
    if hi0 <= lo1:
        return (f"every entry with target 1 has {x} >= {lo1:.6g}, every one with target 0 "
                f"has {x} <= {hi0:.6g}")
    if hi1 <= lo0:
        return (f"every entry with target 1 has {x} <= {hi1:.6g}, every one with target 0 "
                f"has {x} >= {lo0:.6g}")
    return None


def fit_platt(path: str, opts: ScoreOptions, *, tol: float = TOL,
              on_pass: Callable[[int], Progress | None] | None = None) -> Fit:
    """Fit Platt's (a, b) for each label of `path` (binary or multi-label).

    Raises ScoreError when a label has no finite fit (one target value never occurs, or the
    scores separate the targets, or they are constant); separation is found on the first
    pass, from the extreme scores of each target value (:func:`_separated`), not by letting
    a and b grow.
    """
    fit = Fit("platt")
    names: list[str] = []
    a_acc = b_acc = F_acc = d = alpha = slope = None
    conv = None
    a_try: F64 = np.ones(1)
    b_try: F64 = np.zeros(1)
    while True:
        cb = on_pass(fit.passes + 1) if on_pass is not None else None
        if a_acc is None:
            reader, names = open_checked(path, opts)
            reader.close()
            k = len(names)
            a_try, b_try = np.ones(k), np.zeros(k)
        first = fit.before is None
        bounds = np.array([[-np.inf], [np.inf], [np.inf], [-np.inf]]) * np.ones(
            len(names)) if first else None
        F, grad, hess, acc = _platt_pass(path, opts, a_try, b_try, cb, bounds)
        fit.passes += 1
        k = F.size
        if fit.before is None:
            fit.before = acc
            pos = acc.pos / acc.wsum
            for j in range(k):
                if not 0.0 < pos[j] < 1.0:
                    raise ScoreError(f"{path}: label {names[j]!r}: every target is "
                                     f"{'1' if pos[j] >= 1.0 else '0'}, so Platt scaling has "
                                     "no finite fit")
            assert bounds is not None
            for j in range(k):
                why = _separated(bounds[:, j], "logit" if opts.logits else "logit(p)")
                if why is not None:
                    raise ScoreError(f"{path}: label {names[j]!r}: the scores separate the "
                                     f"targets ({why}), so Platt scaling has no finite fit: "
                                     "the loss keeps falling as |a| grows")
            a_acc, b_acc, F_acc = a_try.copy(), b_try.copy(), F.copy()
            accept = np.ones(k, dtype=bool)
            d = np.zeros((k, 2))
            alpha = np.ones(k)
            slope = np.zeros(k)
            conv = np.zeros(k, dtype=bool)
        else:
            assert F_acc is not None and alpha is not None and slope is not None
            # Armijo: the loss must fall by at least 1e-4 of the predicted decrease (with a
            # few ulp of slack for the rounding of a mean near the minimum)
            accept = F <= F_acc + 1e-4 * alpha * slope + 4e-16 * np.abs(F_acc)
        fit.after = acc
        assert a_acc is not None and b_acc is not None and F_acc is not None
        assert d is not None and alpha is not None and slope is not None and conv is not None
        fit.history.append({"a": a_try.tolist(), "b": b_try.tolist(),
                            "cross_entropy_nats": F.tolist()})
        for j in range(k):
            if not accept[j]:
                alpha[j] *= 0.5
                continue
            a_acc[j], b_acc[j], F_acc[j] = a_try[j], b_try[j], F[j]
            hj, gj = hess[j], grad[j]
            det = hj[0, 0] * hj[1, 1] - hj[0, 1] ** 2
            if not det > 1e-13 * hj[0, 0] * hj[1, 1]:
                raise ScoreError(f"{path}: label {names[j]!r}: the scores do not vary (or the "
                                 "fit diverged), so Platt's a and b are not determined")
            # Newton direction: solve the 2x2 system H d = -g
            d[j, 0] = -(hj[1, 1] * gj[0] - hj[0, 1] * gj[1]) / det
            d[j, 1] = -(hj[0, 0] * gj[1] - hj[0, 1] * gj[0]) / det
            slope[j] = float(gj @ d[j])
            alpha[j] = 1.0
            conv[j] = (abs(d[j, 0]) <= tol * max(1.0, abs(a_acc[j]))
                       and abs(d[j, 1]) <= tol * max(1.0, abs(b_acc[j])))
            if conv[j]:
                d[j] = 0.0
            if max(abs(a_acc[j]), abs(b_acc[j])) > _AB_LIMIT:
                raise ScoreError(f"{path}: label {names[j]!r}: a or b passed {_AB_LIMIT:g}: "
                                 "the scores separate the targets, so Platt scaling has no "
                                 "finite fit")
        if bool(np.all(conv)) and bool(np.all(accept)):
            break
        if fit.passes >= MAX_PASSES:
            fit.converged = False
            break
        a_try = a_acc + alpha * d[:, 0]
        b_try = b_acc + alpha * d[:, 1]
    assert a_acc is not None and b_acc is not None
    fit.a, fit.b = a_acc, b_acc
    return fit


# --------------------------------------------------------------------------- apply + write


class _Writer:
    """Calibrated predictions in the input's format, written to a temporary name and renamed
    when complete (nothing is left behind on an error)."""

    def __init__(self, path: str, reader: Reader, names: list[str]) -> None:
        self.path = path
        self.reader = reader
        self.names = names
        self.tmp = f"{path}.tmp{os.getpid()}"
        self.kind = reader.kind
        self.f: IO[str] | None = None
        self.csv: Any = None
        self.pq: Any = None
        self.pending: list[Any] = []
        self.pending_bytes = 0
        self.mm: Any = None
        self.row = 0
        self.parts: dict[str, list[npt.NDArray[Any]]] = {}

    def _columns(self, ch: Chunk, out: F64) -> list[tuple[str, npt.NDArray[Any]]]:
        r = self.reader
        cols: list[tuple[str, npt.NDArray[Any]]] = [
            (n, out[:, j]) for j, n in enumerate(r.pred_names)]
        b = ch.batch
        if b.labels is not None and r.label_name is not None:
            cols.append((r.label_name, np.asarray(b.labels)))
        if b.targets is not None and r.target_names is not None:
            cols += [(n, b.targets[:, j]) for j, n in enumerate(r.target_names)]
        if b.weight is not None and r.weight_name is not None:
            cols.append((r.weight_name, b.weight))
        return cols

    def write(self, ch: Chunk, out: F64) -> None:
        if self.kind == "CSV":
            self._csv(ch, out)
        elif self.kind == "Parquet":
            self._parquet(ch, out)
        elif self.kind == ".npy":
            self._npy(out)
        else:
            self._npz(ch, out)

    def _csv(self, ch: Chunk, out: F64) -> None:
        cols = self._columns(ch, out)
        if self.f is None:
            delim = getattr(self.reader, "delim", ",")
            self.f = open(self.tmp, "w", encoding="utf-8", newline="")
            self.csv = csv.writer(self.f, delimiter=delim, lineterminator="\n")
            self.csv.writerow([n for n, _ in cols])
        # floats as repr: the shortest text that reads back to the same double
        self.csv.writerows(zip(*(c.tolist() for _, c in cols), strict=True))

    def _parquet(self, ch: Chunk, out: F64) -> None:
        import pyarrow as pa

        t = pa.table(dict(self._columns(ch, out)))
        self.pending.append(t)
        self.pending_bytes += t.nbytes
        if self.pending_bytes >= 64 * 2**20:  # row groups of about 64 MB, not one per chunk
            self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.pending:
            return
        t = pa.concat_tables(self.pending)
        if self.pq is None:
            self.pq = pq.ParquetWriter(self.tmp, t.schema)
        self.pq.write_table(t, row_group_size=t.num_rows)
        self.pending, self.pending_bytes = [], 0

    def _npy(self, out: F64) -> None:
        r = self.reader
        assert isinstance(r, NpyReader)
        if self.mm is None:
            self.mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float64,
                                                shape=(r.p.rows, out.shape[1]))
        self.mm[self.row:self.row + out.shape[0]] = out
        self.row += out.shape[0]

    def _npz(self, ch: Chunk, out: F64) -> None:
        r = self.reader
        assert isinstance(r, NpyReader)
        b = ch.batch
        keys: list[tuple[str, npt.NDArray[Any] | None]] = [(r.pred_key, out)]
        if r.lab is not None:
            keys.append((r.lab.where, b.labels))
        if r.t is not None:
            keys.append((r.t.where, b.targets))
        if r.w is not None:
            keys.append((r.w.where, b.weight))
        for k, v in keys:
            if v is not None:
                self.parts.setdefault(k, []).append(np.asarray(v))

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.kind == "Parquet":
            self._flush_parquet()
            if self.pq is not None:
                self.pq.close()
        if self.mm is not None:
            self.mm.flush()
            del self.mm
            self.mm = None
        if self.kind == ".npz":
            with open(self.tmp, "wb") as f:
                arrays: dict[str, Any] = {k: np.concatenate(v) for k, v in self.parts.items()}
                np.savez(f, **arrays)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.f is not None:
            self.f.close()
        if self.pq is not None:
            self.pq.close()
        self.mm = None
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def apply_file(path: str, opts: ScoreOptions, fit: Fit, *, output: str | None = None,
               on_chunk: Progress | None = None) -> tuple[Categorical | MultiLabel,
                                                          Categorical | MultiLabel]:
    """One pass over `path`: the metrics before and after `fit`, and the calibrated
    predictions written to `output` (in the input's format) when given."""
    reader, classes = open_checked(path, opts)
    writer = _Writer(output, reader, classes) if output is not None else None
    ok = False
    try:
        before = new_accumulator(opts, len(classes))
        after = new_accumulator(opts, len(classes), logits=True)
        for ch in iter_chunks(reader, opts, classes):
            if isinstance(before, MultiLabel):
                assert ch.targets is not None and isinstance(after, MultiLabel)
                before.update(ch.pred, ch.targets, ch.w)
                x = _logit_inputs(ch, opts, path, classes)
                zc = fit.a * x + fit.b
                after.update(zc, ch.targets, ch.w)
                out = zc if opts.logits else np.asarray(ce.sigmoid(zc), dtype=np.float64)
            else:
                assert ch.y is not None and isinstance(after, Categorical)
                before.update(ch.pred, ch.y, ch.w)
                zs = _log_inputs(ch, opts, path) / fit.temperature
                after.update(zs, ch.y, ch.w)
                out = zs if opts.logits else np.asarray(ce.softmax(zs, axis=1), np.float64)
            if writer is not None:
                writer.write(ch, out)
            if on_chunk is not None:
                on_chunk(reader.progress(), before.rows)
        check_totals(path, before)
        if writer is not None:
            writer.close()
        ok = True
        return before, after
    except OSError as exc:
        if writer is not None and exc.filename == writer.tmp:  # name the file asked for
            raise OSError(exc.errno, exc.strerror, output) from None
        raise
    finally:
        if writer is not None and not ok:
            writer.abort()
        reader.close()


def parse_apply(text: str, multilabel: bool) -> Fit:
    """The calibration of ``--apply``: a temperature, Platt's "a,b", or a saved JSON report.

    >>> parse_apply("2.5", False).temperature
    2.5
    >>> parse_apply("1.5,-0.25", True).b.tolist()
    [-0.25]
    """
    import json

    if os.path.exists(text):
        try:
            with open(text, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as exc:
            raise ScoreError(f"--apply {text}: not a JSON report: {exc}") from None
        if not isinstance(doc, dict):
            raise ScoreError(f"--apply {text}: not a calibrate report")
        if not multilabel and isinstance(doc.get("temperature"), (int, float)):
            return parse_apply(repr(float(doc["temperature"])), False)
        platt = doc.get("platt")
        if multilabel and isinstance(platt, dict):
            a = np.asarray(platt.get("a"), dtype=np.float64)
            b = np.asarray(platt.get("b"), dtype=np.float64)
            if a.shape != b.shape or a.ndim != 1 or not np.all(np.isfinite(a) & np.isfinite(b)):
                raise ScoreError(f"--apply {text}: 'platt' needs lists 'a' and 'b' of one "
                                 "length")
            return Fit("platt", a=a, b=b)
        want = "'platt'" if multilabel else "'temperature'"
        raise ScoreError(f"--apply {text}: the report has no {want} key")
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise ScoreError(f"--apply {text!r}: give a temperature T, Platt's 'a,b', or a JSON "
                         "report file") from None
    if not multilabel:
        if len(vals) != 1 or not (math.isfinite(vals[0]) and vals[0] > 0.0):
            raise ScoreError(f"--apply {text!r}: the temperature must be one finite number "
                             "> 0")
        return Fit("temperature", temperature=vals[0])
    if len(vals) != 2 or not all(math.isfinite(v) for v in vals):
        raise ScoreError(f"--apply {text!r}: Platt scaling takes 'a,b' (two finite numbers)")
    return Fit("platt", a=np.array([vals[0]]), b=np.array([vals[1]]))


def _summary(acc: Categorical | MultiLabel, names: list[str], scale: float) -> dict[str, Any]:
    return acc.report(names, scale)


def calibrate_file(path: str, opts: ScoreOptions, *, apply: Fit | None = None,
                   apply_to: str | None = None, output: str | None = None,
                   on_pass: Callable[[int], Progress | None] | None = None) -> dict[str, Any]:
    """Fit (or take `apply`) a calibration of `path`, and report before and after.

    With `apply_to`, the calibration fitted on `path` is applied to that (held-out) file:
    its metrics before and after are reported and `output` holds its calibrated
    predictions.  Without it, `output` holds the calibrated predictions of `path`.
    """
    multilabel = opts.columns.multilabel
    reader, names = open_checked(path, opts)
    head = report_head(path, reader, opts)
    reader.close()
    scale = log_scale(opts.base)
    if apply is not None and len(names) != apply.a.size and apply.method == "platt":
        if apply.a.size == 1:
            apply = Fit("platt", a=np.full(len(names), apply.a[0]),
                        b=np.full(len(names), apply.b[0]))
        else:
            raise ScoreError(f"--apply: {apply.a.size} Platt parameters for {len(names)} "
                             "labels")
    rep: dict[str, Any] = {"command": "calibrate", **head}
    if apply is None:
        fitter = fit_platt if multilabel else fit_temperature
        fit = fitter(path, opts, on_pass=on_pass)
        rep.update(method=fit.method, **fit.params(), fitted=True, passes=fit.passes,
                   converged=fit.converged, tolerance=TOL, iterations=fit.history)
        assert fit.before is not None and fit.after is not None
        target = path
        if apply_to is None and output is None:
            rep["before"] = _summary(fit.before, names, scale)
            rep["after"] = _summary(fit.after, names, scale)
            return rep
        if apply_to is not None:
            rep["fit_before"] = _summary(fit.before, names, scale)
            rep["fit_after"] = _summary(fit.after, names, scale)
            target = apply_to
    else:
        fit = apply
        rep.update(method=fit.method, **fit.params(), fitted=False, passes=0)
        target = path
    cb = on_pass(fit.passes + 1) if on_pass is not None else None
    before, after = apply_file(target, opts, fit, output=output, on_chunk=cb)
    rep["apply_passes"] = 1
    if target != path:
        rep["applied_to"] = target
    rep["before"] = _summary(before, names, scale)
    rep["after"] = _summary(after, names, scale)
    if output is not None:
        rep["output"] = output
    return rep
