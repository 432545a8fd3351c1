"""Softmax, log-softmax and log-sum-exp of a few finite numbers, in plain Python floats.

For the article's 3-element vectors the vectorised reference (activations._rows) spends
most of its time in NumPy call overhead.  This is the same algorithm written for Python
floats, used when the whole input has at most ``SMALL`` elements and every value is
finite; anything else goes to the vectorised path.  The identities are those of
activations._Rows:

* x - m is carried exactly as dh + dl (TwoSum), and exp(x - m) = exp(dh) (1 + dl);
* s, the sum of the terms other than the first maximum, is summed by ``math.fsum``
  (correctly rounded), and log-sum-exp = m + log1p(s);
* softmax = e / (1 + s) with the rounding error of 1 + s put back;
* log-softmax = (dh - log1p(s)) + dl, and the cross-entropy of an index target
  -log softmax_y = (log1p(s) - dh_y) - dl_y, as in ``crossentropy._core``.

This is the arithmetic of the plain-Python backend (``crossentropy._dispatch.PLAIN``,
which :func:`crossentropy._dispatch.pick` gives calls of at most ``SMALL`` elements); it is
tested against the core (tests/test_small.py).
"""

from __future__ import annotations

import math

#: Inputs with at most this many elements take the plain-Python path.
SMALL = 64


def _parts(row: list[float]) -> tuple[int, list[float], list[float], list[float], float]:
    """(k, dh, dl, e, s) for a finite, non-empty row."""
    m = max(row)
    k = row.index(m)
    dh: list[float] = []
    dl: list[float] = []
    e: list[float] = []
    for x in row:
        d = x - m
        bb = d - x
        err = (x - (d - bb)) + (-m - bb)  # TwoSum: x - m = d + err exactly
        if not math.isfinite(err):  # x - m overflowed to -inf: exp gives 0 anyway
            err = 0.0
        t = math.exp(d)
        dh.append(d)
        dl.append(err)
        e.append(t + t * err)
    e[k] = 1.0
    s = math.fsum(e[:k] + e[k + 1 :])
    return k, dh, dl, e, s


def finite(rows: list[list[float]]) -> bool:
    """True when every value is finite (the only case this module handles)."""
    return all(math.isfinite(v) for row in rows for v in row)


def softmax_rows(rows: list[list[float]]) -> list[list[float]]:
    out = []
    for row in rows:
        _, _, _, e, s = _parts(row)
        S = 1.0 + s
        bb = S - 1.0
        S_lo = (1.0 - (S - bb)) + (s - bb)  # TwoSum: 1 + s = S + S_lo exactly
        out.append([(t / S) - (t / S) * (S_lo / S) for t in e])
    return out


def log_softmax_rows(rows: list[list[float]]) -> list[list[float]]:
    out = []
    for row in rows:
        _, dh, dl, _, s = _parts(row)
        L = math.log1p(s)
        out.append([(d - L) + err for d, err in zip(dh, dl, strict=True)])
    return out


def logsumexp_rows(rows: list[list[float]]) -> list[float]:
    return [max(row) + math.log1p(_parts(row)[4]) for row in rows]


def cross_entropy_rows(rows: list[list[float]], labels: list[int]) -> list[float]:
    """-log softmax(row)[y] = (log1p(s) - dh_y) - dl_y per row (labels in range)."""
    out = []
    for row, y in zip(rows, labels, strict=True):
        _, dh, dl, _, s = _parts(row)
        out.append((math.log1p(s) - dh[y]) - dl[y])
    return out
