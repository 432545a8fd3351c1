"""crossentropy.jax.linear_cross_entropy: exact, every option, any chunking, no [N, V] array.

The hidden states and weights are small whole numbers, so the matmul's logits are exact
in any order of summation: the fused loss can then be held to the mpmath reference of
the logits (tests/_reference.py) and to the unfused ``cross_entropy`` bit for bit in the
value, and to its gradients within rounding.  Chunk sizes straddle the block and slice
boundaries (odd row and class counts, a last slice that overlaps its neighbour).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import crossentropy.jax as cej  # noqa: E402
from _jax_support import check, ulp  # noqa: E402
from _reference import mp_rows  # noqa: E402

N, D, V = 37, 6, 53
RNG = np.random.default_rng(2)
H = RNG.integers(-3, 4, (N, D)).astype(np.float64)
W = RNG.integers(-3, 4, (V, D)).astype(np.float64)
B = RNG.integers(-2, 3, V).astype(np.float64)
Y = RNG.integers(0, V, N)
Y[[3, 11]] = -100
CW = RNG.uniform(0.5, 2.0, V)
SW = RNG.uniform(0.0, 2.0, N)

CHUNKS = [{}, {"token_chunk": 8, "vocab_chunk": 20}, {"token_chunk": 5, "vocab_chunk": 14},
          {"token_chunk": 64, "vocab_chunk": 53}]


def test_per_row_loss_against_mpmath() -> None:
    z = H @ W.T + B  # exact: small whole numbers
    keep = Y >= 0
    ref = mp_rows(z[keep], Y[keep])["ce"]
    with jax.enable_x64(True):
        for chunks in (CHUNKS[0], CHUNKS[2]):
            got = np.asarray(cej.linear_cross_entropy(
                jnp.asarray(H), jnp.asarray(W), jnp.asarray(Y), linear_bias=jnp.asarray(B),
                reduction="none", **chunks))
            check(ulp(got[keep], ref), 4.0, f"fused loss {chunks}")
            assert np.all(got[~keep] == 0.0)


@pytest.mark.parametrize(("options", "chunks"), [
    ({"label_smoothing": 0.1, "weight": "cw"}, CHUNKS[1]),
    ({"z_loss": 1e-3, "softcap": 5.0, "reduction": "sum", "base": 2}, CHUNKS[2]),
    ({"sample_weight": "sw", "normalizer": 17.0, "ignore_index": None, "target": "valid"},
     CHUNKS[1]),
    ({"reduction": "none", "label_smoothing": 0.05, "z_loss": 1e-4}, CHUNKS[2]),
])
def test_options_and_chunks_match_the_unfused_loss(options: dict[str, Any],
                                                   chunks: dict[str, int]) -> None:
    kw = dict(options)
    y = np.where(Y < 0, 0, Y) if kw.pop("target", None) == "valid" else Y
    arrays = {"cw": jnp.asarray(CW), "sw": jnp.asarray(SW)}
    kw = {k: arrays[v] if isinstance(v, str) and v in arrays else v for k, v in kw.items()}

    def unfused(h: Any, w: Any, b: Any) -> Any:
        return cej.cross_entropy(h @ w.T + b, jnp.asarray(y), **kw)

    def fused(h: Any, w: Any, b: Any) -> Any:
        return cej.linear_cross_entropy(h, w, jnp.asarray(y), linear_bias=b, **kw, **chunks)

    def both(f: Any) -> Any:  # value and gradients in one program
        return jax.jit(jax.value_and_grad(lambda *a: (jnp.sum(f(*a)), f(*a)), (0, 1, 2),
                                          has_aux=True))

    with jax.enable_x64(True):
        args = (jnp.asarray(H), jnp.asarray(W), jnp.asarray(B))
        (_, want), gwant = both(unfused)(*args)
        (_, got), g = both(fused)(*args)
    # the same per-row arithmetic; the slices' statistics merged at once add at most a
    # rounding to s (here the logits are exact)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=4e-16, atol=0)
    for a, b in zip(g, gwant, strict=True):
        scale = float(np.max(np.abs(np.asarray(b))))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-14 * scale)


def test_no_logits_are_kept() -> None:
    """The compiled step of the loss and its gradients holds no [N, V] array, and its
    temporaries stay far below the logits' size (the unfused step's exceed it)."""
    n, d, v = 512, 16, 4096
    h = jnp.zeros((n, d), jnp.float32)
    w = jnp.zeros((v, d), jnp.float32)
    y = jnp.zeros((n,), jnp.int32)

    def fused(hh: Any, ww: Any) -> Any:
        return cej.linear_cross_entropy(hh, ww, y, token_chunk=128, vocab_chunk=512)

    def unfused(hh: Any, ww: Any) -> Any:
        return cej.cross_entropy(hh @ ww.T, y)

    logits_bytes = n * v * 4
    mine = jax.jit(jax.value_and_grad(fused, (0, 1))).lower(h, w).compile()
    theirs = jax.jit(jax.value_and_grad(unfused, (0, 1))).lower(h, w).compile()
    assert f"f32[{n},{v}]" not in mine.as_text()
    assert mine.memory_analysis().temp_size_in_bytes < logits_bytes / 4
    assert theirs.memory_analysis().temp_size_in_bytes > logits_bytes


def test_low_precision_inputs() -> None:
    """bfloat16 hidden states and weights: float32 accumulation and loss, rounded once."""
    h = jnp.asarray(H[:8], jnp.bfloat16)
    w = jnp.asarray(W, jnp.bfloat16)
    y = jnp.asarray(np.where(Y[:8] < 0, 0, Y[:8]))
    got = cej.linear_cross_entropy(h, w, y, reduction="none")
    assert got.dtype == jnp.bfloat16
    want = cej.cross_entropy(h.astype(jnp.float32) @ w.astype(jnp.float32).T, y,
                             reduction="none").astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
