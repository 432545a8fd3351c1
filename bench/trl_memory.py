"""GRPO's log-probability step, TRL's own fused head against ``crossentropy.trl.patch``.

The step is what ``GRPOTrainer._compute_loss`` does with the model: per-token
log-probabilities and entropies of the completions
(``trainer._get_per_token_logps_and_entropies``), then backward of a loss of both.  Shape:
4 sequences of 64 prompt + 256 completion tokens (1,024 completion tokens), vocabulary
128,256 (Llama 3's), otherwise a tiny Llama (hidden 256, 1 layer), float32, CPU or CUDA.

Each variant runs in its own fresh process (the allocator's cache and the resident set of
one cannot hide the other's), alternately A B A B ...; a process reports

* extra peak memory of its first step: on CUDA ``torch.cuda.max_memory_allocated`` above the
  allocation before the step; on the CPU the peak resident set sampled every millisecond
  (``harness.peak_memory``) above the resident set before the step;
* the median time of the next ``--repeats`` steps.

The result is the median of the per-pair ratios patched / TRL with their range, for memory
and time; the issue's target is at most 0.3x the memory in at most 1x the time.

    python bench/trl_memory.py --pairs 3 [--csv bench/results/trl_memory.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness

V, D, B, PROMPT, COMPLETION = 128_256, 256, 4, 64, 256


def _trainer(device: str) -> Any:
    import datasets
    import tokenizers
    import torch
    import transformers as tf
    import trl

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=V, hidden_size=D, intermediate_size=2 * D,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = tf.LlamaForCausalLM(cfg).to(device)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 64)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                           bos_token="<s>", eos_token="</s>")
    args = trl.GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=4,
                          num_generations=4, report_to="none", use_cpu=device == "cpu",
                          bf16=False, gradient_checkpointing=False, temperature=0.7)
    return trl.GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(
        completions), args=args, train_dataset=datasets.Dataset.from_dict({"prompt": ["w3"]}),
        processing_class=tokenizer)


def _child(variant: str, repeats: int, device: str) -> dict[str, float]:
    import torch

    trainer = _trainer(device)
    if variant == "patched":
        import crossentropy.trl

        crossentropy.trl.patch(trainer)
    model = trainer.model
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 64, (B, PROMPT + COMPLETION), generator=g).to(device)
    mask = torch.ones_like(ids)
    adv = torch.randn(B, COMPLETION, generator=g).to(device)

    def step() -> None:
        logps, ent, _ = trainer._get_per_token_logps_and_entropies(
            model, ids, mask, COMPLETION, compute_entropy=True)
        loss = -(logps * adv).mean() - 0.01 * ent.mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
    else:
        extra = harness.peak_memory(step)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return {"extra_bytes": float(extra), "seconds": statistics.median(times)}


def _spawn(variant: str, repeats: int, device: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", variant, "--repeats",
                          str(repeats), "--device", device],
                         check=True, capture_output=True, text=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    if a.child:
        print(json.dumps(_child(a.child, a.repeats, a.device)))
        return
    load0 = harness.load()
    rows = []
    for i in range(a.pairs):
        trl_run = _spawn("trl", a.repeats, a.device)
        ours = _spawn("patched", a.repeats, a.device)
        rows.append((trl_run, ours))
        print(f"pair {i}: TRL {trl_run['extra_bytes'] / 2**20:7.1f} MiB "
              f"{trl_run['seconds']:.3f} s | patched {ours['extra_bytes'] / 2**20:7.1f} MiB "
              f"{ours['seconds']:.3f} s", flush=True)
    load1 = harness.load()
    mem = [o["extra_bytes"] / t["extra_bytes"] for t, o in rows]
    tim = [o["seconds"] / t["seconds"] for t, o in rows]
    out = {
        "device": a.device, "pairs": a.pairs, "tokens": B * COMPLETION, "vocab": V,
        "trl_extra_mib": round(statistics.median(t["extra_bytes"] for t, _ in rows) / 2**20, 1),
        "patched_extra_mib": round(statistics.median(o["extra_bytes"] for _, o in rows)
                                   / 2**20, 1),
        "memory_ratio": round(statistics.median(mem), 3),
        "memory_ratio_min": round(min(mem), 3), "memory_ratio_max": round(max(mem), 3),
        "trl_s": round(statistics.median(t["seconds"] for t, _ in rows), 4),
        "patched_s": round(statistics.median(o["seconds"] for _, o in rows), 4),
        "time_ratio": round(statistics.median(tim), 3),
        "time_ratio_min": round(min(tim), 3), "time_ratio_max": round(max(tim), 3),
        "load_before": load0, "load_after": load1, **harness.stamp(),
    }
    for k, v in out.items():
        print(f"{k}: {v}")
    if a.csv:
        harness.write_csv([out], a.csv)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
