"""Workers and helpers for the rollout tests: tiny checkpoint, prompt batch, both generators."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

PROMPTS = (("Count the red objects in the picture, then explain.", (56, 84)), ("Describe.", (112, 56)))
GROUP = 3


def make_checkpoint(root: Path, family: str) -> Path:
    from r1vfree_mcore.testing.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(Path(root) / family, family=family)


def _image(h: int, w: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def prompt_batch(ckpt: Path, group: int = GROUP):
    """2 prompts (images of different sizes, different text lengths: left padding) x ``group``."""
    from transformers import AutoProcessor

    from r1vfree_mcore.data.dataset import PromptSample
    from r1vfree_mcore.rollout.prompts import build_prompt_batch

    os.environ["HF_HUB_OFFLINE"] = "1"
    proc = AutoProcessor.from_pretrained(ckpt)
    samples = [PromptSample(i, text, _image(*size, i)) for i, (text, size) in enumerate(PROMPTS)]
    batch = build_prompt_batch(samples, proc, group)
    assert (batch.attention_mask == 0).any(), "the prompts must be left-padded"
    return batch, proc


def sampling(proc, max_new_tokens: int, eos_extra: tuple[int, ...] = (), **kw):
    """SamplingParams with the tokenizer's EOS (plus ``eos_extra``) and pad ids."""
    from r1vfree_mcore.rollout.generator import SamplingParams

    tok = proc.tokenizer
    eos = tuple(sorted({tok.eos_token_id, *eos_extra}))
    return SamplingParams(max_new_tokens, eos, tok.pad_token_id, **kw)


def load_policy(ckpt: Path, tp: int = 1, pp: int = 1):
    """Initialise megatron TP x PP in this process group and load the tiny checkpoint."""
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from r1vfree_mcore.models.common.vlm import build_model
    from r1vfree_mcore.models.common.weight_loading import load_hf_state_dict
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel

    cfg = ParallelConfig(tp, pp)
    initialize_parallel(cfg)
    hf_config = AutoConfig.from_pretrained(ckpt)
    model = build_model(hf_config, cfg)
    tensors = {}
    for f in sorted(Path(ckpt).glob("*.safetensors")):
        tensors.update(load_file(f))
    load_hf_state_dict(model, tensors)
    return model, hf_config


def init_single_process():
    import torch.distributed as dist

    from r1vfree_mcore.testing.distributed import free_port

    if not dist.is_initialized():
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
        dist.init_process_group("gloo", rank=0, world_size=1)


def both_generators(model, vocab: int, batch, params, seed: int) -> dict:
    """Rollouts of the cached and recomputing generators from the same seed, with timings."""
    from r1vfree_mcore.rollout.generator import MegatronGenerator

    out = {}
    for name, use_cache in (("cache", True), ("recompute", False)):
        t0 = time.perf_counter()
        r = MegatronGenerator(model, vocab, use_kv_cache=use_cache).generate(batch, params, seed)
        out[name] = {"ids": r.completion_ids, "mask": r.completion_mask, "lp": r.behaviour_logprobs,
                     "seconds": time.perf_counter() - t0}
    return out


def compare_worker(rank, world, ckpts, tp, pp, max_new_tokens, param_kw):
    """Worker: for each checkpoint, both generators at TP x PP; returns their rollouts."""
    from r1vfree_mcore.parallel.state import destroy_parallel
    from r1vfree_mcore.rollout.generator import MegatronGenerator

    res = {}
    for ckpt in ckpts:
        batch, proc = prompt_batch(Path(ckpt))
        model, hf_config = load_policy(Path(ckpt), tp, pp)
        params = sampling(proc, max_new_tokens, **param_kw)
        vocab = hf_config.text_config.vocab_size
        res[Path(ckpt).name] = both_generators(model, vocab, batch, params, seed=1234)
        res[Path(ckpt).name]["default_uses_cache"] = MegatronGenerator(model, vocab).use_kv_cache
        destroy_parallel()
    return res
