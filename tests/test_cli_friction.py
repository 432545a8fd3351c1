"""Issue 27: the install hints of the "needs an extra" messages.

crossentropy is not on PyPI yet (README, Install), so a hint naming the package on an index
(``pip install 'crossentropy[plot]'``) sends the user nowhere.  Every hint comes from
:func:`crossentropy.extras.install_hint`: ``pip install ".[plot]"`` in a clone of the
repository, or the extra's one package by name.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import crossentropy
from test_cli_explain import numpy_only_env, run

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(crossentropy.__file__).resolve().parent  # the package imported, wherever it is


def _string_constants(path: Path) -> list[tuple[int, str]]:
    """Every string in a module as Python reads it: adjacent literals joined, the literal
    parts of f-strings joined with '{}' for each replacement field."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}"
                           for v in node.values)
            out.append((node.lineno, text))
    return out


def test_no_message_sends_pip_to_an_index_for_crossentropy() -> None:
    index_install = re.compile(r"pip install ['\"]?crossentropy\[")
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for line, text in _string_constants(path):
            if index_install.search(text) or "'crossentropy[" in text:
                found.append(f"{path.relative_to(SRC)}:{line}: {text[:80]!r}")
    assert not found, "install hints that name crossentropy on an index:\n" + "\n".join(found)


def test_install_hint_names_a_clone_and_the_package() -> None:
    from crossentropy.extras import install_hint

    assert install_hint("plot") == ('pip install ".[plot]" in a clone of the crossentropy '
                                    'repository (it is not on PyPI yet), or pip install '
                                    '"matplotlib>=3.7"')
    with pytest.raises(ValueError, match="extra must be one of"):
        install_hint("gpu")


def test_extras_agree_with_pyproject() -> None:
    from crossentropy.extras import EXTRAS

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for name, requirement in EXTRAS.items():
        assert extras[name] == [requirement], name


def test_hints_in_every_message(tmp_path: Path) -> None:
    from crossentropy.extras import install_hint

    env = numpy_only_env(tmp_path)
    pq = tmp_path / "x.parquet"
    pq.write_bytes(b"PAR1")
    csv = tmp_path / "v.csv"
    csv.write_text("a,b,label\n0.9,0.1,0\n0.3,0.7,1\n")
    for args, extra in ((["explain", "--format", "rich"], "cli"),
                        (["plot", "sigmoid", "-o", str(tmp_path / "s.png")], "plot"),
                        (["score", str(csv), "--reliability", str(tmp_path / "r.png")], "plot"),
                        (["calibrate", str(csv), "--reliability", str(tmp_path / "c.png")],
                         "plot"),
                        (["score", str(pq)], "io")):
        r = run(*args, env=env)
        assert r.returncode == 1, (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1
        assert r.stderr.rstrip().endswith(install_hint(extra)), (args, r.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shadow", "v.csv", "x.parquet"]


def test_numba_backend_hint_names_the_package() -> None:
    # numba is a dependency (the 'fast' extra is an empty alias): the hint names numba
    code = ("import importlib.util, crossentropy._config as c\n"
            "c.numba_available = lambda: False\n"
            "try:\n    c.set_backend('numba')\nexcept ValueError as e:\n    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == ("backend 'numba' needs numba, which is not installed: pip "
                                "install numba")


def test_help_says_where_the_extras_come_from() -> None:
    r = run("--help")
    assert 'pip install ".[cli]" (rich tables), ".[plot]" (matplotlib), ".[io]"' in r.stdout
    assert "crossentropy[" not in r.stdout
    for cmd in ("score", "plot", "calibrate", "explain"):
        assert "crossentropy[" not in run(cmd, "--help").stdout, cmd
