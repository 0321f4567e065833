"""Group-relative advantages (GRPO): each prompt's G completions are compared with each other."""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    eps: float = 1e-4,
    normalize_std: bool = True,
) -> torch.Tensor:
    """Advantages of ``rewards`` laid out as consecutive groups of ``group_size`` completions.

    ``normalize_std=True`` (original R1V-Free / GRPO): ``(r - mean_g) / (std_g + eps)`` with the
    unbiased std of the group. ``normalize_std=False`` (Dr. GRPO): ``r - mean_g``. A group whose
    rewards are all equal gets advantage 0.

    Args:
        rewards: ``[N]`` rewards, ``N % group_size == 0``; completions of one prompt adjacent.
    Returns:
        ``[N]`` advantages in ``rewards``' dtype promoted to at least fp32.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(
            f"len(rewards)={rewards.numel()} is not a multiple of group_size={group_size}"
        )
    if normalize_std and group_size < 2:
        raise ValueError("group_size must be >= 2 when normalize_std=True (unbiased std)")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf")
    # At least fp32 (the original computes in the rewards' fp32); fp64 input stays fp64.
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32)).view(-1, group_size)
    centered = r - r.mean(dim=1, keepdim=True)
    if not normalize_std:
        return centered.reshape(-1)
    adv = centered / (r.std(dim=1, unbiased=True, keepdim=True) + eps)
    # Exact zeros for constant groups even when eps == 0 (0 / 0 otherwise).
    return torch.where(centered == 0, torch.zeros_like(adv), adv).reshape(-1)
