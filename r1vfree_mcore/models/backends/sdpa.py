"""Torch SDPA core attention for the local spec: the fallback when TransformerEngine is missing.

Same inputs and outputs as megatron-core's ``DotProductAttention`` (``[sq, b, np, hn]`` query,
``[sk, b, ng, hn]`` key/value, boolean mask with True = masked), computed with
``torch.nn.functional.scaled_dot_product_attention`` so GPUs use the memory-efficient kernel
instead of materialising ``[b * heads, sq, sk]`` scores. Masked scores get the dtype's lowest
value rather than ``-inf``: a query row with every key masked (a left-padding position) then gets
uniform weights and finite output, as in ``DotProductAttention``, instead of NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention

from r1vfree_mcore.models.backends.local import LocalBackend


class SDPAttention(DotProductAttention):
    """``DotProductAttention`` with its math replaced by torch SDPA (see module doc)."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None or self.softmax_offset is not None:
            raise NotImplementedError("SDPAttention takes no packed_seq_params, attention_bias or softmax offset")
        groups = self.num_attention_heads_per_partition // self.num_query_groups_per_partition
        if groups > 1:
            key = key.repeat_interleave(groups, dim=2)
            value = value.repeat_interleave(groups, dim=2)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, np, s, hn]
        bias = None
        if attention_mask is not None:
            bias = torch.zeros(attention_mask.shape, dtype=q.dtype, device=q.device)
            bias.masked_fill_(attention_mask.to(q.device), torch.finfo(q.dtype).min)
        scale = self.softmax_scale
        if self.config.apply_query_key_layer_scaling:
            scale = scale * self.layer_number  # DotProductAttention divides, its softmax multiplies back
        p = self.config.attention_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=scale)
        sq, b = query.shape[0], query.shape[1]
        return out.permute(2, 0, 1, 3).reshape(sq, b, self.hidden_size_per_partition)


class LocalSDPABackend(LocalBackend):
    """The local spec with :class:`SDPAttention` (what ``transformer_engine`` falls back to)."""

    core_attention = SDPAttention
