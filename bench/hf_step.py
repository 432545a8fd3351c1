"""One training step of a tiny Llama (vocabulary 128,256, 2,048 tokens): patched vs unpatched.

Each step runs in its own process (``--child patched|unpatched``), so each has its own
peak resident memory: the parent reads the child's ``ru_maxrss`` from ``os.wait4`` and
subtracts the resident memory the child reported after building the model and the batch
("extra" = what the step itself needs).  The child times ``--steps`` forward+backward
steps after one warm-up step and reports their median.  Children alternate
patched / unpatched (A B A B ...); the ratios of each pair are summarised by their median
and p20-p80 spread, with the load average.

    python bench/hf_step.py                   # 5 pairs, prints a markdown table
    python bench/hf_step.py --pairs 3 --hidden 64
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

VOCAB = 128_256
TOKENS = 2_048


def _rss_kib() -> int:
    """Current resident set size of this process, KiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def child(mode: str, hidden: int, layers: int, steps: int) -> None:
    import torch
    import transformers

    import crossentropy.transformers as cet

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=TOKENS, attn_implementation="sdpa",
    )
    model = transformers.LlamaForCausalLM(config)  # float32
    model.train()
    if mode == "patched":
        cet.patch(model)
    ids = torch.randint(0, VOCAB, (1, TOKENS))
    rss0 = _rss_kib()
    times = []
    for i in range(steps + 1):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = model(ids, labels=ids).loss
        loss.backward()
        t = time.perf_counter() - t0
        if i:  # the first step is a warm-up
            times.append(t)
    print(json.dumps({"rss0_kib": rss0, "time_s": statistics.median(times),
                      "loss": float(loss.detach()), "threads": torch.get_num_threads(),
                      "torch": torch.__version__, "transformers": transformers.__version__}))


def run_child(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--hidden", str(args.hidden),
           "--layers", str(args.layers), "--steps", str(args.steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed with exit code {proc.returncode}")
    res: dict[str, Any] = json.loads(out)
    res["peak_kib"] = usage.ru_maxrss  # KiB on Linux
    res["extra_mib"] = (usage.ru_maxrss - res["rss0_kib"]) / 1024
    return res


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", choices=["patched", "unpatched"])
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    if args.child:
        child(args.child, args.hidden, args.layers, args.steps)
        return
    load0 = os.getloadavg()
    rows = []
    for _ in range(args.pairs):
        a = run_child("patched", args)
        b = run_child("unpatched", args)
        rows.append((a, b))
        print(f"patched {a['extra_mib']:8.1f} MiB {a['time_s']:.3f} s | unpatched "
              f"{b['extra_mib']:8.1f} MiB {b['time_s']:.3f} s | loss {a['loss']:.6f} "
              f"{b['loss']:.6f}", file=sys.stderr)
    load1 = os.getloadavg()
    mem = [a["extra_mib"] / b["extra_mib"] for a, b in rows]
    tim = [a["time_s"] / b["time_s"] for a, b in rows]

    def med(key: str, i: int) -> float:
        return statistics.median(r[i][key] for r in rows)

    info = rows[0][0]
    print(f"Command: `python bench/hf_step.py --pairs {args.pairs} --hidden {args.hidden} "
          f"--layers {args.layers} --steps {args.steps}`  ")
    print(f"Date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, torch {info['torch']} "
          f"({info['threads']} threads), transformers {info['transformers']}; load average "
          f"{load0[0]:.1f} at start, {load1[0]:.1f} at end.  ")
    print(f"Tiny Llama: vocabulary {VOCAB:,}, hidden {args.hidden}, {args.layers} layers, "
          f"float32, 1 x {TOKENS:,} tokens; {args.pairs} process pairs, each time the median "
          f"of {args.steps} steps after a warm-up.\n")
    print("| | extra peak RSS (MiB) | step time (s) |")
    print("|---|---:|---:|")
    print(f"| unpatched (transformers' loss) | {med('extra_mib', 1):.0f} | "
          f"{med('time_s', 1):.3f} |")
    print(f"| patched (crossentropy) | {med('extra_mib', 0):.0f} | {med('time_s', 0):.3f} |")
    print(f"| ratio, median of pairs [p20, p80] | {statistics.median(mem):.3f} "
          f"[{_q(mem, 0.2):.3f}, {_q(mem, 0.8):.3f}] | {statistics.median(tim):.3f} "
          f"[{_q(tim, 0.2):.3f}, {_q(tim, 0.8):.3f}] |")


if __name__ == "__main__":
    main()
