"""The install floors are true: the layers import on the oldest torch the extras allow, one
floor is declared everywhere, and every install line works from a clone.

* **Names the floor lacks.**  torch 2.13 added ``torch.nn.LinearCrossEntropyOptions``,
  ``torch.nn.LinearCrossEntropyLoss`` and ``torch.nn.functional.linear_cross_entropy`` (torch
  2.12.1's wheel has none of them, 2.13.0's has all three).  Each test deletes them from torch
  in a fresh interpreter (so no import cache leaks) and imports a layer, as on torch 2.7 to
  2.12.  Using a name that needs torch 2.13 raises an ImportError naming that release.
* **Behaviour the floor lacks.**  Before 2.13, ``torch.compiler.is_compiling()`` is False while
  AOTAutograd traces a backward (2.13 holds it True for the whole compile session); the test
  removes that session flag and compiles forward + backward in one graph.
* **One floor.**  Every extra that installs torch states the same ``torch>=X``, X is
  ``crossentropy.torch._compat.TORCH_FLOOR``, and every ``torch >= Y`` (and ``triton``,
  ``transformers``) in README.md and docs/*.md is the extras' floor.
* **Install lines.**  Nothing is published on a package index: every ``pip install`` in the
  docs, README.md and examples/ names the clone (``.``, ``".[torch]"``), never ``crossentropy``.

The torch tests themselves were run on torch 2.7.1 (the floor) and 2.13.0: README.md, Install.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

# (module, name): what torch 2.13 added that the floor (2.7) lacks and the layers touch or
# re-export (measured: absent from the 2.7.1 and 2.12.1 wheels, present in 2.13.0)
NEWER = [
    ("torch.nn", "LinearCrossEntropyOptions"),
    ("torch.nn", "LinearCrossEntropyLoss"),
    ("torch.nn.functional", "linear_cross_entropy"),
]

_HIDE = textwrap.dedent(
    f"""
    import importlib
    import torch
    for mod, name in {NEWER!r}:
        m = importlib.import_module(mod)
        if hasattr(m, name):
            delattr(m, name)
        assert not hasattr(m, name), (mod, name)
    """
)


def _run(body: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter with the sources of this checkout first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (os.environ.get("PYTHONPATH"), str(SRC)) if p)}
    return subprocess.run([sys.executable, "-c", body], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _ok(r: subprocess.CompletedProcess[str]) -> None:
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stdout + r.stderr


LAYERS = [
    "crossentropy.torch",
    "crossentropy.torch.functional",
    "crossentropy.torch.modules",
    "crossentropy.torch.distributed",
    "crossentropy.triton",
    "crossentropy.transformers",
]


def test_layers_import_without_the_names_torch_2_13_added() -> None:
    """Each layer imports with the names hidden (one interpreter for all of them: each
    import of a layer runs its own module code, and the package's shared modules are
    imported by the first; transformers' layer only where transformers is installed)."""
    layers = [m for m in LAYERS if m != "crossentropy.transformers"
              or importlib.util.find_spec("transformers") is not None]
    r = _run(_HIDE + textwrap.dedent(f"""
        import importlib
        for module in {layers!r}:
            importlib.import_module(module)
            print("imported", module)
        print("OK")
        """))
    _ok(r)
    assert r.stdout.count("imported") == len(layers), r.stdout


def test_names_that_need_torch_2_13_raise_naming_it() -> None:
    """The lazy names raise an ImportError naming torch 2.13 and the installed torch, however
    they are reached; everything else works, linear_cross_entropy included (checked against
    torch's own F.cross_entropy of the materialised logits, in float64)."""
    _ok(_run(_HIDE + textwrap.dedent("""
        import pytest
        import crossentropy.torch as cet
        from crossentropy.torch import ChunkPlan

        def names_release(e):
            msg = str(e.value)
            assert "torch 2.13" in msg and torch.__version__ in msg, msg

        with pytest.raises(ImportError) as e:
            cet.LinearCrossEntropyOptions
        names_release(e)
        with pytest.raises(ImportError) as e:
            from crossentropy.torch import LinearCrossEntropyOptions  # noqa: F401
        names_release(e)
        with pytest.raises(ImportError) as e:
            cet.LinearCrossEntropyLoss(4, 3)
        names_release(e)
        assert "LinearCrossEntropyOptions" not in cet.__all__
        ns = {}
        exec("from crossentropy.torch import *", ns)
        assert ns["cross_entropy"] is cet.cross_entropy
        assert cet.relu is torch.nn.functional.relu  # the rest of F is still torch's

        F = torch.nn.functional
        g = torch.Generator().manual_seed(3)
        h = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
        W = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
        t = torch.tensor([0, 6, 2, -100, 1, 5, 3, 3, 4, 0])
        got = cet.linear_cross_entropy(h, W, t, label_smoothing=0.1, chunks=ChunkPlan(rows=3))
        want = F.cross_entropy(h @ W.T, t, label_smoothing=0.1)
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
        for a, b in zip(torch.autograd.grad(got, (h, W)), torch.autograd.grad(want, (h, W))):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-15)
        print("OK")
        """)))


def test_torch_older_than_the_floor_is_refused_by_name() -> None:
    """torch 2.4 fails deep inside torch.library (its custom_op cannot read postponed
    annotations); the import says which torch is needed instead."""
    floor = _declared_floors()["torch"]
    major, minor = (int(v) for v in floor.split(".")[:2])
    older = f"{major}.{minor - 1}.1+cpu"  # the newest release below the floor
    r = _run(textwrap.dedent(f"""
        import torch
        torch.__version__ = {older!r}
        try:
            import crossentropy.torch
        except ImportError as e:
            print(e)
            print("OK")
        """))
    _ok(r)
    assert f"torch >= {floor}" in r.stdout and older in r.stdout, r.stdout


def test_compile_one_graph_without_the_compile_session_flag() -> None:
    """Before torch 2.13, is_compiling() is False while AOTAutograd traces the backward of
    the custom operator; the gradient must not be read there (a data-dependent call, a
    graph break, and an error under fullgraph=True)."""
    _ok(_run(textwrap.dedent("""
        import contextlib
        import torch
        if hasattr(torch.compiler, "_compile_session_context"):
            torch.compiler._compile_session_context = contextlib.nullcontext
        import crossentropy.torch as cet

        def f(z, t):
            return cet.cross_entropy(z, t, label_smoothing=0.1, z_loss=1e-3, softcap=5.0)

        g = torch.Generator().manual_seed(0)
        z = torch.randn(8, 9, generator=g, requires_grad=True)
        t = torch.randint(0, 9, (8,), generator=g)
        compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
        (got,) = torch.autograd.grad(compiled(z, t), z)
        (want,) = torch.autograd.grad(f(z, t), z)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
        print("OK")
        """), timeout=600))


# --------------------------------------------------------------------------- one floor


def _pyproject() -> dict[str, object]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    with open(ROOT / "pyproject.toml", "rb") as f:
        data: dict[str, object] = tomllib.load(f)
    return data


def _floor(reqs: list[str], package: str) -> str | None:
    """The X of ``package>=X`` in a list of requirements (None when the package is absent)."""
    found = [r for r in reqs if re.match(rf"{package}\s*(\[|[<>=!~;]|$)", r)]
    if not found:
        return None
    assert len(found) == 1, found
    m = re.fullmatch(rf"{package}\s*>=\s*([0-9][0-9.]*)", found[0].strip())
    assert m, f"{found[0]!r} is not of the form {package}>=X"
    return m.group(1)


USER_EXTRAS = ("torch", "triton", "transformers", "examples")


def _declared_floors() -> dict[str, str]:
    """The one floor of torch, triton and transformers over the extras users install."""
    extras = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    out: dict[str, str] = {}
    for package in ("torch", "triton", "transformers"):
        seen = {e: _floor(extras[e], package) for e in USER_EXTRAS}
        values = {v for v in seen.values() if v is not None}
        assert len(values) == 1, f"{package} floors differ between extras: {seen}"
        out[package] = values.pop()
    return out


def test_every_extra_declares_the_same_torch_floor_as_the_code() -> None:
    extras = _pyproject()["project"]["optional-dependencies"]  # type: ignore[index]
    floors = {e: _floor(extras[e], "torch") for e in USER_EXTRAS}
    assert None not in floors.values(), floors  # each of these extras installs torch
    assert len(set(floors.values())) == 1, floors
    compat = (SRC / "crossentropy" / "torch" / "_compat.py").read_text()
    m = re.search(r'^TORCH_FLOOR = "([0-9.]+)"', compat, re.M)
    assert m and m.group(1) == floors["torch"], (m and m.group(1), floors)


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_docs_state_the_declared_floors() -> None:
    """Every ``torch >= X`` (``>=``, ``≥``; also triton and transformers) in README.md and
    docs/*.md is the extras' floor, and README's Install section states each of them."""
    floors = _declared_floors()
    bad = []
    for path in _doc_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pkg, ver in re.findall(r"\b(torch|triton|transformers)\s*(?:>=|≥)\s*([0-9][0-9.]*)",
                                       line):
                if ver.rstrip(".") != floors[pkg]:
                    bad.append(f"{path.name}:{n}: {pkg} >= {ver} (declared: {floors[pkg]})")
    assert not bad, "\n".join(bad)
    install = _readme_install()
    for pkg, ver in floors.items():
        assert re.search(rf"\b{pkg}\s*>=\s*{re.escape(ver)}\b", install), (pkg, ver)


def test_messages_in_the_code_state_the_declared_floors() -> None:
    """Every literal ``torch >= X`` (and triton, transformers) in src/crossentropy, the
    messages users read, is the extras' floor (a refusal said "transformers >= 4.46")."""
    floors = _declared_floors()
    bad = []
    for path in sorted((SRC / "crossentropy").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pkg, ver in re.findall(r"\b(torch|triton|transformers)\s*(?:>=|≥)\s*([0-9][0-9.]*)",
                                       line):
                if ver.rstrip(".") != floors[pkg]:
                    bad.append(f"{path.relative_to(SRC)}:{n}: {pkg} >= {ver} "
                               f"(declared: {floors[pkg]})")
    assert not bad, "\n".join(bad)


def _readme_install() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^## Install\n(.*?)(?=^## )", text, re.M | re.S)
    assert m, "README.md has no '## Install' section"
    return m.group(1)


# --------------------------------------------------------------------------- install lines

_PIP = re.compile(r"pip3?\s+install\s+([^`\n#;&|)]*)")


def _index_installs(text: str) -> list[str]:
    """The arguments of ``pip install`` that name the package on an index (``crossentropy``,
    ``crossentropy[torch]``, ``crossentropy>=0.1``), which has never been published."""
    found = []
    for m in _PIP.finditer(text):
        try:
            args = shlex.split(m.group(1))
        except ValueError:  # an unclosed quote in prose: fall back to whitespace
            args = m.group(1).split()
        found += [a for a in args if re.match(r"crossentropy(\[|[<>=~!]|$)", a.strip("'\""))]
    return found


def test_index_install_detector() -> None:
    assert _index_installs('pip install "crossentropy[transformers]"  # x') == [
        "crossentropy[transformers]"]
    assert _index_installs("(`pip install crossentropy`; the extra)") == ["crossentropy"]
    assert _index_installs("pip install -U crossentropy>=0.1") == ["crossentropy>=0.1"]
    assert _index_installs('pip install ".[transformers]" && pip install -e .') == []
    assert _index_installs("pip install torch --index-url https://x/whl/cpu") == []


def test_install_lines_install_from_the_clone() -> None:
    paths = [*_doc_files(), *sorted((ROOT / "examples").rglob("*.py")),
             *sorted((ROOT / "examples").rglob("*.md"))]
    bad = [f"{p.relative_to(ROOT)}: pip install {a}" for p in paths
           for a in _index_installs(p.read_text())]
    assert not bad, "not published on any index; install from the clone:\n" + "\n".join(bad)


def test_without_torch_the_error_says_how_to_install_it() -> None:
    """``import crossentropy.torch`` with no torch: a ModuleNotFoundError (an ImportError,
    ``name == "torch"``) saying what to install, not torch's bare 'No module named'."""
    r = _run(textwrap.dedent("""
        import importlib.abc, sys

        class NoTorch(importlib.abc.MetaPathFinder):  # as if torch were not installed
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] == "torch":
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)

        sys.meta_path.insert(0, NoTorch())
        try:
            import crossentropy.torch
        except ModuleNotFoundError as exc:
            assert exc.name == "torch", exc.name
            print(exc)
            print("OK")
        """))
    _ok(r)
    assert "needs PyTorch (torch >= 2.7)" in r.stdout and 'pip install ".[torch]"' in r.stdout
