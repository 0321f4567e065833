"""Qwen2-VL / Qwen2.5-VL policy models on megatron-core (vision tower + mrope GPT decoder).

Public entry points: :func:`build_model`, :func:`family_of`, :func:`get_rope_index`,
:func:`load_hf_state_dict`, :func:`export_hf_state_dict`.

The names are resolved on first use (PEP 562): importing a submodule such as the weight maps
(the HF export of ``r1vfree-convert mcore-to-hf``) then does not import megatron-core (~1-3 s).
"""

from importlib import import_module

_EXPORTS = {
    "QwenVLModel": "vlm",
    "build_model": "vlm",
    "mask_padded_vocab": "vlm",
    "padded_vocab_size": "vlm",
    "export_hf_state_dict": "weight_loading",
    "load_hf_state_dict": "weight_loading",
    "family_of": "hf_config",
    "get_rope_index": "rope_index",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"r1vfree_mcore.models.common.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
