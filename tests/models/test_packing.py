"""Sequence packing (THD) equals the padded batch: logits, completion log-probs, grads (fp32, CPU).

The packed path runs the local spec with the block-diagonal causal mask that stands in for TE's
``cu_seqlens`` attention; position ids come from ``get_rope_index`` per sequence before packing.
"""

from __future__ import annotations

import os

import pytest
import torch

from _vlm_harness import hf_tensors, make_checkpoint
from r1vfree_mcore.models.common.packing import pack, pack_sequences, packed_causal_mask, unpack
from r1vfree_mcore.testing.distributed import run_distributed

# (family, padding side): both families, both padding sides.
CASES = (("qwen2_vl", "left"), ("qwen2_5_vl", "right"))


def _image(h, w, seed):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _inputs(ckpt, side):
    """Three sequences of different lengths: 2 images, 1 image (another size), text only."""
    from transformers import AutoProcessor

    os.environ["HF_HUB_OFFLINE"] = "1"
    proc = AutoProcessor.from_pretrained(ckpt)
    proc.tokenizer.padding_side = side
    msgs = [
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"},
                                      {"type": "image"}, {"type": "text", "text": "Count the objects."}]}],
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the colors and shapes."}]}],
        [{"role": "user", "content": [{"type": "text", "text": "The count is 3."}]}],
    ]
    texts = [proc.apply_chat_template(m, add_generation_prompt=True) for m in msgs]
    imgs = [[_image(56, 84, 0), _image(112, 56, 1)], [_image(84, 112, 2)], []]
    batch = proc(text=texts, images=[i for i in imgs if i], return_tensors="pt", padding=True)
    # The text-only row has no image: the processor took images in order, so rows line up.
    return dict(batch)


def _packed_vs_padded(rank, world, ckpts, sides):
    from transformers import AutoConfig

    from r1vfree_mcore.grpo.logprobs import vocab_parallel_logprobs
    from r1vfree_mcore.models import build_model, get_rope_index, load_hf_state_dict
    from r1vfree_mcore.models.common.packing import next_token_targets
    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel, initialize_parallel

    out = {}
    for ckpt, side in zip(ckpts, sides):
        cfg = AutoConfig.from_pretrained(ckpt)
        vocab = cfg.text_config.vocab_size
        inp = _inputs(ckpt, side)
        ids, mask = inp["input_ids"], inp["attention_mask"]
        initialize_parallel(ParallelConfig())
        model = build_model(cfg, ParallelConfig())
        load_hf_state_dict(model, hf_tensors(ckpt))
        r = {"lengths": mask.sum(1).tolist()}

        # Padded reference: logits and next-token log-probs (targets = next column).
        ref = model(ids, attention_mask=mask, pixel_values=inp["pixel_values"], image_grid_thw=inp["image_grid_thw"])
        ref = ref[..., :vocab]
        ref_lp, _ = vocab_parallel_logprobs(ref, torch.roll(ids, -1, 1), real_vocab_size=vocab)
        valid = mask.bool() & torch.roll(mask.bool(), -1, 1)
        valid[:, -1] = False
        ref_loss = ref_lp[valid].sum()
        ref_loss.backward()
        ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()

        for multiple in (1, 16):
            pk = pack_sequences(ids, mask, inp["image_grid_thw"], cfg, pad_to_multiple=multiple)
            logits = model(pixel_values=inp["pixel_values"], **pk.model_kwargs())[..., :vocab]
            targets, tvalid = next_token_targets(ids, pk.index, pk.cu_seqlens)
            lp, _ = vocab_parallel_logprobs(logits, targets, real_vocab_size=vocab)
            un_logits, un_lp = unpack(logits, pk.index), unpack(lp, pk.index)
            r[f"logit_diff_{multiple}"] = float((un_logits - ref)[mask.bool()].abs().max())
            r[f"logprob_diff_{multiple}"] = float((un_lp - ref_lp)[valid].abs().max())
            r[f"targets_agree_{multiple}"] = bool(torch.equal(unpack(tvalid, pk.index), valid))
            r[f"total_{multiple}"] = pk.input_ids.shape[1]
        (lp * tvalid).sum().backward()
        r["grad_rel_diff"] = max(
            float((p.grad - ref_grads[n]).abs().max() / (ref_grads[n].abs().max() + 1e-12))
            for n, p in model.named_parameters() if n in ref_grads
        )
        r["grads_match_set"] = sorted(ref_grads) == sorted(n for n, p in model.named_parameters() if p.grad is not None)
        # Positions: per-sequence == the padded batch's (HF semantics); naive whole-row != it.
        pk = pack_sequences(ids, mask, inp["image_grid_thw"], cfg)
        batch_pos = get_rope_index(ids, inp["image_grid_thw"], mask, cfg)
        r["positions_equal"] = bool(torch.equal(unpack(pk.position_ids.permute(1, 2, 0), pk.index),
                                                batch_pos.permute(1, 2, 0) * mask[..., None]))
        naive = get_rope_index(pk.input_ids, inp["image_grid_thw"], None, cfg)
        r["naive_positions_differ"] = not torch.equal(naive, pk.position_ids)
        out[side] = r
        destroy_parallel()
    return out


@pytest.mark.slow
def test_packed_equals_padded_both_families(tmp_path):
    ckpts = [str(make_checkpoint(tmp_path, fam, tied=fam == "qwen2_vl")) for fam, _ in CASES]
    sides = [side for _, side in CASES]
    (res,) = run_distributed(_packed_vs_padded, 1, ckpts, sides, timeout=300)
    for side in sides:
        r = res[side]
        assert len(set(r["lengths"])) == 3, r["lengths"]  # three different lengths
        for m in (1, 16):
            assert r[f"logit_diff_{m}"] <= 1e-5, (side, m, r)
            assert r[f"logprob_diff_{m}"] <= 1e-5, (side, m, r)
            assert r[f"targets_agree_{m}"], (side, m)
        assert r["total_1"] == sum(r["lengths"]) and r["total_16"] % 16 == 0
        assert r["grad_rel_diff"] <= 1e-4 and r["grads_match_set"], r
        assert r["positions_equal"] and r["naive_positions_differ"], r


def _tiny_config():
    from types import SimpleNamespace

    return SimpleNamespace(image_token_id=9, vision_config=SimpleNamespace(spatial_merge_size=2))


def test_pack_unpack_round_trip_and_segments():
    ids = torch.tensor([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5], [0, 0, 0, 8, 8]])
    mask = (ids != 0).long()
    mask[1, 0] = 1
    pk = pack_sequences(ids, mask, None, _tiny_config(), pad_to_multiple=4)
    assert pk.input_ids.tolist() == [[5, 6, 7, 1, 2, 3, 4, 5, 8, 8, 0, 0]]
    assert pk.cu_seqlens.tolist() == [0, 3, 8, 10, 12] and pk.cu_seqlens.dtype == torch.int32
    assert pk.position_ids[0, 0].tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 0, 1]
    assert torch.equal(unpack(pack(ids, pk.index), pk.index), ids * mask)
    # The mask equals a dense reference built token by token.
    seg = [0] * 3 + [1] * 5 + [2] * 2 + [3] * 2
    ref = torch.tensor([[not (seg[i] == seg[j] and j <= i) for j in range(12)] for i in range(12)])
    assert torch.equal(packed_causal_mask(pk.cu_seqlens)[0, 0], ref)


def test_pack_errors_name_the_problem():
    cfg = _tiny_config()
    ids = torch.tensor([[9, 9, 1], [1, 2, 3]])
    with pytest.raises(ValueError, match="no tokens"):
        pack_sequences(ids, torch.tensor([[1, 1, 1], [0, 0, 0]]), None, cfg)
    with pytest.raises(ValueError, match="image_grid_thw has 2 rows"):
        pack_sequences(ids[:, :2].clone().fill_(1), None, torch.tensor([[1, 2, 2], [1, 2, 2]]), cfg)
    with pytest.raises(ValueError, match="more <\\|image_pad\\|> tokens"):
        pack_sequences(torch.tensor([[9, 9, 9, 9, 9]]), None, torch.tensor([[1, 2, 2]]), cfg)
