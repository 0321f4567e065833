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


def _cfg(image_token=7, merge=2):
    from types import SimpleNamespace

    return SimpleNamespace(image_token_id=image_token, vision_config=SimpleNamespace(spatial_merge_size=merge))


def test_adjacent_images_and_text_only_rows():
    # Row 0: text, two images back to back (2x2 and 1x2 merged grids), text. Row 1: text only.
    ids = torch.tensor([[1, 7, 7, 7, 7, 7, 7, 2], [3, 4, 5, 6, 1, 2, 3, 4]])
    grid = torch.tensor([[1, 4, 4], [1, 2, 4]])
    got = get_rope_index(ids, grid, None, _cfg())
    t = [0, 1, 1, 1, 1, 3, 3, 5]
    h = [0, 1, 1, 2, 2, 3, 3, 5]
    w = [0, 1, 2, 1, 2, 3, 4, 5]
    assert got[:, 0].tolist() == [t, h, w]
    assert got[:, 1].tolist() == [list(range(8))] * 3


def test_truncated_image_is_an_error():
    ids = torch.tensor([[1, 7, 7, 7]])
    with pytest.raises(ValueError, match="needs 4 <\\|image_pad\\|> tokens"):
        get_rope_index(ids, torch.tensor([[1, 4, 4]]), None, _cfg())
