"""Score a file of predictions against labels, streaming it chunk by chunk.

The flow: :func:`~crossentropy.score.readers.open_reader` yields chunks; each chunk is
checked (numbers finite, probabilities in [0, 1] with rows summing to 1, labels among the
classes, weights >= 0), converted, and added to a running accumulator
(:mod:`crossentropy.score.metrics`).  Nothing is written until the whole file has been read.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from crossentropy.explain.steps import base_name
from crossentropy.score.metrics import Categorical, MultiLabel
from crossentropy.score.readers import Batch, ColumnSpec, Reader, ScoreError, open_reader

__all__ = ["Chunk", "ScoreOptions", "check_totals", "default_chunk_rows", "iter_chunks",
           "labels_to_index", "log_scale", "new_accumulator", "open_checked", "report_head",
           "score_file"]

F64 = npt.NDArray[np.float64]


def log_scale(base: float | None) -> float:
    """The factor that turns nats into the unit of `base`: 1 / ln(base) (1 for nats).

    >>> log_scale(None), round(log_scale(2.0), 12)
    (1.0, 1.442695040889)
    """
    return 1.0 if base is None else 1.0 / math.log(base)


@dataclass
class ScoreOptions:
    """Everything ``crossentropy score`` needs besides the file name."""

    columns: ColumnSpec = field(default_factory=ColumnSpec)
    logits: bool = False
    classes: list[str] | None = None
    base: float | None = None
    bins: int = 15
    sum_tolerance: float = 1e-3
    chunk_rows: int | None = None
    file_format: str | None = None
    top_k: tuple[int, ...] = ()
    max_footer_mb: float = 20.0


def default_chunk_rows(num_columns: int) -> int:
    """About one million numbers per chunk (8 MB of float64), at least 64 rows.

    >>> default_chunk_rows(1000), default_chunk_rows(3)
    (1000, 333333)
    """
    return max(64, 1_000_000 // max(num_columns, 1))


def labels_to_index(raw: npt.NDArray[Any], classes: list[str], locate: Callable[[int], str],
                    column: str, path: str) -> npt.NDArray[np.intp]:
    """Class labels (indices, or names from `classes`) to indices, or a ScoreError.

    >>> labels_to_index(np.array(["dog", "0", "bird"]), ["cat", "dog", "bird"],
    ...                 lambda i: f"line {i + 2}", "label", "f.csv")
    array([1, 0, 2])
    """
    c = len(classes)
    if raw.dtype.kind in "iu":
        y = raw.astype(np.int64)
        bad = (y < 0) | (y >= c)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ScoreError(f"{path}: {locate(i)}, column {column!r}: label {int(y[i])} is not "
                             f"a class (classes are 0..{c - 1})")
        return y.astype(np.intp)
    if raw.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(raw) | (raw != np.round(raw)) | (raw < 0) | (raw >= c)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ScoreError(f"{path}: {locate(i)}, column {column!r}: label "
                             f"{float(raw[i])!r} is not a class (classes are 0..{c - 1})")
        return raw.astype(np.intp)
    lookup = {name: j for j, name in enumerate(classes)}
    uniq, inverse = np.unique(raw.astype(str), return_inverse=True)
    codes = np.empty(len(uniq), dtype=np.intp)
    for u, text in enumerate(uniq.tolist()):
        if text in lookup:
            codes[u] = lookup[text]
            continue
        try:
            j = int(text)
        except ValueError:
            j = -1
        if not 0 <= j < c:
            i = int(np.flatnonzero(inverse == u)[0])
            shown = ", ".join(classes[:8]) + (", ..." if c > 8 else "")
            raise ScoreError(f"{path}: {locate(i)}, column {column!r}: label {text!r} is not "
                             f"among the classes ({shown}; or an index 0..{c - 1})")
        codes[u] = j
    return codes[inverse.reshape(-1)]


def _first_bad(mask: npt.NDArray[np.bool_]) -> tuple[int, int]:
    flat = int(np.flatnonzero(mask.ravel())[0])
    r, c = divmod(flat, mask.shape[1]) if mask.ndim == 2 else (flat, 0)
    return r, c


def _check_batch(b: Batch, reader: Reader, opts: ScoreOptions, multilabel: bool) -> None:
    path = reader.path
    names = reader.pred_names
    pred = b.pred
    bad = ~np.isfinite(pred)
    if bad.any():
        r, c = _first_bad(bad)
        raise ScoreError(f"{path}: {b.locate(r)}, column {names[c]!r}: "
                         f"{float(pred[r, c])!r} is not a finite number")
    if not opts.logits:
        out = (pred < 0.0) | (pred > 1.0)
        if out.any():
            r, c = _first_bad(out)
            # Probabilities are never negative nor above 1; logits are both.
            hint = "; are these logits? then pass --logits"
            col = pred[:, c]
            if pred[r, c] > 1.0 and np.all(col == np.round(col)):
                # Whole numbers above 1 (0, 1, 2, ... or 1017, 1018, ...) are an id or row
                # index, not scores: --logits would score the id as a class.
                others = [n for n in names if n != names[c]]
                hint = (f"; column {names[c]!r} holds whole numbers, like an id or a row "
                        "index: leave it out by naming the prediction columns with --columns"
                        + (f" (e.g. --columns {','.join(others)})" if 0 < len(others) <= 4
                           else " (names, a:b index ranges or globs like 'p_*')"))
            raise ScoreError(f"{path}: {b.locate(r)}, column {names[c]!r}: probability "
                             f"{float(pred[r, c])!r} is outside [0, 1]{hint}")
        if not multilabel:
            s = np.sum(pred, axis=1)
            off = np.abs(s - 1.0) > opts.sum_tolerance
            if off.any():
                r = int(np.flatnonzero(off)[0])
                raise ScoreError(
                    f"{path}: {b.locate(r)}, columns {names[0]!r}..{names[-1]!r}: the "
                    f"probabilities sum to {float(s[r])!r}, not 1 (tolerance "
                    f"{opts.sum_tolerance:g}, set by --sum-tolerance); for scores or logits "
                    "pass --logits"
                )
    if b.targets is not None:
        t = b.targets
        tn = reader.target_names or names
        badt = ~((t >= 0.0) & (t <= 1.0))
        if badt.any():
            r, c = _first_bad(badt)
            raise ScoreError(f"{path}: {b.locate(r)}, column {tn[c]!r}: target "
                             f"{float(t[r, c])!r} is not in [0, 1]")
    if b.weight is not None:
        w = b.weight
        badw = ~np.isfinite(w) | (w < 0.0)
        if badw.any():
            r = int(np.flatnonzero(badw)[0])
            raise ScoreError(f"{path}: {b.locate(r)}, column {reader.weight_name!r}: weight "
                             f"{float(w[r])!r} must be finite and >= 0")


@dataclass
class Chunk:
    """A checked chunk: predictions (probability rows divided by their sums), class indices
    (multi-class) or targets (multi-label), weights (ones when the file has none)."""

    pred: F64
    y: npt.NDArray[np.intp] | None
    targets: F64 | None
    w: F64
    batch: Batch


def open_checked(path: str, opts: ScoreOptions) -> tuple[Reader, list[str]]:
    """Open `path` and check its columns against the options; return the reader and the
    class names.  The caller closes the reader."""
    multilabel = opts.columns.multilabel
    reader = open_reader(path, opts.columns, logits=opts.logits, file_format=opts.file_format,
                         max_footer_mb=opts.max_footer_mb)
    try:
        names = reader.pred_names
        c = len(names)
        classes = list(opts.classes) if opts.classes is not None else list(names)
        if len(classes) != c:
            raise ScoreError(f"{path}: --classes names {len(classes)} classes but there are "
                             f"{c} prediction columns")
        if not multilabel and c < 2:
            raise ScoreError(f"{path}: multi-class scoring needs at least 2 prediction columns, "
                             f"got {c} ({names}); for one binary column use --multilabel")
    except BaseException:
        reader.close()
        raise
    return reader, classes


def iter_chunks(reader: Reader, opts: ScoreOptions, classes: list[str]) -> Iterator[Chunk]:
    """The reader's batches, checked (ScoreError on the first bad cell) and converted."""
    multilabel = opts.columns.multilabel
    chunk = opts.chunk_rows or default_chunk_rows(len(classes))
    for b in reader.batches(chunk):
        _check_batch(b, reader, opts, multilabel)
        n = b.pred.shape[0]
        w = b.weight if b.weight is not None else np.ones(n)
        if multilabel:
            assert b.targets is not None
            yield Chunk(b.pred, None, b.targets, w, b)
            continue
        assert b.labels is not None
        y = labels_to_index(b.labels, classes, b.locate, reader.label_name or "label",
                            reader.path)
        pred = b.pred
        if not opts.logits:
            # A row of rounded probabilities (within --sum-tolerance of 1) is scored
            # as the distribution it stands for: divided by its sum.
            pred = pred / np.sum(pred, axis=1, keepdims=True)
        yield Chunk(pred, y, None, w, b)


def check_totals(path: str, acc: Categorical | MultiLabel) -> None:
    """ScoreError when nothing was read or every weight is 0."""
    if acc.rows == 0:
        raise ScoreError(f"{path}: no data rows")
    if acc.wsum == 0.0:
        raise ScoreError(f"{path}: every weight is 0, so there is nothing to average")


def report_head(path: str, reader: Reader, opts: ScoreOptions) -> dict[str, Any]:
    """The report's first keys: file, format, input, unit, bins, label and weight columns."""
    head: dict[str, Any] = {
        "file": path,
        "format": reader.kind,
        "input": "logits" if opts.logits else "probabilities",
        "unit": base_name(opts.base)[0],
        "bins": opts.bins,
    }
    if reader.label_name is not None:
        head["label_column"] = reader.label_name
    if reader.weight_name is not None:
        head["weight_column"] = reader.weight_name
    return head


def new_accumulator(opts: ScoreOptions, c: int, *, logits: bool | None = None
                    ) -> Categorical | MultiLabel:
    """The accumulator for the task: multi-label or multi-class (with the top-k list)."""
    lg = opts.logits if logits is None else logits
    if opts.columns.multilabel:
        return MultiLabel(c, logits=lg, nbins=opts.bins)
    return Categorical(c, logits=lg, nbins=opts.bins, top_k=opts.top_k)


def score_file(path: str, opts: ScoreOptions,
               on_chunk: Callable[[float, int], None] | None = None) -> dict[str, Any]:
    """Read `path` chunk by chunk and return the report (a JSON-ready dict).

    `on_chunk(fraction_done, rows_so_far)` is called after each chunk (the progress bar).
    Raises :class:`ScoreError` for malformed input, naming file, place and column.
    """
    reader, classes = open_checked(path, opts)
    try:
        acc = new_accumulator(opts, len(classes))
        for ch in iter_chunks(reader, opts, classes):
            if isinstance(acc, MultiLabel):
                assert ch.targets is not None
                acc.update(ch.pred, ch.targets, ch.w)
            else:
                assert ch.y is not None
                acc.update(ch.pred, ch.y, ch.w)
            if on_chunk is not None:
                on_chunk(reader.progress(), acc.rows)
        check_totals(path, acc)
        rep = acc.report(classes, log_scale(opts.base))
        return {**report_head(path, reader, opts), **rep}
    finally:
        reader.close()
