"""KV-cache inference with megatron-core's static context (model side).

megatron-core's :class:`StaticInferenceContext` holds one ``[max_len, batch, groups, head_dim]``
key / value buffer per attention layer of this pipeline stage (allocated on first use, keys
stored *before* rotary, so rope is re-applied over the whole cached prefix each step: mrope
positions of any shape work). The caller advances ``sequence_len_offset`` after every forward.

What megatron does not do, and this module does: left padding and finished rows. The attention
mask of a cached step covers the cached keys plus the new ones (``[b, 1, new, offset + new]``):
causal among the new tokens, and every padded / finished key masked for every query.
"""

from __future__ import annotations

import torch


def new_static_context(batch: int, max_sequence_length: int):
    """A fresh megatron static KV-cache context for ``batch`` rows of up to ``max_sequence_length`` tokens."""
    from megatron.core.inference.contexts import StaticInferenceContext

    if batch < 1 or max_sequence_length < 1:
        raise ValueError(f"KV cache needs batch >= 1 and max_sequence_length >= 1, got {batch}, {max_sequence_length}")
    return StaticInferenceContext(batch, max_sequence_length)


def repeat_cached_rows(context, source: torch.Tensor) -> None:
    """Fill cache rows ``0..len(source)-1`` with rows ``source`` (a ``[N]`` index) for the tokens
    cached so far, in every layer's key / value buffer of this stage.

    Used after prefilling only the distinct prompts into the first rows: row ``i`` then holds
    exactly what prefilling its own (identical) prompt would have written.
    """
    end = context.sequence_len_offset
    n = len(source)
    for keys, values in context.key_value_memory_dict.values():
        if n > keys.shape[1]:
            raise ValueError(f"repeat_cached_rows: {n} rows for a cache of batch {keys.shape[1]}")
        keys[:end, :n] = keys[:end, source.to(keys.device)]
        values[:end, :n] = values[:end, source.to(values.device)]


def cached_decoder_mask(key_mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Boolean mask (True = masked) ``[b, 1, new_tokens, L]`` for ``new_tokens`` queries over ``L`` keys.

    ``key_mask`` is the HF-style 1/0 mask ``[b, L]`` of every key so far (cached + new); the new
    tokens are the last ``new_tokens`` of them, each seeing the keys up to itself.
    """
    b, total = key_mask.shape
    if new_tokens > total:
        raise ValueError(f"attention_mask covers {total} keys but {new_tokens} new tokens were given")
    q = torch.arange(total - new_tokens, total, device=key_mask.device).view(-1, 1)
    k = torch.arange(total, device=key_mask.device).view(1, -1)
    causal = (k > q).view(1, 1, new_tokens, total)
    return causal | ~key_mask.bool().view(b, 1, 1, total)
