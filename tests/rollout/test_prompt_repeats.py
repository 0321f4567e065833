"""The G copies of a prompt are found exactly (ids, mask and image pixels) and prefilled once."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from _rollout_harness import GROUP, make_checkpoint, prompt_batch
from r1vfree_mcore.models.common.inference import repeat_cached_rows
from r1vfree_mcore.rollout.prompts import repeated_rows, select_rows


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    b, _ = prompt_batch(make_checkpoint(tmp_path_factory.mktemp("repeats"), "qwen2_vl"))
    return b


def test_copies_of_each_prompt_form_one_run(batch):
    keep, inverse = repeated_rows(batch)
    assert keep == [0, GROUP]
    assert inverse.tolist() == [0] * GROUP + [1] * GROUP
    sub = select_rows(batch, keep)
    sizes = batch.image_grid_thw.prod(-1).tolist()
    images = torch.split(batch.pixel_values, sizes)
    assert torch.equal(sub.input_ids, batch.input_ids[keep])
    assert torch.equal(sub.pixel_values, torch.cat([images[0], images[GROUP]]))
    assert torch.equal(sub.image_grid_thw, batch.image_grid_thw[keep])


def test_same_tokens_other_pixels_is_not_a_copy(batch):
    sizes = batch.image_grid_thw.prod(-1).tolist()
    pv = batch.pixel_values.clone()
    pv[sizes[0], 0] += 1.0  # first patch of row 1's image: same token ids, different picture
    other = SimpleNamespace(**{**vars(batch), "pixel_values": pv})
    other.num_sequences = batch.num_sequences
    keep, inverse = repeated_rows(other)
    assert keep == [0, 1, 2, GROUP]
    assert inverse.tolist() == [0, 1, 2] + [3] * GROUP  # row 2 no longer repeats row 1


def test_repeat_cached_rows_copies_the_cached_prefix_only():
    g = torch.Generator().manual_seed(0)
    keys, values = torch.randn(10, 5, 2, 4, generator=g), torch.randn(10, 5, 2, 4, generator=g)
    before_k, before_v = keys.clone(), values.clone()
    ctx = SimpleNamespace(sequence_len_offset=6, key_value_memory_dict={1: (keys, values)})
    source = torch.tensor([0, 0, 1, 1, 1])
    repeat_cached_rows(ctx, source)
    assert torch.equal(keys[:6], before_k[:6, source]) and torch.equal(values[:6], before_v[:6, source])
    assert torch.equal(keys[6:], before_k[6:]) and torch.equal(values[6:], before_v[6:])
    with pytest.raises(ValueError, match="rows for a cache of batch"):
        repeat_cached_rows(ctx, torch.zeros(6, dtype=torch.long))
