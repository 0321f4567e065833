"""Qwen2-VL / Qwen2.5-VL policy models on megatron-core (vision tower + mrope GPT decoder).

Public entry points: :func:`build_model`, :func:`family_of`, :func:`get_rope_index`,
:func:`load_hf_state_dict`, :func:`export_hf_state_dict`.
"""

from r1vfree_mcore.models.common.hf_config import family_of
from r1vfree_mcore.models.common.rope_index import get_rope_index
from r1vfree_mcore.models.common.vlm import QwenVLModel, build_model, mask_padded_vocab, padded_vocab_size
from r1vfree_mcore.models.common.weight_loading import export_hf_state_dict, load_hf_state_dict

__all__ = [
    "QwenVLModel",
    "build_model",
    "export_hf_state_dict",
    "family_of",
    "get_rope_index",
    "load_hf_state_dict",
    "mask_padded_vocab",
    "padded_vocab_size",
]
