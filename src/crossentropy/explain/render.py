"""Render explain tables as plain text, a rich terminal table, Markdown, LaTeX or JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, TextIO

from crossentropy.explain.model import Cell, Check, Table, fmt
from crossentropy.extras import install_hint

__all__ = ["FORMATS", "render", "render_rich", "to_json", "to_latex", "to_markdown", "to_text"]

FORMATS = ("table", "rich", "text", "markdown", "latex", "json")

_MARK = {"agrees": "ok", "truncated": "TRUNCATED", "wrong": "WRONG", "not shown": "-"}


# --------------------------------------------------------------------------- plain text


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [len(h) for h in header]
    for r in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if _numeric(c) else c.ljust(w)
                         for c, w in zip(cells, widths, strict=True)).rstrip()
    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return out


def _numeric(s: str) -> bool:
    return bool(re.fullmatch(r"-?(\d[\d.]*(e[-+]\d+)?|inf|nan)", s))


def _check_rows(checks: Sequence[Check]) -> list[list[str]]:
    return [[c.what, c.article, fmt(c.true), _MARK[c.verdict], c.detail] for c in checks]


_CHECK_HEADER = ["", "article", "true value", "verdict", "why"]


def to_text(tables: Sequence[Table]) -> str:
    """Plain text: aligned columns, no colour (used when rich is not installed, or asked for).

    >>> from crossentropy.explain import sigmoid_table
    >>> print(to_text([sigmoid_table([0.0])]).splitlines()[6])
    0  x >= 0: 1 / (1 + e^-x)       1           2         0.5                           0.5
    """
    out: list[str] = []
    for t in tables:
        out += [t.title, "=" * len(t.title), t.formula, ""]
        out += _grid([c.text for c in t.columns], [[fmt(v) for v in r] for r in t.rows])
        for label, value in t.summary:
            out.append(f"{label} = {fmt(value)}")
        for n in t.notes:
            out.append(f"note: {n}")
        if t.checks:
            out += ["", "What the article printed:"]
            for c in t.checks:
                out.append(f"  {c.what}: article {c.article}, true {fmt(c.true)} "
                           f"[{_MARK[c.verdict]}] {c.detail}")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- markdown


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def to_markdown(tables: Sequence[Table]) -> str:
    """GitHub-flavoured Markdown: a heading, the formula in $$...$$, a pipe table, notes.

    >>> from crossentropy.explain import softmax_table
    >>> print(to_markdown([softmax_table([0.0, 0.0])]).splitlines()[6])
    | z1 | 0 | 0 | 1 | 1 | 0.5 | -0.6931471806 |
    """
    out: list[str] = []
    for t in tables:
        out += [f"### {t.title}", "", f"$$ {t.formula_tex} $$", ""]
        out.append("| " + " | ".join(f"${c.tex}$" if c.tex else " " for c in t.columns) + " |")
        out.append("|" + "|".join("---:" if i else "---" for i in range(len(t.columns))) + "|")
        for r in t.rows:
            out.append("| " + " | ".join(_md_escape(fmt(v)) for v in r) + " |")
        out.append("")
        for label, value in t.summary:
            out.append(f"**{_md_escape(label)}** = {fmt(value)}")
            out.append("")
        for n in t.notes:
            out.append(f"- {_md_escape(n)}")
        if t.notes:
            out.append("")
        if t.checks:
            out.append("| " + " | ".join(_CHECK_HEADER[1:]).join(["what | ", ""]) + " |")
            out.append("|---|---:|---:|---|---|")
            for row in _check_rows(t.checks):
                out.append("| " + " | ".join(_md_escape(c) for c in row) + " |")
            out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- latex

_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def _tex_text(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in s)


def _tex_cell(v: Cell) -> str:
    if isinstance(v, str):
        return _tex_text(v)
    s = fmt(v)
    if s in ("inf", "-inf"):
        return r"$-\infty$" if s.startswith("-") else r"$\infty$"
    if s == "nan":
        return r"\textsc{nan}"
    if "e" in s:
        mant, exp = s.split("e")
        return rf"${mant} \times 10^{{{int(exp)}}}$"
    return f"${s}$"


def to_latex(tables: Sequence[Table]) -> str:
    """LaTeX: a subsection per table, the formula in display math, a tabular, an itemize."""
    out: list[str] = []
    for t in tables:
        out += [rf"\subsection*{{{_tex_text(t.title)}}}", r"\[ " + t.formula_tex + r" \]"]
        spec = "l" + "r" * (len(t.columns) - 1)
        out += [r"\begin{tabular}{" + spec + "}", r"\hline"]
        out.append(" & ".join(f"${c.tex}$" if c.tex else "" for c in t.columns) + r" \\")
        out.append(r"\hline")
        for r in t.rows:
            out.append(" & ".join(_tex_cell(v) for v in r) + r" \\")
        out += [r"\hline", r"\end{tabular}", ""]
        for label, value in t.summary:
            out.append(f"{_tex_text(label)} $= $ {_tex_cell(value)}\n")
        if t.notes:
            out.append(r"\begin{itemize}")
            out += [rf"\item {_tex_text(n)}" for n in t.notes]
            out.append(r"\end{itemize}")
        if t.checks:
            out += [r"\begin{tabular}{lrrll}", r"\hline",
                    r"& article & true value & verdict & why \\", r"\hline"]
            for row in _check_rows(t.checks):
                out.append(" & ".join(_tex_text(c) for c in row) + r" \\")
            out += [r"\hline", r"\end{tabular}"]
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- json


def _jsonable(v: Any) -> Any:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


def to_json(tables: Sequence[Table]) -> str:
    """JSON: a list of tables with full-precision numbers (inf and nan as strings)."""
    doc = [
        {
            "title": t.title,
            "formula": t.formula,
            "formula_tex": t.formula_tex,
            "columns": [c.text for c in t.columns],
            "rows": _jsonable([list(r) for r in t.rows]),
            "results": _jsonable(dict(t.results)),
            "summary": [{"label": k, "value": _jsonable(v)} for k, v in t.summary],
            "notes": list(t.notes),
            "checks": [
                {"what": c.what, "article": c.article, "true": _jsonable(c.true),
                 "verdict": c.verdict, "detail": c.detail}
                for c in t.checks
            ],
        }
        for t in tables
    ]
    return json.dumps(doc, indent=2)


# --------------------------------------------------------------------------- rich


def _words(s: str) -> list[str]:
    return s.split()


def _fit_widths(natural: list[int], minimum: list[int], avail: int) -> list[int] | None:
    """Widths between `minimum` and `natural` summing to at most `avail` (None: impossible).

    The widest columns give way first (water-filling): a level L is lowered until
    sum(max(min_j, min(natural_j, L))) fits.
    """
    if sum(minimum) > avail:
        return None
    if sum(natural) <= avail:
        return list(natural)
    level = max(natural)
    while level > 0:
        widths = [max(m, min(n, level)) for n, m in zip(natural, minimum, strict=True)]
        if sum(widths) <= avail:
            return widths
        level -= 1
    return list(minimum)  # pragma: no cover - sum(minimum) <= avail was checked


def _rich_grid(console: Any, title: str | None, caption: str | None, header: Sequence[str],
               rows: Sequence[Sequence[str]], *, row_styles: Sequence[str | None] | None = None,
               cell_styles: dict[tuple[int, int], str] | None = None,
               title_justify: str = "center") -> None:
    """Print one table with rich, never cutting a number.

    Columns holding numbers get the width of their longest number (their heading is
    wrapped onto several lines instead) and never wrap; text columns wrap at spaces and
    share what is left, each keeping room for its longest word (up to 24 cells).  When even
    that does not fit the console, the table is printed vertically: one block per row,
    one ``column  value`` line per cell.
    """
    import textwrap

    from rich import box
    from rich.cells import cell_len
    from rich.table import Table as RTable
    from rich.text import Text

    styles = cell_styles or {}
    rstyles = list(row_styles) if row_styles is not None else [None] * len(rows)
    ncols = len(header)
    numeric = [any(_numeric(r[j]) for r in rows) for j in range(ncols)]
    natural, minimum = [], []
    for j in range(ncols):
        cells = [r[j] for r in rows]
        widest = max((cell_len(c) for c in cells), default=0)
        head_word = max([1] + [cell_len(x) for x in _words(header[j])])
        natural.append(max(widest, cell_len(header[j]), 1))
        if numeric[j]:
            # never narrower than its longest number (or the longest word of its heading)
            minimum.append(max(widest, head_word))
        else:
            longest = max([head_word] + [cell_len(x) for c in cells for x in _words(c)])
            minimum.append(min(natural[j], max(min(longest, 24), 6)))
    # rich's table with edges: one border cell per column plus one, and 1 cell of padding
    # on each side of each column
    avail = console.width - (ncols + 1) - 2 * ncols
    widths = _fit_widths(natural, minimum, avail)
    if widths is not None:
        rt = RTable(title=title, caption=caption, title_justify=title_justify,  # type: ignore[arg-type]
                    box=box.HEAVY_HEAD)
        for j in range(ncols):
            # the heading of a number column wraps onto several lines, never the numbers
            head = (textwrap.fill(header[j], widths[j], break_long_words=False) or header[j]
                    if numeric[j] else header[j])
            rt.add_column(Text(head), justify="right" if numeric[j] else "left",
                          width=widths[j], no_wrap=numeric[j], overflow="fold")
        for i, r in enumerate(rows):
            rt.add_row(*[Text(c, style=styles.get((i, j), "")) for j, c in enumerate(r)],
                       style=rstyles[i])
        console.print(rt)
        return
    # Vertical: a two-column table, one section per row of the original table.
    vw = max((cell_len(c) for r in rows for c in r), default=1)
    nw = max((cell_len(c) for r in rows for c in r if _numeric(c)), default=1)
    fw = max((cell_len(h) for h in header), default=1)
    room = max(console.width - 3 - 4, 2)  # 3 borders, 2 columns of 1-cell padding each side
    two = nw + min(fw, 4) <= room  # else one column: the name on a line, the value below
    vt = RTable(title=title, caption=caption, title_justify=title_justify,  # type: ignore[arg-type]
                show_header=False, box=box.SQUARE)
    if two:
        # the values as wide as they are, if there is room, else as wide as the widest
        # number (text wraps); the names of the columns wrap in what is left
        value_w = max(min(vw, room - min(fw, 12)), nw)
        vt.add_column(width=max(min(fw, room - value_w), 1), overflow="fold")
        vt.add_column(width=value_w, overflow="fold", justify="right")
    else:  # narrower than about 20 cells a number folds, but is never cut
        vt.add_column(width=max(console.width - 4, 1), overflow="fold", justify="right")
    for i, r in enumerate(rows):
        for j, c in enumerate(r):
            if not c and j:
                continue  # an empty cell (the sum row's blanks) gets no line
            name = Text(header[j] or ("row" if j == 0 else f"column {j + 1}"), style="dim")
            value = Text(c, style=styles.get((i, j), ""),
                         justify="right" if _numeric(c) else "left")
            if two:
                vt.add_row(name, value, style=rstyles[i])
            else:
                name.justify = "left"
                vt.add_row(name, style=rstyles[i])
                vt.add_row(value, style=rstyles[i])
        if i < len(rows) - 1:
            vt.add_section()
    console.print(vt)


def render_rich(tables: Sequence[Table], file: TextIO, *, width: int | None = None) -> None:
    """A rich terminal table per step (needs rich, the 'cli' extra).

    `width` is the console width (default: the terminal's).  No number is ever cut: a
    table too wide for the console is printed one row per block instead (see
    :func:`_rich_grid`).
    """
    from rich.console import Console
    from rich.text import Text

    console = Console(file=file, width=width)
    style = {"agrees": "green", "truncated": "yellow", "wrong": "bold red", "not shown": "dim"}
    for t in tables:
        rows = [[fmt(v) for v in r] for r in t.rows]
        _rich_grid(console, t.title, t.formula, [c.text for c in t.columns], rows,
                   row_styles=["bold" if r and r[0] == "sum" else None for r in t.rows])
        for label, value in t.summary:
            console.print(Text.assemble((label, "bold"), f" = {fmt(value)}"))
        for n in t.notes:
            console.print(Text.assemble(("note:", "dim"), f" {n}"))
        if t.checks:
            crow = _check_rows(t.checks)
            _rich_grid(console, "What the article printed", None, _CHECK_HEADER, crow,
                       cell_styles={(i, 3): style[c.verdict] for i, c in enumerate(t.checks)},
                       title_justify="left")
        console.print()


def render(tables: Sequence[Table], fmt_name: str, file: TextIO) -> None:
    """Write `tables` to `file` in the format `fmt_name` (one of :data:`FORMATS`).

    ``table`` is rich on a terminal when rich is installed, plain text otherwise (in a pipe,
    or with only NumPy installed); ``rich`` insists on rich (ImportError naming the extra).
    """
    if fmt_name == "table":
        fmt_name = "text"
        if file.isatty():
            try:
                import rich
            except ImportError:
                pass
            else:
                fmt_name = "rich"
    if fmt_name == "rich":
        try:
            import rich  # noqa: F401
        except ImportError:
            raise ImportError(f"--format rich needs rich: {install_hint('cli')}") from None
        render_rich(tables, file)
        return
    text = {"text": to_text, "markdown": to_markdown, "latex": to_latex, "json": to_json}[
        fmt_name](tables)
    file.write(text if text.endswith("\n") else text + "\n")
