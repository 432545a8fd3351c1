"""Streaming readers for ``crossentropy score``: CSV, Parquet, .npy and .npz, in chunks.

Each reader yields :class:`Batch` objects of at most ``chunk_rows`` rows, so that memory use
does not grow with the file.  Malformed input raises :class:`ScoreError` whose message names
the file, the place (CSV line, Parquet row group and row, array row) and the column.
"""

from __future__ import annotations

import csv
import fnmatch
import itertools
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from crossentropy.extras import install_hint

__all__ = [
    "Batch",
    "ColumnSpec",
    "Reader",
    "ScoreError",
    "open_reader",
    "parse_columns",
]

F64 = npt.NDArray[np.float64]


class ScoreError(ValueError):
    """Malformed input to ``crossentropy score``; the message names file, place and column."""


@dataclass
class ColumnSpec:
    """Which columns (or .npz keys, or .npy files) hold what.

    ``pred``: the prediction columns (None: every column not used otherwise);
    ``label``: the class label column (multi-class) or None;
    ``targets``: the binary target columns (multi-label) or None;
    ``weight``: the sample-weight column or None.
    """

    pred: str | None = None
    label: str | None = None
    targets: str | None = None
    weight: str | None = None
    multilabel: bool = False
    delimiter: str = ","


@dataclass
class Batch:
    """A chunk of rows: predictions, labels or binary targets, weights, and where they are."""

    pred: F64  # (n, C)
    labels: npt.NDArray[Any] | None  # (n,) raw labels: numbers or strings
    targets: F64 | None  # (n, K) multi-label targets
    weight: F64 | None  # (n,)
    locate: Callable[[int], str]  # row in batch -> "line 17", "row group 2, row 5", "row 9"


class Reader:
    """Base class: names of the prediction columns, the label/targets/weight column names."""

    kind = ""
    path = ""
    pred_names: list[str]
    label_name: str | None = None
    target_names: list[str] | None = None
    weight_name: str | None = None

    def batches(self, chunk_rows: int) -> Iterator[Batch]:  # pragma: no cover - abstract
        raise NotImplementedError

    def progress(self) -> float:
        """Fraction of the input read so far, in [0, 1]."""
        return 0.0

    def close(self) -> None:
        """Release the file."""

    def err(self, msg: str) -> ScoreError:
        return ScoreError(f"{self.path}: {msg}")


# --------------------------------------------------------------------------- column specs


def parse_columns(spec: str, names: Sequence[str], what: str, path: str) -> list[int]:
    """Resolve a column spec to indices into `names`.

    A spec is a comma-separated list of items: a column name, a 0-based index, a half-open
    index range ``a:b``, or a glob pattern (``p_*``).

    >>> parse_columns("b,0,2:4,x*", ["a", "b", "c", "d", "x1", "x2"], "columns", "f.csv")
    [1, 0, 2, 3, 4, 5]
    """
    out: list[int] = []
    n = len(names)
    lookup = {name: i for i, name in enumerate(names)}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        if item in lookup:
            out.append(lookup[item])
        elif item.lstrip("-").isdigit():
            i = int(item)
            if not -n <= i < n:
                raise ScoreError(f"{path}: {what}: column index {i} is out of range "
                                 f"(the file has {n} columns)")
            out.append(i % n)
        elif ":" in item:
            a, _, b = item.partition(":")
            try:
                rng = range(n)[slice(int(a) if a else None, int(b) if b else None)]
            except ValueError:
                raise ScoreError(f"{path}: {what}: bad column range {item!r}") from None
            if not rng:
                raise ScoreError(f"{path}: {what}: column range {item!r} selects nothing")
            out.extend(rng)
        elif any(ch in item for ch in "*?["):
            hits = [i for i, name in enumerate(names) if fnmatch.fnmatchcase(name, item)]
            if not hits:
                raise ScoreError(f"{path}: {what}: no column matches {item!r}")
            out.extend(hits)
        else:
            shown = ", ".join(repr(x) for x in names[:12]) + (", ..." if n > 12 else "")
            raise ScoreError(f"{path}: {what}: no column named {item!r} (columns: {shown})")
    if not out:
        raise ScoreError(f"{path}: {what}: the spec {spec!r} selects no column")
    return out


_LABEL_DEFAULTS = ("label", "labels", "y", "target", "class")


def _resolve(names: Sequence[str], spec: ColumnSpec, path: str) -> tuple[
        list[int], int | None, list[int] | None, int | None]:
    """(pred, label, targets, weight) column indices for a table with these column names."""
    label = targets = weight = None
    if spec.weight is not None:
        weight = _single(spec.weight, names, "--weight", path)
    if spec.multilabel:
        if spec.targets is None:
            raise ScoreError(f"{path}: multi-label scoring needs --targets (the 0/1 columns)")
        targets = parse_columns(spec.targets, names, "--targets", path)
    else:
        if spec.label is not None:
            label = _single(spec.label, names, "--label", path)
        else:
            for cand in _LABEL_DEFAULTS:
                if cand in names:
                    label = list(names).index(cand)
                    break
            else:
                raise ScoreError(
                    f"{path}: no label column: name it with --label (none of the columns is "
                    f"called {', '.join(_LABEL_DEFAULTS)})"
                )
    used = {i for i in (label, weight) if i is not None} | set(targets or [])
    if spec.pred is not None:
        pred = parse_columns(spec.pred, names, "--columns", path)
        clash = sorted(set(pred) & used)
        if clash:
            raise ScoreError(f"{path}: column {names[clash[0]]!r} is both a prediction column "
                             "and the label, target or weight column")
    else:
        pred = [i for i in range(len(names)) if i not in used]
    if not pred:
        raise ScoreError(f"{path}: no prediction columns left (columns: {list(names)})")
    if len(set(pred)) != len(pred):
        raise ScoreError(f"{path}: --columns names a column twice")
    if targets is not None and len(targets) != len(pred):
        raise ScoreError(f"{path}: {len(pred)} prediction columns but {len(targets)} "
                         "target columns; multi-label scoring pairs them in order")
    return pred, label, targets, weight


def _single(item: str, names: Sequence[str], what: str, path: str) -> int:
    idx = parse_columns(item, names, what, path)
    if len(idx) != 1:
        raise ScoreError(f"{path}: {what} must name one column, {item!r} names {len(idx)}")
    return idx[0]


# --------------------------------------------------------------------------- CSV

#: Delimiters a CSV file is often written with, and how --delimiter takes each.
_OTHER_DELIMITERS = {";": "';'", "\t": "tab", "|": "'|'", ",": "','"}


def _delimiter_hint(header: str, delim: str, ncols: int) -> str:
    """A hint naming --delimiter when the header line splits into more columns at another
    common delimiter than at `delim` (a ';'-separated file read with ',' is one column).

    >>> _delimiter_hint("cat;dog;label", ",", 1)
    "the header line looks ';'-separated (3 columns): pass --delimiter ';'"
    >>> _delimiter_hint("cat,dog,label", ",", 3)
    ''
    """
    best, most = "", ncols
    for d in _OTHER_DELIMITERS:
        if d == delim:
            continue
        try:
            n = len(next(csv.reader([header], delimiter=d)))
        except csv.Error:
            continue
        if n > most:
            best, most = d, n
    if not best:
        return ""
    shown = _OTHER_DELIMITERS[best]
    return f"the header line looks {shown}-separated ({most} columns): pass --delimiter {shown}"


class CsvReader(Reader):
    """CSV with a header line, one record per line.  Numbers are parsed by ``np.loadtxt``;
    a chunk that fails the fast path is re-read with the csv module to find the bad cell."""

    kind = "CSV"

    def __init__(self, path: str, spec: ColumnSpec) -> None:
        self.path = path
        self.delim = spec.delimiter
        if len(self.delim) != 1 or self.delim in '"\r\n':
            raise self.err(f"--delimiter must be one character, not a quote or a line break; "
                           f"got {self.delim!r}")
        self.size = max(os.path.getsize(path), 1)
        self.done = 0
        self.f: IO[str] = open(path, encoding="utf-8-sig", newline="")
        try:
            header = self.f.readline()
        except UnicodeDecodeError as exc:
            self.f.close()
            raise self.err(f"line 1: not UTF-8 text ({exc.reason})") from None
        if not header.strip():
            self.f.close()
            raise self.err("the file is empty: a CSV file needs a header line of column names")
        self.done = len(header)
        try:
            self.names = [n.strip() for n in next(csv.reader([header], delimiter=self.delim))]
        except csv.Error as exc:
            self.f.close()
            raise self.err(f"line 1: cannot read the header: {exc}") from None
        if len(set(self.names)) != len(self.names):
            dup = next(n for n in self.names if self.names.count(n) > 1)
            self.f.close()
            raise self.err(f"line 1: the column name {dup!r} appears twice")
        try:
            pred, label, targets, weight = _resolve(self.names, spec, path)
        except ScoreError as exc:
            self.f.close()
            hint = _delimiter_hint(header, self.delim, len(self.names))
            if hint:
                raise ScoreError(f"{exc}; {hint}") from None
            raise
        self.pred, self.label, self.targets, self.weight = pred, label, targets, weight
        self.pred_names = [self.names[i] for i in pred]
        self.label_name = None if label is None else self.names[label]
        self.target_names = None if targets is None else [self.names[i] for i in targets]
        self.weight_name = None if weight is None else self.names[weight]
        self.numeric = pred + (targets or []) + ([weight] if weight is not None else [])

    def progress(self) -> float:
        return min(self.done / self.size, 1.0)

    def close(self) -> None:
        self.f.close()

    def batches(self, chunk_rows: int) -> Iterator[Batch]:
        line_no = 2  # the first data line
        ncols = len(self.names)
        held: list[str] = []  # blank lines at the end of the last chunk
        while True:
            try:
                lines = list(itertools.islice(self.f, chunk_rows))
            except UnicodeDecodeError as exc:
                raise self.err(f"near line {line_no}: not UTF-8 text ({exc.reason})") from None
            if not lines:
                return  # blank lines at the end of the file are ignored
            self.done += sum(map(len, lines))
            # Blank lines at the end of a chunk are held back: at the end of the file they
            # are ignored; followed by a record they are an error (empty line) as before.
            lines = held + lines
            k = len(lines)
            while k and not lines[k - 1].strip():
                k -= 1
            lines, held = lines[:k], lines[k:]
            if not lines:
                continue
            start = line_no
            line_no += len(lines)
            yield self._parse(lines, start, ncols)

    def _locate(self, start: int) -> Callable[[int], str]:
        return lambda i: f"line {start + i}"

    def _parse(self, lines: list[str], start: int, ncols: int) -> Batch:
        d = self.delim
        fast = all(line.count(d) == ncols - 1 for line in lines)
        if fast:
            try:
                num = np.loadtxt(lines, delimiter=d, usecols=self.numeric, dtype=np.float64,
                                 ndmin=2, quotechar='"', comments=None)
                lab = None
                if self.label is not None and not any('"' in ln for ln in lines):
                    # The label as the last or first field: split it off each line without
                    # tokenising the whole line a second time.
                    if self.label == ncols - 1:
                        lab = np.array([ln.rpartition(d)[2].rstrip("\r\n") for ln in lines])
                    elif self.label == 0:
                        lab = np.array([ln.partition(d)[0] for ln in lines])
                if self.label is not None and lab is None:
                    lab = np.loadtxt(lines, delimiter=d, usecols=[self.label], dtype=str,
                                     ndmin=1, quotechar='"', comments=None)
            except ValueError:
                fast = False
        if not fast:
            num, lab = self._slow(lines, start, ncols)
        if num.shape[0] != len(lines):  # loadtxt skipped a blank line
            num, lab = self._slow(lines, start, ncols)
        return self._split(num, lab, self._locate(start))

    def _split(self, num: F64, lab: npt.NDArray[Any] | None,
               locate: Callable[[int], str]) -> Batch:
        c = len(self.pred)
        pred = num[:, :c]
        targets = None
        k = c
        if self.targets is not None:
            targets = num[:, k:k + len(self.targets)]
            k += len(self.targets)
        weight = num[:, k] if self.weight is not None else None
        if lab is not None:
            lab = np.char.strip(lab)
        return Batch(pred, lab, targets, weight, locate)

    def _slow(self, lines: list[str], start: int,
              ncols: int) -> tuple[F64, npt.NDArray[Any] | None]:
        """Parse with the csv module, cell by cell, raising on the first bad cell."""
        rows = []
        labs = []
        reader = csv.reader(lines, delimiter=self.delim)
        try:
            parsed = list(reader)
        except csv.Error as exc:
            raise self.err(f"line {start + reader.line_num - 1}: {exc}") from None
        for i, fields in enumerate(parsed):
            where = f"line {start + i}"
            if len(fields) != ncols:
                if not any(f.strip() for f in fields):
                    raise self.err(f"{where}: empty line")
                raise self.err(f"{where}: {len(fields)} fields, but the header has {ncols}")
            vals = []
            for j in self.numeric:
                cell = fields[j]
                try:
                    vals.append(float(cell))
                except ValueError:
                    raise self.err(
                        f"{where}, column {self.names[j]!r}: {cell.strip()!r} is not a number"
                    ) from None
            rows.append(vals)
            if self.label is not None:
                labs.append(fields[self.label])
        if len(rows) != len(lines):  # a quoted field ran over a line break
            raise self.err(f"line {start + len(rows)}: a quoted field spans lines; "
                           "one record per line is required")
        num = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(self.numeric))
        lab = np.asarray(labs, dtype=str) if self.label is not None else None
        return num, lab


# --------------------------------------------------------------------------- Parquet


class ParquetReader(Reader):
    """Parquet via pyarrow, one row group at a time, in batches of at most ``chunk_rows``;
    a footer over ``max_footer_mb`` is split into one per row group
    (:mod:`crossentropy.score.parquet_footer`), so that it is never decoded whole."""

    kind = "Parquet"

    def __init__(self, path: str, spec: ColumnSpec, max_footer_mb: float = 20.0) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"reading Parquet needs pyarrow: {install_hint('io')}") from None
        self.path = path
        self.pa = pa
        self.pq = pq
        self.split: Any = None
        if self._footer_too_large(max_footer_mb):
            # One small footer per row group instead of the whole (see parquet_footer)
            from crossentropy.score.parquet_footer import split_cached

            try:
                self.split = split_cached(path)
            except (ValueError, IndexError, OSError, RecursionError) as exc:
                raise self.err(self._footer_message(max_footer_mb, exc)) from None
        try:
            self.pf = self._group_file(0) if self.split is not None else pq.ParquetFile(path)
            schema = self.pf.schema_arrow
        except ScoreError:
            raise
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... on garbage
            raise self.err(f"not a readable Parquet file: {exc}") from None
        self.names = list(schema.names)
        try:
            self._open(spec, schema)
        except BaseException:
            self.pf.close()
            raise

    def _footer_too_large(self, max_mb: float) -> bool:
        """Whether the footer is over `max_mb` MB.

        The footer (the file's metadata: one entry per column per row group) sits at the
        end of the file: its length is the 4-byte little-endian number before the closing
        ``PAR1``.  pyarrow decodes all of it when the file is opened, at about ten times its
        size on disk (measured: a 57.7 MB footer, 600 row groups x 1,001 columns, took
        557 MB), before a single row is read, so a file of many small row groups at many
        columns would need that memory however small its chunks are.  Above the limit the
        reader splits the footer into one per row group instead (57.7 MB: 134 MB peak).
        """
        self.footer = 0
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                if size < 12:
                    return False  # pyarrow reports the broken file
                f.seek(size - 8)
                tail = f.read(8)
        except OSError:
            return False
        if tail[4:] != b"PAR1":
            return False
        self.footer = int.from_bytes(tail[:4], "little")
        # small enough, or a corrupt length that pyarrow reports
        return max_mb * 1e6 < self.footer <= size - 12

    def _footer_message(self, max_mb: float, exc: BaseException) -> str:
        return (
            f"the Parquet footer (metadata) is {self.footer / 1e6:.1f} MB, over "
            f"{max_mb:g} MB, and could not be split by row group ({exc}); pyarrow would "
            f"decode all of it before reading a row, at about 10x that "
            f"(~{self.footer * 10 / 2**20:,.0f} MB of memory): it grows with row groups x "
            "columns, so rewrite the file with larger row groups (pyarrow.parquet."
            "write_table(table, path, row_group_size=100_000)) or as .npy, or pass "
            "--max-footer-mb to let pyarrow read it whole")

    def _group_file(self, g: int) -> Any:
        """A ParquetFile of row group `g` alone, from its own small footer."""
        md = self.pq.read_metadata(self.pa.BufferReader(self.split.file_bytes(g)))
        return self.pq.ParquetFile(self.path, metadata=md)

    def _open(self, spec: ColumnSpec, schema: Any) -> None:
        pa, path = self.pa, self.path
        pred, label, targets, weight = _resolve(self.names, spec, path)
        for i in pred + (targets or []) + ([weight] if weight is not None else []):
            t = schema.field(i).type
            if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
                raise self.err(f"column {self.names[i]!r} has type {t}, not a number type")
        if label is not None:
            t = schema.field(label).type
            if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_string(t)
                    or pa.types.is_large_string(t) or pa.types.is_dictionary(t)):
                raise self.err(f"label column {self.names[label]!r} has type {t}; it must hold "
                               "class indices or class names")
        self.pred, self.label, self.targets, self.weight = pred, label, targets, weight
        self.pred_names = [self.names[i] for i in pred]
        self.label_name = None if label is None else self.names[label]
        self.target_names = None if targets is None else [self.names[i] for i in targets]
        self.weight_name = None if weight is None else self.names[weight]
        rows = (sum(r for _, _, r in self.split.groups) if self.split is not None
                else int(self.pf.metadata.num_rows))
        self.total: int = max(rows, 1)
        self.done = 0

    def progress(self) -> float:
        return min(self.done / self.total, 1.0)

    def close(self) -> None:
        self.pf.close()

    def _numeric(self, batch: Any, idx: list[int], rg: int, row0: int) -> F64:
        cols = []
        for i in idx:
            col = batch.column(self.names[i])
            if col.null_count:
                r = int(np.flatnonzero(np.asarray(col.is_null()))[0])
                raise self.err(f"row group {rg}, row {row0 + r}, column {self.names[i]!r}: "
                               "missing value (null)")
            cols.append(np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64))
        return np.stack(cols, axis=1) if cols else np.zeros((batch.num_rows, 0))

    def batches(self, chunk_rows: int) -> Iterator[Batch]:
        wanted = [self.names[i] for i in
                  self.pred + (self.targets or [])
                  + [i for i in (self.label, self.weight) if i is not None]]
        groups = len(self.split.groups) if self.split is not None else self.pf.num_row_groups
        for rg in range(groups):
            row0 = 0
            try:
                if self.split is not None:  # row group rg through its own small footer
                    if rg:
                        self.pf.close()
                        self.pf = self._group_file(rg)
                    it = self.pf.iter_batches(batch_size=chunk_rows, row_groups=[0],
                                              columns=wanted)
                else:
                    it = self.pf.iter_batches(batch_size=chunk_rows, row_groups=[rg],
                                              columns=wanted)
                for b in it:
                    yield self._batch(b, rg, row0)
                    row0 += b.num_rows
                    self.done += b.num_rows
            except ScoreError:
                raise
            except Exception as exc:  # ArrowException, OSError, bad UTF-8 in strings, ...
                raise self.err(f"row group {rg}: cannot read it: {exc}") from None

    def _batch(self, b: Any, rg: int, row0: int) -> Batch:
        pred = self._numeric(b, self.pred, rg, row0)
        targets = self._numeric(b, self.targets, rg, row0) if self.targets is not None else None
        weight = (self._numeric(b, [self.weight], rg, row0)[:, 0]
                  if self.weight is not None else None)
        lab = None
        if self.label is not None:
            col = b.column(self.names[self.label])
            if col.null_count:
                r = int(np.flatnonzero(np.asarray(col.is_null()))[0])
                raise self.err(f"row group {rg}, row {row0 + r}, column "
                               f"{self.names[self.label]!r}: missing label (null)")
            if self.pa.types.is_dictionary(col.type):
                col = col.cast(self.pa.string())
            lab = np.asarray(col.to_numpy(zero_copy_only=False))
            if lab.dtype.kind == "O":
                lab = lab.astype(str)
        return Batch(pred, lab, targets, weight, lambda i: f"row group {rg}, row {row0 + i}")


# --------------------------------------------------------------------------- .npy / .npz


class _NpyStream:
    """A .npy array read from a binary stream in row chunks, never loaded whole."""

    def __init__(self, f: IO[bytes], where: str, err: Callable[[str], ScoreError],
                 total_size: int | None = None) -> None:
        self.f = f
        self.where = where
        self.err = err
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
        except Exception as exc:  # numpy's header parser raises many kinds on garbage
            raise err(f"{where}: not a valid .npy array: {exc}") from None
        if fortran and len(shape) > 1:
            raise err(f"{where}: the array is stored in Fortran order, which cannot be read in "
                      "row chunks; save it with np.save(path, np.ascontiguousarray(a))")
        if dtype.hasobject or dtype.fields is not None:
            raise err(f"{where}: dtype {dtype} cannot be scored (numbers or strings needed)")
        self.shape: tuple[int, ...] = tuple(shape)
        self.dtype = dtype
        self.rows = self.shape[0] if self.shape else 0
        self.row_items = int(np.prod(self.shape[1:])) if len(self.shape) > 1 else 1
        self.read_rows = 0
        if total_size is not None:
            # Check the promised size against the bytes present before reading anything,
            # so that a corrupt header cannot ask for a huge buffer.
            have = total_size - f.tell()
            need = self.rows * self.row_items * dtype.itemsize
            if need > have:
                whole = have // max(self.row_items * dtype.itemsize, 1)
                raise err(f"{where}: the file is truncated: the header promises {self.rows} "
                          f"rows, the data stops at row {whole}")

    def read(self, n: int) -> npt.NDArray[Any]:
        n = min(n, self.rows - self.read_rows)
        nbytes = n * self.row_items * self.dtype.itemsize
        buf = self.f.read(nbytes)
        if len(buf) != nbytes:
            got = self.read_rows + len(buf) // max(self.row_items * self.dtype.itemsize, 1)
            raise self.err(f"{self.where}: the file is truncated: the header promises "
                           f"{self.rows} rows, the data stops at row {got}")
        a = np.frombuffer(buf, dtype=self.dtype).reshape((n, *self.shape[1:]))
        self.read_rows += n
        return a


def _as_numbers(a: npt.NDArray[Any], where: str, err: Callable[[str], ScoreError]) -> F64:
    if a.dtype.kind not in "fiub":
        raise err(f"{where}: dtype {a.dtype} is not a number type")
    return np.asarray(a, dtype=np.float64)


class NpyReader(Reader):
    """Predictions in a .npy file (N, C); labels, weights and targets in their own .npy
    files of N rows (named by --label, --weight, --targets); or all of them as keys of an
    .npz archive."""

    _PRED_KEYS = ("probs", "probabilities", "logits", "scores", "predictions", "pred")

    def __init__(self, path: str, spec: ColumnSpec, logits: bool) -> None:
        self.path = path
        self.npz = path.lower().endswith(".npz")
        self.kind = ".npz" if self.npz else ".npy"
        self.zf: zipfile.ZipFile | None = None
        self.files: list[IO[bytes]] = []
        try:
            self._open(spec, logits)
        except BaseException:
            self.close()
            raise

    def _open(self, spec: ColumnSpec, logits: bool) -> None:
        path = self.path
        if self.npz:
            try:
                self.zf = zipfile.ZipFile(path)
                keys = [n[:-4] for n in self.zf.namelist() if n.endswith(".npy")]
            except Exception as exc:  # zipfile raises many kinds on a corrupt archive
                raise self.err(f"not a readable .npz archive: {exc}") from None
            pkey = spec.pred or self._default(keys, logits)
            self.p = self._open_key(pkey, keys)
            self.pred_key = pkey
            if spec.multilabel:
                if spec.targets is None:
                    raise self.err("multi-label scoring needs --targets (a key of the archive)")
                self.t: _NpyStream | None = self._open_key(spec.targets, keys)
                self.lab: _NpyStream | None = None
            else:
                lkey = spec.label or next((k for k in _LABEL_DEFAULTS if k in keys), None)
                if lkey is None:
                    raise self.err(f"no labels: name the key with --label (keys: {keys})")
                self.lab, self.t = self._open_key(lkey, keys), None
                self.label_name = lkey
            self.w = self._open_key(spec.weight, keys) if spec.weight else None
        else:
            self.p = self._open_file(path, path)
            self.pred_key = os.path.basename(path)
            if spec.multilabel:
                if spec.targets is None:
                    raise self.err("multi-label scoring of a .npy file needs --targets "
                                   "TARGETS.npy (an (N, K) array of 0/1)")
                self.t, self.lab = self._open_file(spec.targets, "--targets"), None
            else:
                if spec.label is None:
                    raise self.err("a .npy file holds only the predictions; give the labels "
                                   "as --label LABELS.npy (N class indices or names)")
                self.lab, self.t = self._open_file(spec.label, "--label"), None
                self.label_name = os.path.basename(spec.label)
            self.w = self._open_file(spec.weight, "--weight") if spec.weight else None
        if len(self.p.shape) != 2:
            raise self.err(f"{self.pred_key}: predictions must be a 2-d array (rows, classes), "
                           f"got shape {self.p.shape}")
        if self.p.dtype.kind not in "fiu":
            raise self.err(f"{self.pred_key}: dtype {self.p.dtype} is not a number type")
        n = self.p.rows
        for s, what, ndim in ((self.lab, "labels", 1), (self.t, "targets", 2),
                              (self.w, "weights", 1)):
            if s is None:
                continue
            if len(s.shape) != ndim or s.rows != n:
                want = f"({n},)" if ndim == 1 else f"({n}, {self.p.shape[1]})"
                raise self.err(f"{s.where}: {what} must have shape {want}, got {s.shape}")
            if what == "targets" and s.shape[1] != self.p.shape[1]:
                raise self.err(f"{s.where}: targets must have shape {(n, self.p.shape[1])}, "
                               f"got {s.shape}")
        c = self.p.shape[1]
        self.pred_names = [str(j) for j in range(c)]
        self.target_names = self.pred_names if self.t is not None else None
        self.weight_name = None if self.w is None else self.w.where

    def _default(self, keys: list[str], logits: bool) -> str:
        order = ("logits", *self._PRED_KEYS) if logits else self._PRED_KEYS
        for k in order:
            if k in keys:
                return k
        raise self.err(f"no predictions: name the key with --columns (keys: {keys})")

    def _open_key(self, key: str, keys: list[str]) -> _NpyStream:
        if key not in keys:
            raise self.err(f"no array named {key!r} in the archive (keys: {keys})")
        assert self.zf is not None
        try:
            info = self.zf.getinfo(key + ".npy")
            f = self.zf.open(info)
        except Exception as exc:  # BadZipFile, zlib.error, encrypted or unsupported entries
            raise self.err(f"{key}: cannot read it from the archive: {exc}") from None
        self.files.append(f)
        return _NpyStream(f, key, self.err, info.file_size)

    def _open_file(self, path: str, what: str) -> _NpyStream:
        try:
            f = open(path, "rb")
        except OSError as exc:
            raise ScoreError(f"{what}: cannot open {path}: {exc.strerror}") from None
        self.files.append(f)
        return _NpyStream(f, path, lambda m: ScoreError(m if m.startswith(path) else
                                                        f"{path}: {m}"),
                          os.fstat(f.fileno()).st_size)

    def progress(self) -> float:
        return float(self.p.read_rows / max(self.p.rows, 1))

    def close(self) -> None:
        for f in self.files:
            f.close()
        if self.zf is not None:
            self.zf.close()

    def batches(self, chunk_rows: int) -> Iterator[Batch]:
        where = self.pred_key
        try:
            while self.p.read_rows < self.p.rows:
                row0 = self.p.read_rows
                pred = _as_numbers(self.p.read(chunk_rows), where, self.err)
                n = pred.shape[0]
                lab = None if self.lab is None else self.lab.read(n)
                if self.lab is not None and lab is not None and lab.dtype.kind not in "fiuUS":
                    raise self.err(f"{self.lab.where}: labels of dtype {lab.dtype} are neither "
                                   "class indices nor class names")
                if lab is not None and lab.dtype.kind == "S":
                    lab = np.char.decode(lab, "utf-8", errors="replace")
                targets = None if self.t is None else _as_numbers(
                    self.t.read(n), self.t.where, self.err)
                weight = None if self.w is None else _as_numbers(
                    self.w.read(n), self.w.where, self.err)
                yield Batch(pred, lab, targets, weight, _row_locator(row0))
        except ScoreError:
            raise
        except Exception as exc:  # BadZipFile, zlib.error, CRC errors, OSError, bad dtypes
            raise self.err(f"{where}: cannot read the data: {exc}") from None


def _row_locator(row0: int) -> Callable[[int], str]:
    return lambda i: f"row {row0 + i}"


# --------------------------------------------------------------------------- dispatch


def open_reader(path: str, spec: ColumnSpec, *, logits: bool = False,
                file_format: str | None = None, max_footer_mb: float = 20.0) -> Reader:
    """Open `path` with the reader for its format (from the suffix, or `file_format`).

    `max_footer_mb`: the largest Parquet footer accepted (see ``ParquetReader``).
    """
    fmt = file_format
    if fmt is None:
        low = path.lower()
        if low.endswith((".parquet", ".pq")):
            fmt = "parquet"
        elif low.endswith(".npy"):
            fmt = "npy"
        elif low.endswith(".npz"):
            fmt = "npz"
        elif low.endswith(".tsv"):
            fmt = "csv"
            spec.delimiter = "\t" if spec.delimiter == "," else spec.delimiter
        else:
            fmt = "csv"
    if not os.path.exists(path):
        raise ScoreError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ScoreError(f"{path}: is a directory")
    if fmt == "csv":
        return CsvReader(path, spec)
    if fmt == "parquet":
        return ParquetReader(path, spec, max_footer_mb)
    if fmt in ("npy", "npz"):
        return NpyReader(path, spec, logits)
    raise ValueError(f"unknown format {file_format!r}")
