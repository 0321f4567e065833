"""Rollout generation with the Megatron policy itself, at any TP/PP.

:class:`Generator` is the interface (a vLLM backend can implement it later);
:class:`MegatronGenerator` decodes with the policy through megatron-core's pipeline schedule.
Each step runs the model on the whole batch, gathers the last position's vocab-parallel logits
over TP (one row per sequence, never the full sequence), samples on the last pipeline stage with
a generator seeded identically on all TP ranks, and broadcasts the tokens to the other stages.

Not yet done: a KV cache. Each decode step re-runs the full prefix (O(length^2)); fine for
the tiny CPU models, not for 7B rollouts (see docs/status.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.distributed as dist

from r1vfree_mcore.parallel.schedule import broadcast_from_last_stage, run_microbatches
from r1vfree_mcore.rollout.prompts import PromptBatch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    # Never sampled: vision placeholders in a completion would be read as a new image.
    suppress_token_ids: tuple[int, ...] = ()


@dataclass
class Rollout:
    """Prompts plus sampled completions; masks cover tokens up to and including the first EOS."""

    prompts: PromptBatch
    completion_ids: torch.Tensor  # [N, C]
    completion_mask: torch.Tensor  # [N, C] 1 up to and including the first EOS
    behaviour_logprobs: torch.Tensor  # [N, C] log-prob of each sampled token at sampling time

    def full_input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompts.input_ids, self.completion_ids], 1)

    def full_attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompts.attention_mask, self.completion_mask.to(self.prompts.attention_mask.dtype)], 1)


class Generator(Protocol):
    def generate(self, prompts: PromptBatch, params: SamplingParams, seed: int) -> Rollout: ...


def model_forward(model, mb: dict) -> torch.Tensor:
    """The policy's forward on one micro-batch dict (the keys the Qwen-VL model takes)."""
    return model(
        input_ids=mb["input_ids"],
        attention_mask=mb["attention_mask"],
        pixel_values=mb.get("pixel_values"),
        image_grid_thw=mb.get("image_grid_thw"),
    )


def gather_tp_last_dim(x: torch.Tensor) -> torch.Tensor:
    """Concatenate a vocab-parallel tensor's TP shards along the last dim."""
    from megatron.core import parallel_state as ps

    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(tp)]
    dist.all_gather(parts, x.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, -1)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus filtering on [N, V] fp32 logits (temperature already applied)."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already exceeds top_p (keeps at least one).
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    return logits


class MegatronGenerator:
    """Sampling with the megatron-core policy (see module doc)."""

    def __init__(self, model, real_vocab_size: int):
        self.model = model
        self.real_vocab_size = real_vocab_size

    def _next_logits(self, ids, mask, prompts: PromptBatch) -> torch.Tensor | None:
        mb = {"input_ids": ids, "attention_mask": mask, "pixel_values": prompts.pixel_values,
              "image_grid_thw": prompts.image_grid_thw}

        def last_logits(_mb, output):
            full = gather_tp_last_dim(output[:, -1, :].float())
            return output.new_zeros(()), {"logits": full[:, : self.real_vocab_size]}

        out = run_microbatches(self.model, [mb], model_forward, last_logits, forward_only=True)
        return out[0]["logits"] if out else None

    @torch.no_grad()
    def generate(self, prompts: PromptBatch, params: SamplingParams, seed: int) -> Rollout:
        self.model.eval()
        n = prompts.num_sequences
        gen = torch.Generator().manual_seed(seed)
        ids, mask = prompts.input_ids, prompts.attention_mask
        eos = torch.tensor(params.eos_token_ids)
        done = torch.zeros(n, dtype=torch.bool)
        toks, lps, keep = [], [], []
        for _ in range(params.max_new_tokens):
            logits = self._next_logits(ids, mask, prompts)
            if logits is not None:  # last pipeline stage
                scaled = logits / params.temperature
                if params.suppress_token_ids:
                    scaled[:, list(params.suppress_token_ids)] = float("-inf")
                logp_all = torch.log_softmax(scaled, -1)
                probs = filter_logits(scaled, params.top_k, params.top_p).softmax(-1)
                nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
                lp = logp_all.gather(-1, nxt[:, None]).squeeze(1)
                payload = (nxt, lp)
            else:
                payload = None
            nxt, lp = broadcast_from_last_stage(payload)
            alive = ~done
            nxt = torch.where(alive, nxt, torch.full_like(nxt, params.pad_token_id))
            toks.append(nxt)
            lps.append(torch.where(alive, lp, torch.zeros_like(lp)))
            keep.append(alive)
            done = done | torch.isin(nxt, eos)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, alive[:, None].to(mask.dtype)], 1)
            if bool(done.all()):
                break
        self.model.train()
        return Rollout(
            prompts=prompts,
            completion_ids=torch.stack(toks, 1),
            completion_mask=torch.stack(keep, 1).to(torch.long),
            behaviour_logprobs=torch.stack(lps, 1),
        )


def decode_completions(tokenizer, rollout: Rollout) -> list[str]:
    """Completion text of each sequence, cut at the first EOS, special tags kept."""
    out = []
    for ids, m in zip(rollout.completion_ids, rollout.completion_mask):
        toks = ids[m.bool()].tolist()
        text = tokenizer.decode(toks, skip_special_tokens=False)
        for special in (tokenizer.eos_token, tokenizer.pad_token):
            if special:
                text = text.split(special)[0]
        out.append(text)
    return out
