"""The import layering of ``src/crossentropy``, read from the source (lazy imports counted).

Layers, from the bottom:

1. ``crossentropy._core``: the exact float64 arithmetic -- imports numpy, math and the
   standard library only (and its own modules);
2. plumbing: ``_options``, ``_validate``, ``_config``, ``_small``, and the selection
   ``_backends`` (which may import the numba backend, lazily, to run it);
3. backends: ``crossentropy._cpu`` (numba), ``crossentropy.triton``, the torch layer
   ``crossentropy.torch``, the JAX layer ``crossentropy.jax`` -- never import the public
   NumPy modules (the JAX layer imports only JAX, NumPy, the plumbing and itself).  The
   Triton kernels sit below the torch layer: no module of ``crossentropy.triton`` imports
   ``crossentropy.torch``, except the front door (the package itself), whose functions
   call the torch layer lazily, and which no torch module imports;
4. the public NumPy API: ``activations``, ``losses``, ``targets``, the package itself;
5. applications: ``cli``, ``explain``, ``score``, ``plot``, ``transformers`` -- import only the
   public API (``crossentropy`` and its public subpackages), never a private module.

Imports point downward only, and there are no cycles.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "crossentropy"

STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = SRC / Path(*dotted.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path) -> set[str]:
    """Every module imported anywhere in the file (top level or inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            subs = [a.name for a in node.names if _is_module(name + "." + a.name)]
            out.update(name + "." + a for a in subs)
            if len(subs) < len(node.names):  # names from the module itself
                out.add(name)
    return out


MODULES = {_module_name(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _internal(names: set[str]) -> set[str]:
    return {n for n in names if n == "crossentropy" or n.startswith("crossentropy.")}


def _top(name: str) -> str:
    return name.split(".")[0]


def _in(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def test_the_core_imports_numpy_math_and_itself_only():
    core = {m: imps for m, imps in MODULES.items() if _in(m, "crossentropy._core")}
    assert core, "crossentropy._core not found"
    for mod, imps in core.items():
        for name in imps:
            ok = _top(name) in STDLIB or _top(name) == "numpy" or _in(name, "crossentropy._core")
            assert ok, f"{mod} imports {name}: the core may import numpy and the stdlib only"


PUBLIC_NUMPY = ("crossentropy.activations", "crossentropy.losses", "crossentropy.targets")
BACKENDS = ("crossentropy._cpu", "crossentropy.triton", "crossentropy.torch", "crossentropy.jax")
APPS = (
    "crossentropy.cli",
    "crossentropy.explain",
    "crossentropy.score",
    "crossentropy.plot",
    "crossentropy.transformers",
    "crossentropy.trl",
    "crossentropy.__main__",
)


def test_backends_never_import_the_public_numpy_modules():
    for mod, imps in MODULES.items():
        if not any(_in(mod, b) for b in BACKENDS):
            continue
        for name in _internal(imps):
            bad = name == "crossentropy" or any(_in(name, p) for p in PUBLIC_NUMPY + APPS)
            assert not bad, f"{mod} (a backend) imports {name}"


def test_the_jax_layer_imports_jax_numpy_the_plumbing_and_itself():
    """crossentropy.jax stands beside the torch layer, not on it: no torch, no numba."""
    jax_layer = {m: imps for m, imps in MODULES.items() if _in(m, "crossentropy.jax")}
    assert jax_layer, "crossentropy.jax not found"
    allowed = ("crossentropy._options", "crossentropy._validate", "crossentropy.jax")
    for mod, imps in jax_layer.items():
        for name in imps:
            if _top(name) == "crossentropy":
                ok = any(_in(name, a) for a in allowed)
            else:
                ok = _top(name) in STDLIB or _top(name) in ("jax", "numpy")
            assert ok, f"{mod} imports {name}: the JAX layer may import jax, numpy, the " \
                       "stdlib, crossentropy._options/_validate and itself"


TRITON_FRONT_DOOR = "crossentropy.triton"


def _top_level_imports(path: Path) -> set[str]:
    """The modules a file imports at import time (module level, not inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module or "")
    return out


def test_the_triton_kernels_never_import_the_torch_layer():
    """triton/ holds kernels, launchers and supports/is_available: the autograd glue, the
    row formula and the reduction are the torch layer's, which imports them, not the
    reverse.  Only the front door's functions go up (lazily), and no torch module imports
    the front door itself (so there is no cycle)."""
    triton = {m: imps for m, imps in MODULES.items() if _in(m, "crossentropy.triton")}
    assert TRITON_FRONT_DOOR in triton and len(triton) > 1
    for mod, imps in triton.items():
        if mod == TRITON_FRONT_DOOR:
            continue
        for name in _internal(imps):
            assert not _in(name, "crossentropy.torch"), \
                f"{mod} imports {name}: the Triton kernels sit below the torch layer"
    door = PKG / "triton" / "__init__.py"
    for name in _top_level_imports(door):
        assert not _in(name, "crossentropy.torch"), \
            f"crossentropy.triton imports {name} at import time: only lazily, in a function"
    for mod, imps in MODULES.items():
        if _in(mod, "crossentropy.torch"):
            assert TRITON_FRONT_DOOR not in imps, \
                f"{mod} imports the front door crossentropy.triton: import its modules"


def test_plumbing_imports_only_the_core_and_plumbing():
    plumbing = ("crossentropy._options", "crossentropy._validate", "crossentropy._config",
                "crossentropy._backends", "crossentropy._small")
    for mod in plumbing:
        for name in _internal(MODULES[mod]):
            ok = _in(name, "crossentropy._core") or name in plumbing or (
                mod == "crossentropy._backends" and _in(name, "crossentropy._cpu"))
            assert ok, f"{mod} imports {name}"


def _public(name: str) -> bool:
    """A name of the public API: no component starts with an underscore."""
    return not any(part.startswith("_") for part in name.split("."))


def test_applications_import_only_the_public_api():
    for mod, imps in MODULES.items():
        if not any(_in(mod, a) for a in APPS):
            continue
        own = next(a for a in APPS if _in(mod, a))
        for name in _internal(imps):
            if _in(name, own):
                continue  # an application's own modules
            assert _public(name), f"{mod} imports the private {name}: use the public API"


def test_no_import_cycles():
    graph = {m: {n for n in _internal(imps) if n in MODULES and n != m}
             for m, imps in MODULES.items()}
    # a package's __init__ importing its own submodules is how packages are built; the
    # reverse edge (submodule -> its own package) would then be a cycle.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cyc = [*stack[stack.index(n) :], n]
                pytest.fail("import cycle: " + " -> ".join(cyc))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_import_crossentropy_stays_light():
    import subprocess

    code = (
        "import sys, crossentropy\n"
        "heavy = [m for m in ('torch', 'triton', 'numba', 'matplotlib', 'rich', 'pyarrow', "
        "'scipy', 'transformers', 'jax', 'jaxlib', 'optax') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", f"import crossentropy imported {out}"


#: the numba kernels (and their threads, _pool), one concept per module, each importing only
#: those before it
CPU_KERNELS = ("_pool", "_stamp", "_jit", "_llvm", "_exp", "_rows", "_rowpick", "_softmax",
               "_ce", "_elementwise", "_kernels")


def test_the_cpu_kernels_are_modules_of_one_concept_that_import_downward():
    folder = PKG / "_cpu"
    # (besides the adapter, __init__, and the compile's driver, _compile: no kernels)
    assert {p.stem for p in folder.glob("*.py")} - {"__init__", "_compile"} == set(CPU_KERNELS)
    for p in folder.glob("*.py"):
        n = len(p.read_text(encoding="utf-8").splitlines())
        assert n <= 650, f"{p.name} has {n} lines: split it by concept"
    for i, name in enumerate(CPU_KERNELS):
        for imp in _internal(MODULES["crossentropy._cpu." + name]):
            assert imp.rpartition(".")[2] in CPU_KERNELS[:i], \
                f"crossentropy._cpu.{name} imports {imp}"


def test_the_torch_layers_argument_checks_live_in_one_module():
    """One torch-side validator module (``torch/_validate.py``): no other module of the
    torch layer defines a ``check_*`` function, except the torch version check and the
    vocabulary-parallel protocol's checks of what the ranks agree on."""
    allowed = {
        "torch/_compat.py:check_torch",  # the installed torch's version, not an argument
        "torch/distributed/_protocol.py:check_float_tensor",
        "torch/distributed/_protocol.py:check_target",
        "torch/distributed/_protocol.py:check_class_weight",
        "torch/distributed/_protocol.py:check_targets_in_range",
    }
    found = set()
    for path in sorted((PKG / "torch").rglob("*.py")):
        if path.name == "_validate.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name.lstrip("_").startswith("check_"):
                found.add(f"{path.relative_to(PKG).as_posix()}:{node.name}")
    assert found <= allowed, sorted(found - allowed)
