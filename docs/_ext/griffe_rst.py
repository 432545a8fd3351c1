"""A griffe extension: the reStructuredText of the docstrings, as Markdown for mkdocstrings.

The docstrings are numpy style (mkdocstrings parses the sections) with a few Sphinx
constructs that Markdown does not know; they are rewritten when griffe loads each object:

* ``.. math::`` blocks become ``$$ ... $$`` display math and ``:math:`x``` becomes
  ``$x$`` (pymdownx.arithmatex passes both to MathJax untouched);
* ``:func:`name``` and the other cross-reference roles become ``name`` in code (a leading
  ``~`` keeps the last component, as Sphinx shows it);
* a paragraph ending in ``::`` introduces an indented literal block, which Markdown
  already renders as code: the ``::`` becomes ``:``;
* a line that begins with ``>`` (a wrapped ``>= 0``) is escaped, not a block quote;
* ``>>>`` examples outside the Examples section are fenced as code;
* ``<ce-options>``/``<bce-options>``, which a decorator of crossentropy.losses replaces at
  import time, are replaced the same way.

Nothing is imported: griffe reads the sources, so building the site does not import torch.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|ref|const):`~?([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")


def _role(m: re.Match[str]) -> str:
    text = m.group(1)
    if m.group(0).split("`", 1)[1].startswith("~"):
        text = text.rsplit(".", 1)[-1]
    return f"`{text}`"


def _tex_role(m: re.Match[str]) -> str:
    name = _role(m).strip("`").replace("_", r"\_")
    return rf"\texttt{{{name}}}"


def rst_to_markdown(text: str) -> str:
    """Rewrite the Sphinx constructs of one (dedented) docstring as Markdown."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^(\s*)\.\. math::\s*(.*)$", line)
        if m:
            indent, first = m.group(1), m.group(2)
            body = [first] if first.strip() else []
            i += 1
            # the block is every following line indented deeper than the directive, or blank
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
            ):
                body.append(lines[i].strip())
                i += 1
            while body and not body[-1]:
                body.pop()
            while body and not body[0]:
                body.pop(0)
            if out and out[-1].strip():
                out.append("")
            # a cross-reference inside a formula is shown as a name in typewriter type
            body = [_ROLE.sub(_tex_role, b) for b in body if b]
            out += [indent + "$$", *(indent + b for b in body), indent + "$$", ""]
            continue
        if line.lstrip().startswith(">") and not line.lstrip().startswith(">>>"):
            # a wrapped ">= 0" would open a Markdown block quote
            line = line.replace(">", "\\>", 1)
        if line.rstrip().endswith("::") and not line.strip().startswith(".."):
            stripped = line.rstrip()[:-2].rstrip()
            line = stripped + ":" if stripped else ""
        out.append(line)
        i += 1
    # roles may wrap onto the next line: substitute over the whole text
    text = _MATH.sub(lambda mm: f"${mm.group(1)}$", "\n".join(out))
    return _ROLE.sub(_role, text)


def _shared_options(obj: griffe.Object, text: str) -> str:
    """Fill in ``<ce-options>``/``<bce-options>``, as the ``@_options(NAME)`` decorator of
    crossentropy.losses does at import time, from the string constant NAME of the module."""
    if not isinstance(obj, griffe.Function):
        return text
    for dec in obj.decorators:
        m = re.fullmatch(r"_options\((\w+)\)", str(dec.value))
        if m and m.group(1) in obj.module.members:
            shared = ast.literal_eval(str(obj.module.members[m.group(1)].value))
            shared = "\n".join(line.removeprefix("    ") for line in shared.split("\n"))
            text = re.sub(r"^<b?ce-options>\n", lambda _, s=shared: s, text, flags=re.M)
    return text


def wrap_doctests(text: str) -> str:
    """Fence ``>>>`` examples outside the numpy Examples section (griffe parses that one
    itself), so that Markdown shows them as code instead of reading ``[...]`` as links."""
    lines = text.split("\n")
    out: list[str] = []
    section = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip()) and line.strip():
            section = line.strip()
        if section != "Examples" and line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += [indent + "```pycon", *block, indent + "```"]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring griffe loads (modules, classes, functions, attributes)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _shared_options(obj, obj.docstring.value)
            obj.docstring.value = wrap_doctests(rst_to_markdown(text))
