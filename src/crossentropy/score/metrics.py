"""Streaming accumulators for ``crossentropy score``: each chunk updates running sums.

Losses and gradients come from the library (:func:`crossentropy.cross_entropy`,
:func:`~crossentropy.cross_entropy_from_probs`, :func:`~crossentropy.binary_cross_entropy`,
:func:`~crossentropy.binary_cross_entropy_with_logits`) with ``reduction='none'``; this module
only sums them with the sample weights.

Calibration conventions (the same for every metric below; see docs/evaluation.md):

* equal-width bins over [0, 1]: bin ``b = min(floor(conf * B), B - 1)`` computed in float64,
  so bin b holds ``[b/B, (b+1)/B)`` and the last bin is closed, ``[1 - 1/B, 1]``: a
  confidence of exactly 0 falls in bin 0 and of exactly 1 in bin B - 1 (no phantom bin);
* every row counts with its sample weight (a weight of 0 removes the row); a bin of total
  weight 0 is empty: it adds nothing to ECE or MCE and its accuracy and confidence are
  undefined (NaN here, ``null`` in JSON);
* ``ECE = sum_b (W_b / W) |acc_b - conf_b|``, ``MCE = max_b |acc_b - conf_b|`` over
  non-empty bins, ``RMSCE = sqrt(sum_b (W_b / W) (acc_b - conf_b)^2)`` (the root-mean-square
  calibration error, torchmetrics' ``norm="l2"``);
* equal-mass (adaptive) ECE: rows sorted by confidence, rows of equal confidence kept
  together; a group of tied rows goes to bin ``min(floor(B * m / W), B - 1)`` where m is
  the weight before the group plus half the group's weight (the midpoint rule: with unit
  weights, no ties and N divisible by B, each bin holds exactly N / B rows);
* classwise ECE (Kull et al. 2019): for each class c, equal-width bins of p_c over all
  rows, ``ECE_c = sum_b |sum_{i in b} w_i (1[y_i = c] - p_ic)| / W``; the mean over classes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

import crossentropy as ce

__all__ = ["ADAPTIVE_LIMIT", "Categorical", "MultiLabel", "adaptive_ece", "bin_index",
           "rms_calibration_error"]

F64 = npt.NDArray[np.float64]
_LN2 = math.log(2.0)
NAN = float("nan")

ADAPTIVE_LIMIT = 1 << 22
"""Most confidences kept for the equal-mass ECE (9 bytes each, 17 with weights: at most
about 70 MB); beyond it the value is None."""


def bin_index(conf: F64, nbins: int) -> npt.NDArray[np.intp]:
    """Equal-width bin of each confidence in [0, 1]; confidence 1 goes to the last bin.

    >>> bin_index(np.array([0.0, 0.2, 0.5, 0.99, 1.0]), 2).tolist()
    [0, 0, 1, 1, 1]
    """
    b = (conf * nbins).astype(np.intp)
    return np.minimum(b, nbins - 1, out=b)


def adaptive_ece(conf: F64, hit: F64, w: F64, nbins: int) -> tuple[float, list[dict[str, Any]]]:
    """Equal-mass ECE over `nbins` bins of (about) equal weight, and its bin table.

    Ties are kept in one bin; each group of tied rows goes to the bin of its weight midpoint.

    >>> e, table = adaptive_ece(np.array([0.9, 0.8, 0.6, 0.4]), np.array([1.0, 0, 1, 0]),
    ...                         np.ones(4), 2)
    >>> round(e, 12), [t["weight"] for t in table]
    (0.175, [2.0, 2.0])
    """
    keep = w > 0
    conf, hit, w = conf[keep], hit[keep], w[keep]
    if conf.size == 0:
        return NAN, []
    order = np.argsort(conf, kind="stable")
    c, h, ww = conf[order], hit[order], w[order]
    start = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])  # first row of each tie group
    gw = np.add.reduceat(ww, start)
    before = np.cumsum(gw) - gw
    total = float(np.sum(gw))
    gbin = np.minimum(((before + 0.5 * gw) * nbins / total).astype(np.intp), nbins - 1)
    rbin = np.repeat(gbin, np.diff(np.r_[start, c.size]))
    wb = np.bincount(rbin, weights=ww, minlength=nbins)
    cb = np.bincount(rbin, weights=ww * c, minlength=nbins)
    hb = np.bincount(rbin, weights=ww * h, minlength=nbins)
    table = []
    for b in range(nbins):
        rows = c[rbin == b]
        n = float(wb[b])
        table.append({
            "lo": float(rows[0]) if rows.size else NAN,
            "hi": float(rows[-1]) if rows.size else NAN,
            "weight": n,
            "confidence": float(cb[b] / n) if n else NAN,
            "accuracy": float(hb[b] / n) if n else NAN,
        })
    return float(np.sum(np.abs(hb - cb)) / total), table


def rms_calibration_error(conf: npt.ArrayLike, hit: npt.ArrayLike,
                          w: npt.ArrayLike | None = None, nbins: int = 15) -> float:
    r"""Root-mean-square calibration error over `nbins` equal-width confidence bins.

    .. math::

        \mathrm{RMSCE} = \sqrt{\sum_b \frac{W_b}{W}\,(\mathrm{acc}_b - \mathrm{conf}_b)^2},

    where bin b (``min(floor(conf * nbins), nbins - 1)``, as for the ECE) holds the rows of
    total weight W_b, acc_b is their weighted mean `hit` (1 for a right top class, or the 0/1
    target of a binary prediction) and conf_b their weighted mean `conf`; W is the total
    weight, and empty bins add nothing.  This is torchmetrics' ``calibration_error(...,
    norm="l2")`` with sample weights (and with a confidence of exactly 1 in the last bin,
    where torchmetrics opens a bin of its own).  ``crossentropy score`` reports it as
    ``rmsce``.

    >>> conf = np.array([0.9, 0.8, 0.3, 0.2])   # bins of 0.5: [0.3, 0.2] and [0.9, 0.8]
    >>> hit = np.array([1.0, 0.0, 1.0, 0.0])    # acc 0.5 in each: gaps 0.25 and 0.35
    >>> round(rms_calibration_error(conf, hit, nbins=2), 12)  # sqrt((0.25^2 + 0.35^2) / 2)
    0.304138126515
    """
    c = np.asarray(conf, dtype=np.float64).reshape(-1)
    h = np.asarray(hit, dtype=np.float64).reshape(-1)
    ww = np.ones(c.size) if w is None else np.asarray(w, dtype=np.float64).reshape(-1)
    if not (c.shape == h.shape == ww.shape):
        raise ValueError(f"conf, hit and w must have one length, got {c.size}, {h.size} and "
                         f"{ww.size}")
    if nbins < 1:
        raise ValueError(f"nbins must be at least 1, got {nbins}")
    cal = _Calibration(nbins, keep=0)
    cal.update(c, h, ww)
    return cal.rmsce()


class _Calibration:
    """Reliability sums: per equal-width bin the weight, confidences and hits; and the
    confidences themselves (up to :data:`ADAPTIVE_LIMIT`) for the equal-mass ECE."""

    def __init__(self, nbins: int, keep: int | None = None) -> None:
        self.nbins = nbins
        self.count = np.zeros(nbins)
        self.conf = np.zeros(nbins)
        self.hit = np.zeros(nbins)
        self.keep = ADAPTIVE_LIMIT if keep is None else keep
        self.kept = 0
        self.parts: list[tuple[F64, Any, F64 | None]] | None = []

    def update(self, conf: F64, hit: F64, w: F64) -> None:
        b = bin_index(conf, self.nbins)
        self.count += np.bincount(b, weights=w, minlength=self.nbins)
        self.conf += np.bincount(b, weights=w * conf, minlength=self.nbins)
        self.hit += np.bincount(b, weights=w * hit, minlength=self.nbins)
        if self.parts is not None:
            self.kept += conf.size
            if self.kept > self.keep:
                self.parts = None  # too many to keep: the equal-mass ECE is not computed
            else:
                # 9 bytes an entry: hits of 0 or 1 as uint8, weights only when not all 1
                h = hit.astype(np.uint8) if bool(np.all((hit == 0) | (hit == 1))) else hit
                ww = None if bool(np.all(w == 1.0)) else np.array(w, dtype=np.float64)
                self.parts.append((np.array(conf, dtype=np.float64), h, ww))

    def ece(self) -> float:
        """Expected calibration error: sum over bins of |hits - confidences| / total weight.

        Equal to sum_b (W_b / W) |acc_b - conf_b|, the usual definition.
        """
        total = float(np.sum(self.count))
        return float(np.sum(np.abs(self.hit - self.conf)) / total) if total else NAN

    def mce(self) -> float:
        """Maximum calibration error: the largest |acc_b - conf_b| over non-empty bins."""
        full = self.count > 0
        if not full.any():
            return NAN
        return float(np.max(np.abs(self.hit[full] - self.conf[full]) / self.count[full]))

    def rmsce(self) -> float:
        """Root-mean-square calibration error: sqrt(sum_b (W_b / W) (acc_b - conf_b)^2).

        With acc_b - conf_b = (hits_b - confidences_b) / W_b, each non-empty bin adds
        (hits_b - confidences_b)^2 / (W_b W): the sums kept, no per-row pass.
        """
        total = float(np.sum(self.count))
        full = self.count > 0
        if not total or not full.any():
            return NAN
        gap = self.hit[full] - self.conf[full]
        return math.sqrt(float(np.sum(gap * gap / self.count[full])) / total)

    def adaptive(self, nbins: int) -> tuple[float | None, list[dict[str, Any]]]:
        if self.parts is None:
            return None, []
        if not self.parts:
            return NAN, []
        conf = np.concatenate([p[0] for p in self.parts])
        hit = np.concatenate([np.asarray(p[1], dtype=np.float64) for p in self.parts])
        w = np.concatenate([p[2] if p[2] is not None else np.ones(p[0].size)
                            for p in self.parts])
        return adaptive_ece(conf, hit, w, nbins)

    def table(self) -> list[dict[str, float]]:
        out = []
        for b in range(self.nbins):
            n = float(self.count[b])
            out.append({
                "lo": b / self.nbins, "hi": (b + 1) / self.nbins, "weight": n,
                "confidence": float(self.conf[b] / n) if n else NAN,
                "accuracy": float(self.hit[b] / n) if n else NAN,
            })
        return out


class _Classwise:
    """Per class (or label) c, equal-width bins of p_c: summed weight * p_c and weight * y_c."""

    def __init__(self, c: int, nbins: int) -> None:
        self.c = c
        self.nbins = nbins
        self.conf = np.zeros(c * nbins)
        self.hit = np.zeros(c * nbins)
        self.offset = np.arange(c, dtype=np.intp) * nbins

    def update(self, p: F64, w: F64, y: npt.NDArray[np.intp] | None = None,
               t: F64 | None = None) -> None:
        """`p` (n, C); the truth as class indices `y` (one-hot) or as 0/1 targets `t`."""
        idx = bin_index(p, self.nbins)
        idx += self.offset
        m = self.c * self.nbins
        unit = bool(np.all(w == 1.0))  # no weights: skip the (n, C) products
        wp = p if unit else w[:, None] * p
        self.conf += np.bincount(idx.ravel(), weights=wp.ravel(), minlength=m)
        if y is not None:
            rows = np.arange(p.shape[0])
            self.hit += np.bincount(idx[rows, y], weights=w, minlength=m)
        else:
            assert t is not None
            wt = t if unit else w[:, None] * t
            self.hit += np.bincount(idx.ravel(), weights=wt.ravel(), minlength=m)

    def per_class(self, total: float) -> F64:
        """ECE_c for each class: sum_b |hits - confidences| / total weight."""
        if not total:
            return np.full(self.c, NAN)
        gap = np.abs(self.hit - self.conf).reshape(self.c, self.nbins)
        return np.asarray(np.sum(gap, axis=1) / total, dtype=np.float64)


def _mean(x: float, w: float) -> float:
    return x / w if w else NAN


class Categorical:
    """Multi-class scoring: cross-entropy, accuracy, top-k, Brier, per-class sums, calibration."""

    def __init__(self, num_classes: int, *, logits: bool, nbins: int,
                 top_k: tuple[int, ...] = ()) -> None:
        c = num_classes
        self.c = c
        self.logits = logits
        self.nbins = nbins
        self.top_k = tuple(k for k in top_k)
        self.rows = 0
        self.wsum = 0.0
        self.loss = 0.0  # weighted sum of losses, nats
        self.correct = 0.0
        self.brier = 0.0
        self.topk = np.zeros(len(self.top_k))
        self.infinite = 0
        self.support = np.zeros(c)
        self.hits = np.zeros(c)
        self.loss_c = np.zeros(c)
        self.predicted = np.zeros(c)
        self.cal = _Calibration(nbins)
        self.classwise = _Classwise(c, nbins)

    def update(self, pred: F64, y: npt.NDArray[np.intp], w: F64) -> None:
        """Add a chunk: `pred` (n, C) probabilities (rows summing to 1) or logits."""
        if self.logits:
            loss, g = ce.cross_entropy(pred, y, reduction="none", return_grad=True)
        else:
            loss = ce.cross_entropy_from_probs(pred, y, reduction="none")
            g = pred.copy()
            g[np.arange(pred.shape[0]), y] -= 1.0  # p - onehot(y)
            self.add(pred, y, w, np.asarray(loss, dtype=np.float64), g, p=pred)
            return
        self.add(pred, y, w, np.asarray(loss, dtype=np.float64), np.asarray(g, np.float64))

    def add(self, pred: F64, y: npt.NDArray[np.intp], w: F64, loss: F64, g: F64,
            p: F64 | None = None) -> None:
        """Add a chunk whose per-row losses and gradients g = p - onehot(y) are known.

        `p`: the probabilities, when known exactly (probability input); else they are
        recovered from `g`, which is then overwritten.
        """
        rows = np.arange(pred.shape[0])
        # Brier score of a row: sum_c (p_c - onehot_c)^2 = sum_c g_c^2, from the gradient.
        brier = np.einsum("ij,ij->i", g, g)
        if p is None:
            p = g
            p[rows, y] += 1.0  # p = g + onehot(y): the probabilities, to an absolute ulp
            np.clip(p, 0.0, 1.0, out=p)
        guess = np.argmax(pred, axis=1)
        conf = p[rows, guess]
        hit = (guess == y).astype(np.float64)
        inf = np.isinf(loss)
        self.infinite += int(np.count_nonzero(inf & (w > 0)))
        with np.errstate(invalid="ignore"):
            wl = np.where(w == 0, 0.0, w * loss)  # weight 0 drops the row, even an infinite loss
        self.rows += pred.shape[0]
        self.wsum += float(np.sum(w))
        self.loss += float(np.sum(wl))
        self.correct += float(np.sum(w * hit))
        self.brier += float(np.sum(w * brier))
        if self.top_k:
            # rank of the label: classes scored above it, and tied ones of lower index
            # (the tie rule of argmax, so top-1 accuracy equals the accuracy)
            zy = pred[rows, y][:, None]
            cols = np.arange(self.c)
            rank = np.sum((pred > zy) | ((pred == zy) & (cols < y[:, None])), axis=1)
            for j, k in enumerate(self.top_k):
                self.topk[j] += float(np.sum(w * (rank < k)))
        c = self.c
        self.support += np.bincount(y, weights=w, minlength=c)
        self.hits += np.bincount(y, weights=w * hit, minlength=c)
        self.loss_c += np.bincount(y, weights=wl, minlength=c)
        self.predicted += np.bincount(guess, weights=w, minlength=c)
        self.cal.update(conf, hit, w)
        self.classwise.update(p, w, y=y)

    def mean_loss(self) -> float:
        return _mean(self.loss, self.wsum)

    def report(self, names: list[str], scale: float) -> dict[str, Any]:
        """The totals: `scale` turns nats into the requested unit."""
        W = self.wsum
        mean = _mean(self.loss, W)
        cw = self.classwise.per_class(W)
        per = []
        for j in range(self.c):
            s, p = float(self.support[j]), float(self.predicted[j])
            nll = float(self.loss_c[j] / s) if s else NAN
            per.append({
                "class": names[j],
                "support": s,
                "recall": float(self.hits[j] / s) if s else NAN,
                "precision": float(self.hits[j] / p) if p else NAN,
                "cross_entropy": nll * scale,
                "nll_nats": nll,
                "ece": float(cw[j]),
            })
        aece, atable = self.cal.adaptive(self.nbins)
        return {
            "task": "multiclass",
            "rows": self.rows,
            "classes": self.c,
            "weight_total": W,
            "cross_entropy": mean * scale,
            "cross_entropy_nats": mean,
            "cross_entropy_bits": mean / _LN2,
            "perplexity": math.exp(mean) if mean < 709.0 else float("inf"),
            "accuracy": _mean(self.correct, W),
            "top_k_accuracy": {str(k): _mean(float(self.topk[j]), W)
                               for j, k in enumerate(self.top_k)},
            "brier": _mean(self.brier, W),
            "ece": self.cal.ece(),
            "mce": self.cal.mce(),
            "rmsce": self.cal.rmsce(),
            "adaptive_ece": aece,
            "classwise_ece": float(np.mean(cw)) if W else NAN,
            "infinite_loss_rows": self.infinite,
            "per_class": per,
            "reliability": self.cal.table(),
            "reliability_adaptive": atable,
        }


class MultiLabel:
    """Multi-label scoring: binary cross-entropy per label, accuracy at 0.5, calibration."""

    def __init__(self, num_labels: int, *, logits: bool, nbins: int) -> None:
        k = num_labels
        self.k = k
        self.logits = logits
        self.nbins = nbins
        self.rows = 0
        self.wsum = 0.0
        self.loss = np.zeros(k)
        self.hits = np.zeros(k)
        self.pos = np.zeros(k)
        self.brier = np.zeros(k)
        self.exact = 0.0
        self.infinite = 0
        self.cal = _Calibration(nbins)
        self.classwise = _Classwise(k, nbins)

    def update(self, pred: F64, t: F64, w: F64) -> None:
        if self.logits:
            loss = ce.binary_cross_entropy_with_logits(pred, t, reduction="none")
            p = np.asarray(ce.sigmoid(pred), dtype=np.float64)
        else:
            loss = ce.binary_cross_entropy(pred, t, reduction="none")
            p = pred
        self.add(p, t, w, np.asarray(loss, dtype=np.float64))

    def add(self, p: F64, t: F64, w: F64, loss: F64) -> None:
        """Add a chunk of probabilities P(label = 1) whose losses are known."""
        hit = ((p >= 0.5) == (t >= 0.5)).astype(np.float64)
        wc = w[:, None]
        self.infinite += int(np.count_nonzero(np.isinf(loss) & (wc > 0)))
        with np.errstate(invalid="ignore"):
            wl = np.where(wc == 0, 0.0, wc * loss)
        self.rows += p.shape[0]
        self.wsum += float(np.sum(w))
        self.loss += np.sum(wl, axis=0)
        self.hits += np.sum(wc * hit, axis=0)
        self.pos += np.sum(wc * t, axis=0)
        self.brier += np.sum(wc * (p - t) ** 2, axis=0)
        self.exact += float(np.sum(w * np.all(hit == 1.0, axis=1)))
        wb = np.broadcast_to(wc, p.shape).ravel()
        self.cal.update(p.ravel(), t.ravel(), wb)  # calibration of P(label = 1)
        self.classwise.update(p, w, t=t)

    def mean_loss(self) -> float:
        return _mean(float(np.sum(self.loss)), self.wsum * self.k)

    def report(self, names: list[str], scale: float) -> dict[str, Any]:
        W = self.wsum
        k = self.k
        mean = _mean(float(np.sum(self.loss)), W * k)
        cw = self.classwise.per_class(W)
        per = [{
            "class": names[j],
            "positives": float(self.pos[j]),
            "accuracy": float(self.hits[j] / W) if W else NAN,
            "cross_entropy": float(self.loss[j] / W * scale) if W else NAN,
            "nll_nats": float(self.loss[j] / W) if W else NAN,
            "brier": float(self.brier[j] / W) if W else NAN,
            "ece": float(cw[j]),
        } for j in range(k)]
        aece, atable = self.cal.adaptive(self.nbins)
        return {
            "task": "multilabel",
            "rows": self.rows,
            "classes": k,
            "weight_total": W,
            "cross_entropy": mean * scale,
            "cross_entropy_nats": mean,
            "cross_entropy_bits": mean / _LN2,
            "perplexity": math.exp(mean) if mean < 709.0 else float("inf"),
            "accuracy": _mean(float(np.sum(self.hits)), W * k),
            "exact_match": _mean(self.exact, W),
            "brier": _mean(float(np.sum(self.brier)), W * k),
            "ece": self.cal.ece(),
            "mce": self.cal.mce(),
            "rmsce": self.cal.rmsce(),
            "adaptive_ece": aece,
            "classwise_ece": float(np.mean(cw)) if W else NAN,
            "infinite_loss_rows": self.infinite,
            "per_class": per,
            "reliability": self.cal.table(),
            "reliability_adaptive": atable,
        }
