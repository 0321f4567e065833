"""The pure fuse / split functions behind the weight maps."""

import pytest
import torch

from r1vfree_mcore.models.common.weight_transforms import (
    ConvertCtx,
    QKVShape,
    hf_to_megatron,
    megatron_to_hf,
    merge_tp,
    split_tp,
)

CTX = ConvertCtx(QKVShape(4, 2, 3), QKVShape(2, 2, 3), vocab_size=10, padded_vocab_size=16)


@pytest.mark.parametrize("split", ["replicated", "dim0", "dim1", "gate_up"])
@pytest.mark.parametrize("tp", [1, 2, 4])
def test_split_merge_round_trip(split, tp):
    full = torch.randn(16, 8)
    shards = [split_tp(split, full, tp, r) for r in range(tp)]
    assert torch.equal(merge_tp(split, shards), full)


def test_gate_up_shard_is_cat_of_gate_and_up_chunks():
    gate, up = torch.randn(8, 4), torch.randn(8, 4)
    full = hf_to_megatron("gate_up", [gate, up], CTX)
    for i in range(2):
        want = torch.cat([gate.chunk(2)[i], up.chunk(2)[i]])
        assert torch.equal(split_tp("gate_up", full, 2, i), want)


def test_qkv_is_grouped_per_kv_head():
    s = CTX.text_qkv  # 4 heads, 2 groups, head_dim 3
    q = torch.arange(12.0).view(12, 1)
    k = 100 + torch.arange(6.0).view(6, 1)
    v = 200 + torch.arange(6.0).view(6, 1)
    fused = hf_to_megatron("qkv", [q, k, v], CTX)
    group0 = torch.cat([q[:6], k[:3], v[:3]])  # two query heads, then the group's k and v
    assert torch.equal(fused[:12], group0)
    assert [torch.equal(a, b) for a, b in zip(megatron_to_hf("qkv", fused, CTX), (q, k, v))] == [True] * 3
    assert s.groups == 2


def test_vision_qkv_permutes_to_per_head():
    qkv = torch.arange(18.0).view(18, 1)  # [Q_all(6); K_all(6); V_all(6)], 2 heads of 3
    fused = hf_to_megatron("vision_qkv", [qkv], CTX)
    assert fused[:9, 0].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14]  # head 0: q, k, v
    assert torch.equal(megatron_to_hf("vision_qkv", fused, CTX)[0], qkv)


def test_vocab_padding_round_trip():
    w = torch.randn(10, 4)
    padded = hf_to_megatron("vocab", [w], CTX)
    assert padded.shape == (16, 4) and (padded[10:] == 0).all()
    assert torch.equal(megatron_to_hf("vocab", padded, CTX)[0], w)


@pytest.mark.parametrize("convert, split, sources", [
    ("copy", "dim0", [(12, 5)]),
    ("qkv", "dim0", [(12, 5), (6, 5), (6, 5)]),  # 4 heads / 2 KV groups, head_dim 3
    ("qkv", "dim0", [(12,), (6,), (6,)]),  # its bias
    ("vision_qkv", "dim0", [(18, 6)]),
    ("gate_up", "gate_up", [(8, 3), (8, 3)]),
])
@pytest.mark.parametrize("tp", [1, 2])
def test_row_runs_rebuild_what_the_transforms_build(convert, split, sources, tp):
    """Assembling a shard run by run from the HF tensors gives exactly the transform's shard."""
    from r1vfree_mcore.models.common.row_runs import moves_rows_only, row_runs

    assert moves_rows_only(convert, split, tp)
    hf = [torch.randn(shape) for shape in sources]
    for rank in range(tp):
        want = split_tp(split, hf_to_megatron(convert, hf, CTX), tp, rank)
        got = torch.full_like(want, float("nan"))
        runs = row_runs(convert, split, [t.shape[0] for t in hf], CTX, tp, rank)
        for src, row, count, dst in runs:
            got[dst:dst + count] = hf[src][row:row + count]
        assert torch.equal(got, want), (convert, tp, rank)
        assert len(runs) < want.shape[0] or want.shape[0] <= 3  # runs, not single rows


def test_row_runs_are_refused_for_transforms_that_change_values_or_columns():
    from r1vfree_mcore.models.common.row_runs import moves_rows_only

    assert not moves_rows_only("vocab", "dim0", 1)  # padding rows are new zeros
    assert not moves_rows_only("patch", "replicated", 1)  # a reshape across dims
    assert not moves_rows_only("copy", "dim1", 2)  # a column split
    assert moves_rows_only("copy", "dim1", 1)  # at TP=1 the split does nothing
