"""Read what the models need from an HF Qwen-VL config (transformers 4.x and 5.x layouts)."""

from __future__ import annotations

from typing import Any

# HF architecture / model_type -> our family name.
_FAMILIES = {
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "qwen2_vl": "qwen2_vl",
    "qwen2_5_vl": "qwen2_5_vl",
}


def family_of(hf_config: Any) -> str:
    """'qwen2_vl' or 'qwen2_5_vl' for an HF config; ValueError naming the architecture otherwise."""
    names = list(getattr(hf_config, "architectures", None) or []) + [getattr(hf_config, "model_type", None)]
    for name in names:
        if name in _FAMILIES:
            return _FAMILIES[name]
    raise ValueError(
        f"unknown architecture: config.architectures={getattr(hf_config, 'architectures', None)!r}, "
        f"config.model_type={getattr(hf_config, 'model_type', None)!r}; supported: "
        "Qwen2VLForConditionalGeneration, Qwen2_5_VLForConditionalGeneration"
    )


def text_config(hf_config: Any) -> Any:
    """The language-model sub-config (5.x ``text_config``; 4.x keeps the fields at top level)."""
    return getattr(hf_config, "text_config", None) or hf_config


def rope_params(hf_config: Any) -> tuple[float, list[int]]:
    """(rope_theta, mrope_section) of the decoder, from ``rope_parameters`` or 4.x ``rope_scaling``."""
    tc = text_config(hf_config)
    params = dict(getattr(tc, "rope_parameters", None) or {})
    legacy = dict(getattr(tc, "rope_scaling", None) or {})
    theta = params.get("rope_theta", getattr(tc, "rope_theta", None))
    section = params.get("mrope_section", legacy.get("mrope_section"))
    if theta is None:
        raise ValueError("text_config.rope_parameters['rope_theta'] is missing")
    if section is None:
        raise ValueError("text_config.rope_parameters['mrope_section'] is missing")
    return float(theta), [int(x) for x in section]


def vision_rope_theta(vision_config: Any) -> float:
    """The vision tower's 2-D rope base (10000 in every released Qwen-VL)."""
    params = dict(getattr(vision_config, "rope_parameters", None) or {})
    return float(params.get("rope_theta", getattr(vision_config, "rope_theta", 10000.0)))


def tied_embeddings(hf_config: Any) -> bool:
    """Whether lm_head shares the input embedding (top-level flag wins, as in HF)."""
    top = getattr(hf_config, "tie_word_embeddings", None)
    if top is not None:
        return bool(top)
    return bool(getattr(text_config(hf_config), "tie_word_embeddings", False))


def head_dim(tc: Any) -> int:
    """Attention head size of the decoder."""
    return getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
