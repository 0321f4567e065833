"""What a full (TP=1/PP=1) model holds, read from the family weight-map table and the HF config.

* :func:`megatron_names` -- every global megatron parameter name, in weight-map order;
* :func:`expected_hf_names` -- the on-disk HF names those come from (for missing/extra checks);
* :func:`ckpt_location` -- where a global name lives in a megatron dist checkpoint: megatron-core
  stacks the decoder layers, so ``language_model.decoder.layers.{i}.X`` is slice ``i`` (axis 0)
  of the sharded tensor keyed ``language_model.decoder.layers.X``;
* :func:`groups` -- names cut into streaming units: one decoder layer, one vision block, or one
  other tensor each (the embedding and output layer are the largest single tensors).
"""

from __future__ import annotations

from r1vfree_mcore.models.common.hf_config import text_config, tied_embeddings
from r1vfree_mcore.models.common.weight_loading import weight_map_of

DECODER_PREFIX = "language_model.decoder.layers."
VISION_PREFIX = "vision.blocks."
OUTPUT_LAYER = "language_model.output_layer.weight"


def _repeat_count(template: str, hf_config) -> int:
    if template.startswith(DECODER_PREFIX):
        return text_config(hf_config).num_hidden_layers
    if template.startswith(VISION_PREFIX):
        return hf_config.vision_config.depth
    raise KeyError(f"weight-map rule {template!r} has an index but no known repeat count")


def _expand(template: str, hf_names: tuple[str, ...], hf_config):
    if "{i}" not in template:
        yield template, hf_names, None
        return
    for i in range(_repeat_count(template, hf_config)):
        yield template.replace("{i}", str(i)), tuple(n.replace("{i}", str(i)) for n in hf_names), i


def rule_entries(hf_config):
    """``(global megatron name, HF names, index or None)`` of every parameter of a full model."""
    tied = tied_embeddings(hf_config)
    for rule in weight_map_of(hf_config):
        if tied and rule.megatron == OUTPUT_LAYER:
            continue  # tied: the output layer is the embedding
        yield from _expand(rule.megatron, rule.hf, hf_config)


def megatron_names(hf_config) -> list[str]:
    """Global names of every parameter of a TP=1/PP=1 model (tied output layer excluded)."""
    return [name for name, _, _ in rule_entries(hf_config)]


def expected_hf_names(hf_config) -> set[str]:
    """On-disk names every complete HF checkpoint of this config holds (lm_head only if untied)."""
    return {n for _, names, _ in rule_entries(hf_config) for n in names}


def optional_hf_names(hf_config) -> set[str]:
    """Names allowed but not required (a tied checkpoint may still carry ``lm_head.weight``)."""
    return {"lm_head.weight"} if tied_embeddings(hf_config) else set()


def ckpt_location(global_name: str) -> tuple[str, int | None]:
    """(dist-checkpoint key, stacked layer index or None) of a global megatron name."""
    if global_name.startswith(DECODER_PREFIX):
        idx, rest = global_name[len(DECODER_PREFIX):].split(".", 1)
        return DECODER_PREFIX + rest, int(idx)
    return global_name, None


def groups(hf_config) -> list[list[str]]:
    """Global names cut into streaming units (decoder layer, vision block, or single tensor)."""
    out: dict[tuple, list[str]] = {}
    for name, _, idx in rule_entries(hf_config):
        if idx is None:
            key = (name, None)
        else:
            key = (DECODER_PREFIX if name.startswith(DECODER_PREFIX) else VISION_PREFIX, idx)
        out.setdefault(key, []).append(name)  # first seen -> weight-map order, indices ascending
    return list(out.values())
