"""Boolean attention masks (True = masked), shared by the backends."""

from __future__ import annotations

import torch


def block_diagonal_mask(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """``[1, 1, n, n]`` mask letting each token see only its own segment of ``cu_seqlens``."""
    n = int(cu_seqlens[-1])
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths)
    return (seg.view(-1, 1) != seg.view(1, -1)).view(1, 1, n, n)
