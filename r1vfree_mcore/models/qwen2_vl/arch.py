"""Qwen2-VL vision sizes from the HF vision_config."""

from __future__ import annotations

from r1vfree_mcore.models.common.vision_dims import VisionDims, shared_vision_fields


def vision_dims(vc) -> VisionDims:
    """Qwen2-VL: hidden = embed_dim, LayerNorm, QuickGELU MLP of embed_dim x mlp_ratio, full attention."""
    return VisionDims(
        hidden=vc.embed_dim,
        ffn_hidden=int(vc.embed_dim * vc.mlp_ratio),
        out_hidden=vc.hidden_size,
        norm="LayerNorm",
        gated=False,
        activation=getattr(vc, "hidden_act", "quick_gelu"),
        **shared_vision_fields(vc),
    )
