"""How a generator gets next-token logits: recompute the prefix, or a megatron KV cache.

Both steppers run the policy through :func:`run_microbatches` (forward only), so PP is handled by
megatron's schedule, and return the last position's real-vocab logits ``[N, vocab]`` (fp32,
gathered over TP, on the CPU) on the last pipeline stage, None elsewhere. ``prefill()`` gives
the logits after the prompt; ``step(tokens, alive)`` appends one token per row (``alive`` False
for rows that already finished: their new key is masked) and gives the next logits.

:class:`CachedSteps` runs the vision tower and the prompt once, then one token per step; the
new token's mrope position continues each row's prompt (``max(prompt positions) + 1 + t`` on all
three axes, HF's ``rope_deltas``), exactly what :func:`get_rope_index` gives the recomputed prefix.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from r1vfree_mcore.parallel.schedule import run_microbatches
from r1vfree_mcore.models.common.inference import repeat_cached_rows
from r1vfree_mcore.rollout.prompts import PromptBatch, repeated_rows, select_rows


_FORWARD_KEYS = ("input_ids", "attention_mask", "position_ids", "pixel_values", "image_grid_thw", "inference_context")


def _forward(model, mb: dict) -> torch.Tensor:
    """The policy's forward on a generation micro-batch (absent / None keys left to the model)."""
    return model(**{k: mb[k] for k in _FORWARD_KEYS if mb.get(k) is not None})


def gather_tp_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a vocab-parallel tensor's TP shards along the last dim."""
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(tp)]
    dist.all_gather(parts, x.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, -1)


def _last_logits(model, mb: dict, vocab: int, gathered: bool) -> torch.Tensor | None:
    """Run one micro-batch; the last position's logits ``[N, vocab]`` on the last stage."""

    def loss_fn(_mb, output):
        last = output[:, -1, :].float()
        full = last if gathered else gather_tp_last_dim(last)
        # Sampling happens on the CPU (one seeded torch.Generator, the same draws on any device).
        return output.new_zeros(()), {"logits": full[:, :vocab].cpu()}

    out = run_microbatches(model, [mb], _forward, loss_fn, forward_only=True)
    return out[0]["logits"] if out else None


class RecomputeSteps:
    """Every step re-runs the whole prefix (vision tower included): O(length^2), no cache memory."""

    def __init__(self, model, vocab: int, prompts: PromptBatch, max_new_tokens: int):
        self.model, self.vocab, self.prompts = model, vocab, prompts
        self.ids, self.mask = prompts.input_ids, prompts.attention_mask

    def _run(self) -> torch.Tensor | None:
        mb = {"input_ids": self.ids, "attention_mask": self.mask, "pixel_values": self.prompts.pixel_values,
              "image_grid_thw": self.prompts.image_grid_thw}
        return _last_logits(self.model, mb, self.vocab, gathered=False)

    def prefill(self) -> torch.Tensor | None:
        return self._run()

    def step(self, tokens: torch.Tensor, alive: torch.Tensor) -> torch.Tensor | None:
        self.ids = torch.cat([self.ids, tokens[:, None].to(self.ids.device)], 1)
        self.mask = torch.cat([self.mask, alive[:, None].to(self.mask)], 1)
        return self._run()


class CachedSteps:
    """Prompt once into megatron's static KV cache (this stage's layers), then one token per step.

    Identical prompt rows (the G copies of a GRPO prompt) are prefilled once and their cache rows
    copied, so the prompt and its image cost one forward per distinct prompt, not per sample.
    """

    def __init__(self, model, vocab: int, prompts: PromptBatch, max_new_tokens: int):
        from r1vfree_mcore.models.common.inference import new_static_context
        from r1vfree_mcore.models.common.rope_index import get_rope_index

        self.model, self.vocab, self.prompts = model, vocab, prompts
        n, p = prompts.input_ids.shape
        self.context = new_static_context(n, p + max_new_tokens)
        hf_config = getattr(model, "module", model).hf_config
        self.mask = prompts.attention_mask
        self.positions = get_rope_index(prompts.input_ids, prompts.image_grid_thw, self.mask, hf_config)
        self.next_position = self.positions.amax(dim=(0, 2)) + 1  # [N]; padding has position 0

    def _run(self, mb: dict, rows: list[int] | None = None) -> torch.Tensor | None:
        mask, positions = (self.mask, self.positions) if rows is None else (self.mask[rows], self.positions[:, rows])
        mb.update(attention_mask=mask, position_ids=positions, inference_context=self.context)
        logits = _last_logits(self.model, mb, self.vocab, gathered=True)
        # Every stage advances its own context past the tokens it just cached.
        self.context.increment_sequence_len_offset(mb["input_ids"].shape[1])
        return logits

    def prefill(self) -> torch.Tensor | None:
        """Run each distinct prompt once (GRPO repeats every prompt G times), then copy its cached
        keys / values and its logits to the rows of its copies."""
        self.context.reset()
        keep, inverse = repeated_rows(self.prompts)
        if len(keep) == len(inverse):
            return self._run({"input_ids": self.prompts.input_ids, "pixel_values": self.prompts.pixel_values,
                              "image_grid_thw": self.prompts.image_grid_thw})
        sub = select_rows(self.prompts, keep)
        logits = self._run({"input_ids": sub.input_ids, "pixel_values": sub.pixel_values,
                            "image_grid_thw": sub.image_grid_thw}, rows=keep)
        repeat_cached_rows(self.context, inverse)
        return None if logits is None else logits[inverse]

    def step(self, tokens: torch.Tensor, alive: torch.Tensor) -> torch.Tensor | None:
        self.context.enable_decode_mode()
        pos = self.next_position.to(self.positions.dtype)
        self.next_position = self.next_position + 1
        self.positions = torch.cat([self.positions, pos.view(1, -1, 1).expand(3, -1, 1)], 2)
        self.mask = torch.cat([self.mask, alive[:, None].to(self.mask)], 1)
        return self._run({"input_ids": tokens[:, None].to(self.prompts.input_ids.device)})
