"""The policy passes of one GRPO step: log-prob passes and the clipped-objective update.

Everything here runs on the policy ranks through :func:`run_microbatches`, so TP/PP are handled
by megatron-core. Log-probs are computed on the last pipeline stage from the vocab-parallel
logits (never gathered over the vocabulary) and stay there: the loss is computed there too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from r1vfree_mcore.grpo.logprobs import vocab_parallel_logprobs
from r1vfree_mcore.grpo.loss import grpo_loss
from r1vfree_mcore.parallel.schedule import run_microbatches
from r1vfree_mcore.rollout.generator import Rollout, model_forward
from r1vfree_mcore.train.packed_pass import completion_logits, pack_microbatch


@dataclass
class PassConfig:
    """What every pass needs to turn logits into completion log-probs."""

    temperature: float
    real_vocab_size: int
    micro_batch_size: int
    # The policy forward on one micro-batch (model_forward, or packed_forward when packing);
    # PrecisionPlan.wrap_forward adds autocast.
    forward_fn: Callable = model_forward
    # The HF config to pack micro-batches with (THD, train/packed_pass.py); None = padded.
    pack_with: Any = None


def microbatches(rollout: Rollout, rows: list[int], micro: int, extra: dict | None = None,
                 pack_with=None) -> list[dict]:
    """Slice sequences ``rows`` of a rollout into micro-batch dicts (one image per sequence),
    each packed into one THD row when ``pack_with`` (the HF config) is given."""
    ids, mask = rollout.full_input_ids(), rollout.full_attention_mask()
    thw = rollout.prompts.image_grid_thw
    offsets = torch.cat([thw.new_zeros(1), thw.prod(-1).cumsum(0)])
    out = []
    for s in range(0, len(rows), micro):
        r = rows[s : s + micro]
        pv = torch.cat([rollout.prompts.pixel_values[offsets[i] : offsets[i + 1]] for i in r])
        mb = {
            "rows": r,
            "input_ids": ids[r],
            "attention_mask": mask[r],
            "pixel_values": pv,
            "image_grid_thw": thw[r],
            "completion_ids": rollout.completion_ids[r],
            "completion_mask": rollout.completion_mask[r],
            "prompt_len": rollout.prompts.input_ids.shape[1],
        }
        for k, v in (extra or {}).items():
            mb[k] = None if v is None else v[r]
        out.append(pack_microbatch(mb, pack_with) if pack_with is not None else mb)
    return out


def completion_logprobs(logits: torch.Tensor, mb: dict, cfg: PassConfig, entropy: bool = False):
    """Log-probs (and entropy) of the completion tokens from vocab-parallel logits [b, s, V/TP]."""
    return vocab_parallel_logprobs(
        completion_logits(logits, mb),
        mb["completion_ids"],
        temperature=cfg.temperature,
        real_vocab_size=cfg.real_vocab_size,
        compute_entropy=entropy,
    )


def logprob_pass(model, rollout: Rollout, cfg: PassConfig) -> torch.Tensor | None:
    """Forward-only log-probs of every completion token, [N, C] on the last stage (else None)."""
    rows = list(range(rollout.completion_ids.shape[0]))
    mbs = microbatches(rollout, rows, cfg.micro_batch_size, pack_with=cfg.pack_with)

    def collect(mb, logits):
        lp, _ = completion_logprobs(logits, mb, cfg)
        return logits.new_zeros(()), {"rows": mb["rows"], "logprobs": lp.detach().float()}

    was_training = model.training
    model.eval()
    out = run_microbatches(model, mbs, cfg.forward_fn, collect, forward_only=True)
    model.train(was_training)
    if not out:
        return None
    full = torch.zeros(rollout.completion_ids.shape, dtype=torch.float32)
    for o in out:
        full[o["rows"]] = o["logprobs"].cpu()  # rollouts live in host memory
    return full


@dataclass
class LossSettings:
    beta: float
    clip_eps_low: float
    clip_eps_high: float
    aggregation: str


def train_minibatch(model, rollout: Rollout, rows: list[int], advantages: torch.Tensor,
                    old_logprobs: torch.Tensor | None, ref_logprobs: torch.Tensor | None,
                    cfg: PassConfig, loss_cfg: LossSettings, normalizer: float) -> list[dict]:
    """Forward+backward of the GRPO loss over ``rows`` (grads accumulate in the DDP buffers).

    ``normalizer`` is the mini-batch's global count for the aggregation (sequences or tokens per
    DP rank), so the sum of micro-batch losses is the mini-batch loss. Returns per-micro-batch
    metrics from the last stage.
    """
    extra = {"adv": advantages, "old": old_logprobs, "ref": ref_logprobs}
    mbs = microbatches(rollout, rows, cfg.micro_batch_size, extra, pack_with=cfg.pack_with)

    def loss_fn(mb, logits):
        lp, ent = completion_logprobs(logits, mb, cfg, entropy=True)
        old = mb["old"] if mb["old"] is not None else lp.detach()
        loss, metrics = grpo_loss(
            lp, old, mb["ref"] if loss_cfg.beta > 0 else None, mb["adv"], mb["completion_mask"],
            clip_eps_low=loss_cfg.clip_eps_low, clip_eps_high=loss_cfg.clip_eps_high,
            beta=loss_cfg.beta, aggregation=loss_cfg.aggregation, entropy=ent,
            global_normalizer=normalizer,
        )
        return loss, {k: float(v) for k, v in metrics.items()} | {"loss": float(loss.detach())}

    return run_microbatches(model, mbs, cfg.forward_fn, loss_fn, forward_only=False)
