"""Qwen2.5-VL HF <-> megatron weight map (data; transforms live in models/common)."""

from r1vfree_mcore.models.common import weight_rules as W
from r1vfree_mcore.models.common.weight_rules import Rule

_MC, _HF = "vision.blocks.{i}.", "visual.blocks.{i}."

VISION_RULES: tuple[Rule, ...] = (
    W.PATCH_EMBED_RULE,
    Rule(_MC + "input_layernorm.weight", (_HF + "norm1.weight",)),  # RMSNorm: no bias
    Rule(_MC + "pre_mlp_layernorm.weight", (_HF + "norm2.weight",)),
    *W.attention_rules(_MC, _HF, "attn.qkv", "attn.proj"),
    *(
        Rule(_MC + f"mlp.linear_fc1.{p}", (_HF + f"mlp.gate_proj.{p}", _HF + f"mlp.up_proj.{p}"), "gate_up", "gate_up")
        for p in ("weight", "bias")
    ),
    Rule(_MC + "mlp.linear_fc2.weight", (_HF + "mlp.down_proj.weight",), "copy", "dim1"),
    Rule(_MC + "mlp.linear_fc2.bias", (_HF + "mlp.down_proj.bias",)),
    *W.merger_rules(("weight",)),  # RMSNorm
)

WEIGHT_MAP: tuple[Rule, ...] = VISION_RULES + W.DECODER_RULES
