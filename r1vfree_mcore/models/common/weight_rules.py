"""The shape of a weight-map table and the decoder rules both Qwen-VL families share.

A :class:`Rule` pairs one megatron parameter name template with the HF name templates it is made
from (``{i}`` = layer / block index), a ``convert`` kind and a TP ``split`` kind (see
:mod:`r1vfree_mcore.models.common.weight_transforms`). HF names are the on-disk (4.x) layout;
:func:`hf_aliases` gives the 5.x in-memory spelling.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    megatron: str
    hf: tuple[str, ...]
    convert: str = "copy"
    split: str = "replicated"


_LM = "language_model.decoder.layers.{i}."
_HF = "model.layers.{i}."

DECODER_RULES: tuple[Rule, ...] = (
    Rule("language_model.embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab", "dim0"),
    Rule(_LM + "input_layernorm.weight", (_HF + "input_layernorm.weight",)),
    Rule(
        _LM + "self_attention.linear_qkv.weight",
        tuple(_HF + f"self_attn.{p}_proj.weight" for p in "qkv"),
        "qkv",
        "dim0",
    ),
    Rule(
        _LM + "self_attention.linear_qkv.bias",
        tuple(_HF + f"self_attn.{p}_proj.bias" for p in "qkv"),
        "qkv",
        "dim0",
    ),
    Rule(_LM + "self_attention.linear_proj.weight", (_HF + "self_attn.o_proj.weight",), "copy", "dim1"),
    Rule(_LM + "pre_mlp_layernorm.weight", (_HF + "post_attention_layernorm.weight",)),
    Rule(
        _LM + "mlp.linear_fc1.weight",
        (_HF + "mlp.gate_proj.weight", _HF + "mlp.up_proj.weight"),
        "gate_up",
        "gate_up",
    ),
    Rule(_LM + "mlp.linear_fc2.weight", (_HF + "mlp.down_proj.weight",), "copy", "dim1"),
    Rule("language_model.decoder.final_layernorm.weight", ("model.norm.weight",)),
    Rule("language_model.output_layer.weight", ("lm_head.weight",), "vocab", "dim0"),
)


def attention_rules(mc: str, hf: str, qkv: str, proj: str) -> tuple[Rule, ...]:
    """Vision self-attention: fused HF qkv (weight+bias) and the output projection."""
    return (
        Rule(mc + "self_attention.linear_qkv.weight", (hf + qkv + ".weight",), "vision_qkv", "dim0"),
        Rule(mc + "self_attention.linear_qkv.bias", (hf + qkv + ".bias",), "vision_qkv", "dim0"),
        Rule(mc + "self_attention.linear_proj.weight", (hf + proj + ".weight",), "copy", "dim1"),
        Rule(mc + "self_attention.linear_proj.bias", (hf + proj + ".bias",)),
    )


def merger_rules(ln_params: tuple[str, ...]) -> tuple[Rule, ...]:
    """Patch merger: ``ln_q`` then Linear(0) -> GELU -> Linear(2)."""
    ln = tuple(Rule(f"vision.merger.ln_q.{p}", (f"visual.merger.ln_q.{p}",)) for p in ln_params)
    return ln + (
        Rule("vision.merger.mlp.linear_fc1.weight", ("visual.merger.mlp.0.weight",), "copy", "dim0"),
        Rule("vision.merger.mlp.linear_fc1.bias", ("visual.merger.mlp.0.bias",), "copy", "dim0"),
        Rule("vision.merger.mlp.linear_fc2.weight", ("visual.merger.mlp.2.weight",), "copy", "dim1"),
        Rule("vision.merger.mlp.linear_fc2.bias", ("visual.merger.mlp.2.bias",)),
    )


PATCH_EMBED_RULE = Rule("vision.patch_embed.weight", ("visual.patch_embed.proj.weight",), "patch")


def hf_aliases(name: str) -> list[str]:
    """Disk (4.x) name first, then the transformers-5 in-memory spelling of the same tensor."""
    if name.startswith("visual."):
        return [name, "model." + name]
    if name.startswith("model.") and not name.startswith("model.visual."):
        return [name, "model.language_model." + name[len("model."):]]
    return [name]
