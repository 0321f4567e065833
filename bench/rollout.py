"""Rollout generation: megatron KV cache vs recomputing the prefix every step, on the CPU.

A tiny Qwen2-VL checkpoint (r1vfree_mcore.testing.tiny), 2 prompts with images of different
sizes (left-padded) x G=3, ``--new-tokens`` (64) tokens per sequence with EOS suppressed so both
generators decode every step, TP=1/PP=1 in this process. Both generators use the same seed and
must sample the same tokens (checked). Time is wall-clock and process CPU time (less sensitive to
other jobs on a shared machine). The last line printed is one JSON object.

    python bench/rollout.py                 # 64 new tokens
    python bench/rollout.py --new-tokens 16 # quicker
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

# The prompt batch / checkpoint helpers are the rollout tests' (one definition of the inputs).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "rollout"))

from _rollout_harness import init_single_process, load_policy, make_checkpoint, prompt_batch, sampling  # noqa: E402


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--family", default="qwen2_vl", choices=("qwen2_vl", "qwen2_5_vl"))
    args = ap.parse_args(argv)

    from r1vfree_mcore.rollout.generator import MegatronGenerator

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), args.family)
        init_single_process()
        batch, proc = prompt_batch(ckpt)
        model, hf_config = load_policy(ckpt)
        vocab = hf_config.text_config.vocab_size
        params = sampling(proc, args.new_tokens, suppress_token_ids=(proc.tokenizer.eos_token_id,
                                                                     hf_config.image_token_id))
        results = {}
        for name, use_cache in (("kv_cache", True), ("recompute", False)):
            gen = MegatronGenerator(model, vocab, use_kv_cache=use_cache)
            gen.generate(batch, sampling(proc, 2), seed=0)  # warm-up (allocations, first-call costs)
            rollout, wall, cpu = _timed(lambda: gen.generate(batch, params, seed=7))
            results[name] = {"rollout": rollout, "wall_s": wall, "cpu_s": cpu}
            print(f"{name:10s} {wall:7.2f} s wall {cpu:7.2f} s cpu "
                  f"({batch.num_sequences} seqs x {rollout.completion_ids.shape[1]} tokens)")
    a, b = results["kv_cache"]["rollout"], results["recompute"]["rollout"]
    if not torch.equal(a.completion_ids, b.completion_ids):
        raise SystemExit("kv_cache and recompute sampled different tokens")
    report = {
        "bench": "rollout",
        "family": args.family,
        "sequences": batch.num_sequences,
        "prompt_len": batch.input_ids.shape[1],
        "new_tokens": args.new_tokens,
        "kv_cache_s": round(results["kv_cache"]["wall_s"], 3),
        "recompute_s": round(results["recompute"]["wall_s"], 3),
        "speedup_kv_vs_recompute": round(results["recompute"]["wall_s"] / results["kv_cache"]["wall_s"], 2),
        "speedup_cpu_time": round(results["recompute"]["cpu_s"] / results["kv_cache"]["cpu_s"], 2),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
