"""The vocabulary-parallel loss on 4 host devices, and the docs' sharding example.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before JAX is imported,
so the checks run in a subprocess: tests/_jax_sharded_script.py (the sharded loss and its
gradients against the unsharded fused loss, 53 classes over 4 devices -- an uneven split,
padded -- with every option), then the code of docs/jax.md's sharding example on the same
4 devices.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "_jax_sharded_script.py"
DOCS = ROOT / "docs" / "jax.md"


def _docs_example(tmp_path: Path) -> Path:
    """The python block of docs/jax.md that follows the marker
    ``<!-- sharding example -->``, prompts stripped, as a script."""
    text = DOCS.read_text(encoding="utf-8")
    m = re.search(r"<!-- sharding example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "docs/jax.md has no sharding example block"
    lines = [line[4:] for line in m.group(1).splitlines() if line.startswith((">>> ", "... "))]
    path = tmp_path / "sharding_example.py"
    head = "import jax, jax.numpy as jnp\nimport crossentropy.jax as cej\n"  # earlier blocks
    path.write_text(head + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_sharded_loss_on_four_devices(tmp_path: Path) -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(SCRIPT), str(_docs_example(tmp_path))],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4
    assert len(result["ran"]) == 3
    assert result["ran"][-1] == ["docs example", "4"]
