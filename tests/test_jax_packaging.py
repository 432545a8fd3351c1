"""Packaging of the JAX layer: ``import crossentropy`` never imports JAX, and
``import crossentropy.jax`` without JAX says how to install it."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK_JAX = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'jax' or name.startswith('jax.'):\n"
    "            raise ImportError('No module named ' + repr(name))\n"
    "sys.meta_path.insert(0, Block())\n"
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)


def test_import_crossentropy_does_not_import_jax() -> None:
    out = _run("import sys, crossentropy\n"
               "print(sorted(m for m in ('jax', 'jaxlib', 'optax') if m in sys.modules))")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_crossentropy_jax_without_jax_says_how_to_install() -> None:
    out = _run(BLOCK_JAX + "import crossentropy\n"
               "try:\n"
               "    import crossentropy.jax\n"
               "except ImportError as exc:\n"
               "    print(exc)\n")
    assert out.returncode == 0, out.stderr
    msg = out.stdout.strip()
    assert 'pip install ".[jax]"' in msg, msg
    assert "not on PyPI" in msg and "crossentropy.jax needs JAX" in msg


def test_no_module_switches_float64_on_for_the_whole_process() -> None:
    """pytest imports every module of tests/ and src/ before the first test runs (collection,
    --doctest-modules included); none may leave ``jax_enable_x64`` on, or every later JAX
    result in that worker changes dtype (the docstring examples show float32).  Imports the
    JAX helpers of tests/ and the JAX layer again here, so that the check does not depend on
    which files this run collected."""
    import importlib
    import importlib.util
    from pathlib import Path

    jax = pytest.importorskip("jax")
    here = Path(__file__).resolve().parent
    for path in sorted(here.glob("_jax*.py")):
        spec = importlib.util.spec_from_file_location(f"_probe_{path.stem}", path)
        assert spec is not None and spec.loader is not None
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    import crossentropy.jax as cej

    for name in cej.__all__:
        getattr(cej, name)
    for mod in ("_activations", "_losses", "_linear", "_sharded", "optax", "_checks"):
        importlib.import_module(f"crossentropy.jax.{mod}")
    assert not jax.config.jax_enable_x64
