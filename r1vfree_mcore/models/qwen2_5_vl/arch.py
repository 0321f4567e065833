"""Qwen2.5-VL vision sizes from the HF vision_config."""

from __future__ import annotations

from r1vfree_mcore.models.common.vision_dims import VisionDims, shared_vision_fields


def vision_dims(vc) -> VisionDims:
    """Qwen2.5-VL: RMSNorm, gated MLP with bias, window attention except fullatt_block_indexes."""
    return VisionDims(
        hidden=vc.hidden_size,
        ffn_hidden=vc.intermediate_size,
        out_hidden=vc.out_hidden_size,
        norm="RMSNorm",
        gated=True,
        activation=getattr(vc, "hidden_act", "silu"),
        window_size=vc.window_size,
        fullatt_block_indexes=tuple(vc.fullatt_block_indexes),
        **shared_vision_fields(vc),
    )
