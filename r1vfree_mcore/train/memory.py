"""``r1vfree-train --dry-run``: estimated GPU memory per policy rank for a recipe's layout.

Counts parameters from the HF config (``model.hf_dir/config.json``, or the published shapes of
the Qwen-VL checkpoints the recipes name when the directory is not on this machine) and applies
the usual mixed-precision accounting: bf16 weights (2 B), fp32 gradient buffers (4 B), fp32
master weights + Adam moments (12 B, sharded over DP by the distributed optimizer), a frozen bf16
reference copy when ``grpo.beta > 0``, and activations with flash attention (Korthikanti et al.:
about 34 x s x b x h bytes per layer per micro-batch, divided by TP) for the micro-batches a 1F1B
pipeline keeps in flight. An estimate, not a measurement: allocator fragmentation and the CUDA
context (~2-4 GB) come on top, which is why the verdict keeps a 10% margin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3

# Published shapes (config.json of the HF checkpoints), for recipes whose weights are elsewhere.
PRESETS = {
    "Qwen2-VL-2B-Instruct": dict(hidden=1536, layers=28, heads=12, kv=2, ffn=8960, vocab=151936, tied=True,
                                 v_depth=32, v_hidden=1280, v_ffn=5120, v_gated=False),
    "Qwen2.5-VL-3B-Instruct": dict(hidden=2048, layers=36, heads=16, kv=2, ffn=11008, vocab=151936, tied=True,
                                   v_depth=32, v_hidden=1280, v_ffn=3420, v_gated=True),
    "Qwen2.5-VL-7B-Instruct": dict(hidden=3584, layers=28, heads=28, kv=4, ffn=18944, vocab=152064, tied=False,
                                   v_depth=32, v_hidden=1280, v_ffn=3420, v_gated=True),
}


@dataclass
class Shapes:
    hidden: int
    layers: int
    heads: int
    kv: int
    ffn: int
    vocab: int
    tied: bool
    v_depth: int
    v_hidden: int
    v_ffn: int
    v_gated: bool


def shapes_for(hf_dir: str) -> Shapes:
    """Shapes from ``hf_dir/config.json`` when present, else from :data:`PRESETS` by dir name."""
    cfg_file = Path(hf_dir) / "config.json"
    if cfg_file.is_file():
        c = json.loads(cfg_file.read_text())
        t, v = c.get("text_config", c), c["vision_config"]
        gated = "intermediate_size" in v
        return Shapes(t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"], t["num_key_value_heads"],
                      t["intermediate_size"], t["vocab_size"], bool(c.get("tie_word_embeddings", False)),
                      v["depth"], v.get("hidden_size" if gated else "embed_dim"),
                      v["intermediate_size"] if gated else v["embed_dim"] * v["mlp_ratio"], gated)
    name = Path(hf_dir).name
    if name not in PRESETS:
        raise FileNotFoundError(f"model.hf_dir: {cfg_file} not found and {name!r} is not one of {sorted(PRESETS)}")
    return Shapes(**PRESETS[name])


def layer_params(s: Shapes) -> int:
    hd = s.hidden // s.heads
    attn = s.hidden * (s.heads + 2 * s.kv) * hd + (s.heads + 2 * s.kv) * hd + s.heads * hd * s.hidden
    return attn + 3 * s.hidden * s.ffn + 2 * s.hidden


def vision_params(s: Shapes) -> int:
    h = s.v_hidden
    block = 4 * h * h + 4 * h + (3 if s.v_gated else 2) * h * s.v_ffn + 2 * h
    merged = 4 * h
    return s.v_depth * block + 3 * 14 * 14 * 2 * h + merged * merged + merged * s.hidden


def estimate(cfg, world: int) -> list[dict]:
    """Per pipeline stage: GiB of weights, grads, optimizer, reference, activations, total."""
    s = shapes_for(cfg.model.hf_dir)
    tp, pp = cfg.parallel.tp, cfg.parallel.pp
    dp = cfg.check_world(world)
    split = cfg.parallel.pp_layer_split or [s.layers // pp + (1 if i < s.layers % pp else 0) for i in range(pp)]
    r = cfg.rollout
    seq = cfg.data.max_prompt_length + r.max_completion_length
    micro = cfg.grpo.micro_batch_size or r.num_generations
    n_micro = max(1, (cfg.grpo.mini_batch_size or r.prompts_per_step * r.num_generations) // micro)
    bytes_w = 2 if cfg.model.dtype == "bf16" else 4
    rows = []
    for stage, n_layers in enumerate(split):
        p = n_layers * layer_params(s)
        if stage == 0:
            p += vision_params(s) + s.vocab * s.hidden
        if stage == pp - 1 and not (s.tied and pp == 1):
            p += s.vocab * s.hidden
        p //= tp
        trainable = p - (vision_params(s) // tp if (stage == 0 and cfg.model.freeze_vision) else 0)
        in_flight = min(n_micro, pp - stage)
        act = 34.0 * seq * micro * s.hidden * n_layers / tp * in_flight
        if stage == pp - 1:  # one fp32 logits chunk of the fused log-prob (1024 tokens)
            act += 1024 * s.vocab / tp * 4 * 3
        opt_div = dp if cfg.optim and dp > 1 else 1
        row = {
            "stage": stage,
            "params_M": p / 1e6,
            "weights": p * bytes_w / GIB,
            "grads": trainable * 4 / GIB,
            "optimizer": trainable * 12 / opt_div / GIB,
            "reference": p * bytes_w / GIB if cfg.grpo.beta > 0 else 0.0,
            "activations": act / GIB,  # the formula already counts bytes (bf16)
        }
        row["total"] = sum(row[k] for k in ("weights", "grads", "optimizer", "reference", "activations"))
        rows.append(row)
    return rows


def print_estimate(cfg, world: int, gpu_gib: float = 80.0) -> float:
    """Print the table; returns the largest per-rank total in GiB."""
    rows = estimate(cfg, world)
    dp = cfg.check_world(world)
    print(f"r1vfree dry-run: {cfg.model.hf_dir}  world={world} = policy {world - cfg.reward.num_ranks} "
          f"(tp={cfg.parallel.tp} pp={cfg.parallel.pp} dp={dp}) + reward {cfg.reward.num_ranks}")
    cols = ("stage", "params_M", "weights", "grads", "optimizer", "reference", "activations", "total")
    print(" | ".join(f"{c:>11}" for c in cols) + "   (GiB per rank)")
    for r in rows:
        print(" | ".join(f"{r[c]:>11.2f}" if c != "stage" else f"{r[c]:>11d}" for c in cols))
    peak = max(r["total"] for r in rows)
    verdict = "fits" if peak <= 0.9 * gpu_gib else "does NOT fit"
    print(f"peak {peak:.1f} GiB per policy rank: {verdict} in {gpu_gib:.0f} GB (10% margin kept)")
    return peak
