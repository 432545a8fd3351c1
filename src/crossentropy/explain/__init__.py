"""``crossentropy explain``: the article's arithmetic, step by step, for any input.

:func:`~crossentropy.explain.article.article_tables` is the article's whole worked example;
:mod:`~crossentropy.explain.steps` builds the table for one function and one input;
:mod:`~crossentropy.explain.render` prints tables as text, rich, Markdown, LaTeX or JSON.
"""

from crossentropy.explain.article import article_tables
from crossentropy.explain.model import Check, Column, Table, judge
from crossentropy.explain.render import FORMATS, render
from crossentropy.explain.steps import (
    bce_table,
    cross_entropy_table,
    one_hot_table,
    sigmoid_table,
    softmax_table,
)

__all__ = [
    "FORMATS",
    "Check",
    "Column",
    "Table",
    "article_tables",
    "bce_table",
    "cross_entropy_table",
    "judge",
    "one_hot_table",
    "render",
    "sigmoid_table",
    "softmax_table",
]
