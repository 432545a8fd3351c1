"""Split a large Parquet footer into one small footer per row group.

pyarrow decodes a Parquet file's whole footer (the Thrift ``FileMetaData``: the schema and,
for every row group, one ``ColumnChunk`` entry per column) when the file is opened, at about
ten times its size on disk.  A file of many small row groups at many columns (600 groups x
1,001 columns: a 57.7 MB footer, 557 MB decoded) then needs that memory before a row is
read.  This module walks the footer's bytes without decoding them (the Thrift compact
protocol: https://github.com/apache/thrift/blob/master/doc/specs/thrift-compact-protocol.md)
to find where each ``RowGroup`` starts and ends, and builds for row group i a footer that
holds the file's other fields unchanged and only that row group; pyarrow reads the group
through it (``ParquetFile(path, metadata=...)``: the column chunks' offsets are absolute, so
they point into the original file).  Memory: the raw footer plus one decoded row group.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["SplitFooter", "read_footer", "split_cached", "split_footer"]

# compact-protocol type codes
_BOOL_TRUE, _BOOL_FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY = 1, 2, 3, 4, 5, 6, 7, 8
_LIST, _SET, _MAP, _STRUCT = 9, 10, 11, 12


def _varint(b: bytes, i: int) -> tuple[int, int]:
    r = s = 0
    while True:
        c = b[i]
        i += 1
        r |= (c & 0x7F) << s
        if c < 0x80:
            return r, i
        s += 7


def _skip(b: bytes, i: int, t: int) -> int:
    """The offset just past a value of compact type `t` starting at `i`."""
    if t in (_BOOL_TRUE, _BOOL_FALSE):
        return i  # in a struct the value is the type; list elements are handled below
    if t == _BYTE:
        return i + 1
    if t in (_I16, _I32, _I64):
        while b[i] & 0x80:
            i += 1
        return i + 1
    if t == _DOUBLE:
        return i + 8
    if t == _BINARY:
        n, i = _varint(b, i)
        return i + n
    if t in (_LIST, _SET):
        h = b[i]
        i += 1
        n, et = h >> 4, h & 0x0F
        if n == 15:
            n, i = _varint(b, i)
        if et in (_BOOL_TRUE, _BOOL_FALSE):
            return i + n  # one byte per boolean element
        for _ in range(n):
            i = _skip(b, i, et)
        return i
    if t == _MAP:
        n, i = _varint(b, i)
        if n == 0:
            return i
        kv = b[i]
        i += 1
        for _ in range(n):
            i = _skip(b, i, kv >> 4)
            i = _skip(b, i, kv & 0x0F)
        return i
    if t == _STRUCT:
        return _walk(b, i)[1]
    raise ValueError(f"unknown Thrift compact type {t}")


def _walk(b: bytes, i: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """The top-level fields of the struct at `i`: (id, type, payload start, payload end),
    and the offset after the struct."""
    out: list[tuple[int, int, int, int]] = []
    fid = 0
    while True:
        h = b[i]
        i += 1
        if h == 0:
            return out, i
        ft = h & 0x0F
        delta = h >> 4
        if delta:
            fid += delta
        else:
            z, i = _varint(b, i)
            fid = (z >> 1) ^ -(z & 1)  # zigzag i16
        start = i
        i = _skip(b, i, ft)
        out.append((fid, ft, start, i))


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        c = n & 0x7F
        n >>= 7
        if n:
            out.append(c | 0x80)
        else:
            out.append(c)
            return bytes(out)


def _header(fid: int, t: int) -> bytes:
    """A field header in the long form: the type, then the id as a zigzag varint."""
    return bytes([t]) + _uvarint((fid << 1) ^ (fid >> 15))


@dataclass
class SplitFooter:
    """The pieces of a footer: its top-level fields and each row group's bytes and rows."""

    raw: bytes
    fields: list[tuple[int, int, int, int]]
    groups: list[tuple[int, int, int]]  # (start, end, num_rows) of each RowGroup struct

    def footer_for(self, g: int) -> bytes:
        """A complete FileMetaData (Thrift compact) holding only row group `g`."""
        start, end, rows = self.groups[g]
        parts = []
        for fid, ft, a, z in self.fields:
            parts.append(_header(fid, ft))
            if fid == 3:  # num_rows: i64, zigzag varint
                parts.append(_uvarint(rows << 1))
            elif fid == 4:  # row_groups: a list of one struct
                parts.append(bytes([(1 << 4) | _STRUCT]))
                parts.append(self.raw[start:end])
            else:
                parts.append(self.raw[a:z])
        parts.append(b"\x00")
        return b"".join(parts)

    def file_bytes(self, g: int) -> bytes:
        """`footer_for(g)` framed as a Parquet file with no data, for pyarrow's reader."""
        f = self.footer_for(g)
        return b"PAR1" + f + struct.pack("<I", len(f)) + b"PAR1"


def read_footer(path: str) -> bytes:
    """The raw footer bytes of a Parquet file (ValueError if it is not one)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        if size < 12:
            raise ValueError("too short for Parquet")
        f.seek(size - 8)
        tail = f.read(8)
        if tail[4:] != b"PAR1":
            raise ValueError("no PAR1 at the end")
        n = struct.unpack("<I", tail[:4])[0]
        if n > size - 12:
            raise ValueError("footer length past the start of the file")
        f.seek(size - 8 - n)
        return f.read(n)


def split_footer(raw: bytes) -> SplitFooter:
    """Locate the top-level fields and the row groups of a FileMetaData.

    >>> import io, pyarrow as pa, pyarrow.parquet as pq
    >>> buf = io.BytesIO()
    >>> pq.write_table(pa.table({"a": [1.0, 2.0, 3.0]}), buf, row_group_size=2)
    >>> data = buf.getvalue()
    >>> n = int.from_bytes(data[-8:-4], "little")
    >>> sf = split_footer(data[-8 - n:-8])
    >>> [rows for _, _, rows in sf.groups]
    [2, 1]
    >>> pq.read_metadata(pa.BufferReader(sf.file_bytes(1))).num_rows
    1
    """
    fields, end = _walk(raw, 0)
    if end != len(raw):
        raise ValueError("trailing bytes after the footer")
    groups = []
    for fid, ft, a, _z in fields:
        if fid != 4 or ft != _LIST:
            continue
        h = raw[a]
        i = a + 1
        n, et = h >> 4, h & 0x0F
        if n == 15:
            n, i = _varint(raw, i)
        if et != _STRUCT:
            raise ValueError("row_groups is not a list of structs")
        for _ in range(n):
            rg_fields, j = _walk(raw, i)
            rows = next((_varint(raw, s)[0] for f, t, s, _e in rg_fields
                         if f == 3 and t == _I64), None)
            if rows is None:
                raise ValueError("a row group without num_rows")
            groups.append((i, j, (rows >> 1) ^ -(rows & 1)))
            i = j
    return SplitFooter(raw, fields, groups)


_CACHE: dict[tuple[str, int, int], SplitFooter] = {}


def split_cached(path: str) -> SplitFooter:
    """`split_footer(read_footer(path))`, remembered for the last file (by path, size and
    modification time), so that the passes of ``calibrate`` walk the footer once."""
    import os

    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    hit = _CACHE.get(key)
    if hit is None:
        _CACHE.clear()
        hit = _CACHE[key] = split_footer(read_footer(path))
    return hit
