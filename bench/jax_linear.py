"""crossentropy.jax.linear_cross_entropy against optax on the full logits: memory and time.

Both compute the mean cross-entropy of ``hidden @ weight.T`` (float32) for integer labels and
its gradient with respect to hidden and weight, jitted (``jax.value_and_grad``):

* ``optax``: ``optax.softmax_cross_entropy_with_integer_labels(h @ W.T, y).mean()`` (the
  [N, V] logits and their gradient exist in full);
* ``crossentropy``: ``crossentropy.jax.linear_cross_entropy(h, W, y)`` (default chunking).

Memory, two measures: XLA's own accounting of the compiled step
(``jax.jit(...).lower(...).compile().memory_analysis()``: arguments, outputs and temporaries;
"peak" below is their sum), and the process's resident set: each provider runs in a fresh
subprocess that builds the inputs and compiles the step, reads its resident set, resets the
kernel's peak counter (``/proc/self/clear_refs``), runs the first step and reads the peak
(``VmHWM``); "extra RSS" is that peak minus the resident set before the step (every buffer
the step allocates, its outputs included; later steps reuse the allocator's pages).

Time: :func:`harness.alternate`, the two steps in turn (A B A B ...) in one process after a
warm-up, the median of the per-pair ratios with its 20th-80th percentiles.

Run::

    python bench/jax_linear.py                      # N=4096, D=512, V=128256, 5 pairs
    python bench/jax_linear.py --V 32000 --pairs 3  # a smaller point
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness

RESULTS = Path(__file__).resolve().parent / "results"


def _inputs(N: int, D: int, V: int) -> tuple[Any, Any, Any]:
    import jax

    kh, kw, ky = jax.random.split(jax.random.key(0), 3)
    h = jax.random.normal(kh, (N, D)) * 0.5
    W = jax.random.normal(kw, (V, D)) * 0.05
    y = jax.random.randint(ky, (N,), 0, V)
    return h, W, y


def _step(provider: str, y: Any) -> Any:
    import jax

    if provider == "optax":
        import optax

        def loss(h: Any, W: Any) -> Any:
            return optax.softmax_cross_entropy_with_integer_labels(h @ W.T, y).mean()
    else:
        import crossentropy.jax as cej

        def loss(h: Any, W: Any) -> Any:
            return cej.linear_cross_entropy(h, W, y)

    return jax.jit(jax.value_and_grad(loss, (0, 1)))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(provider: str, N: int, D: int, V: int) -> None:
    """One provider in this (fresh) process: XLA's memory analysis and the extra RSS."""
    import jax

    h, W, y = _inputs(N, D, V)
    step = _step(provider, y)
    compiled = step.lower(h, W).compile()
    ma = compiled.memory_analysis()
    jax.block_until_ready((h, W, y))
    before = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM)
    loss, grads = compiled(h, W)
    jax.block_until_ready((loss, grads))
    peak = _rss_kib("VmHWM")
    print(json.dumps({
        "temp_mib": ma.temp_size_in_bytes / 2**20,
        "argument_mib": ma.argument_size_in_bytes / 2**20,
        "output_mib": ma.output_size_in_bytes / 2**20,
        "alias_mib": ma.alias_size_in_bytes / 2**20,
        "extra_rss_mib": (peak - before) / 1024,
        "loss": float(loss),
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=4096)
    ap.add_argument("--D", type=int, default=512)
    ap.add_argument("--V", type=int, default=128256)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "jax_linear.csv"))
    ap.add_argument("--child", choices=["optax", "crossentropy"], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.N, a.D, a.V)
        return
    mem: dict[str, dict[str, float]] = {}
    for provider in ("optax", "crossentropy"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", provider, "--N", str(a.N), "--D", str(a.D),
             "--V", str(a.V)], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        mem[provider] = json.loads(out.stdout.strip().splitlines()[-1])
        m = mem[provider]
        peak = m["temp_mib"] + m["argument_mib"] + m["output_mib"] - m["alias_mib"]
        m["xla_peak_mib"] = peak
        print(f"{provider:13s} XLA peak {peak:8.1f} MiB (temp {m['temp_mib']:.1f}), "
              f"extra RSS {m['extra_rss_mib']:8.1f} MiB, loss {m['loss']:.6f}", flush=True)
    h, W, y = _inputs(a.N, a.D, a.V)
    ours, theirs = _step("crossentropy", y), _step("optax", y)
    import jax

    ratio = harness.alternate(lambda: jax.block_until_ready(ours(h, W)),
                              lambda: jax.block_until_ready(theirs(h, W)), pairs=a.pairs,
                              warmup=1)
    o, t = mem["crossentropy"], mem["optax"]
    print(f"time crossentropy / optax: {ratio}")
    print(f"memory crossentropy / optax: XLA peak {o['xla_peak_mib'] / t['xla_peak_mib']:.3f}, "
          f"temporaries {o['temp_mib'] / t['temp_mib']:.3f}, "
          f"extra RSS {o['extra_rss_mib'] / t['extra_rss_mib']:.3f}")
    row: dict[str, Any] = {"N": a.N, "D": a.D, "V": a.V, "dtype": "float32"}
    for name, m in (("optax", t), ("crossentropy", o)):
        for k in ("xla_peak_mib", "temp_mib", "extra_rss_mib"):
            row[f"{name}_{k}"] = round(m[k], 1)
    row["xla_peak_ratio"] = round(o["xla_peak_mib"] / t["xla_peak_mib"], 4)
    row["extra_rss_ratio"] = round(o["extra_rss_mib"] / t["extra_rss_mib"], 4)
    row.update({f"time_{k}": v for k, v in ratio.fields().items()})
    row.update(harness.stamp())
    harness.write_csv([row], a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
