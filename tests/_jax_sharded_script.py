"""Checks of crossentropy.jax.sharded_linear_cross_entropy on several host devices.

Run by tests/test_jax_sharded.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the flag must be set before JAX is
imported, so not in the test process).  Prints one JSON line: the checks that ran.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import crossentropy.jax as cej


def both(f: Any) -> Any:
    """Value and gradients (of the sum) in one jitted program."""
    return jax.jit(jax.value_and_grad(lambda *args: (jnp.sum(f(*args)), f(*args)), (0, 1, 2),
                                      has_aux=True))


def main() -> None:
    P_ = jax.device_count()
    assert P_ == 4, f"expected 4 host devices, got {P_} (XLA_FLAGS={os.environ.get('XLA_FLAGS')})"
    mesh = jax.make_mesh((P_,), ("vocab",), axis_types=(AxisType.Auto,))
    rng = np.random.default_rng(0)
    N, D, V = 37, 6, 53  # 53 classes over 4 devices: 14 per shard, the last one 11 + padding
    Vp = -(-V // P_) * P_
    h = jnp.asarray(rng.integers(-3, 4, (N, D)).astype(np.float64))
    W = rng.integers(-3, 4, (V, D)).astype(np.float64)
    b = rng.integers(-2, 3, V).astype(np.float64)
    cw = rng.uniform(0.5, 2.0, V)
    y = rng.integers(0, V, N)
    y[[4, 9]] = -100
    yj = jnp.asarray(y)

    def pad(a: np.ndarray) -> np.ndarray:
        return np.pad(a, [(0, Vp - V)] + [(0, 0)] * (a.ndim - 1))

    Wp = jax.device_put(pad(W), NamedSharding(mesh, P("vocab", None)))
    bp = jax.device_put(pad(b), NamedSharding(mesh, P("vocab")))
    cwp = jax.device_put(pad(cw), NamedSharding(mesh, P("vocab")))
    ran = []
    for kw in ({"label_smoothing": 0.1, "weight": True, "z_loss": 1e-3, "softcap": 5.0,
                "vocab_chunk": 5},
               {"reduction": "none", "token_chunk": 8, "base": 2}):
        kw = dict(kw)
        use_w = kw.pop("weight", False)

        def sharded(hh: Any, ww: Any, bb: Any, kw: Any = kw, use_w: bool = use_w) -> Any:
            def body(hs: Any, ws: Any, bs: Any, cs: Any, ys: Any) -> Any:
                return cej.sharded_linear_cross_entropy(
                    hs, ws, ys, axis_name="vocab", num_classes=V, linear_bias=bs,
                    weight=cs if use_w else None, **kw)

            f = jax.shard_map(body, mesh=mesh, out_specs=P(),
                              in_specs=(P(), P("vocab", None), P("vocab"), P("vocab"), P()))
            return f(hh, ww, bb, cwp, yj)

        base = {k: v for k, v in kw.items() if k not in ("vocab_chunk", "token_chunk")}

        def whole(hh: Any, ww: Any, bb: Any, base: Any = base, use_w: bool = use_w) -> Any:
            return cej.linear_cross_entropy(hh, ww, yj, linear_bias=bb,
                                            weight=jnp.asarray(cw) if use_w else None,
                                            **base)

        (_, got), gs = both(sharded)(h, Wp, bp)
        (_, want), gw = both(whole)(h, jnp.asarray(W), jnp.asarray(b))
        # the logits are exact (small whole numbers): the shards' statistics merged at once
        # give the unsharded loss to the last bit or one rounding of s
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=4e-16, atol=0,
                                   err_msg=str(kw))
        for name, a, c in zip(("input", "weight", "bias"), gs, gw, strict=True):
            a = np.asarray(a)[: c.shape[0]] if name != "input" else np.asarray(a)
            scale = float(np.max(np.abs(np.asarray(c))))
            np.testing.assert_allclose(a, np.asarray(c), rtol=0, atol=1e-14 * scale,
                                       err_msg=f"{name} {kw}")
        pad_grad = np.asarray(gs[1])[V:]
        assert np.all(pad_grad == 0.0), "the padding classes get no gradient"
        ran.append(sorted(kw) + (["weight"] if use_w else []))
    # the docs example (docs/jax.md, "Vocabulary-parallel"), on these 4 devices
    docs = sys.argv[1] if len(sys.argv) > 1 else None
    if docs:
        namespace: dict[str, Any] = {}
        exec(compile(open(docs).read(), docs, "exec"), namespace)
        ran.append(["docs example", str(namespace["shards"])])
    print(json.dumps({"devices": P_, "ran": ran}))


if __name__ == "__main__":
    # here, not at import: pytest's --doctest-modules imports this file in the test process,
    # where a global float64 switch would change every later JAX result
    jax.config.update("jax_enable_x64", True)
    main()
