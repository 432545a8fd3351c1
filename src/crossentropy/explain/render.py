"""Render explain tables as plain text, a rich terminal table, Markdown, LaTeX or JSON."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any, TextIO

from crossentropy.explain.model import Cell, Check, Table, fmt

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


def render_rich(tables: Sequence[Table], file: TextIO) -> None:
    """A rich terminal table per step (needs rich, the 'cli' extra)."""
    from rich.console import Console
    from rich.table import Table as RTable

    console = Console(file=file)
    style = {"agrees": "green", "truncated": "yellow", "wrong": "bold red", "not shown": "dim"}
    for t in tables:
        rt = RTable(title=t.title, caption=t.formula, show_lines=False)
        for i, c in enumerate(t.columns):
            rt.add_column(c.text, justify="left" if i == 0 else "right")
        for r in t.rows:
            rt.add_row(*[fmt(v) for v in r], style="bold" if r and r[0] == "sum" else None)
        console.print(rt)
        for label, value in t.summary:
            console.print(f"[bold]{label}[/bold] = {fmt(value)}", highlight=False)
        for n in t.notes:
            console.print(f"[dim]note:[/dim] {n}", highlight=False)
        if t.checks:
            ct = RTable(title="What the article printed", title_justify="left")
            for h in _CHECK_HEADER:
                ct.add_column(h)
            for chk, row in zip(t.checks, _check_rows(t.checks), strict=True):
                row[3] = f"[{style[chk.verdict]}]{row[3]}[/]"
                ct.add_row(*row)
            console.print(ct)
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
            raise ImportError(
                "--format rich needs rich: pip install 'crossentropy[cli]'"
            ) from None
        render_rich(tables, file)
        return
    text = {"text": to_text, "markdown": to_markdown, "latex": to_latex, "json": to_json}[
        fmt_name](tables)
    file.write(text if text.endswith("\n") else text + "\n")
