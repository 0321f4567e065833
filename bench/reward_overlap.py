"""Policy-side time spent waiting for rewards, with and without overlap (1 policy + 1 reward rank).

Each step the policy rank submits a batch of completions (with images) to the reward rank, which
scores them with a tiny ``vlm_scalar`` model + the format reward. The policy then runs its
"ref / old log-prob passes": forward passes of a tiny Qwen2-VL policy over the batch.

- sync:    submit -> result() -> log-prob passes (the wait is the whole scoring time)
- overlap: submit -> log-prob passes -> result() (the wait is what scoring has left)

Run: ``python bench/reward_overlap.py`` (launches both processes itself; also runs under
``torchrun --nproc-per-node 2`` with R1V_REWARD_RANKS=1). The last line is JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time


def _requests(step: int, n: int, side: int):
    from PIL import Image

    from r1vfree_mcore.rewards.request import RewardRequest

    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (side, side - 28 * (i % 3)), (30 * i % 255, 100, 50 + step)).save(buf, "PNG")
        answer = "yes" if i % 2 else "The picture shows a red circle and a blue square"
        out.append(RewardRequest(f"{step}.{i}", f"What is shown in the image? ({i})",
                                 f"<think>I look at the shapes {i}</think><answer>{answer}</answer>", buf.getvalue()))
    return out


def _policy_inputs(n: int, tokens: int):
    """Fixed random token ids: the stand-in for a rollout batch (text-only policy passes)."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(20, 400, (n, tokens), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _rank(rank: int, world: int, args: dict):
    import torch
    import torch.distributed as dist

    from r1vfree_mcore.rewards.config import RewardConfig
    from r1vfree_mcore.rewards.server import serve_rewards
    from r1vfree_mcore.rewards.topology import RewardTopology, init_policy_world

    torch.set_num_threads(1)  # one core each: the reward rank owns the other one
    cfg = RewardConfig.from_dict(args["rewards"])
    topo = RewardTopology.from_env(cfg.num_reward_ranks)
    if topo.is_reward_rank:
        serve_rewards(cfg, topo)
        return None
    from transformers import AutoModelForImageTextToText

    from r1vfree_mcore.rewards.client import RewardClient

    init_policy_world(topo)
    policy = AutoModelForImageTextToText.from_pretrained(args["policy_dir"]).eval()
    inputs = _policy_inputs(args["batch"], args["tokens"])

    def logprob_passes() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(args["passes"]):  # ref + old policy log-probs
                logits = policy(**inputs).logits
                torch.log_softmax(logits.float(), -1).gather(-1, inputs["input_ids"][..., None])
        return time.perf_counter() - t0

    client = RewardClient(cfg, topo)
    samples = {m: {k: [] for k in ("step_s", "wait_s", "reward_compute_s", "logprob_s")} for m in ("sync", "overlap")}
    for step in range(args["warmup"] + args["steps"]):
        for mode in ("sync", "overlap"):  # interleaved, so machine load hits both modes alike
            reqs = _requests(step, args["batch"], args["image_side"])
            t0 = time.perf_counter()
            handle = client.submit(reqs)
            if mode == "sync":
                res = handle.result(600)
                work = logprob_passes()
            else:
                work = logprob_passes()
                res = handle.result(600)
            if step >= args["warmup"]:
                row = samples[mode]
                row["step_s"].append(time.perf_counter() - t0)
                row["wait_s"].append(res.timings["time/reward_wait"])
                row["reward_compute_s"].append(res.timings["time/reward_compute"])
                row["logprob_s"].append(work)
    rows = {m: {k: statistics.median(v) for k, v in r.items()} for m, r in samples.items()}
    client.close()
    dist.barrier()
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16, help="completions per step")
    p.add_argument("--steps", type=int, default=6, help="measured steps per mode (medians reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--passes", type=int, default=2, help="policy forward passes per step (ref + old)")
    p.add_argument("--tokens", type=int, default=256, help="sequence length of the policy passes")
    p.add_argument("--image-side", type=int, default=224, help="image size (pixels) sent to the reward model")
    p.add_argument("--reward-layers", type=int, default=4, help="decoder layers of the tiny reward model")
    a = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from r1vfree_mcore.rewards.vlm_scalar import save_value_head
    from r1vfree_mcore.testing.distributed import run_distributed
    from r1vfree_mcore.testing.tiny import write_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        rm = write_tiny_checkpoint(f"{tmp}/reward", family="qwen2_vl", num_layers=a.reward_layers)
        save_value_head(rm, seed=1)
        policy = write_tiny_checkpoint(f"{tmp}/policy", family="qwen2_vl", seed=2)
        args = {"batch": a.batch, "steps": a.steps, "warmup": a.warmup, "passes": a.passes, "tokens": a.tokens,
                "image_side": a.image_side,
                "policy_dir": str(policy),
                "rewards": {"backends": [{"name": "vlm_scalar", "path": str(rm)}, {"name": "format"}],
                            "num_reward_ranks": 1, "batch_size": a.batch}}
        rows = run_distributed(_rank, 2, args, init_process_group=False, timeout=1800)[0]
    print(f"{'mode':8} {'step_s':>8} {'wait_s':>8} {'reward_compute_s':>17} {'logprob_s':>10}")
    for mode, r in rows.items():
        print(f"{mode:8} {r['step_s']:8.3f} {r['wait_s']:8.3f} {r['reward_compute_s']:17.3f} {r['logprob_s']:10.3f}")
    print(json.dumps({"bench": "reward_overlap", "wait_s_sync": round(rows["sync"]["wait_s"], 4),
                      "wait_s_overlap": round(rows["overlap"]["wait_s"], 4),
                      "step_s_sync": round(rows["sync"]["step_s"], 4),
                      "step_s_overlap": round(rows["overlap"]["step_s"], 4)}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
