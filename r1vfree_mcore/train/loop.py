"""The GRPO training loop of one policy rank. Reads top to bottom, one step at a time:

data -> rollout -> rewards (submitted, scored elsewhere) -> reference/old log-probs (overlapping
the scoring) -> group advantages -> ``num_iterations`` x mini-batch updates -> metrics ->
checkpoint (periodic, or on SIGTERM/SIGUSR1/``RUN_DIR/PREEMPT``).
"""

from __future__ import annotations

import logging
import math
import signal
import time
from pathlib import Path

import torch
import torch.distributed as dist

from r1vfree_mcore.checkpoint.manager import CheckpointManager, find_latest
from r1vfree_mcore.grpo.advantages import group_advantages
from r1vfree_mcore.parallel import cpu_compat
from r1vfree_mcore.parallel.schedule import broadcast_from_last_stage
from r1vfree_mcore.parallel.state import collective_device
from r1vfree_mcore.rewards import RewardRequest
from r1vfree_mcore.rollout.generator import MegatronGenerator, SamplingParams, decode_completions, model_forward
from r1vfree_mcore.rollout.prompts import build_prompt_batch
from r1vfree_mcore.train.metrics import MetricsLogger
from r1vfree_mcore.train.optimizer import current_lr
from r1vfree_mcore.train.packed_pass import packed_forward
from r1vfree_mcore.train.setup import Components
from r1vfree_mcore.train.step import LossSettings, PassConfig, logprob_pass, train_minibatch

log = logging.getLogger(__name__)
PREEMPT_FILE = "PREEMPT"


class _StopFlag:
    """Set by SIGTERM/SIGUSR1; checked between steps so a checkpoint is always complete."""

    def __init__(self):
        self.set = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handler)

    def _handler(self, signum, frame):
        self.set = True


def _mp_broadcast(obj, src: int):
    """Broadcast an object inside this DP replica's model-parallel group (TP x PP)."""
    from megatron.core import parallel_state as ps

    group = ps.get_model_parallel_group()
    if dist.get_world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def _dp_mean(metrics: dict[str, float]) -> dict[str, float]:
    """Average metrics over data-parallel replicas (maxima for ``*_max`` keys)."""
    from megatron.core import parallel_state as ps

    group = ps.get_data_parallel_group()
    n = dist.get_world_size(group)
    if n == 1:
        return metrics
    keys = sorted(metrics)
    dev = collective_device()
    vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=dev)
    is_max = torch.tensor([k.endswith("_max") for k in keys], device=dev)
    summed, maxed = vals.clone(), vals.clone()
    dist.all_reduce(summed, group=group)
    dist.all_reduce(maxed, op=dist.ReduceOp.MAX, group=group)
    out = torch.where(is_max, maxed, summed / n)
    return dict(zip(keys, out.tolist()))


def _masked_advantages(total: torch.Tensor, valid: torch.Tensor, g: int, eps: float, normalize_std: bool):
    """Group advantages where failed reward samples are left out of their group's statistics."""
    if bool(valid.all()):
        return group_advantages(total, g, eps=eps, normalize_std=normalize_std)
    adv = torch.zeros_like(total)
    for s in range(0, len(total), g):
        ok = valid[s : s + g]
        if int(ok.sum()) >= 2:
            adv[s : s + g][ok] = group_advantages(total[s : s + g][ok], int(ok.sum()), eps=eps,
                                                  normalize_std=normalize_std)
    return adv


class Trainer:
    """Owns the step counter and the per-step phases; built from :class:`Components`."""

    def __init__(self, c: Components, run_dir: str | Path, config_yaml: str):
        self.c, self.cfg = c, c.cfg
        self.run_dir = Path(run_dir)
        self.config_yaml = config_yaml
        self.step = 0
        self.stop = _StopFlag()
        if not torch.cuda.is_available():
            cpu_compat.keep_freed_memory()  # no page-fault storm between the phases of a step
        tc = getattr(c.hf_config, "text_config", c.hf_config)
        self.real_vocab = tc.vocab_size
        self.tokenizer = c.processor.tokenizer
        self.generator = MegatronGenerator(c.model, self.real_vocab)
        eos = {self.tokenizer.eos_token_id}
        gen_eos = getattr(c.extras.get("generation_config"), "eos_token_id", None)
        eos |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else [])
        r = self.cfg.rollout
        hc = c.hf_config
        vision_ids = tuple(getattr(hc, k) for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                                    "vision_end_token_id") if getattr(hc, k, None) is not None)
        self.sampling = SamplingParams(r.max_completion_length, tuple(sorted(eos)), self.tokenizer.pad_token_id,
                                       r.temperature, r.top_p, r.top_k, suppress_token_ids=vision_ids)
        n_seq = r.prompts_per_step * r.num_generations
        micro = self.cfg.grpo.micro_batch_size or r.num_generations
        self.precision = c.precision
        pack = self.cfg.grpo.pack_sequences
        forward = packed_forward if pack else model_forward
        forward = self.precision.wrap_forward(forward)
        self.passes = PassConfig(r.temperature, self.real_vocab, micro, forward_fn=forward,
                                 pack_with=c.hf_config if pack else None)
        self.hf_export_failures = 0
        self.loss_cfg = LossSettings(self.cfg.grpo.beta, self.cfg.grpo.clip_eps_low, self.cfg.grpo.clip_eps_high,
                                     self.cfg.grpo.aggregation)
        self.mini = self.cfg.grpo.mini_batch_size or n_seq
        self.needs_old = self.cfg.grpo.num_iterations > 1 or self.mini < n_seq
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", self.cfg.checkpoint.keep_last,
                                      self.cfg.checkpoint.optim_sharding)
        lg = self.cfg.logging
        self.metrics = MetricsLogger(self.run_dir, lg.report_to, self.cfg.to_dict(), lg.wandb_project,
                                     enabled=c.groups.is_logging_rank, rollout_log=lg.rollout_log)

    # -- resume / save --------------------------------------------------------------------
    def resume(self, mode: str) -> None:
        if mode == "none":
            return
        path = find_latest(self.run_dir / "checkpoints") if mode == "auto" else Path(mode)
        if path is None:
            return
        state = self.ckpt.load(path, self.c.model, self.c.optimizer, self.c.scheduler,
                               sampler_loader=self.c.sampler.load_state_dict)
        self.step = state["step"]
        if self.c.groups.is_logging_rank:
            print(f"r1vfree: resumed from step={self.step} ({path})", flush=True)

    def save(self) -> Path:
        return self.ckpt.save(self.step, self.c.model, self.c.optimizer, self.c.scheduler,
                              sampler_state=self.c.sampler.state_dict(),
                              extra={"data": vars(self.c.dataset.stats) | {"skipped_indices": []}},
                              config_yaml=self.config_yaml)

    def export_hf(self, ckpt: Path) -> Path | None:
        """Write ``RUN_DIR/hf/step_NNNNNN`` from checkpoint ``ckpt`` (rank 0; the others go on
        and meet it at the next collective). A failed export is logged and counted
        (``checkpoint/hf_export_failures``), never fatal: the Megatron checkpoint is already safe
        and ``r1vfree-convert mcore-to-hf`` can redo it."""
        if not self.c.groups.is_logging_rank:
            return None
        from r1vfree_mcore.conversion import export_hf

        out = self.run_dir / "hf" / ckpt.name
        try:
            export_hf(ckpt, out, force=True, progress=False)
        except Exception:
            self.hf_export_failures += 1
            log.exception("HF export of %s to %s failed", ckpt, out)
            print(f"r1vfree: HF export of {ckpt.name} FAILED (see log); training goes on", flush=True)
            return None
        print(f"r1vfree: exported HF checkpoint {out}", flush=True)
        return out

    def _wants_hf_export(self, max_steps: int) -> bool:
        cc = self.cfg.checkpoint
        return bool((cc.hf_export_every and self.step % cc.hf_export_every == 0)
                    or (cc.hf_export_at_end and self.step == max_steps))

    def _should_stop(self) -> bool:
        flag = torch.tensor([1.0 if (self.stop.set or (self.run_dir / PREEMPT_FILE).exists()) else 0.0],
                            device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    # -- one step -------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        c, cfg, g = self.c, self.cfg, self.c.groups
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        samples = c.sampler.next_valid(cfg.rollout.prompts_per_step, c.dataset.get)
        prompts = build_prompt_batch(samples, c.processor, cfg.rollout.num_generations)
        seed = cfg.train.seed * 1_000_003 + self.step * 1009 + g.dp_rank
        with self.precision.forward_context():
            rollout = self.generator.generate(prompts, self.sampling, seed)
        texts = decode_completions(self.tokenizer, rollout)
        times["time/rollout"] = time.perf_counter() - t0

        handle = None
        if g.is_leader:  # one submission per DP replica; scoring overlaps the passes below
            n_g = cfg.rollout.num_generations
            reqs = [RewardRequest(f"{self.step}:{g.dp_rank}:{i}", prompts.problems[i // n_g], t,
                                  prompts.images_png[i // n_g]) for i, t in enumerate(texts)]
            handle = c.scorer.submit(reqs)

        t1 = time.perf_counter()
        ref_lp = logprob_pass(c.ref_model, rollout, self.passes) if c.ref_model is not None else None
        old_lp = logprob_pass(c.model, rollout, self.passes) if self.needs_old else None
        times["time/logprobs"] = time.perf_counter() - t1

        t2 = time.perf_counter()
        result = handle.result(timeout=cfg.reward.result_timeout_s) if handle is not None else None
        times["time/reward_wait"] = time.perf_counter() - t2
        payload = None if result is None else (result.total, result.valid, result.metrics(), result.scores)
        total, valid, reward_metrics, scores = _mp_broadcast(payload, g.leader)
        total, valid = torch.tensor(total, dtype=torch.float32), torch.tensor(valid, dtype=torch.bool)
        adv = _masked_advantages(total, valid, cfg.rollout.num_generations, cfg.grpo.adv_eps, cfg.grpo.normalize_std)
        rollout.completion_mask = rollout.completion_mask * valid[:, None].to(rollout.completion_mask.dtype)

        t3 = time.perf_counter()
        loss_metrics, grad_norms = self._update(rollout, adv, old_lp, ref_lp)
        times["time/train"] = time.perf_counter() - t3

        lengths = rollout.completion_mask.sum(1).float()
        n_tokens = float(lengths.sum() + rollout.prompts.attention_mask.sum())
        step_time = time.perf_counter() - t0
        out = {
            "reward": float(total[valid].mean()) if bool(valid.any()) else math.nan,
            "reward_std": float(total.view(-1, cfg.rollout.num_generations).std(1).mean()),
            "completion_length": float(lengths.mean()),
            "completion_length_max": float(lengths.max()),
            "grad_norm": sum(grad_norms) / max(1, len(grad_norms)),
            "lr": current_lr(c.optimizer),
            "tokens_per_s": n_tokens / step_time,
            "data/images_skipped": float(c.dataset.stats.images_skipped),
            "data/images_converted": float(c.dataset.stats.images_converted),
            **{k: v for k, v in reward_metrics.items()},
            **loss_metrics,
            **times,
        }
        if g.is_logging_rank and cfg.logging.rollout_log:
            self.metrics.log_rollouts(self.step, [
                {"prompt": prompts.problems[i // cfg.rollout.num_generations], "completion": t,
                 "reward": float(total[i]), "valid": bool(valid[i]),
                 **{f"rewards/{k}": v[i] for k, v in scores.items()}}
                for i, t in enumerate(texts)])
        return out

    def _update(self, rollout, adv, old_lp, ref_lp):
        c, cfg = self.c, self.cfg
        n = rollout.completion_ids.shape[0]
        per_mb: list[dict] = []
        grad_norms: list[float] = []
        for _ in range(cfg.grpo.num_iterations):
            for s in range(0, n, self.mini):
                rows = list(range(s, min(n, s + self.mini)))
                c.model.zero_grad_buffer()
                c.optimizer.zero_grad()
                norm = self._normalizer(rollout, rows)
                per_mb += train_minibatch(c.model, rollout, rows, adv, old_lp, ref_lp, self.passes,
                                          self.loss_cfg, norm)
                ok, grad_norm, _ = c.optimizer.step()
                grad_norms.append(float(grad_norm) if grad_norm is not None else math.nan)
        c.scheduler.step(increment=1)
        merged = broadcast_from_last_stage(_mean_dicts(per_mb))
        if "loss" in merged:  # per-mini-batch loss, averaged over the updates of this step
            merged["loss"] /= max(1, len(grad_norms))
        return merged, grad_norms

    def _normalizer(self, rollout, rows) -> float:
        """The mini-batch count the aggregation divides by (per DP rank; DDP averages over DP)."""
        agg = self.cfg.grpo.aggregation
        if agg == "token-mean":
            return float(rollout.completion_mask[rows].sum().clamp(min=1))
        if agg == "seq-mean-token-sum-norm":
            return float(len(rows) * rollout.completion_ids.shape[1])
        return float(len(rows))

    # -- the loop -------------------------------------------------------------------------
    def fit(self, max_steps: int) -> str:
        """Train until ``max_steps``; returns "done" or "preempted"."""
        from tqdm import tqdm

        c = self.c
        bar = tqdm(total=max_steps, initial=self.step, desc="grpo", disable=not c.groups.is_logging_rank,
                   dynamic_ncols=True)
        status = "done"
        try:
            while self.step < max_steps:
                self.step += 1
                m = _dp_mean(self.train_step())
                t = time.perf_counter()
                every = self.cfg.checkpoint.every_steps
                stop = self._should_stop()
                export = self._wants_hf_export(max_steps)
                if stop or export or (every and self.step % every == 0) or self.step == max_steps:
                    path = self.save()
                    if export:
                        self.export_hf(path)
                m["time/checkpoint"] = time.perf_counter() - t
                m["checkpoint/hf_export_failures"] = float(self.hf_export_failures)
                self.metrics.log(self.step, m)
                if c.groups.is_logging_rank:
                    bar.update(1)
                    bar.set_postfix(reward=f"{m['reward']:.3f}", len=f"{m['completion_length']:.0f}")
                    print(f"r1vfree: step={self.step} reward={m['reward']:.4f} "
                          f"kl={m.get('kl', float('nan')):.4f} loss={m.get('loss', float('nan')):.5f}", flush=True)
                if stop:
                    if c.groups.is_logging_rank:
                        (self.run_dir / PREEMPT_FILE).unlink(missing_ok=True)
                        print(f"r1vfree: preempted at step={self.step}, checkpoint saved", flush=True)
                    status = "preempted"
                    break
        finally:
            bar.close()
            self.metrics.close()
        return status


def _mean_dicts(rows: list[dict]) -> dict[str, float]:
    if not rows:
        return {}
    keys = rows[0].keys()
    out = {k: sum(r[k] for r in rows) / len(rows) for k in keys if k not in ("loss",)}
    out["loss"] = sum(r["loss"] for r in rows)  # micro-batch losses add up to the batch loss
    for k in [k for k in keys if k.endswith("_max")]:
        out[k] = max(r[k] for r in rows)
    return out
