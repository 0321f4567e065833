"""Rollout generation with the Megatron policy itself, at any TP/PP.

:class:`Generator` is the interface (a vLLM backend can implement it later);
:class:`MegatronGenerator` decodes with the policy through megatron-core's pipeline schedule.
Each step runs the model on the whole batch, gathers the last position's vocab-parallel logits
over TP (one row per sequence, never the full sequence), samples on the last pipeline stage with
a generator seeded identically on all TP ranks, and broadcasts the tokens to the other stages.

By default the prompt is run once into megatron-core's static KV cache and each step feeds one
token (:class:`~r1vfree_mcore.rollout.decode_steps.CachedSteps`); ``use_kv_cache=False`` re-runs
the whole prefix each step instead (O(length^2), vision tower every step). Both sample the same
tokens from the same seed (tests/rollout/test_kv_cache.py). The cache needs the local layer spec
(left padding is masked explicitly); with another backend the generator recomputes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from r1vfree_mcore.parallel.schedule import broadcast_from_last_stage
from r1vfree_mcore.rollout.decode_steps import CachedSteps, RecomputeSteps
from r1vfree_mcore.rollout.decode_steps import gather_tp_last_dim  # noqa: F401 (re-exported)
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

    def __post_init__(self):
        for field, ok, need in (("max_new_tokens", self.max_new_tokens >= 1, ">= 1"),
                                ("temperature", self.temperature > 0, "> 0"),
                                ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
                                ("top_k", self.top_k >= 0, ">= 0 (0 disables top-k)")):
            if not ok:
                raise ValueError(f"SamplingParams.{field} must be {need}, got {getattr(self, field)!r}")


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
    """Sampling with the megatron-core policy (see module doc).

    ``use_kv_cache``: None (default) uses the KV cache when the model is built with the local
    spec and recomputes otherwise; True requires the cache; False always recomputes.
    """

    def __init__(self, model, real_vocab_size: int, use_kv_cache: bool | None = None):
        self.model = model
        self.real_vocab_size = real_vocab_size
        backend = getattr(getattr(getattr(model, "module", model), "backend", None), "name", None)
        if use_kv_cache and backend != "local":
            raise ValueError(f"use_kv_cache=True needs a model built with spec='local', got backend {backend!r}")
        self.use_kv_cache = backend == "local" if use_kv_cache is None else use_kv_cache

    @torch.no_grad()
    def generate(self, prompts: PromptBatch, params: SamplingParams, seed: int) -> Rollout:
        self.model.eval()
        n = prompts.num_sequences
        steps_cls = CachedSteps if self.use_kv_cache else RecomputeSteps
        steps = steps_cls(self.model, self.real_vocab_size, prompts, params.max_new_tokens)
        gen = torch.Generator().manual_seed(seed)
        eos = torch.tensor(params.eos_token_ids)
        done = torch.zeros(n, dtype=torch.bool)
        toks, lps, keep = [], [], []
        logits = steps.prefill()
        for i in range(params.max_new_tokens):
            payload = sample_next(logits, params, gen) if logits is not None else None  # last stage
            nxt, lp = broadcast_from_last_stage(payload)
            alive = ~done
            nxt = torch.where(alive, nxt, torch.full_like(nxt, params.pad_token_id))
            toks.append(nxt)
            lps.append(torch.where(alive, lp, torch.zeros_like(lp)))
            keep.append(alive)
            done = done | torch.isin(nxt, eos)
            if bool(done.all()) or i + 1 == params.max_new_tokens:
                break
            logits = steps.step(nxt, alive)
        del steps  # frees the KV cache before training
        self.model.train()
        return Rollout(
            prompts=prompts,
            completion_ids=torch.stack(toks, 1),
            completion_mask=torch.stack(keep, 1).to(torch.long),
            behaviour_logprobs=torch.stack(lps, 1),
        )


def sample_next(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator):
    """Draw one token per row from ``[N, vocab]`` fp32 logits; returns (tokens, their log-probs).

    The log-prob is under the temperature-scaled distribution before top-k / top-p filtering.
    """
    scaled = logits / params.temperature
    if params.suppress_token_ids:
        scaled[:, list(params.suppress_token_ids)] = float("-inf")
    logp_all = torch.log_softmax(scaled, -1)
    probs = filter_logits(scaled, params.top_k, params.top_p).softmax(-1)
    nxt = torch.multinomial(probs, 1, generator=gen).squeeze(1)
    return nxt, logp_all.gather(-1, nxt[:, None]).squeeze(1)


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
