"""The data that ``crossentropy explain`` prints: step tables, notes and checks of the article.

A :class:`Table` is format-neutral: numbers stay floats until a renderer
(:mod:`crossentropy.explain.render`) formats them for a terminal, Markdown, LaTeX or JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

Cell = str | float | int

__all__ = ["Cell", "Check", "Column", "Table", "fmt", "judge"]


@dataclass(frozen=True)
class Column:
    """A column heading, as plain text and as LaTeX math (without the dollars)."""

    text: str
    tex: str


@dataclass(frozen=True)
class Check:
    """One number the article printed, next to the true value.

    ``verdict`` is ``"agrees"`` (the article's digits are the true value rounded),
    ``"truncated"`` (the article cut digits off instead of rounding), ``"wrong"`` or
    ``"not shown"`` (the article's value is in an image the text does not include).
    """

    what: str
    article: str
    true: float
    verdict: str
    detail: str


@dataclass
class Table:
    """One step-by-step table: a title, the formula, rows of intermediates, notes."""

    title: str
    formula: str
    formula_tex: str
    columns: list[Column]
    rows: list[list[Cell]]
    results: dict[str, float | list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    summary: list[tuple[str, float]] = field(default_factory=list)


def fmt(value: Cell, digits: int = 10) -> str:
    """A number with `digits` significant digits (``inf``, ``-inf``, ``nan`` spelled out).

    >>> fmt(0.7310585786300049), fmt(2.927122496515368e-106), fmt(1.0), fmt("cat")
    ('0.7310585786', '2.927122497e-106', '1', 'cat')
    """
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    v = float(value)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0.0:
        return "0"  # -0.0 (log 1 computed as -log1p(0), say) is zero to a reader
    return f"{v:.{digits}g}"


def _printed_digits(claim: str) -> tuple[float, int, bool]:
    """Parse a number as the article printed it: (value, digits, scientific).

    For a plain decimal, `digits` counts the decimals; for ``a.bcEn`` it counts the
    significant digits of the mantissa.
    """
    s = claim.strip().lower()
    if "e" in s:
        mant = s.split("e")[0]
        sig = len(mant.replace("-", "").replace(".", "").lstrip("0"))
        return float(s), sig, True
    dec = len(s.split(".")[1]) if "." in s else 0
    return float(s), dec, False


def _round_sig(x: float, sig: int) -> float:
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.{sig - 1}e}")


def _trunc_sig(x: float, sig: int) -> float:
    if x == 0.0 or not math.isfinite(x):
        return x
    e = math.floor(math.log10(abs(x)))
    scale = 10.0 ** (sig - 1 - e)
    return math.trunc(x * scale) / scale


def judge(what: str, claim: str, true: float, extra: str = "") -> Check:
    """Compare a number the article printed with the true value, at the article's precision.

    >>> judge("sigmoid(1)", "0.731", 0.7310585786300049).verdict
    'agrees'
    >>> judge("sigmoid(9)", "0.999", 0.999876605424014).verdict
    'truncated'
    >>> judge("sigmoid(-243)", "2.99e-98", 2.927122496515368e-106).verdict
    'wrong'
    """
    value, digits, sci = _printed_digits(claim)
    if sci:
        rounded, cut = _round_sig(true, digits), _round_sig(_trunc_sig(true, digits), digits)
        shown = f"{rounded:.{digits - 1}e}"
        same = math.isclose(rounded, value, rel_tol=1e-12)
        same_cut = math.isclose(cut, value, rel_tol=1e-12)
    else:
        rounded = round(true, digits)
        cut = math.trunc(true * 10**digits) / 10**digits
        shown = f"{rounded:.{digits}f}"
        same = math.isclose(rounded, value, rel_tol=0.0, abs_tol=0.5 * 10.0**-(digits + 3))
        same_cut = math.isclose(cut, value, rel_tol=0.0, abs_tol=0.5 * 10.0**-(digits + 3))
    if same:
        verdict = "agrees"
        detail = f"the true value {fmt(true)} rounds to {shown}"
    elif same_cut:
        verdict = "truncated"
        detail = f"digits cut off, not rounded: the true value {fmt(true)} rounds to {shown}"
    else:
        verdict = "wrong"
        detail = f"the true value is {fmt(true)}"
    if extra:
        detail = f"{detail}; {extra}"
    return Check(what, claim, true, verdict, detail)
