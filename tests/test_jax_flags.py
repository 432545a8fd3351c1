"""XLA's default flags keep the compensated arithmetic of crossentropy.jax; fast math does not.

The error terms of TwoSum and of the extraction are zero in real arithmetic, so a compiler
that treats floats as reals deletes them (docs/jax.md, "XLA flags").  In-process, with the
defaults: the probes below keep every digit.  In a subprocess with
``--xla_cpu_enable_fast_math=true``: the same probes lose them, which shows that the probes
detect the breakage they guard against.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

jax = pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parent.parent

PROBES = r"""
import json, jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
import crossentropy.jax as cej
from crossentropy.jax import _arith as ar
out = {
    # TwoSum of 1 + 1e-20 under jit: the error term is the 1e-20
    "two_sum": float(jax.jit(lambda a: ar.two_sum(a[0] + 1.0, a[1])[1])(
        jnp.array([0.0, 1e-20]))),
    # mpmath: log1p(exp(-40)) = 4.248354255291589e-18
    "log_softmax": float(cej.log_softmax(jnp.array([0.0, -40.0]))[0]),
    # mpmath: log1p(exp(-40) (1 + e^1)) = 1.5796578428307375e-17
    "cross_entropy": float(cej.cross_entropy(jnp.array([[40.0, 0.0, 1.0]]), jnp.array([0]))),
    "log1p": float(ar.log1p(jnp.array(1e-17))),
}
print(json.dumps(out))
"""

EXACT = {"two_sum": 1e-20, "log_softmax": -4.248354255291589e-18,
         "cross_entropy": 1.5796578428307375e-17, "log1p": 1e-17}


def _run(flags: str) -> dict[str, float]:
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", PROBES], capture_output=True, text=True,
                         env=env, cwd=ROOT, check=True, timeout=300)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_defaults_keep_the_compensation() -> None:
    code = PROBES.replace("print(json.dumps(out))", "").replace(
        'jax.config.update("jax_enable_x64", True)', "")  # scoped below, not global
    namespace: dict[str, object] = {}
    with jax.enable_x64(True):
        exec(compile(code, "probes", "exec"), namespace)
    out = namespace["out"]
    assert out == EXACT


def test_fast_math_breaks_it() -> None:
    """What docs/jax.md warns about: with fast math XLA deletes the error terms."""
    out = _run("--xla_cpu_enable_fast_math=true")
    lost = [k for k in EXACT if out[k] != EXACT[k]]
    assert {"two_sum", "log_softmax", "cross_entropy"} <= set(lost), out
