"""Fill a model stage from HF tensors, and export full HF tensors, via the family weight maps.

Names: *local* = this stage's parameter names; *global* = the same with the decoder layer index
made global (local + the stage's layer offset), i.e. the names of a TP=1/PP=1 model.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Collection, Mapping, Union

import torch
import torch.distributed as dist

from r1vfree_mcore.models.common.hf_config import family_of, head_dim, text_config, tied_embeddings
from r1vfree_mcore.models.common.row_runs import moves_rows_only, row_runs
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
    from r1vfree_mcore.models.common.vision_dims import vision_dims_of

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


def hf_sources(model, local: str) -> tuple[Rule, tuple[str, ...]]:
    """(weight-map rule, HF tensor names) a local parameter of ``model`` is made from."""
    rule, idx = match_rule(weight_map_of(model.hf_config), global_name(model, local))
    return rule, _hf_names(rule, idx, tied_embeddings(model.hf_config))


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


def tp_layout():
    """(TP size, this rank's TP rank, TP group) from megatron's parallel state."""
    from megatron.core import parallel_state as ps

    return ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank(), ps.get_tensor_model_parallel_group()


def _rows_of(rule: Rule, ctx: ConvertCtx, hf_rows: int, tp: int, rank: int) -> tuple[int, int]:
    """(first row, row count) of this rank's shard of a 'copy'/'vocab' tensor split along dim 0.

    Same rows as ``split_tp(rule.split, hf_to_megatron(rule.convert, ...))``: 'vocab' pads the HF
    rows up to the padded vocab, and dim-0 shards follow ``torch.chunk`` (ceil-sized chunks).
    """
    full = max(ctx.padded_vocab_size, hf_rows) if rule.convert == "vocab" else hf_rows
    if rule.split == "replicated" or tp == 1:
        return 0, full
    per = -(-full // tp)
    start = min(rank * per, full)
    return start, min(per, full - start)


def _fill_rows(param: torch.Tensor, rule: Rule, ctx: ConvertCtx, hf_shape, tp: int, rank: int,
               copy_rows: Callable[[int, torch.Tensor], None]) -> bool:
    """Fill ``param`` with its row range of a 'copy'/'vocab' HF tensor in place, zeroing vocab
    padding rows; ``copy_rows(first_row, dst)`` fills ``dst`` with HF rows from ``first_row`` on.
    No padded or sharded temporary. False (nothing written) if the shapes do not line up.
    """
    start, count = _rows_of(rule, ctx, hf_shape[0], tp, rank)
    if tuple(param.shape) != (count, *hf_shape[1:]):
        return False
    real = max(0, min(count, hf_shape[0] - start))  # rows that come from HF; the rest is vocab padding
    if real:
        copy_rows(start, param[:real])
    if real < count:
        param[real:].zero_()
    return True


def _row_wise(rule: Rule, tp: int) -> bool:
    return rule.convert in ("copy", "vocab") and (rule.split in ("replicated", "dim0") or tp == 1)


@torch.no_grad()
def load_hf_state_dict(model, hf_tensors: HFSource, hf_config=None, skip: Collection[str] = ()) -> list[str]:
    """Copy this rank's TP/PP shard of every parameter from HF tensors; returns the local names.

    ``hf_tensors``: a mapping or a getter ``name -> Tensor`` (raising KeyError when absent), in
    either HF key layout. Every parameter of ``model`` must be covered, or KeyError is raised.
    Tensors stay in their own dtype until the single cast into the parameter (the transforms
    only move values), so a source of the parameter dtype is copied bit for bit. A getter that
    also has ``info(name)`` (shape/dtype, KeyError when absent) and ``read_rows_into(name, row,
    out)`` (e.g. :class:`~r1vfree_mcore.conversion.hf_io.HFReader`) lets row-wise
    tensors (plain copies, the padded vocab, dim-0 shards) and row-reordering ones (fused QKV,
    gate/up; :mod:`~r1vfree_mcore.models.common.row_runs`) go from disk into the parameter
    without a temporary; one whose ``maps_rows`` is true makes such parameters views of the
    file instead (``map_rows(name, row, count)``), when no vocab padding is involved.
    ``skip``: local names the caller fills another way (left untouched, still checked against
    the weight map).
    """
    hf_config = hf_config or model.hf_config
    rules, tied = weight_map_of(hf_config), tied_embeddings(hf_config)
    ctx = convert_ctx(hf_config, model.padded_vocab_size)
    tp, rank, _ = tp_layout()
    direct = callable(hf_tensors) and hasattr(hf_tensors, "read_rows_into") and hasattr(hf_tensors, "info")
    loaded = []
    for local, param in model.named_parameters():
        rule, idx = match_rule(rules, global_name(model, local))
        names = _hf_names(rule, idx, tied)
        if local in skip:
            continue
        if _row_wise(rule, tp):
            if direct and param.device.type == "cpu" and param.is_contiguous():
                name, info = fetch_info(hf_tensors, names[0])
                if info.dtype == param.dtype:  # straight from disk into the parameter
                    shape = tuple(info.shape)
                    if getattr(hf_tensors, "maps_rows", False) and _map_rows(hf_tensors, name, param, rule, ctx,
                                                                             shape, tp, rank):
                        loaded.append(local)
                        continue
                    ok = _fill_rows(param, rule, ctx, shape, tp, rank,
                                    lambda row, dst: hf_tensors.read_rows_into(name, row, dst))
                    _check(ok, local, param, names, _row_shape(rule, ctx, shape, tp, rank))
                    loaded.append(local)
                    continue
            hf = _fetch(hf_tensors, names[0])
            ok = _fill_rows(param, rule, ctx, hf.shape, tp, rank,
                            lambda row, dst: dst.copy_(hf[row:row + dst.shape[0]]))
            _check(ok, local, param, names, _row_shape(rule, ctx, hf.shape, tp, rank))
        else:
            if (direct and param.device.type == "cpu" and param.is_contiguous()
                    and moves_rows_only(rule.convert, rule.split, tp)
                    and _read_row_runs(hf_tensors, names, param, rule, ctx, tp, rank)):
                loaded.append(local)
                continue
            hf = [_fetch(hf_tensors, n) for n in names]
            shard = split_tp(rule.split, hf_to_megatron(rule.convert, hf, ctx), tp, rank)
            _check(shard.shape == param.shape, local, param, names, shard.shape)
            param.copy_(shard)
        loaded.append(local)
    return loaded


def _read_row_runs(source, names, param, rule: Rule, ctx: ConvertCtx, tp: int, rank: int) -> bool:
    """Fill ``param`` run by run straight from disk (fused QKV, gate/up: no temporaries) when
    every source has its dtype and trailing shape; False (nothing written) otherwise."""
    found = [fetch_info(source, n) for n in names]
    if any(info.dtype != param.dtype or tuple(info.shape[1:]) != tuple(param.shape[1:]) for _, info in found):
        return False
    runs = row_runs(rule.convert, rule.split, [info.shape[0] for _, info in found], ctx, tp, rank)
    if sum(count for _, _, count, _ in runs) != param.shape[0]:
        return False
    last = {src: k for k, (src, _, _, _) in enumerate(runs)}  # progress counts each source once
    for k, (src, row, count, dst) in enumerate(runs):
        source.read_rows_into(found[src][0], row, param[dst:dst + count], consumed=last[src] == k)
    return True


def _map_rows(source, name: str, param, rule: Rule, ctx: ConvertCtx, hf_shape, tp: int, rank: int) -> bool:
    """Make ``param`` a view of its HF rows in the file (``source.map_rows``) when they are all
    real rows of the right shape (no vocab padding); False (nothing done) otherwise."""
    start, count = _rows_of(rule, ctx, hf_shape[0], tp, rank)
    if count < 1 or start + count > hf_shape[0] or tuple(param.shape) != (count, *hf_shape[1:]):
        return False
    param.data = source.map_rows(name, start, count)
    return True


def _row_shape(rule, ctx, hf_shape, tp, rank) -> tuple[int, ...]:
    return (_rows_of(rule, ctx, hf_shape[0], tp, rank)[1], *hf_shape[1:])


def _check(ok: bool, local: str, param, names, got) -> None:
    if not ok:
        raise ValueError(f"{local}: shape {tuple(param.shape)} but HF {names} give {tuple(got)}")


def fetch_info(source, name: str):
    """(alias found, its info) from a source with ``info``; KeyError as :func:`_fetch`."""
    for alias in hf_aliases(name):
        try:
            return alias, source.info(alias)
        except KeyError:
            continue
    raise KeyError(f"HF tensor {name!r} not found (also tried {hf_aliases(name)[1:]})")


def gather_full_tensors(model, tensors: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Full (TP-merged) megatron tensors of this stage under global names.

    ``tensors`` maps local parameter names to per-rank shards (default: the parameters; pass
    e.g. grads to merge those). Collective over the TP group.
    """
    rules = weight_map_of(model.hf_config)
    tp, _, group = tp_layout()
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
