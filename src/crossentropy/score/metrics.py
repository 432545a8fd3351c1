"""Streaming accumulators for ``crossentropy score``: each chunk updates running sums.

Losses come from the library (:func:`crossentropy.cross_entropy`,
:func:`~crossentropy.cross_entropy_from_probs`, :func:`~crossentropy.binary_cross_entropy`,
:func:`~crossentropy.binary_cross_entropy_with_logits`) with ``reduction='none'``; this module
only sums them with the sample weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

import crossentropy as ce

__all__ = ["Categorical", "MultiLabel"]

F64 = npt.NDArray[np.float64]
_LN2 = math.log(2.0)


def _bins(conf: F64, nbins: int) -> npt.NDArray[np.intp]:
    """Equal-width bins over [0, 1]; confidence 1 goes to the last bin."""
    return np.minimum((conf * nbins).astype(np.intp), nbins - 1)


class _Calibration:
    """Reliability-diagram sums: per bin, the weight, the sum of confidences and of hits."""

    def __init__(self, nbins: int) -> None:
        self.nbins = nbins
        self.count = np.zeros(nbins)
        self.conf = np.zeros(nbins)
        self.hit = np.zeros(nbins)

    def update(self, conf: F64, hit: F64, w: F64) -> None:
        b = _bins(conf, self.nbins)
        self.count += np.bincount(b, weights=w, minlength=self.nbins)
        self.conf += np.bincount(b, weights=w * conf, minlength=self.nbins)
        self.hit += np.bincount(b, weights=w * hit, minlength=self.nbins)

    def ece(self) -> float:
        """Expected calibration error: sum over bins of |hits - confidences| / total weight.

        Equal to sum_b (n_b / N) |acc_b - conf_b|, the usual definition.
        """
        total = float(np.sum(self.count))
        return float(np.sum(np.abs(self.hit - self.conf)) / total) if total else 0.0

    def table(self) -> list[dict[str, float]]:
        out = []
        for b in range(self.nbins):
            n = float(self.count[b])
            out.append({
                "lo": b / self.nbins, "hi": (b + 1) / self.nbins, "weight": n,
                "confidence": float(self.conf[b] / n) if n else float("nan"),
                "accuracy": float(self.hit[b] / n) if n else float("nan"),
            })
        return out


class Categorical:
    """Multi-class scoring: cross-entropy, accuracy, per-class sums, calibration."""

    def __init__(self, num_classes: int, *, logits: bool, nbins: int) -> None:
        c = num_classes
        self.c = c
        self.logits = logits
        self.rows = 0
        self.wsum = 0.0
        self.loss = 0.0  # weighted sum of losses, nats
        self.correct = 0.0
        self.infinite = 0
        self.support = np.zeros(c)
        self.hits = np.zeros(c)
        self.loss_c = np.zeros(c)
        self.predicted = np.zeros(c)
        self.cal = _Calibration(nbins)

    def update(self, pred: F64, y: npt.NDArray[np.intp], w: F64) -> None:
        """Add a chunk: `pred` (n, C) probabilities (rows summing to 1) or logits."""
        if self.logits:
            loss = np.asarray(ce.cross_entropy(pred, y, reduction="none"), dtype=np.float64)
            # top-class probability = e^(m - logsumexp(z)) with m = max z, and
            # logsumexp(z) = loss + z_y (the loss is logsumexp(z) - z_y): no second pass.
            zy = np.take_along_axis(pred, y[:, None], axis=1)[:, 0]
            conf = np.minimum(np.exp(np.max(pred, axis=1) - (loss + zy)), 1.0)
        else:
            loss = np.asarray(ce.cross_entropy_from_probs(pred, y, reduction="none"),
                              dtype=np.float64)
            conf = np.max(pred, axis=1)
        guess = np.argmax(pred, axis=1)
        hit = (guess == y).astype(np.float64)
        inf = np.isinf(loss)
        self.infinite += int(np.count_nonzero(inf & (w > 0)))
        with np.errstate(invalid="ignore"):
            wl = np.where(w == 0, 0.0, w * loss)  # weight 0 drops the row, even an infinite loss
        self.rows += pred.shape[0]
        self.wsum += float(np.sum(w))
        self.loss += float(np.sum(wl))
        self.correct += float(np.sum(w * hit))
        c = self.c
        self.support += np.bincount(y, weights=w, minlength=c)
        self.hits += np.bincount(y, weights=w * hit, minlength=c)
        self.loss_c += np.bincount(y, weights=wl, minlength=c)
        self.predicted += np.bincount(guess, weights=w, minlength=c)
        self.cal.update(conf, hit, w)

    def report(self, names: list[str], scale: float) -> dict[str, Any]:
        """The totals: `scale` turns nats into the requested unit."""
        W = self.wsum
        mean = self.loss / W if W else float("nan")
        per = []
        for j in range(self.c):
            s, p = float(self.support[j]), float(self.predicted[j])
            per.append({
                "class": names[j],
                "support": s,
                "recall": float(self.hits[j] / s) if s else float("nan"),
                "precision": float(self.hits[j] / p) if p else float("nan"),
                "cross_entropy": float(self.loss_c[j] / s * scale) if s else float("nan"),
            })
        return {
            "task": "multiclass",
            "rows": self.rows,
            "classes": self.c,
            "weight_total": W,
            "cross_entropy": mean * scale,
            "cross_entropy_nats": mean,
            "cross_entropy_bits": mean / _LN2,
            "perplexity": math.exp(mean) if mean < 709.0 else float("inf"),
            "accuracy": self.correct / W if W else float("nan"),
            "ece": self.cal.ece(),
            "infinite_loss_rows": self.infinite,
            "per_class": per,
            "reliability": self.cal.table(),
        }


class MultiLabel:
    """Multi-label scoring: binary cross-entropy per label, accuracy at 0.5, calibration."""

    def __init__(self, num_labels: int, *, logits: bool, nbins: int) -> None:
        k = num_labels
        self.k = k
        self.logits = logits
        self.rows = 0
        self.wsum = 0.0
        self.loss = np.zeros(k)
        self.hits = np.zeros(k)
        self.pos = np.zeros(k)
        self.exact = 0.0
        self.infinite = 0
        self.cal = _Calibration(nbins)

    def update(self, pred: F64, t: F64, w: F64) -> None:
        if self.logits:
            loss = np.asarray(ce.binary_cross_entropy_with_logits(pred, t, reduction="none"),
                              dtype=np.float64)
            p = np.asarray(ce.sigmoid(pred), dtype=np.float64)
        else:
            loss = np.asarray(ce.binary_cross_entropy(pred, t, reduction="none"),
                              dtype=np.float64)
            p = pred
        hit = ((p >= 0.5) == (t >= 0.5)).astype(np.float64)
        wc = w[:, None]
        self.infinite += int(np.count_nonzero(np.isinf(loss) & (wc > 0)))
        with np.errstate(invalid="ignore"):
            wl = np.where(wc == 0, 0.0, wc * loss)
        self.rows += pred.shape[0]
        self.wsum += float(np.sum(w))
        self.loss += np.sum(wl, axis=0)
        self.hits += np.sum(wc * hit, axis=0)
        self.pos += np.sum(wc * t, axis=0)
        self.exact += float(np.sum(w * np.all(hit == 1.0, axis=1)))
        wb = np.broadcast_to(wc, p.shape).ravel()
        self.cal.update(p.ravel(), t.ravel(), wb)  # calibration of P(label = 1)

    def report(self, names: list[str], scale: float) -> dict[str, Any]:
        W = self.wsum
        k = self.k
        mean = float(np.sum(self.loss)) / (W * k) if W else float("nan")
        per = [{
            "class": names[j],
            "positives": float(self.pos[j]),
            "accuracy": float(self.hits[j] / W) if W else float("nan"),
            "cross_entropy": float(self.loss[j] / W * scale) if W else float("nan"),
        } for j in range(k)]
        return {
            "task": "multilabel",
            "rows": self.rows,
            "classes": k,
            "weight_total": W,
            "cross_entropy": mean * scale,
            "cross_entropy_nats": mean,
            "cross_entropy_bits": mean / _LN2,
            "perplexity": math.exp(mean) if mean < 709.0 else float("inf"),
            "accuracy": float(np.sum(self.hits)) / (W * k) if W else float("nan"),
            "exact_match": self.exact / W if W else float("nan"),
            "ece": self.cal.ece(),
            "infinite_loss_rows": self.infinite,
            "per_class": per,
            "reliability": self.cal.table(),
        }
