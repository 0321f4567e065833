"""The local (pure torch) backend: megatron-core parallel linears, torch norms, DotProductAttention.

Attention masks are explicit booleans (True = masked): the decoder gets causal | key-padding
``[b, 1, s, s]``, the vision tower a block-diagonal ``[1, 1, n, n]`` per image / window.
"""

from __future__ import annotations

import torch

from r1vfree_mcore.models.common.masks import block_diagonal_mask
from r1vfree_mcore.models.common.packing import packed_causal_mask
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.torch_norm import WrappedTorchNorm


class LocalBackend:
    """Modules and masks for the local spec."""

    name = "local"
    column_parallel_linear = ColumnParallelLinear
    row_parallel_linear = RowParallelLinear
    norm = WrappedTorchNorm
    core_attention = DotProductAttention
    decoder_mask_type = AttnMaskType.arbitrary
    vision_mask_type = AttnMaskType.arbitrary

    @staticmethod
    def decoder_mask(attention_mask: torch.Tensor | None, seq_len: int, batch: int,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """causal | key padding, ``[b, 1, s, s]`` bool, True = masked (HF 1/0 padding mask in), on
        the padding mask's device (else ``device``, else the CPU)."""
        if attention_mask is not None:
            device = attention_mask.device
        causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu(1)
        mask = causal.view(1, 1, seq_len, seq_len).expand(batch, 1, seq_len, seq_len)
        if attention_mask is not None:
            mask = mask | ~attention_mask.bool().view(batch, 1, 1, seq_len)
        return mask

    vision_mask = staticmethod(block_diagonal_mask)

    @staticmethod
    def packed_decoder_inputs(packed_seq_params):
        """(mask, None) for a packed row: DotProductAttention takes no THD, so the segments of
        ``cu_seqlens_q`` become a block-diagonal causal ``[1, 1, T, T]`` mask (same result)."""
        return packed_causal_mask(packed_seq_params.cu_seqlens_q), None
