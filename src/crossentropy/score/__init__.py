"""``crossentropy score``: cross-entropy, perplexity, accuracy and calibration of a file.

CSV, Parquet (pyarrow, the 'io' extra), .npy and .npz files are read in chunks, so a file of
any size is scored in constant memory.  See :func:`~crossentropy.score.core.score_file`.
"""

from crossentropy.score.core import ScoreOptions, default_chunk_rows, labels_to_index, score_file
from crossentropy.score.readers import ColumnSpec, ScoreError, open_reader, parse_columns

__all__ = [
    "ColumnSpec",
    "ScoreError",
    "ScoreOptions",
    "default_chunk_rows",
    "labels_to_index",
    "open_reader",
    "parse_columns",
    "score_file",
]
