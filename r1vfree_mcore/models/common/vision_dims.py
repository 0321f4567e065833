"""Sizes of a Qwen-VL vision tower, read from the HF vision_config (no megatron, no torch).

The converters' HF export needs these head layouts without building a model, so they live apart
from the TransformerConfigs (:mod:`r1vfree_mcore.models.common.configs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from r1vfree_mcore.models.common.hf_config import family_of, vision_rope_theta


@dataclass(frozen=True)
class VisionDims:
    """Resolved sizes of a Qwen-VL vision tower (each family fills it from its vision_config)."""

    depth: int
    hidden: int
    heads: int
    ffn_hidden: int
    out_hidden: int  # merger output = decoder hidden size
    patch_size: int
    temporal_patch_size: int
    in_channels: int
    spatial_merge_size: int
    norm: str  # 'LayerNorm' | 'RMSNorm'
    gated: bool  # gated (SwiGLU-style) MLP
    activation: str  # key of ACTIVATIONS
    rope_theta: float
    window_size: int | None = None  # Qwen2.5-VL window attention (pixels); None = full attention
    fullatt_block_indexes: tuple[int, ...] = ()

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def merged_hidden(self) -> int:
        return self.hidden * self.spatial_merge_size**2

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size**2


def shared_vision_fields(vc) -> dict[str, Any]:
    """The VisionDims fields both families spell the same way in their vision_config."""
    return dict(
        depth=vc.depth,
        heads=vc.num_heads,
        patch_size=vc.patch_size,
        temporal_patch_size=vc.temporal_patch_size,
        in_channels=getattr(vc, "in_channels", getattr(vc, "in_chans", 3)),
        spatial_merge_size=vc.spatial_merge_size,
        rope_theta=vision_rope_theta(vc),
    )


def vision_dims_of(hf_config) -> VisionDims:
    """The family's vision sizes read from ``hf_config.vision_config``."""
    if family_of(hf_config) == "qwen2_vl":
        from r1vfree_mcore.models.qwen2_vl.arch import vision_dims
    else:
        from r1vfree_mcore.models.qwen2_5_vl.arch import vision_dims
    return vision_dims(hf_config.vision_config)
