"""Group-relative advantages vs the original R1V-Free formula."""

from __future__ import annotations

import pytest
import torch

from r1vfree_mcore.grpo.advantages import group_advantages


def _original(rewards, g):
    # R1V-Free / early TRL GRPOTrainer, verbatim in spirit
    mean = rewards.view(-1, g).mean(dim=1).repeat_interleave(g, dim=0)
    std = rewards.view(-1, g).std(dim=1).repeat_interleave(g, dim=0)
    return (rewards - mean) / (std + 1e-4)


def test_matches_original_formula_exactly():
    rewards = torch.rand(24, generator=torch.Generator().manual_seed(0)) * 2
    torch.testing.assert_close(group_advantages(rewards, 8), _original(rewards, 8), rtol=0,
                               atol=0)


def test_dr_grpo_and_constant_groups():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    adv = group_advantages(rewards, 4, normalize_std=False)
    assert torch.equal(adv, torch.tensor([0.5, -0.5, 0.5, -0.5, 0.0, 0.0, 0.0, 0.0]))
    adv_std = group_advantages(rewards, 4)
    assert torch.all(adv_std[4:] == 0)
    assert torch.all(group_advantages(rewards, 4, eps=0.0)[4:] == 0)  # no 0/0
    # unbiased std of [1,0,1,0] = sqrt(1/3)
    torch.testing.assert_close(adv_std[0], torch.tensor(0.5 / (3 ** -0.5 + 1e-4)))


def test_bad_inputs():
    with pytest.raises(ValueError, match="multiple of group_size=4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 4), 4)
    with pytest.raises(ValueError, match="NaN"):
        group_advantages(torch.tensor([0.0, float("nan")]), 2)
    with pytest.raises(ValueError, match="normalize_std"):
        group_advantages(torch.zeros(4), 1)
