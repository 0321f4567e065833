"""Runs of identical consecutive images (GRPO's G copies) are encoded once: same features, same grads."""

from __future__ import annotations

import pytest
import torch

from _vlm_harness import make_checkpoint
from r1vfree_mcore.models.common.vision import repeated_images
from r1vfree_mcore.testing.distributed import run_distributed


def test_repeated_images_groups_consecutive_equal_images_only():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    c = torch.randn(8, 3, generator=g)
    thw = torch.tensor([[1, 2, 2], [1, 2, 2], [1, 2, 2], [1, 2, 4], [1, 2, 2], [1, 2, 2]])
    pv = torch.cat([a, a, b, c, a, a])  # a a | b | c | a a (the second run of a is separate)
    keep, inverse = repeated_images(pv, thw, thw.prod(-1).tolist())
    assert keep == [0, 2, 3, 4]
    assert inverse == [0, 0, 1, 2, 3, 3]
    b_like_a = a.clone()
    b_like_a[-1, -1] += 1e-6  # one pixel differs: not a repeat
    keep, _ = repeated_images(torch.cat([a, b_like_a]), thw[:2], [4, 4])
    assert keep == [0, 1]


def _encode_checks(rank, world, ckpts):
    from transformers import AutoConfig

    from r1vfree_mcore.conversion.hf_io import HFReader
    from r1vfree_mcore.models import build_model, load_hf_state_dict
    from r1vfree_mcore.parallel.state import ParallelConfig, destroy_parallel, initialize_parallel

    out = {}
    for ckpt in ckpts:
        initialize_parallel(ParallelConfig())
        cfg = AutoConfig.from_pretrained(ckpt)
        model = build_model(cfg, ParallelConfig())
        load_hf_state_dict(model, HFReader(ckpt), cfg)
        vision = model.vision
        dims = vision.dims
        g = torch.Generator().manual_seed(3)
        grids = [(1, 4, 6), (1, 8, 4)]
        imgs = [torch.randn(t * h * w, dims.patch_dim, generator=g) for t, h, w in grids]
        order = [0, 0, 0, 1, 1, 0]  # three copies, two copies, then the first image again
        pv = torch.cat([imgs[i] for i in order])
        thw = torch.tensor([grids[i] for i in order])
        seen = []
        encode = vision._features

        def counting(p, t):
            seen.append(p.shape[0])
            return encode(p, t)

        vision._features = counting
        feats = vision(pv, thw)
        vision._features = encode
        w = torch.randn(feats.shape, generator=g)
        (feats * w).sum().backward()
        grads = {n: p.grad.clone() for n, p in vision.named_parameters()}
        vision.zero_grad()
        ref = vision._features(pv, thw)  # every copy encoded separately
        (ref * w).sum().backward()
        out[cfg.model_type] = {
            "patches_encoded": seen,
            "unique_patches": sum(t * h * w for t, h, w in (grids[0], grids[1], grids[0])),
            "shape_equal": feats.shape == ref.shape,
            "feat_diff": float((feats - ref).abs().max()),
            "grad_rel_diff": max(float((p.grad - grads[n]).abs().max() / (grads[n].abs().max() + 1e-12))
                                 for n, p in vision.named_parameters()),
        }
        destroy_parallel()
    return out


@pytest.mark.slow
def test_repeated_images_encoded_once_with_equal_features_and_grads(tmp_path):
    ckpts = [str(make_checkpoint(tmp_path, fam, tied=False)) for fam in ("qwen2_vl", "qwen2_5_vl")]
    (res,) = run_distributed(_encode_checks, 1, ckpts)
    for fam, r in res.items():
        assert r["patches_encoded"] == [r["unique_patches"]], (fam, r)
        assert r["shape_equal"], (fam, r)
        assert r["feat_diff"] <= 1e-5, (fam, r)
        assert r["grad_rel_diff"] <= 1e-4, (fam, r)
