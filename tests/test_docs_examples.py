"""Every example of README.md and docs/*.md runs, as written.

* ```python blocks holding ``>>>`` prompts run as doctests (NORMALIZE_WHITESPACE, ELLIPSIS, and
  NUMBER on the docs pages only: the README shows every value as Python prints it), block
  after block in one namespace per file, so a page reads top to bottom.
* Shell blocks (```console, ```bash, ``` ...) whose commands are ``crossentropy ...`` run in a
  temporary folder; the output shown must be what the command prints (a line ending in ``...``
  is a prefix, and at the very end of the output also stands for any further lines; a line of
  only ``...`` stands for any lines), and the exit status must be 0,
  or non-zero where the output shown is an ``error:`` line (``$ echo $?`` shows the status of
  the command before it). The inputs are the files the page shows before the block: a block
  with ``title="FILE"`` (```csv title="preds.csv") holds FILE, and so does the output shown
  for ``$ cat FILE``.

A block is left out only with an explicit ``<!-- skip-doctest -->`` line right above it; a
python block that imports an optional package which is not installed is left out too, and the
test then reports itself as skipped, naming that package.
"""

from __future__ import annotations

import doctest
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from _pytest.doctest import _get_checker

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SKIP_MARK = "<!-- skip-doctest -->"
FENCE = re.compile(r"^(`{3,})([\w+-]*)([^\n]*)\n(.*?)^\1[ \t]*$", re.S | re.M)
TITLE = re.compile(r'\btitle="([^"/]+)"')
SHELL_LANGS = {"", "console", "bash", "sh", "shell", "text"}
# commands a checked shell block may hold besides `crossentropy ...`
HELPERS = ("cat ", "printf ", "echo ")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    skipped: bool
    title: str | None  # ```csv title="preds.csv": the contents of an input file


def blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, in order."""
    text = path.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        title = TITLE.search(m.group(3))
        out.append(
            Block(path, line, m.group(2).lower(), m.group(4), before == SKIP_MARK,
                  title.group(1) if title else None)
        )
    return out


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _missing_modules(body: str) -> list[str]:
    names = re.findall(r"^\s*(?:>>>|\.\.\.)?\s*(?:import|from)\s+([A-Za-z_]\w*)", body, re.M)
    return sorted({n for n in names if importlib.util.find_spec(n) is None})


def doctest_pages() -> list[Path]:
    return [p for p in PAGES if any(">>>" in b.body for b in blocks(p) if b.lang == "python")]


@pytest.mark.parametrize("path", doctest_pages(), ids=_rel)
def test_python_examples(path: Path) -> None:
    """The >>> examples of one page, as doctests in one namespace."""
    parser = doctest.DocTestParser()
    # NUMBER is pytest's flag (floats match to the digits written); its checker implements it
    number = doctest.register_optionflag("NUMBER")
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    if path.name != "README.md":
        # the README shows exactly what Python prints (a reader compares it with a terminal);
        # the pages may round a long float to the digits that matter
        flags |= number
    runner = doctest.DocTestRunner(checker=_get_checker(), optionflags=flags)
    globs: dict[str, object] = {"__name__": "__docs__"}
    report = io.StringIO()
    ran, left_out = 0, []
    for b in blocks(path):
        if b.lang != "python" or ">>>" not in b.body or b.skipped:
            continue
        missing = _missing_modules(b.body)
        if missing:
            left_out.append(f"line {b.line} needs {', '.join(missing)}")
            continue
        test = parser.get_doctest(b.body, globs, f"{_rel(path)}:{b.line}", str(path), b.line)
        runner.run(test, out=report.write, clear_globs=False)
        globs = test.globs  # DocTest copies its globs: carry the namespace on by hand
        ran += 1
    assert runner.failures == 0, f"{_rel(path)}: {runner.failures} failed\n{report.getvalue()}"
    if left_out:
        pytest.skip(f"{ran} blocks passed; not installed: {'; '.join(left_out)}")


def test_quick_start_block_is_tested() -> None:
    """The README's Quick start has a python block, not marked skip, with the three calls."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- section:quickstart -->(.*?)<!-- /section:quickstart -->", text, re.S)
    assert m, "README section quickstart is missing"
    assert SKIP_MARK not in m.group(1)
    start = text.count("\n", 0, m.start()) + 1
    end = text.count("\n", 0, m.end()) + 1
    quick = [b for b in blocks(ROOT / "README.md") if start <= b.line <= end]
    assert any(b.lang == "python" and b.body.count(">>>") >= 3 for b in quick)
    assert any("pip install" in b.body for b in quick)


def _commands(body: str) -> list[tuple[str, list[str]]]:
    """(command, lines of output shown) for each ``$ `` line of a shell block."""
    out: list[tuple[str, list[str]]] = []
    for line in body.splitlines():
        if line.startswith("$ "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


def _checked(cmds: list[tuple[str, list[str]]]) -> bool:
    return any(c.startswith("crossentropy ") for c, _ in cmds) and all(
        c.startswith(("crossentropy ", *HELPERS)) for c, _ in cmds
    )


def shell_blocks() -> list[Block]:
    return [
        b
        for p in PAGES
        for b in blocks(p)
        if b.lang in SHELL_LANGS and not b.skipped and _checked(_commands(b.body))
    ]


def _pattern(shown: list[str]) -> re.Pattern[str]:
    """A regex for the output shown: `...` at a line's end is any tail, a `...` line any lines."""
    parts = []
    for line in shown:
        line = line.rstrip()
        if line == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        elif line.endswith("..."):
            parts.append(re.escape(line[:-3].rstrip()) + r"[^\n]*\n")
        else:
            parts.append(re.escape(line) + r"[ \t]*\n")
    if shown and shown[-1].rstrip().endswith("..."):
        parts.append(r"(?:[^\n]*\n)*")  # output cut at its end: more lines may follow
    return re.compile("".join(parts), re.S)


def _id(b: Block) -> str:
    return f"{_rel(b.path)}:{b.line}"


def _inputs(block: Block) -> dict[str, str]:
    """The files the page shows before `block`: titled blocks and `$ cat FILE` outputs."""
    files: dict[str, str] = {}
    for b in blocks(block.path):
        if b.line >= block.line:
            break
        if b.title:
            files[b.title] = b.body
        for cmd, shown in _commands(b.body) if b.lang in SHELL_LANGS else []:
            words = shlex.split(cmd, comments=True)
            if len(words) == 2 and words[0] == "cat" and shown:
                files[words[1]] = "\n".join(shown) + "\n"
    return files


@pytest.mark.parametrize("block", shell_blocks(), ids=_id)
def test_shell_examples(block: Block, tmp_path: Path) -> None:
    """Each `crossentropy ...` command of the block prints what the page shows."""
    env = dict(os.environ)
    # the console script of the interpreter running the tests, not whatever is first on PATH
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update({"NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200"})
    for name, text in _inputs(block).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    status = 0
    for cmd, shown in _commands(block.body):
        while shown and not shown[-1].strip():
            shown = shown[:-1]
        words = shlex.split(cmd, comments=True)
        where = f"{_id(block)}: $ {cmd}"
        if words[0] == "cat" and len(words) == 2 and shown:
            # `$ cat FILE` shows the contents of an input: create it
            (tmp_path / words[1]).write_text("\n".join(shown) + "\n", encoding="utf-8")
            continue
        if cmd.strip() == "echo $?":
            assert shown == [str(status)], f"{where}: the status was {status}"
            continue
        proc = subprocess.run(
            ["bash", "-c", cmd],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        status = proc.returncode
        printed = proc.stdout + proc.stderr
        fails = any("error:" in line for line in shown)
        assert (proc.returncode != 0) == fails, (
            f"{where}: exit status {proc.returncode}\n{printed}"
        )
        if shown:
            printed_lines = "".join(line.rstrip() + "\n" for line in printed.splitlines())
            assert _pattern(shown).fullmatch(printed_lines), (
                f"{where}\n--- shown\n" + "\n".join(shown) + f"\n--- printed\n{printed}"
            )


def test_readme_names_the_article_and_the_test_time() -> None:
    """The README cites the article the library began from (by its title, with the page that
    checks its numbers) and says how long the Quick start's test command takes."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "*Profound of Cross-Entropy*" in text
    assert "(docs/article.md)" in text
    assert "*Profound of" in (ROOT / "docs" / "article.md").read_text(encoding="utf-8")
    m = re.search(r"<!-- section:quickstart -->(.*?)<!-- /section:quickstart -->", text, re.S)
    assert m and re.search(r"\d+ minutes", m.group(1)), "say how long `pytest` takes"
