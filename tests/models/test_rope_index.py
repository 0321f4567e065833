"""Our get_rope_index equals HF's model.model.get_rope_index (several images, sizes, padding)."""

import pytest
import torch

from _vlm_harness import build_inputs, hf_model, make_checkpoint
from r1vfree_mcore.models import get_rope_index


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("rope")
    return {fam: make_checkpoint(root, fam, tied=False) for fam in ("qwen2_vl", "qwen2_5_vl")}


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_rope_index_matches_hf(checkpoints, family, side):
    ckpt = checkpoints[family]
    inputs = build_inputs(ckpt, side)
    hf = hf_model(ckpt)
    ids, grid, mask = inputs["input_ids"], inputs["image_grid_thw"], inputs["attention_mask"]
    want, _ = hf.model.get_rope_index(ids, inputs["mm_token_type_ids"], image_grid_thw=grid, attention_mask=mask)
    got = get_rope_index(ids, grid, mask, hf.config)
    assert got.shape == (3, *ids.shape)
    assert torch.equal(got[:, mask.bool()], want[:, mask.bool()])
    assert (got[:, ~mask.bool()] == 0).all()
    # The image grids differ, so the three axes really differ somewhere.
    assert not torch.equal(got[0], got[1]) and not torch.equal(got[1], got[2])


def test_rope_index_errors_on_grid_mismatch(checkpoints):
    ckpt = checkpoints["qwen2_vl"]
    inputs = build_inputs(ckpt)
    hf = hf_model(ckpt)
    with pytest.raises(ValueError, match="more <\\|image_pad\\|> runs than image_grid_thw"):
        get_rope_index(inputs["input_ids"], inputs["image_grid_thw"][:2], inputs["attention_mask"], hf.config)
    extra = torch.cat([inputs["image_grid_thw"], inputs["image_grid_thw"][:1]])
    with pytest.raises(ValueError, match="image_grid_thw has more rows"):
        get_rope_index(inputs["input_ids"], extra, inputs["attention_mask"], hf.config)
