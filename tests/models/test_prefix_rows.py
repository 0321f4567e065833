"""plan_prefix_rows: G copies of a prompt share one prefix row; suffixes see the prefix and themselves."""

from __future__ import annotations

import pytest
import torch

from r1vfree_mcore.models.common.prefix_rows import plan_prefix_rows

IMG = 9  # image token id in these tests
MERGE = 2  # 4 patches per merged image token


def _packed(segments):
    ids = torch.tensor([t for s in segments for t in s])[None]
    pos = torch.cat([torch.arange(len(s)) for s in segments]).expand(3, 1, -1).clone()
    cu = torch.tensor([0] + [len(s) for s in segments]).cumsum(0)
    return ids, pos, cu


def test_copies_share_the_prompt_and_suffixes_see_only_it_and_themselves():
    prompt = [1, IMG, IMG, 2]
    segs = [prompt + [5, 6], prompt + [7], [3, IMG, IMG, 4, 8]]
    ids, pos, cu = _packed(segs)
    thw = torch.tensor([[1, 2, 4]] * 3)  # 8 patches = 2 image tokens each
    img = torch.randn(8, 3)
    chunks = [img, img.clone(), torch.randn(8, 3)]
    # Attention costly enough that the other prompt gets a row of its own.
    plan = plan_prefix_rows(ids, pos, cu, IMG, chunks, thw, MERGE, pad_token=0, token_cost=1.0, pair_cost=1.0)
    assert plan.input_ids.tolist() == [prompt + [5, 6, 7], [3, IMG, IMG, 4, 8, 0, 0]]
    assert plan.images == [0, 2]  # the second copy's image is the first one's
    # Every packed token maps to a row position holding the same token and position.
    assert torch.equal(plan.input_ids[plan.rows, plan.cols], ids[0])
    assert torch.equal(plan.position_ids[:, plan.rows, plan.cols], pos[:, 0])
    m = plan.mask[0, 0]  # True = masked
    visible = lambda q: (~m[q]).nonzero().flatten().tolist()
    assert visible(3) == [0, 1, 2, 3]  # prefix: causal
    assert visible(5) == [0, 1, 2, 3, 4, 5]  # first copy's suffix
    assert visible(6) == [0, 1, 2, 3, 6]  # second copy's suffix skips the first's
    assert visible(4) == [0, 1, 2, 3, 4]
    r1 = plan.mask[1, 0]
    assert (~r1[4]).nonzero().flatten().tolist() == [0, 1, 2, 3, 4]
    assert not (~r1[:5, 5:]).any()  # padding keys are never seen by real tokens
    assert (~r1[5:]).nonzero().tolist() == [[0, 5], [1, 6]]  # padding queries see only themselves


def test_short_groups_join_a_row_as_their_own_block():
    prompt = [1, 2, 3, 4]
    segs = [prompt + [5, 6], prompt + [7, 8], [0, 0, 0]]  # the last: packing's alignment tokens
    ids, pos, cu = _packed(segs)
    plan = plan_prefix_rows(ids, pos, cu, IMG, [], None, MERGE, pad_token=0, token_cost=100.0, pair_cost=1.0)
    assert plan.input_ids.tolist() == [prompt + [5, 6, 7, 8, 0, 0, 0]]
    assert torch.equal(plan.input_ids[plan.rows, plan.cols], ids[0])
    m = plan.mask[0, 0]
    visible = lambda q: (~m[q]).nonzero().flatten().tolist()
    assert visible(9) == [8, 9]  # the alignment block sees only itself
    assert visible(7) == [0, 1, 2, 3, 6, 7]


def test_same_tokens_other_image_or_costly_rows_are_not_shared():
    prompt = [1, IMG, IMG, 2]
    ids, pos, cu = _packed([prompt + [5], prompt + [6]])
    thw = torch.tensor([[1, 2, 4]] * 2)
    chunks = [torch.randn(8, 3), torch.randn(8, 3)]
    plan = plan_prefix_rows(ids, pos, cu, IMG, chunks, thw, MERGE, pad_token=0)
    assert plan.input_ids.tolist() == [prompt + [5] + prompt + [6]] and plan.images == [0, 1]  # two blocks
    same = [chunks[0], chunks[0]]
    ids, pos, cu = _packed([prompt + [5] * 10, prompt + [6] * 10])  # long suffixes: one row of 24 > 2 of 14
    plan = plan_prefix_rows(ids, pos, cu, IMG, same, thw, MERGE, pad_token=0, token_cost=1.0, pair_cost=10.0)
    assert plan.input_ids.shape[0] == 2  # the wider row would cost more attention than it saves
    plan = plan_prefix_rows(ids, pos, cu, IMG, same, thw, MERGE, pad_token=0)
    assert plan.input_ids.shape[0] == 1


def test_text_rows_and_bad_inputs():
    ids, pos, cu = _packed([[1, 2, 3, 3], [1, 2, 3, 4], [1, 2, 8, 8]])
    plan = plan_prefix_rows(ids, pos, cu, IMG, [], None, MERGE, pad_token=0)
    assert plan.input_ids.tolist() == [[1, 2, 3, 3, 3, 4, 8, 8]]  # the common prefix shrinks to [1, 2]
    assert torch.equal(plan.input_ids[plan.rows, plan.cols], ids[0])
    ids, pos, cu = _packed([[1, 2, 3], [1, 2, 4], [1, 5]])
    plan = plan_prefix_rows(ids, pos, cu, IMG, [], None, MERGE, pad_token=0)
    assert plan.input_ids.tolist() == [[1, 2, 3, 4, 1, 5]]  # [1, 5] would save nothing: a block of its own
    with pytest.raises(ValueError, match="cu_seqlens"):
        plan_prefix_rows(ids, pos, cu[:-1], IMG, [], None, MERGE, pad_token=0)
    with pytest.raises(ValueError, match="image_grid_thw"):
        plan_prefix_rows(torch.tensor([[IMG, IMG, 1]]), pos[:, :, :3], torch.tensor([0, 3]), IMG, [], None,
                         MERGE, pad_token=0)
