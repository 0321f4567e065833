"""THD sequence packing for the log-prob and training passes (``grpo.pack_sequences``).

A micro-batch of padded rollouts ``[b, P + C]`` (prompts left-padded, completions right-padded
after their EOS) becomes one packed row ``[1, T]`` of real tokens only
(:func:`~r1vfree_mcore.models.common.packing.pack_sequences`: mrope positions per sequence,
``cu_seqlens`` for attention, T rounded up to a multiple of 16 for FP8 GEMMs). ``completion_pos``
``[b, C]`` says which packed position predicts each completion token, so the loss side picks
``logits[0, completion_pos]`` and everything after it (log-probs, entropy, the GRPO loss) is the
padded path's. Padding costs no FLOPs, which matters most for rollouts of uneven length.
"""

from __future__ import annotations

import torch

from r1vfree_mcore.models.common.packing import pack_sequences

PACK_MULTIPLE = 16


def pack_microbatch(mb: dict, hf_config, pad_token_id: int = 0) -> dict:
    """The packed form of a micro-batch built by ``train.step.microbatches`` (a new dict)."""
    pk = pack_sequences(mb["input_ids"], mb["attention_mask"], mb["image_grid_thw"], hf_config,
                        pad_to_multiple=PACK_MULTIPLE, pad_token_id=pad_token_id)
    b, s = mb["input_ids"].shape
    where = torch.full((b, s), -1, dtype=torch.long)
    where[pk.index.rows, pk.index.cols] = torch.arange(len(pk.index.rows))
    p, c = mb["prompt_len"], mb["completion_ids"].shape[1]
    # Column p - 1 + j predicts completion token j; it is a real token wherever token j is
    # (left-padded prompts end at column p - 1, completions are a prefix of their columns).
    pos = where[:, p - 1 : p - 1 + c]
    live = mb["completion_mask"].bool()
    if bool((pos[live] < 0).any()):
        raise ValueError("pack_microbatch: a live completion token is predicted from a padding position")
    return {**mb, "input_ids": pk.input_ids, "attention_mask": None, "position_ids": pk.position_ids,
            "cu_seqlens": pk.cu_seqlens, "max_seqlen": pk.max_seqlen, "completion_pos": pos.clamp(min=0)}


def packed_forward(model, mb: dict) -> torch.Tensor:
    """The policy's forward on a packed micro-batch: logits ``[1, T, V/TP]`` on the last stage."""
    from megatron.core.packed_seq_params import PackedSeqParams

    cu, m = mb["cu_seqlens"], mb["max_seqlen"]
    params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=m, max_seqlen_kv=m)
    return model(input_ids=mb["input_ids"], position_ids=mb["position_ids"], pixel_values=mb.get("pixel_values"),
                 image_grid_thw=mb.get("image_grid_thw"), packed_seq_params=params)


def completion_logits(logits: torch.Tensor, mb: dict) -> torch.Tensor:
    """``[b, C, V/TP]`` logits predicting each completion token, packed or padded micro-batch."""
    if mb.get("completion_pos") is not None:
        return logits[0, mb["completion_pos"]]
    p = mb["prompt_len"]
    # Position t predicts token t+1: completion token j is predicted at p - 1 + j.
    return logits[:, p - 1 : p - 1 + mb["completion_ids"].shape[1]]
