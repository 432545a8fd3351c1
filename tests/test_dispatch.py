"""The one NumPy dispatch (crossentropy._dispatch): the pick's rule, read from its facts."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import crossentropy as ce
from crossentropy import _config, _small
from crossentropy._dispatch import CORE, NUMBA, PLAIN, pick, pick_rows

SMALL = np.zeros(3)
LARGE = np.zeros(max(_config.FAST_MIN_SIZE, _small.SMALL + 1))


def test_a_few_numbers_go_to_plain_python_first() -> None:
    for backend in ("numpy", "numba", "auto"):
        with ce.use_backend(backend):
            assert pick(SMALL, plain=True) is PLAIN
            assert pick(np.zeros(_small.SMALL), plain=True) is PLAIN
            assert pick(np.zeros(0), plain=True) is not PLAIN  # nothing to compute
            assert pick(np.zeros(_small.SMALL + 1), plain=True) is not PLAIN
            assert pick(SMALL) is not PLAIN  # the options are not the plain path's


def test_kernels_first_keeps_small_calls_on_the_kernels_under_numba() -> None:
    with ce.use_backend("numba"):
        assert pick(SMALL, plain=True, kernels_first=True) is NUMBA
        assert pick(SMALL.astype(np.float16), plain=True, kernels_first=True) is PLAIN
    with ce.use_backend("numpy"):
        assert pick(SMALL, plain=True, kernels_first=True) is PLAIN


def test_the_kernels_take_the_calls_they_cover() -> None:
    with ce.use_backend("numba"):
        assert pick(SMALL) is NUMBA
        assert pick(SMALL, numba=False) is CORE
        assert pick(SMALL.astype(np.float16)) is CORE  # no float16 kernels
    with ce.use_backend("numpy"):
        assert pick(LARGE) is CORE
    with ce.use_backend("auto"):
        assert pick(SMALL) is CORE  # below FAST_MIN_SIZE
        assert pick(LARGE, numba=False) is CORE
        if ce.warm_up():
            assert pick(LARGE) is NUMBA
            assert pick(SMALL, min_size=0) is NUMBA  # the torch layer's question


def test_plain_python_hands_special_values_on() -> None:
    """A NaN or an infinity: the backend the pick gives without the plain path."""
    x = np.array([1.0, np.inf, 0.0])
    with ce.use_backend("numpy"):
        want = CORE.softmax(x, (0,), log=False, dtype=x.dtype, out=None)
        np.testing.assert_array_equal(PLAIN.softmax(x, (0,), log=False, dtype=x.dtype,
                                                    out=None), want)
        assert PLAIN.logsumexp(x, (0,))[0] == np.inf


def test_backends_agree_on_finite_rows() -> None:
    x = np.random.default_rng(0).normal(0, 5, (4, 5))
    with ce.use_backend("numpy"):
        for log in (False, True):
            p = PLAIN.softmax(x, (1,), log=log, dtype=x.dtype, out=None)
            c = CORE.softmax(x, (1,), log=log, dtype=x.dtype, out=None)
            np.testing.assert_allclose(p, c, rtol=4e-16, atol=0)
        np.testing.assert_allclose(PLAIN.logsumexp(x, (1,)), CORE.logsumexp(x, (1,)),
                                   rtol=4e-16)


def test_the_dispatch_imports_only_the_core_the_plumbing_and_the_kernels() -> None:
    """Beside ``_backends`` in the layering (tests/test_layering.py): the public NumPy
    modules import it (and the torch layer may), never the reverse."""
    src = Path(ce.__file__).parent
    allowed = ("crossentropy._core", "crossentropy._options", "crossentropy._validate",
               "crossentropy._config", "crossentropy._backends", "crossentropy._small",
               "crossentropy._layout", "crossentropy._cpu")
    for name in ("_dispatch.py", "_layout.py"):
        tree = ast.parse((src / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(
                    "crossentropy"):
                continue
            mods = ([f"crossentropy.{a.name}" for a in node.names]
                    if node.module == "crossentropy" else [str(node.module)])
            for m in mods:
                assert any(m == a or m.startswith(a + ".") for a in allowed), \
                    f"{name} imports {m}"


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_public_functions_take_the_path_the_pick_gives(backend: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """softmax, logsumexp and cross_entropy compute on the backend :func:`pick` gives."""
    import crossentropy._dispatch as dispatch

    seen: list[str] = []
    real = dispatch.pick

    def spy(*args: object, **kwargs: object) -> dispatch.Backend:
        be = real(*args, **kwargs)  # type: ignore[arg-type]
        seen.append(be.name)
        return be

    monkeypatch.setattr("crossentropy.activations.pick", spy)
    monkeypatch.setattr("crossentropy.losses.pick", spy)
    with ce.use_backend(backend):  # type: ignore[arg-type]
        ce.softmax([1.0, 2.0, 3.0])
        ce.logsumexp([1.0, 2.0, 3.0])
        ce.cross_entropy([[1.0, 2.0, 3.0]], [2])
        ce.cross_entropy([[1.0, 2.0, 3.0]], [2], return_grad=True)
        ce.softmax(np.zeros((2, 3)), out=np.empty((2, 3)))
    kernel = "numba" if backend == "numba" else "plain"
    assert seen == ["plain", "plain", "plain", "numba" if backend == "numba" else "core",
                    kernel]


def test_the_per_row_entry_points_take_the_pick_with_no_size_floor() -> None:
    """The torch layer's CPU path and ``_backends.cross_entropy_rows`` ask
    :func:`pick_rows`: the kernels at every size where the setting lets them, the core
    under "numpy", for float16 and for empty logits."""
    with ce.use_backend("numpy"):
        assert pick_rows(LARGE.reshape(1, -1)) is CORE
    with ce.use_backend("numba"):
        assert pick_rows(SMALL.reshape(1, -1)) is NUMBA
        assert pick_rows(np.zeros((0, 3))) is CORE
        assert pick_rows(np.zeros((2, 3), dtype=np.float16)) is CORE
    with ce.use_backend("auto"):
        if ce.warm_up():
            assert pick_rows(SMALL.reshape(1, -1)) is NUMBA


def test_the_per_row_backends_agree() -> None:
    """``ce_rows`` and ``index_targets`` of the core and the kernels: the same rows (within
    the accuracy bounds), the same check and count."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 4, (7, 13))
    t = rng.integers(0, 13, 7)
    t[2] = -100
    w = rng.random(13) + 0.5
    got = []
    for be in (CORE, NUMBA):
        g = np.empty_like(x)
        loss, lse = be.ce_rows(x, t, w, -100, 0.1, 1e-3, 6.0, g, 0.5)
        got.append((loss, lse, g))
    for a, b in zip(*got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    assert CORE.index_targets(t, 13, -100) is None  # (the caller checks them itself)
    assert NUMBA.index_targets(t, 13, -100) == (-1, 6)
    t[4] = 13
    assert NUMBA.index_targets(t, 13, -100) == (4, 3)  # (counted before it)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_the_torch_cpu_path_takes_the_backend_the_pick_gives(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The index operator and the chunks of the linear one compute on ``pick_rows``'s
    backend: one pick per call or chunk, the same backend computing."""
    torch = pytest.importorskip("torch")
    import crossentropy._dispatch as dispatch
    import crossentropy.torch as cet
    from crossentropy.torch import _chunks, _ops

    picked: list[str] = []
    computed: list[str] = []
    real = dispatch.pick_rows

    def spy(x: np.ndarray) -> dispatch.Backend:
        be = real(x)
        picked.append(be.name)
        return be

    monkeypatch.setattr(_ops, "pick_rows", spy)
    monkeypatch.setattr(_chunks, "pick_rows", spy)
    for be in (NUMBA, CORE):
        inner = type(be).ce_rows

        def counting(self: dispatch.Backend, *args: object, _inner: object = inner,
                     **kwargs: object) -> object:
            computed.append(self.name)
            return _inner(self, *args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(type(be), "ce_rows", counting)
    want = "numba" if backend == "numba" else "core"
    x = torch.randn(5, 7)
    t = torch.randint(0, 7, (5,))
    h, W = torch.randn(5, 4), torch.randn(7, 4)
    with ce.use_backend(backend):  # type: ignore[arg-type]
        cet.cross_entropy(x, t)
        cet.linear_cross_entropy(h, W, t)
    assert picked == computed
    assert set(computed) == {want} and len(computed) >= 2
