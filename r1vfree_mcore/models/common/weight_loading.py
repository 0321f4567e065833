"""Fill a model stage from HF tensors, and export full HF tensors, via the family weight maps.

Names: *local* = this stage's parameter names; *global* = the same with the decoder layer index
made global (local + the stage's layer offset), i.e. the names of a TP=1/PP=1 model.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Mapping, Union

import torch
import torch.distributed as dist

from r1vfree_mcore.models.common.hf_config import family_of, head_dim, text_config, tied_embeddings
from r1vfree_mcore.models.common.weight_rules import Rule, hf_aliases
from r1vfree_mcore.models.common.weight_transforms import (
    ConvertCtx,
    QKVShape,
    hf_to_megatron,
    megatron_to_hf,
    merge_tp,
    split_tp,
)

HFSource = Union[Mapping[str, torch.Tensor], Callable[[str], torch.Tensor]]
_DECODER_LAYER = re.compile(r"^language_model\.decoder\.layers\.(\d+)\.")


def weight_map_of(hf_config) -> tuple[Rule, ...]:
    """The family's declarative rule table."""
    if family_of(hf_config) == "qwen2_vl":
        from r1vfree_mcore.models.qwen2_vl.weight_map import WEIGHT_MAP
    else:
        from r1vfree_mcore.models.qwen2_5_vl.weight_map import WEIGHT_MAP
    return WEIGHT_MAP


def convert_ctx(hf_config, padded_vocab_size: int) -> ConvertCtx:
    """Head layouts and vocab sizes the converters need."""
    from r1vfree_mcore.models.common.vlm import vision_dims_of

    tc = text_config(hf_config)
    vd = vision_dims_of(hf_config)
    return ConvertCtx(
        text_qkv=QKVShape(tc.num_attention_heads, tc.num_key_value_heads, head_dim(tc)),
        vision_qkv=QKVShape(vd.heads, vd.heads, vd.head_dim),
        vocab_size=tc.vocab_size,
        padded_vocab_size=padded_vocab_size,
    )


@lru_cache(maxsize=None)
def _compiled(rules: tuple[Rule, ...]):
    return [(re.compile("^" + re.escape(r.megatron).replace(r"\{i\}", r"(\d+)") + "$"), r) for r in rules]


def match_rule(rules: tuple[Rule, ...], global_name: str) -> tuple[Rule, str | None]:
    """(rule, layer index or None) for a global megatron name; KeyError if no rule covers it."""
    for pattern, rule in _compiled(rules):
        m = pattern.match(global_name)
        if m:
            return rule, (m.group(1) if m.groups() else None)
    raise KeyError(f"no HF weight-map rule for megatron parameter {global_name!r}")


def global_name(model, local: str) -> str:
    """Local stage parameter name -> TP=1/PP=1 name (global decoder layer index)."""
    return _DECODER_LAYER.sub(lambda m: f"language_model.decoder.layers.{int(m[1]) + model.layer_offset}.", local)


def _hf_names(rule: Rule, idx: str | None, tied: bool) -> tuple[str, ...]:
    if tied and rule.megatron == "language_model.output_layer.weight":
        return ("model.embed_tokens.weight",)  # a tied output layer (PP>1 copy) starts as the embedding
    return tuple(n.replace("{i}", idx) if idx is not None else n for n in rule.hf)


def _fetch(source: HFSource, name: str) -> torch.Tensor:
    for alias in hf_aliases(name):
        if callable(source):
            try:
                return source(alias)
            except KeyError:
                continue
        elif alias in source:
            return source[alias]
    raise KeyError(f"HF tensor {name!r} not found (also tried {hf_aliases(name)[1:]})")


def _tp():
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_group()


@torch.no_grad()
def load_hf_state_dict(model, hf_tensors: HFSource, hf_config=None) -> list[str]:
    """Copy this rank's TP/PP shard of every parameter from HF tensors; returns the local names.

    ``hf_tensors``: a mapping or a getter ``name -> Tensor`` (raising KeyError when absent), in
    either HF key layout. Every parameter of ``model`` must be covered, or KeyError is raised.
    """
    hf_config = hf_config or model.hf_config
    rules, tied = weight_map_of(hf_config), tied_embeddings(hf_config)
    ctx = convert_ctx(hf_config, model.padded_vocab_size)
    tp, rank, _ = _tp()
    loaded = []
    for local, param in model.named_parameters():
        rule, idx = match_rule(rules, global_name(model, local))
        hf = [_fetch(hf_tensors, n).to(torch.float32) for n in _hf_names(rule, idx, tied)]
        shard = split_tp(rule.split, hf_to_megatron(rule.convert, hf, ctx), tp, rank)
        if shard.shape != param.shape:
            raise ValueError(
                f"{local}: shape {tuple(param.shape)} but HF {_hf_names(rule, idx, tied)} give {tuple(shard.shape)}"
            )
        param.copy_(shard)
        loaded.append(local)
    return loaded


def gather_full_tensors(model, tensors: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Full (TP-merged) megatron tensors of this stage under global names.

    ``tensors`` maps local parameter names to per-rank shards (default: the parameters; pass
    e.g. grads to merge those). Collective over the TP group.
    """
    rules = weight_map_of(model.hf_config)
    tp, _, group = _tp()
    out = {}
    for local, param in model.named_parameters():
        t = (tensors[local] if tensors is not None else param).detach()
        name = global_name(model, local)
        rule, _ = match_rule(rules, name)
        if tp > 1:
            parts = [torch.empty_like(t) for _ in range(tp)]
            dist.all_gather(parts, t.contiguous(), group=group)
        else:
            parts = [t]
        out[name] = merge_tp(rule.split, parts)
    return out


def export_hf_state_dict(model_or_full: Union[torch.nn.Module, Mapping[str, torch.Tensor]], hf_config=None,
                         padded_vocab_size: int | None = None) -> dict[str, torch.Tensor]:
    """Full HF tensors (on-disk 4.x names) from full megatron weights.

    Pass a TP=1/PP=1 model, or a mapping of global megatron names to full tensors (e.g. from
    :func:`gather_full_tensors`, merged over stages). Padded vocab rows are dropped; with tied
    embeddings no ``lm_head.weight`` is written (HF ties it on load).
    """
    if isinstance(model_or_full, torch.nn.Module):
        model = model_or_full
        hf_config = hf_config or model.hf_config
        padded_vocab_size = model.padded_vocab_size
        full = {global_name(model, n): p.detach() for n, p in model.named_parameters()}
    else:
        full = dict(model_or_full)
        if hf_config is None:
            raise ValueError("export_hf_state_dict needs hf_config with a mapping of tensors")
    rules, tied = weight_map_of(hf_config), tied_embeddings(hf_config)
    ctx = convert_ctx(hf_config, padded_vocab_size or text_config(hf_config).vocab_size)
    out = {}
    for name, tensor in full.items():
        rule, idx = match_rule(rules, name)
        if tied and rule.megatron == "language_model.output_layer.weight":
            continue
        names = _hf_names(rule, idx, tied)
        shapes = None
        if rule.convert == "patch":
            shapes = [_patch_shape(hf_config, tensor)]
        for n, t in zip(names, megatron_to_hf(rule.convert, tensor, ctx, shapes)):
            out[n] = t.contiguous()
    return out


def _patch_shape(hf_config, tensor):
    vc = hf_config.vision_config
    c = getattr(vc, "in_channels", getattr(vc, "in_chans", 3))
    return (tensor.shape[0], c, vc.temporal_patch_size, vc.patch_size, vc.patch_size)
