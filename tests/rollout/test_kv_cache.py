"""The KV-cache generator samples exactly what the recomputing one does, and matches HF's logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _rollout_harness import (
    compare_worker,
    init_single_process,
    load_policy,
    make_checkpoint,
    prompt_batch,
)
from r1vfree_mcore.testing.distributed import run_distributed

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
NEW_TOKENS = 10


def _params(vocab: int, hf_config) -> dict:
    # Every 8th token ends a sequence, so rows finish at different steps: finished rows keep
    # being fed (pad tokens, masked keys) and must not disturb the others or the draws.
    vision = (hf_config.image_token_id, hf_config.vision_start_token_id, hf_config.vision_end_token_id)
    eos = tuple(t for t in range(0, vocab, 8) if t not in vision)
    return dict(temperature=0.8, top_k=40, top_p=0.95, suppress_token_ids=vision, eos_extra=eos)


def _assert_same(res: dict, where: str) -> None:
    a, b = res["cache"], res["recompute"]
    assert torch.equal(a["mask"], b["mask"]), f"{where}: completion masks differ"
    assert torch.equal(a["ids"], b["ids"]), f"{where}: sampled tokens differ"
    torch.testing.assert_close(a["lp"], b["lp"], atol=1e-5, rtol=0, msg=f"{where}: behaviour log-probs differ")
    lengths = a["mask"].sum(-1)
    # The test is only meaningful if some rows stopped early and at different steps.
    assert len(set(lengths.tolist())) > 1 and int(lengths.min()) < NEW_TOKENS, f"{where}: lengths {lengths.tolist()}"


def _worker_params(ckpt: Path) -> dict:
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(ckpt)
    return _params(hf_config.text_config.vocab_size, hf_config)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout_ckpt")
    return {f: make_checkpoint(root, f) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_cache_matches_recompute_tp1(checkpoints, family):
    from r1vfree_mcore.parallel.state import destroy_parallel

    init_single_process()
    ckpt = checkpoints[family]
    out = compare_worker(0, 1, [str(ckpt)], 1, 1, NEW_TOKENS, _worker_params(ckpt))
    destroy_parallel()
    assert out[ckpt.name]["default_uses_cache"], "the local-spec model should default to the KV cache"
    _assert_same(out[ckpt.name], f"{family} TP=1")


@pytest.mark.slow
def test_kv_cache_matches_recompute_tp2_pp2(checkpoints):
    ckpts = [str(checkpoints[f]) for f in FAMILIES]
    params = _worker_params(Path(ckpts[0]))
    results = run_distributed(compare_worker, 4, ckpts, 2, 2, NEW_TOKENS, params, timeout=400)
    for rank, res in enumerate(results):
        for name, r in res.items():
            _assert_same(r, f"{name} TP=2 PP=2 rank {rank}")
    # Every rank returns the same (broadcast) tokens.
    for name in results[0]:
        for res in results[1:]:
            assert torch.equal(res[name]["cache"]["ids"], results[0][name]["cache"]["ids"])


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_next_logits_match_hf(checkpoints, family):
    """Prefill and the first decode steps give HF's ``logits[:, -1]`` for the same prefix."""
    from transformers import AutoModelForImageTextToText

    from r1vfree_mcore.parallel.state import destroy_parallel
    from r1vfree_mcore.rollout.decode_steps import CachedSteps

    init_single_process()
    ckpt = checkpoints[family]
    batch, _ = prompt_batch(ckpt)
    model, hf_config = load_policy(ckpt)
    model.eval()
    vocab = hf_config.text_config.vocab_size
    hf = AutoModelForImageTextToText.from_pretrained(ckpt, dtype=torch.float32).eval()
    steps = CachedSteps(model, vocab, batch, max_new_tokens=4)
    ids, mask = batch.input_ids, batch.attention_mask
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad(), pytest.raises(ValueError, match="position_ids"):
        model(input_ids=ids, attention_mask=mask, inference_context=steps.context)  # decode needs positions
    with torch.no_grad():
        ours = steps.prefill()
        for step in range(4):
            mm_types = (ids == hf_config.image_token_id).long()  # what the processor returns (images: 1)
            ref = hf(input_ids=ids, attention_mask=mask, pixel_values=batch.pixel_values,
                     image_grid_thw=batch.image_grid_thw, mm_token_type_ids=mm_types).logits[:, -1, :vocab].float()
            err = float((ours - ref).abs().max())
            assert err < 1e-4, f"{family} step {step}: max |logit - HF| = {err}"
            nxt = torch.randint(0, vocab, (ids.shape[0],), generator=gen)
            nxt[nxt == hf_config.image_token_id] = 0  # a placeholder would read as a new image
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            ours = steps.step(nxt, torch.ones_like(nxt, dtype=torch.bool))
    destroy_parallel()


def test_cached_mask_is_causal_padding_mask():
    """Prefill (all keys new) gives the local backend's causal | padding mask; decode masks pad keys."""
    from r1vfree_mcore.models.backends.local import LocalBackend
    from r1vfree_mcore.models.common.inference import cached_decoder_mask

    keys = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    assert torch.equal(cached_decoder_mask(keys, 5), LocalBackend.decoder_mask(keys, 5, 2))
    last = cached_decoder_mask(keys, 1)
    assert last.shape == (2, 1, 1, 5)
    assert torch.equal(last[:, 0, 0], keys == 0)
    two = cached_decoder_mask(keys, 2)  # the second-to-last query must not see the last key
    assert bool(two[0, 0, 0, 4]) and not bool(two[0, 0, 0, 3]) and not bool(two[0, 0, 1, 4])
    with pytest.raises(ValueError, match="new tokens"):
        cached_decoder_mask(keys, 6)


def test_kv_cache_needs_local_spec():
    from types import SimpleNamespace

    from r1vfree_mcore.rollout.generator import MegatronGenerator

    te_model = SimpleNamespace(backend=SimpleNamespace(name="transformer_engine"))
    with pytest.raises(ValueError, match="spec='local'"):
        MegatronGenerator(te_model, 10, use_kv_cache=True)
    assert not MegatronGenerator(te_model, 10).use_kv_cache  # falls back to recomputing
