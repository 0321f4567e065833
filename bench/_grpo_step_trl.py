"""TRL side of bench/grpo_step.py: N GRPO steps of trl's GRPOTrainer on CPU, fp32.

Run by bench/grpo_step.py with a Python that has trl (a separate virtualenv; see grpo_step.py).
Writes ``{"step_s": [...], "cpu_s": [...], "completion_length": [...], ...}`` to ``--out``.
Step time = callback ``on_step_begin`` -> ``on_step_end``: generation, rewards, reference
log-probs, loss, backward and the optimizer step (the dataloader's fetch and the logging that
follow/precede it are outside, as our trainer's data fetch is inside and its logging outside).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ (shared rewards)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--generations", type=int, required=True)
    p.add_argument("--prompts", type=int, required=True)
    p.add_argument("--completion-length", type=int, required=True)
    p.add_argument("--steps", type=int, required=True, help="total steps, warm-up included")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)

    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from _grpo_step_rewards import trl_diversity_reward, trl_format_reward
    from r1vfree_mcore.data.dataset import build_messages

    ds = datasets.load_from_disk(a.data)
    ds = ds.map(lambda r: {"prompt": build_messages(r["problem"])}, remove_columns=["solution", "image_path"])

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.cpu: list[float] = []
            self.maxrss: list[float] = []  # this process's peak RSS so far, MiB, at each step end
            self._t0 = self._c0 = 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self._t0)
            self.cpu.append(time.process_time() - self._c0)  # process CPU s, all threads
            self.maxrss.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)

    n = a.prompts * a.generations
    cfg = GRPOConfig(
        output_dir=a.run_dir,
        num_generations=a.generations,
        per_device_train_batch_size=n,  # prompts x G sequences per step, one optimizer step each
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        max_completion_length=a.completion_length,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=a.beta,
        num_iterations=1,
        epsilon=0.2,
        loss_type="grpo",  # per-sequence token mean, then mean over sequences (ours: seq-mean-token-mean)
        scale_rewards="group",
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=1.0,
        weight_decay=0.0,
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,  # ours does not recompute activations either
        model_init_kwargs={"dtype": torch.float32},
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        max_steps=a.steps,
        seed=a.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    timer = StepTimer()
    trainer = GRPOTrainer(model=a.model, reward_funcs=[trl_format_reward, trl_diversity_reward], args=cfg,
                          train_dataset=ds, callbacks=[timer])
    trainer.train()
    hist = [h for h in trainer.state.log_history if "reward" in h]
    out = {
        "step_s": timer.times,
        "cpu_s": timer.cpu,
        "maxrss_mib": timer.maxrss,
        "completion_length": [h.get("completions/mean_length", float("nan")) for h in hist],
        "reward": [h.get("reward", float("nan")) for h in hist],
        "torch_threads": torch.get_num_threads(),
    }
    Path(a.out).write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
