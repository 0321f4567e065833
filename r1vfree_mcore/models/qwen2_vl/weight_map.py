"""Qwen2-VL HF <-> megatron weight map (data; transforms live in models/common)."""

from r1vfree_mcore.models.common import weight_rules as W
from r1vfree_mcore.models.common.weight_rules import Rule

_MC, _HF = "vision.blocks.{i}.", "visual.blocks.{i}."

VISION_RULES: tuple[Rule, ...] = (
    W.PATCH_EMBED_RULE,
    *(Rule(_MC + f"input_layernorm.{p}", (_HF + f"norm1.{p}",)) for p in ("weight", "bias")),
    *(Rule(_MC + f"pre_mlp_layernorm.{p}", (_HF + f"norm2.{p}",)) for p in ("weight", "bias")),
    *W.attention_rules(_MC, _HF, "attn.qkv", "attn.proj"),
    Rule(_MC + "mlp.linear_fc1.weight", (_HF + "mlp.fc1.weight",), "copy", "dim0"),
    Rule(_MC + "mlp.linear_fc1.bias", (_HF + "mlp.fc1.bias",), "copy", "dim0"),
    Rule(_MC + "mlp.linear_fc2.weight", (_HF + "mlp.fc2.weight",), "copy", "dim1"),
    Rule(_MC + "mlp.linear_fc2.bias", (_HF + "mlp.fc2.bias",)),
    *W.merger_rules(("weight", "bias")),  # LayerNorm
)

WEIGHT_MAP: tuple[Rule, ...] = VISION_RULES + W.DECODER_RULES
