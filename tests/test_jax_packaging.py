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
    """Every module of tests/ and src/ is imported before the first test runs (collection,
    --doctest-modules included); none may leave ``jax_enable_x64`` on, or every later JAX
    result in this worker changes dtype (the docstring examples show float32)."""
    jax = pytest.importorskip("jax")
    assert not jax.config.jax_enable_x64
