"""Packed (THD) training passes equal the padded ones: completion log-probs, the GRPO loss and
every gradient, on a real rollout whose completions have uneven lengths (one empty), at TP=1 and
at PP=2 (packed rows of different lengths cross the pipeline)."""

from __future__ import annotations

import os

import pytest
import torch

from r1vfree_mcore.testing.distributed import run_distributed


def _rollout(ckpt, model, vocab):
    import numpy as np
    from PIL import Image
    from transformers import AutoProcessor

    from r1vfree_mcore.data.dataset import PromptSample
    from r1vfree_mcore.rollout.generator import MegatronGenerator, Rollout, SamplingParams
    from r1vfree_mcore.rollout.prompts import build_prompt_batch

    proc = AutoProcessor.from_pretrained(ckpt)
    rng = np.random.default_rng(0)
    samples = [PromptSample(i, text, Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
               for i, (text, h, w) in enumerate((("Count the red objects, then explain why.", 56, 84),
                                                 ("Describe.", 112, 56)))]
    batch = build_prompt_batch(samples, proc, 3)
    assert (batch.attention_mask == 0).any(), "prompts must be left-padded"
    tok = proc.tokenizer
    params = SamplingParams(7, (tok.eos_token_id,), tok.pad_token_id)
    r = MegatronGenerator(model, vocab, use_kv_cache=False).generate(batch, params, seed=5)
    mask = r.completion_mask.clone()
    for row, keep in ((1, 3), (3, 0), (4, 1)):  # uneven lengths, one empty completion
        mask[row, keep:] = 0
    ids = torch.where(mask.bool(), r.completion_ids, torch.full_like(r.completion_ids, tok.pad_token_id))
    return Rollout(prompts=batch, completion_ids=ids, completion_mask=mask, behaviour_logprobs=r.behaviour_logprobs)


def _packed_vs_padded(rank, world, ckpt, pp):
    from transformers import AutoConfig

    from r1vfree_mcore.conversion.hf_io import HFReader
    from r1vfree_mcore.grpo.advantages import group_advantages
    from r1vfree_mcore.models import build_model, load_hf_state_dict
    from r1vfree_mcore.parallel.state import ParallelConfig, initialize_parallel
    from r1vfree_mcore.rollout.generator import model_forward
    from r1vfree_mcore.train.packed_pass import packed_forward
    from r1vfree_mcore.train.step import LossSettings, PassConfig, logprob_pass, train_minibatch

    os.environ["HF_HUB_OFFLINE"] = "1"
    initialize_parallel(ParallelConfig(pp=pp))
    hf = AutoConfig.from_pretrained(ckpt)
    model = build_model(hf, ParallelConfig(pp=pp))
    load_hf_state_dict(model, HFReader(ckpt), hf)
    vocab = hf.text_config.vocab_size
    rollout = _rollout(ckpt, model, vocab)
    n = rollout.completion_ids.shape[0]
    adv = group_advantages(torch.randn(n, generator=torch.Generator().manual_seed(1)), 3)
    out = {}
    for name, fwd, pack_with in (("padded", model_forward, None), ("packed", packed_forward, hf)):
        cfg = PassConfig(1.0, vocab, 4, forward_fn=fwd, pack_with=pack_with)  # micro-batches of 4 and 2
        lp = logprob_pass(model, rollout, cfg)
        model.zero_grad(set_to_none=True)
        metrics = train_minibatch(model, rollout, list(range(n)), adv, None, lp, cfg,
                                  LossSettings(0.04, 0.2, 0.2, "seq-mean-token-mean"), float(n))
        out[name] = {"lp": lp, "metrics": metrics,
                     "grads": {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}}
    out["mask"] = rollout.completion_mask
    return out


@pytest.mark.slow
@pytest.mark.parametrize("pp", [1, 2], ids=["tp1", "pp2"])
def test_packed_passes_equal_padded(tmp_path, pp):
    from r1vfree_mcore.testing.tiny import write_tiny_checkpoint

    ckpt = write_tiny_checkpoint(tmp_path / "policy", family="qwen2_5_vl", num_layers=2)
    results = run_distributed(_packed_vs_padded, pp, str(ckpt), pp)
    last = results[-1]
    live = last["mask"].bool()
    assert live.sum(1).tolist().count(0) == 1  # the empty completion is there
    diff = (last["packed"]["lp"] - last["padded"]["lp"])[live].abs().max()
    assert diff < 1e-5, diff
    for a, b in zip(last["padded"]["metrics"], last["packed"]["metrics"], strict=True):
        for k in ("loss", "kl", "entropy"):
            assert abs(a[k] - b[k]) < 1e-5, (k, a[k], b[k])
    for r in results:  # every stage's gradients
        pad, pk = r["padded"]["grads"], r["packed"]["grads"]
        assert set(pad) == set(pk) and pad
        for k in pad:
            scale = pad[k].abs().max() + 1e-12
            assert (pk[k] - pad[k]).abs().max() / scale < 1e-4, k
